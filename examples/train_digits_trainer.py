"""Train the digits MLP with deepseek.Trainer and its callbacks.

    python examples/train_digits_trainer.py [--epochs 20] [--seed 0] [--out ckpt]
    deepseek-run --nproc 2 examples/train_digits_trainer.py     (DDP, the same script)

The model, data and schedule of examples/train_digits.py, written Lightning-style:
the Trainer runs the loop; ModelCheckpoint keeps the 2 best checkpoints by validation
accuracy (and last.ckpt), EarlyStopping ends training when the accuracy stalls, and
LearningRateMonitor records the cosine schedule. Rerunning with the same --out
resumes from last.ckpt (exactly where it stopped). At the end the best checkpoint is
loaded and its test accuracy printed.
"""
import os
import sys

import deepseek
import deepseek.nn.functional as F
from deepseek.data import DataLoader, TensorDataset
from deepseek.optim import AdamW
from deepseek.optim.lr_scheduler import CosineAnnealingLR
from deepseek.trainer import EarlyStopping, LearningRateMonitor, ModelCheckpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import MLP, accuracy, arg_parser, load  # noqa: E402  (the same model and data)


class DigitsMLP(MLP):
    """The MLP with the methods the Trainer calls."""

    def __init__(self, lr, weight_decay, total_steps):
        super().__init__()
        self.lr, self.weight_decay, self.total_steps = lr, weight_decay, total_steps

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(dim=1) == y).float().mean())

    def configure_optimizers(self):
        opt = AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = CosineAnnealingLR(opt, T_max=self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main(argv=None):
    ap = arg_parser("Train the digits MLP with deepseek.Trainer")
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--out", default="digits-ckpt", help="checkpoint folder")
    args = ap.parse_args(argv)

    Xtr, ytr, Xte, yte = load(args.data)
    lr_monitor = LearningRateMonitor()
    best = ModelCheckpoint(monitor="val_acc", mode="max", save_top_k=2, save_last=True,
                           filename="{epoch}-{val_acc:.4f}")
    trainer = deepseek.Trainer(
        accelerator="cpu", max_epochs=args.epochs, seed=args.seed, checkpoint_dir=args.out,
        enable_progress_bar=False,
        callbacks=[EarlyStopping("val_acc", mode="max", patience=args.patience), lr_monitor,
                   best])
    train = DataLoader(TensorDataset(deepseek.from_numpy(Xtr), deepseek.from_numpy(ytr)),
                       batch_size=args.batch_size, shuffle=True)
    test = DataLoader(TensorDataset(deepseek.from_numpy(Xte), deepseek.from_numpy(yte)),
                      batch_size=256)
    # (the Trainer splits each global batch of batch_size * workers between the workers)
    steps = args.epochs * -(-len(Xtr) // (args.batch_size * trainer.world_size))
    model = DigitsMLP(args.lr, args.weight_decay, steps)
    trainer.fit(model, train, test, ckpt_path="last")

    if trainer.is_global_zero:
        lrs = [v["lr-AdamW"] for _, v in lr_monitor.history]
        print(f"epochs: {trainer.current_epoch}, steps: {trainer.global_step}, "
              f"lr {lrs[0]:.2e} -> {lrs[-1]:.2e}" if lrs else "resumed at the end")
        print(f"best: {os.path.basename(best.best_model_path)} "
              f"(val_acc {best.best_model_score:.4f})")
        model.load_state_dict(deepseek.load(best.best_model_path)["state_dict"])
        print(f"test accuracy: {accuracy(model, Xte, yte):.4f}", flush=True)


if __name__ == "__main__":
    main()
