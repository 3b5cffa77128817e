"""Custom autograd Functions that tests build on the spot (tests/ is on sys.path)."""
from deepseek.autograd import Function


def doubling(name, grad_factor=2):
    """A Function class ``name`` whose forward is ``2 * a`` and whose backward is
    ``grad_factor * g``: the right gradient for 2, a deliberately wrong one otherwise."""
    def forward(ctx, a):
        return a * 2

    def backward(ctx, g):
        return g * grad_factor
    return type(name, (Function,), {"forward": staticmethod(forward),
                                    "backward": staticmethod(backward), "__module__": __name__})
