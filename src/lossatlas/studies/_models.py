"""Models and data of the studies, built from plain JSON-able specs (so a spec's hash names it)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ..examples._data import digits, fashion_mnist
from ..examples._models import BasicBlock

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "linear": nn.Identity}


class ResNet(nn.Module):
    """A CIFAR-style ResNet of depth 6n+2 (stem, 3 stages of n basic blocks, linear classifier), after
    He et al. 2016 and Li et al. 2018; ``skip=False`` removes every shortcut (the "noshort" nets)."""

    def __init__(self, depth: int = 20, skip: bool = True, width: int = 4, classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet(): argument 'depth' must be 6n+2 (8, 14, 20, 26, 32, …); received {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, c = [], width
        for stage, stride in enumerate((1, 2, 2)):
            c_out = width * 2**stage
            for b in range(n):
                blocks.append(BasicBlock(c, c_out, stride if b == 0 else 1, skip))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class SigmoidOut(nn.Module):
    """A model followed by a sigmoid (for sigmoid + MSE)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.sigmoid(self.inner(x))


def build_model(spec: dict[str, Any], n_in: int, n_out: int) -> nn.Module:
    """An ``nn.Module`` from a spec: ``{"kind": "mlp", "hidden": [..], "activation": ...}``,
    ``{"kind": "resnet", "depth": d, "skip": bool, "width": w}``; ``"sigmoid_out": true`` appends a
    sigmoid. Weights are drawn from ``spec["seed"]``."""
    torch.manual_seed(int(spec.get("seed", 0)))
    kind = spec["kind"]
    if kind == "mlp":
        sizes = [n_in, *spec.get("hidden", []), n_out]
        act = ACTIVATIONS[spec.get("activation", "relu")]
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2 and act is not nn.Identity:
                layers.append(act())
        model: nn.Module = nn.Sequential(*layers)
    elif kind == "resnet":
        model = ResNet(spec["depth"], spec.get("skip", True), spec.get("width", 4), n_out)
    else:
        raise ValueError(f"build_model(): unknown model kind {kind!r}")
    if spec.get("sigmoid_out"):
        model = SigmoidOut(model)
    return model


def _targets_data(kind: str, n: int, seed: int):
    """2-D points: ``easy`` two separated Gaussian blobs (linearly separable); ``hard`` XOR quadrants
    (not linearly separable) with 15 % of labels flipped."""
    rng = np.random.default_rng(seed)
    if kind == "easy":
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 2)) * 0.6 + np.where(y[:, None] == 1, 1.5, -1.5)
    else:
        x = rng.uniform(-2, 2, size=(n, 2))
        y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)
        flip = rng.random(n) < 0.15
        y = np.where(flip, 1 - y, y)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32).reshape(-1, 1)


def load_data(spec: dict[str, Any]):
    """``(train, test, name, note)`` for a data spec: ``{"name": "digits"}``, ``{"name": "fashion",
    "n_train", "n_test", "side"}`` (Debian's dataset-fashion-mnist, average-pooled to ``side``; falls
    back to digits with a note when the package is absent), ``{"name": "targets-easy"|"targets-hard",
    "n"}``."""
    name = spec["name"]
    note = ""
    if name == "digits":
        x, y = digits(images=bool(spec.get("images")))
        g = torch.Generator().manual_seed(int(spec.get("seed", 0)))
        perm = torch.randperm(len(x), generator=g)
        n_train = int(spec.get("n_train", 1200))
        n_test = int(spec.get("n_test", len(x) - n_train))
        tr, te = perm[:n_train], perm[n_train:n_train + n_test]
        return (x[tr], y[tr]), (x[te], y[te]), "digits", note
    if name == "fashion":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train, test, got = fashion_mnist(int(spec.get("n_train", 2048)), int(spec.get("n_test", 1024)),
                                             int(spec.get("seed", 0)))
        if got != "fashion-mnist":
            note = ("Fashion-MNIST not installed (Debian package dataset-fashion-mnist, "
                    "/usr/share/datasets/fashion-mnist): fell back to scikit-learn digits (8×8)")
            del caught
            return train, test, got, note
        side = int(spec.get("side", 28))
        if side != 28:
            pool = lambda t: torch.nn.functional.adaptive_avg_pool2d(t, side)  # noqa: E731
            train, test = (pool(train[0]), train[1]), (pool(test[0]), test[1])
        return train, test, f"fashion-mnist ({side}×{side})", note
    if name in ("targets-easy", "targets-hard"):
        n = int(spec.get("n", 200))
        x, y = _targets_data(name.split("-")[1], 2 * n, int(spec.get("seed", 0)))
        return (x[:n], y[:n]), (x[n:], y[n:]), name, note
    raise ValueError(f"load_data(): unknown data set {name!r}")
