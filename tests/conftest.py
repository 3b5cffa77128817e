"""Fixtures shared by the test modules, and ``--without-torch``.

``pytest --without-torch`` hides PyTorch (``import torch`` raises ImportError) before
any test module is imported: CI runs the op suites that way too, so the parity tests
that need PyTorch skip and everything else -- gradchecks included -- must still run.
"""
import os
import sys

import pytest


def pytest_addoption(parser):
    parser.addoption("--without-torch", action="store_true",
                     help="hide PyTorch: `import torch` raises ImportError in the tests")


def pytest_configure(config):
    if config.getoption("--without-torch"):
        sys.modules["torch"] = None  # what a machine without PyTorch looks like


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
