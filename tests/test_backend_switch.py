"""deepseek.backend is the one numpy/CuPy switch: a grep of deepseek/ finds no other
``import cupy`` and no numpy-only scatter calls (``np.add.at``, ``np.ix_``) that would
break on a CuPy array, and the helpers the ops use instead behave like numpy's.

``collectives/`` and ``launcher/`` are not searched: they are leaf packages that may
not import deepseek (see the import contracts), so they find cupy themselves."""
import os
import re

import numpy as np
import pytest

from deepseek import backend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWITCH = "deepseek/backend.py"

LEAKS = {
    "imports cupy": re.compile(r"^\s*(import|from)\s+cupyx?\b|__import__\(\s*['\"]cupy|"
                               r"modules(\.get\(|\[)\s*['\"]cupy"),
    "numpy-only ufunc.at (use backend.scatter_add / ufunc_at)":
        re.compile(r"\b(np|numpy|xp)\.(add|subtract|multiply|maximum|minimum|divide)\.at\("),
    "np.ix_ (use xp.indices(..., sparse=True))": re.compile(r"\b(np|numpy)\.ix_\("),
}

# The op table's numpy reference implementations: host numpy by definition (they
# compute the expected values the tests compare against).
HOST_ONLY = re.compile(r"^deepseek/ops/_table_\w+\.py$")

# Files that still pick cupy by hand (other work in progress owns them): route them
# through backend.get_array_module and take them off this list. The test fails on a
# leak anywhere else, and on an entry here that no longer has one.
NOT_YET_MIGRATED = set()


def _leaks():
    found = {}
    for root, dirs, files in os.walk(os.path.join(REPO, "deepseek")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(root, f), REPO).replace(os.sep, "/")
            if rel == SWITCH or HOST_ONLY.match(rel):
                continue
            with open(os.path.join(REPO, rel), encoding="utf-8") as fh:
                for i, line in enumerate(fh, 1):
                    code = line.split("#", 1)[0]
                    for what, pattern in LEAKS.items():
                        if pattern.search(code):
                            found.setdefault(rel, []).append(f"{rel}:{i}: {what}: {line.strip()}")
    return found


def test_only_backend_switches_between_numpy_and_cupy():
    found = _leaks()
    bad = [hit for rel, hits in found.items() if rel not in NOT_YET_MIGRATED for hit in hits]
    assert not bad, "go through deepseek.backend instead:\n" + "\n".join(bad)
    stale = sorted(NOT_YET_MIGRATED - set(found))
    assert not stale, f"migrated: take {stale} off NOT_YET_MIGRATED"


def test_the_grep_sees_a_leak():
    # the patterns must match the spellings they are meant to catch
    for line in ("import cupy", "    import cupyx", "from cupy.cuda import nccl",
                 'xp = __import__("cupy")', 'sys.modules.get("cupy")',
                 "np.add.at(out, idx, g)", "xp.multiply.at(o, i, v)", "grid = np.ix_(a, b)"):
        assert any(p.search(line) for p in LEAKS.values()), line
    for line in ("from ..backend import cupy_available", "backend.scatter_add(out, i, g)",
                 "cupy = cupy_module()"):
        assert not any(p.search(line) for p in LEAKS.values()), line


def test_scatter_add_sums_repeated_indices_like_numpy():
    out = backend.scatter_add(np.zeros((3, 2)), (np.array([0, 2, 0]), np.array([1, 1, 1])),
                              np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(out, [[0, 4], [0, 0], [0, 2]])
    rows = np.zeros((4, 2), np.float32)
    backend.scatter_add(rows, np.array([3, 3, 1]), np.ones((3, 2), np.float32))
    np.testing.assert_array_equal(rows[:, 0], [0, 1, 0, 2])
    prod = backend.ufunc_at("multiply", np.ones(3), np.array([1, 1, 2]), np.array([2.0, 3.0, 5.0]))
    np.testing.assert_array_equal(prod, [1, 6, 5])


def test_array_module_and_allocate():
    assert backend.array_module() is np and backend.array_module("cpu") is np
    assert backend.array_module(backend.Device("cpu")) is np
    a = backend.allocate("cpu", lambda xp: xp.full((2,), 3, np.int16))
    assert isinstance(a, np.ndarray) and a.dtype == np.int16 and a.tolist() == [3, 3]
    with pytest.raises(ValueError, match="unknown device"):
        backend.array_module("tpu")


@pytest.mark.skipif(backend.cupy_module() is not None, reason="cupy is installed")
def test_cuda_without_cupy_is_a_clear_error():
    import deepseek as ds
    with pytest.raises(RuntimeError, match="cupy is not installed"):
        backend.array_module("cuda")
    with pytest.raises(RuntimeError, match="cupy is not installed"):
        ds.zeros(2, device="cuda")
    assert backend.cudnn_module() is None
