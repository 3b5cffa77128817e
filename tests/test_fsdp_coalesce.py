"""FSDP(FULL_SHARD, min_unit_numel=...): consecutive auto-wrapped units coalesced into
groups that share one set of flat parameters (one all-gather and one reduce-scatter
per group). Same training result as DDP and one process; fewer, larger handles; the
peak of gathered parameters is bounded by the groups actually gathered."""
import numpy as np
import pytest

import zero_cases as cases
from deepseek.testing.multiprocess import spawn_ranks

# an MLP block holds 420 parameters, a TinyLM block 430: 500 pairs them, 10**6 puts
# every block of the model into one group
CONFIGS = [{"kind": "mlp", "min_unit_numel": 500},
           {"kind": "lm", "min_unit_numel": 500, "opt": "sgd"},
           {"kind": "mlp", "min_unit_numel": 10**6, "accum": 2},
           {"kind": "lm", "min_unit_numel": 500, "clip": 0.05}]


def _strip(cfg):
    return {k: v for k, v in cfg.items() if k != "min_unit_numel"}


@pytest.mark.parametrize("world", [2, 3])
def test_coalesced_units_train_like_ddp_and_one_process(world, shm_guard):
    got = spawn_ranks(cases.train_many, world, timeout=240, args=(3, CONFIGS))
    ddp = spawn_ranks(cases.train_many, world, timeout=240,
                      args=(0, [_strip(c) for c in CONFIGS]))
    for i, cfg in enumerate(CONFIGS):
        single = cases.train(0, 1, "single", **_strip(cfg))
        for r in range(world):
            for ref, what in ((ddp[r][i], "DDP"), (single, "one process")):
                assert set(got[r][i][0]) == set(ref[0])
                for name in ref[0]:
                    np.testing.assert_allclose(got[r][i][0][name], ref[0][name],
                                               rtol=1e-5, atol=1e-6,
                                               err_msg=f"{cfg} rank {r} vs {what}: {name}")
            if "clip" in cfg:
                np.testing.assert_allclose(got[r][i][1], single[1], rtol=1e-5)


def test_groups_share_handles_and_bound_the_gathered_peak(shm_guard):
    """4 blocks of 420 parameters: min 500 makes 2 groups of 2 units, 10**6 one group
    of 4, 0 four units of one; the root keeps its own handle."""
    for min_numel, want in ((0, [(420, 1)] * 4), (500, [(840, 2)] * 2),
                            (10**6, [(1680, 4)])):
        res = spawn_ranks(cases.coalesce_structure, 2, timeout=120, args=(min_numel,))
        for groups, root_bytes, largest, peak, nflat in res:
            assert sorted(groups) == want, (min_numel, groups)
            assert nflat == len(groups) + 1  # one flat parameter per handle, once
            # the root's, the current group's and the prefetched one's at most
            assert largest <= peak <= root_bytes + 2 * largest, (min_numel, peak)


def test_checkpoints_move_between_coalesced_and_plain_units(tmp_path, shm_guard):
    """Saved by 3 coalesced ranks, loaded by 2 ranks with a unit per block (and the
    other way round): the pieces are the original parameters', whatever the groups."""
    for i, (save_kw, load_kw) in enumerate((({"min_unit_numel": 500}, {}),
                                            ({}, {"min_unit_numel": 10**6}))):
        path = str(tmp_path / f"ck{i}")
        ref = spawn_ranks(cases.ckpt_save, 3, timeout=120, args=(3, path),
                          kwargs=save_kw)[0]
        for got in spawn_ranks(cases.ckpt_load, 2, timeout=120, args=(3, path),
                               kwargs=load_kw):
            assert set(got) == set(ref)
            for k in ref:
                np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
