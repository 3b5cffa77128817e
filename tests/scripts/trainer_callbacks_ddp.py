"""Run under ``deepseek-run --nproc 2`` (tests/test_trainer_callbacks.py): ModelCheckpoint
and EarlyStopping monitoring a metric that differs per rank (rank 0 logs its loss,
rank 1 1000 - its loss: the opposite order). Their decisions lead to collectives
(writing a checkpoint gathers every rank's RNG state), so ranks that disagreed would
hang or fail; they take rank 0's value.
Every rank prints ``CB <rank> <epochs> <best score> <best file> <stopped epoch>``."""
import os
import sys

import trainer_model as tm
import deepseek
from deepseek.trainer import EarlyStopping, ModelCheckpoint

out_dir = sys.argv[1]
rank = int(os.environ["RANK"])

trainer = deepseek.Trainer(
    accelerator="cpu", seed=0, max_epochs=20, enable_progress_bar=False,
    callbacks=[EarlyStopping("rank_metric", patience=1, min_delta=100.0),
               ModelCheckpoint(dirpath=out_dir, monitor="rank_metric", save_top_k=2,
                               every_n_train_steps=1)])
model = tm.make_model(optimizer="sgd", lr=0.1)
step = model.training_step


def training_step(batch, batch_idx):
    loss = step(batch, batch_idx)
    model.log("rank_metric", loss if rank == 0 else 1000.0 - loss)
    return loss


model.training_step = training_step
trainer.fit(model, tm.make_loader(batch_size=8))
es, mc = trainer.callbacks
print(f"CB {rank} {trainer.current_epoch} {mc.best_model_score!r} "
      f"{os.path.basename(mc.best_model_path)} {es.stopped_epoch}", flush=True)
