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
accepts only if the gap exceeds the stated rounding bound.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import params as P
from .._version import __version__
from ..errors import StoreError, bad_type
from ._jensen import is_violation, jensen_gap, rounding_bound

KINDS = ("jensen", "hessian", "symmetry")
FORMAT = "lossatlas-certificate/1"


@dataclass
class Verification:
    """The outcome of :meth:`Certificate.check`: accepted or not, and why."""

    accepted: bool
    reasons: list[str]
    losses: dict[str, float]
    gap: float
    bound: float
    rayleigh: float | None = None
    residual: float | None = None

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
    def check(self, problem) -> Verification:
        """Recompute in float64 and report every reason for rejection (empty when accepted)."""
        from ..problem import Problem

        if not isinstance(problem, Problem):
            raise bad_type("Certificate.verify", "problem", "a lossatlas.Problem", problem)
        p64 = problem if problem.dtype == torch.float64 else problem.with_dtype(torch.float64)
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
        x_t = P.lincomb(a, [P.sub(b, a)], [self.t])
        f_a, f_b, f_t = p64.loss(a), p64.loss(b), p64.loss(x_t)
        losses = {"a": f_a, "b": f_b, "t": f_t}
        gap = jensen_gap(f_a, f_b, f_t, self.t)
        bound = rounding_bound(f_a, f_b, f_t)
        for k, v in losses.items():
            stored = self.losses.get(k, float("nan"))
            if not abs(stored - v) <= bound:
                reasons.append(f"stored loss f({k}) = {stored!r} does not match the recomputed {v!r}")
        if not is_violation(gap, bound):
            reasons.append(f"Jensen gap {gap:.3e} does not exceed the rounding bound {bound:.3e}")
        rayleigh = residual = None
        if self.kind == "hessian":
            rayleigh, residual = self._check_eigen(p64, a, b, reasons)
        if self.kind == "symmetry" and self.symmetry and "rebuild" in self.symmetry:
            from ._symmetry import rebuild

            twin = rebuild(a, self.symmetry["rebuild"])
            if twin is None or any(not torch.allclose(twin[k], b[k], rtol=0, atol=1e-12 * (1 + float(b[k].abs().max())))
                                   for k in b):
                reasons.append("b is not the stated symmetry transform of a")
        return Verification(not reasons, reasons, losses, gap, bound, rayleigh, residual)

    def _check_eigen(self, p64, a, b, reasons) -> tuple[float | None, float | None]:
        if self.eigenvector is None or not self.eigen:
            reasons.append("a hessian certificate must carry its eigenvector")
            return None, None
        from ..curvature import hessian_operator

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
        """True iff the certificate holds when everything is recomputed in float64."""
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
                     symmetry: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> Certificate | None:
    """Evaluate a candidate triple in float64 and return a certificate if it is a violation beyond
    rounding (else None). ``p64`` must be a float64 problem."""
    a = P.to(a, dtype=torch.float64, device=p64.device)
    b = P.to(b, dtype=torch.float64, device=p64.device)
    x_t = P.lincomb(a, [P.sub(b, a)], [t])
    f_a, f_b, f_t = p64.loss(a), p64.loss(b), p64.loss(x_t)
    gap = jensen_gap(f_a, f_b, f_t, t)
    bound = rounding_bound(f_a, f_b, f_t)
    if not is_violation(gap, bound):
        return None
    fp = p64.fingerprint()
    return Certificate(kind=kind, a={k: v.cpu() for k, v in a.items()}, b={k: v.cpu() for k, v in b.items()},
                       t=float(t), losses={"a": f_a, "b": f_b, "t": f_t}, gap=gap, bound=bound,
                       fingerprints={k: fp[k] for k in ("model", "data", "loss")}, eigen=eigen,
                       eigenvector=None if eigenvector is None else {k: v.detach().double().cpu()
                                                                     for k, v in eigenvector.items()},
                       symmetry=symmetry, note=note, meta=dict(meta or {}))
