"""ZeRO stages 1-3 with deepseek.amp (autocast + loss scaling), and over a subgroup.

AMP: the parameters stay fp32 master weights, sharded as each stage shards them;
autocast runs the forward in fp16/bf16. The stages must train like DDP under the same
AMP (the only difference is where the fp32 gradients are reduced), and the
ShardedGradScaler's skip decision must be the same on every rank even when only one
rank holds the inf (ZeRO-2/3 unscale shards).
"""
import numpy as np
import pytest

import zero_cases as cases
from deepseek.testing.multiprocess import spawn_ranks


def _close(a, b, rtol, atol, what):
    assert set(a) == set(b), (sorted(a), sorted(b))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol,
                                   err_msg=f"{what}: {name}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_every_stage_with_amp_matches_ddp_with_amp(dtype, shm_guard):
    ref = spawn_ranks(cases.train_amp, 2, timeout=120, args=(0, dtype))
    start = cases.full_params(cases.build_model("mlp", seed=0), "single")
    moved = max(float(np.abs(ref[0][0][k] - start[k]).max()) for k in start)
    assert moved > 1e-3, "AMP training did not move the parameters"
    for stage in (1, 2, 3):
        got = spawn_ranks(cases.train_amp, 2, timeout=120, args=(stage, dtype))
        for r in range(2):
            _close(got[r][0], ref[r][0], rtol=1e-4, atol=1e-5,
                   what=f"stage {stage} {dtype} rank {r} vs DDP")
            assert got[r][1] == ref[r][1], (stage, r, got[r][1], ref[r][1])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_sharded_grad_scaler_skips_the_same_step_on_every_rank(stage, shm_guard):
    """Rank 0 alone sees an inf at step 1: every rank skips that step (parameters
    unchanged) and halves its scale; the other steps are taken."""
    got = spawn_ranks(cases.amp_inf_on_one_rank, 2, timeout=120, args=(stage,))
    for r in range(2):
        assert [c for c, _ in got[r]] == [True, False, True], (r, got[r])
        assert [s for _, s in got[r]] == [2.0 ** 10, 2.0 ** 9, 2.0 ** 9], (r, got[r])


@pytest.mark.timeout(300)
def test_a_plain_grad_scaler_lets_sharded_ranks_disagree(shm_guard):
    """The failure ShardedGradScaler exists for (so the test above can fail): with a
    plain GradScaler under ZeRO-2, rank 0 skips step 1 and rank 1 takes it."""
    got = spawn_ranks(cases.amp_inf_on_one_rank, 2, timeout=120, args=(2, False, 1, 2))
    assert got[0][1][0] is False and got[1][1][0] is True, got


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_over_a_subgroup(stage, shm_guard):
    """4 ranks as two data-parallel groups of 2 ({0,1}, {2,3}): each group's ZeRO run
    equals one process on that group's whole batch, and the groups differ."""
    got = spawn_ranks(cases.subgroup_train, 4, timeout=180, args=(stage,))
    refs = {g: cases.subgroup_reference(g) for g in (0, 1)}
    for r, (g, params) in enumerate(got):
        assert g == r // 2
        _close(params, refs[g], rtol=1e-5, atol=1e-6, what=f"stage {stage} rank {r}")
    assert any(not np.allclose(refs[0][k], refs[1][k]) for k in refs[0])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [2, 3])
def test_low_precision_gradient_reduce_scatter(stage, shm_guard):
    """MixedPrecision(reduce_dtype=bf16/fp16): the run stays within the wire dtype's
    rounding of the fp32 run, and is not the fp32 run (the cast happened)."""
    ref = cases.train(0, 1, "single", opt="sgd", steps=6)[0]
    for dtype, atol in (("bfloat16", 3e-3), ("float16", 3e-4)):
        got = spawn_ranks(cases.train_reduce_dtype, 2, timeout=120, args=(stage, dtype))
        for r in range(2):
            _close(got[r][0], ref, rtol=0, atol=atol, what=f"stage {stage} {dtype} rank {r}")
            assert any(not np.allclose(got[r][0][k], ref[k], rtol=1e-7, atol=0)
                       for k in ref), (stage, dtype)
