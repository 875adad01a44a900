"""Sharpness measures at θ: curvature (λmax, trace), worst cases over a neighbourhood (Keskar's
ε-sharpness, SAM, adaptive sharpness) and the width of a filter-normalised slice.

A ReLU layer's weights and bias can be multiplied by α > 0 and the next layer's weights divided by α
without changing the function (Dinh et al. 2017, arXiv:1703.04933), yet λmax, the trace, ε-sharpness
and SAM sharpness change under it: they are *not* scale-invariant. Adaptive sharpness (Kwon et al.
2021) measures perturbations relative to |θ| elementwise and the filter-normalised width measures
them relative to each filter's norm (Li et al. 2018), so both are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import params as P
from ..curvature import eigenvalues
from ..curvature import trace as trace_fn
from ..directions import random
from ..errors import bad_type, check_seed, public, renamed
from ..metrics import _common as C
from ..metrics import basin_width
from ..problem import Problem
from ..surface import surface
from ._ascent import ascent
from ._result import Sharpness

__all__ = ["lambda_max", "trace", "epsilon_sharpness", "sam_sharpness", "adaptive_sharpness", "filter_width"]


def _start(problem: Any, theta: Mapping[str, Tensor] | None) -> dict:
    if not isinstance(problem, Problem):
        raise bad_type("problem", "a lossatlas.Problem", problem)
    if theta is None:
        return problem.params()
    problem.check_params(theta, arg="center")
    return {k: v.detach() for k, v in theta.items()}


@public("sharpness.lambda_max")
@renamed(theta="center")
def lambda_max(problem: Problem, center: Mapping[str, Tensor] | None = None, *, tol: float = 1e-6, seed: int = 0,
               dtype: torch.dtype | None = torch.float64, max_products: int | None = 1000) -> Sharpness:
    """λmax(∇²L(θ)), the largest Hessian eigenvalue, by thick-restart Lanczos
    (:func:`lossatlas.curvature.eigenvalues`), ± its error bound. Used as sharpness by Keskar et al.
    2017 and Cohen et al. 2021 (edge of stability); not scale-invariant (Dinh et al. 2017).

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1), torch.nn.MSELoss(), (x, 3 * x))
    >>> s = lambda_max(problem)                            # H = diag(2·mean x², 2)
    >>> round(s.value, 6), s.scale_invariant
    (2.0, False)
    """
    center = _start(problem, center)

    eig = eigenvalues(problem, center, k=1, which="largest", tol=tol, seed=seed, dtype=dtype,
                      max_products=max_products, progress=False)
    return Sharpness("lambda_max", float(eig.values[0]), float(eig.errors[0]), "estimate", False,
                     "Keskar et al. 2017 (arXiv:1609.04836); Dinh et al. 2017",
                     details={"converged": bool(eig.all_converged), "products": eig.products, "eigen": eig})


@public("sharpness.trace")
@renamed(theta="center")
def trace(problem: Problem, center: Mapping[str, Tensor] | None = None, *, probes: int = 99, seed: int = 0,
          dtype: torch.dtype | None = torch.float64) -> Sharpness:
    """tr ∇²L(θ) by Hutch++ (:func:`lossatlas.curvature.trace`, Meyer et al. 2021) ± its standard error
    (exact, error 0, when the probes span the space); not scale-invariant.

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1), torch.nn.MSELoss(), (x, 3 * x))
    >>> s = trace(problem)                                  # 2·mean(x²) + 2
    >>> round(s.value, 6), s.error
    (2.857143, 0.0)
    """
    center = _start(problem, center)

    est = trace_fn(problem, center, probes=probes, seed=seed, dtype=dtype, progress=False)
    return Sharpness("trace", float(est.value), float(est.stderr), "estimate", False,
                     "Hutchinson 1989; Meyer, Musco, Musco & Woodruff 2021", details={"estimate": est})


def _worst_case_args(iters, lr, restarts, seed):
    iters = C.check_int("iters", iters, minimum=0)
    lr = C.check_number("lr", lr, minimum=0.0, strict=True)
    restarts = C.check_int("restarts", restarts, minimum=0)
    seed = check_seed(seed)
    return iters, lr, restarts, seed


@public("sharpness.epsilon_sharpness")
@renamed(theta="center", steps="iters")
def epsilon_sharpness(problem: Problem, center: Mapping[str, Tensor] | None = None, *, epsilon: float = 1e-3,
                      iters: int = 20, lr: float = 0.5, restarts: int = 0, seed: int = 0) -> Sharpness:
    """Keskar et al. 2017 (arXiv:1609.04836, Metric 2.1) ε-sharpness in the full space (A = I):

        φ(θ, ε) = 100 · (max_{y ∈ C_ε} L(θ + y) − L(θ)) / (1 + L(θ)),   C_ε = {|yᵢ| ≤ ε(|θᵢ| + 1)}.

    The maximum is sought by projected sign-gradient ascent (the paper used L-BFGS-B) from the corner
    ε(|θ|+1)⊙sign ∇L; the value is a certified lower bound: computed from the best point actually
    evaluated, re-checked in float64 (``witness``; ``details["increase"]`` the raw increase). Not
    scale-invariant (the box is not: the +1).

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1).double(), torch.nn.MSELoss(), (x.double(), 3 * x.double()))
    >>> s = epsilon_sharpness(problem, epsilon=1e-2)
    >>> s.kind, s.value > 0, s.scale_invariant
    ('lower bound', True, False)
    """
    center = _start(problem, center)
    epsilon = C.check_number("epsilon", epsilon, minimum=0.0, strict=True)
    iters, lr, restarts, seed = _worst_case_args(iters, lr, restarts, seed)
    box = epsilon * (P.flatten(P.to(center, dtype=torch.float64)).abs().cpu() + 1.0)
    r = ascent(problem, center, box, norm="linf", radius=1.0, steps=iters, lr=lr, restarts=restarts, seed=seed)
    value = 100.0 * r.increase / (1.0 + r.loss_center)
    return Sharpness("epsilon_sharpness", value, 0.0, "lower bound", False, "Keskar et al. 2017 (arXiv:1609.04836)",
                     r.witness, {"epsilon": epsilon, "increase": r.increase, "loss_center": r.loss_center,
                                 "loss_witness": r.loss_witness, "evaluations": r.evaluations, "steps": r.steps})


@public("sharpness.sam_sharpness")
@renamed(theta="center", steps="iters")
def sam_sharpness(problem: Problem, center: Mapping[str, Tensor] | None = None, *, rho: float = 0.05, iters: int = 20,
                  lr: float = 0.5, restarts: int = 0, seed: int = 0) -> Sharpness:
    """SAM sharpness (Foret et al. 2021, arXiv:2010.01412): max_{‖ε‖₂ ≤ ρ} L(θ + ε) − L(θ), by
    projected normalised gradient ascent from SAM's own first step ρ·∇L/‖∇L‖. The value is a
    certified lower bound: the increase at the best point evaluated (``witness``), re-checked in
    float64. Not scale-invariant.

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1).double(), torch.nn.MSELoss(), (x.double(), 3 * x.double()))
    >>> s = sam_sharpness(problem, rho=0.1)
    >>> s.kind, s.value > 0
    ('lower bound', True)
    """
    center = _start(problem, center)
    rho = C.check_number("rho", rho, minimum=0.0, strict=True)
    iters, lr, restarts, seed = _worst_case_args(iters, lr, restarts, seed)
    n = sum(v.numel() for v in center.values())
    r = ascent(problem, center, torch.ones(n, dtype=torch.float64), norm="l2", radius=rho, steps=iters, lr=lr,
               restarts=restarts, seed=seed)
    return Sharpness("sam_sharpness", r.increase, 0.0, "lower bound", False, "Foret et al. 2021 (arXiv:2010.01412)",
                     r.witness, {"rho": rho, "loss_center": r.loss_center, "loss_witness": r.loss_witness,
                                 "perturbation_norm": r.offset_norm, "evaluations": r.evaluations, "steps": r.steps})


@public("sharpness.adaptive_sharpness")
@renamed(theta="center", steps="iters")
def adaptive_sharpness(problem: Problem, center: Mapping[str, Tensor] | None = None, *, rho: float = 0.5,
                       eta: float = 0.0, iters: int = 20, lr: float = 0.5, restarts: int = 0,
                       seed: int = 0) -> Sharpness:
    """Adaptive sharpness (Kwon et al. 2021, ASAM, arXiv:2102.11600):
    max_{‖T_θ⁻¹ε‖₂ ≤ ρ} L(θ + ε) − L(θ) with T_θ = diag(|θ| + η), sought in u = T_θ⁻¹ε by projected
    normalised gradient ascent. With ``eta=0`` (the default) it is exactly invariant to rescalings
    θ ↦ Dθ with D positive diagonal that leave the function unchanged (ReLU layer rescaling): the
    set {θ + T_θ u} maps onto itself, and the ascent's iterates in u are the same. ASAM's
    experiments add η = 0.01, which breaks exact invariance (``eta=`` to reproduce). A certified lower
    bound (``witness``), re-checked in float64.

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1).double(), torch.nn.MSELoss(), (x.double(), 3 * x.double()))
    >>> s = adaptive_sharpness(problem, rho=0.1)
    >>> s.kind, s.scale_invariant
    ('lower bound', True)
    """
    center = _start(problem, center)
    rho = C.check_number("rho", rho, minimum=0.0, strict=True)
    eta = C.check_number("eta", eta, minimum=0.0)
    iters, lr, restarts, seed = _worst_case_args(iters, lr, restarts, seed)
    T = P.flatten(P.to(center, dtype=torch.float64)).abs().cpu() + eta
    r = ascent(problem, center, T, norm="l2", radius=rho, steps=iters, lr=lr, restarts=restarts, seed=seed)
    return Sharpness("adaptive_sharpness", r.increase, 0.0, "lower bound", eta == 0.0,
                     "Kwon, Kim, Park & Choi 2021 (arXiv:2102.11600)", r.witness,
                     {"rho": rho, "eta": eta, "loss_center": r.loss_center, "loss_witness": r.loss_witness,
                      "evaluations": r.evaluations, "steps": r.steps})


@public("sharpness.filter_width")
@renamed(theta="center")
def filter_width(problem: Problem, center: Mapping[str, Tensor] | None = None, *, delta: float = 0.1,
                 span: float = 1.0, steps: int = 41, seed: int = 0) -> Sharpness:
    """The width of the basin around θ along one filter-normalised random direction (Li et al. 2018,
    arXiv:1712.09913): the 1D slice L(θ + t·d), t ∈ [−span, span] on ``steps`` points, and the
    interval around its minimum where L ≤ L_min + ``delta`` (:func:`lossatlas.metrics.basin_width`,
    ± the grid spacing). Filter normalisation (biases and BatchNorm ignored) scales each filter of d
    to the norm of θ's filter, so the width is invariant to ReLU layer rescaling.

    >>> import torch, lossatlas
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> x = torch.randn(32, 2)
    >>> problem = lossatlas.Problem(net, torch.nn.MSELoss(), (x, x[:, :1]))
    >>> s = filter_width(problem, delta=0.1, steps=21)
    >>> s.scale_invariant, round(s.error, 12)              # ± the grid spacing
    (True, 0.1)
    """
    center = _start(problem, center)
    delta = C.check_number("delta", delta, minimum=0.0, strict=True)
    span = C.check_number("span", span, minimum=0.0, strict=True)
    steps = C.check_int("steps", steps, minimum=3)
    seed = check_seed(seed)

    d = random(center, n=1, seed=seed, model=problem.model)
    ds = surface(problem, center, d, steps=steps, span=span, progress=False, metrics=False, strategy="loop")
    w = basin_width(ds, delta)
    return Sharpness("filter_width", float(w.widths[0]), float(w.errors[0]), "width", True,
                     "Li, Xu, Taylor, Studer & Goldstein 2018 (arXiv:1712.09913)",
                     details={"delta": delta, "bounded": bool(w.bounded[0]), "left": w.left[0], "right": w.right[0],
                              "loss_min": w.loss_min, "span": span, "steps": steps, "seed": seed})
