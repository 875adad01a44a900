"""Hessian certificates and the Gauss–Newton explanation of *why* a loss is non-convex.

A negative Hessian eigenvalue λ < 0 with unit eigenvector v means f(θ ± h·v) ≈ f(θ) + ½λh² < f(θ)
on both sides for small h: the triple (θ − hv, θ + hv, ½) has Jensen gap
f(θ) − ½(f(θ−hv) + f(θ+hv)) ≈ −½λh² > 0. The certificate stores that triple (checked from loss
values alone, so it needs no smoothness assumption) together with λ, v, the residual ‖Hv − λv‖ and
the Rayleigh quotient vᵀHv.

Why: for a loss ℓ(f(x; θ), y) convex in the prediction f, the Hessian splits (Gauss–Newton) into

    H = Jᵀ H_ℓ J + Σᵢ rᵢ ∇²fᵢ,   rᵢ = ∂ℓ/∂fᵢ,

where the first term G (the GGN) is positive semi-definite. So vᵀHv < 0 forces the second term —
the model's own curvature, weighted by the residuals — to be negative along v. For a model linear in
θ (linear or logistic regression) ∇²f = 0, H = G ⪰ 0 and the loss is convex.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import params as P
from ._certificate import Certificate, make_certificate
from ._jensen import is_violation, jensen_gap, rounding_bound

# h / ‖θ‖ tried along the eigenvector. Small steps matter for piecewise-linear (ReLU) networks: the
# Hessian sees the smooth pieces only, and a larger step crosses kinks whose curvature can dominate.
H_STEPS = tuple(10.0 ** np.arange(-8.0, 0.5, 0.25))


def _along(p64, theta64: Mapping[str, Tensor], v: Mapping[str, Tensor], scale: float) -> tuple[float, float] | None:
    """The step h (and its Jensen gap) that makes the clearest violation along v, or None."""
    f0 = p64.loss(theta64)
    best = None
    for r in H_STEPS:
        h = r * scale
        fm = p64.loss(P.axpy(-h, v, theta64))
        fp = p64.loss(P.axpy(h, v, theta64))
        gap = jensen_gap(fm, fp, f0, 0.5)
        bound = rounding_bound(fm, fp, f0)
        if is_violation(gap, bound) and (best is None or gap / bound > best[1]):
            best = (h, gap / bound)
    return None if best is None else best


def hessian_certificate(problem, p64, theta: Mapping[str, Tensor], *, seed: int = 0, progress: bool = False,
                        tol: float = 1e-6) -> tuple[Certificate | None, dict[str, Any]]:
    """λmin and λmax at θ (float64 Lanczos); a certificate when λmin < 0 gives a verified violation."""
    from ..curvature import eigenvalues

    theta64 = P.to(theta, dtype=torch.float64, device=p64.device)
    eig = eigenvalues(p64, theta64, k=1, which="both", tol=tol, seed=seed, dtype=torch.float64, progress=progress)
    lam_max, lam_min = float(eig.values[0]), float(eig.values[-1])
    v = eig.vectors[-1]
    info: dict[str, Any] = {"lambda_min": lam_min, "lambda_max": lam_max,
                            "residual_min": float(eig.residuals[-1]), "converged_min": bool(eig.converged[-1]),
                            "products": int(eig.products)}
    info["why"] = explain(p64, theta64, v, lam_min)
    if not lam_min < 0:
        return None, info
    scale = max(P.norm(theta64), 1.0)
    found = _along(p64, theta64, v, scale)
    if found is None:
        info["note"] = "λmin < 0 but no step along its eigenvector gave a violation beyond rounding"
        return None, info
    h, _ = found
    a, b = P.axpy(-h, v, theta64), P.axpy(h, v, theta64)
    cert = make_certificate(p64, "hessian", a, b, 0.5,
                            eigen={"value": lam_min, "residual": float(eig.residuals[-1]),
                                   "converged": bool(eig.converged[-1]), "lambda_max": lam_max, "step": h},
                            eigenvector=v, note=f"negative curvature λmin = {lam_min:.4g} at θ; triple θ ∓ {h:.3g}·v")
    if cert is not None and not cert.verify(p64):
        cert = None
    return cert, info


def explain(p64, theta64: Mapping[str, Tensor], v: Mapping[str, Tensor], lam: float) -> dict[str, Any]:
    """The Gauss–Newton split along v: vᵀHv = vᵀGv + vᵀ(Σ r∇²f)v, with G ⪰ 0 (when the loss is convex
    in the model output)."""
    from ..curvature import ggn_operator, hessian_operator
    from ..errors import LossAtlasError

    try:
        hv = hessian_operator(p64, theta64, dtype=torch.float64).apply(v)
        gv = ggn_operator(p64, theta64, dtype=torch.float64).apply(v)
    except LossAtlasError as exc:
        return {"text": f"No Gauss–Newton split: {exc}", "available": False}
    vhv, vgv = P.dot(v, hv), P.dot(v, gv)
    model_term = vhv - vgv
    out = {"available": True, "vHv": vhv, "vGv": vgv, "model_term": model_term, "lambda": lam}
    if vhv < 0:
        out["text"] = (f"Why: along the most negative eigenvector, vᵀHv = {vhv:.4g} = vᵀGv + vᵀ(Σ r·∇²f)v with the "
                       f"Gauss–Newton part vᵀGv = {vgv:.4g} ≥ 0 (G = JᵀH_ℓJ is positive semi-definite because the "
                       f"loss is convex in the prediction), so the negative curvature comes from the model's own "
                       f"second-order term vᵀ(Σ r·∇²f)v = {model_term:.4g}. A model linear in its parameters has "
                       f"∇²f = 0, which is why linear and logistic regression with a convex loss are convex.")
    else:
        out["text"] = (f"Gauss–Newton split along the smallest eigenvector: vᵀHv = {vhv:.4g}, vᵀGv = {vgv:.4g} (≥ 0), "
                       f"model term {model_term:.4g}; no negative curvature at θ.")
    if not math.isfinite(vhv):
        out["text"] = "The Hessian quadratic form is not finite at θ."
    return out
