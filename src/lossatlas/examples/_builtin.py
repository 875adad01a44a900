"""The built-in examples: convex baselines beside non-convex networks, on offline data."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import directions as D
from ..runner import pinned_threads

from ..problem import Problem
from . import _data, _models
from ._registry import TRAINING_THREADS, Example, register, trained


def fit(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float,
        batch: int | None = None, seed: int = 0, weight_decay: float = 0.0,
        callback: Callable[[int, nn.Module], None] | None = None) -> None:
    """Deterministic Adam training (full batch, or shuffled mini-batches from ``seed``) on
    :data:`TRAINING_THREADS` intra-op threads, whatever the caller's count (restored afterwards);
    ``callback(step, model)`` runs after each optimiser step (step = 1, 2, …)."""
    with pinned_threads(TRAINING_THREADS):
        _fit(model, loss_fn, x, y, steps=steps, lr=lr, batch=batch, seed=seed, weight_decay=weight_decay,
             callback=callback)


def _fit(model, loss_fn, x, y, *, steps, lr, batch, seed, weight_decay, callback) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    n = len(x)
    for step in range(steps):
        if batch is None or batch >= n:
            idx = None
        else:
            idx = torch.randperm(n, generator=g)[:batch]
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        opt.zero_grad()
        loss_fn(model(xb), yb).backward()
        opt.step()
        if callback is not None:
            callback(step + 1, model)
    _precise_batchnorm(model, x)
    model.eval()


def _precise_batchnorm(model: nn.Module, x: torch.Tensor, batch: int = 512) -> None:
    """Replace BatchNorm running statistics by their average over the training inputs at the final
    weights (momentum=None: cumulative average), so eval mode matches the trained network."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
    for m, momentum in saved:
        m.momentum = momentum


def _finish(name: str, model: nn.Module, loss_fn, data, *, dtype, device, description: str, convex: bool | None,
            family: str, info=None, directions=None, **problem_kw) -> Example:
    problem = Problem(model, loss_fn, data, dtype=dtype, device=device, **problem_kw)
    return Example(name=name, problem=problem, center=problem.params(), description=description, convex=convex,
                   model=model, family=family, info=dict(info or {}), directions=directions)


# ---------------------------------------------------------------------------------------------
SEED_X = [0.5, 1.0, 1.5, 2.0]


def _seed_axes(example: Example, n: int = 2, seed: int = 0):
    return D.axes(example.problem, ["w0", "w1", "b0", "b1"][:n])


@register("seed-relu", "f(x) = relu(w1·relu(w0·x + b0) + b1) fitted to y = x on four points with the squared "
          "loss: a convex loss of a non-linear model, non-convex in (w0, w1)", convex=False, family="toy")
def seed_relu(*, dtype=None, device=None, cache=True) -> Example:
    x = torch.tensor(SEED_X).reshape(-1, 1)
    model = _models.SeedReLU()
    loss_fn = nn.MSELoss()
    trained(model, {"name": "seed-relu", "x": SEED_X, "steps": 800, "lr": 0.02},
            lambda m: fit(m, loss_fn, x, x.clone(), steps=800, lr=0.02), cache=cache)
    return _finish("seed-relu", model, loss_fn, (x, x.clone()), dtype=dtype, device=device, convex=False,
                   family="toy", description=REGISTRY_DESC["seed-relu"], directions=_seed_axes,
                   info={"inputs": SEED_X, "targets": SEED_X})


def _trained_linear(name: str, data_name: str, x, y, model: nn.Module, loss_fn, *, convex: bool, steps: int,
                    lr: float, weight_decay: float = 0.0, dtype=None, device=None, cache=True) -> Example:
    """A model linear in its parameters (up to an output non-linearity), trained by full-batch Adam."""
    key = {"name": name, "steps": steps, "lr": lr, **({"wd": weight_decay} if weight_decay else {})}
    trained(model, key, lambda m: fit(m, loss_fn, x, y, steps=steps, lr=lr, weight_decay=weight_decay), cache=cache)
    return _finish(name, model, loss_fn, (x, y), dtype=dtype, device=device, convex=convex, family="linear",
                   description=REGISTRY_DESC[name], info={"data": data_name})


@register("linreg-mse", "linear regression with the squared loss on the diabetes data: a quadratic, convex",
          convex=True, family="linear")
def linreg_mse(*, dtype=None, device=None, cache=True) -> Example:
    x, y = _data.diabetes()
    torch.manual_seed(0)
    return _trained_linear("linreg-mse", "diabetes", x, y, nn.Linear(x.shape[1], 1), nn.MSELoss(), convex=True,
                           steps=400, lr=0.05, dtype=dtype, device=device, cache=cache)


@register("logreg-bce", "logistic regression with binary cross-entropy on breast cancer: convex in the weights",
          convex=True, family="linear")
def logreg_bce(*, dtype=None, device=None, cache=True) -> Example:
    x, y = _data.breast_cancer()
    torch.manual_seed(0)
    return _trained_linear("logreg-bce", "breast cancer", x, y, nn.Linear(x.shape[1], 1), nn.BCEWithLogitsLoss(),
                           convex=True, steps=300, lr=0.05, weight_decay=1e-3, dtype=dtype, device=device, cache=cache)


class _SigmoidOut(nn.Module):
    """σ(w·x + b): the same linear model as logreg-bce, with the sigmoid inside the model."""

    def __init__(self, d: int):
        super().__init__()
        self.linear = nn.Linear(d, 1)

    def forward(self, x):
        return torch.sigmoid(self.linear(x))


@register("logreg-mse", "the same logistic model with the squared loss (y − σ(w·x + b))² on the same data: "
          "non-convex (flat where the sigmoid saturates)", convex=False, family="linear")
def logreg_mse(*, dtype=None, device=None, cache=True) -> Example:
    x, y = _data.breast_cancer()
    torch.manual_seed(0)
    return _trained_linear("logreg-mse", "breast cancer", x, y, _SigmoidOut(x.shape[1]), nn.MSELoss(), convex=False,
                           steps=300, lr=0.05, dtype=dtype, device=device, cache=cache)


@register("softmax-ce", "multinomial logistic regression (softmax + cross-entropy) on digits: convex",
          convex=True, family="linear")
def softmax_ce(*, dtype=None, device=None, cache=True) -> Example:
    x, y = _data.digits()
    torch.manual_seed(0)
    return _trained_linear("softmax-ce", "digits", x, y, nn.Linear(64, 10), nn.CrossEntropyLoss(), convex=True,
                           steps=300, lr=0.05, weight_decay=1e-3, dtype=dtype, device=device, cache=cache)


@register("mlp-digits", "MLP 64-128-128-10 (ReLU, 26,122 parameters) trained on the 1797 digits with "
          "cross-entropy: non-convex", convex=False)
def mlp_digits(*, dtype=None, device=None, cache=True, seed: int = 0) -> Example:
    x, y = _data.digits()
    torch.manual_seed(seed)
    model = _models.mlp([64, 128, 128, 10])
    loss_fn = nn.CrossEntropyLoss()
    trained(model, {"name": "mlp-digits", "seed": seed, "steps": 300, "lr": 3e-3},
            lambda m: fit(m, loss_fn, x, y, steps=300, lr=3e-3, batch=256, seed=seed), cache=cache)
    return _finish("mlp-digits", model, loss_fn, (x, y), dtype=dtype, device=device, convex=False,
                   family="network", description=REGISTRY_DESC["mlp-digits"], info={"data": "digits", "seed": seed})


@register("cnn-digits", "small CNN with BatchNorm (two 3×3 conv layers) on 8×8 digits: non-convex",
          convex=False)
def cnn_digits(*, dtype=None, device=None, cache=True) -> Example:
    x, y = _data.digits(images=True)
    torch.manual_seed(0)
    model = _models.SmallCNN()
    loss_fn = nn.CrossEntropyLoss()
    trained(model, {"name": "cnn-digits", "steps": 200, "lr": 3e-3, "bn": "precise"},
            lambda m: fit(m, loss_fn, x, y, steps=200, lr=3e-3, batch=256), cache=cache)
    return _finish("cnn-digits", model, loss_fn, (x, y), dtype=dtype, device=device, convex=False,
                   family="network", description=REGISTRY_DESC["cnn-digits"], info={"data": "digits"})


def _resnet(skip: bool, *, dtype, device, cache) -> Example:
    name = "resnet-skip" if skip else "resnet-noskip"
    (xtr, ytr), (xte, yte), data_name = _data.fashion_mnist()
    torch.manual_seed(0)
    model = _models.SmallResNet(skip=skip, classes=10)
    loss_fn = nn.CrossEntropyLoss()
    trained(model, {"name": name, "data": data_name, "steps": 150, "lr": 3e-3, "bn": "precise"},
            lambda m: fit(m, loss_fn, xtr, ytr, steps=150, lr=3e-3, batch=128), cache=cache)
    # the landscape is evaluated on a fixed 1024-sample subset of the training data
    return _finish(name, model, loss_fn, (xtr[:1024], ytr[:1024]), dtype=dtype, device=device, convex=False,
                   family="network", description=REGISTRY_DESC[name] + f" (data: {data_name})",
                   info={"data": data_name, "test": (xte, yte)}, batch_size=512)


@register("resnet-skip", "small ResNet (3 stages × 2 blocks, BatchNorm) with shortcut connections on "
          "Fashion-MNIST (Li et al. Fig. 5: skips make the landscape smoother)", convex=False)
def resnet_skip(*, dtype=None, device=None, cache=True) -> Example:
    return _resnet(True, dtype=dtype, device=device, cache=cache)


@register("resnet-noskip", "the same network without shortcut connections, trained the same way", convex=False)
def resnet_noskip(*, dtype=None, device=None, cache=True) -> Example:
    return _resnet(False, dtype=dtype, device=device, cache=cache)


from ._registry import REGISTRY  # noqa: E402

REGISTRY_DESC = {name: spec.description for name, spec in REGISTRY.items()}

