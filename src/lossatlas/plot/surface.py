"""Static figures of surface Datasets: ``line``, ``contour``, ``heatmap``, ``surface3d``.

Every function takes the Dataset returned by :func:`lossatlas.surface` (or reopened with
:func:`lossatlas.open_surface`) and returns a matplotlib ``Figure``. Axis labels come from the
coordinates' ``long_name`` (what the directions are), NaN/Inf values are masked (and their count
shown), and the centre θ is marked. Figures follow the conventions of Li et al. (2018) figures:
contour lines of the loss over the plane, the 3D surface clipped to ``vmax``.
"""

from __future__ import annotations

from ._checks import figure as _released_figure, subplots as _released_subplots  # noqa: F401

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..directions._registry import describe as describe_directions
from ..errors import InvalidArgumentError, bad_type, bad_value, current_function, public
from .._ncattrs import get as _get
from ._checks import check_levels, check_limits, check_out_path, write_failed
from ._common import _mark_center, _masked, _mpl  # noqa: F401 (also used by other plot modules)
from .grid import lines

__all__ = ["line", "contour", "heatmap", "surface3d", "save", "FORMATS"]

FORMATS = (".png", ".pdf", ".svg")



def _check(ds: Any, ndim: int | None, variable: str | None = None) -> xr.DataArray | None:
    """The surface's variable to draw, checked (messages name the public function running)."""
    if not isinstance(ds, xr.Dataset):
        raise bad_type("ds", "an xarray.Dataset from lossatlas.surface/open_surface", ds)
    if variable is not None and variable not in ds.data_vars:
        raise bad_value("variable", f"one of {sorted(ds.data_vars)}", variable)
    if ndim is not None:
        da = ds[variable or "loss"]
        if da.ndim != ndim:
            hint = " (select a slice first, e.g. ds.sel(y=0.0))" if da.ndim > ndim else ""
            func = current_function("plot", innermost=True)
            raise InvalidArgumentError(f"{func}(): argument 'ds' must hold a {ndim}-D surface; received "
                                       f"{da.ndim}-D {da.dims}{hint}")
        return da
    return None


def _label(ds: xr.Dataset, dim: str) -> str:
    return str(ds[dim].attrs.get("long_name", dim))


def _title(ds: xr.Dataset, variable: str, title: str | None) -> str:
    if title is not None:
        return title
    shape = "×".join(str(ds.sizes[d]) for d in ds[variable].dims)
    kind = ds.attrs.get("direction_kind", "")
    what = describe_directions(kind, ds.attrs)
    name = ds.attrs.get("name")
    head = f"{name}: " if name else ""
    cuts = ", ".join(f"{k[6:]}={v:g}" for k, v in ds.attrs.items() if k.startswith("slice_") and
                     isinstance(v, (int, float)))
    return (f"{head}{variable} on a {shape} grid" + (f" ({what})" if what else "")
            + (f", slice at {cuts}" if cuts else ""))



def _levels(z: np.ma.MaskedArray, levels: int | Sequence[float], vmin: float | None, vmax: float | None,
            log: bool) -> np.ndarray:
    if isinstance(levels, np.ndarray):  # checked by check_levels: finite and increasing
        return levels
    if z.count() == 0:
        return np.linspace(0, 1, 2)
    lo = float(z.min()) if vmin is None else float(vmin)
    hi = float(z.max()) if vmax is None else float(vmax)
    if hi <= lo:
        hi = lo + (abs(lo) * 1e-6 or 1e-12)
    if log:
        lo = max(lo, 1e-300)
        return np.geomspace(lo, hi, int(levels))
    return np.linspace(lo, hi, int(levels))



def _path_xy(path: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(path, xr.Dataset) and "x" in path and "y" in path:
        return np.asarray(path["x"].values, float), np.asarray(path["y"].values, float)
    arr = np.asarray(path, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise bad_value("plot.contour", "path", "a projection Dataset with x, y or an (n, 2) array", path)
    return arr[:, 0], arr[:, 1]


def _nan_note(ax, n_bad: int) -> None:
    if n_bad:
        ax.text(0.01, 0.01, f"{n_bad} NaN/Inf points masked", transform=ax.transAxes, fontsize=8,
                color="crimson", va="bottom")


@public("plot.line")
def line(ds: xr.Dataset, variables: str | Sequence[str] = "loss", *, log: bool = False,
         accuracy: bool = True, vmin: float | None = None, vmax: float | None = None,
         mark_center: bool = True, title: str | None = None, ax=None):
    """A 1-D slice: ``variables`` against the coordinate, accuracy (if present) on a twin axis.

    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"loss": ("x", np.linspace(0, 1, 5) ** 2)}, coords={"x": np.linspace(-1, 1, 5)})
    >>> fig = line(ds)
    >>> fig.axes[0].get_xlabel()
    'x'

    A list of 1-D Datasets draws them all on one axes (:func:`lossatlas.plot.lines`).
    """
    if isinstance(ds, (list, tuple)):
        return lines(ds, variables if isinstance(variables, str) else "loss", log=log, vmin=vmin, vmax=vmax,
                     title=title, ax=ax)
    names = [variables] if isinstance(variables, str) else list(variables)
    for v in names:
        _check(ds, 1, v)
    vmin, vmax = check_limits(vmin, vmax)
    plt = _mpl()
    dim = ds[names[0]].dims[0]
    if ax is None:
        fig, ax = _released_subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    x = ds[dim].values
    total_bad = 0
    for v in names:
        y, n_bad = _masked(ds[v].values, log)
        total_bad += n_bad
        ax.plot(x, y, label=v, linewidth=1.8)
    if log:
        ax.set_yscale("log")
    ax.set_ylim(vmin, vmax)
    ax.set_xlabel(_label(ds, dim))
    ax.set_ylabel(", ".join(names))
    if mark_center and x.min() <= 0 <= x.max():
        ax.axvline(0.0, color="red", linestyle=":", linewidth=1, label="θ (centre)")
    for name, xy in (_get(ds, "anchors") or {}).items() if isinstance(_get(ds, "anchors"), dict) else []:
        ax.axvline(float(xy[0]), color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(name, (float(xy[0]), ax.get_ylim()[1]), textcoords="offset points", xytext=(3, -12))
    handles, labels = ax.get_legend_handles_labels()
    if accuracy and "accuracy" in ds.data_vars and "accuracy" not in names:
        twin = ax.twinx()
        twin.plot(x, ds["accuracy"].values, color="tab:green", linestyle="--", linewidth=1.4, label="accuracy")
        twin.set_ylabel("accuracy", color="tab:green")
        twin.set_ylim(-0.02, 1.02)
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    _nan_note(ax, total_bad)
    ax.set_title(_title(ds, names[0], title), fontsize=10)
    fig.tight_layout()
    return fig


@public("plot.contour")
def contour(ds: xr.Dataset, variable: str = "loss", *, filled: bool = False, levels: int | Sequence[float] = 30,
            vmin: float | None = None, vmax: float | None = None, log: bool = False, labels: bool = True,
            mark_center: bool = True, path: Any = None, title: str | None = None, cmap: str = "viridis", ax=None):
    """Contour lines (``filled=True``: filled contours with a colour bar) of a 2-D surface.

    ``path``: an optional trajectory projection (a Dataset with ``x``/``y`` per step, or an (n, 2)
    array) drawn over the contours in the surface's coordinates.
    """
    da = _check(ds, 2, variable)
    levels = check_levels(levels)
    vmin, vmax = check_limits(vmin, vmax)
    plt = _mpl()
    dx, dy = da.dims
    z, n_bad = _masked(da.transpose(dy, dx).values, log)
    if vmax is not None and filled:
        z = np.ma.minimum(z, vmax)  # filled: clip into the top colour; lines above vmax are simply not drawn
    lv = _levels(z, levels, vmin, vmax, log)
    if ax is None:
        fig, ax = _released_subplots(figsize=(6, 5))
    else:
        fig = ax.figure
    from matplotlib.colors import LogNorm

    norm = LogNorm(vmin=lv[0], vmax=lv[-1]) if log else None
    xs, ys = ds[dx].values, ds[dy].values
    if filled:
        cs = ax.contourf(xs, ys, z, levels=lv, cmap=cmap, norm=norm, extend="both")
        if log:
            from matplotlib.ticker import LogFormatterSciNotation, LogLocator

            fig.colorbar(cs, ax=ax, label=variable, ticks=LogLocator(), format=LogFormatterSciNotation())
        else:
            fig.colorbar(cs, ax=ax, label=variable, format="%.3g")
        ax.contour(xs, ys, z, levels=lv, colors="k", linewidths=0.3, norm=norm)
    else:
        cs = ax.contour(xs, ys, z, levels=lv, cmap=cmap, norm=norm, linewidths=1.0)
        if labels:
            ax.clabel(cs, cs.levels[::max(1, len(cs.levels) // 8)], fontsize=7, fmt="%.3g")
    _mark_center(ax, ds, (dx, dy), mark_center)
    if path is not None:
        px, py = _path_xy(path)
        ax.plot(px, py, color="tab:red", marker=".", markersize=4, linewidth=1.2, label="trajectory")
        ax.plot(px[-1:], py[-1:], color="tab:red", marker="o", markersize=6)
    ax.set_xlabel(_label(ds, dx))
    ax.set_ylabel(_label(ds, dy))
    ax.set_aspect("auto")
    _nan_note(ax, n_bad)
    ax.set_title(_title(ds, variable, title), fontsize=10)
    if mark_center or path is not None:
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


@public("plot.heatmap")
def heatmap(ds: xr.Dataset, variable: str = "loss", *, vmin: float | None = None, vmax: float | None = None,
            log: bool = False, mark_center: bool = True, title: str | None = None, cmap: str = "magma", ax=None):
    """A colour map of a 2-D surface (one cell per grid point), NaN/Inf shown in grey."""
    da = _check(ds, 2, variable)
    vmin, vmax = check_limits(vmin, vmax)
    plt = _mpl()
    dx, dy = da.dims
    z, n_bad = _masked(da.transpose(dy, dx).values, log)
    if ax is None:
        fig, ax = _released_subplots(figsize=(6, 5))
    else:
        fig = ax.figure
    from matplotlib.colors import LogNorm, Normalize

    finite = z.compressed()
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    norm = LogNorm(vmin=max(lo, 1e-300), vmax=hi) if log else Normalize(vmin=lo, vmax=hi)
    cm = plt.get_cmap(cmap).with_extremes(bad="lightgrey")
    mesh = ax.pcolormesh(ds[dx].values, ds[dy].values, z, cmap=cm, norm=norm, shading="nearest")
    fig.colorbar(mesh, ax=ax, label=variable)
    _mark_center(ax, ds, (dx, dy), mark_center)
    ax.set_xlabel(_label(ds, dx))
    ax.set_ylabel(_label(ds, dy))
    _nan_note(ax, n_bad)
    ax.set_title(_title(ds, variable, title), fontsize=10)
    fig.tight_layout()
    return fig


@public("plot.surface3d")
def surface3d(ds: xr.Dataset, variable: str = "loss", *, vmin: float | None = None, vmax: float | None = None,
              log: bool = False, mark_center: bool = True, title: str | None = None, cmap: str = "viridis",
              elev: float = 35, azim: float = -60, ax=None):
    """A 3-D surface plot; values above ``vmax`` are clipped (as in Li et al.'s 3D figures)."""
    da = _check(ds, 2, variable)
    vmin, vmax = check_limits(vmin, vmax)
    plt = _mpl()
    dx, dy = da.dims
    z, n_bad = _masked(da.transpose(dy, dx).values, False)
    zf = z.filled(np.nan)
    if vmax is not None:
        zf = np.minimum(zf, vmax)
    if vmin is not None:
        zf = np.maximum(zf, vmin)
    if log:
        positive = zf[np.isfinite(zf) & (zf > 0)]
        zf = np.log10(np.maximum(zf, positive.min() if positive.size else 1e-12))
    if ax is None:
        fig = _released_figure(figsize=(7, 5.5))
        ax = fig.add_subplot(projection="3d")
    else:
        fig = ax.figure
    X, Y = np.meshgrid(ds[dx].values, ds[dy].values)
    ax.plot_surface(X, Y, zf, cmap=cmap, linewidth=0, antialiased=True, rcount=min(200, X.shape[0]),
                    ccount=min(200, X.shape[1]))
    if mark_center and ds[dx].min() <= 0 <= ds[dx].max() and ds[dy].min() <= 0 <= ds[dy].max():
        zc = _value_at_origin(ds[variable], dx, dy)
        ax.scatter([0], [0], [np.log10(zc) if log and zc > 0 else zc], color="red", s=40, marker="*", depthshade=False)
    ax.view_init(elev=elev, azim=azim)
    ax.set_xlabel(_label(ds, dx), fontsize=8)
    ax.set_ylabel(_label(ds, dy), fontsize=8)
    ax.set_zlabel(f"log10 {variable}" if log else variable)
    if n_bad:
        ax.text2D(0.01, 0.01, f"{n_bad} NaN/Inf points masked", transform=ax.transAxes, fontsize=8, color="crimson")
    ax.set_title(_title(ds, variable, title), fontsize=10)
    fig.tight_layout()
    return fig


def _value_at_origin(da, dx: str, dy: str) -> float:
    """The value at (0, 0): the grid's own when θ is a grid point, else the bilinear interpolation of
    the drawn surface there (never a neighbouring point's value)."""
    xs, ys = da[dx].values, da[dy].values
    if (xs == 0.0).any() and (ys == 0.0).any():
        return float(da.sel({dx: 0.0, dy: 0.0}))
    z = da.transpose(dx, dy).values

    def bracket(axis):
        i = int(np.clip(np.searchsorted(axis, 0.0) - 1, 0, len(axis) - 2)) if len(axis) > 1 else 0
        w = 0.0 if len(axis) == 1 else (0.0 - axis[i]) / (axis[i + 1] - axis[i])
        return i, w
    (i, wx), (j, wy) = bracket(xs), bracket(ys)
    i1, j1 = min(i + 1, len(xs) - 1), min(j + 1, len(ys) - 1)
    return float((1 - wx) * (1 - wy) * z[i, j] + wx * (1 - wy) * z[i1, j] + (1 - wx) * wy * z[i, j1]
                 + wx * wy * z[i1, j1])


@public("plot.save")
def save(fig, path: str | Path, *, dpi: int = 130) -> Path:
    """Save a figure as PNG, PDF or SVG (by the file's suffix); creates parent folders."""
    path = check_out_path(path, FORMATS)
    try:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    except OSError as exc:
        raise write_failed("plot.save", path, exc) from exc
    return path
