"""FSDP(FULL_SHARD, mixed_precision=MixedPrecision(param_dtype=bf16/fp16)): fp32 master
shards, parameters gathered in low precision, the forward under autocast. It trains
close to DDP under the same autocast (the difference: the gradients are reduced in
the low dtype, and autocast's weight casts are already made by the gather)."""
import numpy as np
import pytest

import zero_cases as cases
from deepseek.testing.multiprocess import spawn_ranks


def _run(dtype, kind, **kw):
    """(name, stage-3 value, DDP value, initial value) of every parameter, per rank."""
    ref = spawn_ranks(cases.train_amp, 2, timeout=120, args=(0, dtype),
                      kwargs={"kind": kind})
    got = spawn_ranks(cases.train_amp, 2, timeout=120, args=(3, dtype),
                      kwargs=dict(kind=kind, param_dtype=True, **kw))
    start = cases.full_params(cases.build_model(kind, seed=0), "single")
    for r in range(2):
        assert set(got[r][0]) == set(ref[r][0])
        assert got[r][1] == ref[r][1]   # (fp16: the same steps skipped, the same scale)
        for name, want in ref[r][0].items():
            assert got[r][0][name].dtype == np.float32, name   # the fp32 masters
            yield name, got[r][0][name], want, start[name]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_gathered_parameters_equal_ddp_with_autocast(dtype, shm_guard):
    """Gradients reduced in fp32, an MLP (every weight used by a GEMM): the gathered
    weights are autocast's weight casts already (the same rounding), so this trains
    as DDP under autocast does, to float32 rounding."""
    for name, got, want, start in _run(dtype, "mlp", reduce_dtype="float32"):
        moved = float(np.abs(want - start).max())
        assert moved > 1e-3, name
        assert float(np.abs(got - want).max()) <= 1e-4 + 1e-3 * moved, (dtype, name)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind,reduce_dtype", [("mlp", None), ("lm", "float32"),
                                               ("lm", None)])
def test_low_precision_runs_stay_close_to_ddp_with_autocast(kind, reduce_dtype,
                                                            shm_guard):
    """Where DDP under autocast keeps fp32 (bf16 gradients before the average: the
    default reduce dtype is param_dtype; LayerNorm's and the embedding lookup's fp32
    weights), this run's updates differ a little: AdamW (lr 1e-2, 6 steps) turns a
    small gradient difference into a step of up to lr. Each parameter's change
    stays within 10% of DDP's change in norm (measured: at most 4.8%, a TinyLM
    attention weight; 0.25% on the MLP)."""
    for name, got, want, start in _run("bfloat16", kind, reduce_dtype=reduce_dtype):
        step = np.linalg.norm(want - start)
        assert np.linalg.norm(got - want) <= 0.1 * step + 1e-4, (kind, name)


def test_param_dtype_needs_full_shard():
    import deepseek as ds
    import deepseek.distributed as dist
    from deepseek.distributed.fsdp import MixedPrecision
    with pytest.raises(NotImplementedError, match="FULL_SHARD"):
        dist.FullyShardedDataParallel(cases.build_model("mlp"),
                                      sharding_strategy="SHARD_GRAD_OP",
                                      mixed_precision=MixedPrecision(param_dtype=ds.bfloat16))
