"""Tensor basics: construction, dtypes, properties, conversion, creation functions."""
import pickle

import numpy as np
import pytest

import deepseek as ds
from deepseek.testing import assert_close, compare_with_numpy

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("data", [1, 1.5, True, [1, 2], [1.0, 2], [[True, False]], [], [[1, 2], [3, 4]],
                                  [1, 2.5], 0])
def test_tensor_infers_dtype_like_torch(data):
    assert ds.tensor(data).dtype.name == str(torch.tensor(data).dtype)[6:]
    assert ds.tensor(data).shape == tuple(torch.tensor(data).shape)


def test_deepseek_tensor_is_the_factory_function():
    import deepseek._tensor  # noqa: F401  (the class lives in a private module)
    assert callable(ds.tensor) and ds.tensor([1, 2]).tolist() == [1, 2]
    assert ds.as_tensor([1.0]).dtype == ds.float32


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64", "int32", "int64", "bool",
                                   "int8", "uint8"])
def test_dtypes_roundtrip(dtype):
    x = ds.tensor([0, 1, 1], dtype=dtype)
    assert x.dtype.name == dtype
    assert x.dtype == getattr(ds, dtype)
    assert x.tolist() == ([False, True, True] if dtype == "bool" else [0, 1, 1])
    assert x.is_floating_point() == (dtype.startswith("float") or dtype == "bfloat16")


def test_tensor_copies_and_from_numpy_shares():
    a = np.arange(3.0)
    t = ds.tensor(a)
    f = ds.from_numpy(a)
    a[0] = 7
    assert t[0].item() == 0.0 and f[0].item() == 7.0
    assert t.dtype == ds.float64
    with pytest.raises(TypeError):
        ds.from_numpy([1, 2])
    with pytest.raises(TypeError):
        ds.tensor(["a", "b"])
    u = ds.tensor(np.arange(3, dtype=np.uint16))
    assert u.dtype == ds.int64
    t2 = ds.Tensor([1.0, 2.0])
    assert t2.tolist() == [1.0, 2.0]


def test_properties_and_conversions():
    x = ds.tensor([[1.5, 2.0], [3.0, 4.0]])
    assert x.shape == (2, 2) and x.dtype == ds.float32 and x.device == "cpu"
    assert str(x.device) == "cpu" and not x.is_cuda
    assert x.element_size() == 4 and x.numel() == 4 and x.nelement() == 4
    assert x[0, 0].item() == 1.5 and isinstance(x[0, 0].item(), float)
    assert float(x[0, 1]) == 2.0 and int(x[1, 1]) == 4
    assert ds.tensor([3])[0].__index__() == 3
    assert list(range(10))[ds.tensor(2)] == 2
    assert bool(ds.tensor([1.0])) is True
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(x)
    with pytest.raises(RuntimeError, match="4 elements"):
        x.item()
    assert x.tolist() == [[1.5, 2.0], [3.0, 4.0]]
    assert np.array(x).shape == (2, 2)
    assert x.numpy() is x.numpy()
    assert x.array is x.numpy()
    assert x.type() == "deepseek.float32"
    assert x.type_as(ds.ones(1, dtype=ds.float64)).dtype == ds.float64


def test_repr():
    assert repr(ds.tensor([1.0, 2.0])) == "tensor([1., 2.])"
    assert "dtype=deepseek.float16" in repr(ds.ones(2, dtype=ds.float16))
    assert "dtype=deepseek.bfloat16" in repr(ds.ones(2, dtype=ds.bfloat16))
    assert "requires_grad=True" in repr(ds.ones(2, requires_grad=True))
    assert "grad_fn=<MulBackward>" in repr(ds.ones(2, requires_grad=True) * 2)
    assert repr(ds.tensor(3)) == "tensor(3)"


def test_clone_is_independent_and_differentiable():
    x = ds.tensor([1.0, 2.0], requires_grad=True)
    c = x.clone()
    assert c.requires_grad and not np.shares_memory(c.detach().numpy(), x.detach().numpy())
    (c * 3).sum().backward()
    assert x.grad.tolist() == [3.0, 3.0]


def test_pickle_roundtrip():
    x = ds.randn(3, 2)
    y = pickle.loads(pickle.dumps(x))
    assert_close(x, y, rtol=0, atol=0)
    assert y.dtype == x.dtype


def test_creation_functions_match_torch():
    assert ds.zeros(2, 3).dtype == ds.float32 and ds.zeros((2, 3)).shape == (2, 3)
    assert ds.ones(2, dtype=ds.int64).tolist() == [1, 1]
    assert ds.empty(0, 4).shape == (0, 4)
    for v in (1.5, 2, True):
        assert ds.full((2,), v).dtype.name == str(torch.full((2,), v).dtype)[6:]
    for args in [(5,), (1, 4), (0.0, 1.0, 0.25), (1, 7, 2), (5, 1, -1)]:
        got, want = ds.arange(*args), torch.arange(*args)
        assert got.dtype.name == str(want.dtype)[6:]
        assert_close(got, want)
    assert_close(ds.linspace(0, 1, 5), torch.linspace(0, 1, 5))
    assert_close(ds.eye(3), torch.eye(3))
    assert_close(ds.eye(2, 3), torch.eye(2, 3))
    x = ds.ones(2, 3, dtype=ds.float16)
    assert ds.zeros_like(x).dtype == ds.float16 and ds.ones_like(x).shape == (2, 3)
    assert ds.zeros_like(x, dtype=ds.float64).dtype == ds.float64
    assert ds.full_like(x, 7).tolist() == [[7.0] * 3] * 2
    assert ds.empty_like(x).shape == (2, 3)
    assert x.new_zeros(4).dtype == ds.float16 and x.new_ones(1, 2).shape == (1, 2)
    assert x.new_full((2,), 3.0).tolist() == [3.0, 3.0]
    assert x.new_tensor([1, 2]).dtype == ds.float16
    with pytest.raises(ValueError, match="non-negative"):
        ds.zeros(-1)
    with pytest.raises(ValueError, match="step"):
        ds.arange(0, 5, 0)
    assert ds.zeros(2, requires_grad=True).requires_grad


def test_default_dtype():
    assert ds.get_default_dtype() == ds.float32
    ds.set_default_dtype(ds.float64)
    try:
        assert ds.tensor([1.0]).dtype == ds.float64
        assert ds.zeros(1).dtype == ds.float64
        assert (ds.tensor([1]) * 0.5).dtype == ds.float64
    finally:
        ds.set_default_dtype(ds.float32)
    with pytest.raises(TypeError, match="floating"):
        ds.set_default_dtype(ds.int64)


def test_dtype_helpers():
    from deepseek import dtypes
    assert dtypes.as_dtype("torch.float16") == ds.float16
    assert dtypes.as_dtype(float) == ds.float32 and dtypes.as_dtype(int) == ds.int64
    assert dtypes.as_dtype(bool) == ds.bool
    with pytest.raises(TypeError, match="unknown dtype"):
        dtypes.as_dtype("float128x")
    assert ds.promote_types(ds.bfloat16, ds.float16) == ds.float32
    assert ds.promote_types(ds.int32, ds.float16) == ds.float16


def test_device_objects():
    d = ds.device("cpu")
    assert d == "cpu" and str(d) == "cpu" and d.type == "cpu" and d.index is None
    c = ds.device("cuda:1")
    assert c.type == "cuda" and c.index == 1 and str(c) == "cuda:1" and c != "cpu"
    assert ds.device("cuda") == "cuda:0"
    assert repr(c) == "device(type='cuda', index=1)"
    with pytest.raises(ValueError, match="unknown device"):
        ds.device("tpu")
    assert ds.ones(1).to("cpu").device == "cpu"


def test_numpy_interop_and_array_priority():
    a = np.ones(3, dtype=np.float32)
    t = ds.tensor([1.0, 2.0, 3.0])
    out = a * t  # numpy defers to the Tensor
    assert isinstance(out, ds.Tensor) and out.tolist() == [1.0, 2.0, 3.0]
    assert (t + np.float64(1)).dtype == ds.float32
    compare_with_numpy(lambda x: x @ x.T, lambda x: x @ x.T, [(3, 4)], rtol=1e-5, atol=1e-6)


def test_half_precision_storage():
    x = ds.tensor([1.0, 2.0, 3.0], dtype=ds.bfloat16)
    assert x.tolist() == [1.0, 2.0, 3.0]
    assert (x * 2).dtype == ds.bfloat16
    assert_close(x.float() + 0.5, torch.tensor([1.5, 2.5, 3.5]))


def test_array_protocol_copy_true_does_not_share_memory():
    """np.array(t, copy=True) gives a private copy; np.asarray(t) still shares."""
    t = ds.ones(3)
    a = np.array(t, copy=True)
    a[0] = 5.0
    assert t.tolist() == [1.0, 1.0, 1.0]
    b = np.asarray(t)
    b[1] = 7.0
    assert t.tolist() == [1.0, 7.0, 1.0]
    assert np.array(t, dtype=np.float64).dtype == np.float64
