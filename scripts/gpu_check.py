#!/usr/bin/env python
"""GPU check: the NCCL and CuPy-engine tests plus the allreduce benchmark.

    python scripts/gpu_check.py            # on a machine with cupy + a GPU; < 3 minutes

Runs tests/test_collectives_nccl.py, tests/test_gpu_engine.py,
tests/test_gpu_indexing.py, tests/test_profiler_gpu.py (the profiler's device time
from CUDA events), tests/test_gpu_data.py (the loaders' pin_memory) and
tests/test_gpu_amp.py (fp16 autocast + GradScaler on CuPy) (all skip without
cupy/GPU), then scripts/bench_allreduce.py with deepseek's nccl backend and PyTorch's
NCCL side by side over 8 B .. 256 MiB (one rank per GPU, at most two; with one GPU a
world of one, which measures per-call cost, not links), scripts/bench_engine.py
on the GPU (CuPy against torch CUDA) and scripts/bench_amp_gpu.py (the fp16 autocast
step of a transformer layer against fp32, next to torch.autocast). Exits non-zero if the tests
fail. Prints what it skipped and why, so a CPU-only run is a quick, honest no-op.
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
    if ok:
        import cupy
        from cupy.cuda import nccl as cnccl

        print(f"cupy {cupy.__version__}, NCCL {cnccl.get_version()}, "
              f"{cupy.cuda.runtime.getDeviceCount()} GPU(s): "
              f"{cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}", flush=True)
    code = run([sys.executable, "-m", "pytest", "-q", "-rA", "tests/test_collectives_nccl.py",
                "tests/test_gpu_engine.py", "tests/test_gpu_indexing.py",
                "tests/test_profiler_gpu.py", "tests/test_gpu_data.py",
                "tests/test_gpu_amp.py"], 240)
    if ok:
        n = max(1, min(2, cupy.cuda.runtime.getDeviceCount()))
        run([sys.executable, "scripts/bench_allreduce.py", "--nproc", str(n), "--systems",
             "deepseek-nccl,torch-nccl", "--max-size", "256MiB", "--ops",
             "allreduce,allgather,reduce_scatter", "--budget", "0.05", "--timeout", "120"],
            150)
        run([sys.executable, "scripts/bench_engine.py", "--device", "cuda", "--threads", "1",
             "--steps", "20"], 150)
        run([sys.executable, "scripts/bench_amp_gpu.py", "--reps", "10"], 150)
    else:
        print("skipping the nccl benchmark: no cupy/NCCL/GPU")
    return 0 if code in (0, 5) else code  # 5: pytest collected/ran nothing (all skipped)


if __name__ == "__main__":
    sys.exit(main())
