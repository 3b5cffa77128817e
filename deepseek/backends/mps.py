"""``deepseek.backends.mps``: deepseek has no Metal backend, so never available."""


def is_available():
    """False: deepseek does not run on Apple's MPS."""
    return False


def is_built():
    """False: deepseek has no MPS build."""
    return False
