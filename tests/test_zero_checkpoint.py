"""Sharded checkpoints (deepseek.distributed.checkpoint): resharding on load, atomicity."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import zero_cases as cases
from deepseek.testing.multiprocess import spawn_ranks


def _same(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def saved3(tmp_path_factory):
    """A ZeRO-3 checkpoint written by 3 ranks."""
    path = str(tmp_path_factory.mktemp("dcp") / "ck")
    res = spawn_ranks(cases.ckpt_save, 3, timeout=120, args=(3, path))
    return path, res[0]


@pytest.mark.parametrize("world,stage", [(2, 3), (4, 3), (2, 2), (2, 0), (2, 1)])
def test_reshard_on_load(saved3, world, stage, shm_guard):
    path, ref = saved3
    for got in spawn_ranks(cases.ckpt_load, world, timeout=120, args=(stage, path)):
        _same(got, ref)


def test_load_on_one_plain_process(saved3):
    path, ref = saved3
    _same(cases.ckpt_load(0, 1, "single", path), ref)


def test_corrupt_shard_names_file(saved3, tmp_path):
    import shutil
    import deepseek.distributed.checkpoint as dcp
    path, _ = saved3
    copy = str(tmp_path / "ck")
    shutil.copytree(path, copy)
    ver = open(os.path.join(copy, "LATEST")).read().strip()
    f = os.path.join(copy, ver, "shard-00001.safetensors")
    data = bytearray(open(f, "rb").read())
    data[-3] ^= 0xFF
    open(f, "wb").write(bytes(data))
    model = cases.build_model("lm", seed=5)
    with pytest.raises(dcp.CheckpointError, match="shard-00001"):
        dcp.load(model.state_dict(), copy)
    other = cases.build_model("mlp")
    with pytest.raises(dcp.CheckpointError, match="inp.weight"):
        dcp.load(other.state_dict(), path)


_KILLER = r"""
import os, sys, time
import numpy as np
import deepseek as ds
import deepseek.distributed.checkpoint as dcp
path, marker = sys.argv[1], sys.argv[2]
def pause(tmp):
    open(marker, "w").close()
    time.sleep(60)
dcp._pause_before_commit = pause
dcp.save({"w": ds.tensor(np.full(1000, 2.0, np.float32))}, path)
"""


def test_sigkill_during_save_keeps_previous(tmp_path):
    import deepseek as ds
    import deepseek.distributed.checkpoint as dcp
    path, marker = str(tmp_path / "ck"), str(tmp_path / "marker")
    dcp.save({"w": ds.tensor(np.full(1000, 1.0, np.float32))}, path)
    proc = subprocess.Popen([sys.executable, "-c", _KILLER, path, marker])
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(marker):
            assert proc.poll() is None and time.monotonic() < deadline, "child never paused"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    target = {"w": ds.tensor(np.zeros(1000, np.float32))}
    dcp.load(target, path)
    assert (target["w"].numpy() == 1.0).all()  # the previous checkpoint, whole
    assert any(n.endswith(".tmp") for n in os.listdir(path))  # the crashed write
    dcp.save({"w": ds.tensor(np.full(1000, 3.0, np.float32))}, path)
    assert not any(n.endswith(".tmp") for n in os.listdir(path))  # swept
    dcp.load(target, path)
    assert (target["w"].numpy() == 3.0).all()
