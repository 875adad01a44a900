"""The figure set of a study: every member's plane on ONE colour scale, the slices on one axis,
the metrics side by side. The scales actually drawn are read back from the artists and returned."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, dpi: int = 100) -> None:
    """Write ``fig`` as a small PNG: rendered at ``dpi``, then reduced to an adaptive 256-colour palette
    (plots have few colours; this keeps the gallery's images a fraction of their RGBA size)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def shared_limits(planes, clip: float | None) -> tuple[float, float]:
    """(vmin, vmax) over every plane: the lowest loss of the family, and the highest one clipped at
    vmin + ``clip`` (so one exploding member does not wash out the others)."""
    lo = min(float(np.nanmin(ds["loss"].values)) for ds in planes.values())
    hi = max(float(np.nanmax(ds["loss"].values)) for ds in planes.values())
    if clip is not None:
        hi = min(hi, lo + float(clip))
    return lo, hi


def family_figures(study, rows, planes, out: Path, cfg) -> tuple[dict[str, Any], list[str]]:
    plt = _mpl()
    names = [r["model"] for r in rows]
    vmin, vmax = shared_limits(planes, cfg.get("clip", 10.0))
    n = len(names)
    cols = min(n, 4)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols + 0.8, 3.0 * nrows), squeeze=False)
    levels = np.linspace(vmin, vmax, 21)
    drawn = []
    mesh = None
    for ax, name in zip(axes.flat, names):
        ds = planes[name]
        z = np.clip(ds["loss"].values.T, None, vmax)
        mesh = ax.pcolormesh(ds["x"].values, ds["y"].values, z, cmap="magma", vmin=vmin, vmax=vmax, shading="nearest")
        ax.contour(ds["x"].values, ds["y"].values, z, levels=levels, colors="white", linewidths=0.4, alpha=0.6)
        ax.plot([0], [0], "c+", ms=8)
        ax.set_title(name, fontsize=9)
        ax.set_aspect("equal")
        drawn.append({"model": name, "vmin": float(mesh.norm.vmin), "vmax": float(mesh.norm.vmax)})
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if mesh is not None:
        fig.colorbar(mesh, ax=axes, shrink=0.8, label="training loss (shared scale)")
    fig.suptitle(f"{study.name}: filter-normalised random planes, one colour scale", fontsize=10)
    figs = []
    save_png(fig, out / "planes.png")
    plt.close(fig)
    figs.append("planes.png")

    # 1D: the y = 0 row of each plane, one axis
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        ds = planes[name]
        j = int(np.argmin(np.abs(ds["y"].values)))
        ax.plot(ds["x"].values, ds["loss"].values[:, j], label=name)
    ax.set_ylim(vmin - 0.02 * (vmax - vmin), vmax)
    ax.set_xlabel("filter-normalised direction 1")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    ax.set_title(f"{study.name}: 1D slices through θ (shared axis)", fontsize=10)
    ylim = ax.get_ylim()
    fig.tight_layout()
    save_png(fig, out / "slices.png")
    plt.close(fig)
    figs.append("slices.png")

    # metrics side by side
    panels = [("nonconvexity", "non-convexity fraction"), ("minima", "slice minima (real ones dark)"),
              ("ratio", "|λmin| / λmax"), ("lambda_max", "λmax"), ("trace", "trace"), ("sam", "SAM sharpness")]
    fig, axs = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.2))
    xs = np.arange(n)
    for ax, (col, label) in zip(axs, panels):
        vals = [float(r.get(col, np.nan)) for r in rows]
        ax.bar(xs, vals, color="tab:blue", alpha=0.6 if col == "minima" else 1.0)
        if col == "minima":
            ax.bar(xs, [r.get("minima_real", 0) for r in rows], color="tab:blue")
        ax.set_xticks(xs, names, rotation=60, fontsize=7, ha="right")
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    save_png(fig, out / "metrics.png")
    plt.close(fig)
    figs.append("metrics.png")
    return {"planes": {"vmin": vmin, "vmax": vmax, "drawn": drawn}, "slices": {"ylim": list(ylim)}}, figs
