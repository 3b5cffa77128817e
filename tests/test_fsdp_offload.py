"""FSDP(cpu_offload=CPUOffload(offload_params=False)): the master shards, their
gradients and the optimizer state on the host. On the CPU the copies are on the same
device and training equals no offload bit for bit."""
import numpy as np
import pytest

import zero_cases as cases
from deepseek.distributed.fsdp import CPUOffload
from deepseek.testing.multiprocess import spawn_ranks

CONFIGS = [{"kind": "mlp"}, {"kind": "lm", "opt": "sgd"},
           {"kind": "mlp", "accum": 2}, {"kind": "lm", "clip": 0.05},
           {"kind": "mlp", "min_unit_numel": 500}]


@pytest.mark.parametrize("stage,world", [(2, 2), (3, 2), (3, 3)])
def test_offload_equals_no_offload_exactly(stage, world, shm_guard):
    configs = [c for c in CONFIGS if stage == 3 or "min_unit_numel" not in c]
    off = [dict(c, cpu_offload=CPUOffload()) for c in configs]
    got = spawn_ranks(cases.train_many, world, timeout=240, args=(stage, off))
    ref = spawn_ranks(cases.train_many, world, timeout=240, args=(stage, configs))
    for r in range(world):
        for i, cfg in enumerate(configs):
            (p_got, n_got), (p_ref, n_ref) = got[r][i], ref[r][i]
            assert set(p_got) == set(p_ref)
            for name in p_ref:
                np.testing.assert_array_equal(p_got[name], p_ref[name],
                                              err_msg=f"stage {stage} {cfg}: {name}")
            assert n_got == n_ref


@pytest.mark.parametrize("stage", [2, 3])
def test_offloaded_shards_are_apart_from_the_gathered_parameters(stage, shm_guard):
    for apart, host_grads, state in spawn_ranks(cases.offload_layout, 2, timeout=120,
                                                args=(stage,)):
        assert apart and host_grads and state > 0


def test_offload_params_is_refused():
    import deepseek.distributed as dist
    with pytest.raises(NotImplementedError, match="offload_params=True"):
        dist.FullyShardedDataParallel(cases.build_model("mlp"),
                                      cpu_offload=CPUOffload(offload_params=True))
    with pytest.raises(TypeError, match="CPUOffload"):
        dist.FullyShardedDataParallel(cases.build_model("mlp"), cpu_offload=True)
