"""parameters_to_vector / vector_to_parameters."""
from ...ops.shape import cat, reshape
from ...autograd.grad_mode import no_grad
from ..._tensor import Tensor


def parameters_to_vector(parameters):
    """One flat tensor of all parameters (differentiable: built with reshape + cat)."""
    params = list(parameters)
    if not params:
        raise ValueError("parameters_to_vector: got no parameters")
    dev = params[0].device
    for p in params:
        if p.device != dev:
            raise TypeError(f"Found two parameters on different devices, {dev} and {p.device}")
    return cat([reshape(p, (-1,)) for p in params])


def vector_to_parameters(vec, parameters):
    """Copy consecutive slices of ``vec`` into ``parameters`` (in place)."""
    if not isinstance(vec, Tensor):
        raise TypeError(f"expected deepseek.Tensor, but got: {type(vec).__name__}")
    params = list(parameters)
    total = sum(p.numel() for p in params)
    if vec.ndim != 1 or vec.numel() != total:
        raise ValueError(f"vector_to_parameters: expected a 1-D vector of {total} elements for "
                         f"the parameters, got shape {tuple(vec.shape)}")
    off = 0
    src = vec._data
    with no_grad():
        for p in params:
            n = p.numel()
            p._data[...] = src[off:off + n].reshape(p._data.shape)
            p._bump_version()
            off += n
