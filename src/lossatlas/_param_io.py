"""Parameter dicts in zarr groups: one array per tensor, names, shapes, dtypes and order kept.

Used by saved :class:`~lossatlas.Directions` and by surface stores (the centre θ). bfloat16 has no
numpy dtype: it is stored exactly as float32 and converted back on reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["write_params", "read_params"]


def write_params(group: Any, tensors: Mapping[str, Tensor]) -> None:
    """Store a dict of tensors in a zarr group, keeping names, shapes, dtypes and order."""
    order = []
    for i, (k, t) in enumerate(tensors.items()):
        t = t.detach().cpu().contiguous()
        widened = t.dtype == torch.bfloat16  # numpy has no bfloat16: kept exactly as float32
        arr = (t.float() if widened else t).numpy()
        key = f"p{i}"
        group.create_array(key, shape=arr.shape, dtype=arr.dtype, chunks=arr.shape, overwrite=True)
        group[key][...] = arr
        order.append([key, k, "bfloat16"] if widened else [key, k])
    group.attrs["params"] = order


def read_params(group: Any, *, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """The dict of tensors written by :func:`write_params`, on ``device`` (default: the CPU)."""
    out = {}
    for entry in group.attrs["params"]:
        key, name = entry[0], entry[1]
        t = torch.from_numpy(np.asarray(group[key][...]).copy())
        if len(entry) > 2:
            t = t.to(getattr(torch, entry[2]))
        out[name] = t.to(device) if device is not None else t
    return out
