"""Certificates of non-convexity that anyone can re-check in float64.

Every certificate is, at heart, one Jensen violation: points a, b, a weight t and the three losses
with J(a, b, t) = f((1−t)a + tb) − (1−t)f(a) − t·f(b) > bound. Its ``kind`` tells where it came from:

* ``"jensen"`` — found by searching segments (or between checkpoints);
* ``"hessian"`` — a negative Hessian eigenvalue λ with eigenvector v: the triple is
  (θ − h·v, θ + h·v, ½), whose gap ≈ −λh²/2 > 0; the eigenpair, its residual ‖Hv − λv‖ and the
  Rayleigh quotient vᵀHv are recorded and re-checked. When ``eigen["params"]`` names a block of
  parameters, (λ, v) is an eigenpair of the Hessian restricted to them: v is zero elsewhere (checked),
  so vᵀHv is still the full Hessian's quadratic form, and the residual is taken on the block;
* ``"symmetry"`` — b = g·a for a symmetry g of the network (hidden-unit permutation, sign flip,
  positive rescaling), so f(b) = f(a), and the midpoint is worse.

:meth:`Certificate.verify` recomputes everything in float64 from the points alone (the stored
losses are only compared against the recomputation, so a changed point or loss is detected) and
accepts only if the gap exceeds a rounding bound *measured on this computation*.

What an accepted certificate guarantees
---------------------------------------
The three losses were recomputed by a plain float64 path (a float64 deep copy of the problem's
private model, ``functional_call`` batch by batch, the user's own loss or closure, an exact sum over
batches — none of lossatlas' fast paths), every torch operation of that computation produced float64
(or integer/boolean) tensors only, the three losses are finite and the problem's own evaluation
agrees with the plain path; and the Jensen gap exceeds

    bound = 3·1e-9·max|f| (+ 3·eps·max|f| + 2^-982) + 10·(spread of 4 Monte Carlo arithmetic runs with
            every operation's inputs and outputs perturbed by 2^-43 relative)
            + 10·2^10·(disagreement between evaluation paths and between repeated runs),

i.e. about 10⁴ times the rounding error measured on this very computation (cancellation included)
and never less than the fixed floor. It assumes that the loss is a deterministic function of the
parameters computed by torch operations (a closure that computes in numpy or Python floats is
outside what is watched and measured), and that rounding errors behave like those of random
rounding (the measured spread is an estimate, not an interval-arithmetic bound). Under those
assumptions the loss, as a function of the parameters on this data, is not convex. See
:mod:`lossatlas.convexity._reference`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import params as P
from .._repr import num, table
from .._repr import text as repr_text
from .._version import __version__
from ..curvature import hessian_operator
from ..errors import LossAtlasError, StoreError, bad_type, public
from ..problem import Problem
from ._jensen import is_violation, jensen_gap, rounding_bound
from ._recipe import rebuild
from ._reference import Reference, float64_problem

KINDS = ("jensen", "hessian", "symmetry")
FORMAT = "lossatlas-certificate/1"


@dataclass
class Verification:
    """The outcome of :meth:`Certificate.check`: accepted or not, and why.

    ``losses`` are the plain-path float64 recomputations; ``bound`` the rounding bound the gap had to
    beat; ``error_estimate`` the measured estimate of the float64 rounding error of the gap itself
    (≈ bound / 10⁴ when the measurement dominates the fixed ``floor``); ``measured`` the raw
    measurements (Monte Carlo arithmetic spreads, path and repeat discrepancies)."""

    accepted: bool
    reasons: list[str]
    losses: dict[str, float]
    gap: float
    bound: float
    rayleigh: float | None = None
    residual: float | None = None
    error_estimate: float | None = None
    floor: float | None = None
    measured: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.accepted


@dataclass
class Certificate:
    """A self-contained, re-checkable proof that a problem's loss is not convex."""

    kind: str
    a: P.Params
    b: P.Params
    t: float
    losses: dict[str, float]
    gap: float
    bound: float
    fingerprints: dict[str, str]
    eigen: dict[str, Any] | None = None
    eigenvector: P.Params | None = None
    symmetry: dict[str, Any] | None = None
    note: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def margin(self) -> float:
        """gap − bound: how far beyond rounding the violation is (> 0 for a valid certificate)."""
        return self.gap - self.bound

    def _rows(self) -> list[tuple[str, str]]:
        rows = [("kind", self.kind), ("t", num(self.t, ".3g")),
                ("f(a), f(b)", f"{num(self.losses.get('a'), '.6g')}, {num(self.losses.get('b'), '.6g')}"),
                ("f((1−t)a + tb)", num(self.losses.get("t"), ".6g")),
                ("Jensen gap", f"{num(self.gap, '.3e')} > rounding bound {num(self.bound, '.1e')}"),
                ("parameters", f"{sum(int(v.numel()) for v in self.a.values()):,}")]
        if self.eigen:
            rows.append(("eigenvalue", f"λ = {num(self.eigen.get('value'))} (residual "
                                       f"{num(self.eigen.get('residual', float('nan')), '.1e')})"))
        if self.symmetry:
            rows.append(("symmetry", str(self.symmetry.get("description", self.symmetry.get("kind")))))
        return rows

    def __repr__(self) -> str:
        return repr_text("Certificate", [("kind", repr(self.kind)), ("gap", num(self.gap, ".3e")),
                                    ("bound", num(self.bound, ".1e")), ("t", num(self.t, ".3g"))],
                    ["(.summary() in words; .verify(problem) re-checks it in float64; .a, .b hold the points)"])

    def _repr_html_(self) -> str:
        return table("Certificate of non-convexity", self._rows(), ".verify(problem) re-checks it in float64.")

    def summary(self) -> str:
        text = (f"{self.kind} certificate: f(a) = {self.losses['a']:.6g}, f(b) = {self.losses['b']:.6g}, "
                f"f((1−t)a + tb) = {self.losses['t']:.6g} at t = {self.t:.3g}; Jensen gap {self.gap:.3e} > "
                f"rounding bound {self.bound:.1e}")
        if self.eigen:
            text += f"; λ = {self.eigen['value']:.4g} (residual {self.eigen.get('residual', float('nan')):.1e})"
            if self.eigen.get("params"):
                text += f" of the Hessian block over {len(self.eigen['params'])} parameter tensor(s)"
        if self.symmetry:
            text += f"; b = {self.symmetry.get('description', self.symmetry.get('kind'))} of a"
        return text

    # -- verification ---------------------------------------------------------------------------
    def check(self, problem, *, reference: Reference | None = None) -> Verification:
        """Recompute in float64 by the plain reference path, measure the rounding error of that
        computation, and report every reason for rejection (empty when accepted)."""
        if not isinstance(problem, Problem):
            raise bad_type("Certificate.verify", "problem", "a lossatlas.Problem", problem)
        p64 = float64_problem(problem)
        if reference is not None and reference.p64 is not p64:
            reference = None
        reasons: list[str] = []
        fp = p64.fingerprint()
        for key in ("model", "data", "loss"):
            if self.fingerprints.get(key) != fp[key]:
                reasons.append(f"{key} fingerprint differs: the certificate is for another {key}")
        try:
            a = P.to(self.a, dtype=torch.float64, device=p64.device)
            b = P.to(self.b, dtype=torch.float64, device=p64.device)
            p64.check_params(a, func="Certificate.verify", arg="certificate.a")
            p64.check_params(b, func="Certificate.verify", arg="certificate.b")
        except Exception as exc:  # wrong names/shapes: another model
            return Verification(False, reasons + [str(exc)], {}, float("nan"), float("nan"))
        if not 0.0 < self.t < 1.0:
            reasons.append(f"t = {self.t} is not strictly between 0 and 1")
        if self.kind not in KINDS:
            reasons.append(f"unknown certificate kind {self.kind!r}")
        ev = (reference or Reference(p64, snapshot=problem.module)).triple(a, b, self.t)
        reasons += ev.reasons
        losses, gap, bound = ev.losses, ev.gap, ev.bound
        if math.isfinite(bound):
            for k, v in losses.items():
                stored = self.losses.get(k, float("nan"))
                if not abs(stored - v) <= bound:
                    reasons.append(f"stored loss f({k}) = {stored!r} does not match the recomputed {v!r}")
            if not is_violation(gap, bound):
                reasons.append(f"Jensen gap {gap:.3e} does not exceed the rounding bound {bound:.3e} (measured "
                               f"float64 error of the gap ≈ {ev.error_estimate:.1e}, fixed floor {ev.floor:.1e})")
        rayleigh = residual = None
        if self.kind == "hessian":
            try:
                rayleigh, residual = self._check_eigen(p64, a, b, reasons)
            except (LossAtlasError, RuntimeError, NotImplementedError) as exc:
                reasons.append(f"the eigenpair could not be re-checked: {exc}")
        if self.kind == "symmetry" and self.symmetry and "rebuild" in self.symmetry:
            twin = rebuild(a, self.symmetry["rebuild"])
            if twin is None or any(not torch.allclose(twin[k], b[k], rtol=0, atol=1e-12 * (1 + float(b[k].abs().max())))
                                   for k in b):
                reasons.append("b is not the stated symmetry transform of a")
        return Verification(not reasons, reasons, losses, gap, bound, rayleigh, residual, ev.error_estimate,
                            ev.floor, ev.measured)

    def _check_eigen(self, p64, a, b, reasons) -> tuple[float | None, float | None]:
        if self.eigenvector is None or not self.eigen:
            reasons.append("a hessian certificate must carry its eigenvector")
            return None, None
        center = P.lincomb(a, [P.sub(b, a)], [0.5])
        try:
            v = P.to(self.eigenvector, dtype=torch.float64, device=p64.device)
            p64.check_params(v, func="Certificate.verify", arg="certificate.eigenvector")
        except Exception as exc:
            reasons.append(str(exc))
            return None, None
        nv = P.norm(v)
        if nv == 0:
            reasons.append("the eigenvector is zero")
            return None, None
        v = P.scale(v, 1.0 / nv)
        # An eigenpair of a block of the Hessian (its restriction to some parameters): v must vanish off
        # the block; then vᵀHv is the block's Rayleigh quotient and the residual is taken on the block.
        block = self.eigen.get("params")
        if block is not None:
            unknown = [n for n in block if n not in v]
            if unknown or not block:
                reasons.append(f"the eigen block names parameters the problem lacks: {unknown[:3]}")
                return None, None
            outside = [n for n in v if n not in block and bool(torch.any(v[n] != 0))]
            if outside:
                reasons.append(f"the eigenvector of a Hessian block is not zero off the block ({outside[:3]})")
                return None, None
        hv = hessian_operator(p64, center, params=None if block is None else list(block),
                              dtype=torch.float64).apply(v)
        q = P.dot({k: v[k] for k in hv}, hv)
        lam = float(self.eigen["value"])
        residual = P.norm(P.axpy(-lam, {k: v[k] for k in hv}, hv))
        if not q < 0:
            reasons.append(f"the Rayleigh quotient vᵀHv = {q:.3e} is not negative")
        if lam < 0 and residual > abs(lam):
            reasons.append(f"the eigen-residual {residual:.2e} exceeds |λ| = {abs(lam):.2e}")
        return q, residual

    def verify(self, problem) -> bool:
        """True iff the certificate holds when everything is recomputed in float64 (see :meth:`check`)."""
        return self.check(problem).accepted

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one ``.npz`` file: float64 arrays for the points (and eigenvector), JSON for the rest."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
        arrays: dict[str, np.ndarray] = {}
        layout = {}
        for tag, vec in (("a", self.a), ("b", self.b), ("v", self.eigenvector)):
            if vec is None:
                continue
            layout[tag] = []
            for i, (name, t) in enumerate(vec.items()):
                arrays[f"{tag}{i}"] = t.detach().double().cpu().numpy()
                layout[tag].append(name)
        meta = {"format": FORMAT, "version": __version__, "kind": self.kind, "t": self.t, "losses": self.losses,
                "gap": self.gap, "bound": self.bound, "fingerprints": self.fingerprints, "eigen": self.eigen,
                "symmetry": self.symmetry, "note": self.note, "meta": self.meta, "layout": layout}
        arrays["meta"] = np.array(json.dumps(meta, default=float))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    @public("Certificate.load")
    def load(cls, path: str | Path) -> Certificate:
        """Read a certificate written by :meth:`save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != FORMAT:
                    raise ValueError("not a lossatlas certificate")
                vecs = {tag: {name: torch.from_numpy(z[f"{tag}{i}"].copy()) for i, name in enumerate(names)}
                        for tag, names in meta["layout"].items()}
        except Exception as exc:
            raise StoreError(f"Certificate.load(): argument 'path' must be a certificate written by lossatlas; "
                             f"received {str(path)!r} ({exc})") from exc
        return cls(kind=meta["kind"], a=vecs["a"], b=vecs["b"], t=float(meta["t"]), losses=meta["losses"],
                   gap=float(meta["gap"]), bound=float(meta["bound"]), fingerprints=meta["fingerprints"],
                   eigen=meta.get("eigen"), eigenvector=vecs.get("v"), symmetry=meta.get("symmetry"),
                   note=meta.get("note", ""), meta=meta.get("meta", {}))


def make_certificate(p64, kind: str, a: P.Params, b: P.Params, t: float, *, note: str = "",
                     eigen: dict[str, Any] | None = None, eigenvector: P.Params | None = None,
                     symmetry: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
                     reference: Reference | None = None, why: list[str] | None = None) -> Certificate | None:
    """Evaluate a candidate triple in float64 and return a certificate if :meth:`Certificate.check`
    accepts it (else None, with the reasons appended to ``why``). ``p64`` must be a float64 problem.

    A cheap screen comes first: the problem's own float64 losses must beat the fixed floor
    :func:`rounding_bound` before the plain path and the error measurement are run."""
    a = P.to(a, dtype=torch.float64, device=p64.device)
    b = P.to(b, dtype=torch.float64, device=p64.device)
    x_t = P.lincomb(a, [P.sub(b, a)], [t])
    f_a, f_b, f_t = p64.loss(a), p64.loss(b), p64.loss(x_t)
    gap = jensen_gap(f_a, f_b, f_t, t)
    floor = rounding_bound(f_a, f_b, f_t)
    if not is_violation(gap, floor):
        if why is not None:
            if not all(math.isfinite(v) for v in (f_a, f_b, f_t)):
                why.append("a loss of the triple is not finite")
            else:
                why.append(f"Jensen gap {gap:.3e} does not exceed the rounding floor {floor:.3e}")
        return None
    fp = p64.fingerprint()
    cert = Certificate(kind=kind, a={k: v.cpu() for k, v in a.items()}, b={k: v.cpu() for k, v in b.items()},
                       t=float(t), losses={"a": f_a, "b": f_b, "t": f_t}, gap=gap, bound=floor,
                       fingerprints={k: fp[k] for k in ("model", "data", "loss")}, eigen=eigen,
                       eigenvector=None if eigenvector is None else {k: v.detach().double().cpu()
                                                                     for k, v in eigenvector.items()},
                       symmetry=symmetry, note=note, meta=dict(meta or {}))
    report = cert.check(p64, reference=reference)
    if not report.accepted and report.reasons and all(r.startswith("stored loss") for r in report.reasons):
        cert.losses = dict(report.losses)  # the screen's values differ from the plain path's beyond the bound
        report = cert.check(p64, reference=reference)
    if not report.accepted:
        if why is not None:
            why += report.reasons
        return None
    cert.losses = dict(report.losses)
    cert.gap, cert.bound = report.gap, report.bound
    cert.meta["error_estimate"] = report.error_estimate
    return cert
