"""``trajectory``: the PCA plane of a training path and its explained variance (Li et al. 2018,
Figs. 9–10), and the curvature along it against the stability limit 2/η (Cohen et al. 2021)."""

import numpy as np

from .. import directions
from ..curvature import along_trajectory
from ..plot import edge_of_stability
from ..surface import surface
from ..trajectory import Trajectory, project
from ._core import Study, _problem, register
from ._figures import _mpl, save_png
from ._sizes import FULL, QUICK, TINY, member


def members(cfg):
    return [member(f"GD lr {lr:g}", {"kind": "mlp", "hidden": cfg["hidden"], "seed": 0}, cfg["data"], "ce",
                   {**cfg["train"], "lr": lr, "momentum": 0.0, "record_every": cfg["record_every"]}, lr=lr)
            for lr in cfg["lrs"]]


def extra(ctx):
    """PCA plane of each recorded path (surface over it, path drawn on it, explained variance) and the
    curvature at the checkpoints (λmax vs 2/η); columns ``pc1_variance``, ``pc2_variance``,
    ``lambda_max_path_max`` and ``stability_limit``."""
    plt = _mpl()
    cfg, rows, out = ctx["config"], ctx["rows"], ctx["out"]
    mc = cfg["metrics"]
    n = len(ctx["members"])
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    fig2, axes2 = plt.subplots(1, n, figsize=(4.5 * n, 3.6), squeeze=False)
    results = []
    for k, (m, row) in enumerate(zip(ctx["members"], rows)):
        model, info, data = ctx["models"][m["name"]]
        problem = _problem(model, m, data[0], None)
        traj = Trajectory.open(out / "models" / info["trajectory"])
        d = directions.pca(traj, n=2, like=problem)
        ev = d.spec["explained_variance_ratio"]
        row["pc1_variance"], row["pc2_variance"] = float(ev[0]), float(ev[1])
        path = project(traj, d, center=traj.final(like=problem))
        reach = float(max(np.abs(path["x"].values).max(), np.abs(path["y"].values).max()))
        ds = surface(problem, traj.final(like=problem), d, steps=int(mc["steps"]), span=1.25 * reach, progress=False,
                     metrics=False)
        results.append((ds, path))
        curv = along_trajectory(_problem(model, m, data[0], mc.get("metric_n")), traj, every=cfg["curvature_every"],
                                lr=m["train"]["lr"], trace_probes=int(mc.get("trace_probes", 20)),
                                max_products=int(mc.get("lanczos_products", 150)))
        row["lambda_max_path_max"] = float(np.nanmax(curv["lambda_max"].values))
        row["stability_limit"] = 2.0 / m["train"]["lr"]
        edge_of_stability(curv, ax=axes2[0, k], title=f"{m['name']}: λmax along training")
    lo = min(float(np.nanmin(ds["loss"].values)) for ds, _ in results)
    hi = min(max(float(np.nanmax(ds["loss"].values)) for ds, _ in results), lo + float(cfg.get("clip", 3.0)))
    levels = np.linspace(lo, hi, 25)
    for ax, (ds, path), m, row in zip(axes[0], results, ctx["members"], rows):
        z = np.clip(ds["loss"].values.T, None, hi)
        cs = ax.contourf(ds["x"].values, ds["y"].values, z, levels=levels, cmap="viridis")
        ax.plot(path["x"].values, path["y"].values, "r.-", ms=3, lw=0.8)
        ax.set_xlabel(f"PC1 ({100 * row['pc1_variance']:.1f} %)")
        ax.set_ylabel(f"PC2 ({100 * row['pc2_variance']:.1f} %)")
        ax.set_title(m["name"], fontsize=9)
    fig.colorbar(cs, ax=axes, label="training loss (shared scale)")
    save_png(fig, out / "pca-paths.png")
    fig2.tight_layout()
    save_png(fig2, out / "edge-of-stability.png")
    plt.close(fig)
    plt.close(fig2)
    return {"figures": ["pca-paths.png", "edge-of-stability.png"]}


STUDY = register(Study(
    "trajectory", "Full-batch gradient descent on an MLP at two step sizes, recorded; PCA plane of each path with "
                  "its explained variance, and λmax/λmin/trace at the checkpoints against 2/η.",
    "does the training path lie in a low-dimensional plane, and does λmax rise to 2/η (edge of stability)?",
    {"tiny": {"lrs": [0.1], "hidden": [8], "data": {"name": "digits", "n_train": 200, "n_test": 100},
              "train": {"epochs": 10, "batch_size": 200}, "record_every": 2, "curvature_every": 2,
              "metrics": TINY},
     "quick": {"lrs": [0.05, 0.2], "hidden": [64], "data": {"name": "digits", "n_train": 1200},
               "train": {"epochs": 1000, "batch_size": 1200}, "record_every": 20, "curvature_every": 2,
               "metrics": QUICK, "clip": 3.0},
     "full": {"lrs": [0.02, 0.05, 0.1, 0.2], "hidden": [64, 64],
              "data": {"name": "fashion", "n_train": 5000, "n_test": 2000},
              "train": {"epochs": 1000, "batch_size": 5000}, "record_every": 10, "curvature_every": 5,
              "metrics": FULL, "clip": 3.0}},
    members, extra, reference="Li et al. 2018 (arXiv:1712.09913), Figs. 9–10; Cohen et al. 2021 (arXiv:2103.00065)"))
