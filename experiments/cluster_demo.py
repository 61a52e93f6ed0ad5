"""Cluster mode on one machine: the tiny pipeline (`experiments/configs/tiny.yaml` + `cluster.yaml`) through
`dvc repro` in a throwaway copy of the repository, with

- a Ray head node (`ray start --head` on 127.0.0.1) that the nas and sweep trials run on (`RAY_ADDRESS`),
- an MLflow tracking server (`mlflow server`, SQLite backend, its own artifact root) every run is logged to
  (`MLFLOW_TRACKING_URI`), and
- the Lightning stages on 2 processes each (DDP over gloo: finetune, train_imitation and LayerSkip train with 2,
  select_layer and evaluate share their work out).

`make cluster-demo` runs it and prints the MLflow UI's address (the experiment's runs); Ctrl-C stops the Ray head
and the server. `tests/stages/test_cluster_mode.py` runs the same pieces and checks what the server holds.
(`ray stop`, run at the end, stops every Ray instance of this user on the machine.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIGS = ROOT / "experiments/configs"
COPIED = ("pipeline", "stages", "experiments", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvc", ".gitignore")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        base[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return base


def cluster_params(*extra: dict[str, Any]) -> dict[str, Any]:
    """params.yaml with tiny.yaml, cluster.yaml and `extra` merged over it."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for layer in (
        yaml.safe_load((CONFIGS / "tiny.yaml").read_text()),
        yaml.safe_load((CONFIGS / "cluster.yaml").read_text()),
        *extra,
    ):
        params = merge(params, layer)
    return params


def copy_repository(work: Path, params: dict[str, Any], sweep_space: str | None = None) -> None:
    """The repository's code and pipeline definition in `work` with `params` and the sweep's search space
    (`sweep_space`, default experiments/configs/tiny_sweep.yaml), committed to a fresh git repository (DVC needs
    one)."""
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
        else:
            shutil.copy(source, work / name)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    space = sweep_space if sweep_space is not None else (CONFIGS / "tiny_sweep.yaml").read_text()
    (work / "experiments/search_spaces/sweep.yaml").write_text(space)
    git = ["git", "-c", "user.email=demo@fastvlm-ssd.invalid", "-c", "user.name=demo"]
    for command in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", "cluster demo"]):
        subprocess.run(command, cwd=work, check=True, capture_output=True)


def base_env(work: Path) -> dict[str, str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(work)}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"  # dvc's stage commands call `python`: this environment's
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    return env


@contextmanager
def ray_head(env: dict[str, str], num_cpus: int = 2) -> Iterator[str]:
    """A Ray head node on loopback, as `ray start --head` starts one on a cluster's head machine; its address."""
    port = free_port()
    command = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port)]
    command += ["--num-cpus", str(num_cpus), "--include-dashboard", "false", "--disable-usage-stats"]
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


@contextmanager
def mlflow_server(root: Path, env: dict[str, str], port: int | None = None) -> Iterator[str]:
    """An MLflow tracking server with a SQLite backend store and an artifact root under `root` (artifacts go through
    the server: clients need no access to the folder); its URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1"]
    log = (root / "server.log").open("w")
    server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"mlflow server exited: see {root / 'server.log'}") from None
                time.sleep(0.5)
        else:
            raise RuntimeError(f"mlflow server did not answer on {url} within 120 s")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its worker processes
        server.wait(timeout=60)
        log.close()


def repro(work: Path, env: dict[str, str], timeout_s: float = 1800) -> str:
    done = subprocess.run(
        [str(BIN / "dvc"), "repro"], cwd=work, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode:
        raise RuntimeError(f"dvc repro failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done.stdout + done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="where the repository copy goes (default: a new temporary folder)")
    parser.add_argument("--port", type=int, default=5000, help="the MLflow server's port")
    parser.add_argument("--no-wait", action="store_true", help="stop the servers once the pipeline has run")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from pipeline import tracking

    work = args.work or Path(tempfile.mkdtemp(prefix="fastvlm-ssd-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    copy_repository(work / "repo", cluster_params())
    env = base_env(work / "repo")
    started = time.perf_counter()
    with ray_head(env) as address, mlflow_server(work / "mlflow", env, args.port) as url:
        env.update({"RAY_ADDRESS": address, "MLFLOW_TRACKING_URI": url})
        print(f"Ray head {address}, MLflow server {url}; dvc repro in {work / 'repo'} …", flush=True)
        log = repro(work / "repo", env)
        print("\n".join(line for line in log.splitlines() if line.startswith("Running stage")))
        os.environ["MLFLOW_TRACKING_URI"] = url
        experiment = yaml.safe_load((work / "repo/params.yaml").read_text())["tracking"]["experiment"]
        print(f"pipeline done in {time.perf_counter() - started:.0f} s. MLflow UI (the experiment's runs):")
        print(f"  {tracking.runs_page(url, tracking.experiment_id(experiment))}")
        if not args.no_wait:
            print("Ctrl-C stops the MLflow server and the Ray head.")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
