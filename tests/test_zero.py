"""ZeRO stages 1-3 against DDP and one process, on real processes (spawn_ranks).

Stage 1 is DDP + ZeroRedundancyOptimizer, stage 2 FSDP(SHARD_GRAD_OP), stage 3
FSDP(FULL_SHARD) with one unit per block. AMP (autocast + ShardedGradScaler) and
subgroups: tests/test_zero_amp.py.
"""
import numpy as np
import pytest

import zero_cases as cases
from deepseek.testing.multiprocess import spawn_ranks

CONFIGS = [{"kind": k, "opt": o} for k in ("mlp", "lm") for o in ("adamw", "sgd")]
EXTRA = [{"kind": "mlp", "accum": 2}, {"kind": "lm", "accum": 2, "opt": "sgd"},
         {"kind": "lm", "clip": 0.05}, {"kind": "mlp", "clip": 0.5, "opt": "sgd"}]


def _close(a, b, rtol=1e-5, atol=1e-6, what=""):
    assert set(a) == set(b), (sorted(a), sorted(b))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol,
                                   err_msg=f"{what}: {name}")


@pytest.fixture(scope="module")
def single():
    return {i: cases.train(0, 1, "single", **cfg) for i, cfg in enumerate(CONFIGS + EXTRA)}


def _run(stage, world, configs):
    return spawn_ranks(cases.train_many, world, timeout=240, args=(stage, configs))


@pytest.mark.parametrize("world", [2, 3])
def test_every_stage_equals_ddp_and_one_process(world, single, shm_guard):
    """10 steps, MLP and tied-embedding transformer, AdamW and SGD+momentum."""
    ddp = _run(0, world, CONFIGS)
    for stage in (1, 2, 3):
        got = _run(stage, world, CONFIGS)
        for r in range(world):
            for i, cfg in enumerate(CONFIGS):
                what = f"stage {stage}, world {world}, rank {r}, {cfg}"
                _close(got[r][i][0], ddp[r][i][0], what=what + " vs DDP")
                _close(got[r][i][0], single[i][0], what=what + " vs one process")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_accumulation_and_clipping(stage, single, shm_guard):
    """no_sync accumulation over 2 micro-batches, and a global-norm clip that is active
    (the norm is computed over every rank's shards)."""
    got = _run(stage, 2, EXTRA)
    off = len(CONFIGS)
    for r in range(2):
        for i, cfg in enumerate(EXTRA):
            ref_params, ref_norms = single[off + i]
            _close(got[r][i][0], ref_params, what=f"stage {stage} {cfg}")
            if "clip" in cfg:
                assert ref_norms[0] > cfg["clip"]  # the clip does something
                np.testing.assert_allclose(got[r][i][1], ref_norms, rtol=1e-5)


@pytest.mark.parametrize("world", [2, 4])
def test_memory_matches_zero_accounting(world, shm_guard):
    """Bytes per parameter of params + grads + Adam state, counted from the arrays each
    rank holds, within 10% of the ZeRO paper: 16, 4+4+8/N, 4+12/N, 16/N + one unit."""
    results = spawn_ranks(cases.memory, world, timeout=240)
    for r, res in enumerate(results):
        for stage, m in res.items():
            assert abs(m["measured"] - m["formula"]) <= 0.1 * m["formula"], (r, stage, m)
    # and the stages really save: each uses less than the one before
    m = results[0]
    assert m[0]["measured"] > m[1]["measured"] > m[2]["measured"] > m[3]["measured"], m


def test_zero1_consolidate_state_dict(shm_guard):
    res = spawn_ranks(cases.zero1_state_roundtrip, 3, timeout=120)
    full, ref = res[0][1], res[0][0]
    assert set(full) == set(ref)
    for k in ref:
        for n in ref[k]:
            np.testing.assert_allclose(full[k][n], ref[k][n], rtol=1e-6, atol=1e-7,
                                       err_msg=f"{k}.{n}")
    assert all(r["nonroot_raises"] for r in res[1:])


def test_memory_cap_demo_zero3_fits_where_ddp_does_not(shm_guard):
    """scripts/bench_zero.py --cap-mb: under a per-rank budget smaller than DDP's 16
    bytes per parameter, DDP stops at its first step and ZeRO-3 on 4 ranks trains."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "scripts"))
    import bench_zero
    hid, layers = 64, 8
    nparam = sum(p.numel() for p in cases.build_model("mlp", hid=hid, layers=layers)
                 .parameters())
    cap_mb = 8 * nparam / 2 ** 20          # half of DDP's 16 B/param
    rows = {stage: (outcome, peak, detail) for stage, outcome, peak, detail
            in bench_zero.cap_demo(cap_mb, hid, layers, steps=4)}
    assert rows[0][0] == "over budget" and rows[0][1] > cap_mb, rows[0]
    assert rows[3][0] == "trained" and rows[3][1] <= cap_mb, rows[3]
    losses = rows[3][2]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
