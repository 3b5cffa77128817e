"""``deepseek.backends.cudnn``: flags (recorded) and a truthful ``is_available``."""
enabled = True
benchmark = False
deterministic = False
allow_tf32 = True
benchmark_limit = 10


def is_available():
    """True when CuPy sees a GPU and its cuDNN bindings import."""
    from .. import backend
    return backend.cupy_available() and backend.cudnn_module() is not None


def version():
    """cuDNN's version number, or None when it is not available (as PyTorch answers)."""
    if not is_available():
        return None
    from .. import backend
    return int(backend.cudnn_module().getVersion())


class flags:
    """Context manager setting the flags inside the block (``torch.backends.cudnn.flags``)."""

    def __init__(self, enabled=False, benchmark=False, benchmark_limit=10, deterministic=False,
                 allow_tf32=True):
        self.new = dict(enabled=enabled, benchmark=benchmark, benchmark_limit=benchmark_limit,
                        deterministic=deterministic, allow_tf32=allow_tf32)

    def __enter__(self):
        g = globals()
        self.old = {k: g[k] for k in self.new}
        g.update(self.new)

    def __exit__(self, *exc):
        globals().update(self.old)
        return False
