"""Argument checks and random probes shared by the curvature estimators."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import bad_type, bad_value, with_name
from ..errors import check_seed as impl

BASIS_BYTES = 1 << 30  # most bytes of a float64 Lanczos basis (and its products) chosen automatically


def check_int(*args: Any, minimum: int = 1, allow_none: bool = False) -> int | None:
    """``check_int(arg, value)`` (or ``check_int(func, arg, value)``): an integer >= ``minimum``."""
    func, (arg, value) = with_name(args, 2, "check_int")
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise bad_type(func, arg, f"an integer >= {minimum}" + (" or None" if allow_none else ""), value)
    if value < minimum:
        raise bad_value(func, arg, f"an integer >= {minimum}", value)
    return int(value)


def check_seed(*args: Any) -> int:
    """``check_seed(seed)`` (or ``check_seed(func, seed)``): :func:`lossatlas.errors.check_seed`."""
    return impl(*args)


def check_tol(*args: Any) -> float:
    """``check_tol(tol)`` (or ``check_tol(func, tol)``): a number in (0, 1)."""
    func, (tol,) = with_name(args, 1, "check_tol")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not (0 < float(tol) < 1):
        raise bad_value(func, "tol", "a number in (0, 1) (residual relative to the largest |eigenvalue|)", tol)
    return float(tol)


def check_flag(*args: Any) -> bool:
    """``check_flag(arg, value)`` (or ``check_flag(func, arg, value)``): a bool."""
    func, (arg, value) = with_name(args, 2, "check_flag")
    if not isinstance(value, bool):
        raise bad_type(func, arg, "a bool", value)
    return value


def generator(seed: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one stream of a seed (so estimators drawing several kinds of probes keep
    them independent and reproducible on every device)."""
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state % (2**63)))


def gaussian(n: int, seed: int, *, stream: int = 0, device: torch.device | str = "cpu", columns: int | None = None
             ) -> Tensor:
    """Standard normal probes drawn in float64 on the CPU (same bytes on every device)."""
    shape = (n,) if columns is None else (n, columns)
    return torch.randn(shape, generator=generator(seed, stream), dtype=torch.float64).to(device)


def rademacher(n: int, columns: int, seed: int, *, stream: int = 0, device: torch.device | str = "cpu") -> Tensor:
    """±1 probes (n × columns) drawn on the CPU."""
    bits = torch.randint(0, 2, (n, columns), generator=generator(seed, stream), dtype=torch.int8)
    return (bits.to(torch.float64) * 2.0 - 1.0).to(device)


def default_basis(n: int, wanted: int, requested: int | None, preferred: int = 100) -> int:
    """Lanczos basis size: ``requested``, else ``preferred`` capped by :data:`BASIS_BYTES` of float64."""
    if requested is not None:
        return min(n, max(requested, wanted + 3))
    by_memory = max(wanted + 3, BASIS_BYTES // (16 * max(n, 1)) - 1)  # basis vectors and their products
    return int(min(n, max(min(preferred, by_memory), 2 * wanted + 2)))



#: the zero band is at least this many machine epsilons of the operator's dtype times ‖A‖
ZERO_EPS = 100.0


def zero_band(dtype: torch.dtype, scale: float, asymmetry: float, n: int, product_error: float = 0.0) -> float:
    """τ: eigenvalues with |λ| ≤ τ cannot be told from zero by these products.

    τ = max(100·ε·s, √n·a, 3·e) with ε the machine epsilon of the operator's dtype, s an estimate of
    ‖A‖₂ from below (the largest |Ritz value|), a the largest asymmetry |vᵢᵀ(A vⱼ) − vⱼᵀ(A vᵢ)|
    measured by the Lanczos runs (a product error seen along random directions: the error of the
    whole matrix is up to ~√n times larger), and e the largest error estimated for a product with a
    unit vector (finite-difference products; 0 for exact ones). Rounding of exact products in float64
    gives eigenvalues of exactly-zero directions at ~1e-16·s, in float32 at ~1e-8·s: two orders of
    magnitude inside the band.
    """
    if not (math.isfinite(scale) and math.isfinite(asymmetry)):
        return float("nan")
    eps = float(torch.finfo(dtype).eps)
    return float(max(ZERO_EPS * eps * scale, math.sqrt(max(n, 1)) * asymmetry, 3.0 * product_error))
