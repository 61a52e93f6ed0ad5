"""Where Ray Tune searches run: a fresh local Ray instance, or an existing cluster by address.

- Local (default): `ray.init(address="local", num_cpus=...)` always starts a private instance, so a
  forgotten `ray start` on the machine is never joined by accident.
- Cluster: `RAY_ADDRESS` (or `ray.address` in params.yaml) names the head (`host:6379` from
  `ray start --head`, or a Ray Client address `ray://host:10001`). The address is probed with a plain TCP
  connect first, so a head that does not answer fails within `connect_timeout_s` with a message saying
  what to do, instead of Ray's long retry loop. Trials then ask for `cluster_gpus_per_trial` GPUs.

Trials run in their own processes (and working directories): the folder holding `pipeline/` goes on their
PYTHONPATH, and every path handed to them is absolute. On a multi-node cluster the repository (with
`data/` and `models/`) and `ray.storage_path` must be on storage every node reads at the same path.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import RayConfig
from pipeline.errors import PipelineError

ENV_ADDRESS = "RAY_ADDRESS"
DEFAULT_PORTS = {"ray://": 10001, "": 6379}


class RayClusterError(PipelineError):
    """The Ray cluster named by RAY_ADDRESS / ray.address cannot be reached or used."""


@dataclass(frozen=True)
class RayRuntime:
    address: str | None  # None: the local instance this process started
    storage_path: str  # absolute path or URI for trial results
    resources: dict[str, float]  # per trial: {"cpu": .., "gpu": ..}

    @property
    def on_cluster(self) -> bool:
        return self.address is not None


def resolve_address(cfg: RayConfig) -> tuple[str | None, str]:
    """The cluster address and where it came from (for error messages)."""
    env = os.environ.get(ENV_ADDRESS)
    if env:
        return env, f"${ENV_ADDRESS}"
    return cfg.address, "ray.address in params.yaml"


def _host_port(address: str) -> tuple[str, int]:
    scheme = "ray://" if address.startswith("ray://") else ""
    rest = address.removeprefix(scheme)
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not host:
        raise RayClusterError(f"Ray address {address!r} is not of the form host:port or ray://host:port")
    try:
        return host.strip("[]"), int(port) if port else DEFAULT_PORTS[scheme]
    except ValueError:
        raise RayClusterError(f"Ray address {address!r}: port {port!r} is not a number") from None


def check_address(address: str, source: str, timeout_s: float) -> None:
    """Fail fast, naming the address and its source, when nothing listens there."""
    if address == "auto":
        return  # Ray resolves it from the local node's files and fails quickly itself
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise RayClusterError(
            f"the Ray cluster at {address} (from {source}) does not answer on {host}:{port}: {exc}. "
            f"Start a head node there (`ray start --head --port {port}`) "
            f"and workers (`ray start --address {host}:{port}`), "
            f"or unset {ENV_ADDRESS} / set ray.address: null to run the search on a local Ray instance."
        ) from None


def storage_path(cfg: RayConfig, repo_root: Path) -> str:
    """Absolute trial storage: Ray refuses relative paths, and trials run in other directories."""
    if cfg.storage_path is None:
        return str((repo_root / "ray_results").resolve())
    if "://" in cfg.storage_path:
        return cfg.storage_path  # s3://, gs://, ... as given
    path = Path(cfg.storage_path)
    return str((path if path.is_absolute() else repo_root / path).resolve())


def _token_available() -> bool:
    return (
        bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"))
        or (Path.home() / ".ray/auth_token").exists()
    )


def _enable_token_auth() -> None:
    """Ray ≥ 2.59 heads (`ray start --head`) require their token, and a client only sends it in token mode,
    which `ray.init(address=...)` does not switch on by itself. The mode is cached in Ray's config, so it is
    set through Ray's own helper (private: fall back to the environment variable if it moves)."""
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:
        os.environ["RAY_AUTH_MODE"] = "token"
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # sets RAY_AUTH_MODE and reloads the config


def start_ray(cfg: RayConfig, repo_root: Path) -> RayRuntime:
    """Connect to the cluster (RAY_ADDRESS / ray.address) or start a local instance; idempotent."""
    import ray

    address, source = resolve_address(cfg)
    # Where `pipeline` is importable from (the repository root in a checkout), ahead of the caller's path
    code_root = str(Path(__file__).resolve().parents[2])
    python_path = os.pathsep.join(p for p in (code_root, os.environ.get("PYTHONPATH", "")) if p)
    runtime_env = {"env_vars": {"PYTHONPATH": python_path}}
    if ray.is_initialized():
        ray.shutdown()
    if address:
        check_address(address, source, cfg.connect_timeout_s)
        if "RAY_AUTH_MODE" not in os.environ and _token_available():
            _enable_token_auth()
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except Exception as exc:
            raise RayClusterError(
                f"could not join the Ray cluster at {address} (from {source}): {exc}. If the cluster uses token "
                f"authentication, copy its token to ~/.ray/auth_token (or set RAY_AUTH_TOKEN) and RAY_AUTH_MODE=token."
            ) from None
        gpus = cfg.cluster_gpus_per_trial
        available = ray.cluster_resources().get("GPU", 0.0)
        if gpus > available:
            ray.shutdown()
            raise RayClusterError(
                f"trials ask for {gpus:g} GPU(s) each (ray.cluster_gpus_per_trial) but the cluster at {address} has "
                f"{available:g}: they would wait forever. Add GPU nodes or set ray.cluster_gpus_per_trial: 0."
            )
    else:
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
        )
        gpus = cfg.gpus_per_trial
    return RayRuntime(
        address=address, storage_path=storage_path(cfg, repo_root), resources={"cpu": cfg.cpus_per_trial, "gpu": gpus}
    )


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
