"""send/recv over shared memory: every path of collectives/backends/shm_p2p.py (one
chunk, several chunks, single copy through process_vm_readv), tags out of order,
size mismatches, timeouts, aborts and dead peers during a single-copy send.

Real processes (spawn_ranks) with hard deadlines; a small p2p slot (64 KiB) puts the
chunk boundaries at cheap sizes.
"""
import os
import time

import numpy as np
import pytest

from deepseek.testing.multiprocess import spawn_ranks

pytestmark = pytest.mark.timeout(120)

P = 64 << 10
SLOT_ENV = {"DEEPSEEK_SHM_P2P_BYTES": str(P),
            "DEEPSEEK_SHM_P2P_CMA_BYTES": "1"}  # single copy above the eager limit
# around every boundary: empty, tiny, one slot, two slots (the eager limit), beyond
SIZES = [0, 1, 8, 1000, P - 1, P, P + 1, 2 * P, 2 * P + 1, 5 * P + 3]


def _pattern(n, seed, dtype):
    return (np.arange(n, dtype=np.int64) * 7 + seed * 131).astype(dtype)


def _pingpong_rank(rank, world):
    from deepseek import collectives as C

    pg = C.init_process_group()
    peer = 1 - rank
    for dtype in (np.uint8, np.float32, np.int64):
        for nbytes in SIZES:
            n = nbytes // np.dtype(dtype).itemsize
            mine, want = _pattern(n, rank, dtype), _pattern(n, peer, dtype)
            got = np.full(n, 99, dtype)
            if rank == 0:
                pg.send(mine, peer, tag=3)
                pg.recv(got, peer, tag=3)
            else:
                pg.recv(got, peer, tag=3)
                pg.send(mine, peer, tag=3)
            assert np.array_equal(got, want), (dtype, nbytes)
    # a 2-d, non-uint8 array both ways at once (async, the single-copy size)
    a = _pattern(3 * P, rank, np.float64).reshape(3, -1)
    b = np.zeros_like(a)
    ws = pg.send(a, peer, tag=9, async_op=True)
    wr = pg.recv(b, peer, tag=9, async_op=True)
    ws.wait(30)
    wr.wait(30)
    assert np.array_equal(b, _pattern(3 * P, peer, np.float64).reshape(3, -1))
    t = pg._backend
    out = (t.p2p_cma, t.p2p_single_copy)
    pg.barrier()
    C.destroy_process_group()
    return out


@pytest.mark.parametrize("cma", ["auto", "off", "default"])
def test_every_size_and_path(cma, shm_guard):
    env = {"DEEPSEEK_SHM_P2P_BYTES": str(P)} if cma == "default" else \
        {**SLOT_ENV, "DEEPSEEK_SHM_CMA": cma}
    res = spawn_ranks(_pingpong_rank, 2, timeout=100, env=env)
    usable = [r[0] for r in res]
    if cma == "default":  # single copy is opt-in (DEEPSEEK_SHM_P2P_CMA_BYTES)
        assert all(r[1] == 0 for r in res), res
        return
    if cma == "off":
        assert usable == [False, False] and all(r[1] == 0 for r in res)
        return
    if not all(usable):
        pytest.skip("this kernel does not let the ranks read each other's memory")
    # every message above the eager limit (2 slots), plus the 2-d exchange
    above = sum(n // it * it > 2 * P for it in (1, 4, 8) for n in SIZES) + 1
    assert all(r[1] == above for r in res), res


def _tags_rank(rank, world):
    from deepseek import collectives as C
    from deepseek.collectives.errors import CollectiveArgumentError

    pg = C.init_process_group()
    big = 4 * P + 5
    if rank == 0:
        pg.send(_pattern(big, 1, np.uint8), 1, tag=1)       # single copy, stashed
        pg.send(_pattern(10, 2, np.uint8), 1, tag=2)
        pg.send(_pattern(3 * P, 3, np.uint8), 1, tag=3)     # eager, several chunks
        pg.send(_pattern(big, 4, np.uint8), 1, tag=4)       # for a too-small buffer
        pg.barrier()
        return None
    b2, b3, b1 = np.empty(10, np.uint8), np.empty(3 * P, np.uint8), np.empty(big, np.uint8)
    pg.recv(b2, 0, tag=2)
    pg.recv(b3, 0, tag=3)
    pg.recv(b1, 0, tag=1)
    for buf, seed in ((b1, 1), (b2, 2), (b3, 3)):
        assert np.array_equal(buf, _pattern(buf.size, seed, np.uint8)), seed
    try:
        pg.recv(np.empty(big - 1, np.uint8), 0, tag=4)
    except CollectiveArgumentError as e:
        msg = str(e)
    else:
        raise AssertionError("a too-small receive buffer was accepted")
    pg.barrier()
    return msg


def test_tags_out_of_order_and_size_mismatch(shm_guard):
    res = spawn_ranks(_tags_rank, 2, timeout=60, env=SLOT_ENV)
    assert f"has {4 * P + 5} bytes, the receive buffer {4 * P + 4}" in res[1]


def _stuck_rank(rank, world, mode):
    from deepseek import collectives as C
    from deepseek.collectives.errors import CollectiveTimeoutError, PeerFailureError

    pg = C.init_process_group()
    pg.barrier()
    if rank == 1:  # never receives
        if mode == "abort":
            time.sleep(0.5)
            pg.abort("rank 1 gives up on purpose")
        elif mode == "die":
            time.sleep(0.5)
            os._exit(0)
        time.sleep(4)
        return None
    t0 = time.perf_counter()
    try:
        pg.send(np.ones(8 * P, np.uint8), 1, timeout=1.5)
    except (CollectiveTimeoutError, PeerFailureError) as e:
        return type(e).__name__, str(e), time.perf_counter() - t0
    raise AssertionError("a send nobody received returned")


@pytest.mark.parametrize("cma", ["auto", "off"])
@pytest.mark.parametrize("mode", ["timeout", "abort", "die"])
def test_blocked_send_fails_named(mode, cma, shm_guard):
    res = spawn_ranks(_stuck_rank, 2, timeout=60, args=(mode,), return_errors=True,
                      env={**SLOT_ENV, "DEEPSEEK_SHM_CMA": cma})
    name, msg, took = res[0]
    assert "send (seq 1)" in msg, msg
    if mode == "timeout":
        assert name == "CollectiveTimeoutError" and 1.4 < took < 10, (msg, took)
    elif mode == "abort":
        assert name == "PeerFailureError" and "gives up on purpose" in msg, msg
        assert took < 1.4, took
    else:
        assert name == "PeerFailureError" and "died" in msg, msg


def _async_order_rank(rank, world):
    from deepseek import collectives as C

    pg = C.init_process_group()
    sizes = [8, 8, 8, 3 * P, 8, 100, 5 * P, 8, 8, 8]  # inline, queued, single copy
    if rank == 0:
        pg.barrier()  # the receiver is not receiving yet: the slots fill up
        works = [pg.send(_pattern(n, i, np.uint8), 1, tag=7, async_op=True)
                 for i, n in enumerate(sizes)]
        inline = [w.is_completed() for w in works]
        pg.barrier()
        for w in works:
            w.wait(30)
        pg.barrier()
        return inline
    pg.barrier()
    pg.barrier()
    for i, n in enumerate(sizes):
        got = np.empty(n, np.uint8)
        pg.recv(got, 0, tag=7)
        assert np.array_equal(got, _pattern(n, i, np.uint8)), (i, n)
    pg.barrier()
    return None


def test_async_sends_keep_their_order(shm_guard):
    """The first small async sends complete on the calling thread (their slots are
    free); once one has to wait, everything after it queues behind it, in order."""
    inline = spawn_ranks(_async_order_rank, 2, timeout=60, env=SLOT_ENV)[0]
    assert inline[:2] == [True, True] and not any(inline[2:]), inline


def _timeline_rank(rank, world):
    from deepseek import collectives as C
    from deepseek.collectives import trace

    pg = C.init_process_group()
    events = []
    trace.add_sink(events.append)
    try:
        if rank == 0:
            pg.send(np.ones(8, np.uint8), 1, tag=2, async_op=True).wait(10)
            pg.send(np.ones(3 * P, np.uint8), 1, tag=2)
        else:
            pg.recv(np.empty(8, np.uint8), 0, tag=2)
            pg.recv(np.empty(3 * P, np.uint8), 0, tag=2, async_op=True).wait(10)
    finally:
        trace.remove_sink(events.append)
    pg.barrier()
    return [(e["op"], e["bytes"], e["peer"], e["tag"], e["t1"] >= e["t0"] >= e["issued"])
            for e in events if trace.category(e) == "p2p"]


def test_trace_hook_sees_inline_and_queued_p2p(shm_guard):
    res = spawn_ranks(_timeline_rank, 2, timeout=60, env=SLOT_ENV)
    assert res[0] == [("send", 8, 1, 2, True), ("send", 3 * P, 1, 2, True)], res[0]
    assert res[1] == [("recv", 8, 0, 2, True), ("recv", 3 * P, 0, 2, True)], res[1]
