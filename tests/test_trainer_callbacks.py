"""deepseek.trainer callbacks: hook order, EarlyStopping, ModelCheckpoint (top-k, step
triggers, exact resume from its files), LearningRateMonitor, callback state in
checkpoints, and the progress bar as a callback."""
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "scripts"))

import trainer_model as tm  # noqa: E402
import deepseek  # noqa: E402
from deepseek.trainer import (Callback, EarlyStopping, LearningRateMonitor,  # noqa: E402
                              ModelCheckpoint, ProgressBar)


def make_trainer(**kw):
    kw.setdefault("accelerator", "cpu")
    kw.setdefault("enable_progress_bar", False)
    kw.setdefault("seed", 0)
    return deepseek.Trainer(**kw)


def scripted_val(model, scores, name="score"):
    """Make ``model`` log ``scores[current_epoch]`` as ``name`` in validation."""
    def validation_step(batch, batch_idx):
        model.log(name, scores[model.trainer.current_epoch])
    model.validation_step = validation_step
    return model


class Recorder(Callback):
    """Records every hook it gets (batch hooks with their batch_idx)."""

    def __init__(self):
        self.calls = []

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name.startswith("on_") or name in ("setup", "teardown"):
            calls = object.__getattribute__(self, "calls")

            def record(trainer, model, *args):
                tag = name
                if name.endswith("batch_start"):
                    tag += f":{args[1]}"
                elif name.endswith("batch_end"):
                    tag += f":{args[2]}"
                elif name in ("setup", "teardown"):
                    tag += f":{args[0]}"
                calls.append(tag)
                return attr(trainer, model, *args)
            return record
        return attr


# ---- hook order -----------------------------------------------------------------------

def test_hooks_come_in_lightnings_order():
    rec = Recorder()
    model = tm.make_model()
    model.on_train_epoch_end = lambda: rec.calls.append("model.on_train_epoch_end")
    es = EarlyStopping("val_loss", patience=100)
    es_end = es.on_train_epoch_end

    def es_hook(trainer, m):
        rec.calls.append("EarlyStopping.on_train_epoch_end")
        es_end(trainer, m)
    es.on_train_epoch_end = es_hook
    # 3 batches of 8 per epoch, windows of 2: steps after batch 1 and batch 2
    trainer = make_trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[es, rec])
    trainer.fit(model, tm.make_loader(batch_size=8, n=24), tm.make_loader(batch_size=24, n=24))
    step = ["on_before_optimizer_step", "on_before_zero_grad"]
    micro = ["on_before_backward", "on_after_backward"]
    expected = (
        ["setup:fit", "on_fit_start", "on_train_start", "on_train_epoch_start"]
        + ["on_train_batch_start:0", *micro, "on_train_batch_end:0"]
        + ["on_train_batch_start:1", *micro, *step, "on_train_batch_end:1"]
        + ["on_train_batch_start:2", *micro, *step, "on_train_batch_end:2"]
        + ["on_validation_start", "on_validation_epoch_start", "on_validation_batch_start:0",
           "on_validation_batch_end:0", "on_validation_epoch_end", "on_validation_end"]
        # plain callbacks, then the model, then the monitoring callbacks
        + ["on_train_epoch_end", "model.on_train_epoch_end", "EarlyStopping.on_train_epoch_end"]
        + ["on_train_end", "on_fit_end", "teardown:fit"])
    assert rec.calls == expected
    assert trainer.global_step == 2

    rec.calls.clear()
    trainer.validate(model, tm.make_loader(batch_size=24, n=24))
    assert rec.calls == ["setup:validate", "on_validation_start", "on_validation_epoch_start",
                         "on_validation_batch_start:0", "on_validation_batch_end:0",
                         "on_validation_epoch_end", "on_validation_end", "teardown:validate"]


def test_on_exception_and_teardown_run_when_fit_fails():
    rec = Recorder()
    model = tm.make_model()

    def failing(batch, batch_idx):
        raise RuntimeError("boom")
    model.training_step = failing
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(max_steps=1, callbacks=rec).fit(model, tm.make_loader())
    assert rec.calls[-2:] == ["on_exception", "teardown:fit"]


def test_callbacks_are_checked_and_ordered():
    with pytest.raises(TypeError, match="Callback instances"):
        make_trainer(callbacks=[object()])
    ckpt, es = ModelCheckpoint(dirpath="x"), EarlyStopping("v")
    t = deepseek.Trainer(accelerator="cpu", callbacks=[ckpt, es])
    # the progress bar first, checkpointing last (its files hold the others' state)
    assert [type(c) for c in t.callbacks] == [ProgressBar, EarlyStopping, ModelCheckpoint]
    assert make_trainer(callbacks=[ckpt]).callbacks == [ckpt]  # progress bar disabled


# ---- EarlyStopping ----------------------------------------------------------------------

def test_early_stopping_stops_when_the_metric_stalls():
    # real training, but an improvement must be 10x the loss: only the first epoch counts
    es = EarlyStopping("val_loss", patience=2, min_delta=10.0)
    trainer = make_trainer(max_epochs=50, callbacks=[es])
    trainer.fit(tm.make_model(), tm.make_loader(batch_size=16), tm.make_loader(batch_size=32))
    assert trainer.current_epoch == 3 and trainer.global_step == 3 * 4
    assert es.stopped_epoch == 2 and es.wait_count == 2 and trainer.should_stop

    # without min_delta plain SGD keeps improving the loss: no early stop in 6 epochs
    es = EarlyStopping("val_loss", patience=2)
    trainer = make_trainer(max_epochs=6, callbacks=[es])
    trainer.fit(tm.make_model(optimizer="sgd", lr=0.1), tm.make_loader(batch_size=16),
                tm.make_loader(batch_size=32))
    assert trainer.current_epoch == 6 and not trainer.should_stop and es.wait_count == 0


@pytest.mark.parametrize("mode, scores, stop_epoch", [
    ("min", [5, 4, 4.5, 4.2, 3, 9, 9, 9], 3),     # best 4 at epoch 1; 2 checks without
    ("max", [1, 2, 3, 2.5, 2.9, 0, 0, 0], 4),
])
def test_early_stopping_counts_patience_in_its_mode(mode, scores, stop_epoch):
    es = EarlyStopping("score", patience=2, mode=mode)
    trainer = make_trainer(max_epochs=8, callbacks=[es])
    trainer.fit(scripted_val(tm.make_model(), scores), tm.make_loader(batch_size=32),
                tm.make_loader(batch_size=64))
    assert es.stopped_epoch == stop_epoch and trainer.current_epoch == stop_epoch + 1


def test_early_stopping_on_a_missing_metric():
    trainer = make_trainer(max_epochs=2, callbacks=[EarlyStopping("nope")])
    with pytest.raises(KeyError, match="nope"):
        trainer.fit(tm.make_model(), tm.make_loader(batch_size=32))
    es = EarlyStopping("nope", strict=False)
    trainer = make_trainer(max_epochs=2, callbacks=[es])
    trainer.fit(tm.make_model(), tm.make_loader(batch_size=32))
    assert trainer.current_epoch == 2


# ---- ModelCheckpoint --------------------------------------------------------------------

def files(d):
    return sorted(os.listdir(d))


def test_model_checkpoint_keeps_the_top_k_by_the_monitored_metric(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="score", save_top_k=2, save_last=True)
    trainer = make_trainer(max_epochs=5, callbacks=[ckpt])
    scores = [5.0, 3.0, 4.0, 1.0, 2.0]
    trainer.fit(scripted_val(tm.make_model(), scores), tm.make_loader(batch_size=32),
                tm.make_loader(batch_size=64))
    # two steps per epoch: epoch e ends at step 2(e+1)
    assert files(tmp_path) == ["epoch=3-step=8.ckpt", "epoch=4-step=10.ckpt", "last.ckpt"]
    assert ckpt.best_model_path == str(tmp_path / "epoch=3-step=8.ckpt")
    assert ckpt.best_model_score == 1.0 and ckpt.kth_value == 2.0
    assert ckpt.best_k_models == {str(tmp_path / "epoch=3-step=8.ckpt"): 1.0,
                                  str(tmp_path / "epoch=4-step=10.ckpt"): 2.0}
    # each file is the state of its moment: its own metric, its epoch recorded complete
    best = deepseek.load(ckpt.best_model_path)
    assert best["callback_metrics"]["score"] == 1.0
    assert best["loop"] == {"global_step": 8, "epoch": 4, "batch_in_epoch": 0}
    assert best["callbacks"][ckpt.state_key]["best_model_score"] == 1.0


def test_model_checkpoint_top_k_of_a_real_validation_loss(tmp_path):
    seen = {}

    class ValLosses(Callback):
        def on_validation_end(self, trainer, model):
            seen[trainer.current_epoch] = trainer.callback_metrics["val_loss"]
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", mode="max", save_top_k=3,
                           filename="{epoch}-{val_loss:.4f}")
    model = tm.make_model(dropout=0.3, lr=0.2)  # lr high enough to bounce around
    trainer = make_trainer(max_epochs=6, callbacks=[ValLosses(), ckpt])
    val = tm.make_loader(batch_size=32, shuffle=False, seed=1)
    trainer.fit(model, tm.make_loader(batch_size=8), val)
    worst3 = sorted(seen, key=lambda e: seen[e])[-3:]  # mode='max': the 3 highest
    expected = sorted(f"epoch={e}-val_loss={seen[e]:.4f}.ckpt" for e in worst3)
    assert files(tmp_path) == expected
    # a kept file holds the weights of its epoch: they give its val_loss again
    path = ckpt.best_model_path
    fresh = tm.make_model(dropout=0.3)
    fresh.load_state_dict(deepseek.load(path)["state_dict"])
    metrics = make_trainer().validate(fresh, val)
    assert metrics["val_loss"] == pytest.approx(ckpt.best_model_score, rel=1e-6)


def test_model_checkpoint_without_monitor_keeps_the_latest(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path)
    make_trainer(max_epochs=3, callbacks=[ckpt]).fit(tm.make_model(),
                                                     tm.make_loader(batch_size=32))
    assert files(tmp_path) == ["epoch=2-step=6.ckpt"]
    with pytest.raises(ValueError, match="monitor"):
        ModelCheckpoint(save_top_k=3)
    with pytest.raises(ValueError, match="mutually exclusive"):
        ModelCheckpoint(every_n_epochs=1, every_n_train_steps=2)
    with pytest.raises(ValueError, match="dirpath"):
        make_trainer(max_steps=1, callbacks=[ModelCheckpoint()]).fit(
            tm.make_model(), tm.make_loader())


def test_step_checkpoints_resume_bit_identically(tmp_path):
    # every 3rd optimizer step (windows of 2 micro-batches; 8 batches of 8 per epoch, so
    # steps end at batches 1, 3, 5, 7): step 3 is mid-epoch 0, step 6 mid-epoch 1
    def run(max_steps, callbacks=(), ckpt_path=None):
        trainer = make_trainer(max_steps=max_steps, accumulate_grad_batches=2,
                               callbacks=list(callbacks))
        model = tm.make_model(dropout=0.3, scheduler="step")
        trainer.fit(model, tm.make_loader(batch_size=8), tm.make_loader(batch_size=16),
                    ckpt_path=ckpt_path)
        return trainer, model

    straight_t, straight = run(10)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    run(7, [ckpt])
    assert files(tmp_path) == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt"]
    assert deepseek.load(str(tmp_path / "epoch=1-step=6.ckpt"))["loop"] == \
        {"global_step": 6, "epoch": 1, "batch_in_epoch": 4}
    resumed_t, resumed = run(10, ckpt_path=str(tmp_path / "epoch=1-step=6.ckpt"))
    assert resumed_t.global_step == 10 and resumed_t.current_epoch == 2
    for name, value in tm.params(straight).items():
        assert np.array_equal(tm.params(resumed)[name], value), name


class DrawsRandomNumbers(Callback):
    """Hooks that consume the global RNGs (as augmentation callbacks do): a resume
    must put the RNG states back exactly where the checkpoint was taken."""

    def on_train_epoch_start(self, trainer, model):
        deepseek.randn(3)
        np.random.rand()

    def on_train_batch_start(self, trainer, model, batch, batch_idx):
        deepseek.randn(2)


def _run_with_dropout(max_steps=None, max_epochs=None, callbacks=(), ckpt_dir=None,
                      ckpt_path=None, scheduler="epoch"):
    trainer = make_trainer(max_steps=max_steps, max_epochs=max_epochs,
                           accumulate_grad_batches=2, checkpoint_dir=ckpt_dir,
                           callbacks=[DrawsRandomNumbers(), *callbacks])
    model = tm.make_model(dropout=0.3, scheduler=scheduler)
    trainer.fit(model, tm.make_loader(batch_size=8), tm.make_loader(batch_size=16),
                ckpt_path=ckpt_path)
    return trainer, model


@pytest.mark.parametrize("interrupt_at", [3, 4])  # mid-epoch, and exactly at an epoch end
def test_resume_is_exact_when_hooks_draw_random_numbers(tmp_path, interrupt_at):
    straight_t, straight = _run_with_dropout(max_steps=7, scheduler="step")
    _run_with_dropout(max_steps=interrupt_at, ckpt_dir=str(tmp_path), scheduler="step")
    resumed_t, resumed = _run_with_dropout(max_steps=7, ckpt_dir=str(tmp_path),
                                           ckpt_path="last", scheduler="step")
    assert resumed_t.global_step == 7
    for name, value in tm.params(straight).items():
        assert np.array_equal(tm.params(resumed)[name], value), name


def test_an_epoch_end_checkpoint_file_resumes_exactly(tmp_path):
    # ModelCheckpoint writes in on_train_epoch_end, after validation and the epoch's
    # scheduler step: its file records the epoch as complete
    straight_t, straight = _run_with_dropout(max_epochs=4)
    mc = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1)
    _run_with_dropout(max_epochs=2, callbacks=[mc])
    path = str(tmp_path / "epoch=1-step=8.ckpt")
    assert deepseek.load(path)["loop"] == {"global_step": 8, "epoch": 2, "batch_in_epoch": 0}
    resumed_t, resumed = _run_with_dropout(max_epochs=4, ckpt_path=path)
    assert resumed_t.current_epoch == 4 and resumed_t.global_step == straight_t.global_step
    assert resumed_t.callback_metrics["val_loss"] == straight_t.callback_metrics["val_loss"]
    for name, value in tm.params(straight).items():
        assert np.array_equal(tm.params(resumed)[name], value), name


# ---- callback state across a resume --------------------------------------------------

def test_resume_restores_callback_state_exactly(tmp_path):
    scores = [5.0, 3.0, 4.0, 3.5, 2.0, 2.5, 2.2, 2.1, 9.0, 9.0]

    def run(ckpt_dir, max_epochs, ckpt_path=None):
        es = EarlyStopping("score", patience=3)
        mc = ModelCheckpoint(dirpath=os.path.join(ckpt_dir, "top"), monitor="score",
                             save_top_k=2)
        trainer = make_trainer(max_epochs=max_epochs, checkpoint_dir=ckpt_dir,
                               callbacks=[es, mc])
        model = scripted_val(tm.make_model(), scores)
        trainer.fit(model, tm.make_loader(batch_size=32), tm.make_loader(batch_size=64),
                    ckpt_path=ckpt_path)
        return trainer, es, mc, model

    s_t, s_es, s_mc, s_model = run(str(tmp_path / "straight"), 10)
    # best 2.0 at epoch 4; epochs 5, 6, 7 do not improve: stop after epoch 7
    assert s_es.stopped_epoch == 7 and s_t.current_epoch == 8

    d = str(tmp_path / "split")
    _, es1, _, _ = run(d, 6)                        # stops in the middle of the wait
    assert es1.wait_count == 1 and es1.best_score == 2.0
    stored = deepseek.load(os.path.join(d, "last.ckpt"))["callbacks"]
    assert stored[es1.state_key]["wait_count"] == 1
    r_t, r_es, r_mc, r_model = run(d, 10, ckpt_path="last")
    assert (r_es.stopped_epoch, r_es.wait_count, r_t.current_epoch) == (7, 3, 8)
    assert r_mc.best_k_models == {p.replace("straight", "split"): v
                                  for p, v in s_mc.best_k_models.items()}
    # the files the first run kept but the top-2 later dropped are gone
    assert files(os.path.join(d, "top")) == files(str(tmp_path / "straight" / "top"))
    for name, value in tm.params(s_model).items():
        assert np.array_equal(tm.params(r_model)[name], value), name


def test_a_stateful_custom_callback_round_trips(tmp_path):
    class Counter(Callback):
        def __init__(self):
            self.batches = 0

        def on_train_batch_end(self, trainer, model, outputs, batch, batch_idx):
            self.batches += 1

        def state_dict(self):
            return {"batches": self.batches}

        def load_state_dict(self, state):
            self.batches = state["batches"]

    first = Counter()
    make_trainer(max_steps=5, checkpoint_dir=tmp_path, callbacks=[first]).fit(
        tm.make_model(), tm.make_loader(batch_size=16))
    assert first.batches == 5
    second = Counter()
    make_trainer(max_steps=7, checkpoint_dir=tmp_path, callbacks=[second]).fit(
        tm.make_model(), tm.make_loader(batch_size=16), ckpt_path="last")
    assert second.batches == 7  # 5 restored + 2 run


# ---- LearningRateMonitor ----------------------------------------------------------------

def test_learning_rate_monitor_logs_each_param_group():
    from deepseek import optim
    model = tm.make_model()

    def two_groups():
        opt = optim.SGD([{"params": model.fc1.parameters()},
                         {"params": model.fc2.parameters(), "lr": 0.2}], lr=0.1)
        sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    model.configure_optimizers = two_groups
    lrm = LearningRateMonitor()  # per scheduler interval: here every step
    trainer = make_trainer(max_steps=5, callbacks=[lrm])
    trainer.fit(model, tm.make_loader(batch_size=16))
    assert [s for s, _ in lrm.history] == [0, 1, 2, 3, 4]
    assert [v["lr-SGD/pg1"] for _, v in lrm.history] == \
        pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    assert [v["lr-SGD/pg2"] for _, v in lrm.history] == \
        pytest.approx([0.2, 0.2, 0.1, 0.1, 0.05])
    assert trainer.callback_metrics["lr-SGD/pg1"] == pytest.approx(0.025)


def test_learning_rate_monitor_per_epoch_and_momentum():
    lrm = LearningRateMonitor(logging_interval="epoch", log_momentum=True)
    trainer = make_trainer(max_epochs=4, callbacks=[lrm])
    trainer.fit(tm.make_model(scheduler="epoch"), tm.make_loader(batch_size=32))
    assert [s for s, _ in lrm.history] == [0, 2, 4, 6]
    assert [v["lr-Adam"] for _, v in lrm.history] == pytest.approx([0.05, 0.05, 0.025, 0.025])
    assert lrm.history[0][1]["lr-Adam-momentum"] == pytest.approx(0.9)


# ---- the progress bar is a callback -----------------------------------------------------

def test_the_progress_bar_is_a_replaceable_callback(capsys):
    class Quiet(ProgressBar):
        def on_train_batch_end(self, *args):
            pass
    trainer = deepseek.Trainer(accelerator="cpu", max_steps=4, log_every_n_steps=1,
                               callbacks=[Quiet()])
    assert [type(c) for c in trainer.callbacks] == [Quiet]
    trainer.fit(tm.make_model(), tm.make_loader(batch_size=16), tm.make_loader(batch_size=32))
    err = capsys.readouterr().err
    assert "samples/s" not in err and "val_loss" in err


# ---- several workers ------------------------------------------------------------------

def test_monitoring_callbacks_agree_across_ranks_under_ddp(tmp_path):
    import subprocess
    scripts = os.path.join(HERE, "scripts")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (scripts, os.path.dirname(HERE), os.environ.get("PYTHONPATH")) if p))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "deepseek.launcher", "--nproc", "2",
           os.path.join(scripts, "trainer_callbacks_ddp.py"), str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=scripts, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # ranks that disagree hang in a collective
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        pytest.fail(f"the workers hung\nstdout:\n{out}\nstderr:\n{err}")
    assert proc.returncode == 0, out + err
    rows = {}
    for line in out.splitlines():
        if "CB " in line:
            parts = line[line.index("CB "):].split()
            rows[parts[1]] = parts[2:]
    assert set(rows) == {"0", "1"} and rows["0"] == rows["1"], out
    epochs, best, best_file, stopped = rows["0"]
    # rank 0's values (below 1000) decided; the second epoch's end stops (patience 1,
    # nothing improves by 100 after the first); a file per step, the best 2 kept
    assert float(best) < 1000 and (epochs, stopped) == ("2", "1"), out
    kept = sorted(os.listdir(tmp_path))
    assert len(kept) == 2 and best_file in kept, kept
