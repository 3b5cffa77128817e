"""``deepseek.backends.mkl``: deepseek does not link mkl directly."""
enabled = False


def is_available():
    """False: deepseek's CPU kernels are numpy's and its own C kernels."""
    return False
