"""The store module for the launcher, without the collectives package's start-up cost.

``import deepseek.collectives.store`` first runs ``deepseek/collectives/__init__.py``,
which loads the process-group machinery (numpy, backends): tens of milliseconds that
deepseek-run would pay before starting a single worker. store.py itself is stdlib-only,
so the launcher loads that one file directly (it sits next to launcher/ both in a
source checkout and in an installed package) under a private module name. If the
collectives package is already imported, or the file is not where expected, this is a
plain import.
"""
import importlib.util
import os
import sys

_NAME = "deepseek.launcher._store_impl"


def load():
    mod = sys.modules.get("deepseek.collectives.store") or sys.modules.get(_NAME)
    if mod is not None:
        return mod
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "collectives", "store.py")
    if "deepseek.collectives" in sys.modules or not os.path.isfile(path):
        from ..collectives import store
        return store
    spec = importlib.util.spec_from_file_location(_NAME, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = mod
    spec.loader.exec_module(mod)
    return mod


store = load()
