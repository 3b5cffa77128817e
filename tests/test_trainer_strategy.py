"""The Strategy seam: the Trainer's loops reach devices, processes and wrappers only
through ``trainer.strategy`` (custom strategies defined here prove it), the built-in
choices, and the trainer package's layout rules (no cupy, no DDP, no collectives in
the loops)."""
import collections
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "scripts"))

import trainer_model as tm  # noqa: E402
import deepseek  # noqa: E402
from deepseek.distributed import DDPStrategy, SingleDeviceStrategy, Strategy  # noqa: E402


def make_trainer(**kw):
    kw.setdefault("accelerator", "cpu")
    kw.setdefault("enable_progress_bar", False)
    kw.setdefault("seed", 0)
    return deepseek.Trainer(**kw)


class Counting(SingleDeviceStrategy):
    """Counts every call the Trainer makes to its strategy (and the order of the first
    of each)."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()
        self.order = []

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if callable(attr) and not name.startswith("_") and name in _STRATEGY_METHODS:
            calls = object.__getattribute__(self, "calls")
            order = object.__getattribute__(self, "order")

            def counted(*args, **kwargs):
                calls[name] += 1
                if name not in order:
                    order.append(name)
                return attr(*args, **kwargs)
            return counted
        return attr


_STRATEGY_METHODS = {n for n in dir(Strategy) if not n.startswith("_")
                     and callable(getattr(Strategy, n))}


def test_the_loop_goes_through_the_strategy_for_every_step(tmp_path):
    s = Counting()
    # 64 samples in batches of 8: 8 micro-batches per epoch, windows of 2 -> 4 steps
    trainer = make_trainer(strategy=s, max_epochs=2, accumulate_grad_batches=2,
                           gradient_clip_val=1.0, checkpoint_dir=str(tmp_path))
    assert trainer.strategy is s
    trainer.fit(tm.make_model(), tm.make_loader(batch_size=8), tm.make_loader(batch_size=32))
    c = s.calls
    assert c["training_step"] == c["backward"] == c["batch_to_device"] - 2 * 2 == 16
    assert c["block_backward_sync"] == 8          # the first micro-batch of each window
    assert c["optimizer_step"] == c["clip_gradients"] == 8 == trainer.global_step
    assert c["zero_grad"] == 8 + 1                # after each step, and once at the start
    assert c["validation_step"] == 2 * 2          # 2 val batches, 2 epochs
    assert c["save_checkpoint"] == 2              # last.ckpt at each epoch's end
    assert c["all_gather_object"] == 2            # the RNG states of every rank
    assert c["sync_gradients"] == 0               # no window was cut short
    for once in ("setup_environment", "connect", "model_to_device", "setup",
                 "setup_optimizers", "teardown"):
        assert c[once] == 1, once
    # the life cycle in the order the Strategy docstring promises
    assert s.order[:6] == ["setup_environment", "connect", "model_to_device", "setup",
                           "setup_optimizers", "zero_grad"]
    assert s.order[-1] == "teardown"

    # resuming: the checkpoint is read and put back through the strategy
    s2 = Counting()
    make_trainer(strategy=s2, max_epochs=3, checkpoint_dir=str(tmp_path)).fit(
        tm.make_model(), tm.make_loader(batch_size=8), ckpt_path="last")
    assert s2.calls["load_checkpoint"] == s2.calls["load_model_state_dict"] == 1
    assert s2.calls["load_optimizer_state"] == 1
    assert s2.order.index("load_model_state_dict") < s2.order.index("setup")


def test_a_window_cut_short_is_synchronised_through_the_strategy():
    x, y = tm.make_data(20)

    class Stream:  # unknown length: the last window (1 micro-batch of 2) ends the epoch
        def __iter__(self):
            for i in range(0, 20, 4):
                yield deepseek.tensor(x[i:i + 4]), deepseek.tensor(y[i:i + 4])
    s = Counting()
    make_trainer(strategy=s, max_epochs=1, accumulate_grad_batches=2).fit(tm.make_model(),
                                                                          Stream())
    assert s.calls["sync_gradients"] == 1 and s.calls["optimizer_step"] == 3


def test_optimizer_steps_happen_only_in_the_strategy():
    class Frozen(SingleDeviceStrategy):
        """A strategy that never applies an update (as a sharded one might defer it)."""

        def optimizer_step(self, optimizer):
            pass

    model = tm.make_model()
    before = tm.params(model)
    trainer = make_trainer(strategy=Frozen(), max_steps=5)
    trainer.fit(model, tm.make_loader())
    assert trainer.global_step == 5
    for name, value in before.items():
        assert np.array_equal(tm.params(model)[name], value), name


def test_data_is_sharded_as_the_strategy_says():
    class SecondOfTwo(SingleDeviceStrategy):
        """Pretends to be data-parallel rank 1 of 2 (as a pipeline strategy would give
        its data-parallel rank, not its global one)."""

        @property
        def distributed_sampler_kwargs(self):
            return {"num_replicas": 2, "rank": 1}

    seen = []
    model = tm.make_model()
    step = model.training_step

    def recording(batch, batch_idx):
        seen.append(batch[0].numpy()[:, 0].copy())
        return step(batch, batch_idx)
    model.training_step = recording
    x, _ = tm.make_data(24)
    make_trainer(strategy=SecondOfTwo(), max_epochs=1).fit(
        model, tm.make_loader(batch_size=4, shuffle=False, n=24))
    assert np.array_equal(np.concatenate(seen), x[1::2, 0])  # the odd samples


def test_checkpoint_writing_belongs_to_the_strategy(tmp_path):
    written = []

    class Recording(SingleDeviceStrategy):
        def save_checkpoint(self, checkpoint, path):
            written.append((path, sorted(checkpoint)))
            super().save_checkpoint(checkpoint, path)

    make_trainer(strategy=Recording(), max_epochs=1, checkpoint_dir=str(tmp_path)).fit(
        tm.make_model(), tm.make_loader(batch_size=32))
    assert written == [(str(tmp_path / "last.ckpt"),
                        ["callback_metrics", "callbacks", "format", "loop",
                         "lr_schedulers", "optimizer_states", "precision_state", "rng",
                         "sampler", "state_dict"])]


# ---- the built-in choices -----------------------------------------------------------

def test_strategy_names_and_the_auto_choice():
    assert isinstance(make_trainer().strategy, SingleDeviceStrategy)  # one process
    assert isinstance(make_trainer(strategy="single_device").strategy, SingleDeviceStrategy)
    assert isinstance(make_trainer(strategy="ddp").strategy, DDPStrategy)
    given = DDPStrategy(compression="bf16")
    assert make_trainer(strategy=given).strategy is given
    # DDPStrategy is still a dataclass of its settings
    assert DDPStrategy(compression="fp16") == DDPStrategy(compression="fp16")
    assert DDPStrategy(compression="fp16") != DDPStrategy()
    with pytest.raises(ValueError, match="Strategy"):
        make_trainer(strategy="fsdp")


def test_single_device_training_matches_an_explicit_loop():
    import deepseek.nn.functional as F
    trainer = make_trainer(strategy="single_device", max_epochs=1)
    model = tm.make_model(optimizer="sgd", lr=0.1)
    trainer.fit(model, tm.make_loader(batch_size=16, shuffle=False))
    deepseek.manual_seed(0)
    np.random.seed(0)
    ref = tm.make_model(optimizer="sgd", lr=0.1)
    opt = ref.configure_optimizers()
    x, y = tm.make_data()
    for lo in range(0, 64, 16):
        opt.zero_grad()
        F.mse_loss(ref(deepseek.tensor(x[lo:lo + 16])), deepseek.tensor(y[lo:lo + 16])).backward()
        opt.step()
    for name, value in tm.params(ref).items():
        np.testing.assert_array_equal(tm.params(model)[name], value, err_msg=name)


# ---- layout rules -----------------------------------------------------------------------

PKG = os.path.join(os.path.dirname(HERE), "deepseek", "trainer")


def _sources():
    for root, _, names in os.walk(PKG):
        for n in names:
            if n.endswith(".py"):
                path = os.path.join(root, n)
                with open(path) as f:
                    yield os.path.relpath(path, PKG), f.read()


def test_the_trainer_package_leaves_devices_and_processes_to_the_strategy():
    import re
    for rel, text in _sources():
        # the backend switch is deepseek/backend.py's alone
        assert not re.search(r"^\s*(import|from)\s+cupy", text, re.M), rel
        assert "DistributedDataParallel" not in text and ".ddp" not in text, rel
        assert "process_group" not in text and "allreduce" not in text, rel
        if rel != "config.py":  # the job's detection and the 'auto' choice
            assert not re.search(r"^\s*(import|from)\s.*\bcollectives\b", text, re.M), rel
