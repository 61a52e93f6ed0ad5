"""Head-training workers exit when the stage process that spawned them dies, instead of training on and saving into
an output folder a later run may already be filling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.training import worker_pool

PARENT = textwrap.dedent(
    """
    import multiprocessing, sys, time
    from pipeline.training.worker_pool import spawned_pool

    pool = spawned_pool(1)
    pool.submit(time.sleep, 120)  # a long job, as a head's training is
    while not multiprocessing.active_children():
        time.sleep(0.05)
    print(*(p.pid for p in multiprocessing.active_children()), flush=True)
    time.sleep(120)
    """
)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_exits_soon_after_its_parent_is_killed():
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        (worker,) = map(int, parent.stdout.readline().split())
        time.sleep(2 * worker_pool.PARENT_POLL_SECONDS)
        assert alive(worker)  # the job runs while the stage does
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker), "the worker outlived its parent"
    finally:
        parent.kill()
        if "worker" in locals() and alive(worker):
            os.kill(worker, signal.SIGKILL)
