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
  ``GLOO_SOCKET_IFNAME`` set to the veth (skipped when torch is missing);
* ``tcp``: no collective at all, the ceiling of the machine: the two hosts send each
  other the message over one plain TCP connection at once (what an allreduce of 2
  ranks moves each way), ``sendall`` from a numpy buffer against ``recv_into`` it.

``--suite ddp`` measures the seed's claim: DDP communication overhead,
``1 - local step / distributed step``, of a BERT-base encoder (110M parameters,
``BertForSequenceClassification``; SGD, batch ``--batch`` x ``--seq`` tokens per rank)
on 2 hosts x 1 rank, for each ``--ddp-configs`` entry:

* ``fp32-sync``: deepseek DDP, fp32 on the wire, every bucket after backward;
* ``fp16-overlap``: deepseek DDP, fp16 compression, buckets reduced during backward;
* ``fp32-overlap``, ``fp16-sync``, ``bf16-overlap``: the other corners;
* ``...-dense`` (``fp16-overlap-dense``): the same with ``skip_zero_blocks=False``,
  the embedding table's zero rows sent too (as PyTorch DDP does);
* ``torch``: PyTorch DDP over gloo (its defaults: fp32, 25 MB buckets, overlap) on
  Hugging Face's ``BertForSequenceClassification`` of the same size;
* ``torch-fp16``: the same with PyTorch's ``fp16_compress_hook``.

The local step is the same job's step under ``no_sync()`` (forward, backward, SGD, no
communication), alternated with synchronised steps after a barrier, so both see the
same contention of two busy processes on the machine; per job the medians, max over
ranks. ``--bucket-caps`` runs each deepseek configuration at these DDP bucket caps.

``--repeats N`` runs the systems N times, interleaved (deepseek, gloo, tcp, deepseek,
...), and reports the median per size: the machines are shared, and a slow phase then
hits every system alike.

Per size: time per allreduce (max over ranks of the median over iterations), busbw =
2(n-1)/n x bytes / time (nccl-tests' convention), busbw as a share of the link
rate, and the CPU milliseconds a rank's process spends per GB allreduced (user +
system of all its threads; the kernel's softirq work of the veth is not counted):
on a machine whose cores are the limit, CPU per byte is what decides the speed. Needs root (ip netns); the machine's cores are shared by both "hosts", so on a
small machine the CPU, not the link, may be the limit -- the table says what was
measured, nothing more.
"""
import argparse
import json
import os
import socket
import struct
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

def _time_sizes(allreduce, make, sizes, budget, barrier, agree):
    """Median seconds per allreduce for each size (a few iterations, ``budget`` s).

    The ranks agree on the number of iterations (``agree(seconds)``: the largest
    value over the ranks) from the warm-up's time, before timing: each rank counting
    its own iterations against its own clock made a loaded rank stop one iteration
    earlier than its peer, and then the two called different collectives (deepseek
    raised a mismatch; gloo hung until the run was killed)."""
    import numpy as np

    out, cpu = {}, {}
    for nbytes in sizes:
        x = make(nbytes)
        t0 = time.perf_counter()
        allreduce(x)  # warm-up (connections, buffers)
        warm = agree(time.perf_counter() - t0)
        iters = int(min(50, max(3, budget / max(warm, 1e-6))))
        times, cpus = [], []
        for _ in range(iters):
            barrier()
            c0, t0 = time.process_time(), time.perf_counter()
            allreduce(x)
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        out[nbytes] = float(np.median(times))
        cpu[nbytes] = float(np.median(cpus))
    return out, cpu


def worker_deepseek(sizes, budget):
    import numpy as np

    from deepseek import collectives as C

    pg = C.init_process_group()
    def agree(v):
        a = np.array([v])
        pg.allreduce(a, C.ReduceOp.MAX)
        return float(a[0])

    res = _time_sizes(pg.allreduce, lambda n: np.ones(n // 4, np.float32), sizes, budget,
                      pg.barrier, agree)
    return pg.rank, pg.size, pg.transport, res


def worker_gloo(sizes, budget):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    def agree(v):
        a = torch.tensor([v], dtype=torch.float64)
        dist.all_reduce(a, dist.ReduceOp.MAX)
        return float(a[0])

    res = _time_sizes(dist.all_reduce, lambda n: torch.ones(n // 4, dtype=torch.float32),
                      sizes, budget, dist.barrier, agree)
    return dist.get_rank(), dist.get_world_size(), "gloo", res


def worker_tcp(sizes, budget):
    """Both hosts send each other ``nbytes`` over one TCP connection at once."""
    import threading

    import numpy as np

    rank = int(os.environ["RANK"])
    port = int(os.environ["MASTER_PORT"])
    if rank == 0:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind((os.environ["BENCH_ADDR"], port))
        lst.listen(1)
        lst.settimeout(60)
        s, _ = lst.accept()
        lst.close()
    else:
        deadline = time.monotonic() + 60
        while True:
            try:
                s = socket.create_connection((os.environ["MASTER_ADDR"], port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    s.settimeout(None)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        s.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    one = bytearray(1)

    def barrier():
        s.sendall(b"b")
        s.recv_into(one, 1, socket.MSG_WAITALL)

    def exchange(x):
        rx = np.empty_like(x)
        t = threading.Thread(target=s.sendall, args=(x,))
        t.start()
        s.recv_into(rx, x.nbytes, socket.MSG_WAITALL)
        t.join()

    def agree(v):
        theirs = bytearray(8)
        s.sendall(struct.pack("!d", v))
        s.recv_into(theirs, 8, socket.MSG_WAITALL)
        return max(v, struct.unpack("!d", theirs)[0])

    res = _time_sizes(exchange, lambda n: np.ones(n, np.uint8), sizes, budget, barrier,
                      agree)
    s.close()
    return rank, 2, "tcp", res


def _bert_batch(batch, seq):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, 30522, (batch, seq)), np.zeros(batch, np.int64)


def _ddp_rounds(step, barrier, rounds):
    """Alternate a local (no-sync) and a synchronised step after a barrier each;
    (median local s, median distributed s, the medians of the process's CPU seconds
    in each -- every thread, user + system -- and of the main thread's)."""
    import numpy as np

    step(False)  # warm-up: buffers, connections, the first bucket views
    step(True)
    wall, cpu, main = ({False: [], True: []} for _ in range(3))
    for _ in range(rounds):
        for sync in (False, True):
            barrier()
            m0, c0, t0 = time.thread_time(), time.process_time(), time.perf_counter()
            step(sync)
            wall[sync].append(time.perf_counter() - t0)
            cpu[sync].append(time.process_time() - c0)
            main[sync].append(time.thread_time() - m0)
    return tuple(float(np.median(d[k])) for d in (wall, cpu, main) for k in (False, True))


def _mlp(lib, batch):
    """The issue's MLP (784-1024-1024-10, 7.4 MB of gradient) and a batch for it."""
    import numpy as np

    nn = lib.nn
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024),
                          nn.ReLU(), nn.Linear(1024, 10))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    return model, x, y


def _task(lib, model_name, batch, seq, config_cls, bert_cls, tensor, loss_of):
    """The model (deepseek's or PyTorch's: ``lib``) and ``loss(ddp)`` of one step on a
    fixed batch: the MLP's cross-entropy, or BERT's classification loss (``loss_of``
    reads it from the model's output)."""
    if model_name == "mlp":
        model, x, y = _mlp(lib, batch)
        x, y = tensor(x), tensor(y)
        return model, lambda ddp: lib.nn.functional.cross_entropy(ddp(x), y)
    model = bert_cls(config_cls(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    ids, labels = (tensor(a) for a in _bert_batch(batch, seq))
    return model, lambda ddp: loss_of(ddp(input_ids=ids, labels=labels))


class _ClockedEvents(list):
    """DDP's ``events`` list with the time of each: (what, bucket, perf_counter_ns)."""

    def append(self, ev):
        super().append((*ev, time.perf_counter_ns()))


class _StepTimeline:
    """What one synchronised DDP step did when (``--timeline``): per bucket, when it
    was full, launched, its allreduce issued, started and ended on the comm thread,
    and waited for; ms from the step's start. Also when backward's compute ended (the
    last bucket full), when ``backward()`` returned, and the CPU time of the main
    thread and of the whole process over the step (their difference: the comm and
    sender threads)."""

    def __init__(self, ddp):
        from deepseek.collectives import trace

        self.ddp, self.colls, self.last = ddp, [], None
        trace.add_sink(self.colls.append)

    def begin(self):
        self.ddp.events = _ClockedEvents()
        self.colls.clear()
        self.t0, self.c0, self.p0 = time.perf_counter_ns(), time.thread_time(), \
            time.process_time()

    def backward_returned(self):
        self.t_bw = time.perf_counter_ns()

    def end(self):
        ms = lambda t: round((t - self.t0) / 1e6, 1)  # noqa: E731
        evs, ddp = self.ddp.events, self.ddp
        ars = [c for c in self.colls if c["op"] == "allreduce"]
        rows = []
        for b in ddp.buckets:
            at = {w: ms(t) for w, i, t in evs if i == b.index()}
            row = {"bucket": b.index(), "MB": round(b.flat.nbytes / 2 ** 20, 1), **at}
            if b.index() < len(ars):  # one allreduce per bucket (no fp32 resend seen)
                c = ars[b.index()]
                row.update(issued=ms(c["issued"]), start=ms(c["t0"]), end=ms(c["t1"]))
            rows.append(row)
        self.last = {"buckets": rows, "compute_end": max(r.get("ready", 0) for r in rows),
                     "backward_returned": ms(self.t_bw),
                     "step": ms(time.perf_counter_ns()),
                     "main_cpu_ms": round(1e3 * (time.thread_time() - self.c0), 1),
                     "process_cpu_ms": round(1e3 * (time.process_time() - self.p0), 1),
                     "allreduces": len(ars)}
        self.ddp.events = None


def worker_ddp_deepseek(cfg, model_name, batch, seq, rounds, cap_mb, timeline=False):
    """deepseek DDP of a BERT-base classifier (or the MLP): (rank, local s,
    distributed s, buckets, the last synchronised step's timeline or None)."""
    import contextlib

    import deepseek as ds
    from deepseek import collectives as C
    from deepseek.distributed import DistributedDataParallel
    from deepseek.models.bert import BertConfig, BertForSequenceClassification

    wire, _, mode = cfg.partition("-")
    mode, _, dense = mode.partition("-")  # "fp16-overlap-dense": zero blocks sent too
    pg = C.init_process_group()
    ds.manual_seed(0)
    model, loss = _task(ds, model_name, batch, seq, BertConfig,
                        BertForSequenceClassification, ds.tensor,
                        lambda out: out["loss"])
    kw = {} if cap_mb is None else {"bucket_cap_mb": cap_mb}
    if dense:
        kw["skip_zero_blocks"] = False
    ddp = DistributedDataParallel(model, compression=None if wire == "fp32" else wire,
                                  overlap_comm=(mode == "overlap"), **kw)
    opt = ds.optim.SGD(model.parameters(), lr=1e-5)
    tl = _StepTimeline(ddp) if timeline else None

    def step(sync):
        if tl is not None and sync:
            tl.begin()
        with contextlib.nullcontext() if sync else ddp.no_sync():
            loss(ddp).backward()
        if tl is not None and sync:
            tl.backward_returned()
        opt.step()
        opt.zero_grad(set_to_none=False)  # the gradients stay views of the buckets
        if tl is not None and sync:
            tl.end()

    return pg.rank, _ddp_rounds(step, pg.barrier, rounds), len(ddp.buckets), tl and tl.last


def worker_ddp_torch(cfg, model_name, batch, seq, rounds, cap_mb):
    """PyTorch DDP (gloo) of Hugging Face's BERT-base classifier (or the MLP)."""
    import contextlib

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from transformers import BertConfig, BertForSequenceClassification

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model, loss = _task(torch, model_name, batch, seq, BertConfig,
                        BertForSequenceClassification, torch.from_numpy,
                        lambda out: out.loss)
    kw = {} if cap_mb is None else {"bucket_cap_mb": cap_mb}
    ddp = DistributedDataParallel(model, **kw)
    if cfg == "torch-fp16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    opt = torch.optim.SGD(model.parameters(), lr=1e-5)

    def step(sync):
        with contextlib.nullcontext() if sync else ddp.no_sync():
            loss(ddp).backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    return dist.get_rank(), _ddp_rounds(step, dist.barrier, rounds), None, None


def worker_main(args):
    import faulthandler

    faulthandler.dump_traceback_later(args.stacks_after, exit=False)  # if it hangs
    if args.worker.startswith("ddp:"):
        cfg = args.worker[4:].split("+", 1)[0]  # "+NAME=VALUE" settings: the env's
        fn = worker_ddp_torch if cfg.startswith("torch") else worker_ddp_deepseek
        extra = {"timeline": True} if args.timeline and fn is worker_ddp_deepseek else {}
        rank, times, nb, tl = fn(cfg, args.model, args.batch, args.seq, args.rounds,
                                 args.bucket_cap, **extra)
        keys = ("local", "dist", "local_cpu", "dist_cpu", "local_main", "dist_main")
        print("BENCH " + json.dumps({"rank": rank, **dict(zip(keys, times)),
                                     "buckets": nb, "timeline": tl}), flush=True)
        if cfg.startswith("torch"):
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
        else:
            from deepseek import collectives as C

            C.destroy_process_group()
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    fn = {"deepseek": worker_deepseek, "gloo": worker_gloo, "tcp": worker_tcp}[args.worker]
    rank, world, transport, (res, cpu) = fn(sizes, args.budget)
    print("BENCH " + json.dumps({"rank": rank, "world": world, "transport": transport,
                                 "times": {str(k): v for k, v in res.items()},
                                 "cpu": {str(k): v for k, v in cpu.items()}}),
          flush=True)
    if args.worker == "tcp":
        return
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


def _launch(cluster, system, nproc, worker_args, timeout):
    """Run this script's ``--worker`` across the cluster, ``nproc`` ranks per host:
    PyTorch's own processes for gloo/torch/tcp, deepseek-run agents otherwise. The
    parsed ``BENCH`` lines of every rank."""
    from netns import communicate_all

    # "deepseek+DEEPSEEK_TCP_STREAMS=2": a system with settings of its own
    system, *settings = system.split("+")
    port = _port()
    me = [os.path.abspath(__file__), *worker_args,
          "--stacks-after", str(max(30, timeout - 20))]
    procs = []
    for k in range(cluster.n):
        env = cluster.env(k, PYTHONPATH=ROOT, OMP_NUM_THREADS=1,
                          DEEPSEEK_TOKEN="bench-multihost-secret")
        env.pop("DEEPSEEK_CPU_TRANSPORT", None)
        if system == "deepseek-flat":
            env["DEEPSEEK_CPU_TRANSPORT"] = "zmq"
        for kv in settings:
            name, eq, value = kv.partition("=")
            if not eq:
                raise ValueError(f"system setting {kv!r}: expected NAME=VALUE")
            env[name] = value
        if system in ("gloo", "tcp") or system.startswith("torch"):
            env.update(GLOO_SOCKET_IFNAME="eth0", MASTER_ADDR=cluster.addrs[0],
                       MASTER_PORT=str(port), BENCH_ADDR=cluster.addrs[k])
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
    rows = []
    for k, (rc, out, err) in enumerate(outs):
        if rc != 0:
            import tempfile

            path = os.path.join(tempfile.gettempdir(), f"bench_multihost_{system}.err")
            with open(path, "w") as f:
                f.write("\n\n".join(e or "" for _, _, e in outs))
            raise RuntimeError(f"{system} failed (rc {rc}) on process {k}; every "
                               f"process's stderr in {path}:\n{(err or '')[-3000:]}")
        for line in out.splitlines():
            if "BENCH " in line:
                rows.append(json.loads(line.split("BENCH ", 1)[1]))
    return rows


def run_system(cluster, system, nproc, sizes, budget, timeout):
    """Run one allreduce system across the cluster; {size: seconds} (max over ranks),
    the transport it used and the world size."""
    base = system.split("+", 1)[0]
    worker = base if base in ("gloo", "tcp") else "deepseek"
    rows = _launch(cluster, system, nproc,
                   ["--worker", worker, "--sizes", ",".join(map(str, sizes)),
                    "--budget", str(budget)], timeout)
    # CPU: the mean over ranks of the process's CPU seconds (every thread, user +
    # system) per allreduce; the kernel's softirq work of the veth is not in it
    return {s: max(r["times"][str(s)] for r in rows) for s in sizes}, \
        rows[0]["transport"], rows[0]["world"], \
        {s: sum(r["cpu"][str(s)] for r in rows) / len(rows) for s in sizes}


def run_ddp(cluster, cfg, args, cap_mb, timeout):
    """One DDP job (2 hosts x 1 rank): local and distributed step seconds (max over
    ranks), deepseek's bucket count, and the CPU seconds of a local and of a
    distributed step, the process's and its main thread's (mean over ranks)."""
    extra = ["--bucket-cap", str(cap_mb)] if cap_mb is not None else []
    if args.timeline:
        extra.append("--timeline")
    rows = _launch(cluster, cfg, 1,
                   ["--worker", f"ddp:{cfg}", "--model", args.model,
                    "--batch", str(args.batch), "--seq",
                    str(args.seq), "--rounds", str(args.rounds), *extra], timeout)
    for r in sorted(rows, key=lambda r: r["rank"]):
        if r.get("timeline"):
            _print_timeline(cfg, r["rank"], r["local"], r["timeline"])
    # CPU: the mean over the ranks of the process's (main thread's) CPU seconds
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    return (max(r["local"] for r in rows), max(r["dist"] for r in rows),
            rows[0]["buckets"], mean("local_cpu"), mean("dist_cpu"), mean("local_main"),
            mean("dist_main"))


def _print_timeline(cfg, rank, local_s, tl):
    """One rank's last synchronised step, bucket by bucket (ms from the step's start)."""
    print(f"timeline {cfg} rank {rank}: compute ends {tl['compute_end']:.0f}, backward() "
          f"returns {tl['backward_returned']:.0f}, step {tl['step']:.0f} ms (local step "
          f"{1e3 * local_s:.0f}); CPU main {tl['main_cpu_ms']:.0f}, process "
          f"{tl['process_cpu_ms']:.0f} ms; {tl['allreduces']} allreduces")
    cols = ("bucket", "MB", "ready", "launch", "issued", "start", "end", "done")
    print("  " + " ".join(f"{c:>7}" for c in cols))
    for b in tl["buckets"]:
        print("  " + " ".join(f"{b.get(c, '-'):>7}" for c in cols))


def main_ddp(args):
    """The DDP overhead suite (see the module docstring)."""
    from netns import Cluster

    cfgs = args.ddp_configs.split(",")
    caps = [None] if not args.bucket_caps else [float(c) for c in args.bucket_caps.split(",")]
    jobs = [(c, cap) for c in cfgs for cap in (caps if not c.startswith("torch") else [None])]
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        jobs = [j for j in jobs if not j[0].startswith("torch")]
    results = []
    for rate in args.rates.split(","):
        with Cluster(2) as cluster:
            if rate_bits(rate) is not None:
                cluster.shape(rate)
            runs = {}
            for _ in range(args.repeats):
                for cfg, cap in jobs:
                    try:
                        runs.setdefault((cfg, cap), []).append(
                            run_ddp(cluster, cfg, args, cap, timeout=args.ddp_timeout))
                    except RuntimeError as e:
                        if args.repeats == 1:
                            raise
                        print(f"bench_multihost: {rate} {cfg}: {e}", file=sys.stderr)
            for (cfg, cap), rs in runs.items():
                local = _median([r[0] for r in rs])
                dist = _median([r[1] for r in rs])
                local_cpu, dist_cpu, local_main, dist_main = (
                    _median([r[k] for r in rs]) for k in (3, 4, 5, 6))
                results.append({"rate": rate, "config": cfg, "bucket_cap_mb": cap,
                                "buckets": rs[0][2], "local_s": local, "dist_s": dist,
                                "overhead": 1 - local / dist, "runs": len(rs),
                                "run_overheads": [1 - r[0] / r[1] for r in rs],
                                "local_cpu_s": local_cpu, "dist_cpu_s": dist_cpu,
                                "cpu_overhead": 1 - local_cpu / dist_cpu,
                                "local_main_cpu_s": local_main,
                                "dist_main_cpu_s": dist_main,
                                "model": args.model, "batch": args.batch,
                                "seq": args.seq})
    head = f"{'link':>7} {'config':>18} {'cap MB':>6} {'buckets':>7} {'local ms':>9} " \
           f"{'DDP ms':>9} {'overhead':>8} {'per run':>15} {'CPU ms local/DDP':>17} " \
           f"{'CPU overhead':>12} {'main CPU local/DDP':>18}"
    what = (f"BERT-base (110M parameters), batch {args.batch} x {args.seq} tokens"
            if args.model == "bert" else f"MLP 784-1024-1024-10, batch {args.batch}")
    print(f"{what} per rank, 2 hosts x 1 rank, medians of {args.rounds} rounds x "
          f"{args.repeats} runs")
    print(head)
    print("-" * len(head))
    for r in results:
        cap = "-" if r["bucket_cap_mb"] is None else f"{r['bucket_cap_mb']:g}"
        nb = "-" if r["buckets"] is None else str(r["buckets"])
        per_run = ",".join(f"{100 * o:.0f}%" for o in r["run_overheads"])
        cpu = f"{1e3 * r['local_cpu_s']:.0f}/{1e3 * r['dist_cpu_s']:.0f}"
        main = f"{1e3 * r['local_main_cpu_s']:.0f}/{1e3 * r['dist_main_cpu_s']:.0f}"
        print(f"{r['rate']:>7} {r['config']:>18} {cap:>6} {nb:>7} "
              f"{1e3 * r['local_s']:>9.0f} {1e3 * r['dist_s']:>9.0f} "
              f"{100 * r['overhead']:>7.0f}% {per_run:>15} {cpu:>17} "
              f"{100 * r['cpu_overhead']:>11.0f}% {main:>18}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


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
    p.add_argument("--suite", choices=("link", "hier", "ddp"), default="link",
                   help="link: deepseek vs gloo, 2 hosts x 1 rank; hier: 2 hosts x 2 "
                        "ranks, hierarchical vs flat vs gloo; ddp: BERT-base DDP "
                        "overhead")
    p.add_argument("--ddp-configs", default="fp32-sync,fp16-overlap,torch",
                   help="ddp suite: fp32|fp16|bf16 - sync|overlap, torch, torch-fp16")
    p.add_argument("--bucket-caps", help="ddp suite: DDP bucket caps in MB to try "
                                         "(default: DDP's default)")
    p.add_argument("--bucket-cap", type=float, help=argparse.SUPPRESS)
    p.add_argument("--model", choices=("bert", "mlp"), default="bert",
                   help="ddp suite: BERT-base, or the issue's 7.4 MB MLP")
    p.add_argument("--batch", type=int, help="ddp suite: samples per rank (bert: 1, "
                                             "mlp: 256)")
    p.add_argument("--seq", type=int, default=64, help="ddp suite: tokens per sequence")
    p.add_argument("--rounds", type=int, default=3,
                   help="ddp suite: local + distributed steps per job")
    p.add_argument("--ddp-timeout", type=float, default=400, help=argparse.SUPPRESS)
    p.add_argument("--timeline", action="store_true",
                   help="ddp suite: print each deepseek job's last synchronised step, "
                        "bucket by bucket (when full, launched, reduced, waited for)")
    p.add_argument("--systems", help="comma-separated: deepseek, deepseek-flat, gloo, "
                                     "tcp; deepseek+NAME=VALUE+... runs deepseek with "
                                     "those environment variables")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the systems this many times, interleaved; medians per size")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--stacks-after", type=float, default=300, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args)

    from netns import Cluster, unavailable_reason

    import signal

    # a SIGTERM (timeout(1), a CI job cancelled) unwinds like an exception, so the
    # Cluster's close() deletes the namespaces and kills what runs in them
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    why = unavailable_reason()
    if why:
        print(f"bench_multihost: {why}", file=sys.stderr)
        return 2
    if args.suite == "ddp":
        if args.batch is None:
            args.batch = 256 if args.model == "mlp" else 1
        if args.rates == "1gbit,10gbit":
            args.rates = "10gbit"  # the claim is about 10 Gbit/s
        return main_ddp(args)
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
        ["deepseek", "gloo", "tcp"])
    if nproc != 1 and "tcp" in systems:
        p.error("the tcp ceiling is one connection between 2 hosts x 1 rank")
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
            runs = {}
            for _ in range(args.repeats):
                for system in systems:
                    # the slowest size at the link rate, a few times over, plus start-up
                    worst = max(sizes) * 8 / (bits or 5e9)
                    try:
                        runs.setdefault(system, []).append(run_system(
                            cluster, system, nproc, sizes, args.budget,
                            timeout=180 + len(sizes) * (args.budget + 10 * worst)))
                    except RuntimeError as e:
                        if args.repeats == 1:
                            raise
                        # one failed (or hung, then killed) run of several: say so and
                        # go on; the median is over the runs that finished
                        print(f"bench_multihost: {rate} {system}: {e}", file=sys.stderr)
            for system in systems:
                if not runs.get(system):
                    raise RuntimeError(f"every run of {system} at {rate} failed")
                _, transport, world, _ = runs[system][0]
                for s in sizes:
                    t = _median([r[0][s] for r in runs[system]])
                    cpu = _median([r[3][s] for r in runs[system]])
                    busbw = 2 * (world - 1) / world * s / t
                    results.append({"rate": rate, "system": system,
                                    "transport": transport, "world": world,
                                    "bytes": s, "seconds": t, "busbw_GBps": busbw / 1e9,
                                    "cpu_seconds": cpu,
                                    "runs": len(runs[system]),
                                    "link_share": busbw * 8 / bits if bits else None})
    _table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _table(results):
    w = max([14] + [len(r["system"]) for r in results])
    head = f"{'link':>7} {'system':>{w}} {'transport':>9} {'ranks':>5} {'size':>9} " \
           f"{'time ms':>9} {'busbw GB/s':>10} {'% link':>7} {'vs gloo':>7} " \
           f"{'CPU ms/GB':>9}"
    print(head)
    print("-" * len(head))
    gloo = {(r["rate"], r["bytes"]): r["seconds"] for r in results if r["system"] == "gloo"}
    for r in results:
        share = f"{100 * r['link_share']:.0f}%" if r["link_share"] else "-"
        g = gloo.get((r["rate"], r["bytes"]))
        vs = f"{g / r['seconds']:.2f}x" if g and r["system"] != "gloo" else ""
        print(f"{r['rate']:>7} {r['system']:>{w}} {r['transport']:>9} {r['world']:>5} "
              f"{fmt_size(r['bytes']):>9} {1e3 * r['seconds']:>9.2f} "
              f"{r['busbw_GBps']:>10.3f} {share:>7} {vs:>7} "
              f"{1e3 * r['cpu_seconds'] / (r['bytes'] / 1e9):>9.0f}")


if __name__ == "__main__":
    sys.exit(main())
