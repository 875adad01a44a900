"""Edge-of-stability figure: λmax along training against the stability limit 2/η."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..errors import bad_type, public
from .surface import _mpl


@public("plot.edge_of_stability")
def edge_of_stability(ds: Any, *, lr: float | None = None, ax: Any = None, title: str | None = None,
                      show_trace: bool = False):
    """λmax (± its residual) and λmin at each checkpoint of :func:`lossatlas.curvature.along_trajectory`,
    with the line 2/η (``attrs["threshold"]``, or 2/``lr``); ``show_trace`` adds tr H on a second axis."""
    if not isinstance(ds, xr.Dataset) or "lambda_max" not in ds:
        raise bad_type("plot.edge_of_stability", "ds", "a Dataset from curvature.along_trajectory", ds)
    plt = _mpl()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    s = ds["step"].values
    ax.errorbar(s, ds["lambda_max"].values, yerr=ds["lambda_max_error"].values, marker="o", ms=3, label="λmax")
    ax.plot(s, ds["lambda_min"].values, marker="v", ms=3, label="λmin")
    thr = 2.0 / lr if lr else float(ds.attrs.get("threshold", np.nan))
    if np.isfinite(thr):
        ax.axhline(thr, color="k", ls="--", lw=1, label=f"2/η = {thr:.3g}" if not ds.attrs.get("momentum")
                   else f"(2+2β)/η = {thr:.3g}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("step")
    ax.set_ylabel("Hessian eigenvalue")
    if show_trace and "trace" in ds and np.isfinite(ds["trace"].values).any():
        ax2 = ax.twinx()
        ax2.plot(s, ds["trace"].values, color="tab:green", alpha=0.6, label="trace")
        ax2.set_ylabel("trace", color="tab:green")
    ax.legend(fontsize=8)
    ax.set_title(title or "curvature along training (edge of stability)", fontsize=10)
    fig.tight_layout()
    return fig
