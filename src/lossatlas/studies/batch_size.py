"""``batch-size``: small vs large batch, with and without weight decay, seen through filter-normalised
and raw directions (Li et al. 2018, Figs. 2–4: raw directions make the comparison of sharpness
depend on the weights' scale, which weight decay changes; filter normalisation removes that)."""

import numpy as np

from .. import directions, metrics
from ..surface import surface
from ._core import Study, _problem, register
from ._figures import _mpl, save_png
from ._sizes import FULL, QUICK, TINY, member


def members(cfg):
    out = []
    for bs in cfg["batch_sizes"]:
        for wd in cfg["weight_decays"]:
            train = {**cfg["train"], "batch_size": bs, "weight_decay": wd}
            out.append(member(f"bs {bs}, wd {wd:g}", {"kind": "mlp", "hidden": cfg["hidden"], "seed": 0}, cfg["data"],
                              "ce", train, batch_size=bs, weight_decay=wd))
    return out


def extra(ctx):
    """1D slices through each minimiser along one filter-normalised and one raw (N(0, 1), unscaled)
    direction, on one axis per kind; their widths as columns ``width_filter`` and ``width_raw``."""
    plt = _mpl()
    cfg, rows = ctx["config"], ctx["rows"]
    mc = cfg["metrics"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    slices = {}
    for m, row in zip(ctx["members"], rows):
        model, _, data = ctx["models"][m["name"]]
        problem = _problem(model, m, data[0], mc.get("metric_n"))
        for ax, norm, span in ((axes[0], "filter", mc.get("span", 1.0)), (axes[1], None, cfg["raw_span"])):
            d = directions.random(problem, n=1, seed=int(mc.get("seed", 0)), norm=norm)
            ds = surface(problem, None, d, steps=int(mc["width_steps"]), span=span, progress=False, metrics=False)
            w = metrics.basin_width(ds, float(mc.get("width_delta", 0.1)))
            row["width_filter" if norm else "width_raw"] = float(w.widths[0])
            ax.plot(ds["x"].values, ds["loss"].values, label=m["name"])
            slices[(m["name"], norm)] = ds
    top = max(float(np.nanmax(s["loss"].values)) for s in slices.values())
    lo = min(float(np.nanmin(s["loss"].values)) for s in slices.values())
    top = min(top, lo + float(cfg.get("clip", 5.0)))
    for ax, t in zip(axes, ("filter-normalised direction", "raw N(0, 1) direction")):
        ax.set_ylim(lo - 0.02 * (top - lo), top)
        ax.set_xlabel(t)
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7)
    fig.suptitle("batch size × weight decay: the same minimisers along two kinds of direction (shared y axis)",
                 fontsize=10)
    fig.tight_layout()
    save_png(fig, ctx["out"] / "directions.png")
    plt.close(fig)
    return {"figures": ["directions.png"]}


STUDY = register(Study(
    "batch-size", "One MLP trained with a small and a large batch, with and without weight decay; slices along "
                  "filter-normalised and raw directions.",
    "are small-batch minimisers flatter, and does the answer survive the directions' normalisation?",
    {"tiny": {"batch_sizes": [16, 100], "weight_decays": [0.0, 5e-3], "hidden": [8],
              "data": {"name": "digits", "n_train": 200, "n_test": 100}, "train": {"epochs": 2, "lr": 0.05},
              "raw_span": 0.5, "metrics": TINY},
     "quick": {"batch_sizes": [16, 256], "weight_decays": [0.0, 5e-3], "hidden": [64, 64],
               "data": {"name": "digits", "n_train": 1200}, "train": {"epochs": 60, "lr": 0.05},
               "raw_span": 0.5, "metrics": QUICK, "clip": 3.0},
     "full": {"batch_sizes": [32, 4096], "weight_decays": [0.0, 5e-4], "hidden": [128, 128],
              "data": {"name": "fashion", "n_train": 20000, "n_test": 5000}, "train": {"epochs": 40, "lr": 0.05},
              "raw_span": 0.5, "metrics": FULL, "clip": 5.0}},
    members, extra, reference="Li et al. 2018 (arXiv:1712.09913), Figs. 2–4; Keskar et al. 2017"))
