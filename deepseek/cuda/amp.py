"""``deepseek.cuda.amp``: PyTorch's deprecated ``torch.cuda.amp`` names, as aliases of
``deepseek.amp`` (mixed precision lives there; ``autocast`` here defaults to the
'cuda' device type, like ``torch.cuda.amp.autocast``)."""


def _amp():
    try:
        from .. import amp
    except ImportError as e:
        raise ImportError("deepseek.cuda.amp needs deepseek.amp (autocast / GradScaler), which "
                          "is not in this build yet") from e
    return amp


def __getattr__(name):
    if name == "autocast":
        amp = _amp()

        def autocast(enabled=True, dtype=None, cache_enabled=True):
            """``deepseek.amp.autocast('cuda', ...)``."""
            kw = {"enabled": enabled}
            if dtype is not None:
                kw["dtype"] = dtype
            return amp.autocast("cuda", **kw)
        return autocast
    if name in ("GradScaler", "custom_fwd", "custom_bwd"):
        amp = _amp()
        try:
            return getattr(amp, name)
        except AttributeError:
            raise AttributeError(f"deepseek.amp has no {name!r} yet") from None
    raise AttributeError(f"module 'deepseek.cuda.amp' has no attribute {name!r}")
