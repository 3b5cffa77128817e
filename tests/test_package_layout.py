"""What a newcomer sees of the package: only existing submodules are advertised, and a
source checkout maps exactly the folders that pyproject maps (no deepseek.tests)."""
import os

import pytest

import deepseek
from fresh_python import run_code

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_planned_submodules_are_absent_not_errors():
    # hasattr must answer False (AttributeError), not raise ModuleNotFoundError
    for name in ("amp", "jit", "quantization", "hub"):
        if os.path.exists(os.path.join(ROOT, "deepseek", name)) or \
                os.path.exists(os.path.join(ROOT, "deepseek", name + ".py")):
            continue  # built since: then it must import
        assert not hasattr(deepseek, name)
        assert name not in dir(deepseek)
    assert hasattr(deepseek, "nn") and "nn" in dir(deepseek)


def test_checkout_folders_outside_the_mapping_are_not_importable():
    for name in ("tests", "scripts", "examples"):
        with pytest.raises(ImportError):
            __import__("deepseek." + name)


def test_a_raw_checkout_without_install_imports_the_mapped_folders():
    # drop the editable install's finder first, so only the checkout on sys.path is left
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in "
            "getattr(f, '__name__', type(f).__name__)]; "
            "import deepseek.collectives.store, deepseek.launcher, deepseek.native, "
            "deepseek.elastic, deepseek.collectives as c; print(c.__file__)")
    out = run_code(code, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.strip() == os.path.join(ROOT, "collectives", "__init__.py")
