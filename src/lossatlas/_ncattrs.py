"""Dataset attributes that netCDF (and so every tool reading it) can store as they are.

netCDF attributes are strings, numbers or 1-D arrays of numbers. Every Dataset lossatlas returns
keeps its attrs in that form (:func:`netcdf_safe`), so ``ds.to_netcdf(path)`` works with any engine
(netCDF4, h5netcdf, scipy's netCDF3):

- strings and numbers stay as they are; a bool becomes the integer 0 or 1;
- a non-empty list of numbers stays a list of numbers (a numeric array attribute in netCDF);
- anything else (a list of strings, a nested dict, ``None``, an empty list) becomes a JSON string,
  and its key is listed in the attribute ``lossatlas_json_attrs`` (the keys separated by commas);
- the keys of numeric lists are listed in ``lossatlas_list_attrs`` (netCDF reads a one-element array
  attribute back as a scalar; :func:`decoded` makes it a list again).

:func:`decoded` (and :func:`get` for one key) give the original values back, from a Dataset
lossatlas returned or from a netCDF file opened with ``xarray.open_dataset``.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from ._repr import MAX_REPR, table

#: the attribute naming the keys whose values are JSON strings
JSON_KEYS = "lossatlas_json_attrs"
#: the attribute naming the keys whose values are lists of numbers
LIST_KEYS = "lossatlas_list_attrs"

__all__ = ["JSON_KEYS", "LIST_KEYS", "netcdf_safe", "decoded", "get", "ResultAttrs"]


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


def _json_keys(attrs: Mapping[str, Any], name: str = JSON_KEYS) -> set[str]:
    raw = attrs.get(name, "")
    if isinstance(raw, (list, tuple, np.ndarray)):
        return {str(k) for k in raw}
    return {k for k in str(raw).split(",") if k}


def netcdf_safe(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` with every value in a form netCDF stores (see the module's docs); already-safe
    attrs (and their ``lossatlas_json_attrs``) pass through unchanged."""
    keys = _json_keys(attrs)
    was_list = _json_keys(attrs, LIST_KEYS)
    lists: set[str] = set()
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if k in (JSON_KEYS, LIST_KEYS):
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
            if k in was_list:  # a one-element list as netCDF reads it back
                lists.add(k)
        elif (isinstance(v, (list, tuple, np.ndarray)) and np.ndim(v) == 1 and len(v) > 0
              and all(_number(x) for x in v)):
            out[k] = [_plain(x) for x in v]
            keys.discard(k)
            lists.add(k)
        else:
            out[k] = json.dumps(_plain(v), sort_keys=True, default=str)
            keys.add(k)
    if keys:
        out[JSON_KEYS] = ",".join(sorted(keys))
    if lists:
        out[LIST_KEYS] = ",".join(sorted(lists))
    return out


def decoded(attrs_or_ds: Any) -> dict[str, Any]:
    """The attrs with their JSON-encoded values parsed back (a Dataset or a mapping of attrs);
    numeric arrays read from a netCDF file come back as lists."""
    attrs = getattr(attrs_or_ds, "attrs", attrs_or_ds)
    keys, lists = _json_keys(attrs), _json_keys(attrs, LIST_KEYS)
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if k in (JSON_KEYS, LIST_KEYS):
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
        if k in lists and _number(v):
            v = [v]
        out[k] = v
    return out


def get(attrs_or_ds: Any, key: str, default: Any = None) -> Any:
    """One attribute, decoded as :func:`decoded` does (``default`` when absent)."""
    attrs = getattr(attrs_or_ds, "attrs", attrs_or_ds)
    if key not in attrs:
        return default
    return decoded({key: attrs[key], JSON_KEYS: attrs.get(JSON_KEYS, ""), LIST_KEYS: attrs.get(LIST_KEYS, "")})[key]


def make_safe(ds):
    """Make ``ds.attrs`` (and its coordinates' and variables' attrs) netCDF-safe in place; returns ``ds``."""
    ds.attrs = netcdf_safe(ds.attrs)
    for var in ds.variables.values():
        if var.attrs:
            var.attrs = netcdf_safe(var.attrs)
    return ds


# --- ds.lossatlas: a few lines about a result, for notebooks and terminals ---------------------------------

def _short(v: Any, width: int = 12) -> str:
    s = str(v)
    return s if len(s) <= width else s[:width] + "…"


def _span(values: Any) -> str:
    a = np.asarray(values, dtype=float)
    finite = a[np.isfinite(a)]
    return "all NaN" if finite.size == 0 else f"[{finite.min():.4g}, {finite.max():.4g}]"


#: the attrs every grid result has (the summary shows the others: a barrier, a ratio map's settings, …)
_COMMON = frozenset({
    "kind", "lossatlas_version", "dtype", "strategy", "n_samples", "model_fingerprint", "data_fingerprint",
    "center_fingerprint", "directions_fingerprint", "direction_kind", "direction_norm", "direction_ignore",
    "direction_seed", "direction_labels", "max_abs_cosine", "chunk_shape", "provenance", "store", "verified",
    "points_total", "points_done", "complete", "nan_points", "inf_points", "seconds", "ranks", "rank_points",
    "rank_busy_seconds"})


@xr.register_dataset_accessor("lossatlas")
class ResultAttrs:
    """``ds.lossatlas``: a few lines about a Dataset lossatlas returned (what it is, its grid and values, where
    it is stored, what it was computed from) for notebooks and terminals, where xarray shows every attribute;
    the attrs themselves are unchanged (``ds.attrs``, ``to_netcdf``). ``.attrs`` decodes them all (as
    :func:`decoded`), ``.provenance`` is the computation's provenance as a dict."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    @property
    def attrs(self) -> dict[str, Any]:
        """Every attribute, JSON values parsed back (``lossatlas.attrs(ds)``)."""
        return decoded(self._ds)

    @property
    def provenance(self) -> dict[str, Any]:
        """The provenance the result was computed (and its store checked) with; ``{}`` when there is none."""
        raw = self._ds.attrs.get("provenance")
        try:
            return json.loads(raw) if isinstance(raw, str) else dict(raw or {})
        except (TypeError, ValueError):
            return {}

    def rows(self) -> list[tuple[str, str]]:
        """The summary as (field, text) rows: at most eight, each one short."""
        ds, a = self._ds, self.attrs
        dims = ", ".join(f"{d} {ds.sizes[d]} in {_span(ds[d].values)}" if d in ds.coords else f"{d} {ds.sizes[d]}"
                         for d in ds.dims)
        out = [("grid", dims or "–")]
        names = list(ds.data_vars)
        shown = ", ".join(f"{v} {_span(ds[v].values)}" for v in names[:3])
        out.append(("values", shown + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")))
        if "points_total" in a:
            done = f"{a.get('points_done')}/{a.get('points_total')} points"
            bad = ", ".join(f"{a[k]} {k.split('_')[0]}" for k in ("nan_points", "inf_points") if a.get(k))
            out.append(("points", done + ("" if a.get("complete") else " (incomplete)") + (f"; {bad}" if bad else "")))
        store = a.get("store")
        out.append(("store", (str(store) + ("" if a.get("verified", 1) else " (unverified)")) if store else "in memory"))
        labels = a.get("direction_labels")
        if a.get("direction_kind") is not None or labels:
            text = str(a.get("direction_kind"))
            if a.get("direction_norm") not in (None, "None"):
                text += f" ({a.get('direction_norm')})"
            if isinstance(labels, list) and labels:
                text += ": " + ", ".join(_short(x, 24) for x in labels[:4])
            out.append(("directions", text))
        problem = [f"{a['n_samples']} samples" if "n_samples" in a else "", str(a.get("dtype") or "")]
        problem += [f"{k} {_short(a[f'{k}_fingerprint'])}" for k in ("model", "data") if f"{k}_fingerprint" in a]
        if any(problem):
            out.append(("problem", ", ".join(p for p in problem if p)))
        extra = [(k, v) for k, v in a.items() if k not in _COMMON and _number(v)]
        if extra:
            out.append(("summary", ", ".join(f"{k} {float(v):.4g}" for k, v in extra[:4])
                        + (f" (+{len(extra) - 4} more)" if len(extra) > 4 else "")))
        if "lossatlas_version" in a or "seconds" in a:
            out.append(("made", f"lossatlas {a.get('lossatlas_version', '?')}"
                        + (f", {float(a['seconds']):.3g} s" if isinstance(a.get("seconds"), (int, float)) else "")))
        return out

    def _title(self) -> str:
        return f"lossatlas {self._ds.attrs.get('kind', 'result')}"

    def _foot(self) -> str:
        return f"{len(self.attrs)} attrs: ds.lossatlas.attrs (decoded), ds.lossatlas.provenance"

    def __repr__(self) -> str:
        lines = [self._title(), *(f"  {k}: {v}" for k, v in self.rows()), f"  ({self._foot()})"]
        out = "\n".join(lines)
        return out if len(out) <= MAX_REPR else out[:MAX_REPR - 1] + "…"

    def _repr_html_(self) -> str:
        return table(self._title(), self.rows(), self._foot())
