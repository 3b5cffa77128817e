"""deepseek.distributed: PyTorch-named collectives on deepseek tensors."""
import pytest

import distributed_cases as cases
from deepseek.testing.multiprocess import spawn_ranks

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_tensor_collectives(world):
    assert spawn_ranks(cases.tensor_ops, world, timeout=90) == [True] * world


def test_distributed_imports_no_engine_into_collectives():
    import subprocess
    import sys

    code = ("import sys, deepseek.collectives as C; "
            "bad = [m for m in sys.modules if m.startswith(('deepseek._tensor', "
            "'deepseek.autograd', 'deepseek.nn', 'deepseek.distributed'))]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_symmetric_tensor_all_reduce():
    assert spawn_ranks(cases.symmetric_tensor, 2, timeout=60) == [("cpu", 2, True)] * 2
