"""The PyTorch that benchmark scripts compare deepseek against, when it is installed."""


def torch_installed():
    """True when ``import torch`` would find a package; found without importing it (that
    takes seconds), and False too where a broken install makes the lookup raise."""
    import importlib.util
    try:
        return importlib.util.find_spec("torch") is not None
    except Exception:
        return False
