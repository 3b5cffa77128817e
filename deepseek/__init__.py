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
# package-dir in pyproject.toml; mirror exactly that mapping here so `pytest` from the
# repo root imports them (and nothing else of the checkout: no deepseek.tests or
# deepseek.scripts). Installed copies already have them inside the package.
_here = _os.path.dirname(_os.path.abspath(__file__))
_MAPPED = ("collectives", "launcher", "elastic", "native")
if not _os.path.isdir(_os.path.join(_here, "collectives")):
    _root = _os.path.dirname(_here)
    if _os.path.isfile(_os.path.join(_root, "collectives", "__init__.py")):
        import sys as _sys

        class _CheckoutFinder:
            """Finds deepseek.<folder> for the mapped top-level folders of a checkout."""

            @staticmethod
            def find_spec(fullname, path=None, target=None):
                pkg, _, name = fullname.partition(".")
                if pkg != "deepseek" or name not in _MAPPED:
                    return None
                import importlib.util as _util

                folder = _os.path.join(_root, name)
                return _util.spec_from_file_location(
                    fullname, _os.path.join(folder, "__init__.py"),
                    submodule_search_locations=[folder])

        # first: the mapped folders must come from the same tree as this file, even when
        # an editable install of another checkout is on the path too
        _sys.meta_path.insert(0, _CheckoutFinder)

_SUBMODULES = {
    "autograd", "nn", "optim", "data", "distributed", "testing", "amp", "jit",
    "quantization", "viz", "profiler", "hub", "native", "collectives", "launcher",
    "elastic", "backend", "dtypes", "random", "serialization", "ops", "env", "trainer",
    "onnx", "serve", "models",
}


def _exists(name):
    import importlib.util as _util

    return _util.find_spec("deepseek." + name) is not None


def __getattr__(name):
    if name in _SUBMODULES and _exists(name):  # planned ones (amp, jit, ...) may not be yet
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
    return sorted(set(globals()) | {m for m in _SUBMODULES if _exists(m)}
                  | set(getattr(api, "__all__", ())))
