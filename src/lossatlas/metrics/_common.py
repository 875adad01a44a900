"""Checks and helpers shared by the landscape metrics: reading a surface's grid, its rounding band,
and the centre/directions a slice was drawn with."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from .. import params as P
from ..curvature._common import check_flag, check_int
from ..errors import InvalidArgumentError, bad_type, bad_value, current_function, with_name
from ..surface import as_directions, open_directions

#: unit roundoff of the precision a surface's values were computed in (attrs["dtype"])
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}


def check_surface(*args: Any, dims: tuple[int, ...] = (1, 2), var: str = "loss"
                  ) -> tuple[np.ndarray, list[np.ndarray], tuple[str, ...]]:
    """(values, axes, dim names) of a surface Dataset's ``var`` (float64), or the library's error:
    ``check_surface(surface)`` (or with the function's name first)."""
    func, (surface,) = with_name(args, 1, "check_surface")
    if not isinstance(surface, (xr.Dataset, xr.DataArray)):
        raise bad_type(func, "surface", "an xarray.Dataset made by lossatlas.surface (dims x, y; variable 'loss')",
                       surface)
    if isinstance(surface, xr.Dataset):
        if var not in surface.data_vars:
            raise bad_value(func, "surface", f"a Dataset with a {var!r} variable",
                            f"variables {sorted(surface.data_vars)}")
        arr = surface[var]
    else:
        arr = surface
    if arr.ndim not in dims:
        raise bad_value(func, "surface", f"a surface with {' or '.join(map(str, dims))} dimension(s)",
                        f"dims {arr.dims}")
    values = np.asarray(arr.values, dtype=np.float64)
    axes = []
    for d in arr.dims:
        if d not in arr.coords:
            raise bad_value(func, "surface", f"coordinates for every dimension (missing {d!r})", f"dims {arr.dims}")
        a = np.asarray(arr.coords[d].values, dtype=np.float64)
        if len(a) < 3:
            raise bad_value(func, "surface", "at least 3 grid points along every axis", f"{len(a)} along {d!r}")
        if not np.all(np.diff(a) > 0):
            raise bad_value(func, "surface", f"increasing coordinates along {d!r}", a[:5])
        axes.append(a)
    if not np.all(np.isfinite(values)):
        bad = int((~np.isfinite(values)).sum())
        raise InvalidArgumentError(f"{func}(): argument 'surface' must hold finite values of {var!r} (an incomplete "
                                   f"store or NaN/Inf losses); received {bad} non-finite point(s)")
    return values, axes, tuple(arr.dims)


def spacing(axis: np.ndarray, name: str, func: str | None = None) -> float:
    """The step of a uniform axis (finite differences need one), or the library's error."""
    func = func or current_function("lossatlas", innermost=True)
    steps = np.diff(axis)
    h = float(steps.mean())
    if np.max(np.abs(steps - h)) > 1e-9 * max(abs(h), float(np.max(np.abs(axis)))):
        raise bad_value(func, "surface", f"a uniform grid along {name!r}", f"steps from {steps.min()} to {steps.max()}")
    return h


def roundoff(surface: Any) -> float:
    """Unit roundoff of the precision the surface was computed in (float64 when unrecorded)."""
    attrs = getattr(surface, "attrs", {}) or {}
    return UNIT_ROUNDOFF.get(str(attrs.get("dtype", "float64")).replace("torch.", ""), 2.0 ** -53)


def check_number(*args: Any, minimum: float | None = None, strict: bool = False,
                 allow_none: bool = False) -> float | None:
    """A finite real number (optionally ≥ / > ``minimum``): ``check_number(arg, value)`` (or with the
    function's name first)."""
    func, (arg, value) = with_name(args, 2, "check_number")
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise bad_type(func, arg, "a real number" + (" or None" if allow_none else ""), value)
    v = float(value)
    if not math.isfinite(v):
        raise bad_value(func, arg, "a finite number", value)
    if minimum is not None and (v < minimum or (strict and v == minimum)):
        raise bad_value(func, arg, f"a number {'>' if strict else '>='} {minimum}", value)
    return v


def basis(surface: Any, problem: Any, center: Mapping | None, directions: Any):
    """(centre, list of direction dicts) of the slice: given, or read back from the surface's store."""
    func = current_function("lossatlas", innermost=True)
    if center is None or directions is None:
        store = (getattr(surface, "attrs", {}) or {}).get("store")
        if not store:  # in memory: "" (see lossatlas.grid_job)
            raise InvalidArgumentError(
                f"{func}(): arguments 'center' and 'directions' are needed to place the slice in parameter space "
                "(the surface was computed in memory, not with store=, so they cannot be read back); received "
                f"center={'given' if center is not None else 'None'}, directions="
                f"{'given' if directions is not None else 'None'}")
        saved_center, saved_dirs = open_directions(store)
        center = saved_center if center is None else center
        directions = saved_dirs if directions is None else directions
        center = {k: v.to(dtype=problem.dtype, device=problem.device) for k, v in center.items()}
        dirs = [{k: v.to(dtype=problem.dtype, device=problem.device) for k, v in d.items()}
                for d in as_directions(directions)]
    else:
        dirs = list(as_directions(directions))
    problem.check_params(center, arg="center")

    for i, d in enumerate(dirs):
        P.check_like(center, d, arg=f"directions[{i}]", ref_arg="center")
    return dict(center), [dict(d) for d in dirs]


def half_grid(values: np.ndarray) -> np.ndarray:
    """Every other grid point along each axis, keeping the middle point (θ itself on a grid with an odd
    number of steps and a symmetric span)."""
    return values[tuple(slice((n // 2) % 2, None, 2) for n in values.shape)]
