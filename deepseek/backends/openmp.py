"""``deepseek.backends.openmp``: deepseek does not link openmp directly."""
enabled = False


def is_available():
    """False: deepseek's CPU kernels are numpy's and its own C kernels."""
    return False
