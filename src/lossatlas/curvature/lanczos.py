"""The Lanczos process for symmetric operators, with full reorthogonalisation.

* :func:`extreme_pairs`: thick-restart Lanczos (Wu & Simon, SIAM J. Matrix Anal. Appl. 22, 2000) for
  eigenpairs at either or both ends of the spectrum. One Krylov space approximates both ends at
  once, so negative curvature is found as readily as the largest eigenvalue (a power iteration
  only ever finds the eigenvalue of largest magnitude).
* :func:`quadrature`: m Lanczos steps from a unit vector v, giving the nodes θᵢ and weights wᵢ of the
  Gauss quadrature of the spectral measure of v, vᵀ f(A) v ≈ Σᵢ wᵢ f(θᵢ) (Golub & Meurant 2010;
  stochastic Lanczos quadrature, Ubaru, Chen & Saad 2017).

The basis is kept in float64 and every new vector is orthogonalised twice against all previous
ones (classical Gram–Schmidt applied twice), so the projected matrix T = Vᵀ A V is the exact
Rayleigh–Ritz matrix up to rounding and no spurious copies of eigenvalues appear. A Ritz pair
(θ, y = V s) then has residual ‖A y − θ y‖ = β |s_m| with β the norm of the last residual vector.
When the basis spans an invariant subspace (β ≈ 0), the eigenpair search goes on from a random
vector orthogonal to it, so eigenvalues the start vector cannot reach (a second copy of a repeated
eigenvalue, a block the start vector misses) are still found.

A run may be *locked* against given orthonormal vectors Y: then it works in their orthogonal
complement, on (I − YYᵀ) A (I − YYᵀ), which is how :mod:`.eigen` checks that no eigenvalue beyond the
ones it found was missed. Every step also measures how far the products are from symmetric: the
new column of T, vᵢᵀ(A vⱼ), must equal the entry the previous steps put in its row, vⱼᵀ(A vᵢ); the
largest difference (``asymmetry``) is a measured lower estimate of the error of the products. A
product that is not finite (NaN or Inf) ends the run with ``finite = False``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]


class Krylov:
    """An orthonormal basis (rows of V, (m+1) × n, float64: each vector contiguous) and the projected
    matrix T, grown one product at a time."""

    def __init__(self, n: int, m: int, *, device: torch.device, breakdown: float, deflate: bool = False,
                 keep_products: bool = False, lock: Tensor | None = None):
        self.lock = None if lock is None or lock.shape[0] == 0 else lock.to(torch.float64)
        self.n = n - (0 if self.lock is None else self.lock.shape[0])  # dimension of the space searched
        self.m = m
        self.V = torch.empty(m + 1, n, dtype=torch.float64, device=device)  # rows written before use
        # the products A vⱼ themselves, so that A y for a Ritz vector y = Σ sⱼ vⱼ is Σ sⱼ (A vⱼ): an explicit
        # residual without another product
        self.W = torch.empty(m, n, dtype=torch.float64, device=device) if keep_products else None
        self.T = np.zeros((m + 1, m + 1))
        self.size = 0        # columns of T computed (products taken)
        self.beta = 0.0      # norm of the last residual vector (0 after an exact breakdown)
        self.breakdown = breakdown
        self.deflate = deflate  # on breakdown, continue from a random vector orthogonal to the basis
        self.scale = 0.0     # largest |diagonal| seen: the scale of "small" residuals
        self.asymmetry = 0.0  # largest |vᵢᵀ(A vⱼ) − vⱼᵀ(A vᵢ)| measured
        self.finite = True   # every product so far was finite

    def _against(self, w: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
        """w orthogonalised against the locked vectors and ``basis``; coefficients on ``basis``."""
        if self.lock is None:
            return _orthogonalise(w, basis)
        p = self.lock.shape[0]
        w, h = _orthogonalise(w, torch.cat([self.lock, basis]))
        return w, h[p:]

    def start(self, v0: Tensor) -> None:
        v0 = v0.to(torch.float64)
        if self.lock is not None:
            v0, _ = _orthogonalise(v0, self.lock)
        self.V[0] = v0 / torch.linalg.vector_norm(v0)
        self.size = 0

    def step(self, matvec: MatVec) -> bool:
        """One product; returns False when no further basis vector exists: the whole space is spanned,
        or (without ``deflate``) the basis spans an invariant subspace."""
        j = self.size
        w = matvec(self.V[j]).to(torch.float64)
        if not bool(torch.isfinite(w).all()):
            self.finite = False
            self.beta = 0.0
            return False
        if self.W is not None:
            self.W[j] = w
        basis = self.V[: j + 1]
        w, h = self._against(w, basis)
        h = h.cpu().numpy()
        if j:
            self.asymmetry = max(self.asymmetry, float(np.abs(h[:j] - self.T[j, :j]).max()))
        self.T[: j + 1, j] = h
        self.scale = max(self.scale, abs(float(h[j])))
        beta = robust_norm(w)
        self.size = j + 1
        if self.size >= self.n:
            self.beta = 0.0
            return False
        if beta <= self.breakdown * max(self.scale, np.abs(h).max(initial=0.0)):
            # invariant subspace: the Ritz pairs so far are exact (residual 0)
            self.beta = 0.0
            if not self.deflate:
                return False
            gen = torch.Generator().manual_seed(self.size)
            fresh = torch.randn(self.V.shape[1], generator=gen, dtype=torch.float64).to(self.V.device)
            fresh, _ = self._against(fresh, self.V[: j + 1])
            self.V[j + 1] = fresh / torch.linalg.vector_norm(fresh)
            return True
        self.beta = beta
        self.T[j + 1, j] = beta
        self.V[j + 1] = w / beta
        return True

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and the eigenvectors S of the projected matrix."""
        m = self.size
        return np.linalg.eigh(self.T[:m, :m], UPLO="U")

    def restart(self, theta: np.ndarray, S: np.ndarray, keep: np.ndarray) -> None:
        """Thick restart: keep the Ritz vectors ``keep`` and the last residual direction."""
        m, p = self.size, len(keep)
        coupling = self.beta * S[m - 1, keep]
        coefficients = torch.as_tensor(S[:, keep].T, dtype=torch.float64, device=self.V.device)
        last = self.V[m].clone()
        self.V[:p] = coefficients @ self.V[:m]
        self.V[p] = last
        if self.W is not None:
            self.W[:p] = coefficients @ self.W[:m]
        self.T[:] = 0.0
        self.T[np.arange(p), np.arange(p)] = theta[keep]
        self.T[p, :p] = coupling
        self.size = p


def robust_norm(w: Tensor) -> float:
    """‖w‖₂ without overflow or underflow: where the plain sum of squares is not finite or loses bits
    to underflow (entries beyond ~1e±150), w is scaled by a power of two first (exact), so the result is
    the plain one's bits wherever that one is representable."""
    n = float(torch.linalg.vector_norm(w))
    if np.isfinite(n) and n > 2.0 ** -450:
        return n
    top = float(w.abs().max()) if w.numel() else 0.0
    if top == 0.0 or not np.isfinite(top):
        return n if top == 0.0 else float("inf")
    e = int(np.frexp(top)[1])
    half = -e // 2  # two power-of-two factors: 2^-e alone overflows for subnormal entries
    scaled = (w * 2.0 ** half) * 2.0 ** (-e - half)
    return float(np.ldexp(float(torch.linalg.vector_norm(scaled)), e))


def _orthogonalise(w: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """w minus its projection on the orthonormal rows of ``basis`` (classical Gram–Schmidt, twice),
    and the coefficients ``basis w``."""
    h = basis @ w
    w = w - h @ basis
    h2 = basis @ w
    return w - h2 @ basis, h + h2


@dataclass
class PairsResult:
    values: np.ndarray          # wanted Ritz values, in priority order
    vectors: Tensor             # (n, k) float64 Ritz vectors
    images: Tensor              # (n, k) their products A y, combined from the stored products
    estimates: np.ndarray       # residual estimates β|s_m|
    scale: float                # max |Ritz value|: the spectral scale of the tolerance
    products: int
    restarts: int
    exhausted: bool             # stopped by max_products before convergence
    asymmetry: float = 0.0      # largest measured |vᵢᵀ(A vⱼ) − vⱼᵀ(A vᵢ)| (a product-error estimate)
    finite: bool = True         # False: a product was NaN/Inf and the values are NaN
    complete: bool = False      # the Krylov space grew to the whole (complement) space: every eigenvalue found


def breakdown_tolerance(dtype: torch.dtype) -> float:
    """A residual this small (relative to the spectral scale) means an invariant subspace."""
    return 100.0 * torch.finfo(dtype).eps


def extreme_pairs(matvec: MatVec, v0: Tensor, *, priority: Callable[[np.ndarray], np.ndarray], k: int, tol: float,
                  max_products: int, basis: int, breakdown: float, min_steps: int = 10,
                  on_product: Callable[[], None] = lambda: None, lock: Tensor | None = None) -> PairsResult:
    """Thick-restart Lanczos for the ``k`` Ritz pairs first in ``priority(theta)`` (an ordering of the
    indices of the ascending Ritz values).

    Stops when every wanted pair has β|s_m| ≤ tol · max|θ| *and* the wanted Ritz values moved by at
    most that much over the last max(2, m/10) steps, after at least ``min_steps`` products (or on
    an exact breakdown). A residual alone certifies that *an* eigenvalue lies within it, not that it
    is the extreme one: in a small Krylov space the smallest Ritz value sits in the bulk of
    near-zero eigenvalues with a small residual long before the most negative eigenvalue emerges.
    ``lock``: rows of orthonormal vectors whose complement is searched (see the module notes); the
    returned ``images`` are then the products A y themselves, not their projections.
    """
    n = v0.numel() - (0 if lock is None else lock.shape[0])
    k = min(k, n)
    basis = int(min(n, max(basis, k + 3)))
    min_steps = min(n, max(min_steps, k))
    K = Krylov(v0.numel(), basis, device=v0.device, breakdown=breakdown, deflate=True, keep_products=True, lock=lock)
    K.start(v0)
    products = restarts = 0
    keep_count = max(k + 1, (basis + k) // 2)
    history: list[tuple[int, np.ndarray]] = []
    while True:
        alive = True
        while K.size < basis and products < max_products and alive:
            alive = K.step(matvec)
            products += 1
            on_product()
            if not K.finite:
                return _nonfinite(K, k, products, restarts)
            m = K.size
            if m < min(k, n) or not (m <= 64 or m % 4 == 0 or m == basis or not alive or products >= max_products):
                continue
            theta, S = K.ritz()
            order = priority(theta)[:k]
            scale = float(np.abs(theta).max())
            est = K.beta * np.abs(S[m - 1, order])
            history.append((products, theta[order]))
            if not alive:
                return _finish(K, theta, S, order, est, scale, products, restarts, exhausted=False)
            if products >= min_steps and np.all(est <= tol * scale) and _stagnant(history, products, tol * scale):
                return _finish(K, theta, S, order, est, scale, products, restarts, exhausted=False)
        if products >= max_products or K.size < basis or keep_count >= K.size:
            theta, S = K.ritz()
            order = priority(theta)[:k]
            est = K.beta * np.abs(S[K.size - 1, order])
            return _finish(K, theta, S, order, est, float(np.abs(theta).max()), products, restarts,
                           exhausted=products >= max_products)
        theta, S = K.ritz()
        K.restart(theta, S, priority(theta)[:keep_count])
        restarts += 1


def _stagnant(history: list[tuple[int, np.ndarray]], products: int, threshold: float) -> bool:
    """Whether the wanted Ritz values moved by at most ``threshold`` over the last max(2, m/10) products."""
    back = products - max(2, products // 10)
    past = [values for p, values in history if p <= back]
    return bool(past) and float(np.max(np.abs(history[-1][1] - past[-1]))) <= threshold


def _finish(K: Krylov, theta, S, order, est, scale, products, restarts, *, exhausted: bool) -> PairsResult:
    m = K.size
    coefficients = torch.as_tensor(S[:, order].T, dtype=torch.float64, device=K.V.device)
    vectors, images = (coefficients @ K.V[:m]).T, (coefficients @ K.W[:m]).T
    return PairsResult(theta[order].copy(), vectors, images, np.asarray(est, dtype=np.float64), scale, products,
                       restarts, exhausted, asymmetry=K.asymmetry, complete=K.size >= K.n)


def _nonfinite(K: Krylov, k: int, products: int, restarts: int) -> PairsResult:
    nan = torch.full((K.V.shape[1], k), float("nan"), dtype=torch.float64, device=K.V.device)
    return PairsResult(np.full(k, np.nan), nan, nan.clone(), np.full(k, np.nan), float("nan"), products, restarts,
                       exhausted=False, asymmetry=K.asymmetry, finite=False)


class Quadrature(NamedTuple):
    nodes: np.ndarray
    weights: np.ndarray
    exact: bool          # the Krylov space became invariant: the measure *is* Σ wᵢ δ(θᵢ)
    asymmetry: float     # largest measured |vᵢᵀ(A vⱼ) − vⱼᵀ(A vᵢ)|
    finite: bool         # False: a product was NaN/Inf (nodes and weights are then meaningless)


def quadrature(matvec: MatVec, v0: Tensor, *, steps: int, breakdown: float,
               on_product: Callable[[], None] = lambda: None) -> Quadrature:
    """Gauss quadrature of the spectral measure of v0/‖v0‖ (a :class:`Quadrature`). The weights
    are the squared first components of the eigenvectors of T and sum to 1; ``exact`` is True when
    the Krylov space became invariant (then the measure *is* Σ wᵢ δ(θᵢ))."""
    n = v0.numel()
    K = Krylov(n, min(steps, n), device=v0.device, breakdown=breakdown)
    K.start(v0)
    exact = False
    while K.size < K.m:
        on_product()
        if not K.step(matvec):
            exact = K.finite
            break
    if not K.finite:
        return Quadrature(np.full(1, np.nan), np.ones(1), False, K.asymmetry, False)
    theta, S = K.ritz()
    weights = S[0, :] ** 2
    return Quadrature(theta, weights / weights.sum(), exact, K.asymmetry, True)
