#!/usr/bin/env python
"""Benchmark deepseek.native kernels against the numpy way and a plain memory copy.

For each kernel: GB/s of the C kernel, GB/s of the same call on the numpy path
(deepseek.native's fallback: what numpy needs to do the same work), the speed-up, and
the kernel's bandwidth as a share of np.copyto on the same machine (the practical
limit). GB/s counts the bytes each kernel must read and write once
(e.g. fp32->fp16: 4 + 2 bytes per element). Median of --repeats runs.

    python scripts/bench_native.py [--mib 64] [--repeats 5] [--isa avx2] [--json]

Goals (issue 3): conversions and reductions >= 50% of copy and >= 4x numpy;
fused Adam >= 3x numpy's multi-pass version.
"""
import argparse
import json
import sys

import ml_dtypes
import numpy as np

from _timing import median_seconds  # (scripts/ is sys.path[0])
from deepseek import native as N

BF16 = np.dtype(ml_dtypes.bfloat16)


def timeit(fn, repeats):
    """Median seconds of ``fn`` over ``repeats`` calls, after one warm-up call."""
    return median_seconds(fn, repeats, warmup=1)


def cases(n):
    """(name, bytes moved, goal, make) where make() returns a zero-arg callable."""
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal(n, dtype=np.float32)

    def arr(dtype, scale=1.0):
        return (f32 * scale).astype(dtype)

    def conv(fn, src_dtype, dst_dtype):
        src, out = arr(src_dtype), np.empty(n, dst_dtype)
        return lambda: fn(src, out=out)

    def red(op, dtype, k):
        xs = [arr(dtype) + i for i in range(k)]
        out = np.empty(n, dtype)
        return lambda: N.reduce(op, xs, out)

    def inplace(op, dtype):
        acc, other = arr(dtype), arr(dtype)
        return lambda: N.reduce_inplace(op, acc, other)

    def unscale(dtype):
        g = arr(dtype)
        return lambda: N.unscale_(g, 1.0)     # 1.0 keeps values stable across repeats

    def sgd(half=None):
        p, g, b = arr(np.float32), arr(np.float32, 1e-3), np.zeros(n, np.float32)
        h = np.empty(n, half) if half else None
        return lambda: N.sgd_step(p, g, b, lr=1e-3, momentum=0.9, weight_decay=1e-4,
                                  param_half=h)

    def adam(fn, half=None):
        p, g = arr(np.float32), arr(np.float32, 1e-3)
        m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
        h = np.empty(n, half) if half else None
        return lambda: fn(p, g, m, v, lr=1e-3, step=10, weight_decay=1e-2, param_half=h)

    c = "conv/reduce"
    return [
        ("f32 -> f16", 6 * n, c, lambda: conv(N.f32_to_f16, np.float32, np.float16)),
        ("f16 -> f32", 6 * n, c, lambda: conv(N.f16_to_f32, np.float16, np.float32)),
        ("f32 -> bf16", 6 * n, c, lambda: conv(N.f32_to_bf16, np.float32, BF16)),
        ("bf16 -> f32", 6 * n, c, lambda: conv(N.bf16_to_f32, BF16, np.float32)),
        ("sum f32 acc+=x", 12 * n, c, lambda: inplace("sum", np.float32)),
        ("sum f32 x4", 20 * n, c, lambda: red("sum", np.float32, 4)),
        ("sum f16 acc+=x", 6 * n, c, lambda: inplace("sum", np.float16)),
        ("avg f16 x4", 10 * n, c, lambda: red("avg", np.float16, 4)),
        ("sum bf16 acc+=x", 6 * n, c, lambda: inplace("sum", BF16)),
        ("max bf16 x4", 10 * n, c, lambda: red("max", BF16, 4)),
        ("sum i32 x4", 20 * n, c, lambda: red("sum", np.int32, 4)),
        ("unscale f32", 8 * n, "", lambda: unscale(np.float32)),
        ("unscale f16", 4 * n, "", lambda: unscale(np.float16)),
        ("unscale bf16", 4 * n, "", lambda: unscale(BF16)),
        ("sgd momentum", 20 * n, "", lambda: sgd()),
        ("sgd + bf16 copy", 22 * n, "", lambda: sgd(BF16)),
        ("adam", 28 * n, "adam", lambda: adam(N.adam_step)),
        ("adamw + f16 copy", 30 * n, "adam", lambda: adam(N.adamw_step, np.float16)),
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=float, default=64, help="fp32 buffer size in MiB (64)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--isa", help="force avx512 / avx2 / scalar (default: best)")
    ap.add_argument("--only", help="run the kernels whose name contains this text")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    n = int(args.mib * 2**20) // 4
    native = bool(N.isa_list())
    if args.isa and native:
        N._ext.set_isa(args.isa)

    src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
    copy_gbs = 8 * n / timeit(lambda: np.copyto(dst, src), args.repeats) / 1e9
    rows = [{"kernel": "np.copyto f32", "native_gbs": None, "numpy_gbs": round(copy_gbs, 2),
             "speedup": None, "pct_of_copy": 100.0, "goal": ""}]
    del src, dst
    for name, nbytes, goal, make in cases(n):
        if args.only and args.only not in name:
            continue
        fn = make()
        with N.use_native(False):
            t_np = timeit(fn, args.repeats)
        t_c = None
        if native:
            with N.use_native(True):
                t_c = timeit(fn, args.repeats)
        del fn
        row = {"kernel": name, "numpy_gbs": round(nbytes / t_np / 1e9, 2), "goal": goal,
               "native_gbs": round(nbytes / t_c / 1e9, 2) if t_c else None,
               "speedup": round(t_np / t_c, 2) if t_c else None,
               "pct_of_copy": round(100 * nbytes / t_c / 1e9 / copy_gbs, 1) if t_c else None}
        rows.append(row)
        if not args.json:
            print_row(row, header=len(rows) == 2, copy_gbs=copy_gbs, isa=N.isa(), mib=args.mib)
    if args.json:
        json.dump({"isa": N.isa(), "mib": args.mib, "repeats": args.repeats, "rows": rows},
                  sys.stdout, indent=2)
        print()
    elif not native:
        print("(deepseek._native is not built: numpy column only)")


def print_row(row, header, copy_gbs, isa, mib):
    if header:
        print(f"deepseek.native kernels, {mib:g} MiB fp32 buffers, isa={isa}; GB/s = bytes "
              f"read + written / time (median)")
        print(f"{'kernel':<18} {'native GB/s':>11} {'numpy GB/s':>10} {'speedup':>8} "
              f"{'% of copy':>9}  goal")
        print("-" * 72)
        print(f"{'np.copyto f32':<18} {'':>11} {copy_gbs:>10.2f} {'':>8} {100:>8.0f}%")

    def fmt(x, spec):
        return format(x, spec) if x is not None else "-"
    goal = {"conv/reduce": ">=4x, >=50%", "adam": ">=3x"}.get(row["goal"], "")
    print(f"{row['kernel']:<18} {fmt(row['native_gbs'], '>11.2f')} {row['numpy_gbs']:>10.2f} "
          f"{fmt(row['speedup'], '>7.1f')}x {fmt(row['pct_of_copy'], '>8.0f')}%  {goal}",
          flush=True)


if __name__ == "__main__":
    main()
