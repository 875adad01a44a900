"""``width``: MLPs of one depth and growing width (Li et al. 2018, Fig. 6: wider nets, flatter and
more convex-looking minimisers)."""

from ._core import Study, register
from ._sizes import FULL, QUICK, TINY, member


def members(cfg):
    return [member(f"width {w}", {"kind": "mlp", "hidden": [w] * (cfg["depth"] - 1), "activation": "relu", "seed": 0},
                   cfg["data"], "ce", cfg["train"], width=w) for w in cfg["widths"]]


STUDY = register(Study(
    "width", "MLPs of fixed depth and widths w (ReLU) on the same data (Li et al. 2018, Fig. 6).",
    "do wider networks have flatter, more convex-looking minimisers?",
    {"tiny": {"widths": [4, 8], "depth": 3, "data": {"name": "digits", "n_train": 200, "n_test": 100},
              "train": {"epochs": 2, "lr": 0.05, "batch_size": 50}, "metrics": TINY},
     "quick": {"widths": [4, 8, 16, 32, 64, 128], "depth": 4, "data": {"name": "digits", "n_train": 1200},
               "train": {"epochs": 60, "lr": 0.05, "batch_size": 64}, "metrics": QUICK, "clip": 3.0},
     "full": {"widths": [4, 8, 16, 32, 64, 128, 256], "depth": 6,
              "data": {"name": "fashion", "n_train": 10000, "n_test": 2000},
              "train": {"epochs": 30, "lr": 0.05, "batch_size": 128}, "metrics": FULL, "clip": 5.0}},
    members, reference="Li et al. 2018 (arXiv:1712.09913), Fig. 6"))
