"""Offline data sets for the examples (no downloads at run time)."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import torch

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _standardise(a: np.ndarray) -> np.ndarray:
    sd = a.std(axis=0)
    return (a - a.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def digits(images: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 8×8 digits, pixels scaled to [0, 1]; ``images=True`` gives (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    xt = torch.tensor(x / 16.0, dtype=torch.float32)
    if images:
        xt = xt.reshape(-1, 1, 8, 8)
    return xt, torch.tensor(y, dtype=torch.long)


def breast_cancer() -> tuple[torch.Tensor, torch.Tensor]:
    """569 samples × 30 standardised features; float targets in {0, 1}, shape (N, 1)."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return (torch.tensor(_standardise(x), dtype=torch.float32),
            torch.tensor(y, dtype=torch.float32).reshape(-1, 1))


def diabetes() -> tuple[torch.Tensor, torch.Tensor]:
    """442 samples × 10 standardised features; standardised regression target, shape (N, 1)."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    return (torch.tensor(_standardise(x), dtype=torch.float32),
            torch.tensor(_standardise(y[:, None]), dtype=torch.float32))


def synthetic_regression(n: int = 200, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """y = x·w + 0.1·noise with Gaussian x: a regression data set of any size, fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    return x, x @ w + 0.1 * torch.randn(n, 1, generator=g)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(n_train: int = 2048, n_test: int = 1024, seed: int = 0):
    """A fixed random subset of Fashion-MNIST (Debian package ``dataset-fashion-mnist``), pixels in
    [0, 1], shape (N, 1, 28, 28). Returns ``(train, test, name)``; falls back to digits (8×8, split
    in two) with a warning when the package is not installed."""
    files = [FASHION_DIR / f for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
    if not all(f.exists() for f in files):
        warnings.warn(f"Fashion-MNIST not found under {FASHION_DIR} (Debian package dataset-fashion-mnist); "
                      "falling back to scikit-learn digits", stacklevel=2)
        x, y = digits(images=True)
        return (x[:1200], y[:1200]), (x[1200:], y[1200:]), "digits (fallback)"
    rng = np.random.default_rng(seed)
    xtr, ytr, xte, yte = (_idx(f) for f in files)
    itr = np.sort(rng.choice(len(xtr), n_train, replace=False))
    ite = np.sort(rng.choice(len(xte), n_test, replace=False))

    def prep(x, y, idx):
        return (torch.tensor(x[idx] / 255.0, dtype=torch.float32).unsqueeze(1),
                torch.tensor(y[idx].astype(np.int64)))
    return prep(xtr, ytr, itr), prep(xte, yte, ite), "fashion-mnist"
