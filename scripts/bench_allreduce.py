#!/usr/bin/env python
"""Allreduce / allgather / reduce_scatter benchmark, nccl-tests style.

    python scripts/bench_allreduce.py                   # 2 ranks, 8 B .. 256 MiB
    python scripts/bench_allreduce.py --nproc 4 --max-size 16MiB --json out.json

For each message size: time per op (max over ranks of the mean), algbw = bytes / time
and busbw = algbw x 2(n-1)/n for allreduce, x (n-1)/n for allgather / reduce_scatter
(nccl-tests' convention; bytes = the full buffer). In the same run, where installed:
mpi4py + MPICH ``Allreduce`` (in place; through ``mpiexec``), PyTorch gloo
``all_reduce`` (and PyTorch NCCL on GPUs: ``--systems deepseek-nccl,torch-nccl``), plus
a single-process memory-copy bandwidth line as the limit. ``deepseek-sym`` is the cpu
backend with the inputs in symmetric memory (``ProcessGroup.symmetric_empty``, as DDP's
buckets): no staging copy. With one GPU the NCCL rows are a world of one: per-call cost
and local copy speed, no link traffic. Numbers on a shared 2-core machine are noisy:
compare within one run.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

UNITS = {"B": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20,
         "G": 1 << 30, "GIB": 1 << 30}


def parse_size(s):
    s = s.strip().upper()
    for u in sorted(UNITS, key=len, reverse=True):
        if s.endswith(u):
            return int(float(s[: -len(u)]) * UNITS[u])
    return int(s)


def fmt_size(n):
    for u, m in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= m:
            return f"{n / m:g} {u}"
    return f"{n} B"


def sizes_between(lo, hi):
    """x4 steps below 1 MiB, x2 from there; 1 MiB itself is always a row."""
    out, s = [], lo
    while s <= hi:
        out.append(s)
        s = min(s * 4, 1 << 20) if s < (1 << 20) else s * 2
    return out


def iters_for(nbytes, budget):
    """Rough iteration count for ~budget seconds (assume 2 GB/s, 20 us floor)."""
    t = max(20e-6, nbytes / 2e9)
    return int(min(2000, max(3, budget / t)))


def _bus(op, n):
    return 2 * (n - 1) / n if op == "allreduce" else (n - 1) / n


def _time_loop(fn, barrier, iters):
    fn()  # warm-up (first touch of buffers)
    barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


# ------------------------------------------------------------------ deepseek ranks
def deepseek_worker(rank, world, cfg):
    from deepseek import collectives as C

    env_backend = cfg.get("backend", "cpu")
    xp = np
    if env_backend == "nccl":
        import cupy as xp

        xp.cuda.Device(rank).use()
    pg = C.init_process_group(backend=env_backend)
    # a group of one skips the backend (nothing to move); on one GPU call the NCCL
    # backend itself so the row measures its real per-call cost
    direct = env_backend == "nccl" and world == 1
    if direct:
        from deepseek.collectives._context import OpContext

        b, ctx = pg._backend, OpContext("bench", 0, 60.0, "default", 0, [0])
        allreduce = lambda x: b.allreduce(ctx, x, C.ReduceOp.SUM)  # noqa: E731
        allgather = lambda out, src: b.allgather(ctx, out, src)  # noqa: E731
        reduce_scatter = lambda out, src: b.reduce_scatter(ctx, out, src,  # noqa: E731
                                                           C.ReduceOp.SUM)
    else:
        allreduce, allgather, reduce_scatter = pg.allreduce, pg.allgather, pg.reduce_scatter
    rows = []
    if cfg.get("symmetric"):
        # one arena in symmetric memory, sliced at the same place on every rank (what
        # DDP buckets do): the inputs of every op below live in it
        arena = pg.symmetric_empty(max(1, max(cfg["sizes"]) // 4), np.float32)
        arena[...] = 1
        new_input = lambda n: arena[:n]  # noqa: E731
    else:
        new_input = lambda n: xp.ones(n, np.float32)  # noqa: E731
    for op in cfg["ops"]:
        for nbytes in cfg["sizes"]:
            count = max(1, nbytes // 4)
            if op == "allreduce":
                x = new_input(count)
                x[...] = 0
                fn = lambda: allreduce(x)  # noqa: E731
            elif op == "allgather":
                per = max(1, count // world)
                src, out = new_input(per), xp.empty(per * world, np.float32)
                fn = lambda: allgather(out, src)  # noqa: E731
            else:
                per = max(1, count // world)
                src, out = new_input(per * world), xp.empty(per, np.float32)
                fn = lambda: reduce_scatter(out, src)  # noqa: E731
            iters = iters_for(nbytes, cfg["budget"])
            # every rank must run the same count: take rank 0's
            it = xp.array([iters], np.int64)
            pg.broadcast(it, 0)
            t = _time_loop(fn, pg.barrier, int(it[0]))
            tt = xp.array([t], np.float64)
            pg.allreduce(tt, C.ReduceOp.MAX)
            rows.append({"op": op, "bytes": count * 4, "time_s": float(tt[0]),
                         "iters": int(it[0])})
    transport = getattr(pg, "transport", pg.backend)
    if direct:
        transport += " (world 1: backend called directly, no link traffic)"
    C.destroy_process_group()
    return rows, transport


def run_deepseek(cfg, nproc, backend="cpu", symmetric=False):
    from deepseek.testing.multiprocess import spawn_ranks

    cfg = dict(cfg, backend=backend, symmetric=symmetric)
    res = spawn_ranks(deepseek_worker, nproc, timeout=cfg["timeout"], args=(cfg,),
                      env={"DEEPSEEK_HANG_POLL": "0"})
    rows, transport = res[0]
    return rows, f"deepseek {backend}/{transport}" + (
        ", inputs in symmetric memory (ProcessGroup.symmetric_empty)" if symmetric else "")


# ------------------------------------------------------------------ MPICH via mpiexec
def mpi_worker(cfg_path, out_path):
    from mpi4py import MPI

    with open(cfg_path) as f:
        cfg = json.load(f)
    comm = MPI.COMM_WORLD
    world = comm.Get_size()
    rows = []
    for op in cfg["ops"]:
        for nbytes in cfg["sizes"]:
            count = max(1, nbytes // 4)
            x = np.zeros(count, np.float32)
            if op == "allreduce":
                fn = lambda: comm.Allreduce(MPI.IN_PLACE, x, MPI.SUM)  # noqa: E731
            elif op == "allgather":
                per = max(1, count // world)
                src, out = np.ones(per, np.float32), np.empty(per * world, np.float32)
                fn = lambda: comm.Allgather(src, out)  # noqa: E731
            else:
                per = max(1, count // world)
                src, out = np.ones(per * world, np.float32), np.empty(per, np.float32)
                fn = lambda: comm.Reduce_scatter_block(src, out, MPI.SUM)  # noqa: E731
            iters = comm.bcast(iters_for(nbytes, cfg["budget"]), root=0)
            t = _time_loop(fn, comm.Barrier, iters)
            t = comm.allreduce(t, op=MPI.MAX)
            rows.append({"op": op, "bytes": count * 4, "time_s": t, "iters": iters})
    if comm.Get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(rows, f)


def run_mpich(cfg, nproc):
    if shutil.which("mpiexec") is None:
        return None, "mpi4py+MPICH (mpiexec not found)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, "mpi4py+MPICH (mpi4py not installed)"
    with tempfile.TemporaryDirectory() as d:
        cp, op = os.path.join(d, "cfg.json"), os.path.join(d, "out.json")
        with open(cp, "w") as f:
            json.dump(cfg, f)
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "DEEPSEEK_STORE_ADDR")}
        p = subprocess.Popen(["mpiexec", "-n", str(nproc), sys.executable, __file__,
                              "--_mpi-worker", cp, op], env=env, start_new_session=True)
        try:
            p.wait(cfg["timeout"])
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            return None, "mpi4py+MPICH (timed out)"
        if p.returncode != 0 or not os.path.exists(op):
            return None, f"mpi4py+MPICH (failed, code {p.returncode})"
        with open(op) as f:
            return json.load(f), "mpi4py+MPICH Allreduce (in place)"


# ------------------------------------------------------------------ torch gloo / nccl
def gloo_worker(rank, world, cfg, port, backend="gloo"):
    import torch
    import torch.distributed as tdist

    torch.set_num_threads(1)
    dev = "cpu"
    if backend == "nccl":
        dev = f"cuda:{rank}"
        torch.cuda.set_device(rank)
    tdist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                             world_size=world)
    # torch's NCCL calls return before the GPU is done; synchronise each one so the
    # time is per completed op, as deepseek's calls are
    sync = torch.cuda.synchronize if backend == "nccl" else (lambda: None)
    rows = []
    for op in cfg["ops"]:
        for nbytes in cfg["sizes"]:
            count = max(1, nbytes // 4)
            per = max(1, count // world)
            if op == "allreduce":
                x = torch.ones(count, device=dev)
                fn = lambda: (tdist.all_reduce(x), sync())  # noqa: E731
            elif op == "allgather":
                src, out = torch.ones(per, device=dev), torch.empty(per * world, device=dev)
                fn = lambda: (tdist.all_gather_into_tensor(out, src), sync())  # noqa: E731
            else:
                src, out = torch.ones(per * world, device=dev), torch.empty(per, device=dev)
                fn = lambda: (tdist.reduce_scatter_tensor(out, src), sync())  # noqa: E731
            it = torch.tensor([iters_for(nbytes, cfg["budget"])], device=dev)
            tdist.broadcast(it, 0)
            try:
                t = _time_loop(fn, tdist.barrier, int(it[0]))
            except RuntimeError:  # e.g. gloo without reduce_scatter
                t = float("nan")
            tt = torch.tensor([t], dtype=torch.float64, device=dev)
            tdist.all_reduce(tt, op=tdist.ReduceOp.MAX)
            rows.append({"op": op, "bytes": count * 4, "time_s": float(tt[0]),
                         "iters": int(it[0])})
    tdist.destroy_process_group()
    return rows


def run_gloo(cfg, nproc, backend="gloo"):
    try:
        import torch.distributed  # noqa: F401
    except ImportError:
        return None, f"torch {backend} (torch not installed)"
    from deepseek.testing.multiprocess import spawn_ranks

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    try:
        res = spawn_ranks(gloo_worker, nproc, timeout=cfg["timeout"],
                          args=(cfg, port, backend), store=False)
    except Exception as e:  # noqa: BLE001 - reference system failing is not our failure
        return None, f"torch {backend} (failed: {str(e)[:200]})"
    return res[0], f"torch {backend} all_reduce" + (
        " (synchronised per op)" if backend == "nccl" else "")


# ------------------------------------------------------------------ memcpy
def memcpy_bw(nbytes=64 << 20):
    a = np.ones(nbytes, np.uint8)
    b = np.empty_like(a)
    np.copyto(b, a)
    t = _time_loop(lambda: np.copyto(b, a), lambda: None, 10)
    return nbytes / t / 1e9


# ------------------------------------------------------------------ output
def print_table(title, rows, nproc, ops):
    print(f"\n# {title}  (ranks: {nproc})")
    if not rows:
        print("#   (not available)")
        return
    for op in ops:
        sel = [r for r in rows if r["op"] == op]
        if not sel:
            continue
        print(f"#  {op}")
        print(f"{'size':>12} {'count':>12} {'time(us)':>12} {'algbw(GB/s)':>12} "
              f"{'busbw(GB/s)':>12}")
        for r in sel:
            t = r["time_s"]
            alg = r["bytes"] / t / 1e9 if t and t == t else float("nan")
            r["algbw"], r["busbw"] = alg, alg * _bus(op, nproc)
            print(f"{fmt_size(r['bytes']):>12} {r['bytes'] // 4:>12} {t * 1e6:>12.2f} "
                  f"{alg:>12.3f} {r['busbw']:>12.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--min-size", default="8")
    ap.add_argument("--max-size", default="256MiB")
    ap.add_argument("--ops", default="allreduce,allgather,reduce_scatter")
    ap.add_argument("--systems", default="deepseek,deepseek-sym,mpich,gloo",
                    help="comma list of deepseek, deepseek-sym, deepseek-nccl, mpich, gloo, "
                         "torch-nccl")
    ap.add_argument("--budget", type=float, default=0.25, help="seconds per size (approx)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", nargs="?", const="-", default=None,
                    help="write results as JSON to this file ('-' or no value: stdout)")
    ap.add_argument("--_mpi-worker", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._mpi_worker:
        return mpi_worker(*a._mpi_worker)
    cfg = {"sizes": sizes_between(parse_size(a.min_size), parse_size(a.max_size)),
           "ops": a.ops.split(","), "budget": a.budget, "timeout": a.timeout}
    systems = a.systems.split(",")
    results = {"nproc": a.nproc, "memcpy_GBps": memcpy_bw(), "systems": {}}
    print(f"# memory copy bandwidth (1 process, 64 MiB np.copyto): "
          f"{results['memcpy_GBps']:.2f} GB/s")
    runners = {"deepseek": lambda: run_deepseek(cfg, a.nproc, "cpu"),
               "deepseek-sym": lambda: run_deepseek(cfg, a.nproc, "cpu", symmetric=True),
               "deepseek-nccl": lambda: run_deepseek(cfg, a.nproc, "nccl"),
               "mpich": lambda: run_mpich(cfg, a.nproc),
               "gloo": lambda: run_gloo(cfg, a.nproc),
               "torch-nccl": lambda: run_gloo(cfg, a.nproc, "nccl")}
    for s in systems:
        rows, title = runners[s]()
        print_table(title, rows, a.nproc, cfg["ops"])
        results["systems"][title] = rows
        sys.stdout.flush()
    if a.json:
        text = json.dumps(results, indent=1)
        if a.json == "-":
            print(text)
        else:
            with open(a.json, "w") as f:
                f.write(text)


if __name__ == "__main__":
    main()
