"""einsum and the matrix products PyTorch names separately (mm, bmm, mv, dot, outer,
inner, addmm, addmv, baddbmm, addbmm, tensordot, kron, cross).

``Einsum`` is one Function: forward is the backend's einsum; the gradient of each
operand is an einsum of the output gradient with the other operands, written to
the operand's subscripts (letters only that operand had are broadcast back; repeated
letters such as ``ii`` go onto the diagonal). The named products are checked the
way PyTorch checks them and then computed by ``matmul`` (deepseek.ops.linalg).

Autocast follows PyTorch's lists, which name some of these ops and not others: on
the CPU ``mv`` and ``dot`` are not on the lower-precision list while ``matmul`` is,
so they run through ``MatVec`` (``Matmul`` with a table entry of its own); einsum
lowers only when its last contraction is a matrix product (``einsum_cpu_policy``);
addmm/baddbmm/addbmm cast their inputs at the composite op, as PyTorch does
(``deepseek.amp.autocast_mode.composite_inputs``).
"""
import string

import numpy as np

from ..autograd.function import Function
from .. import dtypes as _dt
from .._tensor import Tensor
from ._util import xp_of
from .linalg import Matmul


def _parse(equation, shapes):
    """Subscripts per operand and of the output, ellipses written out as letters."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    ins = lhs.split(",")
    if len(ins) != len(shapes):
        raise RuntimeError(f"einsum(): {len(ins)} operands in the equation but {len(shapes)} given")
    used = set(c for c in eq if c.isalpha())
    free = [c for c in string.ascii_letters if c not in used]
    ell_n = max((len(s) - (len(t) - 3) for t, s in zip(ins, shapes) if "..." in t), default=0)
    ell = "".join(free[:ell_n])
    subs = []
    for t, s in zip(ins, shapes):
        if "..." in t:
            k = len(s) - (len(t) - 3)
            t = t.replace("...", ell[ell_n - k:] if k else "")
        if len(t) != len(s):
            raise RuntimeError(f"einsum(): the number of subscripts in the equation ({len(t)}) does "
                               f"not match the number of dimensions ({len(s)}) of an operand")
        subs.append(t)
    if arrow:
        out = rhs.replace("...", ell)
    else:
        counts = {}
        for t in subs:
            for c in t:
                counts[c] = counts.get(c, 0) + 1
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    return subs, out


def _to_subs(xp, r, have, want, sizes):
    """Array ``r`` with subscripts ``have`` (distinct letters, a subset of ``want``'s)
    laid out as ``want``: missing letters broadcast, repeated letters on the diagonal."""
    uniq = "".join(dict.fromkeys(want))
    for c in uniq:
        if c not in have:
            r = xp.expand_dims(r, -1)
            have += c
    r = xp.transpose(r, [have.index(c) for c in uniq])
    r = xp.broadcast_to(r, tuple(sizes[c] for c in uniq))
    if len(uniq) == len(want):
        return xp.ascontiguousarray(r)
    out = xp.zeros(tuple(sizes[c] for c in want), dtype=r.dtype)
    grids = np.indices(tuple(sizes[c] for c in uniq), sparse=True)
    idx = tuple(grids[uniq.index(c)] for c in want)
    # every operand position whose repeated letters agree gets its value
    out[tuple(xp.asarray(np.broadcast_to(i, tuple(sizes[c] for c in uniq))) for i in idx)] = r
    return out


def _computable(arrays):
    """bfloat16 operands in float32: the backends' einsum has no bfloat16 kernel."""
    return [a.astype(np.float32) if a.dtype == _dt.bfloat16 else a for a in arrays]


class Einsum(Function):
    @staticmethod
    def forward(ctx, *arrays, subs, out):
        xp = xp_of(*arrays)
        ctx.save_for_backward(*arrays)
        ctx.subs, ctx.out = subs, out
        dt = arrays[0].dtype
        return xp.asarray(xp.einsum(",".join(subs) + "->" + out, *_computable(arrays),
                                    optimize=len(arrays) > 2)).astype(dt, copy=False)

    @staticmethod
    def backward(ctx, g):
        arrays = ctx.saved_tensors
        xp = xp_of(g)
        sizes = {}
        for a, s in zip(arrays, ctx.subs):
            for c, n in zip(s, a.shape):
                sizes[c] = n
        grads = []
        for k, (a, s) in enumerate(zip(arrays, ctx.subs)):
            if not ctx.needs_input_grad[k]:
                grads.append(None)
                continue
            others = [(b, t) for j, (b, t) in enumerate(zip(arrays, ctx.subs)) if j != k]
            avail = set(ctx.out).union(*[set(t) for _, t in others])
            target = "".join(c for c in dict.fromkeys(s) if c in avail)
            eq = ",".join([ctx.out] + [t for _, t in others]) + "->" + target
            r = xp.einsum(eq, *_computable([g] + [b for b, _ in others]), optimize=len(others) > 1)
            grads.append(_to_subs(xp, xp.asarray(r), target, s, sizes).astype(a.dtype, copy=False))
        return tuple(grads)


def einsum_cpu_policy(args, kwargs):
    """Autocast policy of an ``Einsum`` call on the CPU. PyTorch's einsum is not on its
    CPU list itself: it contracts operands pairwise, left to right, each pair by
    ``bmm`` (lower precision) when the pair shares a summed letter and by ``mul``
    (promotes) when not, so the result is low precision exactly when the last pair
    sums a letter ('lower'); one operand is a sum or a diagonal ('none')."""
    subs, out = kwargs.get("subs"), kwargs.get("out")
    if not subs or len(subs) < 2:
        return "none"
    left = set("".join(subs[:-1]))
    return "lower" if (left & set(subs[-1])) - set(out) else "none"


class MatVec(Matmul):
    """``Matmul`` of ``mv`` and ``dot``: the same computation, its own autocast policy
    (PyTorch's CPU autocast leaves mv and dot in their input dtype)."""


def _matvec(a, b):
    from ._util import prepare_binary
    a, b = prepare_binary(a, b, "matmul")
    return MatVec.apply(a, b)


_composite = None


def _amp(name, *tensors):
    """``tensors`` cast by autocast for composite op ``name`` (unchanged outside it)."""
    global _composite
    if _composite is None:
        from ..amp.autocast_mode import composite_inputs as _composite
    return _composite(name, *tensors)


def einsum(equation, *operands):
    """Einstein summation over the operands (``'ij,jk->ik'``; ``...`` broadcasts)."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    from . import cast
    from .. import dtypes
    dt = operands[0].dtype
    for t in operands[1:]:
        dt = dtypes.promote_types(dt, t.dtype)
    operands = tuple(cast(t, dt) if t.dtype != dt else t for t in operands)
    subs, out = _parse(equation, [tuple(t.shape) for t in operands])
    sizes = {}
    for t, s in zip(operands, subs):
        for c, n in zip(s, t.shape):
            if c in sizes and sizes[c] != n and 1 not in (n, sizes[c]):
                raise RuntimeError(f"einsum(): operands do not broadcast with remapped shapes "
                                   f"(subscript {c!r} is {sizes[c]} and {n})")
            sizes[c] = max(sizes.get(c, n), n)
    return Einsum.apply(*operands, subs=subs, out=out)


def _matmul(a, b):
    from .linalg import matmul
    return matmul(a, b)


def _need(t, nd, op, name="input"):
    if t.ndim != nd:
        raise RuntimeError(f"{op}: {name} must be a {nd}D tensor, got {t.ndim}D")


def mm(input, mat2):
    """Matrix product of two 2-d tensors."""
    _need(input, 2, "mm", "self")
    _need(mat2, 2, "mm", "mat2")
    if input.shape[1] != mat2.shape[0]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({input.shape[0]}x{input.shape[1]} "
                           f"and {mat2.shape[0]}x{mat2.shape[1]})")
    return _matmul(input, mat2)


def bmm(input, mat2):
    """Batched matrix product of two 3-d tensors (same batch size)."""
    _need(input, 3, "bmm", "batch1")
    _need(mat2, 3, "bmm", "batch2")
    if input.shape[0] != mat2.shape[0] or input.shape[2] != mat2.shape[1]:
        raise RuntimeError(f"bmm: shapes {tuple(input.shape)} and {tuple(mat2.shape)} cannot be multiplied")
    return _matmul(input, mat2)


def mv(input, vec):
    """Matrix-vector product."""
    _need(input, 2, "mv")
    _need(vec, 1, "mv", "vec")
    return _matvec(input, vec)


def dot(input, other):
    """Inner product of two 1-d tensors."""
    if input.ndim != 1 or other.ndim != 1:
        raise RuntimeError(f"1D tensors expected, but got {input.ndim}D and {other.ndim}D tensors")
    if input.shape[0] != other.shape[0]:
        raise RuntimeError(f"inconsistent tensor size, expected tensor [{input.shape[0]}] and src "
                           f"[{other.shape[0]}] to have the same number of elements, but got "
                           f"{input.shape[0]} and {other.shape[0]} elements respectively")
    return _matvec(input, other)


vdot = dot


def inner(input, other):
    """Sum-product over the last dims (``einsum('...i,...i')`` of every pair of rows)."""
    if input.ndim == 0 or other.ndim == 0:
        from .elementwise import mul
        return mul(input, other)
    if input.ndim == 1 and other.ndim == 1 and input.shape == other.shape:
        return dot(input, other)  # PyTorch's too (it stays in fp32 under CPU autocast)
    return einsum(_inner_eq(input.ndim, other.ndim), input, other)


def _inner_eq(na, nb):
    la = string.ascii_lowercase[:na - 1]
    lb = string.ascii_lowercase[na - 1:na - 1 + nb - 1]
    return f"{la}z,{lb}z->{la}{lb}"


def outer(input, vec2):
    """Outer product of two 1-d tensors."""
    from .shape import reshape
    from .elementwise import mul
    if input.ndim != 1 or vec2.ndim != 1:
        raise RuntimeError("outer: expected 1D tensors")
    return mul(reshape(input, (-1, 1)), reshape(vec2, (1, -1)))


ger = outer


def _scaled_sum(input, prod, beta, alpha):
    from .elementwise import add, mul
    p = prod if alpha == 1 else mul(prod, alpha)
    if beta == 0:  # PyTorch ignores input then (NaN in it does not propagate)
        return _broadcast_to(p, input)
    return add(input if beta == 1 else mul(input, beta), p)


def _broadcast_to(p, input):
    from .shape import expand
    shape = np.broadcast_shapes(tuple(p.shape), tuple(input.shape))
    return expand(p, shape) if tuple(p.shape) != shape else p


def addmm(input, mat1, mat2, beta=1, alpha=1):
    """``beta * input + alpha * (mat1 @ mat2)`` (input broadcast; beta=0 ignores it, NaN included)."""
    input, mat1, mat2 = _amp("addmm", input, mat1, mat2)
    return _scaled_sum(input, mm(mat1, mat2), beta, alpha)


def addmv(input, mat, vec, beta=1, alpha=1):
    """``beta * input + alpha * (mat @ vec)``."""
    input, mat, vec = _amp("addmv", input, mat, vec)
    return _scaled_sum(input, mv(mat, vec), beta, alpha)


def baddbmm(input, batch1, batch2, beta=1, alpha=1):
    """``beta * input + alpha * bmm(batch1, batch2)``."""
    input, batch1, batch2 = _amp("baddbmm", input, batch1, batch2)
    return _scaled_sum(input, bmm(batch1, batch2), beta, alpha)


def addbmm(input, batch1, batch2, beta=1, alpha=1):
    """``beta * input + alpha * sum_b batch1[b] @ batch2[b]``."""
    from .reduction import sum as _sum
    input, batch1, batch2 = _amp("addbmm", input, batch1, batch2)
    return _scaled_sum(input, _sum(bmm(batch1, batch2), 0), beta, alpha)


def addr(input, vec1, vec2, beta=1, alpha=1):
    """``beta * input + alpha * outer(vec1, vec2)``."""
    return _scaled_sum(input, outer(vec1, vec2), beta, alpha)


def tensordot(a, b, dims=2):
    """Sum-product over the last ``dims`` dims of ``a`` and the first of ``b``
    (or over the listed dim pairs)."""
    if isinstance(dims, int):
        da = list(range(a.ndim - dims, a.ndim))
        db = list(range(dims))
    else:
        da, db = [list(d) if isinstance(d, (list, tuple)) else [d] for d in dims]
        da = [d % a.ndim for d in da]
        db = [d % b.ndim for d in db]
    letters = iter(string.ascii_letters)
    sa = [next(letters) for _ in range(a.ndim)]
    sb = [next(letters) for _ in range(b.ndim)]
    if a.ndim == 1 and b.ndim == 1 and da == [0] and db == [0] and a.shape == b.shape:
        return dot(a, b)  # PyTorch's too (it stays in fp32 under CPU autocast)
    for i, j in zip(da, db):
        sb[j] = sa[i]
    out = [c for i, c in enumerate(sa) if i not in da] + [c for j, c in enumerate(sb) if j not in db]
    return einsum("".join(sa) + "," + "".join(sb) + "->" + "".join(out), a, b)


def kron(input, other):
    """Kronecker product."""
    from .shape import reshape
    from .elementwise import mul
    n = max(input.ndim, other.ndim)
    a = reshape(input, (1,) * (n - input.ndim) + tuple(input.shape))
    b = reshape(other, (1,) * (n - other.ndim) + tuple(other.shape))
    sa = sum(([s, 1] for s in a.shape), [])
    sb = sum(([1, s] for s in b.shape), [])
    out = mul(reshape(a, tuple(sa)), reshape(b, tuple(sb)))
    return reshape(out, tuple(x * y for x, y in zip(a.shape, b.shape)))


def cross(input, other, dim=None):
    """Cross product of 3-vectors along ``dim`` (the first dim of size 3 when None)."""
    from .indexing import getitem
    from .shape import stack
    from .elementwise import mul, sub
    if dim is None:
        dim = next((i for i, s in enumerate(input.shape) if s == 3), None)
        if dim is None:
            raise RuntimeError("no dimension of size 3 in input")
    d = dim % input.ndim
    if input.shape[d] != 3:
        raise RuntimeError(f"linalg.cross: inputs dimension {dim} must have length 3. Got "
                           f"{input.shape[d]} and {other.shape[d]}")

    def c(t, i):
        return getitem(t, (slice(None),) * d + (i,))
    x = [c(input, i) for i in range(3)]
    y = [c(other, i) for i in range(3)]
    parts = [sub(mul(x[1], y[2]), mul(x[2], y[1])), sub(mul(x[2], y[0]), mul(x[0], y[2])),
             sub(mul(x[0], y[1]), mul(x[1], y[0]))]
    return stack(parts, d)
