"""Data loading: deepseek's FastDataLoader next to its threaded loader and PyTorch's.

Three measurements, the systems interleaved round by round (the machine may be shared:
medians over --reps rounds, and the ratios of the medians):

* throughput: batches/s in steady state (from the first batch to the last), and the
  CPU time per batch of the whole run (main + workers, start-up included), with a
  CPU-heavy Python transform -- per-sample augmentation of a 3x64x64 uint8 image in
  numpy, many calls on 8x8 patches that hold the GIL (about --sample-ms ms per
  sample, calibrated at start) -- at
  1 and 2 workers: deepseek FastDataLoader (worker processes, shared-memory handover),
  deepseek DataLoader(worker_mode="thread"), torch.utils.data.DataLoader;
* handover: ms per batch of a large batch that costs nothing to make (256x3x64x64
  float32 = 12.6 MB; the dataset returns it ready, batch_size=None) with one worker, and
  the same batch collated from 256 samples: what moving it to the main process costs;
* stream: the same throughput for an IterableDataset of the same images, sharded by
  worker id (``get_worker_info``), at 2 workers: FastDataLoader next to PyTorch's;
* input-bound: a training loop whose step is --step-ms of Python work (holding the
  GIL, as an eager framework's step does) with a transform of about 80% of that per
  batch (threads then share the GIL with the step; processes do not), one worker: the
  loader's wait per step as the profiler reports it (``deepseek.profiler``'s
  ``DataLoader.__next__ (wait)`` events), for FastDataLoader and the threaded loader.
  The first ``prefetch_factor`` steps are the pipeline's fill (no loader can hand out a
  batch before it is made) and are reported apart from the steady state after them.
  On a machine with no more cores than busy processes (step + worker) the worker's
  batch takes longer than its CPU time: measure on an idle machine.

    python scripts/bench_data.py [--reps 3] [--batches 16] [--json out.json]
"""
import argparse
import statistics
import sys
import time

import numpy as np

from _report import write_json  # (scripts/ is sys.path[0])

IMG = (3, 64, 64)


def _augment(img, rng, rounds):
    """A per-sample augmentation written the way Python data pipelines often are: a
    random crop and flip, then ``rounds`` passes of per-patch contrast jitter over the
    16x16 patches of one channel -- numpy calls on 256 elements each, too small for
    numpy to release the GIL, so the Python interpreter is busy throughout."""
    y, x = rng.integers(0, 8, 2)
    out = np.zeros(IMG, np.float32)
    crop = img[:, y:y + 56, x:x + 56].astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, :, ::-1]
    out[:, 4:60, 4:60] = crop
    for r in range(rounds):
        c = r % 3
        for py in range(0, 64, 16):
            for px in range(0, 64, 16):
                p = out[c, py:py + 16, px:px + 16]
                m = p.mean()
                p -= m
                p *= 0.9 + 0.2 * rng.random()
                p += m
    return out


class Images:
    """A map-style dataset of random images with :func:`_augment` (works with both
    frameworks: returns numpy arrays)."""

    def __init__(self, n, rounds):
        self.data = np.random.default_rng(0).integers(0, 255, (n,) + IMG, dtype=np.uint8)
        self.rounds = rounds

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        return _augment(self.data[i], rng, self.rounds), i


class ImageStream:
    """The images of an :class:`Images` as a stream, each worker taking every
    ``num_workers``-th (``info`` is the framework's get_worker_info); made an
    IterableDataset of the framework by :func:`stream_of`."""

    def __init__(self, images, info):
        self.images, self.info = images, info

    def __iter__(self):
        info = self.info()
        w, k = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(w, len(self.images), k):
            yield self.images[i]


def stream_of(system, images):
    """An ImageStream that ``system``'s loader takes as an IterableDataset."""
    if system == "deepseek":
        import deepseek.data as dd
        return type("DsImageStream", (ImageStream, dd.IterableDataset), {})(
            images, dd.get_worker_info)
    import torch.utils.data as tud
    return type("TorchImageStream", (ImageStream, tud.IterableDataset), {})(
        images, tud.get_worker_info)


class Ready:
    """``n`` times the same ready-made batch (or sample): only the handover costs."""

    def __init__(self, n, shape):
        self.n, self.arr = n, np.random.default_rng(0).random(shape, dtype=np.float32)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.arr


def calibrate(sample_ms):
    """Rounds of :func:`_augment` that take about ``sample_ms`` ms of CPU per sample
    here (CPU time, not wall time: on a machine shared with other jobs, wall time
    would make the transform look heavier than it is)."""
    d1, d2 = Images(8, 1), Images(8, 2)
    t = []
    for d in (d1, d2):
        t0 = time.process_time()
        for _ in range(3):
            for i in range(8):
                d[i]
        t.append((time.process_time() - t0) / 24)
    per_round = max(t[1] - t[0], 1e-5)
    base = max(t[0] - per_round, 0.0)
    return max(1, round((sample_ms / 1e3 - base) / per_round))


def make_loader(system, dataset, workers, **kw):
    if system == "deepseek":
        from deepseek.data import FastDataLoader
        return FastDataLoader(dataset, num_workers=workers, **kw)
    if system == "threads":
        from deepseek.data import DataLoader
        return DataLoader(dataset, num_workers=workers, worker_mode="thread", **kw)
    import torch.utils.data as tud
    return tud.DataLoader(dataset, num_workers=workers, **kw)


def _cpu():
    """CPU seconds of this process (all threads) and of its reaped children."""
    import resource
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def steady_rate(loader, batches):
    """(batches/s after the first batch, seconds to the first batch, CPU ms per batch
    of the whole run: main process, threads and the workers once reaped)."""
    import gc
    c0 = _cpu()
    t_start = time.perf_counter()
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in it:
        n += 1
        if n == batches:
            break
    t1 = time.perf_counter()
    del it
    gc.collect()
    time.sleep(0.05)
    cpu = _cpu() - c0
    return n / (t1 - t0), t0 - t_start, cpu / (n + 1) * 1e3


def per_batch_ms(loader, batches):
    it = iter(loader)
    for _ in range(2):
        next(it)                # warm: slots made, pages touched
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        del b
    dt = time.perf_counter() - t0
    del it
    return dt / batches * 1e3


def busy(ms):
    end = time.perf_counter() + ms / 1e3
    x = 0
    while time.perf_counter() < end:
        x += 1
    return x


def input_bound(system, dataset, batch_size, step_ms, steps, fill=2):
    """Loader wait per step (ms) of a loop of ``step_ms`` busy steps, from the profiler:
    (mean over the ``fill`` first steps, mean over the ``steps`` after them)."""
    import deepseek.profiler as dprof
    loader = make_loader(system, dataset, 1, batch_size=batch_size)
    it = iter(loader)
    next(it)                         # worker start-up: not a step
    with dprof.profile() as prof:
        for _ in range(fill + steps):
            next(it)
            busy(step_ms)
    del it
    waits = sorted((e for e in prof.events() if e.name == "DataLoader.__next__ (wait)"),
                   key=lambda e: e.start_ns)
    if len(waits) != fill + steps:
        raise RuntimeError(f"the profiler saw {len(waits)} loader waits, expected "
                           f"{fill + steps}")
    ms = [e.cpu_time_total / 1e3 for e in waits]
    return sum(ms[:fill]) / fill, sum(ms[fill:]) / steps


def med(xs):
    return statistics.median(xs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batches", type=int, default=16, help="timed batches per run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--sample-ms", type=float, default=1.0)
    ap.add_argument("--step-ms", type=float, default=30.0)
    ap.add_argument("--systems", default="deepseek,threads,torch")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    systems = args.systems.split(",")
    try:
        import torch  # noqa: F401
        torch.set_num_threads(1)
    except ImportError:
        systems = [s for s in systems if s != "torch"]
    results = {"throughput": {}, "handover": {}, "input_bound": {}}

    rounds = calibrate(args.sample_ms)
    images = Images(args.batch_size * (args.batches + 2) * 2, rounds)
    t0 = time.process_time()
    for i in range(32):
        images[i]
    sample_ms = (time.process_time() - t0) / 32 * 1e3
    print(f"transform: {sample_ms:.2f} ms/sample of CPU ({rounds} rounds), batch "
          f"{args.batch_size}: {sample_ms * args.batch_size:.1f} ms of transform per batch",
          flush=True)

    # ---- throughput (after one untimed run of each system: imports, first forks)
    for system in systems:
        steady_rate(make_loader(system, images, 1, batch_size=args.batch_size), 2)
    for rep in range(args.reps):
        for workers in (1, 2):
            for system in systems:
                loader = make_loader(system, images, workers, batch_size=args.batch_size)
                rate, first, cpu = steady_rate(loader, args.batches)
                del loader
                results["throughput"].setdefault(f"{system}/{workers}", []).append(rate)
                results.setdefault("cpu_ms", {}).setdefault(f"{system}/{workers}", []).append(cpu)
    print("\nthroughput, batches/s (median of %d; higher is better)" % args.reps)
    print(f"{'workers':>8} " + " ".join(f"{s:>10}" for s in systems) +
          "   fast/torch  fast/threads")
    for workers in (1, 2):
        row = {s: med(results["throughput"][f"{s}/{workers}"]) for s in systems}
        line = f"{workers:>8} " + " ".join(f"{row[s]:>10.2f}" for s in systems)
        if "torch" in row:
            line += f"   {row['deepseek'] / row['torch']:>10.2f}"
        else:
            line += " " * 13
        if "threads" in row:
            line += f"  {row['deepseek'] / row['threads']:>12.2f}"
        print(line, flush=True)
    print("CPU ms per batch, whole run incl. worker start-up (median; a machine-load-"
          "independent view of the same runs)")
    for workers in (1, 2):
        print(f"{workers:>8} " + " ".join(
            f"{med(results['cpu_ms'][f'{s}/{workers}']):>10.1f}" for s in systems))

    # ---- stream (IterableDataset), 2 workers
    stream_systems = [s for s in systems if s in ("deepseek", "torch")]
    for rep in range(args.reps):
        for system in stream_systems:
            loader = make_loader(system, stream_of(system, images), 2,
                                 batch_size=args.batch_size)
            rate, _, cpu = steady_rate(loader, args.batches)
            del loader
            results.setdefault("stream", {}).setdefault(system, []).append(rate)
    if stream_systems:
        row = {s: med(results["stream"][s]) for s in stream_systems}
        print("\nIterableDataset sharded by worker id, 2 workers, batches/s (median of %d)"
              % args.reps)
        print("  " + "   ".join(f"{s}: {row[s]:.2f}" for s in stream_systems) +
              (f"   fast/torch: {row['deepseek'] / row['torch']:.2f}" if "torch" in row
               else ""), flush=True)

    # ---- handover
    big = (256,) + IMG
    hand_systems = [s for s in systems if s != "threads"]
    for rep in range(args.reps):
        for system in hand_systems:
            ready = Ready(args.batches + 4, big)
            ms = per_batch_ms(make_loader(system, ready, 1, batch_size=None), args.batches)
            results["handover"].setdefault(f"{system}/ready", []).append(ms)
            samples = Ready((args.batches + 4) * 256, IMG)
            ms = per_batch_ms(make_loader(system, samples, 1, batch_size=256), args.batches)
            results["handover"].setdefault(f"{system}/collated", []).append(ms)
    print(f"\nhandover of a 256x3x64x64 float32 batch ({np.prod(big) * 4 / 1e6:.1f} MB), "
          "1 worker, ms/batch (median of %d; lower is better)" % args.reps)
    print(f"{'batch':>22} " + " ".join(f"{s:>10}" for s in hand_systems) + "   torch/fast")
    for kind, label in (("ready", "ready-made (no collate)"), ("collated", "collated from 256")):
        row = {s: med(results["handover"][f"{s}/{kind}"]) for s in hand_systems}
        line = f"{label:>22} " + " ".join(f"{row[s]:>10.2f}" for s in hand_systems)
        if "torch" in row:
            line += f"   {row['torch'] / row['deepseek']:>10.2f}"
        print(line, flush=True)

    # ---- input-bound
    per_batch = max(1, int(args.step_ms * 0.8 / max(sample_ms, 1e-3)))
    ib_systems = [s for s in systems if s in ("deepseek", "threads")]
    for rep in range(args.reps):
        for system in ib_systems:
            fill, steady = input_bound(system, images, per_batch, args.step_ms, args.batches)
            results["input_bound"].setdefault(system, []).append(steady)
            results.setdefault("input_bound_fill", {}).setdefault(system, []).append(fill)
    print(f"\ninput-bound? step {args.step_ms:.0f} ms of Python work, transform "
          f"{per_batch * sample_ms:.1f} ms/batch of CPU, 1 worker: loader wait per step "
          "from the profiler, ms (median of %d)" % args.reps)
    for system in ib_systems:
        w = med(results["input_bound"][system])
        f = med(results["input_bound_fill"][system])
        print(f"{system:>10}: steady {w:8.2f} ms ({w / args.step_ms * 100:5.1f}% of the step)"
              f"   fill (first 2 steps) {f:8.2f} ms")

    results["config"] = {"sample_ms": sample_ms, "rounds": rounds, "batch_size": args.batch_size,
                         "batches": args.batches, "reps": args.reps, "step_ms": args.step_ms}
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
