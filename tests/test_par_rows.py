"""Passes split over threads (deepseek.ops._par): every row once, the same bits as the
one-thread pass through the ops that use it (layer norm, GELU, linear's bias add, add),
and no wait on the pool from one of its own threads."""
import threading

import numpy as np
import pytest

import deepseek
from deepseek.ops import _par

F = deepseek.nn.functional


def _threads(monkeypatch, n, min_elements=1):
    monkeypatch.setattr(_par, "blas_threads", lambda: n)
    monkeypatch.setattr(_par, "ROWS_MIN_ELEMENTS", min_elements)


@pytest.mark.parametrize("workers,rows", [(2, 10), (3, 10), (4, 3), (2, 1), (1, 7)])
def test_split_rows_covers_every_row_once_in_contiguous_ranges(monkeypatch, workers, rows):
    _threads(monkeypatch, workers)
    seen, lock = [], threading.Lock()

    def fn(lo, hi):
        with lock:
            seen.append((lo, hi, threading.current_thread().name))
    _par.split_rows(rows, rows, fn)
    ranges = sorted((lo, hi) for lo, hi, _ in seen)
    assert ranges[0][0] == 0 and ranges[-1][1] == rows
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges, ranges[1:]))
    assert len(ranges) == min(workers, rows)
    if len(ranges) > 1:        # the caller ran a piece, the pool the others
        names = {n for _, _, n in seen}
        assert threading.current_thread().name in names
        assert any(n.startswith(_par.FORK_SAFE_THREAD_PREFIX) for n in names)


def test_split_rows_stays_on_the_caller_below_the_size_or_on_a_pool_thread(monkeypatch):
    _threads(monkeypatch, 2, min_elements=100)
    calls = []
    _par.split_rows(10, 99, lambda lo, hi: calls.append((lo, hi)))
    assert calls == [(0, 10)]                          # too small to wake a worker
    _threads(monkeypatch, 2)
    inner = []

    def outer(lo, hi):        # a split from inside a pool thread must not wait on the pool
        if threading.current_thread().name.startswith(_par.FORK_SAFE_THREAD_PREFIX):
            _par.split_rows(4, 4, lambda a, b: inner.append((a, b)))
    _par.split_rows(2, 2, outer)
    assert inner == [(0, 4)]


def _ops(x, w, b, res):
    """Forward and gradients of the ops whose passes are split, as numpy arrays."""
    xt = deepseek.tensor(x, requires_grad=True)
    wt, bt = deepseek.tensor(w, requires_grad=True), deepseek.tensor(b, requires_grad=True)
    lw = deepseek.tensor(np.linspace(0.5, 1.5, x.shape[-1], dtype=np.float32))
    lb = deepseek.tensor(np.linspace(-1, 1, x.shape[-1], dtype=np.float32))
    h = F.linear(xt, wt, bt)                          # bias add
    g = F.gelu(h)                                     # GELU with its CDF kept
    y = F.layer_norm(g + deepseek.tensor(res), (x.shape[-1],), lw, lb)   # add
    y.sum().backward()
    with deepseek.no_grad():                          # GELU without the CDF
        g2 = F.gelu(h.detach())
    return [t.numpy() for t in (h.detach(), g.detach(), g2, y.detach(), xt.grad, wt.grad, bt.grad)]


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("shape", [(5, 7, 64), (3, 130), (1, 33)])
def test_ops_give_the_one_thread_bits_when_split(monkeypatch, workers, shape):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    w = rng.standard_normal((shape[-1], shape[-1])).astype(np.float32)
    b = rng.standard_normal(shape[-1]).astype(np.float32)
    res = rng.standard_normal(shape).astype(np.float32)
    _threads(monkeypatch, 1)
    want = _ops(x, w, b, res)
    _threads(monkeypatch, workers)
    for got, ref in zip(_ops(x, w, b, res), want):
        np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


def test_add_rows_with_a_row_vector_and_a_matrix():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((9, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    c = rng.standard_normal((9, 5)).astype(np.float32)
    np.testing.assert_array_equal(_par.add_rows(a, b, np.empty_like(a)), a + b)
    np.testing.assert_array_equal(_par.add_rows(a, c, np.empty_like(a)), a + c)
