"""Started as a plain ``python trainer_spawn.py [fail]``: Trainer(devices=2) launches
its own two workers (tests/test_trainer.py). Every process prints
``CHECKSUM <RANK or parent> <value> <global_step>`` after fit and
``VAL <RANK or parent> <val_loss>`` after validate; with ``fail``, rank 1 raises in
its second training step and the parent's fit must raise."""
import os
import sys

import trainer_model as tm
import deepseek

fail = len(sys.argv) > 1 and sys.argv[1] == "fail"
who = os.environ.get("RANK", "parent")

model = tm.make_model(optimizer="sgd", lr=0.1)
if fail:
    step = model.training_step

    def failing_step(batch, batch_idx):
        if who == "1" and batch_idx == 1:
            raise RuntimeError("rank 1 fails on purpose")
        return step(batch, batch_idx)
    model.training_step = failing_step

trainer = deepseek.Trainer(accelerator="cpu", devices=2, max_epochs=2, seed=0,
                           enable_progress_bar=False)
trainer.fit(model, tm.make_loader(batch_size=8))
print(f"CHECKSUM {who} {tm.checksum(model)} {trainer.global_step}", flush=True)
# the workers validate together (each on its half); the parent alone on everything
metrics = trainer.validate(model, tm.make_loader(batch_size=16, shuffle=False))
print(f"VAL {who} {metrics['val_loss']!r}", flush=True)
