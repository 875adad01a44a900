"""Basin width along each direction of a slice: the interval around the slice's minimum where the
loss stays within δ of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _common as C
from ..errors import public

__all__ = ["basin_width", "BasinWidth"]


@dataclass(frozen=True)
class BasinWidth:
    """Widths (one per dimension of the slice) of {t : L ≤ L_min + δ} through the grid minimum.

    ``widths[i]`` = ``right[i] − left[i]`` along dimension ``dims[i]``, each end found by linear
    interpolation between the last grid point inside the level and the first outside; ``errors[i]``
    is the grid spacing along it (the error of the linear interpolation is below one spacing at each
    end for a profile monotone between grid points). ``bounded[i]`` is False when the level is not
    crossed before the grid's edge on some side: the width is then a lower bound (the edge is used).
    """

    widths: tuple[float, ...]
    errors: tuple[float, ...]
    left: tuple[float, ...]
    right: tuple[float, ...]
    bounded: tuple[bool, ...]
    minimum: tuple[float, ...]
    loss_min: float
    delta: float
    dims: tuple[str, ...]

    def __repr__(self) -> str:
        parts = ", ".join(f"{d}: {w:.4g} ± {e:.2g}{'' if b else ' (lower bound)'}"
                          for d, w, e, b in zip(self.dims, self.widths, self.errors, self.bounded))
        return f"BasinWidth(δ={self.delta:.3g}; {parts})"


def _crossing(t: np.ndarray, f: np.ndarray, i0: int, level: float, step: int) -> tuple[float, bool]:
    """The coordinate where the profile f first exceeds ``level`` walking from i0 by ``step``."""
    i = i0
    while 0 <= i + step < len(f):
        j = i + step
        if f[j] > level:
            # f[i] ≤ level < f[j]: linear interpolation
            w = (level - f[i]) / (f[j] - f[i])
            return float(t[i] + w * (t[j] - t[i])), True
        i = j
    return float(t[i]), False


@public("metrics.basin_width")
def basin_width(surface: Any, delta: float) -> BasinWidth:
    """The width of the basin of the slice's lowest grid point along each direction: the interval
    around it where L ≤ L_min + δ, along the grid line through the minimum.

    width = t_right − t_left, where each end is found by linear interpolation between the last grid
    point with L ≤ L_min + δ and the first with L > L_min + δ; error ± the grid spacing. For the parabola
    L(t) = a·t²/2 the width is 2·√(2δ/a). A width-based reading of flatness follows Keskar et al.
    2017 (arXiv:1609.04836) and Li et al. 2018 (arXiv:1712.09913).

    >>> import numpy as np, xarray as xr
    >>> t = np.linspace(-2, 2, 401)
    >>> ds = xr.Dataset({"loss": (("x",), 0.5 * 4.0 * t ** 2)}, coords={"x": t})
    >>> w = basin_width(ds, delta=0.5)
    >>> round(w.widths[0], 3), float(2 * np.sqrt(2 * 0.5 / 4.0))   # 2·√(2δ/a)
    (1.0, 1.0)
    """
    values, axes, dims = C.check_surface(surface)
    delta = C.check_number("delta", delta, minimum=0.0, strict=True)
    imin = np.unravel_index(int(np.argmin(values)), values.shape)
    lmin = float(values[imin])
    level = lmin + delta
    widths, errors, lefts, rights, bounded = [], [], [], [], []
    for ax, (t, d) in enumerate(zip(axes, dims)):
        idx = list(imin)
        idx[ax] = slice(None)
        f = values[tuple(idx)]
        lo, ok_lo = _crossing(t, f, int(imin[ax]), level, -1)
        hi, ok_hi = _crossing(t, f, int(imin[ax]), level, +1)
        widths.append(hi - lo)
        errors.append(float(np.max(np.diff(t))))
        lefts.append(lo)
        rights.append(hi)
        bounded.append(ok_lo and ok_hi)
    return BasinWidth(tuple(widths), tuple(errors), tuple(lefts), tuple(rights), tuple(bounded),
                      tuple(float(a[i]) for a, i in zip(axes, imin)), lmin, delta, dims)
