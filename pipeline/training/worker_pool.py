"""Worker processes that do not outlive the stage that started them.

A spawned worker of a `ProcessPoolExecutor` is not told when its parent dies (killed, out of memory, a scheduler's
signal to the stage's process alone): it trains on and then saves its head into an output folder that a later run
may already be filling. Each worker therefore watches its parent and exits when the parent is gone.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor

PARENT_POLL_SECONDS = 0.5


def _exit_when_orphaned(parent: int, poll_seconds: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_seconds)
    os._exit(1)  # no cleanup: the parent's outputs are not this process's to finish


def watch_parent(parent: int, poll_seconds: float = PARENT_POLL_SECONDS) -> None:
    """Worker initializer: a daemon thread ends this process once `parent` is no longer its parent."""
    threading.Thread(target=_exit_when_orphaned, args=(parent, poll_seconds), daemon=True).start()


def spawned_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` spawned processes (a fresh interpreter: no forked torch threads or locks) that exit with this one."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=watch_parent,
        initargs=(os.getpid(),),
    )
