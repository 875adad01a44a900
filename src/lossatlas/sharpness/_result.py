"""The result every sharpness measure returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Sharpness"]


@dataclass(frozen=True)
class Sharpness:
    """One sharpness measure at θ.

    ``value`` ± ``error``: for estimates (λmax, trace) the error is the eigenvalue error bound or
    the standard error; for worst-case measures (ε-sharpness, SAM, adaptive) ``kind`` is
    ``"lower bound"``: ``value`` is the increase of the loss at ``witness`` (a point actually evaluated,
    inside the set, re-checked in float64), so the true maximum is ≥ ``value``; ``error`` is 0 there.
    For widths ``error`` is the grid spacing. ``scale_invariant`` says whether the measure is unchanged
    by rescaling a ReLU layer's incoming weights by α and the next layer's by 1/α (the function is
    unchanged, Dinh et al. 2017). ``details`` holds the rest (losses, steps, radius, convergence).
    """

    name: str
    value: float
    error: float
    kind: str
    scale_invariant: bool
    reference: str = ""
    witness: dict | None = field(default=None, repr=False)
    details: dict[str, Any] = field(default_factory=dict, repr=False)

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        err = f" ± {self.error:.2g}" if self.error else ""
        return (f"Sharpness({self.name}: {self.value:.6g}{err} ({self.kind}), "
                f"scale_invariant={self.scale_invariant})")
