"""deepseek: a deep-learning framework built around distributed training.

``import deepseek`` is deliberately cheap: the launcher and the collectives layer live
in this namespace too (``deepseek.launcher``, ``deepseek.collectives``) and must start
without loading the tensor engine. Engine names (``deepseek.Tensor``, ``deepseek.nn``,
``deepseek.randn`` ...) are resolved on first access (PEP 562).
"""
import importlib as _importlib
import os as _os

__version__ = "0.1.0"

# Running from a source checkout without an install: the top-level folders
# collectives/, launcher/, elastic/, native/ are mapped into this namespace by
# package-dir in pyproject.toml; mirror that mapping here so `pytest` from the repo
# root imports them. Installed copies already have them inside the package.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "collectives")):
    _root = _os.path.dirname(_here)
    if _os.path.isfile(_os.path.join(_root, "collectives", "__init__.py")):
        __path__.append(_root)  # noqa: F821  (package __path__)

_SUBMODULES = {
    "autograd", "nn", "optim", "data", "distributed", "testing", "amp", "jit",
    "quantization", "viz", "profiler", "hub", "native", "collectives", "launcher",
    "elastic", "backend", "dtypes", "random", "serialization", "ops",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return _importlib.import_module("deepseek." + name)
    api = _importlib.import_module("deepseek._api")
    try:
        value = getattr(api, name)
    except AttributeError:
        raise AttributeError(f"module 'deepseek' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    api = _importlib.import_module("deepseek._api")
    return sorted(set(globals()) | _SUBMODULES | set(getattr(api, "__all__", ())))
