"""The audit methods: one small record per method, which :func:`~lossatlas.convexity.audit`, the CLI
and the docs read.

Each method is a function ``run(ctx)`` over the audit's shared :class:`AuditContext` (the problem, its
float64 twin and reference evaluator, θ, the seed and budget) that appends what it found to the
context (certificates, ``tried``, notes, skips). Adding a method is one function and one
:func:`register` call (the contract tests in ``tests/test_method_registries.py`` iterate over
:data:`REGISTRY`). To add a method:

1. write ``run(ctx: AuditContext) -> None`` that appends verified :class:`Certificate` objects to
   ``ctx.certificates`` (only certificates :func:`make_certificate` accepted) and its record to
   ``ctx.tried[name]``; errors that make it inapplicable (``_SKIPPABLE``) are caught by ``audit``;
2. ``register(AuditMethod("<name>", "<label>", "<description>", run, proves=..., needs=..., order=...))``;
3. add its case to ``CASES`` in ``tests/test_method_registries.py``.

``audit(methods=...)``, ``lossatlas audit --methods`` and its help then accept and describe it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from .._records import add
from ._certificate import Certificate, make_certificate
from ._curvature import hessian_certificate
from ._search import jensen_search
from ._symmetry import symmetry_certificates

__all__ = ["AuditMethod", "AuditContext", "REGISTRY", "register", "unregister", "method_names", "describe"]


@dataclass
class AuditContext:
    """What every method of one audit shares (inputs) and fills in (outputs)."""

    problem: Any
    p64: Any
    theta: Mapping[str, Tensor]
    reference: Any
    seed: int
    budget: int
    max_certificates: int
    checkpoints: Sequence[Mapping[str, Tensor]] | None
    progress: bool
    f_theta: float
    certificates: list[Certificate] = field(default_factory=list)
    tried: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    #: results the Audit reports beyond certificates: best_jensen_gap, jensen_gaps, lambda_min,
    #: lambda_max, why, not_certified, non_finite
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def centre_finite(self) -> bool:
        return math.isfinite(self.f_theta)


@dataclass(frozen=True)
class AuditMethod:
    """One way of proving a loss non-convex.

    ``name``: the word ``methods=`` and ``--methods`` take. ``label``: how tables and docs call it.
    ``description``: one sentence for the docs and CLI help. ``run``: ``run(ctx)`` filling the shared
    :class:`AuditContext`. ``proves``: what a certificate of it shows. ``needs``: what it needs of the
    model (said when it is skipped). ``order``: when it runs (lower first; cheap proofs first).
    ``skippable``: extra exception types that make it inapplicable (beyond audit's defaults).
    """

    name: str
    label: str
    description: str
    run: Callable[[AuditContext], None]
    proves: str = ""
    needs: str = "the loss"
    order: int = 100
    skippable: tuple[type[BaseException], ...] = ()

    @property
    def func(self) -> str:
        """The public function its errors name."""
        return "audit"


#: Audit methods by name, in registration order (``METHODS`` is their names).
REGISTRY: dict[str, AuditMethod] = {}


def register(method: AuditMethod, *, replace: bool = False) -> AuditMethod:
    """Add a method to :data:`REGISTRY` (an existing name is refused unless ``replace=True``)."""
    return add(REGISTRY, method, cls=AuditMethod, func="convexity.register", arg="method",
               expected="an AuditMethod", what="an audit method", replace=replace)


def unregister(name: str) -> None:
    """Remove a method (for tests and plug-ins that registered one for a while)."""
    REGISTRY.pop(name, None)


def method_names() -> tuple[str, ...]:
    """The registered method names, in registration order."""
    return tuple(REGISTRY)


def describe() -> str:
    """One line per method (``name: description``), for help texts and docs."""
    return "; ".join(f"{m.name}: {m.description}" for m in REGISTRY.values())


# -- the built-in methods ------------------------------------------------------------------------------
def _run_symmetry(ctx: AuditContext) -> None:
    t1 = time.perf_counter()
    if not ctx.centre_finite:
        ctx.skipped["symmetry"] = (f"symmetry skipped: the loss at θ is {ctx.f_theta} (a symmetry argument compares "
                                   "f(θ) with the midpoint of θ and its twin)")
        return
    found, info = symmetry_certificates(ctx.problem, ctx.p64, ctx.theta, seed=ctx.seed, limit=ctx.max_certificates,
                                        evaluator=ctx.reference)
    ctx.certificates += found
    ctx.tried["symmetry"] = {**info, "seconds": time.perf_counter() - t1}
    if info.get("unsupported"):
        ctx.notes.append(f"Symmetry: {info['unsupported']}")


def _run_hessian(ctx: AuditContext) -> None:
    t1 = time.perf_counter()
    if not ctx.centre_finite:
        ctx.skipped["hessian"] = f"hessian skipped: the loss at θ is {ctx.f_theta}, so its Hessian there is undefined"
        return
    cert, info = hessian_certificate(ctx.problem, ctx.p64, ctx.theta, seed=ctx.seed, progress=ctx.progress,
                                     reference=ctx.reference)
    lam_min, lam_max = info.get("lambda_min"), info.get("lambda_max")
    ctx.results["lambda_min"], ctx.results["lambda_max"] = lam_min, lam_max
    if lam_min is not None and not math.isfinite(lam_min):
        ctx.notes.append("The Hessian's eigenvalues at θ are not finite (NaN/Inf in its products).")
    if cert is not None:
        ctx.certificates.append(cert)
    ctx.tried["hessian"] = {**info, "seconds": time.perf_counter() - t1}
    ctx.results["why"] = info.get("why")
    ctx.results["not_certified"] = info.get("not_certified")


def _run_jensen(ctx: AuditContext) -> None:
    t1 = time.perf_counter()
    result = jensen_search(ctx.problem, ctx.theta, budget=ctx.budget, seed=ctx.seed, checkpoints=ctx.checkpoints,
                           progress=ctx.progress)
    ctx.results["jensen_gaps"] = result.relative_gaps
    best_gap = result.best.relative_gap if result.best is not None else None
    if best_gap is not None and not math.isfinite(best_gap):
        best_gap = None
    ctx.results["best_jensen_gap"] = best_gap
    ctx.results["non_finite"] = ctx.results.get("non_finite", 0) + result.non_finite
    if result.refinement_skipped:
        ctx.notes.append(f"Jensen search: gradient refinement skipped ({result.refinement_skipped}); "
                         "the other phases ran.")
    verified = checked = 0
    refusals: list[str] = []
    for cand in result.candidates:
        if verified >= ctx.max_certificates or not cand.gap > 0:
            break
        checked += 1
        cert = make_certificate(ctx.p64, "jensen", cand.a, cand.b, cand.t,
                                note=f"found by the Jensen search ({cand.source}, radius {cand.radius:g})",
                                meta={"source": cand.source, "radius": cand.radius}, reference=ctx.reference,
                                why=refusals)
        if cert is not None:
            ctx.certificates.append(cert)
            verified += 1
    ctx.tried["jensen"] = {"evaluations": result.evaluations, "segments": result.tried, "radii": result.radii,
                           "seconds": time.perf_counter() - t1, "candidates_checked_in_float64": checked,
                           "non_finite_points": result.non_finite,
                           "refusals": list(dict.fromkeys(refusals))[:5]}


register(AuditMethod(
    "jensen", "Jensen search",
    "a search for f((1−t)a + tb) > (1−t)f(a) + t·f(b) within --budget loss evaluations",
    _run_jensen, proves="a segment along which the loss lies above its chord", needs="the loss", order=2))
register(AuditMethod(
    "hessian", "negative curvature",
    "the smallest Hessian eigenvalue at θ; a negative one gives a Jensen triple along its eigenvector",
    _run_hessian, proves="negative curvature at θ, as a Jensen triple θ ∓ h·v",
    needs="Hessian-vector products (double backward) and a Lanczos iteration", order=1,
    skippable=(np.linalg.LinAlgError,)))
register(AuditMethod(
    "symmetry", "symmetry",
    "θ' = g·θ for a symmetry g of the network (f(θ') = f(θ)); a worse midpoint is a proof without search",
    _run_symmetry, proves="a symmetric twin of θ whose midpoint is worse", needs="the model's outputs", order=0))
