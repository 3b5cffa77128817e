"""Every user mistake gets an error saying what was expected and what came."""
import numpy as np
import pytest

import sys

import deepseek as ds
from deepseek.backend import Device

ds.Tensor  # load the engine  # noqa: B018
tensor_mod = sys.modules["deepseek._tensor"]

BINARY = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "pow": lambda a, b: a ** b, "maximum": ds.maximum,
    "minimum": ds.minimum,
}


@pytest.mark.parametrize("name", sorted(BINARY))
def test_broadcast_failure_names_op_and_shapes(name):
    with pytest.raises(RuntimeError, match=rf"^{name}: shapes \(2, 3\) and \(4,\) cannot be broadcast together$"):
        BINARY[name](ds.ones(2, 3), ds.ones(4))


def test_broadcast_failure_other_ops():
    with pytest.raises(RuntimeError, match=r"where: shapes \(2,\) and \(3,\) and \(3,\) cannot be broadcast"):
        ds.where(ds.tensor([True, False]), ds.ones(3), ds.zeros(3))
    with pytest.raises(RuntimeError, match=r"less: shapes \(2, 3\) and \(2,\)"):
        ds.ones(2, 3) < ds.ones(2)
    with pytest.raises(RuntimeError, match=r"add: shapes \(2, 3\) and \(3, 2\)"):
        x = ds.ones(2, 3, requires_grad=True) * 1
        x += ds.ones(3, 2)
    with pytest.raises(RuntimeError, match=r"output with shape \[3\] doesn't match the broadcast shape \[2, 3\]"):
        ds.ones(3).add_(ds.ones(2, 3))


def test_matmul_shape_mismatch():
    with pytest.raises(RuntimeError, match=r"matmul: shapes \(2, 3\) and \(2, 3\) cannot be multiplied \(3 != 2\)"):
        ds.ones(2, 3) @ ds.ones(2, 3)
    with pytest.raises(RuntimeError, match=r"matmul: shapes \(5, 2, 3\) and \(4,\)"):
        ds.matmul(ds.ones(5, 2, 3), ds.ones(4))


class _FakeCudaArray(np.ndarray):
    """A numpy array that claims to live on cuda:0 (there is no GPU here)."""


def test_mixing_devices_names_both(monkeypatch):
    real = tensor_mod.device_of
    monkeypatch.setattr(tensor_mod, "device_of",
                        lambda a: Device("cuda:0") if isinstance(a, _FakeCudaArray) else real(a))
    gpu = ds.from_numpy(np.ones(3, dtype=np.float32).view(_FakeCudaArray))
    assert gpu.device == "cuda:0"
    with pytest.raises(RuntimeError, match="add: expected all tensors to be on the same device.*cpu and cuda:0"):
        ds.ones(3) + gpu
    with pytest.raises(RuntimeError, match="matmul: expected all tensors to be on the same device"):
        ds.ones(3) @ gpu


def test_numpy_subclass_on_cpu_is_not_a_device_mismatch():
    m = ds.from_numpy(np.ones(3, dtype=np.float32).view(_FakeCudaArray))
    assert (ds.ones(3) + m).tolist() == [2.0, 2.0, 2.0]


def test_cuda_without_cupy_is_clear():
    if ds.cupy_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="cupy"):
        ds.ones(2).to("cuda")


def test_index_dtype_errors():
    x = ds.ones(3, 3)
    with pytest.raises(IndexError, match="tensors used as indices must be long, int, byte or bool tensors, got dtype float32"):
        x[ds.tensor([0.0])]
    with pytest.raises(IndexError, match="list of floats"):
        x[[1.0]]
    with pytest.raises(RuntimeError, match="gather\\(\\): expected dtype int64 for index, got float32"):
        x.gather(0, ds.tensor([[0.0]]))
    with pytest.raises(RuntimeError, match="gather\\(\\): index tensor must have the same number of dimensions"):
        x.gather(0, ds.tensor([0]))


def test_autograd_misuse_errors():
    x = ds.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="implicitly created only for scalar outputs"):
        (x * 2).backward()
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time.*retain_graph=True"):
        y.backward()
    with pytest.raises(RuntimeError, match="only tensors of floating point dtype can require gradients"):
        ds.ones(2, dtype=ds.int64, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad is being used in an in-place"):
        x.add_(1)
    with pytest.raises(TypeError, match="expected Tensors"):
        ds.autograd.backward([1.0])


def test_shape_op_errors_show_shapes():
    with pytest.raises(RuntimeError, match=r"shape \[7\] is invalid for input of size 6"):
        ds.ones(2, 3).reshape(7)
    with pytest.raises(RuntimeError, match=r"expanded size of the tensor \(4\) must match the existing size \(3\)"):
        ds.ones(3).expand(2, 4)
    with pytest.raises(RuntimeError, match=r"tensor 0 has shape \(2, 3\) but tensor 1 has shape \(3, 2\)"):
        ds.cat([ds.ones(2, 3), ds.ones(3, 2)], dim=1)


def test_bad_operands():
    with pytest.raises(TypeError, match="unsupported operand of type str"):
        ds.ones(2) + "a"
    with pytest.raises(TypeError, match="could not build a tensor"):
        ds.tensor([[1, 2], [3]])
    with pytest.raises(RuntimeError, match="floating point input"):
        ds.tensor([1, 2]).mean()
    with pytest.raises(ValueError, match="at least one of min and max"):
        ds.ones(2).clamp()
    with pytest.raises(ValueError, match="approximate"):
        ds.gelu(ds.ones(2), approximate="fast")
