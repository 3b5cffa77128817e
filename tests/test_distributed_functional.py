"""deepseek.distributed.functional: collectives with a backward, on real processes,
against a single-process computation of the same math."""
import numpy as np
import pytest

import functional_cases as cases
from deepseek.testing.multiprocess import spawn_ranks

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", params=[2, 3])
def run(request):
    world = request.param
    return world, spawn_ranks(cases.rank_results, world, timeout=240), cases.reference(world)


@pytest.mark.parametrize("case", sorted(cases._ref_cases()))
def test_forward_and_backward_match_single_process(run, case):
    world, ranks, ref = run
    ref_outs, ref_grads = ref[case]
    for r in range(world):
        out, grad = ranks[r][case]
        np.testing.assert_allclose(out, ref_outs[r], rtol=1e-10, atol=1e-12,
                                   err_msg=f"{case}: output of rank {r}")
        np.testing.assert_allclose(grad, ref_grads[r], rtol=1e-10, atol=1e-12,
                                   err_msg=f"{case}: gradient of rank {r}")


def test_float32_keeps_its_dtype(run):
    world, ranks, _ = run
    for r in range(world):
        dtype, grad = ranks[r]["float32"]
        assert dtype == "float32"
        # all_gather(x).sum(): every rank's output contains x_r once
        np.testing.assert_array_equal(grad, np.full(cases.SHAPE, world, np.float32))


def test_max_gradient_is_split_between_ties(run):
    world, ranks, _ = run
    # every rank holds the max; rank r's loss weight is r + 1
    expect = sum(range(1, world + 1)) / world
    for r in range(world):
        np.testing.assert_allclose(ranks[r]["max_ties"][1], np.full(4, expect))


def test_single_rank_group_is_the_identity():
    (res,) = spawn_ranks(cases.rank_results, 1, timeout=120)
    ref = cases.reference(1)
    for case in cases._ref_cases():
        np.testing.assert_allclose(res[case][0], ref[case][0][0], rtol=1e-12, err_msg=case)
        np.testing.assert_allclose(res[case][1], ref[case][1][0], rtol=1e-12, err_msg=case)


def test_bad_arguments_are_refused_before_communicating():
    import deepseek as ds
    import deepseek.distributed.functional as F

    x = ds.zeros(5, 4)
    with pytest.raises(ValueError, match="PRODUCT"):
        F.all_reduce(x, op="product")
    with pytest.raises(ValueError, match="MAX"):
        F.reduce_scatter(x, op="max")
    with pytest.raises(ValueError, match="out of range"):
        F.all_gather(x, dim=2)
