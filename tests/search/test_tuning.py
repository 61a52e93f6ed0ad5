"""The search runner on a real local Ray instance, with toy trainables: a trial that raises and one whose worker
is killed are retried and the search finishes; an interrupted search is resumed, not restarted; every
trial is an MLflow run nested under the stage's run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.config import RayConfig
from pipeline.search.ray_runtime import start_ray, stop_ray
from pipeline.search.space import SearchSpace
from pipeline.search.tuning import SearchSpec, plan_search, read_state, run_search

# Ray fault tolerance: kills trial workers and interrupts a driver process (minutes): `make test-scale`
pytestmark = [pytest.mark.slow, pytest.mark.scale]
ROOT = Path(__file__).resolve().parents[2]


def faulty_trial(config: dict, marker_dir: str) -> None:
    """x=1 raises on its first attempt; x=2's first attempt waits to be killed from outside."""
    from ray import tune

    folder = Path(marker_dir)
    attempt = len(list(folder.glob(f"attempt-{config['x']}-*"))) + 1
    (folder / f"attempt-{config['x']}-{attempt}").write_text(str(os.getpid()))
    if config["x"] == 1 and attempt == 1:
        raise RuntimeError("injected failure")
    if config["x"] == 2 and attempt == 1:
        (folder / "kill-me").write_text(str(os.getpid()))
        time.sleep(120)
    tune.report({"value": 2 * config["x"], "attempt": attempt})


def _killer(folder: Path, stop: threading.Event) -> None:
    while not stop.is_set():
        target = folder / "kill-me"
        if target.exists():
            os.kill(int(target.read_text()), signal.SIGKILL)  # the worker process dies, as on OOM or node loss
            target.unlink()
            return
        time.sleep(0.2)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_failed_and_killed_trials_are_retried_and_logged_as_nested_runs(tmp_path, mlflow_store):
    import mlflow
    from ray import tune

    markers = tmp_path / "markers"
    markers.mkdir()
    runtime = start_ray(RayConfig(num_cpus=2, storage_path=str(tmp_path / "ray")), ROOT)
    space = SearchSpace(tmp_path / "space.yaml", {"x": {"grid": [0, 1, 2]}})
    spec = SearchSpec(name="faults", fingerprint="f", metric="value", mode="max", max_failures=1)
    stop = threading.Event()
    killer = threading.Thread(target=_killer, args=(markers, stop), daemon=True)
    killer.start()
    try:
        with tracking.stage_run("faults", "test-search", {"a": 1}) as parent:
            results = run_search(
                tune.with_parameters(faulty_trial, marker_dir=str(markers)),
                space,
                runtime,
                spec,
                plan_search(runtime, spec),
                parent_run=tracking.run_ref(parent.info.run_id),
                experiment="test-search",
                tags={"search": "faults"},
            )
    finally:
        stop.set()
        stop_ray()
    assert not results.errors and results.num_terminated == 3
    assert sorted(r.metrics["value"] for r in results) == [0, 2, 4]
    assert {r.config["x"]: r.metrics["attempt"] for r in results} == {0: 1, 1: 2, 2: 2}  # two retried
    assert read_state(runtime, "faults")["complete"] is True
    children = mlflow.search_runs(
        experiment_names=["test-search"], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 3 and set(children["params.x"]) == {"0", "1", "2"}
    assert set(children["metrics.value"]) == {0.0, 2.0, 4.0} and set(children["tags.search"]) == {"faults"}


def slow_trial(config: dict, marker_dir: str) -> None:
    from ray import tune

    folder = Path(marker_dir)
    (folder / f"start-{config['x']}-{time.monotonic_ns()}").touch()
    if config["x"] > 0 and not (folder / "resume").exists():
        time.sleep(120)  # still running when the search is interrupted
    tune.report({"value": config["x"]})
    (folder / f"done-{config['x']}").touch()


DRIVER = """
import sys
from pathlib import Path
from ray import tune
from pipeline.config import RayConfig
from pipeline.search.ray_runtime import start_ray
from pipeline.search.space import SearchSpace
from pipeline.search.tuning import SearchSpec, plan_search, run_search
from tests.search.test_tuning import slow_trial
tmp = Path(sys.argv[1])
runtime = start_ray(RayConfig(num_cpus=2, storage_path=str(tmp / "ray")), Path.cwd())
spec = SearchSpec(name="resume", fingerprint="r", metric="value", mode="max", max_concurrent_trials=1)
space = SearchSpace(tmp / "s.yaml", {"x": {"grid": [0, 1, 2]}})
trial = tune.with_parameters(slow_trial, marker_dir=str(tmp / "markers"))
run_search(trial, space, runtime, spec, plan_search(runtime, spec))
"""


def test_an_interrupted_search_resumes_instead_of_starting_over(tmp_path):
    from ray import tune

    markers = tmp_path / "markers"
    markers.mkdir()
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while not ((markers / "done-0").exists() and list(markers.glob("start-1-*"))):
        assert driver.poll() is None and time.monotonic() < deadline, driver.stdout.read().decode()[-3000:]
        time.sleep(0.5)
    driver.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
    output = driver.communicate(timeout=120)[0].decode()
    assert driver.returncode != 0 and "interrupted" in output, output[-3000:]

    (markers / "resume").touch()
    runtime = start_ray(RayConfig(num_cpus=2, storage_path=str(tmp_path / "ray")), ROOT)
    spec = SearchSpec(name="resume", fingerprint="r", metric="value", mode="max", max_concurrent_trials=1)
    try:
        plan = plan_search(runtime, spec)
        assert plan.resume
        space = SearchSpace(tmp_path / "s.yaml", {"x": {"grid": [0, 1, 2]}})
        results = run_search(tune.with_parameters(slow_trial, marker_dir=str(markers)), space, runtime, spec, plan)
        assert sorted(r.metrics["value"] for r in results) == [0, 1, 2]
        assert len(list(markers.glob("start-0-*"))) == 1  # the finished trial was not run again
        assert len(list(markers.glob("start-1-*"))) == 2  # the interrupted one was
        # Other inputs (a different fingerprint) never resume someone else's search
        assert (
            plan_search(runtime, SearchSpec(name="resume", fingerprint="other", metric="value", mode="max")).resume
            is False
        )
    finally:
        stop_ray()
