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

from .errors import renamed

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
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {a.shape} != {e.shape}")
    both_nan = np.isnan(a) & np.isnan(e)
    tol = factor * (RTOL[dtype] * np.abs(e) + ATOL[dtype])
    bad = ~both_nan & ~(np.abs(a - e) <= tol)
    if bad.any():
        i = np.argwhere(bad)[0]
        raise AssertionError(f"{what}: {int(bad.sum())} mismatches; first at {tuple(i)}: {a[tuple(i)]!r} vs "
                             f"{e[tuple(i)]!r} (rtol {RTOL[dtype] * factor})")


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = 2^-p of a floating dtype with a p-bit significand (half of ``finfo.eps``).

    >>> unit_roundoff(torch.float32) == 2.0 ** -24
    True
    """
    return torch.finfo(dtype).eps / 2


def cross_entropy_rounding_bound(logits: Tensor, targets: Tensor, weight: Tensor | None = None,
                                 reduction: str = "mean", ignore_index: int = -100) -> np.ndarray:
    """A bound on the forward error of class-index cross-entropy evaluated in ``logits.dtype`` by the
    shifted log-softmax (m = max z, t = z − m, s = Σ exp tⱼ ∈ [1, C], ℓ = log s − t_y), as any
    implementation of ``nll_loss(log_softmax(z))`` computes it, in any order of summation.

    Standard error analysis (Higham, *Accuracy and Stability of Numerical Algorithms*, §3; Blanchard,
    Higham & Higham 2021, "Accurately computing the log-sum-exp and softmax functions"), with u the
    unit roundoff and exp/log accurate to 2 ulp: each tⱼ carries u|tⱼ|, exp(tⱼ) then a relative
    u|tⱼ| + 2u, and since exp(tⱼ)·|tⱼ| ≤ 1/e the sum s a relative ≤ (C + C/e + 2)u; log s adds 2u·log s;
    the last subtraction u·ℓ. Per sample, with a factor 2 for second-order terms and vectorised
    kernels' rounding of intermediate reductions,

        |ℓ̂ − ℓ| ≤ 2u·(|t_y| + 3·log s + 2C + 2 + ℓ).

    A weighted ``sum`` adds n·u·Σ w·ℓ (any summation order), ``mean`` divides by Σ w (its own relative
    error n·u, plus u). Returns the bound with the loss's shape (a 0-d array for a reduction).

    >>> z, y = torch.randn(5, 3), torch.randint(0, 3, (5,))
    >>> float(cross_entropy_rounding_bound(z, y)) < 1e-5
    True
    """
    z = logits.detach().to(torch.float64)
    u = unit_roundoff(logits.dtype)
    n, c = z.shape
    keep = targets != ignore_index
    y = torch.where(keep, targets, torch.zeros_like(targets))
    t = z - z.max(dim=1, keepdim=True).values
    log_s = torch.logsumexp(t, dim=1)
    t_y = t.gather(1, y.unsqueeze(1)).squeeze(1)
    loss = log_s - t_y
    w = (torch.ones(c, dtype=torch.float64) if weight is None else weight.detach().to(torch.float64))[y]
    w = torch.where(keep, w, torch.zeros_like(w))
    per_sample = w * (2 * u * (t_y.abs() + 3 * log_s + 2 * c + 2 + loss) + u * loss)
    if reduction == "none":
        return per_sample.numpy()
    total_error = per_sample.sum() + n * u * (w * loss).sum()
    if reduction == "sum":
        return total_error.numpy()
    weight_sum = w.sum()
    mean = (w * loss).sum() / weight_sum
    return (total_error / weight_sum + (n + 1) * u * mean.abs()).numpy()


def assert_within(actual, expected, bound, *, what: str = "values") -> None:
    """Elementwise |a − e| ≤ bound (a derived error bound, not a tolerance); NaN must match NaN."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    b = np.broadcast_to(np.asarray(bound, dtype=np.float64), e.shape)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {a.shape} != {e.shape}")
    bad = ~(np.isnan(a) & np.isnan(e)) & ~(np.abs(a - e) <= b)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{what}: {int(bad.sum())} outside the bound; first at {i}: {a[i]!r} vs {e[i]!r}, "
                             f"|difference| {abs(a[i] - e[i]):.3g} > bound {b[i]:.3g}")


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
        if after[key] != before[key]:
            raise AssertionError(f"model {key} changed: {before[key]} -> {after[key]}")
    for key in ("params", "buffers"):
        for k, v in before[key].items():
            if not torch.equal(after[key][k], v):
                raise AssertionError(f"model {key[:-1]} {k!r} changed")
    for k, g in before["grads"].items():
        ga = after["grads"][k]
        if not ((g is None and ga is None) or (g is not None and ga is not None and torch.equal(g, ga))):
            raise AssertionError(f"model .grad of {k!r} changed")


#: curvature estimates checked against exact dense Hessians (float64): eigenvalues relative to λmax
EIGEN_RTOL = 1e-5
#: Lanczos tolerance used in those checks (residual ≤ tol · max|λ|)
EIGEN_TOL = 1e-9


@renamed(theta="center")
def exact_hessian(model: nn.Module, loss_fn, batches: Sequence, center: Mapping[str, Tensor], *,
                  closure=None) -> Tensor:
    """Reference Hessian of the dataset loss Σ_b n_b ℓ_b / N with respect to the flattened ``center``
    (in its dict order), by reverse-over-reverse differentiation (``torch.autograd.functional.hessian``)
    in float64 on a fresh eval-mode copy of the model. Not ``torch.func.hessian``: its forward-over-reverse
    rule for ``F.layer_norm`` is wrong on torch 2.13 (0.7 off on a 4-feature example, see
    tests/test_curvature_honesty.py), so it is no oracle for models with LayerNorm.
    Parameters of the model missing from ``center`` stay at their values. ``batches``: a list of
    ``(inputs, targets)`` pairs, or of any batch when ``closure(model_call, batch)`` is given (the
    number of samples of a batch is the leading size of its first tensor)."""
    m = copy.deepcopy(model).to(torch.float64).eval()
    names = list(center)
    shapes = [tuple(center[k].shape) for k in names]
    sizes = [center[k].numel() for k in names]
    flat = torch.cat([center[k].detach().to(torch.float64).reshape(-1) for k in names])

    def cast(t):
        return t.to(torch.float64) if isinstance(t, Tensor) and t.is_floating_point() else t

    def leading(batch):
        first = batch[0] if isinstance(batch, (tuple, list)) else next(iter(batch.values()))
        return len(first)

    batches = [tuple(cast(t) for t in b) if isinstance(b, (tuple, list)) else {k: cast(v) for k, v in b.items()}
               for b in batches]
    total = sum(leading(b) for b in batches)

    def loss(vector: Tensor) -> Tensor:
        params = {k: t.reshape(s) for k, t, s in zip(names, vector.split(sizes), shapes)}
        value = vector.new_zeros(())
        for b in batches:
            if closure is not None:
                term = closure(lambda *a, **kw: functional_call(m, params, a, kw), b)
            else:
                term = loss_fn(functional_call(m, params, (b[0],)), b[1])
            value = value + term * leading(b) / total
        return value

    return torch.autograd.functional.hessian(loss, flat)
