"""Dispatch modes at Function.apply: per thread, nested, composable; global hooks kept."""
import threading

import pytest

import deepseek as ds
from deepseek.autograd.dispatch_mode import DispatchMode, dispatch_mode, active_modes
from deepseek.autograd import function as F


class Record(DispatchMode):
    """Logs (tag, op name) and runs the op."""

    def __init__(self, tag, log):
        self.tag, self.log = tag, log

    def __dispatch__(self, fn, args, kwargs):
        self.log.append((self.tag, fn.__name__))
        return fn.apply(*args, **kwargs)


def test_mode_sees_every_op_and_results_are_unchanged():
    log = []
    x = ds.tensor([1.0, 2.0], requires_grad=True)
    with Record("m", log):
        y = (x * 2).sum()
    assert log == [("m", "Mul"), ("m", "Sum")]
    y.backward()
    assert x.grad.tolist() == [2.0, 2.0]
    assert not F._hooked and active_modes() == ()  # gone after exit


def test_nesting_innermost_first_then_outer():
    log = []
    with Record("outer", log), Record("inner", log):
        assert [m.tag for m in active_modes()] == ["outer", "inner"]
        ds.ones(2).exp()
    assert log == [("inner", "Exp"), ("outer", "Exp")]


def test_mode_that_replaces_the_op():
    class Fake(DispatchMode):
        def __dispatch__(self, fn, args, kwargs):
            return "intercepted" if fn is ds.ops.elementwise.Exp else fn.apply(*args, **kwargs)
    with dispatch_mode(Fake()):
        assert ds.ones(2).exp() == "intercepted"
        assert (ds.ones(2) + 1).tolist() == [2.0, 2.0]
    assert ds.ones(1).exp().item() == pytest.approx(2.718281828)


def test_mode_may_rewrite_arguments():
    class Double(DispatchMode):  # like AMP casting: change args, then run the op
        def __dispatch__(self, fn, args, kwargs):
            args = tuple(a * 2 if isinstance(a, ds.Tensor) and fn is ds.ops.elementwise.Exp else a
                         for a in args)
            return fn.apply(*args, **kwargs)
    with Double():
        assert ds.zeros(1).exp().item() == 1.0
        assert ds.ones(1).log().item() == 0.0


def test_two_threads_do_not_see_each_others_modes():
    logs = {"a": [], "b": [], "main": []}
    ready = threading.Barrier(3)

    def worker(tag, op):
        with Record(tag, logs[tag]):
            ready.wait()       # all three threads in their block at the same time
            op(ds.ones(3))
            ready.wait()

    ta = threading.Thread(target=worker, args=("a", lambda t: t.exp()))
    tb = threading.Thread(target=worker, args=("b", lambda t: t.sin()))
    ta.start(), tb.start()
    with Record("main", logs["main"]):
        ready.wait()
        ds.ones(1).cos()
        ready.wait()
    ds.ones(1).tanh()  # no mode in this thread any more, while none elsewhere either
    ta.join(), tb.join()
    assert logs == {"a": [("a", "Exp")], "b": [("b", "Sin")], "main": [("main", "Cos")]}


def test_global_hook_still_works_and_composes_with_a_mode():
    seen, log = [], []
    h = ds.autograd.register_dispatch_hook(pre=lambda fn, a, k: (seen.append(fn.__name__) or (a, k)))
    try:
        with Record("m", log):
            ds.ones(2).neg()
    finally:
        h.remove()
    assert log == [("m", "Neg")] and seen == ["Neg"]
    assert not F._hooked


def test_exit_restores_the_stack_after_an_error():
    log = []
    with pytest.raises(ValueError):
        with Record("m", log):
            raise ValueError
    assert active_modes() == () and not F._hooked


def test_dispatch_mode_rejects_objects_without_dispatch():
    with pytest.raises(TypeError, match="__dispatch__"):
        dispatch_mode(object())
