"""Save/load with file objects, a clear error for whole modules, and reading PyTorch
``.pt`` checkpoints with the restricted reader (tensors and plain containers only)."""
import io
import os

import numpy as np
import pytest

import deepseek as ds

torch = pytest.importorskip("torch")


def test_save_and_load_through_file_objects(tmp_path):
    buf = io.BytesIO()
    ds.save({"w": ds.arange(6.0).reshape(2, 3), "step": 4, "names": ("a", "b")}, buf)
    buf.seek(0)
    out = ds.load(buf)
    assert out["step"] == 4 and out["names"] == ("a", "b")
    np.testing.assert_array_equal(out["w"].numpy(), np.arange(6.0).reshape(2, 3))
    with open(tmp_path / "c.ckpt", "wb") as f:
        ds.save([ds.ones(2)], f)
    with open(tmp_path / "c.ckpt", "rb") as f:
        assert ds.load(f)[0].tolist() == [1.0, 1.0]


def test_saving_a_module_says_to_save_its_state_dict():
    with pytest.raises(TypeError, match=r"state_dict\(\)"):
        ds.save(ds.nn.Linear(2, 2), io.BytesIO())
    with pytest.raises(ValueError, match="never unpickles"):
        ds.load(io.BytesIO(b""), weights_only=False)


def test_reads_a_pytorch_checkpoint(tmp_path):
    tm = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2).half())
    opt = torch.optim.Adam(tm.parameters())
    tm[0](torch.randn(5, 3)).sum().backward()
    opt.step()
    path = tmp_path / "model.pt"
    torch.save({"model": tm.state_dict(), "optimizer": opt.state_dict(), "epoch": 7,
                "strided": torch.arange(6).view(2, 3).t(), "scalar": torch.tensor(2.5)}, path)
    ck = ds.load(path)
    assert ck["epoch"] == 7 and ck["scalar"].item() == 2.5 and ck["scalar"].shape == ()
    np.testing.assert_array_equal(ck["strided"].numpy(), np.arange(6).reshape(2, 3).T)
    assert ck["model"]["2.weight"].dtype == ds.float16
    dm = ds.nn.Sequential(ds.nn.Linear(3, 4), ds.nn.BatchNorm1d(4), ds.nn.Linear(4, 2))
    dm[2].half()
    dm.load_state_dict(ck["model"])
    np.testing.assert_array_equal(dm[0].weight.detach().numpy(), tm[0].weight.detach().numpy())
    assert int(dm[1].num_batches_tracked.item()) == int(tm[1].num_batches_tracked.item())
    st = ck["optimizer"]["state"][0]
    np.testing.assert_allclose(st["exp_avg"].numpy(), opt.state_dict()["state"][0]["exp_avg"].numpy())
    buf = io.BytesIO()
    torch.save(tm.state_dict(), buf)
    buf.seek(0)
    assert list(ds.load(buf)) == list(tm.state_dict())


def test_refuses_code_in_a_pytorch_checkpoint(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    import pickle
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        ds.load(tmp_path / "evil.pt")
    assert not marker.exists()
