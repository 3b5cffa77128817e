"""Autograd engine: iterative backward, accumulation, retain_graph, grad modes, hooks,
user Functions, the version counter, autograd.grad, gradcheck."""
import gc
import sys
import threading
import weakref

import numpy as np
import pytest

import deepseek as ds
from deepseek.autograd import Function, GradcheckError, gradcheck
from deepseek.testing import assert_close, check_gradients


def test_iterative_backward_on_10000_op_chain():
    x = ds.tensor([1.0, 2.0], dtype=ds.float64, requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # a recursive engine would fail far before 10k nodes
    try:
        y.sum().backward()
    finally:
        sys.setrecursionlimit(old)
    assert_close(x.grad, np.full(2, 1.0001 ** 10_000), rtol=1e-4)
    del y  # freeing a long chain must not overflow the C stack either


def test_grad_accumulates_across_backwards():
    x = ds.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()
    (x * 3).sum().backward()
    assert x.grad.tolist() == [5.0, 7.0, 9.0]
    x.grad = None
    (x * 3).sum().backward()
    assert x.grad.tolist() == [3.0, 3.0, 3.0]
    x.grad.zero_()
    (x * 2).sum().backward()
    assert x.grad.tolist() == [2.0, 2.0, 2.0]


def test_leaf_used_twice_accumulates_within_one_backward():
    x = ds.tensor([2.0], requires_grad=True)
    (x * x + x).backward(ds.ones(1))
    assert x.grad.tolist() == [5.0]


@pytest.mark.parametrize("fast", [True, False])
def test_a_leaf_is_freed_with_its_last_reference(fast):
    """A leaf and its AccumulateGrad node make no reference cycle: after a backward the
    leaf, its data and its gradient go with the last reference, with the cyclic
    collector off (the C fast path and the Python path alike)."""
    from deepseek.autograd import function as F
    if fast and not F._install_fast_path():
        pytest.skip("C fast path not built")
    try:
        if not fast:
            F._install_fast_path(False)
        gc.disable()
        x = ds.randn(3, 3, requires_grad=True)
        w = ds.randn(3, 3, requires_grad=True)
        for _ in range(2):      # the second graph finds no node: the first one is gone
            (x @ w * 2).sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), 4 * w.detach().numpy().sum(1)[None, :]
                                   .repeat(3, 0), rtol=1e-5)
        refs = [weakref.ref(a) for a in (x, x._data, x.grad._data, w)]
        del x, w
        assert [r() for r in refs] == [None] * 4
    finally:
        gc.enable()
        F._install_fast_path(True)


def test_a_dropped_leaf_still_gets_its_gradient_while_the_graph_lives():
    x = ds.randn(4, requires_grad=True)
    seen = []
    x.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.numpy().copy()))
    y = (x * 3).sum()
    del x                                   # the graph's node holds the leaf
    y.backward()
    np.testing.assert_array_equal(seen[0], np.full(4, 3, np.float32))


def test_retain_graph_and_freed_graph_error():
    x = ds.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    g1 = x.grad.numpy().copy()
    y.backward()
    assert_close(x.grad, 2 * g1)
    with pytest.raises(RuntimeError, match="backward through the graph a second time.*retain_graph=True"):
        y.backward()


def test_backward_with_gradient_argument():
    x = ds.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * 2
    g = ds.tensor([1.0, 0.5, -1.0])
    y.backward(gradient=g)
    assert x.grad.tolist() == [2.0, 1.0, -2.0]
    assert g.tolist() == [1.0, 0.5, -1.0]
    # the gradient tensor must not become the leaf's .grad storage
    z = ds.tensor([1.0, 1.0], requires_grad=True)
    gz = ds.tensor([3.0, 4.0])
    z.backward(gz)
    z.grad.zero_()
    assert gz.tolist() == [3.0, 4.0]


def test_non_scalar_backward_without_gradient_raises():
    x = ds.ones(2, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"grad can be implicitly created only for scalar outputs.*\(2, 3\)"):
        (x * 2).backward()
    with pytest.raises(RuntimeError, match=r"gradient has shape \(3,\) but the output has shape \(2, 3\)"):
        (x * 2).backward(ds.ones(3))


def test_backward_on_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        ds.ones(2).sum().backward()


def test_autograd_grad():
    x = ds.tensor([1.0, 2.0], requires_grad=True)
    w = ds.tensor([3.0, 4.0], requires_grad=True)
    unused = ds.tensor([1.0], requires_grad=True)
    y = (x * w).sum()
    gx, gw = ds.autograd.grad(y, [x, w], retain_graph=True)
    assert gx.tolist() == [3.0, 4.0] and gw.tolist() == [1.0, 2.0]
    assert x.grad is None and w.grad is None  # grad() does not accumulate
    with pytest.raises(RuntimeError, match="allow_unused=True"):
        ds.autograd.grad(y, [x, unused], retain_graph=True)
    gx, gu = ds.autograd.grad(y, [x, unused], allow_unused=True, retain_graph=True)
    assert gu is None and gx.tolist() == [3.0, 4.0]
    (g,) = ds.autograd.grad(y, x)
    g.zero_()  # returned grads are ordinary writable tensors
    # non-leaf input
    x2 = ds.tensor([1.0, 2.0], requires_grad=True)
    h = x2 * 3
    out = (h * h).sum()
    (gh,) = ds.autograd.grad(out, h)
    assert gh.tolist() == [6.0, 12.0]
    assert (ds.autograd.grad((x2 * x2).sum(), x2)[0]).tolist() == [2.0, 4.0]


def test_backward_inputs_argument():
    a = ds.tensor([1.0], requires_grad=True)
    b = ds.tensor([2.0], requires_grad=True)
    (a * b).sum().backward(inputs=[a])
    assert a.grad.tolist() == [2.0] and b.grad is None


# ---- grad modes ---------------------------------------------------------------------
def test_no_grad_enable_grad_set_grad_enabled():
    x = ds.ones(2, requires_grad=True)
    with ds.no_grad():
        assert not ds.is_grad_enabled()
        y = x * 2
        with ds.enable_grad():
            z = x * 2
        assert not ds.is_grad_enabled()
    assert ds.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad and z.grad_fn is not None
    with ds.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert ds.is_grad_enabled()
    ds.set_grad_enabled(False)
    try:
        assert not (x * 2).requires_grad
    finally:
        ds.set_grad_enabled(True)
    assert (x * 2).requires_grad


def test_grad_mode_decorators():
    @ds.no_grad()
    def f(t):
        return t * 2

    @ds.no_grad
    def g(t):
        return t * 2

    @ds.inference_mode()
    def h(t):
        return t * 2

    @ds.inference_mode
    def k(t):
        return t * 2

    x = ds.ones(2, requires_grad=True)
    for fn in (f, g, h, k):
        assert not fn(x).requires_grad, fn.__name__
    assert ds.is_grad_enabled()
    with ds.inference_mode():
        assert not (x * 2).requires_grad
    with ds.inference_mode(False):
        assert (x * 2).requires_grad


def test_grad_mode_is_thread_local():
    seen = {}

    def worker():
        seen["enabled"] = ds.is_grad_enabled()
        x = ds.ones(1, requires_grad=True)
        seen["requires_grad"] = (x * 2).requires_grad

    with ds.no_grad():
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert not ds.is_grad_enabled()
    assert seen == {"enabled": True, "requires_grad": True}


def test_grad_mode_restored_after_exception():
    with pytest.raises(ValueError):
        with ds.no_grad():
            raise ValueError
    assert ds.is_grad_enabled()


# ---- hooks --------------------------------------------------------------------------
def test_register_hook_modifies_grad():
    x = ds.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    seen = []
    y.register_hook(lambda g: seen.append(g.tolist()))
    h = y.register_hook(lambda g: g * 10)
    y.sum().backward()
    assert seen == [[1.0, 1.0]]
    assert x.grad.tolist() == [30.0, 30.0]
    h.remove()
    x.grad = None
    (x * 3).sum().backward()
    assert x.grad.tolist() == [3.0, 3.0]


def test_leaf_hook_modifies_accumulated_grad():
    x = ds.tensor([1.0, 2.0], requires_grad=True)
    x.register_hook(lambda g: g * 2)
    (x * x).sum().backward()
    assert x.grad.tolist() == [4.0, 8.0]
    with pytest.raises(RuntimeError, match="doesn't require gradient"):
        ds.ones(1).register_hook(lambda g: g)


def test_retain_grad():
    x = ds.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    y.retain_grad()
    z = y * y
    z.sum().backward()
    assert y.grad.tolist() == [4.0, 8.0]
    assert x.grad.tolist() == [8.0, 16.0]
    y.grad.zero_()  # its own storage
    assert x.grad.tolist() == [8.0, 16.0]
    w = x * 1
    assert w.grad is None  # non-leaf without retain_grad


def test_post_accumulate_grad_hooks_order_and_count():
    ds.manual_seed(0)
    layers = [(ds.randn(4, 4, requires_grad=True), ds.randn(4, requires_grad=True)) for _ in range(3)]
    fired = []
    for i, (w, b) in enumerate(layers):
        for name, p in (("w", w), ("b", b)):
            def hook(t, key=f"{name}{i}"):
                assert t.grad is not None  # after accumulation
                fired.append((key, t.grad.numpy().copy()))
            p.register_post_accumulate_grad_hook(hook)
    x = ds.randn(2, 4)
    h = x
    for w, b in layers:
        h = (h @ w + b).tanh()
    # reuse the first weight once more, late: its hook must still fire once, with the total
    loss = h.sum() + (layers[0][0] * 0.5).sum()
    loss.backward()
    keys = [k for k, _ in fired]
    assert sorted(keys) == sorted(f"{n}{i}" for i in range(3) for n in "wb")  # once each
    assert keys.index("b2") < keys.index("w2") < keys.index("b1") < keys.index("w1") < keys.index("b0")
    for key, g in fired:
        i = int(key[1])
        p = layers[i][0] if key[0] == "w" else layers[i][1]
        assert_close(g, p.grad)
    with pytest.raises(RuntimeError, match="non-leaf"):
        h.register_post_accumulate_grad_hook(lambda t: None)


def test_post_accumulate_grad_hook_runs_before_other_ops():
    # the hook of the last layer's parameter fires while earlier ops are still pending
    w1 = ds.randn(3, 3, requires_grad=True)
    w2 = ds.randn(3, 3, requires_grad=True)
    events = []
    w2.register_post_accumulate_grad_hook(lambda t: events.append("w2 ready"))

    class Probe(Function):
        @staticmethod
        def forward(ctx, a):
            return a.copy()

        @staticmethod
        def backward(ctx, g):
            events.append("probe backward")
            return g

    h = Probe.apply(ds.randn(2, 3) @ w1)
    (h @ w2).sum().backward()
    assert events == ["w2 ready", "probe backward"]


def test_grads_of_two_leaves_do_not_alias():
    p = ds.randn(3, requires_grad=True)
    q = ds.randn(3, requires_grad=True)
    (p + q).sum().backward()
    p.grad.mul_(5)
    assert q.grad.tolist() == [1.0, 1.0, 1.0]
    r = ds.randn(2, 3, requires_grad=True)
    r.sum().backward()  # broadcast gradient: must still be a writable own buffer
    r.grad.add_(1)
    assert r.grad.tolist() == [[2.0] * 3] * 2


# ---- user Functions -----------------------------------------------------------------
class MulExp(Function):
    """out = a * exp(b), with saved arrays."""

    @staticmethod
    def forward(ctx, a, b):
        e = np.exp(b)
        ctx.save_for_backward(a, e)
        return a * e

    @staticmethod
    def backward(ctx, g):
        a, e = ctx.saved_tensors
        return (g * e if ctx.needs_input_grad[0] else None,
                g * a * e if ctx.needs_input_grad[1] else None)


def test_user_function_gradcheck_and_values():
    check_gradients(MulExp.apply, (3, 2), (3, 2))
    a = ds.tensor([1.0, 2.0], requires_grad=True)
    b = ds.tensor([0.0, 1.0])
    out = MulExp.apply(a, b)
    assert out.grad_fn is not None and out.grad_fn.name() == "MulExpBackward"
    out.sum().backward()
    assert_close(a.grad, np.exp([0.0, 1.0]))


def test_user_function_multiple_outputs_and_non_differentiable():
    class SortWithIndex(Function):
        @staticmethod
        def forward(ctx, a):
            idx = np.argsort(a)
            ctx.idx = idx
            ctx.mark_non_differentiable(idx)
            return a[idx], idx

        @staticmethod
        def backward(ctx, g, g_idx):
            out = np.zeros_like(g)
            out[ctx.idx] = g
            return out

    x = ds.tensor([3.0, 1.0, 2.0], requires_grad=True)
    vals, idx = SortWithIndex.apply(x)
    assert not idx.requires_grad and vals.requires_grad
    (vals * ds.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [3.0, 1.0, 2.0]


def test_dispatch_hook_sees_every_op():
    seen = []
    handle = ds.autograd.register_dispatch_hook(pre=lambda fn, a, k: (seen.append(fn.__name__) or (a, k)))
    try:
        (ds.ones(2) * 2 + 1).sum()
    finally:
        handle.remove()
    assert seen == ["Mul", "Add", "Sum"]
    (ds.ones(2) * 2)
    assert seen == ["Mul", "Add", "Sum"]


# ---- version counter ----------------------------------------------------------------
def test_inplace_change_of_saved_tensor_raises():
    x = ds.tensor([1.0, 2.0], requires_grad=True)
    a = ds.tensor([3.0, 4.0])
    y = (x * a).sum()
    a.mul_(2)  # a was saved by mul for x's gradient
    with pytest.raises(RuntimeError, match="modified by an inplace operation.*version 1; expected version 0"):
        y.backward()


def test_inplace_through_detach_or_view_raises():
    x = ds.tensor([1.0, 2.0], requires_grad=True)
    y = x.sin()
    x.detach()[0] = 5.0  # shares storage and version counter with x
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    h = ds.tensor([1.0, 2.0], requires_grad=True) * 1
    out = h.exp() * h
    with ds.no_grad():
        h.view(2).add_(1)  # a view shares the counter
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_inplace_on_leaf_requiring_grad_raises():
    x = ds.ones(2, requires_grad=True)
    for op in (lambda: x.add_(1), lambda: x.mul_(2), lambda: x.zero_(), lambda: x.fill_(1.0),
               lambda: x.copy_(ds.zeros(2)), lambda: x.normal_()):
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            op()
    x.data.add_(1)  # .data is the escape hatch
    with ds.no_grad():
        x.mul_(2)
    assert x.tolist() == [4.0, 4.0] and x.is_leaf


def test_inplace_on_nonleaf_keeps_gradient_correct():
    x = ds.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    z = y.sin()
    y.add_(1)  # y in the graph: the saved input of sin stays intact
    (z + y).sum().backward()
    assert_close(x.grad, 2 * np.cos([2.0, 4.0]) + 2, rtol=1e-6)


def test_copy_into_graph():
    src = ds.tensor([1.0, 2.0], requires_grad=True) * 3
    dst = ds.zeros(2)
    dst.copy_(src)
    assert dst.requires_grad
    with ds.no_grad():
        dst.add_(1)
    assert src.tolist() == [3.0, 6.0]  # dst does not share src's storage


def test_detach_and_requires_grad_flags():
    x = ds.ones(2, requires_grad=True)
    d = x.detach()
    assert not d.requires_grad and d.is_leaf
    assert np.shares_memory(d.numpy(), x.detach().numpy())
    with pytest.raises(RuntimeError, match="floating point"):
        ds.tensor([1, 2]).requires_grad_()
    y = x * 2
    with pytest.raises(RuntimeError, match="leaf"):
        y.requires_grad_(False)
    assert (x * 2).is_leaf is False and x.is_leaf
    with pytest.raises(RuntimeError, match="detach"):
        x.numpy()
    with pytest.raises(TypeError, match="Tensor or None"):
        x.grad = np.ones(2)
    with pytest.raises(RuntimeError, match="shape"):
        x.grad = ds.ones(3)


def test_integer_outputs_do_not_require_grad():
    x = ds.randn(3, requires_grad=True)
    assert not x.argmax().requires_grad
    assert not (x > 0).requires_grad
    assert not x.long().requires_grad


# ---- gradcheck itself ---------------------------------------------------------------
def test_gradcheck_reports_the_worst_element():
    class WrongSin(Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return np.sin(a)

        @staticmethod
        def backward(ctx, g):
            a, = ctx.saved_tensors
            out = g * np.cos(a)
            out[..., -1] *= 2.0  # wrong in the last column
            return out

    x = ds.tensor(np.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True, dtype=ds.float64)
    with pytest.raises(GradcheckError, match=r"d\(output 0\)\[\d\] / d\(input 0\)\[\d, 2\].*analytical.*numerical"):
        gradcheck(WrongSin.apply, (x,))
    assert gradcheck(WrongSin.apply, (x,), raise_exception=False) is False
    with pytest.raises(AssertionError, match="check_gradients"):
        check_gradients(WrongSin.apply, (2, 3))
    with pytest.raises(ValueError, match="float64"):
        gradcheck(ds.sin, (ds.ones(2, requires_grad=True),))


def test_gradcheck_noncontiguous_and_nonleaf_inputs():
    base = ds.tensor(np.random.default_rng(0).standard_normal((3, 4)))
    x = base.t().requires_grad_()  # a non-contiguous leaf
    assert gradcheck(lambda t: (t * t).sum(0), (x,))
    y = ds.randn(2, 3, dtype=ds.float64, requires_grad=True)
    assert gradcheck(lambda t: t.exp(), (y.t(),))  # a non-leaf input: graph reused
