"""Convexity audit: proofs of non-convexity, an honest "no violation found", baselines side by side.

A function is convex iff f((1−t)a + t·b) ≤ (1−t)f(a) + t·f(b) for all a, b and t ∈ [0, 1]; iff (C²)
its Hessian is positive semi-definite everywhere; and then its minimisers form a convex set. Each
gives a way to prove non-convexity with one concrete witness, and lossatlas turns every witness into
a :class:`Certificate` (three points, their losses, the gap and a rounding bound) that
:meth:`Certificate.verify` re-checks in float64. None of them can prove convexity: when nothing is
found the verdict is "no violation found", never "convex".

A certificate is accepted only when the losses, recomputed by a plain float64 path independent of the
problem's fast paths, are finite, computed in float64 throughout by torch operations, and their Jensen
gap beats both a fixed floor (:func:`rounding_bound`) and ~10⁴ times the rounding error *measured*
on that computation by Monte Carlo arithmetic (see :mod:`lossatlas.convexity._certificate` for exactly
what that guarantees and assumes).
"""

from ._audit import METHODS, NOT_FOUND, PROVEN, Audit, Verdict, audit, verify
from ._certificate import Certificate, Verification
from ._compare import Comparison, compare
from ._jensen import jensen_gap, rounding_bound

__all__ = ["audit", "verify", "compare", "Audit", "Certificate", "Verification", "Comparison", "jensen_gap",
           "rounding_bound", "METHODS", "Verdict", "PROVEN", "NOT_FOUND"]
