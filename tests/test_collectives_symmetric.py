"""Symmetric buffers (ProcessGroup.symmetric_empty): the zero-copy shared-memory
allreduce. Real processes; results checked bitwise against a rank-order reference and
against the ordinary (staged) allreduce of the same data."""
import os
import time

import numpy as np
import pytest

from deepseek import collectives as C
from deepseek.testing.multiprocess import spawn_ranks

from collectives_cases import DTYPES, OPS, check_equal, inputs, reference

pytestmark = pytest.mark.timeout(180)


def all_dtypes_ops(rank, world):
    pg = C.init_process_group()
    t = pg._backend
    big = 100003  # odd: uneven segments
    sizes = (5, 40000, big)  # 5: below DEEPSEEK_SHM_SYM_BYTES, the staged path
    taken = 0
    for case, dt in enumerate(DTYPES):
        buf = pg.symmetric_empty(big + 16, dt)
        assert buf.shape == (big + 16,) and buf.dtype == dt and not buf.any()
        for op in OPS:
            if op is C.ReduceOp.AVG and dt.kind in "iu":
                continue
            for n in sizes:
                for off in (0, 7):  # a piece of the buffer, the same place on every rank
                    parts = [inputs(case * 100 + n, r, n, dt) for r in range(world)]
                    x = buf[off:off + n]
                    x[...] = parts[rank]
                    before = t.sym_allreduces
                    pg.allreduce(x, op)
                    taken += t.sym_allreduces - before
                    what = f"{dt} {op.name} n={n} off={off}"
                    check_equal(x, reference(parts, op), what)
                    staged = parts[rank].copy()
                    pg.allreduce(staged, op)
                    assert staged.tobytes() == x.tobytes(), f"staged != symmetric: {what}"
    C.destroy_process_group()
    return taken


@pytest.mark.parametrize("world,native", [(2, True), (3, True), (4, True), (3, False)])
def test_symmetric_allreduce_every_dtype_and_op(world, native, shm_guard):
    env = {} if native else {"DEEPSEEK_NATIVE": "0"}
    res = spawn_ranks(all_dtypes_ops, world, timeout=170, env=env)
    # every (dtype, op) pair at the two sizes above the crossover, at two offsets
    pairs = sum(1 for dt in DTYPES for op in OPS
                if not (op is C.ReduceOp.AVG and dt.kind in "iu"))
    assert res == [pairs * 2 * 2] * world, res


def async_and_reuse(rank, world):
    pg = C.init_process_group()
    x = pg.symmetric_empty((256, 300), np.float32)
    for it in range(20):  # reused over and over, blocking and async
        x[...] = rank + it
        if it % 2:
            pg.allreduce(x, async_op=True).wait(30)
        else:
            pg.allreduce(x)
        assert (x == sum(r + it for r in range(world))).all(), it
    C.destroy_process_group()
    return pg._backend.sym_allreduces if hasattr(pg._backend, "sym_allreduces") else -1


def test_symmetric_buffer_reused_blocking_and_async(shm_guard):
    assert spawn_ranks(async_and_reuse, 3, timeout=60) == [20] * 3


def plain_where_no_shared_memory(rank, world):
    pg = C.init_process_group()
    x = pg.symmetric_empty(50000, np.float64)
    x[...] = rank + 1
    pg.allreduce(x)
    assert (x == sum(range(1, world + 1))).all()
    return pg.transport


def test_symmetric_empty_is_plain_memory_over_zmq_and_alone():
    assert spawn_ranks(plain_where_no_shared_memory, 2, timeout=60,
                       env={"DEEPSEEK_CPU_TRANSPORT": "zmq"}) == ["zmq"] * 2
    assert spawn_ranks(plain_where_no_shared_memory, 1, timeout=60) == ["self"]


def size_mismatch(rank, world):
    pg = C.init_process_group()
    try:
        pg.symmetric_empty(1000 + rank, np.float32)
    except C.CollectiveMismatchError as e:
        assert "different sizes" in str(e), e
        return "mismatch"
    return "no error"


def test_symmetric_size_mismatch_raises_on_every_rank(shm_guard):
    assert spawn_ranks(size_mismatch, 2, timeout=60) == ["mismatch"] * 2


def peer_dies_in_symmetric_allreduce(rank, world):
    pg = C.init_process_group(timeout=60)
    x = pg.symmetric_empty(1 << 18, np.float32)
    pg.allreduce(x)
    if rank == world - 1:
        os._exit(7)
    t0 = time.monotonic()
    try:
        pg.allreduce(x)
    except C.CollectiveError as e:
        return type(e).__name__, time.monotonic() - t0
    return "no error", time.monotonic() - t0


def test_peer_dies_in_symmetric_allreduce(shm_guard):
    res = spawn_ranks(peer_dies_in_symmetric_allreduce, 3, timeout=60, return_errors=True)
    assert res[2].exitcode == 7
    for r in (0, 1):
        name, elapsed = res[r]
        assert name in ("PeerFailureError", "CollectiveTimeoutError"), res[r]
        assert elapsed < 10, res[r]


def gather_and_scatter(rank, world):
    pg = C.init_process_group()
    t = pg._backend
    per = 30001
    for case, dt in enumerate(DTYPES):
        parts = [inputs(case, r, per * world, dt) for r in range(world)]
        x = pg.symmetric_empty(per * world, dt)
        x[...] = parts[rank]
        out = np.empty(per * world * world, dt)
        pg.allgather(out, x)
        check_equal(out, np.concatenate(parts), f"allgather {dt}")
        for op in OPS:
            if op is C.ReduceOp.AVG and dt.kind in "iu":
                continue
            rs = np.empty(per, dt)
            pg.reduce_scatter(rs, x, op)
            want = reference([p[rank * per:(rank + 1) * per] for p in parts], op)
            check_equal(rs, want, f"reduce_scatter {dt} {op.name}")
        check_equal(x, parts[rank], f"input of {dt} left as it was")
    C.destroy_process_group()
    return t.sym_ops


@pytest.mark.parametrize("world", [2, 3])
def test_symmetric_allgather_and_reduce_scatter(world, shm_guard):
    pairs = sum(1 for dt in DTYPES for op in OPS
                if not (op is C.ReduceOp.AVG and dt.kind in "iu"))
    assert spawn_ranks(gather_and_scatter, world, timeout=120) == \
        [pairs + len(DTYPES)] * world


def pieces_differ(rank, world, native):
    pg = C.init_process_group()
    buf = pg.symmetric_empty(1 << 16, np.float32)
    x = buf[rank * 8: rank * 8 + 20000]  # a different place on each rank
    x[...] = 1
    try:
        pg.allreduce(x)
    except C.CollectiveMismatchError as e:
        assert "different pieces of symmetric buffers" in str(e), e
        assert "byte offset 0" in str(e) and "byte offset 32" in str(e), e
        return "mismatch", bool((x == 1).all())  # nothing was reduced into it
    return "no error", None


@pytest.mark.parametrize("native", [True, False])
def test_symmetric_pieces_at_different_places_raise_not_corrupt(native, shm_guard):
    env = {} if native else {"DEEPSEEK_NATIVE": "0"}
    res = spawn_ranks(pieces_differ, 2, timeout=60, env=env, args=(native,))
    assert res == [("mismatch", True)] * 2, res


def in_subgroups(rank, world):
    pg = C.init_process_group()
    sub = C.new_group([r for r in range(world) if r % 2 == rank % 2])  # evens and odds
    x = sub.symmetric_empty(50000, np.float64)
    x[...] = rank
    sub.allreduce(x)
    want = sum(r for r in range(world) if r % 2 == rank % 2)
    assert (x == want).all(), (x[:3], want)
    y = pg.symmetric_empty(50000, np.float64)  # the world group's own allocation
    y[...] = 1
    pg.allreduce(y)
    assert (y == world).all()
    return sub._backend.sym_allreduces, pg._backend.sym_allreduces


def test_symmetric_buffers_of_subgroups(shm_guard):
    assert spawn_ranks(in_subgroups, 4, timeout=60) == [(1, 1)] * 4
