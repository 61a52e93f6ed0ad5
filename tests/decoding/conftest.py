"""The decoding tests run tiny models: one intra-op thread is fastest for them, and it keeps them fast
when other processes load the machine (a second spinning OpenMP thread then stalls on every small op)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
