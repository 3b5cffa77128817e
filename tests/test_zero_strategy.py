"""ZeROStrategy on the Trainer's Strategy seam: Trainer(strategy='zero1'/'zero2'/'zero3')."""
import numpy as np
import pytest

import zero_cases as cases
from deepseek.testing.multiprocess import spawn_ranks


def test_short_forms_make_zero_strategies():
    from deepseek.distributed import ZeROStrategy
    from deepseek.trainer.config import check_strategy
    for n in (1, 2, 3):
        s = check_strategy(f"zero{n}")
        assert isinstance(s, ZeROStrategy) and s.stage == n
    with pytest.raises(ValueError):
        ZeROStrategy(stage=4)


def test_every_stage_trains_like_ddp_through_the_trainer(shm_guard):
    ddp = spawn_ranks(cases.trainer_fit, 2, timeout=180, args=("ddp",))
    for stage in ("zero1", "zero2", "zero3"):
        got = spawn_ranks(cases.trainer_fit, 2, timeout=180, args=(stage,))
        for r in range(2):
            assert set(got[r]) == set(ddp[r])
            for k in ddp[r]:
                np.testing.assert_allclose(got[r][k], ddp[r][k], rtol=1e-5, atol=1e-6,
                                           err_msg=f"{stage} rank {r} {k}")


def test_offload_optimizer_trains_like_no_offload(shm_guard):
    """ZeROStrategy(offload_optimizer=True): the optimizer side on the host (on the CPU
    the same arrays) gives the same parameters as without, stage 2 and 3; stage 1
    refuses it."""
    from deepseek.distributed import ZeROStrategy
    with pytest.raises(NotImplementedError, match="stage 2"):
        ZeROStrategy(stage=1, offload_optimizer=True)
    for stage in ("zero2", "zero3"):
        want = spawn_ranks(cases.trainer_fit, 2, timeout=180, args=(stage,))
        got = spawn_ranks(cases.trainer_fit, 2, timeout=180, args=(stage + "-offload",))
        for r in range(2):
            assert set(got[r]) == set(want[r])
            for k in want[r]:
                np.testing.assert_array_equal(got[r][k], want[r][k],
                                              err_msg=f"{stage} offload rank {r} {k}")


@pytest.mark.timeout(300)
def test_zero_strategies_with_16_mixed_train_like_ddp(shm_guard):
    """precision='16-mixed' (fp16 autocast + GradScaler): the fp32 master weights are
    sharded, and every stage ends where DDP under the same precision does."""
    ddp = spawn_ranks(cases.trainer_fit, 2, timeout=180, args=("ddp", "16-mixed"))
    for stage in ("zero1", "zero3"):
        got = spawn_ranks(cases.trainer_fit, 2, timeout=180, args=(stage, "16-mixed"))
        for r in range(2):
            for k in ddp[r]:
                np.testing.assert_allclose(got[r][k], ddp[r][k], rtol=1e-4, atol=1e-5,
                                           err_msg=f"{stage} 16-mixed rank {r} {k}")
