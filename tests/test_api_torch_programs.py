"""Programs written against PyTorch's API (tests/scripts/torch_style_*.py) run
unchanged with deepseek in place of torch, and their losses match torch's."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
HERE = os.path.dirname(os.path.abspath(__file__))


def _run(script, lib):
    r = subprocess.run([sys.executable, os.path.join(HERE, "scripts", script), "--lib", lib],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{script} under {lib} failed:\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script", ["torch_style_cnn.py", "torch_style_charlm.py"])
def test_same_losses_as_torch(script):
    ours, theirs = _run(script, "deepseek"), _run(script, "torch")
    assert len(ours["losses"]) == len(theirs["losses"]) > 0
    for a, b in zip(ours["losses"], theirs["losses"]):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), (ours["losses"], theirs["losses"])
    if "correct" in ours:
        assert ours["correct"] == theirs["correct"] and ours["loss_str"] == theirs["loss_str"]
