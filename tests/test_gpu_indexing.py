"""Indexing ops on CuPy give the CPU's numbers: gather, scatter, scatter_add, index_add,
index_select, advanced-index getitem/setitem, and their gradients (scatter-adds that
go through ``backend.scatter_add``), plus factories that allocate on the GPU.

Skips without cupy and a GPU (scripts/gpu_check.py runs it on a GPU machine).
"""
import numpy as np
import pytest

import deepseek as ds
from deepseek.backend import cupy_available, to_device

pytestmark = pytest.mark.skipif(not cupy_available(), reason="needs cupy and a GPU")


def _host(t):
    return to_device(t.detach()._data, "cpu")


def _pair(shape, seed, dtype=np.float32):
    """The same random leaf tensor on the CPU and on the GPU."""
    a = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return (ds.tensor(a, requires_grad=True),
            ds.tensor(a, requires_grad=True).to("cuda").detach().requires_grad_(True))


def _both(fn, *shapes, upstream_seed=99):
    """Run ``fn(*leaves)`` on each device, backprop the same upstream gradient, and
    compare outputs and input gradients."""
    pairs = [_pair(s, i) for i, s in enumerate(shapes)]
    cpu_in, gpu_in = [p[0] for p in pairs], [p[1] for p in pairs]
    out_c, out_g = fn(*cpu_in, "cpu"), fn(*gpu_in, "cuda")
    assert out_g.device.type == "cuda"
    np.testing.assert_allclose(_host(out_g), _host(out_c), rtol=1e-6, atol=1e-6)
    up = np.random.default_rng(upstream_seed).standard_normal(out_c.shape).astype(np.float32)
    out_c.backward(ds.tensor(up))
    out_g.backward(ds.tensor(up).to("cuda"))
    for c, g in zip(cpu_in, gpu_in):
        assert g.grad.device.type == "cuda"
        np.testing.assert_allclose(_host(g.grad), _host(c.grad), rtol=1e-5, atol=1e-6)


def _idx(values, device):
    return ds.tensor(np.asarray(values, dtype=np.int64)).to(device)


def test_gather_and_its_scatter_add_gradient():
    idx = [[0, 0, 2, 1], [3, 3, 3, 0], [1, 2, 2, 2]]          # repeats: the gradient sums
    _both(lambda a, dev: ds.gather(a, 1, _idx(idx, dev)), (3, 5))
    _both(lambda a, dev: ds.gather(a, 0, _idx([[0, 1], [0, 0]], dev)), (3, 2))


def test_scatter_and_scatter_add():
    idx = [[0, 1, 0], [2, 0, 2]]
    _both(lambda a, s, dev: ds.scatter(a, 1, _idx(idx, dev), s), (2, 4), (2, 3))
    _both(lambda a, s, dev: ds.scatter_add(a, 1, _idx(idx, dev), s), (2, 4), (2, 3))
    _both(lambda a, dev: ds.scatter(a, 0, _idx([[1, 0, 1, 1]], dev), 2.5), (2, 4))


def test_index_add_and_index_select():
    _both(lambda a, s, dev: ds.index_add(a, 0, _idx([4, 0, 4], dev), s, alpha=2.0), (5, 3), (3, 3))
    _both(lambda a, dev: ds.index_select(a, 1, _idx([3, 0, 0, 2], dev)), (2, 4))


def test_advanced_getitem_gradient_sums_repeats():
    _both(lambda a, dev: a[_idx([0, 2, 2, 0, 1], dev)], (3, 4))
    _both(lambda a, dev: a[[1, 1, 0], [2, 2, 3]], (2, 4))      # list indices: host arrays
    _both(lambda a, dev: a[:, _idx([[1, 1], [0, 3]], dev)], (2, 4))


def test_advanced_index_setitem():
    def put(a, v, dev):
        out = a * 1.0
        out[_idx([2, 0], dev)] = v
        return out
    _both(put, (3, 4), (2, 4))
    cpu, gpu = ds.zeros(3, 4), ds.zeros(3, 4, device="cuda")
    cpu[[0, 2], [1, 3]] = 7.0
    gpu[[0, 2], [1, 3]] = 7.0
    np.testing.assert_array_equal(_host(gpu), _host(cpu))


def test_embedding_gradient_with_repeated_rows():
    _both(lambda w, dev: ds.nn.functional.embedding(_idx([[1, 3, 1], [0, 1, 1]], dev), w), (4, 3))


def test_factories_allocate_on_the_gpu():
    for make in (lambda d: ds.zeros(2, 3, device=d), lambda d: ds.ones(4, device=d),
                 lambda d: ds.full((2, 2), 3.5, device=d), lambda d: ds.arange(7, device=d),
                 lambda d: ds.linspace(0, 1, 5, device=d), lambda d: ds.eye(3, device=d),
                 lambda d: ds.empty(3, device=d).fill_(1.0)):
        c, g = make("cpu"), make("cuda")
        assert g.device.type == "cuda" and type(g._data).__module__.startswith("cupy")
        assert g.dtype == c.dtype
        np.testing.assert_array_equal(_host(g), _host(c))
