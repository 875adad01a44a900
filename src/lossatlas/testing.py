"""Tolerances and reference helpers shared by the tests (one place for every tolerance).

>>> import torch
>>> rtol(torch.float32), rtol(torch.float64)
(1e-06, 1e-12)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

#: relative tolerance of "equal up to rounding" comparisons, per evaluation dtype
RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}
#: absolute floor under which values count as zero (relative tolerance × typical loss scale)
ATOL = {torch.float32: 1e-7, torch.float64: 1e-13}


def rtol(dtype: torch.dtype) -> float:
    return RTOL[dtype]


def assert_close(actual, expected, dtype: torch.dtype, *, what: str = "values", factor: float = 1.0) -> None:
    """Elementwise |a − e| ≤ factor·(rtol·|e| + atol); NaN must match NaN."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    both_nan = np.isnan(a) & np.isnan(e)
    tol = factor * (RTOL[dtype] * np.abs(e) + ATOL[dtype])
    bad = ~both_nan & ~(np.abs(a - e) <= tol)
    if bad.any():
        i = np.argwhere(bad)[0]
        raise AssertionError(f"{what}: {int(bad.sum())} mismatches; first at {tuple(i)}: {a[tuple(i)]!r} vs "
                             f"{e[tuple(i)]!r} (rtol {RTOL[dtype] * factor})")


def naive_loss(model: nn.Module, loss_fn, batches: Sequence[tuple[Tensor, Tensor]], params: Mapping[str, Tensor],
               dtype: torch.dtype) -> float:
    """Reference dataset loss: a fresh eval-mode copy, functional_call per batch, Σ n_b ℓ_b / N."""
    m = copy.deepcopy(model).to(dtype).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            x = x.to(dtype) if x.is_floating_point() else x
            y = y.to(dtype) if y.is_floating_point() else y
            out = functional_call(m, dict(params), (x,))
            total += float(loss_fn(out, y)) * len(x)
            count += len(x)
    return total / count


def naive_surface(model: nn.Module, loss_fn, batches, center: Mapping[str, Tensor],
                  directions: Sequence[Mapping[str, Tensor]], axes: Sequence[np.ndarray],
                  dtype: torch.dtype) -> np.ndarray:
    """Reference surface: θ + Σ aᵢdᵢ formed from scratch at every grid point."""
    mesh = np.meshgrid(*axes, indexing="ij")
    out = np.empty(mesh[0].shape)
    for idx in np.ndindex(out.shape):
        p = {k: v.clone() for k, v in center.items()}
        for d, m in zip(directions, mesh):
            p = {k: p[k] + float(m[idx]) * d[k] for k in p}
        out[idx] = naive_loss(model, loss_fn, batches, p, dtype)
    return out


def model_state(model: nn.Module) -> dict:
    """Everything about a module that lossatlas promises not to change."""
    return {
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "buffers": {k: v.detach().clone() for k, v in model.named_buffers()},
        "requires_grad": {k: v.requires_grad for k, v in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "devices": {k: v.device for k, v in model.named_parameters()},
        "dtypes": {k: v.dtype for k, v in model.named_parameters()},
        "grads": {k: None if v.grad is None else v.grad.clone() for k, v in model.named_parameters()},
    }


def assert_model_unchanged(model: nn.Module, before: dict) -> None:
    after = model_state(model)
    for key in ("requires_grad", "training", "devices", "dtypes"):
        assert after[key] == before[key], f"model {key} changed: {before[key]} -> {after[key]}"
    for key in ("params", "buffers"):
        for k, v in before[key].items():
            assert torch.equal(after[key][k], v), f"model {key[:-1]} {k!r} changed"
    for k, g in before["grads"].items():
        ga = after["grads"][k]
        assert (g is None and ga is None) or (g is not None and ga is not None and torch.equal(g, ga)), \
            f"model .grad of {k!r} changed"
