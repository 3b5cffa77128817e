"""Train a small MLP on the UCI 8x8 handwritten digits with deepseek.

    python examples/train_digits.py [--epochs 20] [--seed 0] [--lr 3e-3] [--batch-size 32]

Data: examples/data/digits.npz (1437 train / 360 test images, made by
scripts/make_digits.py from the copy scikit-learn ships). A 64-128-128-10 MLP trained
with AdamW, a cosine learning-rate schedule and a shuffled DataLoader reaches ~97-98%
test accuracy in a few seconds on one CPU core. The same --seed gives the same run.
"""
import argparse
import os
import time

import numpy as np

import deepseek
import deepseek.nn as nn
import deepseek.nn.functional as F
from deepseek.data import DataLoader, TensorDataset
from deepseek.optim import AdamW
from deepseek.optim.lr_scheduler import CosineAnnealingLR

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "digits.npz")


class MLP(nn.Module):
    def __init__(self, hidden=128):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 10)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def load(path):
    """Images as float32 in [0, 1], flattened to 64 features; labels int64."""
    with np.load(path) as d:  # allow_pickle stays False: plain arrays only
        def prep(X):
            return (X.reshape(len(X), 64).astype(np.float32) / 16.0)
        return prep(d["X_train"]), d["y_train"].astype(np.int64), \
            prep(d["X_test"]), d["y_test"].astype(np.int64)


def accuracy(model, X, y):
    model.eval()
    with deepseek.no_grad():
        pred = model(deepseek.from_numpy(X)).argmax(dim=1).numpy()
    model.train()
    return float((pred == y).mean())


def train_permuted(model, X, y, epochs, seed=0, batch_size=32, lr=3e-3, weight_decay=1e-2):
    """Train ``model`` in place, the quick fixed way the quantization test and benchmark
    use: AdamW at a constant learning rate, each epoch in batches of a fresh permutation
    from numpy's generator of ``seed`` (no DataLoader, no schedule). Returns the model."""
    opt = AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(len(X))
        for i in range(0, len(perm), batch_size):
            b = perm[i:i + batch_size]
            loss = F.cross_entropy(model(deepseek.from_numpy(X[b])), deepseek.from_numpy(y[b]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def arg_parser(description):
    """The options of the digits run (epochs, seed, lr, batch size, weight decay, data),
    shared with examples/train_digits_trainer.py."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    ap.add_argument("--data", default=DATA)
    return ap


def main(argv=None):
    args = arg_parser("Train an MLP on the 8x8 digits with deepseek").parse_args(argv)

    start = time.perf_counter()
    deepseek.manual_seed(args.seed)  # weights, and through them the whole run
    Xtr, ytr, Xte, yte = load(args.data)
    train = DataLoader(TensorDataset(deepseek.from_numpy(Xtr), deepseek.from_numpy(ytr)),
                       batch_size=args.batch_size, shuffle=True, seed=args.seed)
    model = MLP()
    opt = AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = CosineAnnealingLR(opt, T_max=args.epochs * len(train))
    print(f"digits: {len(Xtr)} train / {len(Xte)} test, "
          f"{sum(p.numel() for p in model.parameters())} parameters, {args.epochs} epochs")

    for epoch in range(1, args.epochs + 1):
        total, n = 0.0, 0
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            n += len(y)
        print(f"epoch {epoch:3d}  loss {total / n:.4f}  train acc {accuracy(model, Xtr, ytr):.4f}  "
              f"test acc {accuracy(model, Xte, yte):.4f}  lr {sched.get_last_lr()[0]:.2e}",
              flush=True)
    acc = accuracy(model, Xte, yte)
    print(f"time: {time.perf_counter() - start:.2f}s")
    print(f"test accuracy: {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
