"""The runnable examples: they train for real and reach their stated accuracy."""
import os
import re
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(*args, timeout=120, launcher=(), script="train_digits.py"):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    cmd = [sys.executable, *launcher, os.path.join(ROOT, "examples", script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def final_accuracy(out):
    return float(re.search(r"test accuracy: ([0-9.]+)$", out, re.M).group(1))


def test_digits_data_file():
    with np.load(os.path.join(ROOT, "examples", "data", "digits.npz")) as d:
        assert d["X_train"].shape == (1437, 8, 8) and d["X_test"].shape == (360, 8, 8)
        assert d["X_train"].dtype == np.uint8 and d["X_train"].max() <= 16
        assert sorted(np.unique(d["y_test"])) == list(range(10))


def test_train_digits_reaches_95_percent_and_is_deterministic():
    out = run_example("--seed", "0")
    assert re.search(r"^epoch +1 ", out, re.M), out  # progress per epoch
    acc = float(re.search(r"^test accuracy: ([0-9.]+)$", out, re.M).group(1))
    assert acc >= 0.95, out
    again = run_example("--seed", "0", "--epochs", "20")
    assert again.splitlines()[-1] == out.splitlines()[-1]  # same seed, same result
    assert [l for l in again.splitlines() if l.startswith("epoch")] == \
        [l for l in out.splitlines() if l.startswith("epoch")]


def test_train_digits_ddp_two_workers_fp16_reaches_single_process_accuracy():
    """The README's main job: deepseek-run --nproc 2 with DDP and fp16 compression."""
    single = final_accuracy(run_example("--seed", "0"))
    out = run_example("--seed", "0", launcher=("-m", "deepseek.launcher", "--nproc", "2"),
                      script="train_digits_ddp.py", timeout=180)
    assert "[rank0]:" in out and "[rank1]:" not in out  # only rank 0 prints
    assert "2 worker(s)" in out and "compression fp16" in out, out
    assert "weights identical on all 2 ranks: True" in out, out
    acc = final_accuracy(out)
    assert acc >= 0.95 and abs(acc - single) <= 0.01, (acc, single, out)
