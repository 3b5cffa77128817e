"""init_device_mesh: placement (tp innermost), one group per line, bad shapes."""
import pytest

import mesh_tp_cases as cases
from deepseek.distributed.device_mesh import _grid
from deepseek.testing.multiprocess import spawn_ranks

pytestmark = pytest.mark.timeout(300)


def test_tensor_parallel_dimension_is_innermost():
    g = _grid((2, 2, 2), ("dp", "pp", "tp"))
    assert g[0, 0].tolist() == [0, 1] and g[1, 1].tolist() == [6, 7]  # tp: consecutive
    assert g[0, :, 0].tolist() == [0, 2] and g[:, 0, 0].tolist() == [0, 4]
    # tp named first still gets consecutive ranks
    h = _grid((2, 3), ("tp", "dp"))
    assert h[:, 0].tolist() == [0, 1] and h[0, :].tolist() == [0, 2, 4]
    assert sorted(h.ravel().tolist()) == list(range(6))


def test_mesh_groups_on_four_ranks(shm_guard):
    res = spawn_ranks(cases.mesh_groups, 4, timeout=180)
    for r, out in enumerate(res):
        dp_c, tp_c = divmod(r, 2)
        assert out["tp"] == ([2 * dp_c, 2 * dp_c + 1], tp_c, 2)
        assert out["dp"] == ([tp_c, tp_c + 2], dp_c, 2)
        assert out["tp_sum"] == float(4 * dp_c + 1)  # the ranks of my tp group only
        assert "does not multiply to the world size 4" in out["bad"]
