"""Figures of curvature results: the Hessian eigenvalue density and |λmin/λmax| maps (matplotlib).

matplotlib is imported inside the functions; each returns a ``matplotlib.figure.Figure``.
"""

from __future__ import annotations

from ._checks import figure as _released_figure, subplots as _released_subplots  # noqa: F401

from typing import Any

import numpy as np
import xarray as xr

from ..curvature.results import Density
from ..errors import bad_type, bad_value, public
from ._checks import check_levels, check_limits

__all__ = ["density", "ratio_map"]


def _figure(ax: Any, size: tuple[float, float]):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = _released_subplots(figsize=size)
        return fig, ax
    return ax.figure, ax


@public("plot.density")
def density(result: Any, *, ax: Any = None, log: bool = True, title: str | None = None, floor: float = 1e-6):
    """The smoothed spectral density φ(λ) of a :class:`~lossatlas.curvature.Density` (Ghorbani et al.
    2019 plot it on a log scale: ``log=True``, values below ``floor`` clipped), the negative part
    shaded, the extreme Ritz values marked and the estimated negative mass in the legend.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import torch, lossatlas
    >>> from lossatlas.plot.curvature import density as plot_density
    >>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1), torch.nn.MSELoss(), (x, 3 * x))
    >>> fig = plot_density(lossatlas.curvature.density(problem, progress=False))
    >>> fig.axes[0].get_xlabel()
    'eigenvalue λ'
    """
    if not isinstance(result, Density):
        raise bad_type("plot.density", "result", "a lossatlas.curvature.Density", result)
    fig, ax = _figure(ax, (6.0, 3.6))
    values = np.maximum(result.values, floor) if log else result.values
    ax.plot(result.grid, values, color="C0", lw=1.4, label="spectral density φ(λ)")
    negative = result.grid < 0
    if negative.any():
        mass = result.negative_mass
        lo, hi = result.negative_bounds
        ax.fill_between(result.grid[negative], floor if log else 0.0, values[negative], color="C3", alpha=0.35,
                        label=f"λ < 0: mass {mass.value:.3f} ± {mass.stderr:.3f} (bracket {lo:.3f}–{hi:.3f})")
    for value, name in ((result.lambda_min, "min"), (result.lambda_max, "max")):
        ax.axvline(value, color="0.4", lw=0.8, ls=":")
        ax.annotate(f" θ{name} = {value:.3g}", (value, 0.03), xycoords=("data", "axes fraction"), fontsize=7,
                    ha="right", va="bottom", rotation=90, color="0.3")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density" + (" (log scale)" if log else ""))
    ax.set_title(title or f"Hessian eigenvalue density (SLQ: {result.nodes.shape[0]} probes × {result.iters} "
                 f"steps, σ = {result.sigma:.2g})", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


@public("plot.ratio_map")
def ratio_map(ds: Any, *, ax: Any = None, variable: str = "ratio", title: str | None = None,
              loss_contours: int = 12, cmap: str = "viridis", vmin: float | None = None,
              vmax: float | None = None):
    """A 2-D map of ``ds[variable]`` (default ``ratio = |λmin/λmax|``, Li et al. 2018 Fig. 7) from
    :func:`lossatlas.curvature.ratio_map`, with loss contours, the λmin = 0 boundary (where the
    loss is locally convex on one side) and non-converged points crossed out.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import numpy as np, xarray as xr
    >>> from lossatlas.plot.curvature import ratio_map as plot_ratio_map
    >>> a = np.linspace(-1, 1, 5)
    >>> lam_min = np.add.outer(a, a) - 0.5
    >>> ds = xr.Dataset({"ratio": (("x", "y"), np.abs(lam_min) / 2), "lambda_min": (("x", "y"), lam_min),
    ...                  "loss": (("x", "y"), np.add.outer(a**2, a**2)), "converged": (("x", "y"), np.ones((5, 5)))},
    ...                 coords={"x": a, "y": a})
    >>> fig = plot_ratio_map(ds)
    >>> fig.axes[0].get_title()
    '|λmin / λmax|'
    """
    if not isinstance(ds, xr.Dataset):
        raise bad_type("plot.ratio_map", "ds", "an xarray.Dataset from lossatlas.curvature.ratio_map", ds)
    if variable not in ds:
        raise bad_value("plot.ratio_map", "variable", f"a variable of the dataset ({', '.join(ds.data_vars)})",
                        variable)
    if ds[variable].dims != ("x", "y"):
        raise bad_value("plot.ratio_map", "ds", "a map over two directions (dims ('x', 'y'))", ds[variable].dims)
    vmin, vmax = check_limits(vmin, vmax)
    if loss_contours:  # 0 (or None) draws no loss contours
        loss_contours = check_levels(loss_contours, arg="loss_contours", sequence=False)
    fig, ax = _figure(ax, (5.4, 4.6))
    x, y = ds.x.values, ds.y.values
    z = ds[variable].values.T
    mesh = ax.pcolormesh(x, y, z, cmap=cmap, shading="nearest", vmin=vmin, vmax=vmax)
    label = {"ratio": "|λmin / λmax|", "lambda_min": "λmin", "lambda_max": "λmax"}.get(variable, variable)
    fig.colorbar(mesh, ax=ax, label=label)
    if "loss" in ds and loss_contours and len(x) > 1 and len(y) > 1:
        cs = ax.contour(x, y, ds.loss.values.T, levels=loss_contours, colors="white", linewidths=0.6, alpha=0.8)
        ax.clabel(cs, fontsize=6, fmt="%.2g")
    if "lambda_min" in ds and len(x) > 1 and len(y) > 1:
        lam = ds.lambda_min.values.T
        if np.nanmin(lam) < 0 < np.nanmax(lam):
            ax.contour(x, y, lam, levels=[0.0], colors="red", linewidths=1.2, linestyles="--")
    if "converged" in ds:
        bad = ds.converged.values == 0
        if bad.any():
            gx, gy = np.meshgrid(x, y, indexing="ij")
            ax.plot(gx[bad], gy[bad], "rx", ms=5, label="not converged")
            ax.legend(fontsize=7, loc="lower right")
    ax.plot(0, 0, "w*", ms=9, mec="k")
    ax.set_xlabel(ds.x.attrs.get("long_name", "x"))
    ax.set_ylabel(ds.y.attrs.get("long_name", "y"))
    ax.set_title(title or label)
    fig.tight_layout()
    return fig
