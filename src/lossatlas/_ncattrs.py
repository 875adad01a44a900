"""Dataset attributes that netCDF (and so every tool reading it) can store as they are.

netCDF attributes are strings, numbers or 1-D arrays of numbers. Every Dataset lossatlas returns
keeps its attrs in that form (:func:`netcdf_safe`), so ``ds.to_netcdf(path)`` works with any engine
(netCDF4, h5netcdf, scipy's netCDF3):

- strings and numbers stay as they are; a bool becomes the integer 0 or 1;
- a non-empty list of numbers stays a list of numbers (a numeric array attribute in netCDF);
- anything else (a list of strings, a nested dict, ``None``, an empty list) becomes a JSON string,
  and its key is listed in the attribute ``lossatlas_json_attrs`` (the keys separated by commas).

:func:`decoded` (and :func:`get` for one key) give the original values back, from a Dataset
lossatlas returned or from a netCDF file opened with ``xarray.open_dataset``.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

#: the attribute naming the keys whose values are JSON strings
JSON_KEYS = "lossatlas_json_attrs"

__all__ = ["JSON_KEYS", "netcdf_safe", "decoded", "get"]


def _number(v: Any) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, (bool, np.bool_, complex))


def _plain(v: Any) -> Any:
    """numpy scalars/arrays as Python values (for JSON)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _json_keys(attrs: Mapping[str, Any]) -> set[str]:
    raw = attrs.get(JSON_KEYS, "")
    if isinstance(raw, (list, tuple, np.ndarray)):
        return {str(k) for k in raw}
    return {k for k in str(raw).split(",") if k}


def netcdf_safe(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` with every value in a form netCDF stores (see the module's docs); already-safe
    attrs (and their ``lossatlas_json_attrs``) pass through unchanged."""
    keys = _json_keys(attrs)
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if k == JSON_KEYS:
            continue
        if k in keys and isinstance(v, str):  # already encoded
            out[k] = v
            continue
        if isinstance(v, (bool, np.bool_)):
            out[k] = int(v)
            keys.discard(k)
        elif isinstance(v, str):
            out[k] = v
            keys.discard(k)
        elif _number(v):
            out[k] = _plain(v)
            keys.discard(k)
        elif (isinstance(v, (list, tuple, np.ndarray)) and np.ndim(v) == 1 and len(v) > 0
              and all(_number(x) for x in v)):
            out[k] = [_plain(x) for x in v]
            keys.discard(k)
        else:
            out[k] = json.dumps(_plain(v), sort_keys=True, default=str)
            keys.add(k)
    if keys:
        out[JSON_KEYS] = ",".join(sorted(keys))
    return out


def decoded(attrs_or_ds: Any) -> dict[str, Any]:
    """The attrs with their JSON-encoded values parsed back (a Dataset or a mapping of attrs);
    numeric arrays read from a netCDF file come back as lists."""
    attrs = getattr(attrs_or_ds, "attrs", attrs_or_ds)
    keys = _json_keys(attrs)
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if k == JSON_KEYS:
            continue
        if k in keys and isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def get(attrs_or_ds: Any, key: str, default: Any = None) -> Any:
    """One attribute, decoded as :func:`decoded` does (``default`` when absent)."""
    attrs = getattr(attrs_or_ds, "attrs", attrs_or_ds)
    if key not in attrs:
        return default
    return decoded({key: attrs[key], JSON_KEYS: attrs.get(JSON_KEYS, "")})[key]


def make_safe(ds):
    """Make ``ds.attrs`` (and its coordinates' and variables' attrs) netCDF-safe in place; returns ``ds``."""
    ds.attrs = netcdf_safe(ds.attrs)
    for var in ds.variables.values():
        if var.attrs:
            var.attrs = netcdf_safe(var.attrs)
    return ds
