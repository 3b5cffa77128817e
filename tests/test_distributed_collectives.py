"""deepseek.distributed: PyTorch-named collectives on deepseek tensors."""
import pytest

import distributed_cases as cases
from fresh_python import run_code
from deepseek.testing.multiprocess import spawn_ranks

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_tensor_collectives(world):
    assert spawn_ranks(cases.tensor_ops, world, timeout=90) == [True] * world


def test_distributed_imports_no_engine_into_collectives():
    code = ("import sys, deepseek.collectives as C; "
            "bad = [m for m in sys.modules if m.startswith(('deepseek._tensor', "
            "'deepseek.autograd', 'deepseek.nn', 'deepseek.distributed'))]; "
            "assert not bad, bad; print('ok')")
    assert "ok" in run_code(code)


def test_symmetric_tensor_all_reduce():
    assert spawn_ranks(cases.symmetric_tensor, 2, timeout=60) == [("cpu", 2, True)] * 2
