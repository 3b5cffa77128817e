"""Indexing: basic and advanced getitem (scatter-add gradient), setitem in and out of
the graph, gather, masked_fill, index dtype errors."""
import numpy as np
import pytest

import deepseek as ds
from deepseek.testing import assert_close, check_gradients, compare_with_torch

torch = pytest.importorskip("torch")

IDX = np.array([0, 2, 2, 1, 2])
MASK = np.array([True, False, True, True])
INDEXES = {
    "int": lambda m: 1,
    "neg_int": lambda m: -1,
    "slice": lambda m: slice(1, None),
    "step": lambda m: (slice(None, None, 2), slice(1, 3)),
    "none_ellipsis": lambda m: (None, Ellipsis, 0),
    "ellipsis_slice": lambda m: (Ellipsis, slice(0, 2)),
    "int_and_slice": lambda m: (1, slice(None), 2),
    "repeated_idx": lambda m: m.tensor(IDX),
    "repeated_idx_dim1": lambda m: (slice(None), m.tensor(IDX)),
    "list_idx": lambda m: [0, 0, 3],
    "two_arrays": lambda m: (m.tensor([0, 3, 0]), m.tensor([1, 1, 1])),
    "2d_index_array": lambda m: m.tensor([[0, 1], [1, 1]]),
    "bool_mask": lambda m: m.tensor(MASK),
    "bool_mask_2d": lambda m: m.tensor(np.arange(12).reshape(4, 3) % 3 == 0),
    "array_slice_array": lambda m: (m.tensor([0, 0, 2]), slice(None), m.tensor([1, 2, 1])),
    "int32_idx": lambda m: m.tensor(np.array([3, 3, 0], dtype=np.int32)),
    "0d_tensor_idx": lambda m: m.tensor(2),
}


@pytest.mark.parametrize("name", sorted(INDEXES))
def test_getitem_matches_torch(name):
    shape = (4, 3, 5) if name in ("array_slice_array",) else (4, 3)
    if name in ("step", "none_ellipsis", "ellipsis_slice", "int_and_slice", "repeated_idx_dim1"):
        shape = (4, 3, 5)
    compare_with_torch(lambda x: x[INDEXES[name](ds)], lambda x: x[INDEXES[name](torch)], [shape])
    compare_with_torch(lambda x: x[INDEXES[name](ds)], lambda x: x[INDEXES[name](torch)], [shape],
                       noncontiguous=True)


@pytest.mark.parametrize("name", ["repeated_idx", "two_arrays", "bool_mask", "step", "list_idx",
                                  "array_slice_array"])
def test_getitem_gradcheck(name):
    shape = (4, 3, 5) if name in ("array_slice_array", "step") else (4, 3)
    check_gradients(lambda x: x[INDEXES[name](ds)], shape)


def test_repeated_indices_accumulate_gradient():
    x = ds.zeros(4, requires_grad=True)
    x[ds.tensor([1, 1, 1, 3])].sum().backward()
    assert x.grad.tolist() == [0.0, 3.0, 0.0, 1.0]


def test_index_out_of_bounds_message():
    with pytest.raises(IndexError, match=r"out of bounds for tensor of shape \(4, 3\)"):
        ds.ones(4, 3)[ds.tensor([0, 4])]
    with pytest.raises(IndexError):
        ds.ones(4, 3)[4]


def test_index_dtype_errors():
    x = ds.ones(4)
    with pytest.raises(IndexError, match="long, int, byte or bool"):
        x[ds.tensor([0.0, 1.0])]
    with pytest.raises(IndexError, match="long, int, byte or bool"):
        x[[0.5, 1.0]]
    with pytest.raises(IndexError, match="long, int, byte or bool"):
        x[ds.tensor([0.0])] = 1.0
    with pytest.raises(RuntimeError, match="gather.*int64"):
        ds.gather(ds.ones(2, 2), 1, ds.tensor([[0.0]]))
    with pytest.raises(RuntimeError, match="boolean masks"):
        x.masked_fill(ds.tensor([1, 0, 0, 0]), 0.0)


def test_setitem_out_of_graph():
    x = ds.zeros(3, 4)
    x[0] = 1.0
    x[:, 1] = ds.tensor([5.0, 6.0, 7.0])
    x[ds.tensor([2, 2])] = 9.0
    x[x > 8] = -1.0
    t = torch.zeros(3, 4)
    t[0] = 1.0
    t[:, 1] = torch.tensor([5.0, 6.0, 7.0])
    t[torch.tensor([2, 2])] = 9.0
    t[t > 8] = -1.0
    assert_close(x, t)
    v = x._version
    x[1, 1] = 0.0
    assert x._version == v + 1


def test_setitem_in_graph_matches_torch():
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((3, 4)).astype(np.float32)
    v_np = rng.standard_normal(4).astype(np.float32)

    def run(m, a, v):
        h = a * 2
        h[1] = v * 3          # value requires grad
        h[:, 0] = 0.0          # constant into a tensor in the graph
        return (h * h).sum()

    a = ds.tensor(a_np, requires_grad=True)
    v = ds.tensor(v_np, requires_grad=True)
    ta = torch.tensor(a_np, requires_grad=True)
    tv = torch.tensor(v_np, requires_grad=True)
    out, tout = run(ds, a, v), run(torch, ta, tv)
    assert_close(out, tout, rtol=1e-5)
    out.backward()
    tout.backward()
    assert_close(a.grad, ta.grad)
    assert_close(v.grad, tv.grad)


def test_setitem_value_requiring_grad_into_plain_tensor():
    w = ds.randn(2, requires_grad=True)
    buf = ds.zeros(3, 2)
    buf[1] = w
    assert buf.requires_grad and buf.grad_fn is not None
    (buf * ds.tensor([[1.0], [2.0], [3.0]])).sum().backward()
    assert w.grad.tolist() == [2.0, 2.0]


def test_setitem_on_leaf_requiring_grad_raises():
    x = ds.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        x[0] = 2.0
    with ds.no_grad():
        x[0] = 2.0
    assert x.tolist() == [2.0, 1.0, 1.0]


def test_setitem_gradcheck():
    def fn(a, v):
        h = a * 1.0
        h[ds.tensor([0, 2])] = v
        return h.exp()
    check_gradients(fn, (3, 2), (2,))


def test_gather_matches_torch():
    idx = np.array([[0, 2, 2], [1, 0, 0]])
    compare_with_torch(lambda x: ds.gather(x, 1, ds.tensor(idx)),
                       lambda x: torch.gather(x, 1, torch.tensor(idx)), [(2, 4)])
    compare_with_torch(lambda x: ds.gather(x, 0, ds.tensor(idx)),
                       lambda x: torch.gather(x, 0, torch.tensor(idx)), [(3, 3)])
    # index smaller than the input off the gather dim (allowed by PyTorch)
    small = np.array([[1], [0]])
    compare_with_torch(lambda x: x.gather(1, ds.tensor(small)),
                       lambda x: x.gather(1, torch.tensor(small)), [(3, 4)])
    check_gradients(lambda x: ds.gather(x, 1, ds.tensor(idx)), (2, 4))


def test_masked_fill_matches_torch():
    mask = np.array([[True, False, True], [False, False, True]])
    compare_with_torch(lambda x: x.masked_fill(ds.tensor(mask), -1.5),
                       lambda x: x.masked_fill(torch.tensor(mask), -1.5), [(2, 3)])
    compare_with_torch(lambda x: x.masked_fill(ds.tensor(mask[:1]), 0.0),
                       lambda x: x.masked_fill(torch.tensor(mask[:1]), 0.0), [(2, 3)])
    check_gradients(lambda x: x.masked_fill(ds.tensor(mask), 2.0), (2, 3))


def test_iteration_and_len():
    x = ds.arange(6).reshape(3, 2)
    assert len(x) == 3
    assert [r.tolist() for r in x] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(TypeError):
        len(ds.tensor(1.0))
