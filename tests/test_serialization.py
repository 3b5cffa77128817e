"""deepseek.save / deepseek.load and the safetensors files behind them."""
import json
import os
import pickle

import ml_dtypes
import numpy as np
import pytest

import deepseek as ds
from deepseek import serialization as S
from deepseek.serialization import CheckpointError

DTYPES = ["float16", "bfloat16", "float32", "float64", "int8", "uint8", "int16", "int32",
          "int64", "bool"]


def sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    dt = ds.dtypes.as_dtype(dtype)
    if dt == np.bool_:
        return rng.random(shape) > 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    a = (rng.standard_normal(shape) * 100).astype(np.float32).astype(dt)
    if a.size >= 3:  # specials survive bit-exactly
        a.reshape(-1)[:3] = np.array([np.inf, -np.inf, -0.0], dtype=np.float32).astype(dt)
    return a


def bits(a):
    return a.view(np.uint16) if a.dtype == ml_dtypes.bfloat16 else a


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3), (), (0,), (2, 0, 3), (1, 1, 7)])
def test_every_dtype_and_shape_round_trips_bit_exactly(tmp_path, dtype, shape):
    a = np.asarray(sample(dtype, shape))
    path = tmp_path / "t.ckpt"
    ds.save({"x": ds.tensor(a), "arr": a}, path)
    out = ds.load(path)
    assert isinstance(out["x"], ds.Tensor) and isinstance(out["arr"], np.ndarray)
    for got in (out["x"].numpy(), out["arr"]):
        assert got.dtype == a.dtype and got.shape == a.shape
        np.testing.assert_array_equal(bits(got), bits(a))


def test_nested_structure_and_plain_values(tmp_path):
    t = ds.randn(3, 4)
    obj = {
        "model": {"w": t, "b": ds.zeros(4)},
        "list": [1, -2, 2 ** 70, 1.5, float("nan"), float("inf"), -float("inf"), None, True,
                 False, "héllo \u2603", [], {}],
        "tuple": (1, (2, "x"), t),
        3: "int key",
        (1, 2): "tuple key",
        "__tricky__": {"__tensor__": "not a tensor"},
        "same": t,
        "scalar": ds.tensor(2.5),
        "np_scalars": [np.float32(0.25), np.int64(7), np.bool_(True)],
    }
    path = tmp_path / "nested.ckpt"
    ds.save(obj, path)
    out = ds.load(path)
    assert set(out) == set(obj)
    np.testing.assert_array_equal(out["model"]["w"].numpy(), t.numpy())
    lst = out["list"]
    assert lst[:4] == [1, -2, 2 ** 70, 1.5] and np.isnan(lst[4])
    assert lst[5:] == [float("inf"), -float("inf"), None, True, False, "héllo \u2603", [], {}]
    assert type(lst[8]) is bool and type(lst[0]) is int
    assert out["tuple"][:2] == (1, (2, "x")) and isinstance(out["tuple"], tuple)
    assert out[3] == "int key" and out[(1, 2)] == "tuple key"
    assert out["__tricky__"] == {"__tensor__": "not a tensor"}
    assert out["same"] is out["model"]["w"] is out["tuple"][2]  # stored once, one object
    assert out["scalar"].shape == () and out["scalar"].item() == 2.5
    assert out["np_scalars"] == [0.25, 7, True]


def test_requires_grad_and_non_contiguous_tensors(tmp_path):
    w = ds.nn.Parameter(ds.randn(4, 6))
    view = ds.tensor(np.arange(24, dtype=np.float32).reshape(4, 6)).transpose(0, 1)[::2]
    ds.save({"w": w, "view": view}, tmp_path / "a")
    out = ds.load(tmp_path / "a", map_location="cpu")
    assert out["w"].requires_grad and not out["view"].requires_grad
    np.testing.assert_array_equal(out["view"].numpy(), np.asarray(view.numpy()))


def test_model_and_optimizer_state_dicts_round_trip(tmp_path):
    nn = ds.nn
    ds.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = ds.optim.AdamW(model.parameters(), lr=1e-2)
    x = ds.randn(4, 5)
    model(x).sum().backward()
    opt.step()
    ds.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": 3}, tmp_path / "m")
    ck = ds.load(tmp_path / "m")
    ds.manual_seed(1)
    other = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    other.load_state_dict(ck["model"])
    with ds.no_grad():
        np.testing.assert_array_equal(other(x).numpy(), model(x).numpy())
    opt2 = ds.optim.AdamW(other.parameters(), lr=1e-2)
    opt2.load_state_dict(ck["opt"])
    assert ck["epoch"] == 3
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    for k, st in opt.state_dict()["state"].items():
        for name, v in st.items():
            np.testing.assert_array_equal(opt2.state_dict()["state"][k][name].numpy(), v.numpy())


def read_header(path):
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    return n, json.loads(raw[8:8 + n]), raw[8 + n:]


def test_file_is_plain_safetensors(tmp_path):
    tensors = {"b": ds.ones(2, 3, dtype=ds.float16), "a": np.arange(5, dtype=np.int64),
               "z": ds.zeros(0, dtype=ds.bfloat16)}
    path = tmp_path / "w.safetensors"
    S.save_file(tensors, path, metadata={"format": "pt"})
    n, header, data = read_header(path)
    assert n % 8 == 0 and header["__metadata__"] == {"format": "pt"}
    assert header["a"] == {"dtype": "I64", "shape": [5], "data_offsets": [0, 40]}
    assert header["b"]["dtype"] == "F16" and header["z"]["dtype"] == "BF16"
    assert len(data) == 40 + 12
    out = S.load_file(path)
    assert sorted(out) == ["a", "b", "z"] and out["z"].shape == (0,)
    np.testing.assert_array_equal(out["a"].numpy(), np.arange(5))
    # ds.load of a plain safetensors file: the flat dict
    assert sorted(ds.load(path)) == ["a", "b", "z"]


def test_interop_with_the_safetensors_library(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.array([1, 2], np.int32)}
    st.save_file(a, str(tmp_path / "lib.safetensors"))
    got = S.load_file(tmp_path / "lib.safetensors")
    for k in a:
        np.testing.assert_array_equal(got[k].numpy(), a[k])
    S.save_file(a, tmp_path / "ours.safetensors")
    back = st.load_file(str(tmp_path / "ours.safetensors"))
    for k in a:
        np.testing.assert_array_equal(back[k], a[k])


# ---- atomic writes ---------------------------------------------------------------------

@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
def test_a_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, fail_at):
    path = tmp_path / "ck.safetensors"
    ds.save({"v": ds.ones(3), "n": 1}, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full (simulated)")
    if fail_at == "write":
        real_fdopen = os.fdopen

        class DiesMidWrite:  # the length and header reach the disk, then the data fails
            def __init__(self, f):
                self.f, self.writes = f, 0

            def write(self, b):
                self.writes += 1
                if self.writes > 3:
                    boom()
                return self.f.write(b)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self.f.__exit__(*exc)
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: DiesMidWrite(real_fdopen(*a, **k)))
    else:
        monkeypatch.setattr(os, fail_at, boom)
    with pytest.raises(OSError, match="simulated"):
        ds.save({"v": ds.zeros(1000), "w": ds.zeros(10), "n": 2}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ck.safetensors"]
    assert path.read_bytes() == before
    assert ds.load(path)["n"] == 1
    with pytest.raises(OSError):  # a new file that fails is never created at all
        monkeypatch.setattr(os, "replace", boom)
        ds.save({"v": ds.ones(2)}, tmp_path / "new.ckpt")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ck.safetensors"]


def test_unsupported_objects_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="nothing is pickled"):
        ds.save({"f": object()}, tmp_path / "x")
    with pytest.raises(TypeError, match="dtype"):
        ds.save({"c": np.zeros(2, np.complex64)}, tmp_path / "x")
    assert os.listdir(tmp_path) == []


# ---- damaged files -----------------------------------------------------------------------

@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.ckpt"
    ds.save({"a": ds.arange(10).float(), "b": [ds.ones(2, 2, dtype=ds.int32), "text"]}, path)
    return path


def rewrite_header(path, edit):
    n, header, data = read_header(path)
    edit(header)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(len(h).to_bytes(8, "little") + h + data)


@pytest.mark.parametrize("cut", [0, 5, 8, 20, -1, -9])
def test_truncated_files_are_refused_naming_the_file(good, cut):
    raw = good.read_bytes()
    good.write_bytes(raw[:cut] if cut >= 0 else raw[:len(raw) + cut])
    with pytest.raises(CheckpointError) as e:
        ds.load(good)
    assert str(good) in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("edit,match", [
    (lambda h: h["t0"].update(dtype="F8"), "unknown dtype 'F8'"),
    (lambda h: h["t0"].update(shape=[11]), "needs 44 bytes"),
    (lambda h: h["t0"].update(shape=[-1]), "bad shape"),
    (lambda h: h["t0"].update(data_offsets=[0, 10 ** 9]), "out of range"),
    (lambda h: h["t0"].update(data_offsets="x"), "bad data_offsets"),
    (lambda h: h["t1"].update(data_offsets=[0, 16]), "overlap|gap|cover"),
    (lambda h: h["__metadata__"].update({"deepseek.structure": "{"}), "not valid JSON"),
    (lambda h: h["__metadata__"].update({"deepseek.structure": '{"x": {"__tensor__": "t9"}}'}),
     "does not hold"),
    (lambda h: h["__metadata__"].update({"deepseek.format": "other/9"}), "format"),
    (lambda h: h["__metadata__"].update({"deepseek.crc32": "00000000"}), "checksum"),
    (lambda h: h.update(__metadata__=[1]), "__metadata__"),
])
def test_altered_headers_are_refused(good, edit, match):
    rewrite_header(good, edit)
    with pytest.raises(CheckpointError, match=match) as e:
        ds.load(good)
    assert str(good) in str(e.value)


def test_corrupt_bytes_and_bad_framing_are_refused(good):
    raw = bytearray(good.read_bytes())
    raw[-3] ^= 0xFF  # one flipped bit in the tensor data: caught by the checksum
    good.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        ds.load(good)
    raw[-3] ^= 0xFF
    good.write_bytes(bytes(raw) + b"junk")  # appended bytes
    with pytest.raises(CheckpointError, match="cover"):
        ds.load(good)
    good.write_bytes((2 ** 60).to_bytes(8, "little") + bytes(raw[8:]))  # absurd header length
    with pytest.raises(CheckpointError, match="header length"):
        ds.load(good)
    n = int.from_bytes(raw[:8], "little")
    raw[8] = ord("[")  # the header is no longer JSON / no longer an object
    good.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="JSON"):
        ds.load(good)
    good.write_bytes((8).to_bytes(8, "little") + b"[1]     ")
    with pytest.raises(CheckpointError, match="JSON object"):
        ds.load(good)
    assert n > 0


def test_load_never_unpickles(good, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("pickle was used")
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    out = ds.load(good)
    assert out["b"][1] == "text"
    # a pickle file is refused as not-a-checkpoint, not executed
    evil = good.parent / "evil.pkl"
    evil.write_bytes(b"\x80\x04\x95" + b"\x00" * 40)
    with pytest.raises(CheckpointError):
        ds.load(evil)


@pytest.mark.parametrize("depth", [100_000, 5_000])
def test_deeply_nested_headers_are_checkpoint_errors(good, depth):
    # json recurses per nesting level: a hostile file must not escape as RecursionError
    deep = '{"x": ' + "[" * depth + "]" * depth + "}"
    rewrite_header(good, lambda hd: hd["__metadata__"].update({"deepseek.structure": deep}))
    with pytest.raises(CheckpointError, match="nested too deeply|not valid JSON") as e:
        ds.load(good)
    assert str(good) in str(e.value)
    n, header, data = read_header(good)
    h = ('{"a": ' + "[" * depth + "]" * depth + "}").encode()
    h += b" " * (-len(h) % 8)
    good.write_bytes(len(h).to_bytes(8, "little") + h + data)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ds.load(good)


# ---- a writer killed mid-save ------------------------------------------------------------

_SLOW_SAVER = r"""
import sys, numpy as np, deepseek as ds
big = ds.tensor(np.ones(32 << 20, np.float32))   # 128 MiB: each save takes a while
print("ready", flush=True)
while True:
    ds.save({"w": big}, sys.argv[1])
"""


def _kill_mid_write(tmp_path, sig):
    """Start a process that saves in a loop; send ``sig`` once a temp file exists."""
    import signal
    import subprocess
    import sys
    import time
    target = tmp_path / "ck.safetensors"
    p = subprocess.Popen([sys.executable, "-c", _SLOW_SAVER, str(target)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        deadline = time.time() + 30
        while not any(n.endswith(".tmp") for n in os.listdir(tmp_path)):
            assert time.time() < deadline, "the saver never started a write"
            time.sleep(0.002)
        p.send_signal(sig)
        assert p.wait(timeout=30) == -sig  # it still dies of the signal, as without us
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return target


def test_sigterm_mid_save_removes_the_temp_file(tmp_path):
    import signal
    _kill_mid_write(tmp_path, signal.SIGTERM)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_the_next_save_sweeps_temps_of_a_killed_writer_only(tmp_path):
    import signal
    target = _kill_mid_write(tmp_path, signal.SIGKILL)  # no handler can run: temp stays
    stale = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(stale) == 1 and f".{os.getpid()}." not in stale[0]
    # a temp of a live writer (this process) and one of another target are left alone
    from deepseek._atomic import _host
    mine = tmp_path / f".ck.safetensors.{_host()}.{os.getpid()}.abc.tmp"
    mine.write_bytes(b"x")
    other = tmp_path / (stale[0].replace(".ck.safetensors.", ".other.safetensors.", 1))
    other.write_bytes(b"x")
    ds.save({"v": ds.ones(2)}, target)
    left = sorted(n for n in os.listdir(tmp_path) if n.endswith(".tmp"))
    assert left == sorted([mine.name, other.name])
    assert ds.load(target)["v"].tolist() == [1.0, 1.0]
