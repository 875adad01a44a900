"""Symmetry recipes: a parameter point's transform g·θ written as index/scale steps, so a
certificate can state it and :meth:`Certificate.verify` can rebuild it (shared by the symmetry search
and the certificate check)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import params as P

Recipe = list[dict[str, Any]]


def rebuild(theta: Mapping[str, Tensor], recipe: Recipe) -> P.Params | None:
    """Apply a recipe of ``{"op": "index"|"scale", "name", "axis", "index", "factor"}`` steps."""
    out = {k: v.clone() for k, v in theta.items()}
    try:
        for step in recipe:
            t = out[step["name"]]
            axis = int(step["axis"])
            idx = torch.as_tensor(step["index"], dtype=torch.long, device=t.device)
            if t.ndim == 0:  # a scalar parameter: only scaling makes sense
                if step["op"] != "scale":
                    return None
                out[step["name"]] = t * float(step["factor"])
                continue
            if step["op"] == "index":
                out[step["name"]] = t.index_select(axis, idx)
            elif step["op"] == "scale":
                t = t.clone()
                sel = [slice(None)] * t.ndim
                sel[axis] = idx
                t[tuple(sel)] = t[tuple(sel)] * float(step["factor"])
                out[step["name"]] = t
            else:
                return None
    except (KeyError, IndexError, RuntimeError, ValueError):
        return None
    return out
