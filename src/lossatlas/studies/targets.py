"""``targets``: does convexity depend on the ground truth? The same linear model + BCE (a convex
loss of an affine function: convex whatever the targets) on easy (separable) and hard (XOR, 15 %
label noise) targets, beside sigmoid + MSE and a one-hidden-layer net, which are non-convex on both."""

from ._core import Study, register
from ._sizes import QUICK, TINY, FULL, member

MODELS = [("linear + BCE", {"kind": "mlp", "hidden": []}, "bce"),
          ("sigmoid + MSE", {"kind": "mlp", "hidden": [], "sigmoid_out": True}, "mse"),
          ("1-hidden + BCE", {"kind": "mlp", "hidden": None, "activation": "tanh"}, "bce")]


def members(cfg):
    out = []
    for targets in ("easy", "hard"):
        for label, model, loss in MODELS:
            model = {**model, "seed": 0}
            if model["hidden"] is None:
                model["hidden"] = [cfg["hidden"]]
            out.append(member(f"{label}, {targets}", model, {"name": f"targets-{targets}", "n": cfg["n"]}, loss,
                              cfg["train"], targets=targets, family=label))
    return out


STUDY = register(Study(
    "targets", "A linear model + BCE, sigmoid + MSE and a one-hidden-layer tanh net + BCE, each on easy "
               "(linearly separable blobs) and hard (XOR quadrants, 15 % flipped labels) 2-D targets.",
    "does convexity depend on the targets? (no: it depends on the model and the loss)",
    {"tiny": {"n": 64, "hidden": 4, "train": {"epochs": 3, "lr": 0.1, "batch_size": 32},
              "metrics": {**TINY, "audit_budget": 200}},
     "quick": {"n": 1000, "hidden": 16, "train": {"epochs": 40, "lr": 0.1, "batch_size": 50},
               "metrics": {**QUICK, "audit_budget": 200}, "clip": 2.0},
     "full": {"n": 4000, "hidden": 32, "train": {"epochs": 100, "lr": 0.1, "batch_size": 100},
              "metrics": {**FULL}, "clip": 2.0}},
    members, reference="convexity of a loss ∘ affine map (Boyd & Vandenberghe 2004, §3.2.2)"))
