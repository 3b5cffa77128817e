"""OpInfo and SampleInput: what the op table (``deepseek.ops.registry``) records per op.

An ``OpInfo`` names a public op and says everything the rest of the framework needs
to know about it: the ``Function`` classes it dispatches to, the Tensor methods and
operators it backs, its autocast policy, whether it is differentiable, and how to
test it (sample inputs, a numpy reference, a PyTorch reference, the dtypes it takes).
``deepseek.testing`` runs the same checks on any OpInfo, so a user op is tested the
way the built-in ones are. The sample-input builders at the end of this module are
the shared ones (elementwise, broadcasting, reductions).
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

# PyTorch's autocast lists are the reference:
#   lower   runs in the autocast dtype (fp16/bf16): matmul, linear, conv, attention
#   fp32    runs in float32 (precision-sensitive): exp, log, pow, softmax, norms, losses
#   promote inputs are cast to their widest dtype: cat, stack, index_put
#   none    runs in whatever dtype its inputs have
AUTOCAST_POLICIES = ("lower", "fp32", "promote", "none")

FLOATING = ("float16", "bfloat16", "float32", "float64")


@dataclass
class SampleInput:
    """One call of an op: ``op(*args, **kwargs)``.

    ``args`` holds numpy arrays (made into Tensors by the checks; floating ones are
    cast to the dtype under test and differentiated in gradchecks, integer and bool
    ones such as indices and masks keep their dtype) and plain values (dims, scalars,
    shapes), passed unchanged. ``noncontiguous=True`` hands every array to the op as a
    strided view instead of a contiguous one.
    """

    args: tuple
    kwargs: dict = field(default_factory=dict)
    name: str = ""
    noncontiguous: bool = False

    def __repr__(self):
        return f"SampleInput({self.name or _describe(self.args)})"


def _describe(args):
    return ", ".join(f"{a.dtype}{list(a.shape)}" if isinstance(a, np.ndarray) else repr(a) for a in args)


@dataclass
class OpInfo:
    """One entry of the op table.

    name            the op's public name (``deepseek.<name>`` / ``deepseek.ops.<name>``
                    or ``deepseek.nn.functional.<name>``)
    op              the public function
    functions       the ``Function`` subclasses the op dispatches to (empty for ops
                    computed straight on arrays, like comparisons)
    aliases         other public names of the same function (``multiply`` for ``mul``)
    methods         Tensor methods backed by ``op`` with ``self`` as its first argument;
                    an item may be ``(name, function)`` for a method whose arguments
                    differ from the op's (``x.where(cond, y)``)
    operators       dunder methods (``__add__``); same form as ``methods``
    reflected       reflected operators (``__radd__``: ``op(other, self)``)
    inplace         in-place methods (``add_``, ``__iadd__``): ``self`` takes the result
    autocast        one of AUTOCAST_POLICIES (PyTorch's CUDA lists; the default device)
    autocast_cpu    the policy on the CPU where PyTorch's CPU lists differ (None: same as
                    ``autocast``); a policy, or ``fn(args, kwargs) -> policy`` of the
                    ``Function.apply`` call when it depends on the call (one Function
                    backs max_pool1d/2d/3d, and only the 3-d one is on the CPU fp32 list)
    differentiable  whether the op has a backward (False: outputs never require grad)
    sample_inputs   ``fn(rng) -> iterable of SampleInput`` (numpy data in float64)
    ref_numpy       ``fn(*args, **kwargs)`` on numpy arrays: the reference result
    ref_torch       ``fn(torch, *args, **kwargs)`` on torch tensors (forward and backward)
    dtypes          dtypes the op is checked in (the ``dtypes`` check)
    out_dtype       ``fn(input dtype name) -> output dtype name``; default: the same
    tol             (rtol, atol) of the float64 numpy comparison
    grad_tol        (rtol, atol) of the float32 PyTorch comparison (forward and grads)
    gradcheck_kw    extra arguments of ``check_gradients`` (eps, atol, rtol)
    call            how the checks call the op with a sample's args (default ``op``;
                    ``cat`` takes a list: ``call=lambda *ts, dim=0: cat(list(ts), dim)``)
    doc             docstring for generated methods when ``op`` has none
    export          the ONNX export rule (``deepseek.onnx``) of the Function this entry lists
                    first -- or, for an entry without Functions, of its Tensor methods: the
                    name of a function of ``deepseek.onnx.rules`` (kept a string so the ops
                    never import onnx) or a callable ``rule(g, *apply_args, **kwargs)``;
                    ``{Function: rule}`` for an entry that owns several Functions; None:
                    no export of its own (composites export when their Functions do)
    """

    name: str
    op: Callable
    functions: tuple = ()
    aliases: tuple = ()
    methods: tuple = ()
    operators: tuple = ()
    reflected: tuple = ()
    inplace: tuple = ()
    autocast: str = "none"
    autocast_cpu: Optional[object] = None
    differentiable: bool = True
    sample_inputs: Optional[Callable] = None
    ref_numpy: Optional[Callable] = None
    ref_torch: Optional[Callable] = None
    dtypes: tuple = ("float32", "float64")
    out_dtype: Optional[Callable] = None
    tol: tuple = (1e-7, 1e-7)
    grad_tol: tuple = (1e-5, 1e-5)
    gradcheck_kw: dict = field(default_factory=dict)
    call: Optional[Callable] = None
    doc: Optional[str] = None
    export: Optional[object] = None

    def __post_init__(self):
        if self.autocast not in AUTOCAST_POLICIES:
            raise ValueError(f"OpInfo({self.name}): autocast must be one of {AUTOCAST_POLICIES}, "
                             f"got {self.autocast!r}")
        if not (self.autocast_cpu is None or callable(self.autocast_cpu)
                or self.autocast_cpu in AUTOCAST_POLICIES):
            raise ValueError(f"OpInfo({self.name}): autocast_cpu must be None, a callable or one "
                             f"of {AUTOCAST_POLICIES}, got {self.autocast_cpu!r}")
        if not isinstance(self.functions, tuple):
            self.functions = (self.functions,)
        if not (self.export is None or isinstance(self.export, (str, dict)) or callable(self.export)):
            raise ValueError(f"OpInfo({self.name}): export must be None, a rule name, a callable or "
                             f"a {{Function: rule}} dict, got {self.export!r}")

    def autocast_for(self, device_type="cuda", args=(), kwargs=None):
        """This entry's autocast policy on ``device_type`` for one call's arguments."""
        p = self.autocast
        if device_type == "cpu" and self.autocast_cpu is not None:
            p = self.autocast_cpu
            if callable(p):
                p = p(args, kwargs or {})
        return p

    def samples(self, seed=0):
        """The op's sample inputs, drawn from a private seeded stream (a list)."""
        if self.sample_inputs is None:
            return []
        return list(self.sample_inputs(np.random.default_rng(seed)))

    def __call__(self, *args, **kwargs):
        """Call the op the way the checks do (``call`` if given, else ``op``)."""
        return (self.call or self.op)(*args, **kwargs)

    def result_dtype(self, dtype):
        """Dtype name of the op's output for inputs of dtype ``dtype``."""
        return dtype if self.out_dtype is None else self.out_dtype(dtype)

    def __repr__(self):
        return f"OpInfo({self.name})"


# ---- sample-input builders ------------------------------------------------------------
def _u(rng, shape, low, high):
    return rng.uniform(low, high, size=shape)


def unary_samples(low=-2.0, high=2.0, **kwargs):
    """Samples of an elementwise op of one tensor: a matrix, 0-d, empty, a vector, and
    a non-contiguous matrix, with values in [low, high)."""
    def gen(rng):
        for shape, name in [((3, 4), "matrix"), ((), "0-d"), ((0, 3), "empty"), ((5,), "vector")]:
            yield SampleInput((_u(rng, shape, low, high),), dict(kwargs), name=name)
        yield SampleInput((_u(rng, (3, 4), low, high),), dict(kwargs), name="noncontiguous",
                          noncontiguous=True)
    return gen


BROADCAST_SHAPES = [((2, 3), (2, 3)), ((2, 3), (3,)), ((2, 1), (1, 3)), ((4, 1, 3), (2, 1)),
                    ((), (2, 3)), ((2, 3), ())]


def binary_samples(low=-2.0, high=2.0, scalar=None, **kwargs):
    """Samples of an elementwise op of two tensors: equal shapes, every broadcasting
    pattern of ``BROADCAST_SHAPES``, empty operands, a non-contiguous pair and, with
    ``scalar``, a tensor-and-Python-number call."""
    def gen(rng):
        for sa, sb in BROADCAST_SHAPES:
            yield SampleInput((_u(rng, sa, low, high), _u(rng, sb, low, high)), dict(kwargs),
                              name=f"{list(sa)}x{list(sb)}")
        for sa, sb in [((0,), (0,)), ((0, 3), (3,))]:
            yield SampleInput((_u(rng, sa, low, high), _u(rng, sb, low, high)), dict(kwargs),
                              name=f"empty {list(sa)}x{list(sb)}")
        yield SampleInput((_u(rng, (3, 4), low, high), _u(rng, (3, 4), low, high)), dict(kwargs),
                          name="noncontiguous", noncontiguous=True)
        if scalar is not None:
            yield SampleInput((_u(rng, (2, 3), low, high), scalar), dict(kwargs), name="scalar")
    return gen


def reduction_samples(dims=(None, 0, 1, -1, (0, 2)), keepdim=True, low=-2.0, high=2.0,
                      empty=True):
    """Samples of a reduction ``op(x, dim, keepdim=...)`` over a 3-d input for each of
    ``dims`` (with and without keepdim), a non-contiguous input and an empty one."""
    def gen(rng):
        for d in dims:
            for k in ((False, True) if keepdim else (False,)):
                kw = {"keepdim": True} if k else {}
                yield SampleInput((_u(rng, (2, 3, 2), low, high), d), kw, name=f"dim={d} keepdim={k}")
        d0 = next(d for d in dims if d is not None)
        yield SampleInput((_u(rng, (3, 4, 2), low, high), d0), name="noncontiguous", noncontiguous=True)
        if empty:
            yield SampleInput((_u(rng, (0, 3, 2), low, high), -1), name="empty")
    return gen


def samples(*items):
    """Samples listed by hand: each item is ``(args, kwargs)`` or ``(args, kwargs, name)``
    where args may hold shapes written as ``Shape((2, 3))`` (uniform data is drawn)."""
    def gen(rng):
        for it in items:
            args, kw = it[0], it[1]
            name = it[2] if len(it) > 2 else ""
            nc = bool(it[3]) if len(it) > 3 else False
            drawn = tuple(a.draw(rng) if isinstance(a, Shape) else a for a in args)
            yield SampleInput(drawn, dict(kw), name=name, noncontiguous=nc)
    return gen


@dataclass(frozen=True)
class Shape:
    """A shape in ``samples(...)``: uniform float64 data in [low, high) is drawn for it."""

    shape: tuple
    low: float = -2.0
    high: float = 2.0

    def draw(self, rng):
        return _u(rng, tuple(self.shape), self.low, self.high)
