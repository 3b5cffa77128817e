"""send/recv over shared memory: every path of collectives/backends/shm_p2p.py (one
chunk, several chunks, single copy through process_vm_readv; the C kernels of
native/src/dsn_p2p.c and the Python protocol, alone and mixed on one channel), tags
out of order, size mismatches, timeouts, aborts and dead peers on either side.

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


def _native_p2p():
    """The C send, when the native kernels are built and in use (not DEEPSEEK_NATIVE=0)."""
    from deepseek import native

    try:
        from deepseek import _native
    except ImportError:
        return None
    return getattr(_native, "p2p_send", None) if native.available() else None


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
    out = (t.p2p_cma, t.p2p_single_copy, t.p2p_send_kernel is not None)
    pg.barrier()
    C.destroy_process_group()
    return out


@pytest.mark.parametrize("cma", ["auto", "off", "default", "python"])
def test_every_size_and_path(cma, shm_guard):
    env = {"DEEPSEEK_SHM_P2P_BYTES": str(P)} if cma == "default" else \
        {**SLOT_ENV, "DEEPSEEK_SHM_CMA": cma}
    if cma == "python":  # the fallback: no C kernels
        env = {**SLOT_ENV, "DEEPSEEK_SHM_CMA": "off", "DEEPSEEK_NATIVE": "0"}
    res = spawn_ranks(_pingpong_rank, 2, timeout=100, env=env)
    usable = [r[0] for r in res]
    if cma == "python":
        assert [r[2] for r in res] == [False, False], res
        return
    if _native_p2p() is not None:
        assert [r[2] for r in res] == [True, True], res
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


def _stuck_rank(rank, world, mode, direction="send"):
    from deepseek import collectives as C
    from deepseek.collectives.errors import CollectiveTimeoutError, PeerFailureError

    pg = C.init_process_group()
    pg.barrier()
    if rank == 1:  # never receives (nor sends)
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
        if direction == "send":
            pg.send(np.ones(8 * P, np.uint8), 1, timeout=1.5)
        else:
            pg.recv(np.ones(8, np.uint8), 1, timeout=1.5)
    except (CollectiveTimeoutError, PeerFailureError) as e:
        return type(e).__name__, str(e), time.perf_counter() - t0, pg._p2p_send_k
    raise AssertionError(f"a {direction} without its peer returned")


# a blocked send (8 slots: it waits for acks) or recv, through the single-copy path
# (cma auto), the C kernels, or the Python protocol (DEEPSEEK_NATIVE=0)
BLOCKED = [("send", {"DEEPSEEK_SHM_CMA": "auto"}), ("send", {"DEEPSEEK_SHM_CMA": "off"}),
           ("send", {"DEEPSEEK_SHM_CMA": "off", "DEEPSEEK_NATIVE": "0"}),
           ("recv", {"DEEPSEEK_NATIVE": "1"}), ("recv", {"DEEPSEEK_NATIVE": "0"})]


@pytest.mark.parametrize("direction,env", BLOCKED,
                         ids=["send-cma", "send-c", "send-py", "recv-c", "recv-py"])
@pytest.mark.parametrize("mode", ["timeout", "abort", "die"])
def test_blocked_op_fails_named(direction, env, mode, shm_guard):
    res = spawn_ranks(_stuck_rank, 2, timeout=60, args=(mode, direction),
                      return_errors=True, env={**SLOT_ENV, **env})
    name, msg, took, kernel = res[0]
    assert kernel is None  # the failure broke the group: later calls take the checks
    assert f"{direction} (seq 1)" in msg, msg
    if mode == "timeout":
        assert name == "CollectiveTimeoutError" and 1.4 < took < 10, (msg, took)
        assert "waited for peers [1]" in msg, msg
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


def _try_send_rank(rank, world):
    from deepseek import collectives as C

    pg = C.init_process_group()
    if rank == 0:
        pg.barrier()  # the receiver is not receiving yet
        sent = [pg.try_send(_pattern(8, i, np.uint8), 1, tag=3) for i in range(3)]
        # refused, nothing done: larger than a slot, to itself, a bad rank
        refused = [pg.try_send(np.zeros(P + 1, np.uint8), 1, tag=3),
                   pg.try_send(np.zeros(8, np.uint8), 0, tag=3),
                   pg.try_send(np.zeros(8, np.uint8), 5, tag=3)]
        w = pg.send(_pattern(8, 2, np.uint8), 1, tag=3, async_op=True)  # the third
        blocked_behind = pg.try_send(_pattern(8, 3, np.uint8), 1, tag=3)
        pg.barrier()
        w.wait(30)
        if not blocked_behind:
            pg.send(_pattern(8, 3, np.uint8), 1, tag=3)
        pg.barrier()
        return sent, refused, blocked_behind
    pg.barrier()
    pg.barrier()
    for i in range(4):
        got = np.empty(8, np.uint8)
        pg.recv(got, 0, tag=3)
        assert np.array_equal(got, _pattern(8, i, np.uint8)), i
    pg.barrier()
    return None


def test_try_send_only_when_its_slot_is_free(shm_guard):
    """try_send sends a one-slot message when its slot is free (two slots per
    channel), refuses (touching nothing) otherwise and behind a queued async send,
    and keeps the channel's order."""
    if _native_p2p() is None:
        pytest.skip("try_send needs the C kernels")
    sent, refused, behind = spawn_ranks(_try_send_rank, 2, timeout=60, env=SLOT_ENV)[0]
    assert sent == [True, True, False] and refused == [False, False, False]
    assert behind is False  # the queued third message still waits for a slot


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


# ----------------------------------------------------------------- the C kernels
def _c_only_rank(rank, world):
    """Every eager size through the C kernels alone (the Python protocol is made to
    raise), blocking and async, waits that outlast the first call's budget on both
    sides (resumed), then the kernels and the Python protocol mixed on one channel."""
    from deepseek import collectives as C

    pg = C.init_process_group()
    t = pg._backend
    assert t.p2p_send_kernel is not None and pg._p2p_send_k is not None
    peer = 1 - rank

    def refuse(*a):
        raise AssertionError("the Python protocol ran")
    t._send_py, t._recv_py = refuse, refuse
    for nbytes in [0, 1, 8, 1000, P - 1, P, P + 1, 2 * P + 1, 5 * P + 3]:
        mine, got = _pattern(nbytes, rank, np.uint8), np.full(nbytes, 7, np.uint8)
        for async_op in (False, True):
            if rank == 0:
                w = pg.send(mine, peer, tag=nbytes, async_op=async_op)
                w and w.wait(30)
                pg.recv(got, peer, tag=nbytes)
            else:
                w = pg.recv(got, peer, tag=nbytes, async_op=async_op)
                w and w.wait(30)
                pg.send(mine, peer, tag=nbytes)
            assert np.array_equal(got, _pattern(nbytes, peer, np.uint8)), nbytes
    # a 2-d float array, and waits longer than the first budget (20 ms): the receiver
    # comes late (the sender resumes with slots full), then the sender does
    a = _pattern(6 * P // 8, rank, np.float64).reshape(6, -1)
    b = np.zeros_like(a)
    for late in (1, 0):
        if rank == late:
            time.sleep(0.3)
        if rank == 0:
            pg.send(a, peer, tag=5)
        else:
            pg.recv(b, peer, tag=5)
            assert np.array_equal(b, _pattern(6 * P // 8, peer, np.float64).reshape(6, -1))
    # mixed: tag 2 is asked for first, so the kernel hands tag 1 back (nothing
    # consumed) and the Python protocol stashes it; with the stash non-empty, receives
    # go to Python; afterwards the kernels again
    del t._send_py, t._recv_py
    if rank == 0:
        for tag, n in ((1, 3 * P), (2, 8), (3, 8)):
            pg.send(_pattern(n, tag, np.uint8), 1, tag=tag)
    else:
        b1, b2, b3 = np.empty(3 * P, np.uint8), np.empty(8, np.uint8), np.empty(8, np.uint8)
        pg.recv(b2, 0, tag=2)
        assert t._stash
        pg.recv(b1, 0, tag=1)
        pg.recv(b3, 0, tag=3)
        assert not t._stash
        for buf, tag in ((b1, 1), (b2, 2), (b3, 3)):
            assert np.array_equal(buf, _pattern(buf.size, tag, np.uint8)), tag
    t._send_py, t._recv_py = refuse, refuse
    x = np.arange(4, dtype=np.int32)
    if rank == 0:
        pg.send(x, 1, tag=0)
    else:
        y = np.zeros(4, np.int32)
        pg.recv(y, 0, tag=0)
        assert np.array_equal(x, y)
    del t._send_py, t._recv_py
    pg.barrier()
    return pg._p2p_seq


def test_kernels_alone_resumed_and_mixed(shm_guard):
    if _native_p2p() is None:
        pytest.skip("deepseek._native is not built")
    res = spawn_ranks(_c_only_rank, 2, timeout=100,
                      env={**SLOT_ENV, "DEEPSEEK_SHM_CMA": "off"})
    assert res[0] == res[1] == 9 * 4 + 2 + 3 + 1, res  # every op counted once


def _segment(n, P_):
    """A segment laid out like the transport's (ctrl blocks, channels, slots) in this
    process, and one kernel state array per rank over it."""
    from deepseek.collectives.backends import shm_p2p as S

    ctrl, chan = n * 1024, 4096
    seg = np.zeros(ctrl + chan + n * n * 2 * (64 + P_), np.uint8)
    states = []
    for me in range(n):
        g = np.zeros(S._G_WORDS, np.int64)
        g[S._G_BASE], g[S._G_N], g[S._G_ME] = seg.ctypes.data, n, me
        g[S._G_CHAN], g[S._G_SLOTS], g[S._G_P] = ctrl, ctrl + chan, P_
        g[S._G_SPIN_MAX] = g[S._G_SPIN_CUR] = 1000
        g[S._G_CMA] = S._NO_CMA
        states.append(g)
    return seg, states


def test_kernel_direct_calls():
    """The kernels on a segment in this process: argument checks (bad calls raise,
    ineligible ones are refused with -1 and touch nothing), the two-slot window
    (a third message waits: pending, then resumes), another tag handed back, several
    chunks, and an abort word seen by a waiting call."""
    from deepseek.collectives.backends import shm_p2p as S

    if _native_p2p() is None:
        pytest.skip("deepseek._native is not built")
    from deepseek import _native as ext

    seg, (g0, g1) = _segment(2, 16)
    a0, a1 = g0.ctypes.data, g1.ctypes.data
    with pytest.raises(TypeError, match=r"p2p_send\(state, x, peer, tag, budget_ns\)"):
        ext.p2p_send(a0, np.zeros(1, np.uint8), 1, 0)
    with pytest.raises(ValueError, match="null state"):
        ext.p2p_recv(0, np.zeros(1, np.uint8), 1, 0, 0)
    x = np.arange(8, dtype=np.uint8)
    ro = x.copy()
    ro.flags.writeable = False
    for call in (lambda: ext.p2p_send(a0, x, 0, 0, 0),            # to itself
                 lambda: ext.p2p_send(a0, x, 2, 0, 0),            # no such rank
                 lambda: ext.p2p_send(a0, x, True, 0, 0),         # not an int
                 lambda: ext.p2p_send(a0, x, 1, -1, 0),           # bad tags
                 lambda: ext.p2p_send(a0, x, 1, 2 ** 31, 0),
                 lambda: ext.p2p_send(a0, x, 1, 1.0, 0),
                 lambda: ext.p2p_send(a0, x[::2], 1, 0, 0),       # strided
                 lambda: ext.p2p_send(a0, np.array([None]), 1, 0, 0),  # objects
                 lambda: ext.p2p_send(a0, [1, 2], 1, 0, 0),       # no buffer
                 lambda: ext.p2p_recv(a1, ro, 0, 0, 0)):          # read-only
        assert call() == S.P2P_NOT_ELIGIBLE
    assert not seg.any()  # nothing touched
    # two messages fit the window, the third must wait for an ack
    assert ext.p2p_send(a0, x, 1, 4, 0) == 0
    assert ext.p2p_send(a0, x + 1, 1, 4, 0) == 0
    assert ext.p2p_send(a0, x + 2, 1, 4, 1000) == S.P2P_PENDING
    y = np.zeros(8, np.uint8)
    assert ext.p2p_recv(a1, y, 0, 5, 0) == S.P2P_OTHER  # tag 4 waits: not consumed
    assert ext.p2p_recv(a1, np.zeros(9, np.uint8), 0, 4, 0) == S.P2P_OTHER  # size
    for k in range(2):
        assert ext.p2p_recv(a1, y, 0, 4, 0) == 0 and np.array_equal(y, x + k)
    assert ext.p2p_recv(a1, y, 0, 4, 1000) == S.P2P_PENDING  # nothing sent yet
    # the wait's phases: spinning that yields the core from the start, or never, then
    # the futex sleep until the budget is spent
    for yield_ns in (0, -1):
        g1[S._G_YIELD_NS] = yield_ns
        t0 = time.perf_counter()
        assert ext.p2p_recv(a1, y, 0, 4, 5_000_000) == S.P2P_PENDING
        assert time.perf_counter() - t0 >= 0.004
    g1[S._G_YIELD_NS] = S.YIELD_AFTER_NS
    assert ext.p2p_send(a0, x + 2, 1, 4, 0) == 0  # room again
    assert ext.p2p_recv(a1, y, 0, 4, 0) == 0 and np.array_equal(y, x + 2)
    # 100 bytes in 16-byte chunks: pending after two, resumed from the state words
    big, out = _pattern(100, 3, np.uint8), np.zeros(100, np.uint8)
    assert ext.p2p_send(a0, big, 1, 9, 1000) == S.P2P_PENDING
    assert g0[S._G_SEND_DONE] == 32
    for _ in range(10):
        sr = ext.p2p_send(a0, big, 1, 9, 1000)
        rr = ext.p2p_recv(a1, out, 0, 9, 1000)
        if sr == rr == 0:
            break
    assert sr == rr == 0 and np.array_equal(out, big)
    assert g0[S._G_SEND_DONE] == g1[S._G_RECV_DONE] == 0
    # a waiting call sees a peer's abort word (ctrl block word 2)
    seg.view(np.int32)[1024 // 4 + 2] = 1
    assert ext.p2p_recv(a0, y, 1, 0, 10_000_000) == S.P2P_ABORT
