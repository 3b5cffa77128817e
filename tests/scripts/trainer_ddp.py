"""Run under ``deepseek-run --nproc 2``: Trainer with DDPStrategy (tests/test_trainer.py).

``trainer_ddp.py OUT_DIR fit``: two epochs, accumulating 2 micro-batches; rank 0
saves its parameters to OUT_DIR/params.npz; every rank prints ``CHECKSUM <rank> ...``.
``trainer_ddp.py OUT_DIR resume``: with dropout, 6 steps straight vs. 3 steps, then a
resumed run to 6; every rank prints ``RESUME <rank> <straight> <resumed>``.
"""
import os
import sys

import numpy as np

import trainer_model as tm
import deepseek
from deepseek.distributed import DDPStrategy

out_dir, mode = sys.argv[1], sys.argv[2]
rank = int(os.environ["RANK"])


def trainer(**kw):
    kw.setdefault("enable_progress_bar", False)
    return deepseek.Trainer(accelerator="cpu", strategy=DDPStrategy(), seed=0, **kw)


if mode == "fit":
    t = trainer(max_epochs=2, accumulate_grad_batches=2, enable_progress_bar=True,
                log_every_n_steps=1)
    model = tm.make_model(optimizer="sgd", lr=0.1)
    t.fit(model, tm.make_loader(batch_size=8), tm.make_loader(batch_size=8, shuffle=False))
    assert t.world_size == 2 and t.global_step == 4, (t.world_size, t.global_step)
    if rank == 0:
        np.savez(os.path.join(out_dir, "params.npz"), **tm.params(model))
    print(f"CHECKSUM {rank} {tm.checksum(model)} val_loss={t.callback_metrics['val_loss']!r}")
elif mode == "resume":
    t = trainer(max_steps=6)
    straight = tm.make_model(dropout=0.3, scheduler="step")
    t.fit(straight, tm.make_loader(batch_size=8))
    ckpt = os.path.join(out_dir, "ckpt")
    t1 = trainer(max_steps=3, checkpoint_dir=ckpt)  # (seeds: build the model after it)
    first = tm.make_model(dropout=0.3, scheduler="step")
    t1.fit(first, tm.make_loader(batch_size=8))
    t2 = trainer(max_steps=6, checkpoint_dir=ckpt)
    resumed = tm.make_model(dropout=0.3, scheduler="step")
    t2.fit(resumed, tm.make_loader(batch_size=8), ckpt_path="last")
    assert t2.global_step == 6
    print(f"RESUME {rank} {tm.checksum(straight)} {tm.checksum(resumed)}")
else:
    raise SystemExit(f"unknown mode {mode!r}")
