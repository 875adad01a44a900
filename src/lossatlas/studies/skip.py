"""``skip``: small ResNets with and without shortcuts at a few depths (Li et al. 2018, Fig. 5:
without shortcuts, the landscape turns chaotic as depth grows; with them it stays nearly convex)."""

from ._core import Study, register
from ._sizes import FULL, QUICK, TINY, member


def members(cfg):
    out = []
    for depth in cfg["depths"]:
        for skip in (True, False):
            name = f"resnet-{depth}" + ("" if skip else "-noshort")
            out.append(member(name, {"kind": "resnet", "depth": depth, "skip": skip, "width": cfg["width"], "seed": 0},
                              cfg["data"], "ce", cfg["train"], depth=depth, shortcuts=skip))
    return out


STUDY = register(Study(
    "skip", "ResNets of depth 6n+2 with and without shortcut connections (BatchNorm, eval-mode statistics) on "
            "Fashion-MNIST (digits when it is not installed).",
    "do shortcuts keep a deep net's landscape convex-looking, while the plain net turns chaotic?",
    {"tiny": {"depths": [8], "width": 2, "data": {"name": "fashion", "n_train": 128, "n_test": 64, "side": 7},
              "train": {"epochs": 1, "lr": 0.05, "batch_size": 64}, "metrics": TINY},
     "quick": {"depths": [8, 14, 20], "width": 4,
               "data": {"name": "fashion", "n_train": 1024, "n_test": 512, "side": 14},
               "train": {"epochs": 20, "lr": 0.05, "batch_size": 64},
               "metrics": {**QUICK, "steps": 15, "metric_n": 128, "max_minima": 1, "lanczos_products": 40,
                           "trace_probes": 8, "audit_budget": 24, "sharp_steps": 4, "width_steps": 15},
               "clip": 5.0},
     "full": {"depths": [8, 14, 20, 32, 56], "width": 16,
              "data": {"name": "fashion", "n_train": 20000, "n_test": 5000, "side": 28},
              "train": {"epochs": 30, "lr": 0.05, "batch_size": 128}, "metrics": {**FULL, "metric_n": 5000},
              "clip": 10.0}},
    members, reference="Li et al. 2018 (arXiv:1712.09913), Fig. 5"))
