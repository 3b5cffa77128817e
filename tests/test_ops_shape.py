"""View and shape ops: gradcheck, PyTorch parity, views sharing memory, errors."""
import numpy as np
import pytest

import deepseek as ds
from deepseek.testing import assert_close, check_gradients, compare_with_torch

torch = pytest.importorskip("torch")

# name -> (fn usable with both libraries, input shapes)
SAME = {
    "reshape": (lambda x: x.reshape(4, 6), [(2, 3, 4)]),
    "reshape_infer": (lambda x: x.reshape(-1, 2), [(2, 3, 4)]),
    "view": (lambda x: x.view(6, 4), [(2, 3, 4)]),
    "permute": (lambda x: x.permute(2, 0, 1), [(2, 3, 4)]),
    "transpose": (lambda x: x.transpose(0, -1), [(2, 3, 4)]),
    "t": (lambda x: x.t(), [(3, 4)]),
    "T": (lambda x: x.T, [(3, 4)]),
    "mT": (lambda x: x.mT, [(2, 3, 4)]),
    "expand": (lambda x: x.expand(2, 3, 4), [(3, 1)]),
    "expand_neg1": (lambda x: x.expand(5, -1, 4), [(3, 1)]),
    "expand_as": (lambda x, y: x.expand_as(y), [(1, 4), (3, 4)]),
    "squeeze_all": (lambda x: x.squeeze(), [(1, 3, 1, 2)]),
    "squeeze_dim": (lambda x: x.squeeze(2), [(1, 3, 1, 2)]),
    "squeeze_noop": (lambda x: x.squeeze(1), [(1, 3, 1, 2)]),
    "unsqueeze": (lambda x: x.unsqueeze(1), [(3, 2)]),
    "unsqueeze_neg": (lambda x: x.unsqueeze(-1), [(3, 2)]),
    "flatten": (lambda x: x.flatten(), [(2, 3, 4)]),
    "flatten_range": (lambda x: x.flatten(1, 2), [(2, 3, 4, 2)]),
    "unflatten": (lambda x: x.unflatten(1, (2, 3)), [(4, 6)]),
    "cat0": (lambda x, y: ds_or_torch(x).cat([x, y], 0), [(2, 3), (4, 3)]),
    "cat1": (lambda x, y: ds_or_torch(x).cat([x, y, x], dim=-1), [(2, 3), (2, 1)]),
    "stack": (lambda x, y: ds_or_torch(x).stack([x, y], 1), [(2, 3), (2, 3)]),
    "stack_last": (lambda x, y: ds_or_torch(x).stack([x, y], -1), [(2, 3), (2, 3)]),
    "split": (lambda x: x.split(2, dim=1), [(3, 5)]),
    "split_sizes": (lambda x: x.split([1, 3, 1], dim=1), [(3, 5)]),
    "chunk": (lambda x: x.chunk(3, 0), [(7, 2)]),
    "chunk_uneven": (lambda x: x.chunk(4, 1), [(2, 6)]),
    "repeat": (lambda x: x.repeat(2, 1, 3), [(3, 2)]),
    "contiguous": (lambda x: x.t().contiguous(), [(3, 2)]),
    "clone": (lambda x: x.clone(), [(3, 2)]),
    "view_as": (lambda x, y: x.view_as(y), [(6,), (2, 3)]),
    "reshape_0d": (lambda x: x.reshape(1, 1), [()]),
    "flatten_0d": (lambda x: x.flatten(), [()]),
    "reshape_empty": (lambda x: x.reshape(3, 0, 2), [(0, 6)]),
    "cat_empty": (lambda x, y: ds_or_torch(x).cat([x, y]), [(0, 3), (2, 3)]),
    "tril": (lambda x: x.tril(), [(4, 4)]),
    "triu_k": (lambda x: x.triu(1), [(3, 4)]),
}


def ds_or_torch(x):
    return torch if isinstance(x, torch.Tensor) else ds


@pytest.mark.parametrize("name", sorted(SAME))
def test_shape_op_matches_torch(name):
    fn, shapes = SAME[name]
    compare_with_torch(fn, fn, shapes)


@pytest.mark.parametrize("name", sorted(SAME))
def test_shape_op_noncontiguous(name):
    fn, shapes = SAME[name]
    if name in ("view", "view_as"):
        return  # a view of a strided input is not always possible (same as PyTorch)
    compare_with_torch(fn, fn, shapes, noncontiguous=True)


@pytest.mark.parametrize("name", sorted(SAME))
def test_shape_op_gradcheck(name):
    fn, shapes = SAME[name]
    if any(0 in s for s in shapes):
        return
    check_gradients(lambda *a: _sum_outputs(fn(*a)), *shapes)


def _sum_outputs(out):
    if isinstance(out, (tuple, list)):
        return ds.cat([o.reshape(-1) for o in out])
    return out


def test_split_partial_use_gets_zero_grads():
    x = ds.randn(6, 2, requires_grad=True)
    a, b, c = x.split(2)
    (b * 3).sum().backward()
    g = x.grad.numpy()
    assert (g[:2] == 0).all() and (g[2:4] == 3).all() and (g[4:] == 0).all()


def test_views_share_memory_and_version():
    x = ds.arange(6.0)
    v = x.view(2, 3)
    v2 = x.reshape(3, 2)
    t = v.t()
    x[0] = 100.0
    assert v[0, 0].item() == 100.0 and v2[0, 0].item() == 100.0 and t[0, 0].item() == 100.0
    assert v._version == x._version == t._version


def test_view_of_noncontiguous_raises_reshape_copies():
    x = ds.randn(3, 4).t()
    with pytest.raises(RuntimeError, match="view"):
        x.view(12)
    assert_close(x.reshape(12), torch.tensor(x.numpy()).reshape(12))


def test_shape_errors():
    x = ds.ones(2, 3)
    with pytest.raises(RuntimeError, match=r"shape \[4, 2\] is invalid for input of size 6"):
        x.reshape(4, 2)
    with pytest.raises(RuntimeError, match="only one dimension can be inferred"):
        x.reshape(-1, -1)
    with pytest.raises(RuntimeError, match="expand"):
        x.expand(4, 3)
    with pytest.raises(RuntimeError, match="expand"):
        x.expand(3)
    with pytest.raises(RuntimeError, match="permute"):
        x.permute(0)
    with pytest.raises(RuntimeError, match="repeated dim"):
        x.permute(0, 0)
    with pytest.raises(IndexError, match="dimension out of range"):
        x.transpose(0, 2)
    with pytest.raises(RuntimeError, match=r"cat: sizes of tensors must match.*\(2, 3\).*\(2, 4\)"):
        ds.cat([x, ds.ones(2, 4)], 0)
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        ds.stack([x, ds.ones(3, 2)])
    with pytest.raises(RuntimeError, match="split_sizes"):
        x.split([1, 1], dim=1)
    with pytest.raises(RuntimeError, match="non-empty"):
        ds.cat([])
    with pytest.raises(RuntimeError, match="t\\(\\) expects"):
        ds.ones(2, 2, 2).t()


def test_cat_promotes_dtypes_like_torch():
    out = ds.cat([ds.ones(2, dtype="int32"), ds.ones(2, dtype="float16")])
    tout = torch.cat([torch.ones(2, dtype=torch.int32), torch.ones(2, dtype=torch.float16)])
    assert out.dtype.name == str(tout.dtype)[6:]


def test_size_and_dims():
    x = ds.ones(2, 3, 4)
    assert x.shape == (2, 3, 4) and x.size() == (2, 3, 4) and x.size(-1) == 4
    assert x.shape.numel() == 24 and x.numel() == 24 and x.dim() == 3 and x.ndim == 3
    assert repr(x.shape) == "deepseek.Size([2, 3, 4])"
    with pytest.raises(IndexError):
        x.size(3)


def test_cast_and_to():
    x = ds.randn(3, requires_grad=True)
    y = x.double()
    assert y.dtype == ds.float64 and y.requires_grad
    (y * 2).sum().backward()
    assert x.grad.dtype == ds.float32 and x.grad.tolist() == [2.0, 2.0, 2.0]
    assert x.to(ds.float32) is x
    assert x.to("cpu") is x
    z = x.detach().to(ds.float16)
    assert z.dtype == ds.float16
    assert x.detach().to("float64", copy=True).dtype == ds.float64
    assert x.to(ds.zeros(1, dtype=ds.bfloat16)).dtype == ds.bfloat16
    assert ds.tensor([1.7, -1.7]).long().tolist() == [1, -1]
    assert ds.tensor([0.0, 2.0]).bool().tolist() == [False, True]
    compare_with_torch(lambda a: a.half().float(), lambda a: a.half().float(), [(5,)])
    compare_with_torch(lambda a: a.to(ds.bfloat16).float(), lambda a: a.to(torch.bfloat16).float(), [(5,)])
