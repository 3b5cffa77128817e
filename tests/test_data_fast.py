"""FastDataLoader / DataLoader worker processes: shared-memory handover, order, failures,
shutdown, resume (1 rank, 2 ranks, 2 -> 3) and memory-mapped datasets.

Every test that starts workers uses ``shm_guard`` (no /dev/shm segment left) and checks
that its worker processes are gone.
"""
import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import deepseek as ds
from deepseek.data import (DataLoader, Dataset, DistributedSampler, FastDataLoader,
                           IterableDataset, MemmapDataset, MemmapWriter, TensorDataset,
                           WorkerDiedError, get_worker_info)

pytestmark = pytest.mark.timeout(60)


class Samples(Dataset):
    """Dict samples with arrays, numbers and strings; ``mode`` makes index 13 fail."""

    def __init__(self, n=40, mode=None, delay=0.0):
        self.n, self.mode, self.delay = n, mode, delay

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == 13:
            if self.mode == "raise":
                raise ValueError(f"bad sample {i}")
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.mode == "sleep":
                time.sleep(5)
        if self.delay:
            time.sleep(self.delay * ((i * 7919) % 5) / 4)   # uneven: workers finish out of order
        return {"x": np.full((3, 2), i, np.float32), "i": i, "s": f"s{i}",
                "pair": (np.int64(i), float(i) / 2)}


def as_lists(batches):
    def conv(x):
        if isinstance(x, ds.Tensor):
            return ("T", x.numpy().tolist())
        if isinstance(x, np.ndarray):
            return ("A", x.tolist())
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        return x
    return [conv(b) for b in batches]


def alive(pids):
    out = []
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] != "Z":
                    out.append(pid)
        except (ProcessLookupError, FileNotFoundError):
            pass
    return out


def worker_pids(it):
    inner = it.inner
    return [p.pid for p in inner.pool._procs]


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_same_batches_as_the_plain_loader(workers, shm_guard):
    ref = as_lists(DataLoader(Samples(), batch_size=4, shuffle=True, seed=7))
    got = as_lists(FastDataLoader(Samples(), batch_size=4, shuffle=True, seed=7,
                                  num_workers=workers))
    assert got == ref
    # the arrays, the numbers and the strings all came through
    assert ref[0]["s"] == [f"s{i}" for i in ref[0]["i"][1]]
    X, y = ds.tensor(np.arange(60, dtype=np.float32).reshape(20, 3)), ds.arange(20)
    t_ref = as_lists(DataLoader(TensorDataset(X, y), batch_size=6, shuffle=True, seed=1))
    t_got = as_lists(DataLoader(TensorDataset(X, y), batch_size=6, shuffle=True, seed=1,
                                num_workers=workers))
    assert t_got == t_ref


def test_order_kept_when_workers_finish_out_of_order(shm_guard):
    dl = FastDataLoader(Samples(n=48, delay=0.01), batch_size=2, num_workers=3,
                        prefetch_factor=3)
    seen = [b["i"].tolist() for b in dl]
    assert sum(seen, []) == list(range(48))


def test_workers_are_processes_with_info_and_seeds(shm_guard):
    class Who(Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            info = get_worker_info()
            return np.array([os.getpid(), info.id, info.num_workers, np.random.randint(1 << 30)])

    rows = np.concatenate([b.numpy() for b in DataLoader(Who(), batch_size=2, num_workers=2,
                                                         seed=3)])
    pids, ids = set(rows[:, 0].tolist()), set(rows[:, 1].tolist())
    assert os.getpid() not in pids and len(pids) == 2 and ids == {0, 1}
    assert set(rows[:, 2].tolist()) == {2}
    # each worker's numpy stream is seeded differently (base seed + worker id)
    assert len(set(rows[:, 3].tolist())) == 12
    assert get_worker_info() is None


def worker_error_text(loader):
    """The message of the ValueError iterating ``loader`` raises; no worker is left."""
    it = iter(loader)
    pids = worker_pids(it)
    with pytest.raises(ValueError) as info:
        for _ in it:
            pass
    assert alive(pids) == []
    return str(info.value)


class Tagged(Dataset):
    """Samples ``[i, tag]``; ``tag`` is what worker_init_fn set in the worker's copy."""

    tag = -1

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return np.array([i, self.tag])


def _tag_worker(wid):
    get_worker_info().dataset.tag = 100 + wid


def _fail_in_worker_1(wid):
    if wid == 1:
        raise ZeroDivisionError("init of worker 1 failed")


def test_worker_init_fn_and_prefetch_factor_in_processes(shm_guard):
    data = Tagged()
    rows = [b.numpy().tolist() for b in DataLoader(data, batch_size=2, num_workers=2,
                                                    worker_init_fn=_tag_worker, timeout=30)]
    # batch k came from worker k % 2, whose own copy of the dataset its init tagged
    assert rows == [[[2 * k, 100 + k % 2], [2 * k + 1, 100 + k % 2]] for k in range(4)]
    assert data.tag == -1
    it = iter(DataLoader(Tagged(), batch_size=1, num_workers=2, prefetch_factor=1))
    assert it.inner._submitted == 2         # one batch in flight per worker
    assert len(list(it)) == 8
    it = iter(DataLoader(Tagged(), batch_size=1, num_workers=2, timeout=30,
                         worker_init_fn=_fail_in_worker_1))
    pids = worker_pids(it)
    with pytest.raises(ZeroDivisionError, match="(?s)init of worker 1 failed.*in worker_init_fn"):
        list(it)
    assert alive(pids) == []


def test_worker_exception_is_raised_with_traceback_and_index(shm_guard):
    text = worker_error_text(FastDataLoader(Samples(mode="raise"), batch_size=4, num_workers=2))
    assert "bad sample 13" in text and "[12, 13, 14, 15]" in text
    assert "Traceback" in text and "__getitem__" in text and "worker 1" in text


def assert_worker_1_killed(loader):
    """Iterating ``loader`` (whose worker 1 SIGKILLs itself) raises WorkerDiedError
    naming it, soon, and leaves no worker behind."""
    it = iter(loader)
    pids = worker_pids(it)
    t0 = time.monotonic()
    with pytest.raises(WorkerDiedError, match=r"worker 1 \(pid \d+\) was killed by SIGKILL"):
        for _ in it:
            pass
    assert time.monotonic() - t0 < 20
    assert alive(pids) == []


def test_a_killed_worker_raises_a_clear_error(shm_guard):
    assert_worker_1_killed(FastDataLoader(Samples(mode="kill"), batch_size=4, num_workers=2))


def test_timeout_applies_per_batch(shm_guard):
    it = iter(FastDataLoader(Samples(mode="sleep"), batch_size=4, num_workers=2, timeout=1))
    pids = worker_pids(it)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="timed out after 1 s"):
        for _ in it:
            pass
    assert time.monotonic() - t0 < 4.5    # the sleeping worker is not waited for
    assert alive(pids) == []


def test_objects_that_would_need_pickle_are_refused(shm_guard):
    class Obj(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return i

    dl = DataLoader(Obj(), batch_size=2, num_workers=1, collate_fn=lambda b: {"o": object()})
    with pytest.raises(TypeError, match="without pickling"):
        list(dl)


def test_a_held_batch_is_never_overwritten_and_slots_are_reused(shm_guard):
    dl = FastDataLoader(Samples(n=64), batch_size=2, num_workers=2, prefetch_factor=2)
    held = list(dl)                       # every batch held at once: the ring grows
    assert [b["i"].tolist() for b in held] == [[2 * k, 2 * k + 1] for k in range(32)]
    assert all((b["x"].numpy() == np.array(b["i"].tolist())[:, None, None]).all() for b in held)
    del held
    gc.collect()
    # batches dropped as the loop goes: a bounded number of slots, reused
    it = iter(dl)
    pool = it.inner.pool
    for b in it:
        assert (b["x"].numpy()[:, 0, 0] == b["i"].numpy()).all()
        kept = b["x"][0]                  # a view keeps its batch's slot ...
    assert kept.numpy()[0, 0] == 62       # ... unchanged after the epoch
    assert len(pool._slots) <= 2 * (2 + 2)


def test_batches_that_outgrow_their_slot_are_moved_to_a_bigger_one(shm_guard):
    # each batch is collated straight into its slot; one that no longer fits (its
    # samples grow) is copied out of it, kept, and written into a bigger slot
    class Growing(Dataset):
        def __len__(self):
            return 24

        def __getitem__(self, i):
            return np.full(64 * (1 + i // 4) ** 2, i, np.float32), i

    dl = FastDataLoader(Growing(), batch_size=4, num_workers=2, timeout=30)
    it = iter(dl)
    pool = it.inner.pool
    sizes = []
    for x, i in it:
        assert (x.numpy() == i.numpy()[:, None]).all()
        sizes.append(x.shape[1])
        hint = pool._hint
    assert sizes == [64 * (1 + k) ** 2 for k in range(6)]
    assert hint >= 4 * 64 * 36 * 4         # the slots grew with the batches


def test_copy_true_gives_private_arrays(shm_guard):
    dl = FastDataLoader(Samples(n=8), batch_size=4, num_workers=1, copy=True)
    b = next(iter(dl))
    assert b["x"].numpy().base is None or b["x"].numpy().flags.owndata
    assert b["i"].tolist() == [0, 1, 2, 3]


def test_shutdown_stops_workers_and_unlinks_on_break_and_exception(shm_guard):
    dl = FastDataLoader(Samples(n=200), batch_size=2, num_workers=2)
    it = iter(dl)
    next(it)
    pids = worker_pids(it)
    assert len(alive(pids)) == 2
    del it                                # abandoned mid-epoch
    gc.collect()
    deadline = time.monotonic() + 10
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(pids) == []
    it = iter(dl)
    pids = worker_pids(it)
    with pytest.raises(ZeroDivisionError):
        for k, _ in enumerate(it):
            if k == 3:
                1 / 0
    del it
    gc.collect()
    deadline = time.monotonic() + 10
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(pids) == []
    # persistent workers live across epochs and stop at close()
    pdl = FastDataLoader(Samples(n=8), batch_size=2, num_workers=2, persistent_workers=True)
    e1 = [b["i"].tolist() for b in pdl]
    pool = pdl._pool
    it = iter(pdl)
    next(it)                              # leave epoch 2 early: epoch 3 starts clean
    e3 = [b["i"].tolist() for b in pdl]
    assert e1 == e3 and pdl._pool is pool
    pids = [p.pid for p in pool._procs]
    pdl.close()
    assert alive(pids) == []


def test_ctrl_c_in_the_main_process_leaves_nothing(tmp_path, shm_guard):
    script = tmp_path / "loop.py"
    script.write_text(textwrap.dedent("""
        import os, signal, sys, time
        import numpy as np
        from deepseek.data import FastDataLoader, Dataset
        # a child of a shell's background job inherits SIGINT ignored (as CPython then
        # keeps it): take Ctrl-C as an interactive program does
        signal.signal(signal.SIGINT, signal.default_int_handler)
        class D(Dataset):
            def __len__(self): return 10 ** 6
            def __getitem__(self, i): return np.zeros(1000, np.float32)
        it = iter(FastDataLoader(D(), batch_size=8, num_workers=2))
        next(it)
        print(" ".join(str(p.pid) for p in it.inner.pool._procs), flush=True)
        for b in it:
            time.sleep(0.01)
    """))
    env = dict(os.environ, DEEPSEEK_RUN_ID="ctrlc" + str(os.getpid()))
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(x) for x in p.stdout.readline().split()]
        assert len(pids) == 2
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "KeyboardInterrupt" in err
    deadline = time.monotonic() + 10
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(pids) == []
    from deepseek.collectives import shm
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(shm.job_prefix(env["DEEPSEEK_RUN_ID"]))]


def test_spawn_context_works(shm_guard):
    dl = FastDataLoader(Samples(n=12), batch_size=4, num_workers=2,
                        multiprocessing_context="spawn", timeout=60)
    assert [b["i"].tolist() for b in dl] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


# ---- resume ---------------------------------------------------------------------

def _ids(batch):
    return batch["i"].tolist() if isinstance(batch, dict) else batch[1].tolist()


def test_resume_mid_epoch_on_one_rank(shm_guard):
    make = lambda: FastDataLoader(Samples(n=50), batch_size=4, shuffle=True, seed=5,  # noqa
                                  num_workers=2)
    full = [_ids(b) for b in make()]
    dl = make()
    it = iter(dl)
    first = [_ids(next(it)) for _ in range(5)]
    state = dl.state_dict()
    it.close()
    assert state["position"] == 20 and state["epoch"] == 0
    again = make()
    again.load_state_dict(state)
    rest = [_ids(b) for b in again]
    assert first + rest == full
    # after a complete epoch the state points at the start of the next one, whose
    # shuffle is the one the uninterrupted loader would draw
    nxt = [_ids(b) for b in dl]
    ref = make()
    list(ref)
    s2 = ref.state_dict()
    assert s2["position"] == 0 and s2["epoch"] == 1
    fresh = make()
    fresh.load_state_dict(s2)
    assert [_ids(b) for b in fresh] == [_ids(b) for b in ref] and nxt != full


def _ranks(world, n=60, bs=4, workers=0, epoch=1):
    out = []
    for r in range(world):
        s = DistributedSampler(Samples(n=n), num_replicas=world, rank=r, seed=11)
        s.set_epoch(epoch)
        out.append(FastDataLoader(Samples(n=n), batch_size=bs, sampler=s, num_workers=workers))
    return out


def test_resume_mid_epoch_at_two_ranks(shm_guard):
    full = [[_ids(b) for b in dl] for dl in _ranks(2)]
    loaders = _ranks(2, workers=1)
    its = [iter(dl) for dl in loaders]
    first = [[_ids(next(it)) for _ in range(3)] for it in its]
    states = [dl.state_dict() for dl in loaders]
    for it in its:
        it.close()
    assert states[0] == states[1] and states[0]["position"] == 24
    resumed = _ranks(2, epoch=0)      # the state sets the sampler's epoch back
    for dl in resumed:
        dl.load_state_dict(states[0])
    rest = [[_ids(b) for b in dl] for dl in resumed]
    assert [f + r for f, r in zip(first, rest)] == full


def test_resume_from_two_ranks_into_three(shm_guard):
    for n, padding in ((60, 0), (62, 1)):
        loaders = _ranks(2, n=n, workers=1)
        its = [iter(dl) for dl in loaders]
        seen = [i for it in its for _ in range(3) for i in _ids(next(it))]
        state = loaders[0].state_dict()
        for it in its:
            it.close()
        three = _ranks(3, n=n, epoch=0)
        for dl in three:
            dl.load_state_dict(state)
        after = [[i for b in dl for i in _ids(b)] for dl in three]
        flat = sum(after, [])
        assert len(seen) == len(set(seen)) == 24
        # every sample exactly once; with n = 62 the 38 left are topped up to 39 (one
        # sample of padding, as DistributedSampler(drop_last=False) pads)
        assert sorted(set(seen) | set(flat)) == list(range(n))
        assert len(flat) == n - 24 + padding and len(set(flat) - set(seen)) == n - 24
        assert len({len(a) for a in after}) == 1
        # the global order goes on where it stopped: rank r takes every 3rd from r
        order = list(DistributedSampler(Samples(n=n), num_replicas=1, rank=0, seed=11))
        s = DistributedSampler(Samples(n=n), num_replicas=1, rank=0, seed=11)
        s.set_epoch(1)
        order = list(s)
        assert sorted(seen) == sorted(order[:24])
        assert after[1][:4] == [order[24 + 1 + 3 * k] for k in range(4)]


# ---- memory-mapped datasets -------------------------------------------------------

def test_memmap_token_windows_and_records(tmp_path, shm_guard):
    tokens = np.arange(1000) % 50000
    with MemmapWriter(tmp_path / "tok.bin", np.uint16) as w:
        w.append(tokens[:600]).append(tokens[600:])
    d = MemmapDataset(tmp_path / "tok.bin", seq_len=16)
    assert len(d) == (1000 - 17) // 16 + 1
    x, y = d[3]
    assert x.tolist() == list(range(48, 64)) and y.tolist() == list(range(49, 65))
    assert x.dtype == np.int64
    batches = list(FastDataLoader(d, batch_size=8, shuffle=True, seed=2, num_workers=2))
    ref = list(DataLoader(d, batch_size=8, shuffle=True, seed=2))
    assert all((a[0].numpy() == b[0].numpy()).all() and (a[1].numpy() == b[1].numpy()).all()
               for a, b in zip(batches, ref)) and len(batches) == len(ref)
    xb, yb = ref[0]
    assert (yb.numpy()[:, :-1] == xb.numpy()[:, 1:]).all()
    with pytest.raises(ValueError, match="do not fit"):
        MemmapWriter(tmp_path / "t2.bin", np.uint16).append([70000])

    imgs = np.random.default_rng(0).integers(0, 255, (30, 3, 8, 8), dtype=np.uint8)
    with MemmapWriter(tmp_path / "img.bin", np.uint8, (3, 8, 8)) as w:
        w.append(imgs)
    r = MemmapDataset(tmp_path / "img.bin")
    assert len(r) == 30 and r.record_shape == (3, 8, 8)
    assert (r[7] == imgs[7]).all()
    got = np.concatenate([b.numpy() for b in FastDataLoader(r, batch_size=7, num_workers=1)])
    assert (got == imgs).all()
    r.prefetch([1, 2, 3, 29])             # a hint: must not fail
    with pytest.raises(IndexError):
        r[30]


def _rss_anon_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def test_a_large_memmap_dataset_is_read_without_growing_memory(tmp_path):
    path = tmp_path / "big.bin"
    rec = (64, 4096)                      # 256 KiB records
    count = 4096 + 64                     # just over 1 GiB
    with open(path, "wb") as f:           # a sparse file: no disk, no RAM
        f.truncate(count * rec[0] * rec[1])
    with open(str(path) + ".json", "w") as f:
        import json
        json.dump({"format": "deepseek.memmap/1", "dtype": "|u1",
                   "shape": [count, *rec]}, f)
    d = MemmapDataset(path)
    assert len(d) == count
    t0 = time.monotonic()
    dl = FastDataLoader(d, batch_size=16)
    before = _rss_anon_kb()
    peak = before
    total = 0
    for b in dl:
        total += b.numpy().nbytes
        peak = max(peak, _rss_anon_kb())
    assert total == count * rec[0] * rec[1] >= 1 << 30
    # every byte was read, yet the process's own memory grew by less than a few batches
    assert (peak - before) * 1024 < 64 << 20, (before, peak)
    assert time.monotonic() - t0 < 45


def test_trainer_feed_resumes_into_another_world_size(shm_guard):
    from deepseek.distributed.strategy import SingleDeviceStrategy
    from deepseek.trainer.data import Feed

    def feeds(world):
        out = []
        for r in range(world):
            s = DistributedSampler(Samples(n=60), num_replicas=world, rank=r, seed=11)
            out.append(Feed(FastDataLoader(Samples(n=60), batch_size=4, sampler=s,
                                           num_workers=1 if r == 0 else 0),
                            SingleDeviceStrategy(), 0))
        return out

    seen = [i for f in feeds(2) for _, (_, b) in zip(range(3), f.epoch(1, 0))
            for i in b["i"].tolist()]
    three = feeds(3)
    for f in three:        # what the Trainer does with a checkpoint written by 2 workers
        f.resume(1, 3, 2)
    assert [f.num_batches() for f in three] == [6, 6, 6]
    rest = [list(f.epoch(1, 3)) for f in three]
    assert [bi for bi, _ in rest[0]] == [3, 4, 5]
    after = [i for r in rest for _, b in r for i in b["i"].tolist()]
    assert sorted(seen + after) == list(range(60))


def test_pin_memory_without_a_gpu_yields_the_same_batches(shm_guard):
    from deepseek.backend import cupy_available
    if cupy_available():
        pytest.skip("a GPU is present: pin_memory moves batches to it")
    ref = as_lists(FastDataLoader(Samples(n=12), batch_size=4))
    assert as_lists(FastDataLoader(Samples(n=12), batch_size=4, num_workers=1,
                                   pin_memory=True)) == ref


# ---- IterableDataset with worker processes -------------------------------------------

class Shards(IterableDataset):
    """A stream that shards itself by worker: ``how="mod"`` gives worker ``w`` the
    samples ``w, w + n, ...``; ``how="chunks"`` contiguous, uneven parts (worker 0 gets
    the most, PyTorch's doc example); ``how=None`` every sample in every worker.
    ``info`` is the framework's get_worker_info, so the same code runs under PyTorch.
    ``fail``: the sample at which the stream raises (or SIGKILLs itself)."""

    def __init__(self, n, info, how="mod", fail=None, mode="raise"):
        self.n, self.info, self.how, self.fail, self.mode = n, info, how, fail, mode

    def __iter__(self):
        info = self.info()
        w, k = (0, 1) if info is None else (info.id, info.num_workers)
        if self.how == "mod":
            ids = range(w, self.n, k)
        elif self.how == "chunks":
            # worker w gets n // 2**(w+1) samples, the last worker the rest
            cuts = [0]
            for j in range(k - 1):
                cuts.append(cuts[-1] + max(1, (self.n - cuts[-1]) // 2))
            cuts.append(self.n)
            ids = range(cuts[w], cuts[w + 1])
        else:
            ids = range(self.n)
        for i in ids:
            if i == self.fail:
                if self.mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise ValueError(f"bad stream item {i}")
            yield {"i": i, "w": w, "x": np.full(2, i, np.float32)}


def _stream_ids(batches):
    """(sample ids, worker ids) of each batch, from deepseek or torch batches."""
    def ints(v):
        return v.tolist() if hasattr(v, "tolist") else int(v)
    return [(ints(b["i"]), ints(b["w"])) for b in batches]


def _round_robin(n, workers, bs, drop_last, how):
    """The order PyTorch yields, built by hand: each worker's own batches, taken in
    turn, a worker that has run out skipped."""
    per = [[s["i"] for s in _shard_of(n, how, w, workers)] for w in range(workers)]
    batches = []
    for w, ids in enumerate(per):
        bl = [ids[j:j + bs] for j in range(0, len(ids), bs)]
        if drop_last and bl and len(bl[-1]) < bs:
            bl.pop()
        batches.append([(b, [w] * len(b)) for b in bl])
    out = []
    for k in range(max(map(len, batches))):
        out += [bl[k] for bl in batches if k < len(bl)]
    return out


class _Info:
    def __init__(self, id, num_workers):
        self.id, self.num_workers = id, num_workers


def _shard_of(n, how, w, k):
    return list(Shards(n, lambda: _Info(w, k), how))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")   # torch, 3 workers
@pytest.mark.parametrize("n,workers,bs,drop_last,how", [
    (23, 2, 4, False, "mod"), (23, 3, 4, True, "mod"), (40, 3, 3, False, "chunks"),
    (40, 3, 3, True, "chunks"), (5, 2, 2, False, None)])
def test_iterable_dataset_in_workers_matches_pytorch_order(n, workers, bs, drop_last, how,
                                                           shm_guard):
    ref = _round_robin(n, workers, bs, drop_last, how)
    dl = DataLoader(Shards(n, get_worker_info, how), batch_size=bs, num_workers=workers,
                    drop_last=drop_last, timeout=30)
    got = _stream_ids(dl)
    assert got == ref
    # every batch of a worker came from that worker's own copy
    assert all(len(set(ws)) == 1 for _, ws in got)
    try:
        import torch.utils.data as tud
    except ImportError:
        return
    # the same dataset code, also a torch IterableDataset (what torch's loader checks)
    TorchShards = type("TorchShards", (Shards, tud.IterableDataset), {})
    tdl = tud.DataLoader(TorchShards(n, tud.get_worker_info, how), batch_size=bs,
                         num_workers=workers, drop_last=drop_last, timeout=30)
    assert _stream_ids(tdl) == got


def test_iterable_dataset_without_batching_and_with_persistent_workers(shm_guard):
    # batch_size=None: one sample at a time, converted (numpy arrays become Tensors)
    got = list(FastDataLoader(Shards(7, get_worker_info), batch_size=None, num_workers=2,
                              timeout=30))
    assert [s["i"] for s in got] == [0, 1, 2, 3, 4, 5, 6]
    assert [s["w"] for s in got] == [0, 1, 0, 1, 0, 1, 0]
    assert isinstance(got[0]["x"], ds.Tensor) and got[3]["x"].tolist() == [3.0, 3.0]
    # persistent workers: each epoch starts a new iterator in the same workers, also
    # after an epoch left early
    dl = FastDataLoader(Shards(30, get_worker_info), batch_size=4, num_workers=2,
                        persistent_workers=True, timeout=30)
    e1 = _stream_ids(dl)
    pool = dl._pool
    it = iter(dl)
    next(it)
    e3 = _stream_ids(dl)
    assert e1 == e3 == _round_robin(30, 2, 4, False, "mod") and dl._pool is pool
    pids = [p.pid for p in pool._procs]
    dl.close()
    assert alive(pids) == []


def test_iterable_dataset_worker_error_and_death(shm_guard):
    text = worker_error_text(DataLoader(Shards(40, get_worker_info, fail=13), batch_size=2,
                                        num_workers=2, timeout=30))
    # 13 is worker 1's 7th sample: in its 4th batch (batch 3, counting from 0)
    assert "bad stream item 13" in text and "worker 1" in text
    assert "batch 3 of its own stream" in text
    assert "Traceback" in text and "__iter__" in text
    # a batch that cannot cross without pickle: refused, named by its place in the stream
    with pytest.raises(TypeError, match=r"without pickling(.|\n)*batch 0 of its own stream"):
        list(DataLoader(Shards(4, get_worker_info), batch_size=2, num_workers=1, timeout=30,
                        collate_fn=lambda b: {"o": object()}))
    assert_worker_1_killed(DataLoader(Shards(40, get_worker_info, fail=13, mode="kill"),
                                      batch_size=2, num_workers=2))


def test_iterable_dataset_resumes_mid_epoch(shm_guard):
    make = lambda: FastDataLoader(Shards(30, get_worker_info), batch_size=4,  # noqa
                                  num_workers=2, timeout=30)
    full = _stream_ids(make())
    dl = make()
    it = iter(dl)
    first = _stream_ids(next(it) for _ in range(3))
    state = dl.state_dict()
    it.close()
    assert state["kind"] == "iterable" and state["position"] == 3 and state["unit"] == "batch"
    again = make()
    again.load_state_dict(state)
    assert first + _stream_ids(again) == full
    with pytest.raises(ValueError, match="over an IterableDataset, this one is over a map-"):
        FastDataLoader(Samples(), batch_size=4).load_state_dict(state)
