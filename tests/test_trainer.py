"""deepseek.Trainer: the loop, accumulation, clipping, validation, exact resume, errors;
DDP under deepseek-run and a devices=2 plain start (real processes, hard timeouts)."""
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "scripts")
sys.path.insert(0, SCRIPTS)

import trainer_model as tm  # noqa: E402
import deepseek  # noqa: E402
from deepseek.backend import cupy_available  # noqa: E402


def make_trainer(**kw):
    kw.setdefault("accelerator", "cpu")
    kw.setdefault("enable_progress_bar", False)
    kw.setdefault("seed", 0)
    return deepseek.Trainer(**kw)


def mse(model, x, y):
    import deepseek.nn.functional as F
    with deepseek.no_grad():
        return float(F.mse_loss(model(deepseek.tensor(x)), deepseek.tensor(y)).item())


def assert_params_equal(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs"


# ---- the loop ---------------------------------------------------------------------

def test_fit_reduces_the_loss_and_counts_steps_and_epochs():
    x, y = tm.make_data()
    trainer = make_trainer(max_epochs=3)
    model = tm.make_model()
    before = mse(model, x, y)
    trainer.fit(model, tm.make_loader(batch_size=16))
    assert trainer.global_step == 3 * 4 and trainer.current_epoch == 3
    assert mse(model, x, y) < 0.5 * before
    assert {"loss", "train_loss"} <= set(trainer.callback_metrics)
    assert model.trainer is trainer


def test_max_steps_stops_mid_epoch_and_wins_over_max_epochs():
    trainer = make_trainer(max_steps=5, max_epochs=10)
    trainer.fit(tm.make_model(), tm.make_loader(batch_size=16))
    assert trainer.global_step == 5 and trainer.current_epoch == 1


def test_a_plain_list_of_batches_works_as_a_loader():
    x, y = tm.make_data(16)
    batches = [(deepseek.tensor(x[i:i + 4]), deepseek.tensor(y[i:i + 4])) for i in range(0, 16, 4)]
    trainer = make_trainer(max_epochs=2)
    trainer.fit(tm.make_model(), batches)
    assert trainer.global_step == 8


def _seen_rows(loader, epochs=2):
    """The first feature of every sample training_step saw, per epoch."""
    model = tm.make_model()
    seen = []
    step = model.training_step

    def recording_step(batch, batch_idx):
        seen.append(batch[0].numpy()[:, 0].copy())
        return step(batch, batch_idx)
    model.training_step = recording_step
    make_trainer(max_epochs=epochs).fit(model, loader)
    rows = np.concatenate(seen)
    return rows.reshape(epochs, -1)


def test_sample_order_kept_unshuffled_and_reshuffled_every_epoch():
    from deepseek.data import DataLoader, SubsetRandomSampler, TensorDataset
    x, y = tm.make_data(24)
    ordered = _seen_rows(tm.make_loader(batch_size=5, shuffle=False, n=24))
    assert np.array_equal(ordered[0], x[:, 0]) and np.array_equal(ordered[1], x[:, 0])
    shuffled = _seen_rows(tm.make_loader(batch_size=5, shuffle=True, n=24))
    assert sorted(shuffled[0]) == sorted(x[:, 0]) and not np.array_equal(shuffled[0], x[:, 0])
    assert not np.array_equal(shuffled[0], shuffled[1])
    # the same seed gives the same orders
    assert np.array_equal(_seen_rows(tm.make_loader(batch_size=5, shuffle=True, n=24)), shuffled)
    # a custom sampler on one worker is used as it is
    ds = TensorDataset(deepseek.tensor(x), deepseek.tensor(y))
    subset = _seen_rows(DataLoader(ds, batch_size=4, sampler=SubsetRandomSampler(range(8))))
    assert sorted(subset[0]) == sorted(x[:8, 0])


def test_an_iterable_of_unknown_length_ends_its_last_window():
    x, y = tm.make_data(20)

    class Stream:  # no __len__: the Trainer learns the epoch's end only when it comes
        def __iter__(self):
            for i in range(0, 20, 4):
                yield deepseek.tensor(x[i:i + 4]), deepseek.tensor(y[i:i + 4])
    trainer = make_trainer(max_epochs=2, accumulate_grad_batches=2)
    trainer.fit(tm.make_model(), Stream())
    assert trainer.global_step == 2 * 3  # windows of 2, 2 and 1 micro-batches


def test_accumulated_micro_batches_equal_one_big_batch():
    # unshuffled, no dropout: 2 micro-batches of 8 per step == 1 batch of 16 per step;
    # the last window of an epoch with 5 micro-batches (40 samples) has one batch of 8,
    # which must count as a whole batch (divided by 1, not 2)
    n = 40

    def run(batch_size, accumulate):
        trainer = make_trainer(max_epochs=2, accumulate_grad_batches=accumulate)
        model = tm.make_model(optimizer="sgd", lr=0.1)
        trainer.fit(model, tm.make_loader(batch_size=batch_size, shuffle=False, n=n))
        return trainer, tm.params(model)

    t_acc, acc = run(8, 2)
    # the reference: explicit loop, big batches of 16, 16 and then the last 8
    import deepseek.nn.functional as F
    deepseek.manual_seed(0)
    np.random.seed(0)
    ref_model = tm.make_model(optimizer="sgd", lr=0.1)
    opt = ref_model.configure_optimizers()
    x, y = tm.make_data(n)
    for _ in range(2):
        for lo, hi in ((0, 16), (16, 32), (32, 40)):
            opt.zero_grad()
            F.mse_loss(ref_model(deepseek.tensor(x[lo:hi])), deepseek.tensor(y[lo:hi])).backward()
            opt.step()
    assert t_acc.global_step == 6
    ref = tm.params(ref_model)
    for name in ref:
        np.testing.assert_allclose(acc[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_gradient_clipping_bounds_the_update():
    def one_step(clip):
        trainer = make_trainer(max_steps=1, gradient_clip_val=clip)
        model = tm.make_model(optimizer="sgd", lr=1.0)
        before = tm.params(model)
        trainer.fit(model, tm.make_loader(batch_size=64, shuffle=False))
        after = tm.params(model)
        return np.sqrt(sum(np.sum((after[k] - before[k]).astype(np.float64) ** 2) for k in after))

    assert one_step(None) > 0.01
    assert one_step(1e-3) == pytest.approx(1e-3, rel=1e-3)  # lr 1: |update| == |clipped grad|


def test_validation_metrics_are_sample_weighted_means():
    x, y = tm.make_data(20, seed=3)
    import deepseek.data as data
    val = data.DataLoader(data.TensorDataset(deepseek.tensor(x), deepseek.tensor(y)), batch_size=8)
    trainer = make_trainer(max_epochs=1)
    model = tm.make_model()
    trainer.fit(model, tm.make_loader(batch_size=16), val)
    expected = mse(model, x, y)  # batches of 8, 8, 4: the weighted mean is the full MSE
    assert trainer.callback_metrics["val_loss"] == pytest.approx(expected, rel=1e-5)
    metrics = trainer.validate(model, val)
    assert metrics == {"val_loss": pytest.approx(expected, rel=1e-5)}
    assert model.training  # validate() restores the mode


def test_configure_optimizers_shapes_and_dict_losses():
    from deepseek import optim

    model = tm.make_model()
    model.configure_optimizers = lambda: ([optim.SGD(model.parameters(), lr=0.01)], [])
    step = model.training_step
    model.training_step = lambda batch, i: {"loss": step(batch, i)}
    make_trainer(max_steps=2).fit(model, tm.make_loader())

    # StepLR(step_size=2, gamma=0.5) stepped per epoch / per optimizer step
    for interval, limits in (("epoch", {"max_epochs": 4}), ("step", {"max_steps": 5})):
        model = tm.make_model(scheduler=interval)
        made = []
        conf = model.configure_optimizers
        model.configure_optimizers = lambda: made.append(conf()) or made[-1]
        make_trainer(**limits).fit(model, tm.make_loader(batch_size=32))
        assert made[0]["optimizer"].param_groups[0]["lr"] == pytest.approx(0.05 * 0.25), interval


# ---- checkpoints ------------------------------------------------------------------

@pytest.mark.parametrize("interrupt_at", [3, 4])  # mid-epoch, and exactly at an epoch end
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, interrupt_at):
    # shuffled loader, dropout, Adam, a per-step LR schedule, accumulation of 2:
    # everything that carries state from step to step
    def run(max_steps, ckpt_dir=None, ckpt_path=None):
        trainer = make_trainer(max_steps=max_steps, checkpoint_dir=ckpt_dir,
                               accumulate_grad_batches=2)
        model = tm.make_model(dropout=0.3, scheduler="step")
        trainer.fit(model, tm.make_loader(batch_size=8), tm.make_loader(batch_size=16),
                    ckpt_path=ckpt_path)
        return trainer, model

    straight_t, straight = run(7)
    ckpt = str(tmp_path / "ckpt")
    run(interrupt_at, ckpt_dir=ckpt)
    assert os.path.exists(os.path.join(ckpt, "last.ckpt"))
    resumed_t, resumed = run(7, ckpt_dir=ckpt, ckpt_path="last")
    assert resumed_t.global_step == straight_t.global_step == 7
    assert resumed_t.current_epoch == straight_t.current_epoch == 1
    assert_params_equal(tm.params(resumed), tm.params(straight))
    assert resumed_t.callback_metrics["val_loss"] == straight_t.callback_metrics["val_loss"]


def test_resume_from_an_explicit_path_and_a_missing_last(tmp_path, capsys):
    ckpt = str(tmp_path / "ckpt")
    make_trainer(max_steps=2, checkpoint_dir=ckpt).fit(tm.make_model(), tm.make_loader())
    trainer = make_trainer(max_steps=3)
    trainer.fit(tm.make_model(), tm.make_loader(), ckpt_path=os.path.join(ckpt, "last.ckpt"))
    assert trainer.global_step == 3
    # 'last' without a checkpoint yet: a fresh start (a script that always resumes)
    fresh = deepseek.Trainer(accelerator="cpu", max_steps=1, checkpoint_dir=str(tmp_path / "none"))
    fresh.fit(tm.make_model(), tm.make_loader(), ckpt_path="last")
    assert fresh.global_step == 1 and "starting from scratch" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        make_trainer(max_steps=1).fit(tm.make_model(), tm.make_loader(),
                                      ckpt_path=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="checkpoint_dir"):
        make_trainer(max_steps=1).fit(tm.make_model(), tm.make_loader(), ckpt_path="last")


# ---- progress -----------------------------------------------------------------------

def test_progress_lines_every_n_steps_when_not_a_terminal(capsys):
    trainer = deepseek.Trainer(accelerator="cpu", max_steps=4, log_every_n_steps=2)
    trainer.fit(tm.make_model(), tm.make_loader(batch_size=16), tm.make_loader(batch_size=32))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "samples/s" in line]
    assert len(lines) == 2 and "step 2: loss" in lines[0] and "step 4: loss" in lines[1], err
    assert "val_loss" in err


def test_progress_bar_redraws_one_line_on_a_terminal(monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    trainer = deepseek.Trainer(accelerator="cpu", max_steps=3)
    trainer.fit(tm.make_model(), tm.make_loader(batch_size=16))
    out = term.getvalue()
    assert out.startswith("\repoch 0 [") and "samples/s" in out and "loss" in out, repr(out)
    assert out.endswith("\n") and out.count("\n") == 1, repr(out)


# ---- errors -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"precision": "8-bit"}, ValueError, "'32', '16-mixed', 'bf16-mixed'"),
    ({"devices": 0}, ValueError, "devices must be >= 1"),
    ({"devices": "two"}, TypeError, "devices must be an int"),
    ({"accelerator": "tpu"}, ValueError, "'cpu', 'gpu'"),
    ({"strategy": "fsdp"}, ValueError, "DDPStrategy"),
    ({"max_steps": -5}, ValueError, "max_steps"),
    ({"accumulate_grad_batches": 0}, ValueError, "accumulate_grad_batches"),
    ({"gradient_clip_val": -1.0}, ValueError, "gradient_clip_val"),
])
def test_bad_arguments_are_refused_clearly(kwargs, error, match):
    with pytest.raises(error, match=match):
        deepseek.Trainer(**kwargs)


@pytest.mark.skipif(cupy_available(), reason="a GPU is usable here")
def test_gpu_without_cupy_says_so():
    with pytest.raises(RuntimeError, match="CuPy and a CUDA GPU"):
        deepseek.Trainer(accelerator="gpu")


def test_devices_2_inside_pytest_refuses_to_rerun_the_session():
    with pytest.raises(RuntimeError, match="under pytest"):
        make_trainer(devices=2, max_steps=1).fit(tm.make_model(), tm.make_loader())


def test_bad_models_are_refused_clearly():
    import deepseek.nn as nn
    trainer = make_trainer(max_steps=1)
    with pytest.raises(TypeError, match="deepseek.nn.Module"):
        trainer.fit(object(), tm.make_loader())

    class NoOptim(nn.Module):
        def training_step(self, batch, i):
            pass
    with pytest.raises(TypeError, match="no configure_optimizers"):
        trainer.fit(NoOptim(), tm.make_loader())

    model = tm.make_model()
    model.training_step = lambda batch, i: model(batch[0])  # (8, 1): not a scalar
    with pytest.raises(ValueError, match="scalar loss.*shape \\(8, 1\\)"):
        make_trainer(max_steps=1).fit(model, tm.make_loader())

    model = tm.make_model()
    model.configure_optimizers = lambda: "adam"
    with pytest.raises(TypeError, match="configure_optimizers\\(\\) must return"):
        make_trainer(max_steps=1).fit(model, tm.make_loader())
    with pytest.raises(ValueError, match="train_dataloaders"):
        make_trainer(max_steps=1).fit(tm.make_model(), None)
    with pytest.raises(ValueError, match="yielded no batch"):
        make_trainer(max_steps=1).fit(tm.make_model(), tm.make_loader(batch_size=100,
                                                                      drop_last=True))


# ---- processes ----------------------------------------------------------------------

def _run(cmd, timeout=90):
    """Run a job in its own session; on timeout kill the whole session (no orphans)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (SCRIPTS, os.path.dirname(HERE), os.environ.get("PYTHONPATH")) if p))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(cmd, cwd=SCRIPTS, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        pytest.fail(f"{cmd} ran past {timeout}s\nstdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err


def _fields(out, tag):
    rows = {}
    for line in out.splitlines():
        if tag in line:
            parts = line[line.index(tag):].split()
            rows[parts[1]] = parts[2:]
    return rows


def _launcher(*args):
    return [sys.executable, "-m", "deepseek.launcher", "--nproc", "2",
            os.path.join(SCRIPTS, "trainer_ddp.py"), *args]


def test_ddp_under_deepseek_run_matches_single_process_on_the_global_batch(tmp_path):
    rc, out, err = _run(_launcher(str(tmp_path), "fit"))
    assert rc == 0, out + err
    rows = _fields(out, "CHECKSUM")
    assert set(rows) == {"0", "1"} and rows["0"] == rows["1"], out
    # progress on rank 0 only: 4 steps, a line each
    progress = [line for line in err.splitlines() if "samples/s" in line]
    assert len(progress) == 4 and all(line.startswith("[rank0]:") for line in progress), err
    # the 2 ranks x 8 samples of each micro-step are the 16 a single process takes
    # (the sampler interleaves one permutation), so the result is the same up to
    # rounding; the first micro-step of each pair ran under DDP's no_sync
    trainer = make_trainer(max_epochs=2, accumulate_grad_batches=2)
    model = tm.make_model(optimizer="sgd", lr=0.1)
    trainer.fit(model, tm.make_loader(batch_size=16))
    ddp = np.load(tmp_path / "params.npz")
    for name, value in tm.params(model).items():
        np.testing.assert_allclose(ddp[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_ddp_resume_is_bit_identical_on_every_rank(tmp_path):
    rc, out, err = _run(_launcher(str(tmp_path), "resume"))
    assert rc == 0, out + err
    rows = _fields(out, "RESUME")
    assert set(rows) == {"0", "1"}, out
    for rank, (straight, resumed) in rows.items():
        assert straight == resumed, f"rank {rank}: {out}"
    assert rows["0"] == rows["1"]


def test_devices_2_from_a_plain_python_start(tmp_path):
    rc, out, err = _run([sys.executable, os.path.join(SCRIPTS, "trainer_spawn.py")])
    assert rc == 0, out + err
    rows = _fields(out, "CHECKSUM")
    assert set(rows) == {"0", "1", "parent"}, out
    # every rank ends with the same weights, and the parent got rank 0's
    assert rows["0"] == rows["1"] == rows["parent"], out
    assert rows["parent"][1] == "8"
    val = {who: float(v[0]) for who, v in _fields(out, "VAL").items()}
    assert set(val) == {"0", "1", "parent"} and val["0"] == val["1"], out
    assert val["parent"] == pytest.approx(val["0"], rel=1e-5)


def test_devices_2_plain_start_reports_a_failing_worker():
    rc, out, err = _run([sys.executable, os.path.join(SCRIPTS, "trainer_spawn.py"), "fail"])
    assert rc != 0
    assert "rank 1 fails on purpose" in err
    assert "the 2 workers failed" in err
    assert "CHECKSUM parent" not in out
