"""Surfaces over a data subsample with a per-point standard error.

The subsample (a ``fraction`` of the data, drawn with ``seed``) is split into ``groups`` batch groups;
the surface is evaluated on each group through the public :func:`lossatlas.surface` API, and combined:

* ``loss`` — Σ_g w_g L_g, w_g = n_g / n (the exact loss of the subsample, as one evaluation would give);
* ``loss_stderr`` — the between-batch standard error of that mean,
  √(G/(G−1) · Σ_g w_g² (L_g − loss)²), which is s/√G (s the groups' sample standard deviation) when the
  groups are of equal size. It estimates how far the subsample's loss may lie from the loss of the
  population the samples were drawn from, so a user who pays for 10 % of the data sees what it costs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr

from .errors import bad_type, bad_value, public
from .problem import Problem
from .surface import surface

__all__ = ["surface_stderr"]


@public("surface_stderr")
def surface_stderr(model: torch.nn.Module, loss: Any, data: tuple, center: Mapping[str, torch.Tensor] | None,
                   directions: Any, *, groups: int = 8, fraction: float = 1.0, seed: int = 0, shuffle: bool = True,
                   problem_kwargs: Mapping[str, Any] | None = None, **surface_kwargs: Any) -> xr.Dataset:
    """The surface of ``loss`` over a random ``fraction`` of ``data`` (an ``(inputs, targets)`` pair of
    tensors), with a per-point standard error from ``groups`` batch groups (see the module notes).

    ``model``, ``loss``: as for :class:`lossatlas.Problem` (``problem_kwargs`` are passed to it);
    ``center``, ``directions`` and ``surface_kwargs`` (``steps``, ``span``, ``strategy`` …) as for
    :func:`lossatlas.surface`. Returns the surface's Dataset with ``loss``, ``loss_stderr`` and
    ``loss_groups`` (one surface per group, dim ``group``), attrs ``groups``, ``fraction``,
    ``samples`` (the subsample's size), ``group_sizes`` and ``seed``. ``shuffle=False`` takes the
    first ``fraction`` of the data in order and splits it into consecutive groups.

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 64).reshape(-1, 1)
    >>> net = torch.nn.Linear(1, 1)
    >>> d = lossatlas.directions.random(net, n=1, seed=0, ignore=None)
    >>> ds = surface_stderr(net, torch.nn.MSELoss(), (x, 2 * x), None, d, groups=4, steps=5, progress=False)
    >>> sorted(v for v in ds.data_vars), ds.attrs["groups"]
    (['loss', 'loss_groups', 'loss_stderr'], 4)
    """
    func = "surface_stderr"
    if not isinstance(model, torch.nn.Module):
        raise bad_type(func, "model", "a torch.nn.Module", model)
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        raise bad_type(func, "data", "an (inputs, targets) pair of tensors", data)
    x, y = data
    if len(x) != len(y):
        raise bad_value(func, "data", "inputs and targets of the same length", (len(x), len(y)))
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 2:
        raise bad_value(func, "groups", "an integer >= 2 (a standard error needs two groups)", groups)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise bad_value(func, "fraction", "a number in (0, 1]", fraction)
    n = int(round(fraction * len(x)))
    if n < groups:
        raise bad_value(func, "fraction", f"a subsample of at least groups={groups} samples (got {n})", fraction)
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(x), generator=g)[:n] if shuffle else torch.arange(n)
    parts = np.array_split(idx.numpy(), groups)
    surface_kwargs = {"progress": False, "metrics": False, **surface_kwargs}
    surfaces = []
    for part in parts:
        sel = torch.as_tensor(part)
        problem = Problem(model, loss, (x[sel], y[sel]), **dict(problem_kwargs or {}))
        surfaces.append(surface(problem, center, directions, **surface_kwargs))
    stack = np.stack([s["loss"].values.astype(np.float64) for s in surfaces])
    w = np.array([len(p) for p in parts], dtype=np.float64) / n
    shape = (groups,) + (1,) * (stack.ndim - 1)
    mean = (w.reshape(shape) * stack).sum(0)
    var = groups / (groups - 1) * ((w.reshape(shape) ** 2) * (stack - mean) ** 2).sum(0)
    base = surfaces[0]
    dims = base["loss"].dims
    out = xr.Dataset({"loss": (dims, mean), "loss_stderr": (dims, np.sqrt(var)),
                      "loss_groups": (("group",) + dims, stack)},
                     coords={**{d: base[d].values for d in dims}, "group": np.arange(groups)},
                     attrs={**base.attrs, "groups": groups, "fraction": float(fraction), "samples": n,
                            "group_sizes": [len(p) for p in parts], "seed": int(seed)})
    return out
