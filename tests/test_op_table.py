"""The declarative op suite: one test per (op, check), generated from the op table.

Every entry of ``deepseek.ops.registry.OP_TABLE`` gets each check it admits (see
``deepseek.testing.op_checks``): ``forward_numpy``, ``forward_torch`` (skipped
without PyTorch), ``gradcheck`` (float64, no PyTorch needed), ``dtypes``, ``inplace``
and ``methods``. To run the suite with PyTorch hidden (every check but
``forward_torch`` must still run and pass)::

    python -c "import sys; sys.modules['torch'] = None; import pytest; \
               sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_op_table.py']))"

``test_gradchecks_run_with_torch_hidden`` checks the same inside the normal run.
"""
import inspect

import pytest

import deepseek as ds
from deepseek.ops import registry
from deepseek.testing import CHECKS, op_check_cases, op_check_id

CASES = op_check_cases(registry.OP_TABLE)


@pytest.mark.parametrize("info,check", CASES, ids=op_check_id)
def test_op(info, check):
    CHECKS[check](info)


# ---- the table itself ---------------------------------------------------------------------
def test_every_function_subclass_has_a_table_entry():
    missing = registry.unregistered_functions()
    assert not missing, f"Function subclasses without an op table entry: {missing}"


def test_unregistered_function_is_reported():
    # the coverage test can fail: a new Function subclass with no entry is listed
    class _Probe(ds.autograd.Function):
        pass
    _Probe.__module__ = "deepseek.ops.probe"
    _Probe.__name__ = "Probe"
    try:
        assert _Probe in registry.unregistered_functions()
    finally:
        _Probe.__module__ = "tests.probe"  # out of deepseek.ops: other tests must not see it
    assert _Probe not in registry.unregistered_functions()


# Entries whose forward has no numpy reference, and why (keep this list short)
NO_NUMPY_REFERENCE = {"dropout": "random mask: checked by gradcheck with a fixed generator"}


def test_every_entry_with_samples_has_a_numpy_reference():
    lacking = {e.name for e in registry.OP_TABLE if e.ref_numpy is None}
    assert lacking == set(NO_NUMPY_REFERENCE), lacking


def test_every_entry_has_samples_and_a_valid_policy():
    for e in registry.OP_TABLE:
        assert e.samples(), e.name
        assert e.autocast in ("lower", "fp32", "promote", "none"), e.name
        # composites of other ops (normalize) and the identity (+x) name no Function
        if e.differentiable and e.name not in ("normalize", "pos") and not e.functions:
            raise AssertionError(f"{e.name}: differentiable but names no Function")


def test_autocast_policies_follow_pytorch_lists():
    E = ds.ops.elementwise
    assert registry.autocast_policy(ds.ops.linalg.Matmul) == "lower"
    assert registry.autocast_policy(ds.ops.conv.ConvNd) == "lower"
    assert registry.autocast_policy(E.Exp) == "fp32"
    assert registry.autocast_policy(type("UserOp", (ds.autograd.Function,), {})) == "none"
    assert registry.autocast_policy(ds.ops.shape.Cat) == "promote"
    assert registry.autocast_policy(E.Add) == "none"


def test_one_generated_test_per_op_and_check():
    ids = [f"{i.name}-{c}" for i, c in CASES]
    assert len(ids) == len(set(ids))
    names = {i.name for i, _ in CASES}
    assert {"add", "matmul", "sum", "conv2d", "cross_entropy", "eq"} <= names
    assert ("add", "gradcheck") in {(i.name, c) for i, c in CASES}
    assert ("argmax", "gradcheck") not in {(i.name, c) for i, c in CASES}  # not differentiable


# ---- methods generated from the table are real, documented attributes ----------------------
@pytest.mark.parametrize("name", ["add", "__add__", "__radd__", "add_", "__iadd__", "sum", "exp",
                                  "reshape", "__getitem__", "__eq__", "repeat", "new_zeros"])
def test_tensor_methods_are_documented_class_attributes(name):
    attr = ds.Tensor.__dict__[name]
    assert attr.__qualname__ == f"Tensor.{name}"
    assert attr.__doc__ and attr.__doc__.strip()
    assert "self" not in attr.__doc__[:1]


def test_help_and_signature_of_generated_methods():
    assert "alpha" in str(inspect.signature(ds.Tensor.add))
    assert str(inspect.signature(ds.Tensor.add_)) == str(inspect.signature(ds.ops.add))
    assert "keepdim" in str(inspect.signature(ds.Tensor.sum))
    assert ds.Tensor.add.__doc__ == ds.ops.add.__doc__
    assert isinstance(ds.Tensor.__dict__["mT"], property) and ds.Tensor.mT.__doc__
    assert "In-place" in ds.Tensor.mul_.__doc__


def test_every_public_tensor_method_has_a_docstring():
    undocumented = [n for n, v in vars(ds.Tensor).items()
                    if callable(v) and not n.startswith("_") and not (v.__doc__ or "").strip()]
    assert not undocumented, undocumented


def test_user_op_runs_the_same_checks():
    from deepseek.testing import OpInfo, Shape, samples, run_op_checks
    import numpy as np

    class Cube(ds.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x * x * g

    info = OpInfo("cube", Cube.apply, Cube, sample_inputs=samples(((Shape((2, 3)),), {})),
                  ref_numpy=lambda x: x ** 3, ref_torch=lambda t, x: x ** 3)
    assert "gradcheck" in run_op_checks(info)

    class WrongGrad(Cube):
        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * x * g
    bad = OpInfo("cube_bad", WrongGrad.apply, WrongGrad, sample_inputs=samples(((Shape((2, 3)),), {})),
                 ref_numpy=lambda x: x ** 3)
    with pytest.raises(AssertionError, match="gradcheck|check_gradients"):
        run_op_checks(bad, ["gradcheck"])
    wrong_ref = OpInfo("cube_ref", Cube.apply, Cube, sample_inputs=samples(((Shape((2, 3)),), {})),
                       ref_numpy=lambda x: np.asarray(x) ** 2)
    with pytest.raises(AssertionError, match="not close"):
        run_op_checks(wrong_ref, ["forward_numpy"])


def test_gradchecks_run_with_torch_hidden(monkeypatch):
    import sys
    import unittest
    from deepseek.testing import torch_available
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert not torch_available()
    for name in ("add", "matmul", "sum", "softmax", "conv2d"):
        CHECKS["gradcheck"](registry.get(name))
        CHECKS["forward_numpy"](registry.get(name))
    with pytest.raises(unittest.SkipTest):
        CHECKS["forward_torch"](registry.get("add"))
