"""``depth``: MLPs of depth 1…N on the same data. Does non-convexity grow with depth? Depth 1 is a
linear model with a convex loss (softmax cross-entropy): the audit's convex end."""

from ._core import Study, register
from ._sizes import FULL, QUICK, TINY, member


def members(cfg):
    out = []
    for depth in cfg["depths"]:
        hidden = [cfg["width"]] * (depth - 1)
        name = "linear (depth 1)" if depth == 1 else f"depth {depth}"
        out.append(member(name, {"kind": "mlp", "hidden": hidden, "activation": "relu", "seed": 0}, cfg["data"], "ce",
                          cfg["train"], depth=depth))
    return out


STUDY = register(Study(
    "depth", "MLPs of depth 1…N (ReLU, same width) on the same data; depth 1 is a linear softmax model "
             "(convex loss).",
    "does non-convexity grow with depth, and is the one-layer model convex?",
    {"tiny": {"depths": [1, 2], "width": 8, "data": {"name": "digits", "n_train": 200, "n_test": 100},
              "train": {"epochs": 2, "lr": 0.05, "batch_size": 50}, "metrics": TINY},
     "quick": {"depths": [1, 2, 3, 4, 6, 8], "width": 64, "data": {"name": "digits", "n_train": 1200},
               "train": {"epochs": 60, "lr": 0.05, "batch_size": 64}, "metrics": QUICK, "clip": 3.0},
     "full": {"depths": [1, 2, 3, 4, 6, 8, 10], "width": 64,
              "data": {"name": "fashion", "n_train": 10000, "n_test": 2000},
              "train": {"epochs": 30, "lr": 0.05, "batch_size": 128}, "metrics": FULL, "clip": 5.0}},
    members))
