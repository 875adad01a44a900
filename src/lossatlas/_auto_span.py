"""``span="auto"``: the plane's range chosen from the loss itself.

Along each direction dᵢ (both signs) the loss is evaluated at θ ± s·dᵢ for s = 1/8, 1/4, … (doubling,
at most up to :data:`MAX_SPAN`) until it has risen to the level

    f(θ) + (factor − 1) · max(|f(θ)|, tiny)      (factor·f(θ) for a positive loss),

then the crossing is bracketed by bisection (:data:`BISECTIONS` steps): a few loss evaluations per
direction. The axis then spans [−sᵢ, sᵢ] with sᵢ the larger of the two sides' crossings, so the
grid reaches the level on both sides (odd ``steps`` keep θ on the grid). A side that never reaches
it within :data:`MAX_SPAN` uses :data:`MAX_SPAN` and says so. ``"auto:F"`` asks for factor F
(default :data:`FACTOR`). What was found is recorded in the result's ``attrs["span_auto"]`` (JSON:
factor, level, spans, each side's crossing, evaluations).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from . import params as P
from .errors import bad_value

FACTOR = 2.0
START = 0.125
MAX_SPAN = 64.0
BISECTIONS = 4

__all__ = ["auto_span", "parse", "FACTOR"]


def parse(span: str, func: str = "surface") -> float:
    """The factor of ``"auto"`` / ``"auto:F"`` (F > 1)."""
    text = span.strip().lower()
    if text == "auto":
        return FACTOR
    if text.startswith("auto:"):
        try:
            factor = float(text[5:])
        except ValueError:
            factor = float("nan")
        if math.isfinite(factor) and factor > 1.0:
            return factor
    raise bad_value(func, "span", "a number, a (lo, hi) pair, one pair per axis, 'auto' or 'auto:F' with F > 1",
                    span)


def auto_span(problem, center: Mapping[str, Any], directions, factor: float = FACTOR) -> dict[str, Any]:
    """The half-width of each axis where the loss has risen by ``factor`` (see the module's docs)."""
    f0 = problem.loss(center)
    level = f0 + (factor - 1.0) * max(abs(f0), 1e-12)
    evaluations = 1
    spans, sides = [], []
    for d in directions:
        found = []
        for sign in (1.0, -1.0):
            def f(s: float) -> float:
                return problem.loss(P.axpy(sign * s, d, center))

            lo, hi, s = 0.0, None, START
            while s <= MAX_SPAN:
                v = f(s)
                evaluations += 1
                if not math.isfinite(v) or v >= level:
                    hi = s
                    break
                lo, s = s, 2 * s
            if hi is None:
                found.append(None)
                continue
            for _ in range(BISECTIONS):
                mid = 0.5 * (lo + hi)
                v = f(mid)
                evaluations += 1
                if not math.isfinite(v) or v >= level:
                    hi = mid
                else:
                    lo = mid
            found.append(hi)
        sides.append(found)
        reached = [s for s in found if s is not None]
        spans.append(max(reached) if reached else MAX_SPAN)
    return {"factor": float(factor), "loss_at_center": float(f0), "level": float(level),
            "spans": [float(s) for s in spans],
            "crossings": [[None if s is None else float(s) for s in side] for side in sides],
            "reached": [all(s is not None for s in side) for side in sides], "evaluations": evaluations}
