"""examples/train_digits_trainer.py: the Trainer with ModelCheckpoint, EarlyStopping and
LearningRateMonitor trains the digits MLP for real, and a rerun resumes."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_digits_trainer.py")


def run(*args, timeout=180):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_trainer_example_keeps_the_best_checkpoints_and_resumes(tmp_path):
    out_dir = str(tmp_path / "ckpt")
    out = run("--epochs", "8", "--out", out_dir)
    acc = float(re.search(r"^test accuracy: ([0-9.]+)$", out, re.M).group(1))
    assert acc >= 0.94, out
    best = re.search(r"^best: (\S+) \(val_acc ([0-9.]+)\)$", out, re.M)
    # the test set is the validation set: the best file's accuracy is its val_acc
    assert abs(float(best.group(2)) - acc) < 1e-3, out
    kept = sorted(os.listdir(out_dir))
    assert len(kept) == 3 and "last.ckpt" in kept and best.group(1) in kept, kept
    assert re.search(r"lr 3\.00e-03 -> \S+", out), out
    # the same folder again: it resumes at the end of the finished run, trains nothing
    again = run("--epochs", "8", "--out", out_dir)
    assert "resumed at the end" in again and "epochs: " not in again, again
    assert again.splitlines()[-1] == out.splitlines()[-1]
