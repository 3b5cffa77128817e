"""Mismatched collectives on shared memory are caught in the normal mode (issue 11).

Ranks that call different collectives (another op, dtype, size, root or reduce op, or
a skipped one) must not read each other's data: every shm collective, in C and in
Python, compares a signature with its peers' (collectives/backends/shm.py,
"Signatures"). Each case below runs real processes with and without the native
kernels and checks that every rank raises CollectiveMismatchError -- in the mismatched
call itself where its part waits for a peer, else at its next call on the group --
well before the group's timeout, with the fields of the message, and that the group
is broken afterwards.
"""
import time

import numpy as np
import pytest

from deepseek.testing.multiprocess import spawn_ranks

pytestmark = pytest.mark.timeout(120)

F32 = np.float32


def _mismatched_calls(name, rank, pg, sym):
    """The calls of case ``name`` on ``rank``: a list of thunks, run in order (``sym``:
    an array in symmetric memory)."""
    from deepseek import collectives as C

    one = lambda n=4, dt=F32: np.ones(n, dt)  # noqa: E731
    ar = lambda x, op=C.ReduceOp.SUM: lambda: pg.allreduce(x, op)  # noqa: E731
    n = pg.size
    cases = {
        "barrier_vs_allreduce": [[pg.barrier], [ar(one())]],
        # the broadcast's non-root waits for the root, which is the other op's rank
        "allreduce_vs_broadcast": [[ar(one())], [lambda: pg.broadcast(one(), src=0)]],
        # a broadcast root waits for nobody: it finds out at its next call
        "allreduce_vs_broadcast_root": [[ar(one())], [lambda: pg.broadcast(one(), src=1)]],
        "float32_vs_float64": [[ar(one(4, F32))], [ar(one(4, np.float64))]],
        "4_vs_5_elements": [[ar(one(4))], [ar(one(5))]],
        "allgather_vs_reduce_scatter": [
            [lambda: pg.allgather(np.empty(4 * n, F32), one(4))],
            [lambda: pg.reduce_scatter(np.empty(4, F32), one(4 * n))]],
        # same bytes, only the dtype differs; int8 is not a dtype of the C kernel, so
        # rank 0 runs the Python protocol and rank 1 the C one
        "int8_vs_float32": [[ar(one(4, np.int8))], [ar(one(1, F32))]],
        # copies of the same bytes in C on both ranks, only the dtype differs
        "allgather_int32_vs_float32": [
            [lambda: pg.allgather(np.empty(4 * n, np.int32), one(4, np.int32))],
            [lambda: pg.allgather(np.empty(4 * n, F32), one(4, F32))]],
        "sum_vs_max": [[ar(one())], [ar(one(), C.ReduceOp.MAX)]],
        # both think they are the root: neither waits, both find out at the next call
        "broadcast_roots_differ": [[lambda: pg.broadcast(one(), src=0)],
                                   [lambda: pg.broadcast(one(), src=1)]],
        # an async op (on the group's worker thread, not the fast path) against a
        # blocking one
        "async_allreduce_vs_blocking_broadcast": [
            [lambda: pg.allreduce(one(), async_op=True).wait(30)],
            [lambda: pg.broadcast(one(), src=1)]],
        # rank 0 skips nothing but runs an empty allreduce, which needs no round:
        # the count of collectives in the signatures differs
        "empty_op_shifts_the_sequence": [[ar(one(0)), ar(one())], [ar(one()), ar(one())]],
        "reduce_vs_gather": [[lambda: pg.reduce(one(), dst=1)],
                             [lambda: pg.gather(one(), np.empty(4 * n, F32), dst=1)]],
        "scatter_vs_all_to_all": [
            [lambda: pg.scatter(np.empty(4, F32), one(4 * n), src=0)],
            [lambda: pg.all_to_all(np.empty(4 * n, F32), one(4 * n))]],
        # 64 KiB: the symmetric zero-copy allreduce on rank 0, the slots on rank 1
        "symmetric_vs_plain_allreduce": [[ar(sym)], [ar(one(1 << 14))]],
        # three ranks: the broadcast's non-root agrees with the root, the third rank
        # runs an allreduce
        "three_ranks_broadcast_vs_allreduce": [
            [lambda: pg.broadcast(one(), src=0)], [lambda: pg.broadcast(one(), src=0)],
            [ar(one())]],
    }
    return cases[name][rank]


def mismatch(rank, world, name):
    """Run a correct mix of collectives, then case ``name``'s calls, then a barrier;
    returns (error type, index of the call that raised, seconds, message, broken)."""
    from deepseek import collectives as C

    pg = C.init_process_group(timeout=30)
    sym = pg.symmetric_empty(1 << 14, F32)  # 64 KiB: the zero-copy allreduce's size
    sym[...] = 1
    correct_mix(pg)
    calls = _mismatched_calls(name, rank, pg, sym) + [pg.barrier]
    t0 = time.monotonic()
    for i, call in enumerate(calls):
        try:
            call()
        except C.CollectiveError as e:
            took = time.monotonic() - t0
            try:
                pg.barrier()
                broken = False
            except C.GroupBrokenError:
                broken = True
            return type(e).__name__, i, took, str(e), broken
    return "no error", len(calls), time.monotonic() - t0, "", False


def correct_mix(pg):
    """Matching collectives that take different paths on different ranks (async: the
    Python protocol; blocking: the C kernels; dtypes the kernel lacks; empty ops) and
    must still give the right results."""
    from deepseek import collectives as C

    n, me = pg.size, pg.rank
    x = np.full(4, me + 1, F32)
    if me % 2:
        pg.allreduce(x, async_op=True).wait(30)
    else:
        pg.allreduce(x)
    assert (x == n * (n + 1) / 2).all(), x
    x = np.full(3, me, np.int8)
    pg.allreduce(x)
    assert (x == sum(range(n))).all(), x
    pg.allreduce(np.ones(0, F32))
    out = np.empty(2 * n, np.int16)
    w = pg.allgather(out, np.full(2, me, np.int16), async_op=me == 0)
    if w is not None:
        w.wait(30)
    assert (out == np.repeat(np.arange(n), 2)).all(), out
    y = np.full(5, me, np.float64)
    if me == 1:
        pg.broadcast(y, src=n - 1, async_op=True).wait(30)
    else:
        pg.broadcast(y, src=n - 1)
    assert (y == n - 1).all(), y
    o = np.empty(2, F32)
    pg.reduce_scatter(o, np.ones(2 * n, F32), async_op=me == 0)
    pg.synchronize(30)
    assert (o == n).all(), o
    pg.barrier()


# name: (the call after which each rank raised, one entry a rank: None = any, in the op
# or at the barrier after it; what the message must show: every rank's op as the
# signatures say)
CASES = {
    "barrier_vs_allreduce": ([0, 0], ["op=barrier", "op=allreduce, reduce=SUM"]),
    "allreduce_vs_broadcast": ([0, 0], ["op=allreduce", "op=broadcast, root=0"]),
    "allreduce_vs_broadcast_root": ([0, 1], ["op=allreduce", "op=broadcast, root=1"]),
    "float32_vs_float64": ([0, 0], ["dtype=float32, nbytes=16", "dtype=float64, nbytes=32"]),
    "4_vs_5_elements": ([0, 0], ["nbytes=16", "nbytes=20"]),
    "allgather_vs_reduce_scatter": ([0, 0], ["op=allgather", "op=reduce_scatter"]),
    "int8_vs_float32": ([0, 0], ["dtype=int8, nbytes=4", "dtype=float32, nbytes=4"]),
    "allgather_int32_vs_float32": ([0, 0], ["dtype=int32, nbytes=16", "dtype=float32, nbytes=16"]),
    "sum_vs_max": ([0, 0], ["reduce=SUM", "reduce=MAX"]),
    "broadcast_roots_differ": ([1, 1], ["root=0", "root=1"]),
    "async_allreduce_vs_blocking_broadcast": ([0, 1], ["op=allreduce", "op=broadcast, root=1"]),
    "empty_op_shifts_the_sequence": ([1, 0], ["seq="]),
    "reduce_vs_gather": ([None, 0], ["op=reduce", "op=gather"]),
    "scatter_vs_all_to_all": ([1, 0], ["op=scatter", "op=all_to_all"]),
    "symmetric_vs_plain_allreduce": ([0, 0], ["op=allreduce (symmetric buffer)", "op=allreduce,"]),
    "three_ranks_broadcast_vs_allreduce": ([1, 1, 0], ["op=broadcast", "op=allreduce"]),
}


# native: the C kernels on every rank; numpy: the Python protocol on every rank; mixed:
# Python on rank 0, C on the others (the same protocol on the same words)
ENVS = {"native": {}, "numpy": {"DEEPSEEK_NATIVE": "0"},
        "mixed": lambda r: {"DEEPSEEK_NATIVE": "0"} if r == 0 else {}}


@pytest.mark.parametrize("mode", list(ENVS))
@pytest.mark.parametrize("name", list(CASES))
def test_mismatch_raises_on_every_rank(name, mode, shm_guard):
    where, expected = CASES[name]
    res = spawn_ranks(mismatch, len(where), timeout=90, env=ENVS[mode], args=(name,))
    for r, (kind, at, took, msg, broken) in enumerate(res):
        assert kind == "CollectiveMismatchError", (r, res)
        if where[r] is not None:
            assert at == where[r], (r, res)
        assert took < 10, (r, res)  # found, not timed out (the group waits 30 s)
        assert broken, (r, res)
        assert "ranks disagree on collective" in msg, (r, msg)
        for part in expected:
            assert part in msg, (r, part, msg)


def matched_then_mismatch_message(rank, world):
    """The normal mode's message has the debug mode's layout (ctx.mismatch_error)."""
    from deepseek import collectives as C

    pg = C.init_process_group(timeout=30)
    correct_mix(pg)
    try:
        pg.allreduce(np.ones(4 + rank, F32))
    except C.CollectiveMismatchError as e:
        return str(e)
    return "no error"


def test_message_lists_every_rank(shm_guard):
    msgs = spawn_ranks(matched_then_mismatch_message, 2, timeout=60)
    for r, msg in enumerate(msgs):
        assert msg.startswith("collectives: ranks disagree on collective seq "), msg
        assert f"(seen on rank {r})" in msg, msg
        assert "group rank 0 (global 0): dtype=float32, nbytes=16, op=allreduce" in msg
        assert "group rank 1 (global 1): dtype=float32, nbytes=20, op=allreduce" in msg


def many_mixed(rank, world, rounds):
    """Matching collectives on mixed paths, many times: races between a fast rank's
    next signature and a slow peer's check show up as false mismatches here (with 3
    ranks the large allgathers take the single-copy path; when it wrote its signature
    without claiming a round first, this failed within a few rounds)."""
    from deepseek import collectives as C

    pg = C.init_process_group(timeout=60)
    big = np.ones(40000, F32)  # several slots of 64 KiB
    for i in range(rounds):
        correct_mix(pg)
        x = big.copy()
        if (i + rank) % 3 == 0:
            pg.allreduce(x, async_op=True).wait(30)
        else:
            pg.allreduce(x)
        assert (x == world).all()
        pg.broadcast(x, src=i % world)
        out = np.empty(world * 40000, F32)
        pg.allgather(out, big)
    pg.barrier()
    return True


@pytest.mark.parametrize("mode", list(ENVS))
def test_matching_mixed_paths_never_mismatch(mode, shm_guard):
    extra = ENVS[mode]
    env = lambda r: dict(extra(r) if callable(extra) else extra,  # noqa: E731
                         DEEPSEEK_SHM_CHUNK="64KiB")
    assert spawn_ranks(many_mixed, 3, timeout=100, env=env, args=(30,)) == [True] * 3
