"""One Ray Tune search, run the same way for the NAS and the sweeps: fresh or resumed, fault tolerant, tracked.

- **Resume.** Each search lives in `<storage>/<name>/` with a small state file (`fastvlm_search.json`):
  the fingerprint of everything its results depend on, the MLflow parent run, and whether it finished. An
  unfinished search with the same fingerprint is continued with `Tuner.restore` (finished trials are kept,
  interrupted and errored ones re-run) under the same MLflow parent run; a finished one, or one for other
  inputs, is replaced by a fresh search.
- **Faults.** A trial that raises or whose worker dies is retried `max_failures` times; the search goes on
  either way and the failure is recorded in the results.
- **Tracking.** Trials are logged from the driver (Ray's `MLflowLoggerCallback`, no concurrent SQLite
  writers) as MLflow runs nested under the stage's run: config as params, every report as a metric step,
  the trial folder as artifacts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError
from pipeline.search.ray_runtime import RayRuntime
from pipeline.search.space import SearchSpace
from pipeline.tracking import RunRef, child_run_tags

if TYPE_CHECKING:
    import pyarrow.fs

STATE_FILE = "fastvlm_search.json"


@dataclass(frozen=True)
class SearchSpec:
    name: str  # folder under the storage path (and the MLflow tag `search`)
    fingerprint: str  # hash of the inputs: a different one never resumes this search
    metric: str
    mode: str  # "max" | "min"
    num_samples: int = 1  # samples of the non-grid keys (times every grid point)
    seed: int = 0
    max_failures: int = 2
    max_concurrent_trials: int | None = None
    scheduler: Any = None  # e.g. ASHAScheduler
    reuse_actors: bool = True  # keeps a worker's loaded backbone between its trials
    # Reports a trial makes when it runs to its end. A trial with that many counts as finished even without Tune's
    # `done` flag, which is lost when the Ray node dies between a trial's last report and Tune's bookkeeping: Tune
    # then restores it TERMINATED, never re-runs it, and "unfinished" could never be cleared by resuming
    reports_when_complete: int | None = None


@dataclass(frozen=True)
class SearchPlan:
    resume: bool
    parent_run_id: str | None  # the MLflow run of the interrupted search, when resuming


def _filesystem(runtime: RayRuntime, name: str) -> tuple[pyarrow.fs.FileSystem, str]:
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(runtime.storage_path)
    return fs, f"{root.rstrip('/')}/{name}"


def experiment_path(runtime: RayRuntime, name: str) -> str:
    sep = "" if runtime.storage_path.endswith("/") else "/"
    return f"{runtime.storage_path}{sep}{name}"


def read_state(runtime: RayRuntime, name: str) -> dict | None:
    import pyarrow.fs

    fs, folder = _filesystem(runtime, name)
    info = fs.get_file_info(f"{folder}/{STATE_FILE}")
    if info.type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(info.path) as stream:
        try:
            return json.loads(stream.read().decode())
        except json.JSONDecodeError:
            return None


def write_state(runtime: RayRuntime, name: str, state: Mapping[str, Any]) -> None:
    fs, folder = _filesystem(runtime, name)
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/{STATE_FILE}.tmp"
    with fs.open_output_stream(tmp) as stream:
        stream.write(json.dumps(dict(state), indent=1).encode())
    fs.move(tmp, f"{folder}/{STATE_FILE}")


def plan_search(runtime: RayRuntime, spec: SearchSpec) -> SearchPlan:
    """Resume an interrupted search for the same inputs; otherwise start over."""
    from ray import tune

    state = read_state(runtime, spec.name)
    path = experiment_path(runtime, spec.name)
    if (
        state
        and not state.get("complete")
        and state.get("fingerprint") == spec.fingerprint
        and tune.Tuner.can_restore(path)
    ):
        return SearchPlan(resume=True, parent_run_id=state.get("parent_run_id"))
    return SearchPlan(resume=False, parent_run_id=None)


def _clear(runtime: RayRuntime, name: str) -> None:
    import pyarrow.fs

    fs, folder = _filesystem(runtime, name)
    if fs.get_file_info(folder).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(folder)


def _mlflow_callback(parent: RunRef, experiment: str | None, tags: Mapping[str, str]) -> Any:
    """Ray's MLflow integration logs every trial from the driver, into the store and under the parent run that
    `pipeline.tracking` names."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return MLflowLoggerCallback(
        tracking_uri=parent.uri,
        experiment_name=experiment,
        save_artifact=True,
        tags=child_run_tags(parent.run_id, **tags),
    )


def run_search(
    trainable: Callable[[dict], None],
    space: SearchSpace,
    runtime: RayRuntime,
    spec: SearchSpec,
    plan: SearchPlan,
    *,
    parent_run: RunRef | None = None,
    experiment: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Any:
    """Run (or resume) the search and return Ray's `ResultGrid`; raises if every trial failed. Trials are logged as
    MLflow runs nested under `parent_run` when given."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    trainable = tune.with_resources(trainable, dict(runtime.resources))
    path = experiment_path(runtime, spec.name)
    state = {
        "fingerprint": spec.fingerprint,
        "parent_run_id": parent_run.run_id if parent_run else None,
        "complete": False,
    }
    if plan.resume:
        print(f"search {spec.name}: resuming the interrupted search in {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        _clear(runtime, spec.name)
        callbacks = [_mlflow_callback(parent_run, experiment, tags or {})] if parent_run else []
        tuner = tune.Tuner(
            trainable,
            param_space=space.to_tune(),
            tune_config=tune.TuneConfig(
                metric=spec.metric,
                mode=spec.mode,
                num_samples=spec.num_samples,
                search_alg=BasicVariantGenerator(
                    points_to_evaluate=space.evaluate_first or None, random_state=spec.seed
                ),
                scheduler=spec.scheduler,
                max_concurrent_trials=spec.max_concurrent_trials,
                reuse_actors=spec.reuse_actors,
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=runtime.storage_path,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                callbacks=callbacks,
                verbose=1,
            ),
        )
    write_state(runtime, spec.name, state)
    results = tuner.fit()
    trials = [results[i] for i in range(len(results))]  # a ResultGrid iterates by index only (no __iter__)
    unfinished = [r for r in trials if not r.error and not trial_finished(r.metrics or {}, spec.reports_when_complete)]
    if unfinished:
        ids = ", ".join(sorted(str((r.metrics or {}).get("trial_id", "?")) for r in unfinished))
        raise PipelineError(
            f"search {spec.name} was interrupted with trials unfinished ({ids}); run the stage again to resume it "
            f"from {path} (if these same trials stop it again, delete that folder to start the search over)"
        )
    if len(results.errors) == len(results) and len(results):
        raise PipelineError(f"search {spec.name}: every trial failed; the first error: {results.errors[0]}")
    write_state(runtime, spec.name, {**state, "complete": True})
    return results


def trial_finished(metrics: Mapping[str, Any], reports_when_complete: int | None) -> bool:
    """Whether a trial's last result says it ran to its end. After Ctrl-C Tune stops gracefully and marks running
    trials TERMINATED too; only the missing `done` of their last result (set for finished and scheduler-stopped
    trials alike) tells them apart, or, when Tune lost that flag, the count of reports a complete trial makes."""
    if metrics.get("done"):
        return True
    return reports_when_complete is not None and int(metrics.get("training_iteration", 0)) >= reports_when_complete


def result_rows(results: Iterable[Any], keys: list[str]) -> list[dict[str, Any]]:
    """One row per trial: its config, its last reported `keys`, how far it got, and whether it failed."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        row: dict[str, Any] = {"trial_id": metrics.get("trial_id", "")}
        row.update({f"config.{k}": v for k, v in (result.config or {}).items()})
        row.update({k: metrics.get(k) for k in keys})
        row["reports"] = metrics.get("training_iteration", 0)
        row["error"] = str(result.error).splitlines()[0][:200] if result.error else ""
        rows.append(row)
    return rows


def inputs_fingerprint(settings: Any, paths: list) -> str:
    """Hash of the settings (JSON) and the files under `paths` (name, size, mtime: cheap even for 7B weights)."""
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for root in map(Path, paths):
        if not root.exists():
            digest.update(f"missing:{root.name}".encode())
            continue
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for file in files:
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]
