"""``activation``: one depth and width, four activations (linear, ReLU, tanh, sigmoid). A deep
*linear* network is already non-convex in its weights (products of matrices), though it computes a
linear function."""

from ._core import Study, register
from ._sizes import FULL, QUICK, TINY, member


def members(cfg):
    return [member(act, {"kind": "mlp", "hidden": [cfg["width"]] * (cfg["depth"] - 1), "activation": act, "seed": 0},
                   cfg["data"], "ce", cfg["train"], activation=act) for act in cfg["activations"]]


ACTS = ["linear", "relu", "tanh", "sigmoid"]
STUDY = register(Study(
    "activation", "MLPs of one depth and width with linear, ReLU, tanh and sigmoid activations on the same data.",
    "is non-convexity a matter of the non-linearity, or of depth itself (a deep linear net)?",
    {"tiny": {"activations": ["linear", "tanh"], "depth": 2, "width": 8,
              "data": {"name": "digits", "n_train": 200, "n_test": 100},
              "train": {"epochs": 2, "lr": 0.05, "batch_size": 50}, "metrics": TINY},
     "quick": {"activations": ACTS, "depth": 3, "width": 32, "data": {"name": "digits", "n_train": 1200},
               "train": {"epochs": 20, "lr": 0.05, "batch_size": 64}, "metrics": QUICK, "clip": 3.0},
     "full": {"activations": ACTS, "depth": 5, "width": 64,
              "data": {"name": "fashion", "n_train": 10000, "n_test": 2000},
              "train": {"epochs": 30, "lr": 0.05, "batch_size": 128}, "metrics": FULL, "clip": 5.0}},
    members))
