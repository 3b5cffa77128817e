#!/usr/bin/env python
"""GPU check for the collectives: the NCCL tests plus the allreduce benchmark.

    python scripts/gpu_check.py            # on a machine with cupy + a GPU; < 3 minutes

Runs tests/test_collectives_nccl.py (which skips without cupy/GPU), then
scripts/bench_allreduce.py with the nccl backend over 8 B .. 64 MiB (one rank per GPU,
at least one) and the cpu backend for comparison. Exits non-zero if the tests fail.
Prints what it skipped and why, so a CPU-only run is a quick, honest no-op.
"""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, timeout):
    print("$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=ROOT, timeout=timeout)
        code = p.returncode
    except subprocess.TimeoutExpired:
        print(f"!! timed out after {timeout}s", flush=True)
        code = 124
    print(f"-> exit {code} in {time.monotonic() - t0:.1f}s", flush=True)
    return code


def main():
    sys.path.insert(0, ROOT)
    from deepseek.collectives.backends import nccl

    ok = nccl.available()
    print(f"nccl available: {ok}")
    code = run([sys.executable, "-m", "pytest", "-q", "-x",
                "tests/test_collectives_nccl.py"], 150)
    if ok:
        import cupy

        n = max(1, min(2, cupy.cuda.runtime.getDeviceCount()))
        run([sys.executable, "scripts/bench_allreduce.py", "--nproc", str(n), "--systems",
             "deepseek-nccl", "--max-size", "64MiB", "--ops", "allreduce", "--budget",
             "0.1", "--timeout", "90"], 100)
    else:
        print("skipping the nccl benchmark: no cupy/NCCL/GPU")
    return 0 if code in (0, 5) else code  # 5: pytest collected/ran nothing (all skipped)


if __name__ == "__main__":
    sys.exit(main())
