"""Figures for paths between models: loss along t (line, curves, barriers marked) and paths drawn on
a plane of the landscape (training trajectories on PCA planes, a curve in the plane of a, b and its
bend). Each function returns a matplotlib ``Figure``; matplotlib is imported lazily."""

from __future__ import annotations

from ._checks import figure as _released_figure, subplots as _released_subplots  # noqa: F401

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..errors import bad_type, bad_value, public
from ._checks import check_levels

__all__ = ["interpolation", "line_vs_curve", "path_on_plane", "path_coordinates"]


def _axes(ax: Any, figsize: tuple[float, float]):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = _released_subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


@public("plot.interpolation")
def interpolation(*datasets: xr.Dataset, labels: Sequence[str] | None = None, metric: str = "loss",
                  barrier: bool = True, logy: bool = False, ax: Any = None, title: str | None = None):
    """``metric`` along t for one or more datasets of :func:`lossatlas.interpolate` or
    ``Curve.evaluate``; the barrier of each (max f − max(f(0), f(1)), from its attrs) is drawn as
    an arrow at ``barrier_t``, and t outside [0, 1] is shaded."""
    if not datasets:
        raise bad_value("datasets", "at least one Dataset along 't'", datasets)
    for i, ds in enumerate(datasets):
        if not isinstance(ds, xr.Dataset) or "t" not in ds.dims:
            raise bad_type(f"datasets[{i}]", "an xarray.Dataset along 't' (from interpolate or Curve.evaluate)",
                           ds)
        if metric not in ds:
            raise bad_value("metric", f"a variable of the dataset ({', '.join(map(str, ds.data_vars))})", metric)
    if labels is not None and len(labels) != len(datasets):
        raise bad_value("labels", f"{len(datasets)} labels (one per dataset)", labels)
    fig, ax = _axes(ax, (6.0, 4.0))
    lo = min(float(ds.t.min()) for ds in datasets)
    hi = max(float(ds.t.max()) for ds in datasets)
    if lo < 0:
        ax.axvspan(lo, 0.0, color="0.92", zorder=0)
    if hi > 1:
        ax.axvspan(1.0, hi, color="0.92", zorder=0)
    for i, ds in enumerate(datasets):
        label = labels[i] if labels is not None else _default_label(ds)
        line, = ax.plot(ds.t.values, ds[metric].values, label=label, lw=1.8)
        if barrier and metric == "loss" and "barrier" in ds.attrs and np.isfinite(ds.attrs["barrier"]):
            base = max(ds.attrs["loss_a"], ds.attrs["loss_b"])
            top, tb = ds.attrs["max_loss"], ds.attrs["barrier_t"]
            ax.annotate("", xy=(tb, top), xytext=(tb, base),
                        arrowprops={"arrowstyle": "<->", "color": line.get_color(), "lw": 1.2})
            ax.hlines(base, 0.0, 1.0, colors=line.get_color(), linestyles=":", lw=0.9)
            ax.text(tb, (top + base) / 2, f"  barrier {ds.attrs['barrier']:.3g}", color=line.get_color(),
                    va="center", fontsize=8)
    ax.set_xlabel("t")
    ax.set_ylabel(metric)
    if logy:
        ax.set_yscale("log")
    ax.set_xticks(sorted({0.0, 1.0, *np.round(ax.get_xticks(), 6)}))
    ax.set_xlim(lo, hi)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{metric} along the path from a (t = 0) to b (t = 1)")
    fig.tight_layout()
    return fig


def _default_label(ds: xr.Dataset) -> str:
    if ds.attrs.get("kind") == "curve":
        return f"{ds.attrs.get('curve', '')} curve ({ds.attrs.get('bends', '?')} bend)"
    return "straight line"


@public("plot.line_vs_curve")
def line_vs_curve(line: xr.Dataset, curve: xr.Dataset, *, metric: str = "loss", ax: Any = None,
                  title: str | None = None):
    """The loss along the straight line a → b against the loss along a trained curve, with both
    barriers marked (Garipov et al. 2018, Fig. 1 right)."""
    return interpolation(line, curve, labels=["straight line", _default_label(curve)], metric=metric, ax=ax,
                         title=title or "straight line vs connecting curve")


def path_coordinates(path: Any) -> np.ndarray:
    """An (n, 2) array from a projection Dataset (variables ``x``, ``y``) or an (n, 2) array."""
    if isinstance(path, xr.Dataset):
        if "x" not in path or "y" not in path:
            raise bad_type("plot.path_on_plane", "path", "a projection Dataset with variables 'x' and 'y'", path)
        return np.stack([path["x"].values, path["y"].values], axis=1)
    arr = np.asarray(path, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise bad_type("plot.path_on_plane", "path", "an (n, 2) array or a projection Dataset", path)
    return arr


@public("plot.path_on_plane")
def path_on_plane(surface: xr.Dataset, path: Any = None, *, anchors: Mapping[str, Sequence[float]] | None = None,
                  metric: str = "loss", levels: int = 25, ax: Any = None, title: str | None = None,
                  annotate: str | None = "step"):
    """Contours of a 2-D surface (:func:`lossatlas.surface`) with a path drawn on it: a trajectory
    projection (:func:`lossatlas.trajectory.project`), a curve projection (``Curve.project``) or an
    (n, 2) array, in the surface's coordinates. ``anchors`` marks named points, e.g.
    ``{"a": (0, 0), "b": (1, 0)}``. Levels are spaced geometrically above the minimum, so the
    low-loss valleys stay readable."""
    if not isinstance(surface, xr.Dataset) or tuple(surface[metric].dims) != ("x", "y"):
        raise bad_type("surface", "a 2-D surface Dataset with dims ('x', 'y')", surface)
    levels = check_levels(levels, sequence=False)
    fig, ax = _axes(ax, (5.6, 4.8))
    z = surface[metric].values.T
    finite = z[np.isfinite(z)]
    zmin, zmax = float(finite.min()), float(finite.max())
    offsets = np.geomspace(1e-3 * max(zmax - zmin, 1e-12), max(zmax - zmin, 1e-12), levels)
    cs = ax.contour(surface.x.values, surface.y.values, z, levels=zmin + offsets, cmap="viridis", linewidths=0.8)
    fig.colorbar(cs, ax=ax, label=metric, format="%.3g")
    if path is not None:
        xy = path_coordinates(path)
        ax.plot(xy[:, 0], xy[:, 1], "-o", color="crimson", ms=2.5, lw=1.3, label="path")
        ax.plot(xy[0, 0], xy[0, 1], "s", color="crimson", ms=6)
        if annotate and isinstance(path, xr.Dataset) and annotate in path.coords:
            for i in np.linspace(0, len(xy) - 1, min(5, len(xy))).astype(int):
                ax.annotate(str(path[annotate].values[i]), xy[i], fontsize=7, color="crimson",
                            textcoords="offset points", xytext=(3, 3))
    for name, (px, py) in (anchors or {}).items():
        ax.plot(px, py, "*", color="black", ms=11)
        ax.annotate(name, (px, py), textcoords="offset points", xytext=(5, 5), fontsize=10)
    ax.set_xlabel(surface.x.attrs.get("long_name", "x"))
    ax.set_ylabel(surface.y.attrs.get("long_name", "y"))
    ax.set_title(title or f"{metric} on the plane")
    fig.tight_layout()
    return fig
