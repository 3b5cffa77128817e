"""Regenerate docs/img/timeline.png: the merged timeline of a real 2-rank DDP run,
rendered by headless Chromium in deepseek's bundled trace viewer.

    python scripts/make_timeline_screenshot.py [--out docs/img/timeline.png]

It runs ``deepseek-run --nproc 2 --timeline`` on a 6-layer MLP whose DDP buckets are
small (each about a layer), so the allreduce of the last layers' bucket runs while
the backward of the first layers is still computing; picks the last full training
step of rank 0 (between two optimizer steps); opens the viewer on that window
(``#from=..&to=..``) and screenshots it. Prints the overlap it measured (communication
time inside backward time, per rank) so the picture's claim is checked, not only
shown. Needs the chromium binary (Debian's ``chromium`` package).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def worker():
    """The job each rank runs (this file with --worker, under deepseek-run)."""
    import numpy as np
    import deepseek as ds
    import deepseek.nn as nn
    import deepseek.distributed as dist
    from deepseek.data import DataLoader, TensorDataset

    dist.init_process_group()
    rank = dist.get_rank()
    ds.manual_seed(0)
    layers = []
    for _ in range(6):
        layers += [nn.Linear(384, 384), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(384, 10))
    # ~0.6 MB per Linear: 0.5 MB buckets make about one bucket per layer
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.5)
    opt = ds.optim.SGD(ddp.parameters(), lr=0.01)
    rng = np.random.default_rng(rank)
    x = ds.tensor(rng.standard_normal((64 * STEPS, 384)).astype(np.float32))
    y = ds.tensor(np.zeros(64 * STEPS, dtype=np.int64))
    for xb, yb in DataLoader(TensorDataset(x, y), batch_size=64):
        loss = nn.functional.cross_entropy(ddp(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist.destroy_process_group()


def _overlap(events, lo, hi):
    """Per rank: (backward us, communication us, communication us inside backward)
    within [lo, hi]."""
    out = {}
    for r in sorted({e["pid"] for e in events}):
        def spans(pred):
            return [(max(e["ts"], lo), min(e["ts"] + e["dur"], hi)) for e in events
                    if e["pid"] == r and pred(e) and e["ts"] < hi and e["ts"] + e["dur"] > lo]
        bwd = spans(lambda e: e["cat"] == "backward")
        comm = spans(lambda e: e["cat"] == "collective")
        inside = sum(max(0.0, min(b1, c1) - max(b0, c0)) for c0, c1 in comm for b0, b1 in bwd)
        out[r] = (sum(b - a for a, b in bwd), sum(b - a for a, b in comm), inside)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img", "timeline.png"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", default="1400,250", help="window W,H of the screenshot")
    a = ap.parse_args()
    if a.worker:
        return worker()
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser")
                     if shutil.which(n)), None)
    if chromium is None:
        sys.exit("make_timeline_screenshot: no chromium binary (apt-get install chromium)")
    tmp = tempfile.mkdtemp(prefix="ds-timeline-shot-")
    try:
        trace = os.path.join(tmp, "trace.json")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("DEEPSEEK_TIMELINE", None)
        r = subprocess.run([sys.executable, "-m", "deepseek.launcher", "--nproc", "2",
                            "--timeout", "60", "--timeline", trace, os.path.abspath(__file__),
                            "--worker"], env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            sys.exit(f"the 2-rank job failed:\n{r.stderr[-3000:]}")
        doc = json.load(open(trace))
        xs = [e for e in doc["traceEvents"] if e.get("ph") == "X"]
        opt0 = sorted(e["ts"] + e["dur"] for e in xs if e["pid"] == 0 and e["cat"] == "optimizer")
        lo, hi = opt0[-3], opt0[-2]  # one whole step, not the last (the job's tail)
        pad = 0.03 * (hi - lo)
        for rank, (b, c, inside) in _overlap(xs, lo, hi).items():
            print(f"rank {rank}: backward {b / 1e3:.2f} ms, communication {c / 1e3:.2f} ms, "
                  f"of which {inside / 1e3:.2f} ms ({100 * inside / max(c, 1e-9):.0f}%) "
                  f"overlaps backward")
        import deepseek.viz as viz
        page = viz.trace_viewer(trace, os.path.join(tmp, "timeline.html"),
                                title="deepseek-run --nproc 2 --timeline: one DDP step")
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        shot = os.path.join(tmp, "shot.png")
        prof = os.path.join(tmp, "chromium-profile")
        url = f"file://{page}#from={lo - pad:.3f}&to={hi + pad:.3f}"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                        f"--user-data-dir={prof}", f"--screenshot={shot}",
                        f"--window-size={a.size}", "--virtual-time-budget=3000", url],
                       capture_output=True, text=True, timeout=120)
        if not os.path.exists(shot):
            sys.exit("make_timeline_screenshot: chromium wrote no screenshot")
        shutil.copyfile(shot, a.out)
        print(f"wrote {a.out} ({os.path.getsize(a.out) // 1024} KB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
