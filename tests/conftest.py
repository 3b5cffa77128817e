"""Fixtures shared by the test modules."""
import os

import pytest


def _our_segments():
    from deepseek.collectives import shm

    if not os.path.isdir(shm.SHM_DIR):
        return set()
    return {f for f in os.listdir(shm.SHM_DIR) if f.startswith(shm.PREFIX)}


@pytest.fixture
def shm_guard():
    """Fail the test if it leaves a deepseek shared-memory segment in /dev/shm."""
    before = _our_segments()
    yield
    left = _our_segments() - before
    assert not left, f"shared-memory segments left behind: {sorted(left)}"
