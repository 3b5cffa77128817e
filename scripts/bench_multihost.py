#!/usr/bin/env python
"""Multi-host allreduce benchmark over a real (virtual) link, next to gloo in one run.

    sudo python scripts/bench_multihost.py                       # 1 and 10 Gbit, 1-256 MiB
    sudo python scripts/bench_multihost.py --rates 1gbit --max-size 16MiB --json out.json
    sudo python scripts/bench_multihost.py --suite hier          # 2 hosts x 2: hier vs flat

Two "hosts" are Linux network namespaces joined by a veth pair (tests/netns.py), the
link shaped with a ``tbf`` qdisc to each ``--rates`` value (``none``: unshaped). Every
system runs inside the namespaces, one process per rank:

* ``deepseek``: deepseek-run agents (``--nnodes 2``), the cpu backend: ZeroMQ TCP
  between the hosts (the hierarchical transport when a host has several ranks;
  ``deepseek-flat`` forces the flat ZeroMQ mesh with DEEPSEEK_CPU_TRANSPORT=zmq);
* ``gloo``: PyTorch ``torch.distributed`` with the gloo backend and
  ``GLOO_SOCKET_IFNAME`` set to the veth (skipped when torch is missing).

Per size: time per allreduce (max over ranks of the median over iterations), busbw =
2(n-1)/n x bytes / time (nccl-tests' convention), and busbw as a share of the link
rate. Needs root (ip netns); the machine's cores are shared by both "hosts", so on a
small machine the CPU, not the link, may be the limit -- the table says what was
measured, nothing more.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

# the size units (1MiB, 256K, ...) and their printing: the same as the allreduce bench
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bench_allreduce import fmt_size, parse_size  # noqa: E402


def rate_bits(rate):
    """``1gbit`` -> 1e9 (bits/s); ``none`` -> None."""
    r = rate.lower()
    if r == "none":
        return None
    for suffix, m in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if r.endswith(suffix):
            return float(r[:-len(suffix)]) * m
    raise ValueError(f"rate {rate!r}: expected like 1gbit, 500mbit or none")


# --------------------------------------------------------------------------- workers

def _time_sizes(allreduce, make, sizes, budget, barrier):
    """Median seconds per allreduce for each size (a few iterations, ``budget`` s)."""
    import numpy as np

    out = {}
    for nbytes in sizes:
        x = make(nbytes)
        allreduce(x)  # warm-up (connections, buffers)
        times = []
        t_end = time.perf_counter() + budget
        while len(times) < 3 or (time.perf_counter() < t_end and len(times) < 50):
            barrier()
            t0 = time.perf_counter()
            allreduce(x)
            times.append(time.perf_counter() - t0)
        out[nbytes] = float(np.median(times))
    return out


def worker_deepseek(sizes, budget):
    import numpy as np

    from deepseek import collectives as C

    pg = C.init_process_group()
    res = _time_sizes(pg.allreduce, lambda n: np.ones(n // 4, np.float32), sizes, budget,
                      pg.barrier)
    return pg.rank, pg.size, pg.transport, res


def worker_gloo(sizes, budget):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    res = _time_sizes(dist.all_reduce, lambda n: torch.ones(n // 4, dtype=torch.float32),
                      sizes, budget, dist.barrier)
    return dist.get_rank(), dist.get_world_size(), "gloo", res


def worker_main(args):
    import faulthandler

    faulthandler.dump_traceback_later(args.stacks_after, exit=False)  # if it hangs
    sizes = [int(s) for s in args.sizes.split(",")]
    fn = {"deepseek": worker_deepseek, "gloo": worker_gloo}[args.worker]
    rank, world, transport, res = fn(sizes, args.budget)
    print("BENCH " + json.dumps({"rank": rank, "world": world, "transport": transport,
                                 "times": {str(k): v for k, v in res.items()}}),
          flush=True)
    if args.worker == "gloo":
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    else:
        from deepseek import collectives as C

        C.destroy_process_group()


# --------------------------------------------------------------------------- driver

def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_system(cluster, system, nproc, sizes, budget, timeout):
    """Run one system across the cluster; {size: seconds} (max over ranks) and the
    transport it used."""
    from netns import communicate_all

    port = _port()
    me = [os.path.abspath(__file__), "--worker",
          "gloo" if system == "gloo" else "deepseek", "--sizes",
          ",".join(map(str, sizes)), "--budget", str(budget),
          "--stacks-after", str(max(30, timeout - 20))]
    procs = []
    for k in range(cluster.n):
        env = cluster.env(k, PYTHONPATH=ROOT, OMP_NUM_THREADS=1,
                          DEEPSEEK_TOKEN="bench-multihost-secret")
        env.pop("DEEPSEEK_CPU_TRANSPORT", None)
        if system == "deepseek-flat":
            env["DEEPSEEK_CPU_TRANSPORT"] = "zmq"
        if system == "gloo":
            env.update(GLOO_SOCKET_IFNAME="eth0", MASTER_ADDR=cluster.addrs[0],
                       MASTER_PORT=str(port))
            for lr in range(nproc):
                e = dict(env, RANK=str(k * nproc + lr), LOCAL_RANK=str(lr),
                         WORLD_SIZE=str(cluster.n * nproc))
                procs.append(cluster.popen(k, [sys.executable, *me], env=e))
        else:
            argv = [sys.executable, "-m", "deepseek.launcher", "--nnodes", str(cluster.n),
                    "--node-rank", str(k), "--master-addr", cluster.addrs[0],
                    "--master-port", str(port), "--nproc", str(nproc), "--timeout", "60",
                    "--omp-threads", "1", *me]
            procs.append(cluster.popen(k, argv, env=env))
    outs = communicate_all(procs, timeout)
    rows, transport = [], None
    for k, (rc, out, err) in enumerate(outs):
        if rc != 0:
            import tempfile

            path = os.path.join(tempfile.gettempdir(), f"bench_multihost_{system}.err")
            with open(path, "w") as f:
                f.write("\n\n".join(e for _, _, e in outs))
            raise RuntimeError(f"{system} failed (rc {rc}) on process {k}; every "
                               f"process's stderr in {path}:\n{err[-3000:]}")
        for line in out.splitlines():
            if "BENCH " in line:
                rows.append(json.loads(line.split("BENCH ", 1)[1]))
    transport = rows[0]["transport"]
    return {s: max(r["times"][str(s)] for r in rows) for s in sizes}, transport, \
        rows[0]["world"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=1.5,
                   help="seconds of timed iterations per size (at least 3 iterations)")
    p.add_argument("--sizes", help="comma-separated byte counts (overrides min/max)")
    p.add_argument("--min-size", default="1MiB")
    p.add_argument("--max-size", default="256MiB")
    p.add_argument("--rates", default="1gbit,10gbit",
                   help="link rates to shape to (tc syntax), 'none' for unshaped")
    p.add_argument("--suite", choices=("link", "hier"), default="link",
                   help="link: deepseek vs gloo, 2 hosts x 1 rank; hier: 2 hosts x 2 "
                        "ranks, hierarchical vs flat vs gloo")
    p.add_argument("--systems", help="comma-separated: deepseek, deepseek-flat, gloo")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--stacks-after", type=float, default=300, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args)

    from netns import Cluster, unavailable_reason

    why = unavailable_reason()
    if why:
        print(f"bench_multihost: {why}", file=sys.stderr)
        return 2
    if args.sizes:
        sizes = [parse_size(s) for s in args.sizes.split(",")]
    else:
        sizes, s = [], parse_size(args.min_size)
        while s <= parse_size(args.max_size):
            sizes.append(s)
            s *= 4
    nproc = 2 if args.suite == "hier" else 1
    systems = args.systems.split(",") if args.systems else (
        ["deepseek", "deepseek-flat", "gloo"] if args.suite == "hier" else
        ["deepseek", "gloo"])
    try:
        import torch  # noqa: F401
    except ImportError:
        systems = [s for s in systems if s != "gloo"]
    results = []
    for rate in args.rates.split(","):
        bits = rate_bits(rate)
        with Cluster(2) as cluster:
            if bits is not None:
                cluster.shape(rate)
            for system in systems:
                # the slowest size at the link rate, a few times over, plus start-up
                worst = max(sizes) * 8 / (bits or 5e9)
                t, transport, world = run_system(cluster, system, nproc, sizes,
                                                 args.budget,
                                                 timeout=180 + len(sizes) * (
                                                     args.budget + 10 * worst))
                for s in sizes:
                    busbw = 2 * (world - 1) / world * s / t[s]
                    results.append({"rate": rate, "system": system,
                                    "transport": transport, "world": world,
                                    "bytes": s, "seconds": t[s], "busbw_GBps": busbw / 1e9,
                                    "link_share": busbw * 8 / bits if bits else None})
    _table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def _table(results):
    head = f"{'link':>7} {'system':>14} {'transport':>9} {'ranks':>5} {'size':>9} " \
           f"{'time ms':>9} {'busbw GB/s':>10} {'% link':>7} {'vs gloo':>7}"
    print(head)
    print("-" * len(head))
    gloo = {(r["rate"], r["bytes"]): r["seconds"] for r in results if r["system"] == "gloo"}
    for r in results:
        share = f"{100 * r['link_share']:.0f}%" if r["link_share"] else "-"
        g = gloo.get((r["rate"], r["bytes"]))
        vs = f"{g / r['seconds']:.2f}x" if g and r["system"] != "gloo" else ""
        print(f"{r['rate']:>7} {r['system']:>14} {r['transport']:>9} {r['world']:>5} "
              f"{fmt_size(r['bytes']):>9} {1e3 * r['seconds']:>9.2f} "
              f"{r['busbw_GBps']:>10.3f} {share:>7} {vs:>7}")


if __name__ == "__main__":
    sys.exit(main())
