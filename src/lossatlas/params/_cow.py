"""Copy-on-write clones: a tensor that reads another's memory until either is written."""

from __future__ import annotations

import torch
from torch import Tensor


def lazy_clone(t: Tensor) -> Tensor:
    """A clone of ``t`` (detached) that copies nothing until it or ``t`` is written (``torch._lazy_clone``);
    a write to either, however made (in place, through ``.data``, under ``no_grad``), copies first, so
    the other keeps its values. A plain clone where torch lacks copy-on-write or refuses the tensor (e.g.
    sparse layouts). Note that ``data_ptr()`` of a copy-on-write tensor counts as a write."""
    lazy = getattr(torch, "_lazy_clone", None)
    if lazy is not None:
        try:
            return lazy(t.detach())
        except Exception:
            pass
    return t.detach().clone()
