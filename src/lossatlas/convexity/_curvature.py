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
from ..curvature import eigenvalues, ggn_operator, hessian_operator
from ..errors import LossAtlasError
from ..params.selection import layer_of
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


def _along(p64, theta64: Mapping[str, Tensor], v: Mapping[str, Tensor], scale: float,
           scan: list[dict[str, float]] | None = None) -> tuple[float, float] | None:
    """The step h (and its gap-to-floor ratio) of the clearest violation along v, or None.

    Steps are tried from the largest down. Where the curvature is smooth the ratio grows like h² until
    higher-order terms (or kinks) take over, so the scan stops once a violation has been found and the
    ratio falls below half the best one (or the violation ends): the clearest violation of the
    largest-step run of violations. This is a screen against the fixed floor :func:`rounding_bound`;
    the chosen triple must then pass :meth:`Certificate.check` (the measured bound). Every step tried
    is appended to ``scan`` as ``{"h", "gap", "floor"}``."""
    f0 = p64.loss(theta64)
    best = None
    for r in reversed(H_STEPS):
        h = r * scale
        fm = p64.loss(P.axpy(-h, v, theta64))
        fp = p64.loss(P.axpy(h, v, theta64))
        gap = jensen_gap(fm, fp, f0, 0.5)
        bound = rounding_bound(fm, fp, f0)
        if scan is not None:
            scan.append({"h": float(h), "gap": float(gap), "floor": float(bound)})
        violated = is_violation(gap, bound)
        if violated and (best is None or gap / bound > best[1]):
            best = (h, gap / bound)
        elif best is not None and (not violated or gap / bound < 0.5 * best[1]):
            break
    return None if best is None else best


def _why_not(lam: float, converged: bool, residual: float, error: float, scan: list[dict[str, float]],
             refused: list[str], what: str) -> str:
    """Why a negative eigenpair gave no certificate, in numbers: the steps tried, the quadratic model
    −λh²/2 of the gap against the rounding floor, and where the measured gap leaves that model."""
    head = (f"{what} λ = {lam:.4g} ({'converged' if converged else 'not converged'}, residual {residual:.1e}) "
            f"did not become a certificate")
    if not abs(lam) > error:
        head += (f" — and |λ| does not exceed its error ± {error:.1e} (residual plus the products' zero band), so it "
                 "is indistinguishable from zero: not even evidence of negative curvature")
    pts = [s for s in scan if math.isfinite(s["gap"]) and math.isfinite(s["floor"])]
    if not pts:
        return head + ": the loss was not finite at any step along its eigenvector."
    hs = [s["h"] for s in pts]
    best = max(pts, key=lambda s: s["gap"] / s["floor"])
    floor0 = min(s["floor"] for s in pts)
    h_need = math.sqrt(2.0 * floor0 / abs(lam))
    text = (f"{head}: along its eigenvector v the second difference f(θ) − ½(f(θ−hv) + f(θ+hv)) at {len(pts)} "
            f"steps h = {min(hs):.1e}…{max(hs):.1e} ")
    if refused:
        text += (f"beat the rounding floor but the triple was refused on re-checking ({'; '.join(refused[:2])})")
        return text + "."
    text += (f"never exceeded the rounding bound (best: gap {best['gap']:.2e} vs bound {best['floor']:.2e} at "
             f"h = {best['h']:.1e}). The curvature predicts a gap −λh²/2 = {abs(lam) / 2:.2e}·h², which beats the "
             f"bound ≈ {floor0:.1e} only for h ≳ {h_need:.1e}")
    quad = [s for s in pts if s["h"] > 0 and 0.5 <= s["gap"] / (0.5 * abs(lam) * s["h"] ** 2) <= 2.0]
    near = min(pts, key=lambda s: abs(math.log(s["h"] / h_need)))
    pred = 0.5 * abs(lam) * near["h"] ** 2
    if quad:
        hq = max(s["h"] for s in quad)
        text += (f"; the measured gap follows that prediction only up to h ≈ {hq:.1e}" if hq < h_need else
                 f"; the measured gap follows it up to h ≈ {hq:.1e}, yet stays below the bound")
    else:
        text += "; at no step does the measured gap follow that prediction"
    text += (f" (at h = {near['h']:.1e}: measured {near['gap']:.2e}, predicted {pred:.2e}). The quadratic picture "
             f"at θ does not reach the step needed to beat rounding — likely ReLU/max-pool kinks (or higher-order "
             f"terms) within the step")
    if abs(lam) > error and converged:
        text += ", so this eigenvalue is evidence, not a proof"
    return text + "."


def hessian_certificate(problem, p64, theta: Mapping[str, Tensor], *, seed: int = 0, progress: bool = False,
                        tol: float = 1e-6, reference=None) -> tuple[Certificate | None, dict[str, Any]]:
    """λmin and λmax at θ (float64 Lanczos); a certificate when λmin < 0 gives a verified violation, from
    the full Hessian's eigenvector or else from that of a trailing-layer block (see the module notes).
    When λmin < 0 gives none, ``info["not_certified"]`` says why, in numbers."""
    theta64 = P.to(theta, dtype=torch.float64, device=p64.device)
    # certify=False: a certificate needs a negative eigenpair, not proof that it is the most negative one
    # (the extremality check would double the products); the result says the extremes are not certified
    eig = eigenvalues(p64, theta64, k=1, which="both", tol=tol, seed=seed, dtype=torch.float64, certify=False,
                      progress=progress)
    lam_max, lam_min = float(eig.values[0]), float(eig.values[-1])
    v = eig.vectors[-1]
    info: dict[str, Any] = {"lambda_min": lam_min, "lambda_max": lam_max,
                            "residual_min": float(eig.residuals[-1]), "converged_min": bool(eig.converged[-1]),
                            "products": int(eig.products), "product_method": eig.product_method,
                            "extremal_certified": bool(eig.extremal_certified.all())}
    if eig.notes:
        info["product_notes"] = list(eig.notes)
    info["why"] = explain(p64, theta64, v, lam_min)
    if not lam_min < 0:
        return None, info
    scale = max(P.norm(theta64), 1.0)
    scan: list[dict[str, float]] = []
    refused: list[str] = []
    found = _along(p64, theta64, v, scale, scan)
    if found is not None:
        h, _ = found
        cert = _certificate(p64, theta64, v, h, {"value": lam_min, "residual": float(eig.residuals[-1]),
                                                  "converged": bool(eig.converged[-1]), "lambda_max": lam_max},
                            f"negative curvature λmin = {lam_min:.4g} at θ", reference, refused)
        if cert is not None:
            return cert, info
    reasons = [_why_not(lam_min, bool(eig.converged[-1]), float(eig.residuals[-1]), float(eig.errors[-1]), scan,
                        refused,
                        "The most negative Hessian eigenvalue")]
    # Kinks within ~1e-7·‖θ‖ of θ hide the full eigenvector's curvature: try blocks of the Hessian.
    info["blocks"] = []
    for names in _trailing_blocks(p64):
        layers = list(dict.fromkeys(layer_of(n) for n in names))
        eig_b = eigenvalues(p64, theta64, k=1, which="smallest", tol=max(tol, BLOCK_TOL), seed=seed,
                            max_products=BLOCK_PRODUCTS, params=list(names), dtype=torch.float64, certify=False,
                            progress=progress)
        lam_b = float(eig_b.values[0])
        tried = {"layers": layers, "lambda_min": lam_b, "products": int(eig_b.products), "certificate": False}
        info["blocks"].append(tried)
        info["products"] += int(eig_b.products)
        if not lam_b < 0:
            tried["reason"] = f"no negative eigenvalue (λmin of the block = {lam_b:.3g})"
            continue
        v_b = eig_b.vectors[0]
        scan_b: list[dict[str, float]] = []
        refused_b: list[str] = []
        found = _along(p64, theta64, v_b, scale, scan_b)
        cert = None
        if found is not None:
            cert = _certificate(p64, theta64, v_b, found[0],
                                {"value": lam_b, "residual": float(eig_b.residuals[0]),
                                 "converged": bool(eig_b.converged[0]), "lambda_max": lam_max,
                                 "lambda_min": lam_min, "params": list(names)},
                                f"negative curvature λ = {lam_b:.4g} of the Hessian block over the parameters of "
                                f"{', '.join(layers)} at θ (full λmin = {lam_min:.4g})", reference, refused_b)
        if cert is not None:
            tried["certificate"] = True
            return cert, info
        tried["reason"] = _why_not(lam_b, bool(eig_b.converged[0]), float(eig_b.residuals[0]), float(eig_b.errors[0]),
                                   scan_b, refused_b,
                                   f"The Hessian block over {', '.join(layers)}:")
    info["scan"] = scan
    blocks = "; ".join(f"block {', '.join(b['layers'])}: {b.get('reason', '')}" for b in info["blocks"])
    info["not_certified"] = reasons[0] + (f" Trailing-layer blocks tried: {blocks}" if blocks else "")
    info["note"] = ("λmin < 0 but no step along its eigenvector (nor along the most negative eigenvector of a "
                    "trailing-layer Hessian block) gave a violation beyond rounding")
    return None, info


def _certificate(p64, theta64, v, h: float, eigen: dict[str, Any], what: str, reference=None,
                 why: list[str] | None = None) -> Certificate | None:
    """The triple (θ − hv, θ + hv, ½) as a certificate, kept only if it verifies in float64."""
    a, b = P.axpy(-h, v, theta64), P.axpy(h, v, theta64)
    return make_certificate(p64, "hessian", a, b, 0.5, eigen={**eigen, "step": h}, eigenvector=v,
                            note=f"{what}; triple θ ∓ {h:.3g}·v", reference=reference, why=why)


def _trailing_blocks(p64) -> list[tuple[str, ...]]:
    """Parameter names of the last 1, 2, … :data:`MAX_BLOCKS` layers (never all of them: that is the
    full Hessian, already tried)."""
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
