"""In-process recovery with sharded optimizer state (ZeRO-1 and ZeRO-2): each commit
keeps a rank's shard and a copy of the previous rank's, so the shards of one dead rank
survive; the survivors sync the commit and reshard it to their world size.
(The launcher-driven chaos runs are in test_elastic_inprocess.py.)"""
import numpy as np
import pytest

import elastic_shard_cases as cases
from deepseek.testing.multiprocess import spawn_ranks


@pytest.fixture(scope="module")
def ref():
    return {opt: cases.reference(opt=opt) for opt in ("adamw", "sgd")}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world,stage,dead,opt", [
    (3, 1, [0], "adamw"),      # ZeRO-1, 3 -> 2: rank 0's shard from rank 1's copy
    (3, 2, [1], "adamw"),      # ZeRO-2 (FSDP SHARD_GRAD_OP), 3 -> 2
    (4, 2, [3], "sgd"),        # 4 -> 3, the last rank (its copy is on rank 0)
    (2, 1, [1], "sgd"),        # 2 -> 1
])
def test_survivors_reshard_the_commit_and_train_on(ref, world, stage, dead, opt, shm_guard):
    res = spawn_ranks(cases.recover, world, timeout=100, args=(stage, dead, 3, 3, opt))
    for r, got in enumerate(res):
        if r in dead:
            assert got is None
            continue
        assert set(got) == set(ref[opt])
        for k in got:
            np.testing.assert_allclose(got[k], ref[opt][k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.timeout(60)
def test_two_neighbours_dead_is_a_clear_error(shm_guard):
    from deepseek.testing.multiprocess import SpawnError
    with pytest.raises(SpawnError, match=r"no commit survived whole: the shards of old "
                                         r"ranks \[1\] are gone"):
        spawn_ranks(cases.recover, 3, timeout=50, args=(1, [1, 2], 2, 1, "sgd"))


def test_newest_whole_commit_after_a_death_inside_a_commit():
    """Ranks 0 and 2 finished commit 8, rank 1 (whose left neighbour died) did not:
    commit 8's shard of the dead old rank 3 never reached rank 0... so commit 7."""
    from deepseek.elastic.state import _newest_whole
    infos = np.array([[8, 4, 7, 4], [7, 4, 6, 4], [8, 4, 7, 4]])
    masks = np.zeros((3, 2, 4), np.uint8)
    # survivors are old ranks 0, 1, 2 (rank 3 died); own shard + the previous rank's
    masks[0, :, [0, 3]] = 1             # old rank 0 holds 0 and 3, at 8 and 7
    masks[1, :, [1, 0]] = 1
    masks[2, :, [2, 1]] = 1
    assert _newest_whole(infos, masks)[0] == 8
    masks[0, 0, 3] = 0                   # rank 3 died before its commit-8 copy arrived
    n, where, _ = _newest_whole(infos, masks)
    assert n == 7 and (1, 0) in where and (0, 1) in where
    masks[0, 1, 3] = 0
    assert _newest_whole(infos, masks) == (None, None, [3])
    # a replacement's first (plain) commit is no way back past a lost sharded one
    infos = np.array([[5, 3, 4, 3], [1, 0, -1, 0]])
    masks = np.zeros((2, 2, 3), np.uint8)
    masks[0, :, [0, 2]] = 1
    assert _newest_whole(infos, masks) == (None, None, [1])
