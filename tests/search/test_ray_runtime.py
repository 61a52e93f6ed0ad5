"""Connecting to Ray: a cluster address that does not answer fails fast and says what to do."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from pipeline.config import RayConfig
from pipeline.search.ray_runtime import RayClusterError, check_address, resolve_address, start_ray, storage_path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_refused_address_fails_within_seconds_naming_it_and_the_fix(monkeypatch, tmp_path):
    port = _closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(RayClusterError) as error:
        start_ray(RayConfig(connect_timeout_s=2), tmp_path)
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert f"127.0.0.1:{port}" in message and "$RAY_ADDRESS" in message and "ray start --head" in message


def test_silent_address_times_out_after_connect_timeout():
    # 192.0.2.0/24 is TEST-NET-1: never routed, so the connect hangs until the timeout (or fails at once)
    started = time.monotonic()
    with pytest.raises(RayClusterError, match="does not answer"):
        check_address("192.0.2.1:6379", "ray.address in params.yaml", timeout_s=1.5)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("address", ["nohost:", "host:port", ":6379"])
def test_malformed_addresses_are_rejected(address):
    with pytest.raises(RayClusterError):
        check_address(address, "test", timeout_s=1)


def test_environment_wins_over_params(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve_address(RayConfig(address="10.0.0.2:6379")) == ("10.0.0.1:6379", "$RAY_ADDRESS")
    monkeypatch.delenv("RAY_ADDRESS")
    assert resolve_address(RayConfig(address="10.0.0.2:6379"))[0] == "10.0.0.2:6379"
    assert resolve_address(RayConfig())[0] is None


def test_storage_path_is_absolute(tmp_path):
    assert storage_path(RayConfig(), tmp_path) == str(tmp_path / "ray_results")
    assert storage_path(RayConfig(storage_path="runs/x"), tmp_path) == str(tmp_path / "runs/x")
    assert storage_path(RayConfig(storage_path="s3://bucket/ray"), tmp_path) == "s3://bucket/ray"
    assert Path(storage_path(RayConfig(storage_path="/shared/ray"), tmp_path)).is_absolute()
