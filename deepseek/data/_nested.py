"""Walk a batch's structure: the one place that knows what containers a batch may be
made of (mappings, named tuples, lists, tuples)."""
import collections.abc


def map_nested(data, leaf):
    """``data`` with ``leaf(x)`` in place of every ``x`` that is not a container, the
    containers rebuilt with the same type (a plain dict for other mappings, as
    PyTorch's default_convert does)."""
    if isinstance(data, collections.abc.Mapping):
        return {k: map_nested(v, leaf) for k, v in data.items()}
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(map_nested(v, leaf) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(map_nested(v, leaf) for v in data)
    return leaf(data)


def copy_arrays(batch):
    """``batch`` with every numpy array (also a Tensor's) copied: private memory."""
    import numpy as np
    from .._tensor import Tensor

    def leaf(x):
        if isinstance(x, Tensor):
            return Tensor._make(x._data.copy())
        return x.copy() if isinstance(x, np.ndarray) else x
    return map_nested(batch, leaf)
