"""``deepseek.backends.mkldnn``: deepseek does not link mkldnn directly."""
enabled = False


def is_available():
    """False: deepseek's CPU kernels are numpy's and its own C kernels."""
    return False
