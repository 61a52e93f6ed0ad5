"""The one place that talks to MLflow.

Every stage, Lightning logger and Ray trial must write to the *same* store. MLflow's default
(`sqlite:///mlflow.db`) is relative to the current directory, which differs between DVC stages and
Ray trial workers, so we resolve one absolute URI here and hand it to everyone.

Runs are written by the global rank zero only: a DDP stage runs once per device, and the other processes get
`None` for every run, so a stage logs one run however many processes train it. The experiment is declared a
model-training experiment (MLflow 3's UI otherwise opens it on the GenAI traces overview), and trained drafts are
logged as MLflow models and registered (`log_torch_model`), so the run a user picks in the UI can be loaded back.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.distributed import is_rank_zero as _is_rank_zero
from pipeline.errors import TrackingError

ENV_URI = "MLFLOW_TRACKING_URI"
# MLflow 3's experiment kind: "custom_model_development" is a model-training experiment (runs, metrics, models)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def repo_root() -> Path:
    """The repository root: the nearest parent holding dvc.yaml (falls back to the current directory)."""
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").exists():
            return candidate
    return here


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else an absolute SQLite store at the repository root."""
    uri = os.environ.get(ENV_URI)
    if uri:
        return uri
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


@dataclass(frozen=True)
class RunRef:
    """An open MLflow run as library integrations need it (Lightning's MLflow logger, possibly in another process):
    the store's URI and the run's id."""

    uri: str
    run_id: str


def run_ref(run_id: str | None = None) -> RunRef | None:
    """`run_id` (default: the active run) with this process's tracking URI; None without a run (e.g. rank > 0)."""
    if run_id is None:
        run_id = active_run_id() if is_rank_zero() else None
    return RunRef(tracking_uri(), run_id) if run_id is not None else None


def child_run_tags(parent_run_id: str | None, **tags: str) -> dict[str, str]:
    """Tags of a run nested under `parent_run_id` (the MLflow UI groups runs by `mlflow.parentRunId`): for child runs
    opened here and for runs another library opens (Ray Tune's MLflow callback logs every trial as one)."""
    nested = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    return {**nested, **tags}


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail within seconds, naming the server, if a remote tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status != 200:
                raise TrackingError(f"MLflow tracking server {uri} answered {response.status} on /health")
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} (from ${ENV_URI}) is not reachable: {exc}. "
            f"Start it (`mlflow server --backend-store-uri sqlite:///mlflow.db --port 5000`) "
            f"or unset {ENV_URI} to use the local SQLite store."
        ) from None


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def is_rank_zero() -> bool:
    """True except in the non-zero ranks of a distributed launch (which re-run the stage script)."""
    return _is_rank_zero()


def ensure_experiment(name: str) -> str:
    """Create the experiment once, as a model-training experiment; with the local store, artifacts go beside
    mlflow.db, not under the cwd."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        experiment_id = found.experiment_id
        if found.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:  # stores created before the kind was declared
            mlflow.MlflowClient(tracking_uri()).set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    else:
        location = None
        if tracking_uri().startswith("sqlite:"):
            location = (repo_root() / "mlartifacts").as_uri()
        experiment_id = mlflow.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
        )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def experiment_id(name: str) -> str:
    """The id of experiment `name` in this process's store, created (as a model-training experiment) if missing."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return ensure_experiment(name)


def runs_page(base_url: str, experiment_id: str) -> str:
    """The UI address of an experiment's run list. MLflow 3.17's UI picks its layout from the `workflowType` query
    parameter (or the browser's last choice, GenAI by default), not from the experiment's kind tag: the parameter
    makes it open on the runs."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


@contextmanager
def stage_run(
    stage: str,
    experiment: str,
    params: Mapping[str, Any],
    run_name: str | None = None,
    resume_run_id: str | None = None,
) -> Iterator[Any]:
    """One MLflow run for a DVC stage, tagged with the git commit and the stage name.

    `resume_run_id` reopens an earlier run (an interrupted search resumed: its trials stay under one parent).
    Yields the active run on rank zero and `None` elsewhere, so callers need no MLflow import.
    """
    if not is_rank_zero():
        yield None
        return
    import mlflow

    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    ensure_experiment(experiment)
    if resume_run_id is not None:
        try:
            mlflow.get_run(resume_run_id)
        except Exception:
            resume_run_id = None
    with mlflow.start_run(run_id=resume_run_id, run_name=None if resume_run_id else run_name or stage) as run:
        if resume_run_id is not None:
            yield run
            return
        mlflow.set_tags({"dvc_stage": stage, "git_commit": git_commit(), "mlflow.source.git.commit": git_commit()})
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(params).items()})
        yield run


def metric_key(name: str) -> str:
    """`name` in the characters MLflow accepts in a metric key (a key with others fails the whole log call): data set
    labels such as VQAv2's question types ("what color is the") become keys."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import mlflow

    if is_rank_zero() and mlflow.active_run() is not None:
        mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()}, step=step)


def set_tags(tags: Mapping[str, str]) -> None:
    import mlflow

    if is_rank_zero() and mlflow.active_run() is not None:
        mlflow.set_tags(dict(tags))


def log_artifact(path: str | Path) -> None:
    import mlflow

    if is_rank_zero() and mlflow.active_run() is not None:
        mlflow.log_artifact(str(path))


def active_run_id() -> str | None:
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


@contextmanager
def nested_run(
    name: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None
) -> Iterator[Any]:
    """A child run of the active stage run (one per variant, trial or method), so the MLflow UI can compare them;
    active inside the block, so `log_metrics` goes to it."""
    run_id = open_child_run(name, params, tags)
    if run_id is None:
        yield None
        return
    import mlflow

    with mlflow.start_run(run_id=run_id, nested=True) as run:
        yield run


def open_child_run(
    name: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None
) -> str | None:
    """A child run of the active stage run that stays open for another process to log into (Lightning's
    MLflow logger in a worker, by run id); `close_child_run` ends it. None outside a stage run."""
    if not is_rank_zero():
        return None
    import mlflow

    parent = mlflow.active_run()
    if parent is None:
        return None
    client = mlflow.MlflowClient(tracking_uri())
    stage = client.get_run(parent.info.run_id).data.tags.get("dvc_stage", "")
    run = client.create_run(
        parent.info.experiment_id,
        run_name=name,
        tags=child_run_tags(parent.info.run_id, dvc_stage=stage, variant=name, **(tags or {})),
    )
    for key, value in flatten(params or {}).items():
        client.log_param(run.info.run_id, key, str(value)[:6000])
    return run.info.run_id


def close_child_run(run_id: str | None, metrics: Mapping[str, float] | None = None, failed: bool = False) -> None:
    if run_id is None:
        return
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(tracking_uri())
    now = int(time.time() * 1000)
    if metrics:
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def experiment_name() -> str | None:
    """Name of the active run's experiment (for loggers that open their own client, e.g. Ray's)."""
    import mlflow

    run = mlflow.active_run()
    return mlflow.get_experiment(run.info.experiment_id).name if run is not None else None


def log_dict_artifact(data: Mapping[str, Any], name: str) -> None:
    import mlflow

    if is_rank_zero() and mlflow.active_run() is not None:
        mlflow.log_dict(dict(data), name)


def registered_model_name(experiment: str, kind: str, name: str) -> str:
    """`<experiment>-<kind>-<name>` with characters a `models:/` URI path would have to escape replaced, e.g.
    fastvlm-ssd-imitation-ce-cs-kd for the ce+cs+kd network."""
    raw = f"{experiment}-{kind}-{name}"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)


@dataclass(frozen=True)
class TensorSpecs:
    """A model's signature, as MLflow records it: name → (numpy dtype name, shape with -1 for free dimensions)."""

    inputs: dict[str, tuple[str, tuple[int, ...]]]
    outputs: dict[str, tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class LoggedModel:
    model_uri: str  # runs:/… or models:/m-…: loadable with mlflow.pytorch.load_model
    registered_name: str | None
    version: str | None  # the registry version this logging created

    @property
    def registry_uri(self) -> str | None:
        return f"models:/{self.registered_name}/{self.version}" if self.registered_name and self.version else None


def log_torch_model(
    run_id: str | None,
    model: Any,
    *,
    name: str,
    signature: TensorSpecs,
    metadata: Mapping[str, Any],
    registered_name: str | None = None,
    extra_files: list[Path] | None = None,
) -> LoggedModel | None:
    """Log `model` (a torch module) into run `run_id` as an MLflow model (`mlflow.pytorch`: the pickled module, its
    signature, `metadata` in its MLmodel file, `extra_files` beside it) and register it under `registered_name`.
    None on non-zero ranks and outside a run."""
    if run_id is None or not is_rank_zero():
        return None
    import mlflow
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def schema(specs: Mapping[str, tuple[str, tuple[int, ...]]]) -> Schema:
        return Schema([TensorSpec(np.dtype(dtype), shape, key) for key, (dtype, shape) in specs.items()])

    mlflow.set_tracking_uri(tracking_uri())
    active = mlflow.active_run()
    with contextlib.nullcontext() if active and active.info.run_id == run_id else _resumed(run_id):
        info = mlflow.pytorch.log_model(
            model,
            name=name,
            signature=ModelSignature(inputs=schema(signature.inputs), outputs=schema(signature.outputs)),
            metadata=dict(metadata),
            registered_model_name=registered_name,
            extra_files=[str(p) for p in extra_files or []],
            # named, so MLflow does not infer them by loading the model in a subprocess (seconds per model)
            pip_requirements=_requirements(),
            # MLflow ≥ 3.x defaults to "pt2", a torch.export graph traced from an input example: the decoders need the
            # module itself (a Hugging Face model's API, an attention head's decode cache), so the module is pickled.
            # Unpickling runs code: load models from stores you trust.
            serialization_format="pickle",
        )
    version = getattr(info, "registered_model_version", None)
    return LoggedModel(info.model_uri, registered_name, str(version) if version is not None else None)


@contextmanager
def _resumed(run_id: str) -> Iterator[None]:
    """Run `run_id` active for the block (a child run opened for a worker process, logged into by id); its owner
    (`close_child_run`) sets its final status afterwards."""
    import mlflow

    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        yield


@contextmanager
def resumed_run(ref: RunRef | None) -> Iterator[None]:
    """In a worker process: the child run `ref` (from `open_child_run` in the stage's process) active for the block,
    so `log_metrics` goes to it; nothing is logged without a ref (rank > 0, no stage run)."""
    if ref is None:
        yield
        return
    import mlflow

    mlflow.set_tracking_uri(ref.uri)
    with _resumed(ref.run_id):
        yield


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("torch", "transformers", "safetensors"):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


def close_stale_children(parent_run_id: str) -> int:
    """Mark the still-RUNNING child runs of `parent_run_id` as KILLED: the trials an interruption cut off
    (their resumed attempts log new runs). Returns how many were closed."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    run = client.get_run(parent_run_id)
    stale = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    for child in stale:
        client.set_terminated(child.info.run_id, status="KILLED")
    return len(stale)
