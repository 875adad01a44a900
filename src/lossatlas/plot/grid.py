"""Several results on shared scales: :func:`grid` (one panel per surface, shared contour levels,
colour range and axes) and :func:`lines` (several 1-D slices on one axes; ``plot.line([...])``).

>>> import matplotlib; matplotlib.use("Agg")
>>> import numpy as np, xarray as xr
>>> a = np.linspace(-1, 1, 5)
>>> mk = lambda s, name: xr.Dataset({"loss": (("x", "y"), s * np.add.outer(a**2, a**2))},
...                                 coords={"x": a, "y": a}, attrs={"name": name})
>>> fig = grid([mk(1.0, "small"), mk(3.0, "large")])
>>> [ax.get_title() for ax in fig.axes[:2]]
['small', 'large']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..errors import bad_type, bad_value, current_function, public
from ._checks import check_limits
from ._common import _mark_center, _masked, _mpl

__all__ = ["grid", "lines", "shared_range", "use_log", "KINDS"]

#: panel kinds of :func:`grid`: 2-D ``contour``, ``filled``, ``heatmap``, ``ratio``; 1-D ``line``
KINDS = ("contour", "filled", "heatmap", "ratio", "line")


def _check_list(datasets: Any, variable: str, *, func: str | None = None) -> list[xr.Dataset]:
    """A non-empty list of Datasets holding ``variable`` (messages name the public function running,
    or ``func`` when given)."""
    func = func or current_function("plot", innermost=True)
    if isinstance(datasets, xr.Dataset) or not isinstance(datasets, (list, tuple)) or not datasets:
        raise bad_type(func, "datasets", "a non-empty list of xarray Datasets", datasets)
    for i, ds in enumerate(datasets):
        if not isinstance(ds, xr.Dataset):
            raise bad_type(func, f"datasets[{i}]", "an xarray.Dataset", ds)
        if variable not in ds.data_vars:
            raise bad_value(func, "variable", f"a variable of datasets[{i}] ({', '.join(ds.data_vars)})",
                            variable)
    return list(datasets)


def shared_range(datasets: Sequence[xr.Dataset], variable: str = "loss", *, log: bool = False,
                 quantile: float | None = None) -> tuple[float, float]:
    """(vmin, vmax) over every finite value of ``variable`` in all ``datasets`` (positive values only
    when ``log``); ``quantile`` (e.g. 0.95) caps vmax at that quantile of the pooled values."""
    pooled = np.concatenate([np.asarray(ds[variable].values, float).ravel() for ds in datasets])
    pooled = pooled[np.isfinite(pooled) & ((pooled > 0) if log else True)]
    if not pooled.size:
        return (1e-12, 1.0) if log else (0.0, 1.0)
    lo = float(pooled.min())
    hi = float(np.quantile(pooled, quantile)) if quantile is not None else float(pooled.max())
    if hi <= lo:
        hi = lo + (abs(lo) * 1e-6 or 1e-12)
    return lo, hi


def use_log(datasets: Sequence[xr.Dataset], variable: str = "loss", ratio: float = 100.0) -> bool:
    """A log colour scale when the values are positive and span more than ``ratio`` (max/min)."""
    pooled = np.concatenate([np.asarray(ds[variable].values, float).ravel() for ds in datasets])
    pooled = pooled[np.isfinite(pooled)]
    return bool(pooled.size and pooled.min() > 0 and pooled.max() / pooled.min() > ratio)


def _title(ds: xr.Dataset, i: int, titles: Sequence[str] | None) -> str:
    if titles is not None:
        return str(titles[i])
    return str(ds.attrs.get("name") or ds.attrs.get("title") or f"result {i + 1}")


@public("plot.grid")
def grid(datasets: Sequence[xr.Dataset], variable: str | None = None, *, kind: str | None = None,
         levels: int | Sequence[float] = 30, vmin: float | None = None, vmax: float | None = None,
         log: bool | None = None, ncols: int | None = None, titles: Sequence[str] | None = None,
         sharex: bool = True, sharey: bool = True, cmap: str = "viridis", panel_size: tuple[float, float] = (4.6, 3.9)):
    """One panel per result, all on the same scales: contour levels (``contour``/``filled``), colour
    range (every 2-D kind, one colour bar), value axis (``line``) and, by default, the same x/y axes.

    ``kind``: one of :data:`KINDS` (default ``line`` for 1-D results, ``ratio`` for ratio maps, else
    ``contour``). ``variable``: default ``loss`` (``ratio`` for ratio maps). ``vmin``/``vmax``: the
    shared range (default: over all panels); ``log``: a log scale (default: when the positive values
    span more than a factor 100). Panel titles are each result's ``attrs["name"]`` (the problem's
    name) unless ``titles`` is given. Returns a matplotlib ``Figure``; the shared levels are in
    ``fig.lossatlas_levels`` and the range in ``fig.lossatlas_range``.
    """

    first_vars = datasets[0].data_vars if isinstance(datasets, (list, tuple)) and datasets and \
        isinstance(datasets[0], xr.Dataset) else {}
    if variable is None:
        variable = "ratio" if kind == "ratio" or (kind is None and "ratio" in first_vars) else "loss"
    datasets = _check_list(datasets, variable)
    ndims = {ds[variable].ndim for ds in datasets}
    if len(ndims) != 1 or ndims.pop() not in (1, 2):
        raise bad_value("plot.grid", "datasets", "results of the same dimension, 1-D or 2-D",
                        [ds[variable].dims for ds in datasets])
    one_d = datasets[0][variable].ndim == 1
    if kind is None:
        kind = "line" if one_d else ("ratio" if variable == "ratio" else "contour")
    if kind not in KINDS:
        raise bad_value("plot.grid", "kind", f"one of {KINDS}", kind)
    if (kind == "line") != one_d:
        raise bad_value("plot.grid", "kind", "'line' for 1-D results, a 2-D kind for 2-D results", kind)
    if titles is not None and len(titles) != len(datasets):
        raise bad_value("plot.grid", "titles", f"{len(datasets)} titles (one per result)", titles)
    vmin, vmax = check_limits(vmin, vmax)
    if log is None:
        log = kind != "ratio" and use_log(datasets, variable)
    lo, hi = shared_range(datasets, variable, log=log)
    lo = lo if vmin is None else vmin
    hi = hi if vmax is None else vmax
    if isinstance(levels, (int, np.integer)):
        lv = np.geomspace(max(lo, 1e-300), hi, int(levels)) if log else np.linspace(lo, hi, int(levels))
    else:
        lv = np.asarray(levels, dtype=float)
    plt = _mpl()
    from matplotlib.colors import LogNorm, Normalize

    norm = LogNorm(vmin=max(lo, 1e-300), vmax=hi) if log else Normalize(vmin=lo, vmax=hi)
    n = len(datasets)
    ncols = ncols or min(n, 3)
    nrows = -(-n // ncols)
    fig, axs = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols + (0.8 if not one_d else 0),
                                                   panel_size[1] * nrows),
                            sharex=sharex, sharey=sharey, squeeze=False)
    mappable = None
    for i, ds in enumerate(datasets):
        ax = axs[i // ncols][i % ncols]
        da = ds[variable]
        if one_d:
            _line_panel(ax, ds, da, log, lo, hi)
        else:
            mappable = _plane_panel(ax, ds, da, kind, lv, cmap, norm, log)
        ax.set_title(_title(ds, i, titles), fontsize=10)
    for j in range(n, nrows * ncols):
        axs[j // ncols][j % ncols].set_visible(False)
    if mappable is not None:
        import matplotlib.cm as cm

        sm = cm.ScalarMappable(norm=norm, cmap=cmap)
        label = {"ratio": "|λmin / λmax|"}.get(variable, variable) + (" (log scale)" if log else "")
        fig.colorbar(sm, ax=axs.ravel().tolist(), label=label, shrink=0.9)
    else:
        axs[0][0].set_ylabel(variable)
        fig.tight_layout()
    fig.lossatlas_levels = lv
    fig.lossatlas_range = (lo, hi)
    fig.lossatlas_log = bool(log)
    return fig


def _line_panel(ax, ds: xr.Dataset, da: xr.DataArray, log: bool, lo: float, hi: float) -> None:
    """One 1-D panel of :func:`grid`: the line on the shared range, θ's coordinate 0 dotted."""
    dim = da.dims[0]
    y, _ = _masked(da.values, log)
    ax.plot(ds[dim].values, y, linewidth=1.6)
    if log:
        ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    x = ds[dim].values
    if x.min() <= 0 <= x.max():
        ax.axvline(0.0, color="red", linestyle=":", linewidth=1)
    ax.set_xlabel(str(ds[dim].attrs.get("long_name", dim)))
    ax.grid(alpha=0.3)


def _plane_panel(ax, ds: xr.Dataset, da: xr.DataArray, kind: str, lv, cmap, norm, log: bool):
    """One 2-D panel of :func:`grid` (contour, filled or heatmap, on the shared levels and norm),
    θ marked; returns the mappable."""
    dx, dy = da.dims
    z, _ = _masked(da.transpose(dy, dx).values, log)
    xs, ys = ds[dx].values, ds[dy].values
    if kind == "contour":
        mappable = ax.contour(xs, ys, z, levels=lv, cmap=cmap, norm=norm, linewidths=1.0)
    elif kind == "filled":
        mappable = ax.contourf(xs, ys, np.ma.clip(z, lv[0], lv[-1]), levels=lv, cmap=cmap, norm=norm,
                               extend="both")
    else:
        mappable = ax.pcolormesh(xs, ys, z, cmap=cmap, norm=norm, shading="nearest")
    _mark_center(ax, ds, (dx, dy), True)
    ax.set_xlabel(str(ds[dx].attrs.get("long_name", dx)), fontsize=8)
    ax.set_ylabel(str(ds[dy].attrs.get("long_name", dy)), fontsize=8)
    return mappable


@public("plot.lines")
def lines(datasets: Sequence[xr.Dataset], variable: str = "loss", *, labels: Sequence[str] | None = None,
          log: bool = False, vmin: float | None = None, vmax: float | None = None, title: str | None = None,
          ax=None):
    """Several 1-D slices on one axes, one line each, labelled by ``labels`` or each result's
    ``attrs["name"]`` (and its direction label when the names repeat)."""

    datasets = _check_list(datasets, variable)
    for i, ds in enumerate(datasets):
        if ds[variable].ndim != 1:
            raise bad_value(f"datasets[{i}]", "a 1-D slice", ds[variable].dims)
    if labels is not None and len(labels) != len(datasets):
        raise bad_value("labels", f"{len(datasets)} labels (one per slice)", labels)
    vmin, vmax = check_limits(vmin, vmax)
    plt = _mpl()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    names = [_title(ds, i, None) for i, ds in enumerate(datasets)]
    for i, ds in enumerate(datasets):
        dim = ds[variable].dims[0]
        label = labels[i] if labels is not None else names[i]
        if labels is None and names.count(names[i]) > 1:
            label = f"{names[i]}: {ds[dim].attrs.get('long_name', dim)}"
        y, _ = _masked(ds[variable].values, log)
        ax.plot(ds[dim].values, y, linewidth=1.6, label=label)
    if log:
        ax.set_yscale("log")
    ax.set_ylim(vmin, vmax)
    ax.axvline(0.0, color="red", linestyle=":", linewidth=1)
    ax.set_xlabel("offset from θ (units of each direction)")
    ax.set_ylabel(variable)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{variable} along {len(datasets)} slices", fontsize=10)
    fig.tight_layout()
    return fig
