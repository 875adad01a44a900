"""``activation``: one depth and width, four activations (linear, ReLU, tanh, sigmoid). A deep
*linear* network is already non-convex in its weights (products of matrices), though it computes a
linear function.

A sigmoid's slope is at most 1/4 (tanh's and ReLU's is 1), so the gradient reaching the first layer
of a sigmoid MLP is ~4^-(depth-1) times smaller at the same weights: with the others' learning rate
it stays undertrained (quick size: 54 % training accuracy after 20 epochs). ``lr_by_activation``
sets a larger step for it; the learning rate actually used is the table's ``lr`` column. The 4× step
suffices at depth 3 (two sigmoid layers: 99.9 % training accuracy); at depth 4 it does not (54 %).
"""

from ._core import Study, register
from ._sizes import FULL, QUICK, TINY, member


def members(cfg):
    out = []
    for act in cfg["activations"]:
        train = dict(cfg["train"])
        train["lr"] = float(cfg.get("lr_by_activation", {}).get(act, train.get("lr", 0.1)))
        out.append(member(act, {"kind": "mlp", "hidden": [cfg["width"]] * (cfg["depth"] - 1), "activation": act,
                                "seed": 0}, cfg["data"], "ce", train, activation=act, lr=train["lr"]))
    return out


ACTS = ["linear", "relu", "tanh", "sigmoid"]
STUDY = register(Study(
    "activation", "MLPs of one depth and width with linear, ReLU, tanh and sigmoid activations on the same data "
                  "(the sigmoid net with a 4× learning rate: its slope is at most 1/4).",
    "is non-convexity a matter of the non-linearity, or of depth itself (a deep linear net)?",
    {"tiny": {"activations": ["linear", "tanh"], "depth": 2, "width": 8,
              "data": {"name": "digits", "n_train": 200, "n_test": 100},
              "train": {"epochs": 2, "lr": 0.05, "batch_size": 50}, "metrics": TINY},
     "quick": {"activations": ACTS, "depth": 3, "width": 64, "data": {"name": "digits", "n_train": 1200},
               "train": {"epochs": 60, "lr": 0.05, "batch_size": 64}, "lr_by_activation": {"sigmoid": 0.2},
               "metrics": QUICK, "clip": 3.0},
     "full": {"activations": ACTS, "depth": 5, "width": 64,
              "data": {"name": "fashion", "n_train": 10000, "n_test": 2000},
              "train": {"epochs": 30, "lr": 0.05, "batch_size": 128}, "lr_by_activation": {"sigmoid": 0.2},
              "metrics": FULL, "clip": 5.0}},
    members))
