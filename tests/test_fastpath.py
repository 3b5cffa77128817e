"""The C fast path of Function.apply (native/src/dsn_fastpath.c) against the Python path.

Every check runs the same program twice, once through the C path and once inside
``use_fast_path(False)`` (the Python ``Function.apply``), and compares values,
gradients, graph structure and version counters. The fast path must step aside
whenever a dispatch mode or a global hook is active.
"""
import numpy as np
import pytest

import deepseek as ds
from deepseek import nn
from deepseek.autograd import function as F
from deepseek.autograd import DispatchMode, Function

fast_built = pytest.mark.skipif(not F._install_fast_path(), reason="C fast path off (deepseek._native not built, or DEEPSEEK_NATIVE=0)")


def _program(seed):
    """A small graph touching the interesting cases: broadcasting, views, a
    multi-output op, a non-differentiable output, saved tensors, reductions."""
    ds.manual_seed(seed)
    x = ds.randn(4, 6, requires_grad=True)
    w = ds.randn(6, 3, requires_grad=True)
    b = ds.randn(3, requires_grad=True)
    h = (x @ w + b).relu()                      # matmul, broadcast add, relu (saved out)
    parts = ds.split(x.view(4, 2, 3), 1, dim=1)  # view op, then multi-output
    vals, idx = ds.max(parts[0].reshape(4, 3) * h, dim=1)  # indices: no gradient
    loss = vals.sum() + ds.softmax(h, dim=-1).mul(2.0).mean() + (x * x).sum() / 10
    loss.backward()
    return {"loss": loss, "h": h, "idx": idx, "x.grad": x.grad, "w.grad": w.grad,
            "b.grad": b.grad, "flags": (h.requires_grad, idx.requires_grad, idx.dtype,
                                        type(h.grad_fn).__name__, vals.grad_fn.name())}


def _both(fn, *args):
    fast = fn(*args)
    with F.use_fast_path(False):
        assert F.Function.apply.__func__ is F._python_apply.__func__
        slow = fn(*args)
    return fast, slow


@fast_built
def test_fast_path_is_installed_when_built():
    assert type(F.Function.apply.__func__).__name__ == "builtin_function_or_method"
    with F.use_fast_path(False):
        assert F.Function.apply.__func__ is F._python_apply.__func__
    assert F._fast is not None


@fast_built
def test_same_values_grads_and_graph_as_the_python_path():
    fast, slow = _both(_program, 3)
    for k in fast:
        if k == "flags":
            assert fast[k] == slow[k]
        else:
            np.testing.assert_array_equal(fast[k].numpy() if not fast[k].requires_grad
                                          else fast[k].detach().numpy(),
                                          slow[k].detach().numpy(), err_msg=k)


@fast_built
def test_training_steps_match_the_python_path():
    def train():
        ds.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 2))
        opt = ds.optim.Adam(model.parameters(), lr=1e-2)
        x, y = ds.randn(16, 5), ds.randint(0, 2, (16,))
        for _ in range(3):
            opt.zero_grad()
            ds.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return [p.detach().numpy().copy() for p in model.parameters()]
    fast, slow = _both(train)
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b)


def test_no_grad_and_int_outputs_record_nothing():
    x = ds.randn(3, 3, requires_grad=True)
    with ds.no_grad():
        y = x * 2
    assert not y.requires_grad and y.grad_fn is None
    z = ds.argmax(x, dim=0)
    assert not z.requires_grad and z.grad_fn is None
    i = ds.arange(4) + 1                         # integer op with no grad anywhere
    assert i.dtype == ds.int64 and not i.requires_grad


class _Count(DispatchMode):
    def __init__(self):
        self.ops = []

    def __dispatch__(self, fn, args, kwargs):
        self.ops.append(fn.__name__)
        return fn.apply(*args, **kwargs)


@fast_built
def test_dispatch_mode_sees_every_op_with_the_fast_path_on():
    x = ds.randn(3, requires_grad=True)
    with _Count() as mode:
        assert F._hooked
        y = (x * 2 + 1).relu().sum()
    assert mode.ops == ["Mul", "Add", "Relu", "Sum"]
    assert not F._hooked
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2.0 * (x.detach().numpy() * 2 + 1 > 0))
    with _Count() as again:
        pass
    assert again.ops == []
    x * 3                                         # after exit: not seen
    assert mode.ops == ["Mul", "Add", "Relu", "Sum"]


@fast_built
def test_global_pre_and_post_hooks_fire_on_the_fast_path():
    seen, results = [], []
    h = F.register_dispatch_hook(
        pre=lambda fn, a, k: (seen.append(fn.__name__), (a, k))[1],
        post=lambda fn, a, k, r: results.append(type(r).__name__))
    try:
        ds.ones(2).neg()
    finally:
        h.remove()
    assert seen == ["Neg"] and results == ["Tensor"]
    ds.ones(2).neg()
    assert seen == ["Neg"]
    post_only = F.register_dispatch_hook(post=lambda fn, a, k, r: results.append(fn.__name__))
    try:
        ds.ones(2).exp()
    finally:
        post_only.remove()
    assert results == ["Tensor", "Exp"]


@fast_built
def test_tensor_hooks_and_post_accumulate_hooks_fire():
    x = ds.randn(4, requires_grad=True)
    calls = []
    x.register_hook(lambda g: calls.append("leaf") or g * 2)
    x.register_post_accumulate_grad_hook(lambda t: calls.append("post"))
    y = x * 3
    y.register_hook(lambda g: calls.append("mid"))
    y.retain_grad()
    y.sum().backward()
    assert calls == ["mid", "leaf", "post"]
    np.testing.assert_array_equal(x.grad.numpy(), np.full(4, 6.0, np.float32))
    np.testing.assert_array_equal(y.grad.numpy(), np.ones(4, np.float32))


@fast_built
def test_version_counters_are_shared_by_views_and_bumped_in_place():
    base = ds.randn(2, 3)
    v = base.view(6)                              # a view op: shares the counter
    t = base.transpose(0, 1)
    assert v._vc is base._vc and t._vc is base._vc
    c = base * 1                                  # not a view: its own counter
    assert c._vc is not base._vc
    before = v._version
    base.add_(1.0)
    assert v._version == before + 1 and t._version == before + 1 and c._version == 0


@fast_built
def test_in_place_write_to_a_saved_tensor_is_caught():
    a = ds.randn(3, requires_grad=True)
    c = ds.randn(3)
    y = a * c                                     # saves c (written in place below)
    c.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    with ds.no_grad():
        r = (a * 2).relu()
    r.requires_grad_(True)
    e = r.exp()                                   # exp saves its output...
    with ds.no_grad():
        e.mul_(3)                                 # ...which is then overwritten
    with pytest.raises(RuntimeError, match="is at version 1; expected version 0"):
        e.sum().backward()


class _Fails(Function):
    @staticmethod
    def forward(ctx, a, *, boom=False):
        if boom:
            raise ValueError("forward failed on purpose")
        return a + 1

    @staticmethod
    def backward(ctx, g):
        return g


class _Scaled(Function):
    @staticmethod
    def forward(ctx, a, b, *, scale=1.0, shift=0.0):
        ctx.scale = scale
        return a * scale + b + shift

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale, g


def test_errors_propagate_and_leave_nothing_behind():
    x = ds.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="on purpose"):
        _Fails.apply(x, boom=True)
    with pytest.raises(RuntimeError, match="cannot be broadcast"):
        ds.randn(2, 3) + ds.randn(4)
    y = _Fails.apply(x)                           # the next call is clean
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.ones(3, np.float32))
    with pytest.raises(RuntimeError, match="second time"):
        y.sum().backward()


def test_user_function_with_keywords_and_several_args():
    a = ds.randn(2, 2, requires_grad=True)
    b = ds.randn(2, 2, requires_grad=True)
    out = _Scaled.apply(a, b, scale=3.0, shift=1.0)
    np.testing.assert_allclose(out.detach().numpy(),
                               a.detach().numpy() * 3 + b.detach().numpy() + 1, rtol=1e-6)
    out.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), np.full((2, 2), 3.0, np.float32))
    np.testing.assert_array_equal(b.grad.numpy(), np.ones((2, 2), np.float32))
    assert out.grad_fn.needs_input_grad == (True, True)
    c = _Scaled.apply(a, ds.randn(2, 2), scale=2.0)   # second input needs no grad
    assert c.grad_fn.needs_input_grad == (True, False)
    assert c.grad_fn.next_edges[1] is None


def test_many_arguments_and_outputs():
    # more than the C path's small on-stack arrays (8)
    xs = [ds.randn(2, requires_grad=True) for _ in range(12)]
    s = ds.stack(xs)
    assert sum(e is not None for e in s.grad_fn.next_edges) == 12  # one call, 12 tensors
    parts = ds.split(s * 1.0, 1, dim=0)          # one call, 12 outputs
    assert len(parts) == 12 and all(p.grad_fn is parts[0].grad_fn for p in parts)
    sum(p.sum() for p in parts).backward()
    for x in xs:
        np.testing.assert_array_equal(x.grad.numpy(), np.ones(2, np.float32))


# ---- under a dispatch mode: the op goes to the mode, the mode's inner call runs in C ----
class _CountRuns:
    """Counts calls of the Python ``_run`` (the Python path's op body)."""

    def __init__(self, monkeypatch):
        self.n = 0
        real = F._run

        def counting(cls, args, kwargs):
            self.n += 1
            return real(cls, args, kwargs)
        monkeypatch.setattr(F, "_run", counting)


@fast_built
def test_under_a_mode_values_grads_and_ops_match_the_python_path(monkeypatch):
    def under_mode(seed):
        with _Count() as mode:
            out = _program(seed)
        return out, mode.ops
    runs = _CountRuns(monkeypatch)
    (fast, fast_ops), (slow, slow_ops) = _both(under_mode, 5)
    n_slow_runs = runs.n
    assert fast_ops == slow_ops and len(fast_ops) > 10
    assert fast_ops[:4] == ["Matmul", "Add", "Relu", "Reshape"]
    for k in fast:
        if k == "flags":
            assert fast[k] == slow[k]
        else:
            np.testing.assert_array_equal(fast[k].detach().numpy(), slow[k].detach().numpy(),
                                          err_msg=k)
    # the Python path runs every op's body in Python once; the C path never does
    assert n_slow_runs == len(slow_ops)
    runs.n = 0
    under_mode(5)
    assert runs.n == 0


@fast_built
def test_the_mode_sees_each_op_once_and_nested_modes_nest():
    order = []

    class Tag(DispatchMode):
        def __init__(self, name, scale=None):
            self.name, self.scale = name, scale

        def __dispatch__(self, fn, args, kwargs):
            order.append((self.name, fn.__name__, args[1] if fn.__name__ == "Mul" else None))
            if self.scale is not None and fn.__name__ == "Mul":
                args = (args[0], args[1] * self.scale)   # the outer mode sees the change
            return fn.apply(*args, **kwargs)

    x = ds.randn(3, requires_grad=True)
    for fast in (True, False):
        order.clear()
        with F.use_fast_path(fast):
            with Tag("outer"), Tag("inner", scale=10.0):
                y = x * 2.0
                z = y.sum()
                assert len(ds.autograd.active_modes()) == 2
            assert ds.autograd.active_modes() == ()
            (g,) = ds.autograd.grad(z, [x])
        assert order == [("inner", "Mul", 2.0), ("outer", "Mul", 20.0), ("inner", "Sum", None),
                         ("outer", "Sum", None)], (fast, order)
        np.testing.assert_allclose(z.item(), 20.0 * x.detach().numpy().sum(), rtol=1e-6)
        np.testing.assert_array_equal(g.numpy(), np.full(3, 20.0, np.float32))


@fast_built
def test_other_threads_and_global_hooks_under_a_mode():
    import threading
    x = ds.randn(4)
    other = {}

    def work():
        other["y"] = (x * 3).exp()
        other["modes"] = ds.autograd.active_modes()
    with _Count() as mode:
        t = threading.Thread(target=work)
        t.start()
        t.join()
        x + 1
    assert mode.ops == ["Add"] and other["modes"] == ()
    np.testing.assert_allclose(other["y"].numpy(), np.exp(x.numpy() * 3), rtol=1e-6)
    # a global hook together with a mode: the hook sees the op once, at the bottom
    hooked = []
    h = F.register_dispatch_hook(pre=lambda fn, a, k: (hooked.append(fn.__name__), (a, k))[1])
    try:
        with _Count() as mode2:
            x.neg()
    finally:
        h.remove()
    assert mode2.ops == ["Neg"] and hooked == ["Neg"]
