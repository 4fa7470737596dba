"""Shared test fixtures."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread is much faster (and steadier on a busy machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def pytest_configure(config):
    """Under pytest-xdist (``-n 2``: one worker per core) each worker computes on one thread, and so
    do the processes the tests start: two workers with two threads each would oversubscribe 2 cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
