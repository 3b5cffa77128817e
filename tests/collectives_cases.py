"""Rank functions for the collectives tests (run inside spawn_ranks children).

Every rank builds every rank's input from a seed (``inputs(case, r)``), so the expected
result is computed with numpy from the full set of inputs without using the collectives
under test. Reductions are checked against a rank-order reference (float16/bfloat16
accumulated in float32), bitwise for the cpu backend.
"""
import os
import time

import numpy as np

from deepseek import collectives as C
from deepseek.collectives.reduce_ops import BFLOAT16

DTYPES = [np.dtype(np.float32), np.dtype(np.float16), BFLOAT16, np.dtype(np.float64),
          np.dtype(np.int32), np.dtype(np.int64)]
OPS = [C.ReduceOp.SUM, C.ReduceOp.AVG, C.ReduceOp.MAX, C.ReduceOp.MIN, C.ReduceOp.PRODUCT]
_HALF = (np.dtype(np.float16), BFLOAT16)


def inputs(case, rank, n, dtype):
    rng = np.random.default_rng(case * 1009 + rank)
    if dtype.kind in "iu":
        return rng.integers(-3, 4, size=n).astype(dtype)
    return rng.uniform(0.5, 1.5, size=n).astype(dtype)


def reference(parts, op):
    """Rank-order reduction, float16/bfloat16 through float32."""
    dt = parts[0].dtype
    ufunc = {C.ReduceOp.SUM: np.add, C.ReduceOp.AVG: np.add, C.ReduceOp.MAX: np.maximum,
             C.ReduceOp.MIN: np.minimum, C.ReduceOp.PRODUCT: np.multiply}[op]
    wide = dt in _HALF
    acc = parts[0].astype(np.float32 if wide else dt)
    for p in parts[1:]:
        acc = ufunc(acc, p.astype(np.float32) if wide else p)
    if op is C.ReduceOp.AVG:
        acc = acc / (np.float32(len(parts)) if wide else dt.type(len(parts)))
    return acc.astype(dt)


def check_equal(got, want, what, exact=True):
    if exact:
        ok = np.array_equal(got.view(np.uint8), want.view(np.uint8)) if got.size else True
    else:
        ok = np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=2e-2, atol=1e-2)
    if not ok:
        g, w = got.reshape(-1), want.reshape(-1)
        bad = np.nonzero(g != w)[0]
        i = int(bad[0]) if bad.size else 0
        raise AssertionError(f"{what}: mismatch at {i} ({bad.size} elements): got {g[i]!r} "
                             f"want {w[i]!r}")


def all_ops(rank, world, sizes=(0, 1, 7, 1027), big=None, exact=True, dtypes=None,
            ops=None):
    """Every op, ReduceOp and dtype at several sizes; returns a count of checks."""
    pg = C.init_process_group()
    assert pg.rank == rank and pg.size == world, (pg.rank, pg.size)
    n, case, checks = world, 0, 0
    dtypes = DTYPES if dtypes is None else dtypes
    ops = OPS if ops is None else ops
    for dt in dtypes:
        for size in sizes:
            for op in ops:
                if op is C.ReduceOp.AVG and dt.kind in "iu":
                    continue
                case += 1
                parts = [inputs(case, r, size, dt) for r in range(n)]
                want = reference(parts, op)
                x = parts[rank].copy()
                pg.allreduce(x, op)
                check_equal(x, want, f"allreduce {op} {dt} {size}", exact)
                x = parts[rank].copy()
                pg.reduce(x, dst=n - 1, op=op)
                check_equal(x, want if rank == n - 1 else parts[rank],
                            f"reduce {op} {dt} {size}", exact)
                # reduce_scatter: each rank holds n pieces of `size`
                full = [inputs(case + 100000, r, size * n, dt) for r in range(n)]
                out = np.empty(size, dt)
                pg.reduce_scatter(out, full[rank], op)
                wantf = reference(full, op)
                check_equal(out, wantf[rank * size:(rank + 1) * size],
                            f"reduce_scatter {op} {dt} {size}", exact)
                checks += 3
            case += 1
            parts = [inputs(case, r, size, dt) for r in range(n)]
            root = case % n
            x = parts[rank].copy()
            pg.broadcast(x, src=root)
            check_equal(x, parts[root], f"broadcast {dt} {size}")
            out = np.empty((n, size), dt)
            pg.allgather(out, parts[rank])
            check_equal(out, np.stack(parts), f"allgather {dt} {size}")
            outl = [np.empty(size, dt) for _ in range(n)]
            pg.allgather(outl, parts[rank])
            check_equal(np.stack(outl), np.stack(parts), f"allgather(list) {dt} {size}")
            g = np.empty(n * size, dt) if rank == root else None
            pg.gather(parts[rank], g, dst=root)
            if rank == root:
                check_equal(g, np.concatenate(parts), f"gather {dt} {size}")
            src_full = inputs(case + 7, root, n * size, dt)
            o = np.empty(size, dt)
            pg.scatter(o, src_full if rank == root else None, src=root)
            check_equal(o, src_full[rank * size:(rank + 1) * size], f"scatter {dt} {size}")
            a2a_in = [inputs(case + 11, r, n * size, dt) for r in range(n)]
            o = np.empty(n * size, dt)
            pg.all_to_all(o, a2a_in[rank])
            want = np.concatenate([a2a_in[r][rank * size:(rank + 1) * size] for r in range(n)])
            check_equal(o, want, f"all_to_all {dt} {size}")
            checks += 7
    if big:
        for dt in (np.dtype(np.float32), BFLOAT16):
            case += 1
            count = big // dt.itemsize + 3
            parts = [inputs(case, r, count, dt) for r in range(n)]
            x = parts[rank].copy()
            pg.allreduce(x, C.ReduceOp.SUM)
            check_equal(x, reference(parts, C.ReduceOp.SUM), f"big allreduce {dt}", exact)
            out = np.empty(n * count, dt)
            pg.allgather(out, parts[rank])
            check_equal(out, np.concatenate(parts), f"big allgather {dt}")
            o = np.empty(count, dt)
            full = [inputs(case + 5, r, count * n, dt) for r in range(n)]
            pg.reduce_scatter(o, full[rank], C.ReduceOp.SUM)
            check_equal(o, reference(full, C.ReduceOp.SUM)[rank * count:(rank + 1) * count],
                        f"big reduce_scatter {dt}", exact)
            x = parts[rank].copy()
            pg.broadcast(x, src=n - 1)
            check_equal(x, parts[n - 1], f"big broadcast {dt}")
            checks += 4
    pg.barrier()
    C.destroy_process_group()
    return checks


def p2p(rank, world):
    pg = C.init_process_group()
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    for size in (0, 1, 1000, (3 << 20) + 5):
        x = inputs(size, rank, size, np.dtype(np.float32))
        got = np.empty(size, np.float32)
        ws = pg.send(x, nxt, tag=5, async_op=True)
        wr = pg.recv(got, prv, tag=5, async_op=True)
        ws.wait(30)
        wr.wait(30)
        check_equal(got, inputs(size, prv, size, np.dtype(np.float32)), f"ring {size}")
    # tags out of order: two messages, received in the opposite order
    if rank == 0:
        pg.send(np.full(3, 1.0), 1, tag=1)
        pg.send(np.full(5, 2.0), 1, tag=2)
    elif rank == 1:
        b = np.empty(5)
        pg.recv(b, 0, tag=2)
        a = np.empty(3)
        pg.recv(a, 0, tag=1)
        assert (a == 1).all() and (b == 2).all()
    pg.barrier()
    C.destroy_process_group()
    return True


def many_async(rank, world):
    pg = C.init_process_group()
    works, arrays, wants = [], [], []
    for i in range(60):
        size = [1, 17, 5000, 70000][i % 4]
        parts = [inputs(i, r, size, np.dtype(np.float32)) for r in range(world)]
        x = parts[rank].copy()
        arrays.append(x)
        wants.append(reference(parts, C.ReduceOp.SUM))
        works.append(pg.allreduce(x, async_op=True))
    # a blocking op after async ones completes after all of them
    b = np.ones(3, np.float32)
    pg.allreduce(b)
    assert all(w.is_completed() for w in works)
    for w, x, want in zip(works, arrays, wants):
        assert w.wait(10) is True and w.is_success()
        check_equal(x, want, "async allreduce")
    # in-order completion: track completion order through callbacks
    order = []
    ws = []
    for i in range(20):
        w = pg.allreduce(np.ones(100 * (20 - i), np.float32), async_op=True)
        w.add_done_callback(lambda w, i=i: order.append(i))
        ws.append(w)
    for w in ws:
        w.wait()
    assert order == list(range(20)), order
    C.destroy_process_group()
    return True


def subgroups(rank, world):
    pg = C.init_process_group()
    even = C.new_group([r for r in range(world) if r % 2 == 0])
    odd = C.new_group([r for r in range(world) if r % 2 == 1])
    first3 = C.new_group([0, 1, 2])
    mine = even if rank % 2 == 0 else odd
    assert (odd if rank % 2 == 0 else even) is None
    members = mine.ranks
    x = np.array([float(rank)], np.float64)
    mine.allreduce(x)
    assert x[0] == sum(members), (x, members)
    y = np.array([rank], np.int64)
    w = pg.allreduce(y, async_op=True)   # default group interleaved with subgroups
    if first3 is not None:
        z = np.array([rank + 1], np.int32)
        first3.allreduce(z, C.ReduceOp.PRODUCT)
        assert z[0] == 6
        g = np.empty(3, np.int64)
        first3.allgather(g, np.array([rank], np.int64))
        assert g.tolist() == [0, 1, 2]
    w.wait()
    assert y[0] == sum(range(world))
    assert C.get_rank(mine) == members.index(rank)
    C.destroy_process_group()
    return True


def timeout_and_report(rank, world):
    pg = C.init_process_group()
    if rank == 0:
        t0 = time.monotonic()
        try:
            pg.allreduce(np.ones(4, np.float32), timeout=1.0)
        except C.CollectiveTimeoutError as e:
            msg = str(e)
            assert "allreduce" in msg and "seq 1" in msg and "[1]" in msg, msg
            assert e.missing == (1,) and e.rank == 0 and e.seq == 1
            assert time.monotonic() - t0 < 5
        else:
            raise AssertionError("no timeout")
        try:
            pg.allreduce(np.ones(4, np.float32))
        except C.GroupBrokenError:
            pass
        else:
            raise AssertionError("group still usable after a timeout")
        report = C.hang_report(wait=5.0)
        from deepseek.collectives import hang
        assert hang.collect_job_report(pg.store, wait=0) is not None
        assert "rank 0" in report and "allreduce seq 1" in report, report
        assert "rank 1" in report and "not in any collective" in report, report
        return report
    time.sleep(4.0)  # "stuck in compute": not in any collective
    return None


def fast_op_times_out(rank, world, opname):
    """The C fast paths of the other collectives give the same timeout errors."""
    pg = C.init_process_group()
    if rank != 0:
        time.sleep(3.0)
        return None
    x, out = np.ones(4, np.float32), np.empty(4 * world, np.float32)
    call = {"broadcast": lambda: pg.broadcast(x, src=1, timeout=1.0),
            "allgather": lambda: pg.allgather(out, x, timeout=1.0),
            "gather": lambda: pg.gather(x, out, dst=0, timeout=1.0),
            "reduce_scatter": lambda: pg.reduce_scatter(x[:2], np.ones(2 * world, np.float32),
                                                        timeout=1.0)}[opname]
    t0 = time.monotonic()
    try:
        call()
    except C.CollectiveTimeoutError as e:
        assert f"{opname} (seq 1)" in str(e) and e.missing == (1,), str(e)
        assert time.monotonic() - t0 < 5
    else:
        raise AssertionError("no timeout")
    try:
        call()
    except C.GroupBrokenError:
        return "broken"
    return "still usable"


def peer_dies(rank, world):
    pg = C.init_process_group(timeout=60)
    pg.allreduce(np.ones(10, np.float32))
    if rank == world - 1:
        os._exit(7)
    t0 = time.monotonic()
    try:
        pg.allreduce(np.ones(1 << 16, np.float32))
    except C.CollectiveError as e:
        return type(e).__name__, time.monotonic() - t0, str(e)
    return "no error", time.monotonic() - t0, ""


def debug_mismatch(rank, world):
    pg = C.init_process_group(debug=True)
    pg.allreduce(np.ones(4, np.float32))  # matching: fine
    try:
        pg.allreduce(np.ones(4 + rank, np.float32))
    except C.CollectiveMismatchError as e:
        msg = str(e)
        assert "shape=[4]" in msg and "shape=[5]" in msg, msg
        return "mismatch"
    return "no error"


def debug_op_mismatch(rank, world):
    pg = C.init_process_group(debug=True)
    try:
        if rank == 0:
            pg.broadcast(np.ones(4, np.float32), src=0)
        else:
            pg.allreduce(np.ones(4, np.float32))
    except C.CollectiveMismatchError as e:
        assert "broadcast" in str(e) and "allreduce" in str(e)
        return "mismatch"
    return "no error"


def bad_arguments(rank, world):
    pg = C.init_process_group()
    E = C.CollectiveArgumentError
    x = np.ones((4, 4), np.float32)
    cases = [
        lambda: pg.allreduce(x[:, ::2]),                               # non-contiguous
        lambda: pg.allgather(np.empty(3, np.float32), np.ones(2, np.float32)),  # size
        lambda: pg.allgather(np.empty(2 * world, np.float64), np.ones(2, np.float32)),
        lambda: pg.broadcast(np.ones(2), src=world),                   # rank range
        lambda: pg.reduce(np.ones(2), dst=-1),
        lambda: pg.allreduce(np.ones(2, np.int32), C.ReduceOp.AVG),    # dtype for op
        lambda: pg.allreduce(np.ones(2, bool)),
        lambda: pg.allreduce([1, 2, 3]),                               # not an array
        lambda: pg.allreduce(np.ones(2), "bogus"),
        lambda: pg.reduce_scatter(np.empty(2), np.ones(2 * world + 1)),
        lambda: pg.send(np.ones(2), rank),
    ]
    for i, c in enumerate(cases):
        t0 = time.monotonic()
        try:
            c()
        except E:
            assert time.monotonic() - t0 < 1.0
        else:
            raise AssertionError(f"case {i} did not raise")
    ro = np.ones(3)
    ro.flags.writeable = False
    try:
        pg.allreduce(ro)
    except E:
        pass
    else:
        raise AssertionError("read-only")
    # the group still works
    y = np.ones(3)
    pg.allreduce(y)
    assert (y == world).all()
    C.destroy_process_group()
    return True


def shm_unlinked(rank, world):
    pg = C.init_process_group()
    job = os.environ["DEEPSEEK_RUN_ID"]
    sub = C.new_group([0, 1])
    pg.barrier()
    left = [f for f in os.listdir("/dev/shm") if job in f]
    assert pg.transport == "shm"
    if rank == 1:
        os.kill(os.getpid(), 9)  # crash while attached
    return left


def deterministic(rank, world):
    pg = C.init_process_group(deterministic=True)
    rng = np.random.default_rng(5)
    data = [(rng.standard_normal(300001) * 10.0 ** rng.integers(-3, 4)).astype(np.float32)
            for _ in range(world)]
    want = reference(data, C.ReduceOp.SUM)
    t = pg._backend
    results = []
    for rs_bytes, chunk_scale in ((1 << 40, 1), (0, 1), (1024, 1)):
        t.rs_bytes = rs_bytes
        x = data[rank].copy()
        pg.allreduce(x)
        results.append(x)
    for r in results:
        check_equal(r, want, "deterministic")
    # reduce_scatter then allgather gives the same bits as allreduce
    per = 100000
    full = np.concatenate([d[:per * world] for d in data[rank:rank + 1]])
    out = np.empty(per, np.float32)
    pg.reduce_scatter(out, full)
    ag = np.empty(per * world, np.float32)
    pg.allgather(ag, out)
    x = full.copy()
    pg.allreduce(x)
    check_equal(ag, x, "rs+ag vs allreduce")
    C.destroy_process_group()
    return True


def work_wait_timeout(rank, world):
    pg = C.init_process_group()
    if rank == 0:
        w = pg.allreduce(np.ones(4, np.float32), async_op=True)
        try:
            w.wait(0.3)
        except C.CollectiveTimeoutError:
            pass
        else:
            raise AssertionError("wait(0.3) returned although rank 1 had not joined")
        assert not w.is_completed()
        assert w.wait(30)
    else:
        time.sleep(1.5)
        pg.allreduce(np.ones(4, np.float32))
    C.destroy_process_group()
    return True


def overlap(rank, world):
    """Async allreduce of 32 MiB runs while the main thread computes."""
    pg = C.init_process_group()
    x = np.ones(8 << 20, np.float32)
    t0 = time.perf_counter()
    w = pg.allreduce(x, async_op=True)
    a = np.random.default_rng(0).standard_normal((300, 300))
    for _ in range(5):
        a = a @ a.T / 300
    w.wait()
    assert x[0] == world and x[-1] == world
    C.destroy_process_group()
    return time.perf_counter() - t0


def raises_on_rank_one(rank, world):
    if rank == 1:
        raise ValueError("boom from rank 1")
    time.sleep(30)


def sleeps_forever(rank, world):
    time.sleep(300)


def transport_name(rank, world):
    pg = C.init_process_group()
    x = np.full(3, rank, np.float32)
    pg.allreduce(x)
    assert (x == sum(range(world))).all()
    t = pg.transport
    C.destroy_process_group()
    return t


def fast_path(rank, world):
    """The C allreduce (shm + native kernels): taken for plain numpy arrays, exact in
    rank order, interleaved with Python-path collectives and async ops."""
    from deepseek import native

    pg = C.init_process_group()
    if native.shm_kernel() is None:
        C.destroy_process_group()
        return "no native"
    assert pg._fast is not None and pg._backend.kernel is not None
    seq0 = pg._seq
    for i, size in enumerate((1, 2, 33, 5000, 70000, 300001)):
        for dt in (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int64)):
            for op in (C.ReduceOp.SUM, C.ReduceOp.MAX, C.ReduceOp.PRODUCT):
                parts = [inputs(i, r, size, dt) for r in range(world)]
                x = parts[rank].copy()
                pg.allreduce(x, op)
                check_equal(x, reference(parts, op), f"fast {op} {dt} {size}")
            b = np.full(3, rank, dt)
            pg.broadcast(b, src=1)          # Python path in between
            assert (b == 1).all()
    w = pg.allreduce(np.ones(10, np.float32), async_op=True)
    y = np.ones(4, np.float32)
    pg.allreduce(y)                         # waits for the async op first
    assert w.is_completed() and (y == world).all()
    assert pg._seq == seq0 + 6 * 3 * (3 + 1) + 2
    C.destroy_process_group()
    return True


def cma_allgather(rank, world):
    """Allgather above and below the single-copy threshold, checked against the
    inputs; which C kernel ran (5: cross-memory attach, 1: staged); and a size
    mismatch between ranks, which the single-copy path catches."""
    pg = C.init_process_group()
    kinds = []
    real = pg._coll_kernel
    pg._coll_kernel = lambda addr, kind, *a: (kinds.append(kind), real(addr, kind, *a))[1]
    for n in (300001, 5000, 3):  # float32: 1.2 MB, 20 KB (both above 8 KiB), 12 B
        parts = [inputs(7, r, n, np.dtype(np.float32)) for r in range(world)]
        out = np.empty(n * world, np.float32)
        pg.allgather(out, parts[rank])
        check_equal(out, np.concatenate(parts), f"allgather n={n}")
    on = pg._backend.cma
    result = "skipped"
    if on:
        x = np.ones(4096 + 1024 * rank, np.float32)
        try:
            pg.allgather(np.empty(x.size * world, np.float32), x)
        except C.CollectiveMismatchError as e:
            # the signatures' check (collectives/backends/shm.py) words it
            assert "ranks disagree" in str(e), e
            assert all(f"nbytes={b}, op=allgather" in str(e) for b in (16384, 20480, 24576)), e
            result = "mismatch"
        else:
            result = "no error"
    return on, kinds[:3], result
