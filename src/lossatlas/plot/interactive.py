"""Interactive HTML figures (plotly): a rotatable 3-D surface or a 1-D curve, saved as one
self-contained HTML file that opens offline (plotly.js is embedded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import MissingDependencyError, bad_type, bad_value, public
from ._checks import check_limit, check_out_path, write_failed

__all__ = ["interactive", "save_html"]


def _plotly():
    try:
        import plotly.graph_objects as go
    except ImportError as exc:  # pragma: no cover - plotly is in the dev/interactive extras
        raise MissingDependencyError("interactive figures need plotly: pip install 'lossatlas[interactive]'") from exc
    return go


@public("plot.interactive")
def interactive(ds: xr.Dataset, variable: str = "loss", *, vmax: float | None = None, log: bool = False,
                title: str | None = None):
    """A plotly Figure: ``go.Surface`` for a 2-D surface, a line for a 1-D slice.

    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"loss": (("x", "y"), np.ones((3, 3)))}, coords={"x": [-1., 0, 1], "y": [-1., 0, 1]})
    >>> type(interactive(ds)).__name__
    'Figure'
    """
    go = _plotly()
    if not isinstance(ds, xr.Dataset):
        raise bad_type("plot.interactive", "ds", "an xarray.Dataset from lossatlas.surface", ds)
    if variable not in ds.data_vars:
        raise bad_value("plot.interactive", "variable", f"one of {sorted(ds.data_vars)}", variable)
    vmax = check_limit("vmax", vmax)
    da = ds[variable]
    z = np.asarray(da.values, dtype=float)
    z = np.where(np.isfinite(z), z, np.nan)
    if vmax is not None:
        z = np.minimum(z, vmax)
    if log:
        positive = z[np.isfinite(z) & (z > 0)]
        z = np.log10(np.maximum(z, positive.min() if positive.size else 1e-12))
    zlabel = f"log10 {variable}" if log else variable
    labels = [str(ds[d].attrs.get("long_name", d)) for d in da.dims]
    if da.ndim == 1:
        fig = go.Figure(go.Scatter(x=ds[da.dims[0]].values, y=z, mode="lines", name=variable))
        fig.update_layout(xaxis_title=labels[0], yaxis_title=zlabel)
    elif da.ndim == 2:
        dx, dy = da.dims
        fig = go.Figure(go.Surface(x=ds[dx].values, y=ds[dy].values, z=z.T, colorscale="Viridis",
                                   colorbar={"title": zlabel}))
        fig.update_layout(scene={"xaxis_title": labels[0], "yaxis_title": labels[1], "zaxis_title": zlabel})
    else:
        raise bad_value("plot.interactive", "ds", "a 1-D or 2-D surface", f"{da.ndim}-D {da.dims}")
    fig.update_layout(title=title or f"{variable} ({'×'.join(str(s) for s in da.shape)} grid)",
                      margin={"l": 0, "r": 0, "t": 40, "b": 0})
    return fig


@public("plot.save_html")
def save_html(fig, path: str | Path) -> Path:
    """Write a self-contained HTML file (plotly.js embedded, works offline)."""
    path = check_out_path(path, (".html", ".htm"))
    try:
        fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    except OSError as exc:
        raise write_failed("plot.save_html", path, exc) from exc
    return path
