#!/usr/bin/env python
"""Mixed precision on the GPU: fp32 against fp16 autocast, next to torch.autocast.

    python scripts/bench_amp_gpu.py [--reps 10] [--batch 64] [--seq 512] [--d 1024]

Issue 14's GPU goal: a training step (forward, backward, SGD) of a transformer encoder
layer at a size that fills the GPU (batch 64, seq 512, d 1024, 16 heads, feed-forward
4 x d) under fp16 autocast + GradScaler is >= 1.5x faster than the fp32 step. deepseek
runs on CuPy; PyTorch's same layer with ``torch.autocast("cuda")`` and its GradScaler runs
in the same process. Each step ends with a device synchronisation, so the time is that
of completed work; the four configurations are interleaved and the table gives medians.
Without cupy and a GPU it says so and exits 0 (scripts/gpu_check.py runs it).
"""
import argparse
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _timing import interleaved_medians  # noqa: E402  (scripts/ is sys.path[0])


def _layer(nn, d, heads):
    return nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=0.0,
                                      batch_first=True)


def _step(model, x, opt, scaler, region, sync):
    """One step; ``region``: the autocast context (or a null one for fp32)."""
    opt.zero_grad()
    with region():
        loss = (model(x).float() ** 2).mean()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sync()


def deepseek_steps(a):
    import cupy
    import deepseek as ds
    from deepseek.amp import GradScaler, autocast
    ds.manual_seed(0)
    model = _layer(ds.nn, a.d, a.heads).to("cuda")
    x = ds.randn(a.batch, a.seq, a.d).cuda()
    opt = ds.optim.SGD(model.parameters(), lr=1e-4)
    sync = cupy.cuda.Device().synchronize
    fp32, amp = GradScaler(enabled=False), GradScaler()
    return {"deepseek fp32": lambda: _step(model, x, opt, fp32, contextlib.nullcontext, sync),
            "deepseek fp16": lambda: _step(model, x, opt, amp, lambda: autocast("cuda"), sync)}


def torch_steps(a):
    import torch
    if not torch.cuda.is_available():
        return {}
    torch.manual_seed(0)
    model = _layer(torch.nn, a.d, a.heads).cuda()
    x = torch.randn(a.batch, a.seq, a.d, device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    sync = torch.cuda.synchronize
    fp32, amp = torch.amp.GradScaler("cuda", enabled=False), torch.amp.GradScaler("cuda")
    return {"torch fp32": lambda: _step(model, x, opt, fp32, contextlib.nullcontext, sync),
            "torch fp16": lambda: _step(model, x, opt, amp,
                                        lambda: torch.autocast("cuda", torch.float16), sync)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    a = ap.parse_args()
    from deepseek.backend import cupy_available
    if not cupy_available():
        print("bench_amp_gpu: skipped, no cupy and GPU")
        return 0
    runs = deepseek_steps(a)
    try:
        runs.update(torch_steps(a))
    except ImportError:
        print("(torch not installed: deepseek only)")
    t = {k: 1e3 * v for k, v in interleaved_medians(runs, a.reps, warmup=2).items()}
    print(f"transformer layer, batch {a.batch}, seq {a.seq}, d {a.d}, {a.heads} heads; "
          f"step ms (medians of {a.reps}, interleaved)\n")
    print("| system | fp32 ms | fp16 autocast ms | speed-up (goal >= 1.5x) |")
    print("|---|---:|---:|---:|")
    for s in ("deepseek", "torch"):
        if f"{s} fp32" in t:
            f32, f16 = t[f"{s} fp32"], t[f"{s} fp16"]
            print(f"| {s} | {f32:.1f} | {f16:.1f} | {f32 / f16:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
