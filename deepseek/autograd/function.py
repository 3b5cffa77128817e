"""Function: one op = one forward/backward pair on raw backend arrays.

``Function.apply`` is the single dispatch point of the engine: autograd records the
graph here, and everything that intercepts ops (AMP casting, JIT tracing, the
profiler) does it here, so a new op works with all of them at once. Two ways in:

- dispatch modes (``deepseek.autograd.dispatch_mode``): per thread, nestable
  context managers, the innermost sees the op first;
- global dispatch hooks (``register_dispatch_hook``): pre/post callables seen by
  every thread.

Which Function backs which public op, and its autocast policy, is recorded in the op
table ``deepseek.ops.registry``.

The context object ``ctx`` passed to forward/backward is also the graph node.
"""
import itertools
import weakref

from .grad_mode import _state
from . import dispatch_mode as _dm

_seq = itertools.count()

# Callables hook(fn_cls, args, kwargs) -> (args, kwargs) run before every op; see
# register_dispatch_hook.
_dispatch_hooks = []
# Callables hook(fn_cls, args, kwargs, outputs) run after every op.
_post_dispatch_hooks = []
# True while a hook is installed or any thread has a dispatch mode entered: the one
# truth test ``apply`` pays when nothing intercepts ops.
_hooked = False
# The native extension while its fast path is installed (see _install_fast_path).
_fast = None


def _refresh_hooked():
    """Recompute ``_hooked`` (called when hooks or modes come and go) and tell the C
    fast path. With a global hook it sends every call to the Python path; with modes
    only it reads the calling context's mode stack itself, so a thread without a mode
    (and the inner call of a mode's ``__dispatch__``, made with that mode popped) keeps
    the C path."""
    global _hooked
    hooks = bool(_dispatch_hooks) or bool(_post_dispatch_hooks)
    _hooked = hooks or _dm.any_entered()
    if _fast is not None:
        if hasattr(_fast, "fastpath_set_modes_only"):
            _fast.fastpath_set_modes_only(_hooked and not hooks)
        _fast.fastpath_set_hooked(_hooked)


def register_dispatch_hook(pre=None, post=None):
    """Install hooks around every op (all threads); returns a handle with ``remove()``.

    ``pre(fn_cls, args, kwargs)`` returns the (args, kwargs) the op runs with;
    ``post(fn_cls, args, kwargs, result)`` sees the result. For per-thread, nestable
    interception use a dispatch mode instead (``deepseek.autograd.DispatchMode``).
    """
    if pre is not None:
        _dispatch_hooks.append(pre)
    if post is not None:
        _post_dispatch_hooks.append(post)
    _refresh_hooked()

    class _Handle:
        def remove(self_inner):
            if pre is not None and pre in _dispatch_hooks:
                _dispatch_hooks.remove(pre)
            if post is not None and post in _post_dispatch_hooks:
                _post_dispatch_hooks.remove(post)
            _refresh_hooked()
    return _Handle()


class Context:
    """Per-call state of an op, and the node of the autograd graph.

    Graph fields live in slots; whatever forward stores on ``ctx`` lives in
    ``__dict__`` and is dropped after backward unless ``retain_graph``.
    """

    __slots__ = ("fn", "next_edges", "needs_input_grad", "seq", "saved", "saved_checks",
                 "n_outputs", "out_hooks", "freed", "non_differentiable", "__dict__",
                 "__weakref__")

    def __init__(self, fn):
        self.fn = fn
        self.saved = ()
        self.saved_checks = None
        self.out_hooks = None
        self.freed = False
        self.non_differentiable = None
        self.needs_input_grad = ()

    def save_for_backward(self, *arrays):
        """Keep arrays for backward; in-place changes to them are detected."""
        self.saved = arrays

    @property
    def saved_tensors(self):
        if self.freed:
            raise RuntimeError(_FREED_MSG.format(name=self.name()))
        return self.saved

    saved_arrays = saved_tensors

    def mark_non_differentiable(self, *arrays):
        """Outputs (by identity) that never carry gradient (indices, masks)."""
        self.non_differentiable = {id(a) for a in arrays}

    def name(self):
        return getattr(self.fn, "__name__", str(self.fn)) + "Backward"

    def release(self):
        """Free what backward needed (called after a backward without retain_graph)."""
        self.saved = ()
        self.saved_checks = None
        self.__dict__.clear()
        self.freed = True

    def run_backward(self, grads):
        """Check versions of saved arrays, then call the op's backward."""
        if self.freed:
            raise RuntimeError(_FREED_MSG.format(name=self.name()))
        if self.saved_checks:
            for vc, version, idx, shape in self.saved_checks:
                if vc[0] != version:
                    raise RuntimeError(
                        f"one of the variables needed for gradient computation has been "
                        f"modified by an inplace operation: tensor of shape {shape} "
                        f"(saved array {idx} of {self.name()}) is at version {vc[0]}; "
                        f"expected version {version} instead. Hint: avoid the in-place "
                        f"operation or clone() the tensor before modifying it.")
        return self.fn.backward(self, *grads)

    def __repr__(self):
        return f"<{self.name()} object>"


_FREED_MSG = ("Trying to backward through the graph a second time (or to read saved "
              "arrays after they were freed) in {name}: the saved intermediate values "
              "were freed after the first backward. Pass retain_graph=True to the first "
              "backward() if you need to backward through the graph again.")


class AccumulateGrad:
    """Graph node for a leaf tensor: adds incoming gradient into ``tensor.grad``."""

    __slots__ = ("tensor", "seq", "__weakref__")
    freed = False

    def __init__(self, tensor):
        self.tensor = tensor
        # Leaves sort before every op node: a ready leaf is accumulated (and its
        # post-accumulate hooks fire) at once; among ready leaves, the one created
        # last (first used last in forward) goes first.
        self.seq = _ACC_SEQ_BASE + next(_seq)

    def name(self):
        return "AccumulateGrad"

    def __repr__(self):
        return "<AccumulateGrad object>"


class Function:
    """Base class of every op (and of user-defined ops).

    Subclasses define ``forward(ctx, *args, **kwargs)`` on raw arrays (numpy/cupy)
    returning an array or a tuple of arrays, and ``backward(ctx, *grad_outputs)``
    returning one gradient array (or None) per positional input of forward.
    Call an op with ``MyFn.apply(*tensors_or_values, **kwargs)``.
    """

    # Ops whose output may alias an input's memory (reshape, transpose, indexing)
    # share the input's version counter so in-place writes are seen through views.
    is_view = False

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        """Run the op on tensors/values: dispatch modes and hooks, forward, graph record.

        When the native extension is built this is replaced by its C fast path
        (``_install_fast_path``), which runs the same steps: it hands every call to
        this Python path while a global hook is installed, and an op of a context with
        an active mode to ``dispatch_mode.run_in_mode``."""
        return _apply_full(cls, args, kwargs)


def _apply_full(cls, args, kwargs):
    """The whole of ``Function.apply`` in Python: modes and hooks, then the op."""
    if _hooked:
        modes = _dm._modes.get()
        if modes:
            return _dm.run_in_mode(cls, args, kwargs, modes)
        for hook in _dispatch_hooks:
            args, kwargs = hook(cls, args, kwargs)
    result = _run(cls, args, kwargs)
    if _post_dispatch_hooks:
        for hook in _post_dispatch_hooks:
            hook(cls, args, kwargs, result)
    return result


def _run(cls, args, kwargs):
    """Unwrap, forward on raw arrays, wrap the outputs, record the graph node.

    ``native/src/dsn_fastpath.c`` is the same function in C; the two must agree
    (tests/test_fastpath.py compares them)."""
    arrays = []
    needs = False
    for a in args:
        if isinstance(a, Tensor):
            arrays.append(a._data)
            if a.requires_grad:
                needs = True
        else:
            arrays.append(a)
    needs = needs and _state.enabled
    ctx = Context(cls)
    if needs:
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and bool(a.requires_grad) for a in args)
    raw = cls.forward(ctx, *arrays, **kwargs)
    multi = isinstance(raw, tuple)
    make = Tensor._make
    ndarray = _np.ndarray
    outs = [make(o) if type(o) is ndarray else make(_as_output(o))
            for o in (raw if multi else (raw,))]
    if cls.is_view and args and isinstance(args[0], Tensor):
        _share_view_versions(args[0], outs)
    if needs:
        ctx.seq = next(_seq)
        ctx.n_outputs = len(outs)
        if multi:
            _record_out_shapes(ctx, outs)
        ctx.next_edges = tuple(_edge(a) if isinstance(a, Tensor) and a.requires_grad else None
                               for a in args)
        nd = ctx.non_differentiable
        for i, o in enumerate(outs):
            if _floating(o._data.dtype) and (nd is None or id(o._data) not in nd):
                o.requires_grad = True
                o.grad_fn = ctx
                o._out_nr = i
        if ctx.saved:
            checks = []
            for idx, s in enumerate(ctx.saved):
                for t in itertools.chain(args, outs):
                    if isinstance(t, Tensor) and t._data is s:
                        checks.append((t._vc, t._vc[0], idx, tuple(s.shape)))
                        break
            ctx.saved_checks = checks
    return tuple(outs) if multi else outs[0]


# ---- helpers of the Python and the C path (dsn_fastpath.c calls them for rare cases) ----
def _as_output(o):
    """An op output as the array a Tensor holds (numpy ufuncs on 0-d arrays return
    numpy scalars; other array types, e.g. cupy, pass through)."""
    return _np.asarray(o) if isinstance(o, _np.generic) else o


def _share_view_versions(src, outs):
    """Outputs of a view op that alias ``src``'s memory share its version counter, so
    in-place writes are seen through views."""
    for o in outs:
        if _may_share(o._data, src._data):
            o._vc = src._vc


def _record_out_shapes(ctx, outs):
    """Let the engine build zero grads for outputs of a multi-output op that got none."""
    if "out_shapes" not in ctx.__dict__:
        ctx.out_shapes = [o._data.shape for o in outs]


def _floating(dtype):
    """True for dtypes whose op outputs carry gradient."""
    return dtype.kind == "f" or dtype.name == "bfloat16"


_ACC_SEQ_BASE = 1 << 62


def _may_share(a, b):
    try:
        return a is b or a.base is b or b.base is a or (a.base is not None and a.base is b.base) \
            or _np.may_share_memory(a, b)
    except TypeError:
        return False


def _edge(t):
    """(node, output index) that gradient for tensor ``t`` flows into."""
    if t.grad_fn is not None:
        return (t.grad_fn, t._out_nr)
    return (acc_node(t), 0)


def acc_node(t):
    """The AccumulateGrad node of the leaf ``t``: the one a live graph holds, else a new
    one. The graph's edges hold the node and the node holds the tensor; the tensor holds
    its node only weakly (as PyTorch's does), so a leaf and its node make no reference
    cycle, and a leaf that took part in a backward is freed with its last reference, not
    by the cyclic garbage collector some time later (pipeline stages make a leaf per
    microbatch)."""
    r = t._acc
    acc = r() if r is not None else None
    if acc is None:
        acc = AccumulateGrad(t)
        t._acc = weakref.ref(acc)
    return acc


import numpy as _np  # noqa: E402

# Set by deepseek._tensor once the class exists (_tensor.py imports this module first).
Tensor = None

_python_apply = Function.__dict__["apply"]


def _install_fast_path(enabled=True):
    """Make ``Function.apply`` the C fast path of ``deepseek._native`` (when it is built
    and ``DEEPSEEK_NATIVE`` is not 0), or the Python path with ``enabled=False``.
    Returns whether the C path is in use. Called once by ``deepseek._tensor``."""
    global _fast
    ext = None
    if enabled:
        from .. import native
        ext = native._ext if native.available() else None
        if ext is not None and not hasattr(ext, "fast_apply"):
            ext = None  # an extension built before the fast path existed
    if ext is None:
        if _fast is not None:
            if hasattr(_fast, "fastpath_set_modes_only"):
                _fast.fastpath_set_modes_only(False)
            _fast.fastpath_set_hooked(True)
        _fast = None
        Function.apply = _python_apply
        return False
    ext.fastpath_init(Tensor, Context, _np.ndarray, _apply_full, _as_output,
                      _share_view_versions, _edge, _record_out_shapes,
                      lambda dt: bool(_floating(dt)), _seq, _state)
    if hasattr(ext, "fastpath_modes"):  # an extension built before this: all to Python
        ext.fastpath_modes(_dm._modes, _dm.run_in_mode)
    _fast = ext
    _refresh_hooked()
    Function.apply = classmethod(ext.fast_apply)
    return True


class use_fast_path:
    """``with use_fast_path(False):`` runs every op through the Python ``Function.apply``
    in the block (process-wide; tests compare the two paths with it)."""

    def __init__(self, enabled=True):
        self.enabled = bool(enabled)

    def __enter__(self):
        self._prev = _fast is not None
        _install_fast_path(self.enabled)
        return self

    def __exit__(self, *exc):
        _install_fast_path(self._prev)
        return False
