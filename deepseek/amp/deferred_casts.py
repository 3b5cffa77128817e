"""Parameter casts that a GEMM saved for backward, re-made in backward instead of kept.

Under CPU autocast a linear/matmul gets the bf16 (fp16) cast of its fp32 weight, and
its backward needs that cast again (the input gradient is ``g @ W``). Kept in the graph,
the casts of all weights stay alive from the forward to the backward of their layer:
in a weight-heavy model (an MLP at batch 256) they are more memory than the
activations themselves, so autocast would cost memory instead of saving it. The fp32
parameter is alive anyway, and the cast is one exact, deterministic native pass, so
the GEMM's saved slot holds a small ``_Recast`` token instead, and the backward casts
the parameter again: bit-identical values, the memory of one cast at a time.

The token keeps the parameter's array (the object the fp32 path would have saved) and
its version: a parameter changed in place between the forward and the backward is an
error, as for any saved tensor, instead of a silently different gradient.

Inputs (leaves that do not require grad: the batch) get the same treatment: the fp32
GEMM saves the input itself, so re-making its cast from it keeps alive nothing the fp32
graph would not, while a kept cast is one more activation-sized array (in an MLP, the
first layer's input cast was 0.38 of its 1.4 MiB of saved activations).

``defer(ctx, cache)`` is called by the autocast dispatch right after such an op ran; it
swaps the op's saved tuple for a ``_DeferredSaved``, a tuple whose items are resolved
(recast) when read, so the op's backward (``x, w = ctx.saved_tensors``) is unchanged.
"""
from ..ops.shape import _astype

# switch for tests and measurements: False keeps the casts in the graph (PyTorch's way)
ENABLED = True


class _Recast:
    """A parameter cast to be re-made: the parameter's array, its version counter and
    the version the forward saw, and the dtype of the cast."""

    __slots__ = ("array", "vc", "version", "dtype")

    def __init__(self, array, vc, dtype):
        self.array, self.vc, self.version, self.dtype = array, vc, vc[0], dtype

    def resolve(self, idx):
        self.check(idx)
        return _astype(self.array, self.dtype)

    def check(self, idx):
        """Raise PyTorch's error if the parameter changed since the forward."""
        if self.vc[0] != self.version:
            raise RuntimeError(
                f"one of the variables needed for gradient computation has been modified by "
                f"an inplace operation: the tensor of shape {tuple(self.array.shape)} "
                f"(saved array {idx}, as its {self.dtype.name} autocast cast) is at version "
                f"{self.vc[0]}; expected version {self.version} instead. Autocast re-makes "
                f"the casts of parameters and inputs in backward: change them only after "
                f"backward (or run this region with deepseek.amp.deferred_casts.ENABLED "
                f"= False to keep the casts in the graph).")


class _DeferredSaved(tuple):
    """The saved arrays of an op, some of them ``_Recast`` tokens: reading an item (by
    iteration or index) gives the array, the tokens re-made at that moment."""

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i):
        item = tuple.__getitem__(self, i)
        if isinstance(i, slice):
            return tuple(x.resolve(i) if type(x) is _Recast else x for x in item)
        return item.resolve(i) if type(item) is _Recast else item


def master(saved, i):
    """``(fp32 array, cast dtype)`` when item ``i`` of the saved arrays ``saved`` is a
    deferred cast (checked against in-place changes), else None: a GEMM that converts
    its operand to fp32 block by block can round the fp32 array itself to the cast's
    precision (``ops._lowp``'s ``b_round``), the same values without re-making the
    cast."""
    if type(saved) is not _DeferredSaved:
        return None
    item = tuple.__getitem__(saved, i)
    if type(item) is not _Recast:
        return None
    item.check(i)
    return item.array, item.dtype


def defer(ctx, casts):
    """Swap the parameter casts among ``ctx``'s saved arrays for ``_Recast`` tokens.
    ``casts``: {id(cast array): (cast array, parameter tensor)} of the casts this op got
    from the region's cache."""
    saved = ctx.saved
    if not saved or type(saved) is not tuple:
        return
    new, changed = list(saved), False
    for i, s in enumerate(saved):
        hit = casts.get(id(s))
        if hit is not None and hit[0] is s:
            param = hit[1]
            new[i] = _Recast(param._data, param._vc, s.dtype)
            changed = True
    if changed:
        ctx.saved = _DeferredSaved(new)
