"""``deepseek.linalg``: the ``torch.linalg`` names deepseek implements (norms, products)."""
from .ops.reduction_extra import vector_norm, norm as _norm
from .ops.einsum import cross as _cross
from .ops.linalg import matmul  # noqa: F401

__all__ = ["vector_norm", "norm", "matrix_norm", "cross", "vecdot", "matmul"]


def norm(A, ord=None, dim=None, keepdim=False, dtype=None):
    """Vector 2-norm of all elements (``ord=None``) or the ``ord`` vector norm over ``dim``;
    the Frobenius norm for ``ord='fro'`` over two dims."""
    if ord is None or ord == "fro":
        return vector_norm(A, 2, dim, keepdim, dtype)
    if isinstance(dim, (tuple, list)) and len(dim) == 2:
        return matrix_norm(A, ord, dim, keepdim)
    return vector_norm(A, ord, dim, keepdim, dtype)


def matrix_norm(A, ord="fro", dim=(-2, -1), keepdim=False):
    """Frobenius norm of the matrices over ``dim`` (other orders are not implemented)."""
    if ord != "fro":
        raise NotImplementedError(f"linalg.matrix_norm: ord={ord!r} is not implemented (only 'fro')")
    return vector_norm(A, 2, dim, keepdim)


def cross(input, other, dim=-1):
    """Cross product along ``dim`` (default the last)."""
    return _cross(input, other, dim)


def vecdot(x, y, dim=-1):
    """Dot product of vectors along ``dim`` (broadcast)."""
    from .ops.elementwise import mul
    from .ops.reduction import sum as _sum
    return _sum(mul(x, y), dim)
