"""Build examples/data/digits.npz from scikit-learn's bundled UCI handwritten digits.

Run once by a maintainer (scikit-learn is needed here only, it is not a dependency of
deepseek); the .npz is committed, so the examples and tests never need scikit-learn.

The file holds the 1797 8x8 images (pixel values 0..16) as uint8 and a fixed, stratified
train/test split made with a fixed seed:
    X_train (1437, 8, 8) uint8   y_train (1437,) int64
    X_test  (360, 8, 8)  uint8   y_test  (360,)  int64
"""
import argparse
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "examples", "data", "digits.npz")


def split(y, n_test, seed):
    """Stratified split: per class, the same share goes to the test set."""
    rng = np.random.default_rng(seed)
    test = []
    classes = np.unique(y)
    for c in classes:
        idx = np.flatnonzero(y == c)
        k = int(round(n_test * len(idx) / len(y)))
        test.extend(rng.choice(idx, size=k, replace=False).tolist())
    test = np.array(sorted(test))
    # fix the rounding so the test set has exactly n_test samples
    if len(test) != n_test:
        rest = np.setdiff1d(np.arange(len(y)), test)
        if len(test) < n_test:
            test = np.sort(np.concatenate([test, rng.choice(rest, n_test - len(test), replace=False)]))
        else:
            test = np.sort(rng.choice(test, n_test, replace=False))
    train = np.setdiff1d(np.arange(len(y)), test)
    return rng.permutation(train), rng.permutation(test)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--test-size", type=int, default=360)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from sklearn.datasets import load_digits  # only this script needs scikit-learn

    d = load_digits()
    X = d.images.astype(np.uint8)  # values are integers 0..16
    assert np.array_equal(X, d.images), "the digits pixels are expected to be integers"
    y = d.target.astype(np.int64)
    train, test = split(y, args.test_size, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, X_train=X[train], y_train=y[train], X_test=X[test],
                        y_test=y[test])
    print(f"wrote {os.path.normpath(args.out)}: {len(train)} train / {len(test)} test samples, "
          f"{os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
    main()
