"""Jensen gaps: the arithmetic every non-convexity certificate reduces to.

A function f is convex iff for all a, b and t ∈ [0, 1]

    f((1−t)·a + t·b) ≤ (1−t)·f(a) + t·f(b).

The *Jensen gap* J(a, b, t) = f((1−t)a + tb) − (1−t)f(a) − t·f(b) is ≤ 0 for convex f; one triple
with J > 0 proves f is not convex. Values computed in floating point carry rounding error, so a gap
counts only when it exceeds :func:`rounding_bound` — a fixed *floor*, never sufficient alone: a loss
whose computation cancels, or that is computed below float64, has rounding errors far above it.
Certificates also demand a gap beyond the error measured on their own computation
(:mod:`lossatlas.convexity._reference`).
"""

from __future__ import annotations

import math

import numpy as np

#: relative rounding allowance per loss value evaluated in float64 (see :func:`rounding_bound`)
LOSS_RELATIVE_ERROR = {np.float64: 1e-9, np.float32: 1e-4}


def jensen_gap(f_a: float, f_b: float, f_t: float, t: float) -> float:
    """J = f_t − ((1−t)·f_a + t·f_b): positive values violate Jensen's inequality.

    >>> jensen_gap(0.0, 0.0, 1.0, 0.5)
    1.0
    >>> jensen_gap(1.0, 1.0, 0.0, 0.5)  # the midpoint of a convex bowl lies below the chord
    -1.0
    """
    return float(f_t - ((1.0 - t) * f_a + t * f_b))


def rounding_bound(f_a: float, f_b: float, f_t: float, *, relative_error: float = 1e-9,
                   measured: float = 0.0) -> float:
    """The fixed floor under the rounding bound of a computed Jensen gap.

    Each loss value is allowed ``relative_error``·max(|f|, tiny) — for a well-conditioned float64
    evaluation of a network the default 1e-9 is ~10⁷·eps, far above the accumulated error of a forward
    pass and a dataset mean — plus ``measured`` (an observed disagreement, times ten). This is an
    assumption about the computation, not a bound: a loss whose computation cancels (mean(z²) −
    mean(z)² with large means) or runs below float64 beats it with rounding noise. Certificates
    therefore also require the gap to beat ~10⁴ times the error measured on their own computation
    (:class:`~lossatlas.convexity.Verification` ``error_estimate``); this floor only guarantees that
    no gap within a few million ulps of the losses ever counts. The three loss errors combine by the
    triangle inequality (weights 1, 1−t ≤ 1, t ≤ 1), so it is conservative for every t.
    """
    scale = max(abs(f_a), abs(f_b), abs(f_t), 1e-300)
    return 3.0 * relative_error * scale + 10.0 * abs(measured) + 3.0 * 2.0 ** -52 * scale


def second_difference(f_minus: float, f_0: float, f_plus: float) -> float:
    """f(θ−h·v) − 2f(θ) + f(θ+h·v) = −2·J(θ−hv, θ+hv, ½): negative means a Jensen violation."""
    return float(f_minus - 2.0 * f_0 + f_plus)


def is_violation(gap: float, bound: float) -> bool:
    """True iff the gap is positive beyond the rounding bound (NaN never counts)."""
    return bool(math.isfinite(gap) and math.isfinite(bound) and gap > bound)
