"""Matplotlib helpers shared by every plot module (one place: no plot module imports another for them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from .._ncattrs import get as _get


def _mpl():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "cairo", "module://matplotlib_inline.backend_inline"):
        try:
            import matplotlib.pyplot as plt  # noqa: F401
        except Exception:  # pragma: no cover - headless without a GUI toolkit
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _masked(values: np.ndarray, log: bool, floor: float | None = None) -> tuple[np.ma.MaskedArray, int]:
    v = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(v)
    if log:
        positive = v[np.isfinite(v) & (v > 0)]
        tiny = floor if floor is not None else (positive.min() if positive.size else 1e-12)
        v = np.where(np.isfinite(v), np.maximum(v, tiny), v)
    return np.ma.masked_array(v, mask=bad), int(bad.sum())


def _mark_center(ax, ds: xr.Dataset, dims: Sequence[str], mark: bool) -> None:
    if not mark:
        return
    coords = [ds[d].values for d in dims]
    if all(c.min() <= 0 <= c.max() for c in coords):
        ax.plot(*([0.0] * len(dims)), marker="*", color="red", markersize=12, markeredgecolor="white",
                linestyle="none", label="θ (centre)", zorder=5)
    anchors = _get(ds, "anchors")
    if isinstance(anchors, dict):
        for name, xy in anchors.items():
            if name != "a" and len(xy) == len(dims):
                ax.plot(*xy, marker="o", color="white", markeredgecolor="black", linestyle="none", zorder=5)
                ax.annotate(name, xy, textcoords="offset points", xytext=(5, 5))
