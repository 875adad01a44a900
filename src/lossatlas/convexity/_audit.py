"""``audit``: prove a problem's loss non-convex, or say honestly that no violation was found."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._repr import num, table
from .._repr import text as repr_text
from ..errors import DifferentiationError, EvaluationError, bad_type, bad_value, check_seed, public, renamed
from ..problem import Problem
from ._certificate import Certificate
from ._methods import REGISTRY, AuditContext, method_names
from ._reference import Reference, float64_problem

#: errors that make a method inapplicable to a model (torch cannot differentiate it as the method
#: needs, a kernel without double backward, a loss without gradient): the method is skipped, said so
_SKIPPABLE = (DifferentiationError, EvaluationError, RuntimeError, NotImplementedError)


def _skip_reason(method: str, exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    need = REGISTRY[method].needs if method in REGISTRY else "what it needs"
    return f"{method} skipped: it needs {need}, which failed here ({type(exc).__name__}: {text})"


#: the built-in audit methods' names (the registry, :mod:`._methods`, may hold more)
METHODS = method_names()


class Verdict(str, Enum):
    """What :func:`audit` concluded: a ``str`` (``Verdict.PROVEN == "non-convex (proven)"``), so it
    compares, formats, prints and serialises (JSON, attrs, CSV) as its text; there is no "convex":
    sampling cannot prove convexity."""

    PROVEN = "non-convex (proven)"  # at least one certificate verified in float64
    NOT_FOUND = "no violation found"  # nothing survived float64 verification (not a proof of convexity)

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return repr(self.value)

    __format__ = str.__format__


PROVEN = Verdict.PROVEN
NOT_FOUND = Verdict.NOT_FOUND


@dataclass
class Audit:
    """The result of :func:`audit`.

    ``verdict`` (a :class:`Verdict`, a ``str``) is ``"non-convex (proven)"`` when at least one
    certificate verified in float64, and ``"no violation found"`` otherwise — never "convex": sampling
    cannot prove convexity.

    ``skipped`` maps each method that could not run to the reason (e.g. torch has no double backward
    for a fused kernel, so no Hessian); the other methods still ran. ``non_finite`` counts evaluated
    points whose loss was NaN/Inf (never a violation). ``not_certified`` says, in numbers, why a negative
    Hessian eigenvalue at θ did not become a certificate (then it is evidence, not a proof).
    """

    verdict: Verdict
    certificates: list[Certificate]
    tried: dict[str, Any]
    best_jensen_gap: float | None
    lambda_min: float | None
    lambda_max: float | None
    seconds: float
    why: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    jensen_gaps: np.ndarray | None = None
    name: str = ""
    skipped: dict[str, str] = field(default_factory=dict)
    non_finite: int = 0
    not_certified: str | None = None

    @property
    def proven_nonconvex(self) -> bool:
        return self.verdict == PROVEN

    def _rows(self) -> list[tuple[str, str]]:
        kinds = ", ".join(sorted({c.kind for c in self.certificates}))
        rows = [("verdict", self.verdict),
                ("certificates", f"{len(self.certificates)}" + (f" ({kinds})" if kinds else ""))]
        if self.certificates:
            best = max(self.certificates, key=lambda c: c.margin)
            rows.append(("strongest", f"{best.kind}: gap {num(best.gap, '.3e')} > bound {num(best.bound, '.1e')}"))
        if self.lambda_min is not None:
            rows.append(("Hessian at θ", f"λmin ≈ {num(self.lambda_min)}, λmax ≈ {num(self.lambda_max)}"))
        if self.best_jensen_gap is not None:
            rows.append(("best Jensen gap", num(self.best_jensen_gap, ".3e")))
        if self.skipped:
            rows.append(("skipped", ", ".join(self.skipped)))
        rows.append(("time", f"{self.seconds:.1f} s"))
        return rows

    def __repr__(self) -> str:
        rows = dict(self._rows())
        fields = [("verdict", repr(self.verdict)), ("certificates", rows["certificates"])]
        if self.name:
            fields.insert(0, ("name", repr(self.name)))
        extra = [f"{k}: {v}" for k, v in self._rows() if k not in ("verdict", "certificates")]
        return repr_text("Audit", fields, extra + ["(.summary() explains it in words; .certificates holds the proofs)"])

    def _repr_html_(self) -> str:
        return table(f"Audit{' of ' + self.name if self.name else ''}", self._rows(),
                     "Never “convex”: sampling cannot prove convexity. .summary() explains the verdict in words.")

    def summary(self) -> str:
        """A few sentences for people."""
        head = f"{self.name + ': ' if self.name else ''}{self.verdict}"
        lines = [head]
        if self.certificates:
            kinds = sorted({c.kind for c in self.certificates})
            lines.append(f"{len(self.certificates)} certificate(s) verified in float64 by the plain reference path, "
                         f"each gap beyond its measured rounding error ({', '.join(kinds)}); "
                         f"strongest: {max(self.certificates, key=lambda c: c.margin).summary()}.")
        else:
            lines.append("No Jensen violation, negative curvature or symmetry argument survived float64 "
                         "verification (a gap must beat the rounding error measured on its own computation). This "
                         "is not a proof of convexity: the search only sampled the landscape.")
        if self.best_jensen_gap is not None:
            lines.append(f"Largest relative Jensen gap seen in the search: {self.best_jensen_gap:.3e}.")
        if self.lambda_min is not None:
            lines.append(f"Hessian at θ (Lanczos, extremes not certified): λmin ≈ {self.lambda_min:.4g}, "
                         f"λmax ≈ {self.lambda_max:.4g}.")
        if self.not_certified:
            lines.append(self.not_certified)
        if self.why and self.why.get("text"):
            lines.append(self.why["text"])
        for reason in self.skipped.values():
            lines.append(reason[0].upper() + reason[1:] + ("" if reason.endswith(".") else "."))
        if self.non_finite:
            lines.append(f"{self.non_finite} evaluated point(s) had a NaN/Inf loss; they never count as violations.")
        lines += self.notes
        lines.append(f"({self.seconds:.1f} s)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict, "proven_nonconvex": self.proven_nonconvex,
                "certificates": [{"kind": c.kind, "gap": c.gap, "bound": c.bound, "margin": c.margin, "t": c.t,
                                  "losses": c.losses, "eigen": c.eigen, "symmetry": c.symmetry,
                                  "error_estimate": c.meta.get("error_estimate")}
                                 for c in self.certificates],
                "tried": self.tried, "best_jensen_gap": self.best_jensen_gap, "lambda_min": self.lambda_min,
                "lambda_max": self.lambda_max, "seconds": self.seconds, "why": self.why, "notes": self.notes,
                "skipped": self.skipped, "non_finite": self.non_finite, "not_certified": self.not_certified}


@public("audit")
@renamed(theta="center")
def audit(problem: Problem, center: Mapping[str, Tensor] | None = None, *, budget: int = 400, seed: int = 0,
          methods: Sequence[str] = METHODS, checkpoints: Sequence[Mapping[str, Tensor]] | None = None,
          max_certificates: int = 3, progress: bool = True, name: str = "") -> Audit:
    """Search for a proof that the loss is not convex, and verify every proof found in float64.

    * ``"jensen"`` — a search for f((1−t)a + tb) > (1−t)f(a) + t·f(b) (``budget`` loss evaluations:
      segments around θ at several radii, far points, checkpoints, 1-D slices, gradient refinement);
    * ``"hessian"`` — the smallest Hessian eigenvalue at θ; a negative one gives the triple
      (θ − hv, θ + hv, ½) along its eigenvector v;
    * ``"symmetry"`` — θ' = g·θ for a symmetry g of the network (hidden-unit permutation, sign flip
      for odd activations, positive rescaling for ReLU), so f(θ') = f(θ); a worse midpoint is a proof
      needing no search.

    Only certificates that :meth:`Certificate.verify` accepts count. The user's model is not modified.

    >>> import lossatlas
    >>> ex = lossatlas.examples.load("seed-relu")
    >>> result = audit(ex.problem, ex.center, budget=60, progress=False)
    >>> result.verdict, result.proven_nonconvex
    ('non-convex (proven)', True)
    """
    if not isinstance(problem, Problem):
        raise bad_type("problem", "a lossatlas.Problem", problem)
    center = problem.params() if center is None else center
    problem.check_params(center, arg="center")
    methods, seed = _check_audit_options(problem, methods, budget, seed, max_certificates, progress, checkpoints)
    t0 = time.perf_counter()
    p64 = float64_problem(problem)
    reference = Reference(p64, snapshot=problem.module)  # the model as the problem took it
    certificates: list[Certificate] = []
    tried: dict[str, Any] = {}
    notes: list[str] = []
    skipped: dict[str, str] = {}
    non_finite = 0
    theta64 = {k: v.detach().to(device=p64.device, dtype=torch.float64) for k, v in center.items()}
    try:
        with torch.no_grad():
            f_theta = float(p64.evaluate_tensors(theta64, metrics=False)["loss"])
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        # proofs are made in float64: a model that cannot run in float64 gets none, and is told why
        text = " ".join(str(exc).split())[:300]
        skipped = {m: f"{m} skipped: the model/loss cannot be evaluated in float64, where every proof is checked "
                      f"({type(exc).__name__}: {text})" for m in methods}
        return Audit(NOT_FOUND, [], {}, None, None, None, time.perf_counter() - t0, None, [], None, name, skipped)
    centre_finite = math.isfinite(f_theta)
    if not centre_finite:
        non_finite += 1

    ctx = AuditContext(problem, p64, center, reference, seed, budget, max_certificates, checkpoints, progress, f_theta,
                       certificates, tried, notes, skipped, {"non_finite": non_finite})
    for method in sorted((REGISTRY[m] for m in dict.fromkeys(methods)), key=lambda m: m.order):
        try:
            method.run(ctx)
        except (*_SKIPPABLE, *method.skippable) as exc:
            skipped[method.name] = _skip_reason(method.name, exc)
    best_gap, gaps = ctx.results.get("best_jensen_gap"), ctx.results.get("jensen_gaps")
    lam_min, lam_max = ctx.results.get("lambda_min"), ctx.results.get("lambda_max")
    why, not_certified = ctx.results.get("why"), ctx.results.get("not_certified")
    non_finite = ctx.results["non_finite"]

    certificates.sort(key=lambda c: c.margin, reverse=True)
    verdict = PROVEN if certificates else NOT_FOUND
    return Audit(verdict, certificates, tried, best_gap, lam_min, lam_max, time.perf_counter() - t0, why, notes,
                 gaps, name, skipped, non_finite, not_certified)


def _check_audit_options(problem: Problem, methods: Any, budget: Any, seed: Any, max_certificates: Any,
                         progress: Any, checkpoints: Any) -> tuple[Sequence[str], int]:
    """Check the options of :func:`audit` (in its documented order): (methods as a sequence, seed)."""
    if isinstance(methods, str):
        methods = (methods,)
    unknown = [m for m in methods if not isinstance(m, str) or m not in REGISTRY]
    if unknown or not methods:
        raise bad_value("methods", f"a non-empty subset of {method_names()}", methods)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 20:
        raise bad_value("budget", "an integer >= 20 (loss evaluations)", budget)
    seed = check_seed(seed)
    if isinstance(max_certificates, bool) or not isinstance(max_certificates, int) or max_certificates < 1:
        raise bad_value("max_certificates", "an integer >= 1", max_certificates)
    if not isinstance(progress, bool):
        raise bad_type("progress", "a bool", progress)
    if checkpoints is not None:
        if isinstance(checkpoints, Mapping) or not isinstance(checkpoints, (list, tuple)):
            raise bad_type("checkpoints", "a list of parameter dicts or None", checkpoints)
        if not checkpoints:
            raise bad_value("checkpoints", "a non-empty list of parameter dicts, or None", checkpoints)
        for i, c in enumerate(checkpoints):
            if not isinstance(c, Mapping):
                raise bad_type(f"checkpoints[{i}]", "a parameter dict", c)
            problem.check_params(c, arg=f"checkpoints[{i}]")
    return methods, seed


@public("verify")
def verify(certificate: Certificate, problem: Problem) -> bool:
    """Shorthand for ``certificate.verify(problem)``."""
    if not isinstance(certificate, Certificate):
        raise bad_type("verify", "certificate", "a lossatlas Certificate", certificate)
    return certificate.verify(problem)
