"""How the quantized Linear classes describe themselves in ``repr(model)``."""


def linear_repr(mod, details):
    """``extra_repr`` of a quantized Linear: its feature counts, then ``details`` (its
    integer format: dtype, scales, groups)."""
    return f"in_features={mod.in_features}, out_features={mod.out_features}, {details}"
