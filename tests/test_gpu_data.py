"""``pin_memory=True`` on a GPU: every array of a batch arrives on the device, through
pinned host memory and a side stream, with the same values, order and non-array leaves
as the batches without it; with worker processes and without; ``pin_memory_device``
picks the GPU.

Skips without cupy and a GPU (scripts/gpu_check.py runs it on a GPU machine); the
CPU-only behaviour is tested in test_data_fast.py.
"""
import numpy as np
import pytest

import deepseek as ds
from deepseek.backend import cupy_available, to_device
from deepseek.data import DataLoader, Dataset, FastDataLoader

pytestmark = [pytest.mark.skipif(not cupy_available(), reason="needs cupy and a GPU"),
              pytest.mark.timeout(120)]


class Samples(Dataset):
    """Dict samples: an image-like array, a label, a string."""

    def __len__(self):
        return 24

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        return {"x": rng.standard_normal((3, 8, 8)).astype(np.float32), "y": i, "s": f"s{i}"}


def _host_view(batch):
    """(device of every array leaf, the batch with its arrays as nested host lists)."""
    devices = []

    def conv(x):
        if isinstance(x, ds.Tensor):
            devices.append(str(x.device))
            return to_device(x._data, "cpu").tolist()
        if isinstance(x, np.ndarray) or type(x).__module__.startswith("cupy"):
            devices.append("cuda" if type(x).__module__.startswith("cupy") else "cpu")
            return to_device(x, "cpu").tolist()
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        return x
    return devices, conv(batch)


@pytest.mark.parametrize("loader_cls,workers", [(DataLoader, 0), (FastDataLoader, 1),
                                                (FastDataLoader, 2)])
def test_pinned_batches_arrive_on_the_gpu_with_the_same_values(shm_guard, loader_cls, workers):
    ref = [_host_view(b)[1] for b in loader_cls(Samples(), batch_size=5, num_workers=workers)]
    got = [_host_view(b) for b in loader_cls(Samples(), batch_size=5, num_workers=workers,
                                             pin_memory=True)]
    assert len(got) == len(ref) == 5
    for devices, _ in got:
        assert devices and all(d.startswith("cuda") for d in devices), devices
    assert [b for _, b in got] == ref


def test_pin_memory_device_picks_the_gpu(shm_guard):
    import cupy
    last = cupy.cuda.runtime.getDeviceCount() - 1
    for batch in FastDataLoader(Samples(), batch_size=8, num_workers=1, pin_memory=True,
                                pin_memory_device=f"cuda:{last}"):
        assert batch["x"]._data.device.id == last


def test_a_batch_can_be_used_while_the_next_one_is_copied(shm_guard):
    """Compute on each batch as the loop gets it (the next batch's copy is in flight on
    the side stream): the results are those of the host batches."""
    want = [float(b["x"].numpy().astype(np.float64).sum())
            for b in FastDataLoader(Samples(), batch_size=4, num_workers=1)]
    got = []
    for b in FastDataLoader(Samples(), batch_size=4, num_workers=1, pin_memory=True):
        y = (b["x"] * 2.0).sum() / 2.0
        got.append(float(to_device(y._data, "cpu")))
    np.testing.assert_allclose(got, want, rtol=1e-5)
