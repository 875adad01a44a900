"""Hessian certificates and the Gauss–Newton explanation of *why* a loss is non-convex.

A negative Hessian eigenvalue λ < 0 with unit eigenvector v means f(θ ± h·v) ≈ f(θ) + ½λh² < f(θ)
on both sides for small h: the triple (θ − hv, θ + hv, ½) has Jensen gap
f(θ) − ½(f(θ−hv) + f(θ+hv)) ≈ −½λh² > 0. The certificate stores that triple (checked from loss
values alone, so it needs no smoothness assumption) together with λ, v, the residual ‖Hv − λv‖ and
the Rayleigh quotient vᵀHv.

Kinks. For a ReLU / max-pool network the Hessian describes the smooth piece containing θ only, and a
network evaluated on a data set has millions of pre-activations: along a generic direction the nearest
kink is only ~1e-7·‖v‖ away (one in a few million of them sits that close to zero). Inside that window
the gap −½λh² is ~1e-16, far below the rounding bound a certificate must beat (~3e-9·|f|, see
:func:`rounding_bound`), and beyond it the kinks' own curvature (of either sign) swamps λ. When the full
Hessian's eigenvector gives no certificate, the search therefore repeats on *blocks* of the Hessian:
its restriction to the parameters of the last one, two, … layers (in parameter order, usually those
nearest the output). Fewer kinks lie between those parameters and the loss — none at all along a
positive rescaling of the (weight, bias) of a layer feeding a ReLU or max-pool, combined with any
change of the linear layer after them — so a negative eigenvalue of a block typically certifies over
many decades of h. A block eigenpair is a genuine statement about the Hessian: vᵀHv = λ for v
supported on the block, which is what :meth:`Certificate.verify` re-checks (with the residual taken on
the block).

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
#: how many trailing-layer blocks of the Hessian to try when the full Hessian gives no certificate
MAX_BLOCKS = 3
#: Lanczos tolerance and product cap for a block: a certificate needs only λ < 0 and a residual
#: well below |λ| (re-checked by :meth:`Certificate.verify`), not a tightly converged eigenpair
BLOCK_TOL = 1e-4
BLOCK_PRODUCTS = 200


def _along(p64, theta64: Mapping[str, Tensor], v: Mapping[str, Tensor], scale: float) -> tuple[float, float] | None:
    """The step h (and its gap-to-bound ratio) of the clearest violation along v, or None.

    Steps are tried from the largest down. Where the curvature is smooth the ratio grows like h² until
    higher-order terms (or kinks) take over, so the scan stops once a violation has been found and the
    ratio falls below half the best one (or the violation ends): the clearest violation of the
    largest-step run of violations."""
    f0 = p64.loss(theta64)
    best = None
    for r in reversed(H_STEPS):
        h = r * scale
        fm = p64.loss(P.axpy(-h, v, theta64))
        fp = p64.loss(P.axpy(h, v, theta64))
        gap = jensen_gap(fm, fp, f0, 0.5)
        bound = rounding_bound(fm, fp, f0)
        violated = is_violation(gap, bound)
        if violated and (best is None or gap / bound > best[1]):
            best = (h, gap / bound)
        elif best is not None and (not violated or gap / bound < 0.5 * best[1]):
            break
    return None if best is None else best


def hessian_certificate(problem, p64, theta: Mapping[str, Tensor], *, seed: int = 0, progress: bool = False,
                        tol: float = 1e-6) -> tuple[Certificate | None, dict[str, Any]]:
    """λmin and λmax at θ (float64 Lanczos); a certificate when λmin < 0 gives a verified violation, from
    the full Hessian's eigenvector or else from that of a trailing-layer block (see the module notes)."""
    from ..curvature import eigenvalues
    from ..curvature._select import layer_of

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
    if found is not None:
        h, _ = found
        cert = _certificate(p64, theta64, v, h, {"value": lam_min, "residual": float(eig.residuals[-1]),
                                                  "converged": bool(eig.converged[-1]), "lambda_max": lam_max},
                            f"negative curvature λmin = {lam_min:.4g} at θ")
        if cert is not None:
            return cert, info
    # Kinks within ~1e-7·‖θ‖ of θ hide the full eigenvector's curvature: try blocks of the Hessian.
    info["blocks"] = []
    for names in _trailing_blocks(p64):
        layers = list(dict.fromkeys(layer_of(n) for n in names))
        eig_b = eigenvalues(p64, theta64, k=1, which="smallest", tol=max(tol, BLOCK_TOL), seed=seed,
                            max_products=BLOCK_PRODUCTS, params=list(names), dtype=torch.float64,
                            progress=progress)
        lam_b = float(eig_b.values[0])
        tried = {"layers": layers, "lambda_min": lam_b, "products": int(eig_b.products), "certificate": False}
        info["blocks"].append(tried)
        info["products"] += int(eig_b.products)
        if not lam_b < 0:
            continue
        v_b = eig_b.vectors[0]
        found = _along(p64, theta64, v_b, scale)
        if found is None:
            continue
        cert = _certificate(p64, theta64, v_b, found[0],
                            {"value": lam_b, "residual": float(eig_b.residuals[0]),
                             "converged": bool(eig_b.converged[0]), "lambda_max": lam_max, "lambda_min": lam_min,
                             "params": list(names)},
                            f"negative curvature λ = {lam_b:.4g} of the Hessian block over the parameters of "
                            f"{', '.join(layers)} at θ (full λmin = {lam_min:.4g})")
        if cert is not None:
            tried["certificate"] = True
            return cert, info
    info["note"] = ("λmin < 0 but no step along its eigenvector (nor along the most negative eigenvector of a "
                    "trailing-layer Hessian block) gave a violation beyond rounding")
    return None, info


def _certificate(p64, theta64, v, h: float, eigen: dict[str, Any], what: str) -> Certificate | None:
    """The triple (θ − hv, θ + hv, ½) as a certificate, kept only if it verifies in float64."""
    a, b = P.axpy(-h, v, theta64), P.axpy(h, v, theta64)
    cert = make_certificate(p64, "hessian", a, b, 0.5, eigen={**eigen, "step": h}, eigenvector=v,
                            note=f"{what}; triple θ ∓ {h:.3g}·v")
    if cert is not None and not cert.verify(p64):
        return None
    return cert


def _trailing_blocks(p64) -> list[tuple[str, ...]]:
    """Parameter names of the last 1, 2, … :data:`MAX_BLOCKS` layers (never all of them: that is the
    full Hessian, already tried)."""
    from ..curvature._select import layer_of

    names = tuple(p64.param_names)
    order = list(dict.fromkeys(layer_of(n) for n in names))
    blocks = []
    for k in range(1, min(MAX_BLOCKS, len(order) - 1) + 1):
        keep = set(order[-k:])
        blocks.append(tuple(n for n in names if layer_of(n) in keep))
    return blocks


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
