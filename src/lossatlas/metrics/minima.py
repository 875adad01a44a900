"""Local minima of a sampled slice, each checked for being a minimum of the loss itself.

A grid point is a *slice minimum* when its loss is strictly below that of every neighbour (the
3ᵈ − 1 points around it, diagonals included). A minimum of a random slice is almost never a minimum
of the loss: it is one in the directions of the slice only. Each slice minimum is therefore placed in
parameter space, θ* = c + Σᵢ aᵢdᵢ, optionally refined within the slice by Newton steps on the
slice's own quadratic model (so that the grid's offset from the slice's true minimum does not show
up as a gradient), and checked in float64:

* ‖∇L(θ*)‖ over *all* parameters (and its part orthogonal to the slice);
* the Hessian index — the number of eigenvalues of ∇²L(θ*) below −τ (τ: the zero band of
  :func:`lossatlas.curvature._common.zero_band`, so rounding never makes a zero eigenvalue
  negative) — exactly from the dense Hessian for small models, otherwise from Lanczos at both ends
  (:func:`lossatlas.curvature.eigenvalues`), which tells index 0 from index ≥ 1.

Classification: ``"minimum"`` (‖∇L‖ ≤ grad_tol and index 0), ``"saddle"`` (‖∇L‖ ≤ grad_tol and
index ≥ 1), ``"not critical"`` (‖∇L‖ > grad_tol: the loss still decreases off the slice, so the
point is neither), ``"unresolved"`` (Lanczos did not converge, or λmin lies within its error of 0).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import params as P
from ..curvature import eigenvalues, hessian_operator
from ..curvature._common import zero_band
from ..errors import bad_type, check_seed, public
from ..problem import Problem
from . import _common as C

__all__ = ["local_minima", "LocalMinima", "SliceMinimum", "KINDS"]

KINDS = ("minimum", "saddle", "not critical", "unresolved")
#: models with at most this many parameters get the exact (dense) Hessian index
EXACT_LIMIT = 400


@dataclass(frozen=True)
class SliceMinimum:
    """One strict minimum of a sampled slice and what it is in the full parameter space.

    ``coords``: the grid point (slice coordinates); ``refined``: the point checked, after Newton
    refinement within the slice (``coords`` when not refined); ``loss``: the grid value,
    ``point_loss``: L at ``refined`` in float64. ``grad_norm``: ‖∇L‖ over all parameters,
    ``grad_off_slice``: its component orthogonal to the slice's directions. ``index``: the number of
    eigenvalues below −``zero_tol`` (``None`` if unresolved; with Lanczos only 0 or ``1`` meaning
    "at least one"), ``index_exact`` whether it comes from the dense Hessian, ``zero_eigenvalues``
    those within ±``zero_tol`` (dense only). ``lambda_min``/``lambda_max`` ± ``lambda_error``.
    """

    coords: tuple[float, ...]
    grid_index: tuple[int, ...]
    loss: float
    refined: tuple[float, ...] = ()
    point_loss: float = float("nan")
    grad_norm: float = float("nan")
    grad_off_slice: float = float("nan")
    index: int | None = None
    index_exact: bool = False
    zero_eigenvalues: int | None = None
    lambda_min: float = float("nan")
    lambda_max: float = float("nan")
    lambda_error: float = float("nan")
    zero_tol: float = float("nan")
    kind: str = "unchecked"

    def __repr__(self) -> str:
        at = ", ".join(f"{c:.4g}" for c in self.coords)
        if self.kind == "unchecked":
            return f"SliceMinimum(({at}), loss={self.loss:.6g}, unchecked)"
        idx = "?" if self.index is None else (str(self.index) if self.index_exact or self.index == 0 else "≥1")
        return (f"SliceMinimum(({at}), loss={self.loss:.6g}, {self.kind}: |grad|={self.grad_norm:.2e}, "
                f"index={idx}, λmin={self.lambda_min:.4g} ± {self.lambda_error:.1e})")


@dataclass(frozen=True)
class LocalMinima:
    """The strict minima of a slice (:class:`SliceMinimum`, lowest first) and their classification.

    ``count`` is the number of slice minima, ``count_half`` the number on the half-resolution grid
    (every other point): their difference is the grid's resolution error on the count.
    ``counts`` maps each kind (:data:`KINDS`) to how many minima are of it.
    """

    minima: tuple[SliceMinimum, ...]
    shape: tuple[int, ...]
    count_half: int
    boundary: bool = False
    grad_tol: float = 0.0
    checked: bool = False
    notes: tuple[str, ...] = field(default=(), repr=False)

    @property
    def count(self) -> int:
        return len(self.minima)

    @property
    def resolution_error(self) -> int:
        """|count − count at half resolution|."""
        return abs(self.count - self.count_half)

    @property
    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in KINDS}
        for m in self.minima:
            out[m.kind] = out.get(m.kind, 0) + 1
        return {k: v for k, v in out.items() if v}

    def __len__(self) -> int:
        return len(self.minima)

    def __iter__(self):
        return iter(self.minima)

    def __getitem__(self, i: int) -> SliceMinimum:
        return self.minima[i]

    def __repr__(self) -> str:
        grid = "×".join(map(str, self.shape))
        kinds = ", ".join(f"{v} {k}" for k, v in self.counts.items()) if self.checked else "unchecked"
        return f"LocalMinima({self.count} on {grid} (half resolution: {self.count_half}); {kinds})"


def strict_minima(values: np.ndarray, *, boundary: bool = False) -> list[tuple[int, ...]]:
    """Grid indices whose value is strictly below every existing neighbour (3ᵈ − 1 of them); boundary
    points only when ``boundary`` (then only their existing neighbours count)."""
    shape = values.shape
    padded = np.pad(values, 1, mode="constant", constant_values=np.inf)
    inner = tuple(slice(1, s + 1) for s in shape)
    is_min = np.ones(shape, dtype=bool)
    for offset in itertools.product((-1, 0, 1), repeat=values.ndim):
        if not any(offset):
            continue
        shifted = padded[tuple(slice(1 + o, s + 1 + o) for o, s in zip(offset, shape))]
        is_min &= values < shifted
    del inner
    if not boundary:
        edge = np.zeros(shape, dtype=bool)
        for ax, s in enumerate(shape):
            idx = [slice(None)] * len(shape)
            idx[ax] = [0, s - 1]
            edge[tuple(idx)] = True
        is_min &= ~edge
    found = [tuple(int(i) for i in ix) for ix in np.argwhere(is_min)]
    return sorted(found, key=lambda ix: values[ix])


@public("metrics.local_minima")
def local_minima(surface: Any, problem: Problem | None = None, *, center: Mapping | None = None,
                 directions: Any = None, check: bool = True, refine: bool = True, grad_tol: float = 1e-6,
                 boundary: bool = False, exact_limit: int = EXACT_LIMIT, max_minima: int = 50, seed: int = 0,
                 ) -> LocalMinima:
    """The strict local minima of a 1D or 2D slice, each classified as a ``"minimum"``, ``"saddle"``,
    ``"not critical"`` or ``"unresolved"`` point of the loss in the full parameter space.

    Slice minimum: L(p) < L(q) for every grid neighbour q of p (diagonals included). For each (lowest
    first, at most ``max_minima``), with ``problem`` given and ``check=True``: θ* = c + Σ aᵢdᵢ, then
    (``refine``) Newton steps within the slice, s = −(DᵀHD)⁻¹Dᵀ∇L, kept within one grid cell,
    then ‖∇L(θ*)‖ and the Hessian index in float64 — dense (exact) for at most ``exact_limit``
    parameters, else Lanczos at both ends (seeded by ``seed``). ``grad_tol``: the largest ‖∇L‖ of a
    critical point. ``center``/``directions``: the slice's basis; read back from the surface's store
    (:func:`lossatlas.open_directions`) when the surface was made with ``store=``. ``boundary``: also
    count points on the grid's edge (minimal among their existing neighbours).

    See the module notes. Reference: the check follows the warning of Li et al. 2018
    (arXiv:1712.09913) that a random slice's minima need not be minima of the loss.

    >>> import numpy as np, xarray as xr
    >>> x = np.linspace(-2, 2, 9)
    >>> ds = xr.Dataset({"loss": (("x",), (x ** 2 - 1) ** 2)}, coords={"x": x})
    >>> m = local_minima(ds)                       # no problem given: slice minima only
    >>> [mm.coords for mm in m], m.count_half
    ([(-1.0,), (1.0,)], 2)
    """
    values, axes, dims = C.check_surface(surface)
    C.check_flag("check", check)
    C.check_flag("refine", refine)
    C.check_flag("boundary", boundary)
    grad_tol = C.check_number("grad_tol", grad_tol, minimum=0.0)
    exact_limit = C.check_int("exact_limit", exact_limit, minimum=0)
    max_minima = C.check_int("max_minima", max_minima)

    seed = check_seed(seed)
    if problem is not None and not isinstance(problem, Problem):
        raise bad_type("problem", "a lossatlas.Problem or None", problem)
    found = strict_minima(values, boundary=boundary)
    half = C.half_grid(values)
    count_half = len(strict_minima(half, boundary=boundary)) if min(half.shape) >= 3 else 0
    notes: list[str] = []
    if len(found) > max_minima:
        notes.append(f"{len(found)} slice minima; only the lowest {max_minima} were checked")
    do_check = check and problem is not None
    basis = None
    if do_check:
        center, dirs = C.basis(surface, problem, center, directions)
        if len(dirs) != len(dims):
            raise C.bad_value("directions", f"{len(dims)} direction(s), one per dimension of the surface",
                              f"{len(dirs)}")
        basis = (center, dirs)
    steps = [float(np.diff(a).mean()) for a in axes]
    p64 = _float64(problem) if basis is not None and found else None  # one float64 variant for every check
    out = []
    for rank, ix in enumerate(found):
        coords = tuple(float(a[i]) for a, i in zip(axes, ix))
        if basis is None or rank >= max_minima:
            out.append(SliceMinimum(coords, ix, float(values[ix])))
            continue
        out.append(_check_point(p64, basis[0], basis[1], coords, ix, float(values[ix]), steps, refine=refine,
                                grad_tol=grad_tol, exact_limit=exact_limit, seed=seed))
    return LocalMinima(tuple(out), tuple(values.shape), count_half, boundary, grad_tol, do_check, tuple(notes))


def _float64(problem: Problem) -> Problem:
    return problem if problem.dtype == torch.float64 else problem.with_dtype(torch.float64)


def _check_point(p64: Problem, center, dirs: Sequence[Mapping], coords, ix, loss: float, steps, *, refine: bool,
                 grad_tol: float, exact_limit: int, seed: int) -> SliceMinimum:
    """Place one slice minimum in parameter space and classify it (``p64``: the float64 problem)."""
    c64 = P.to(center, dtype=torch.float64)
    d64 = [P.to(d, dtype=torch.float64) for d in dirs]
    a = np.asarray(coords, dtype=np.float64)
    theta = P.lincomb(c64, d64, [float(v) for v in a])
    D = torch.stack([P.flatten(d) for d in d64], dim=1)  # n × k
    if refine:
        lo, hi = a - np.abs(steps), a + np.abs(steps)
        for _ in range(8):
            g = P.flatten(p64.grad(theta))
            op = hessian_operator(p64, theta, dtype=torch.float64)
            HD = torch.stack([op.mv(D[:, j]) for j in range(D.shape[1])], dim=1)
            A = (D.T @ HD).cpu().numpy()
            A = 0.5 * (A + A.T)
            b = (D.T @ g).cpu().numpy()
            if not np.all(np.linalg.eigvalsh(A) > 0):
                break  # the slice is not locally convex here: no Newton step
            s = -np.linalg.solve(A, b)
            new = np.clip(a + s, lo, hi)
            a = new
            theta = P.lincomb(c64, d64, [float(v) for v in a])
            if np.all(np.abs(s) <= 1e-13 * np.maximum(1.0, np.abs(a))):
                break
    g = P.flatten(p64.grad(theta))
    gram = D.T @ D
    in_slice = D @ torch.linalg.solve(gram, D.T @ g)
    grad_norm = float(torch.linalg.vector_norm(g))
    off = float(torch.linalg.vector_norm(g - in_slice))
    point_loss = p64.loss(theta)
    n = int(D.shape[0])
    if n <= exact_limit:
        op = hessian_operator(p64, theta, dtype=torch.float64)
        H = op.dense()
        asym = float((H - H.T).abs().max())
        lam = torch.linalg.eigvalsh(0.5 * (H + H.T)).cpu().numpy()
        scale = float(np.abs(lam).max()) if lam.size else 0.0
        tau = zero_band(torch.float64, scale, asym, n, op.product_error)
        index = int((lam < -tau).sum())
        zeros = int((np.abs(lam) <= tau).sum())
        lmin, lmax, err, exact = float(lam.min()), float(lam.max()), tau, True
    else:
        eig = eigenvalues(p64, theta, k=1, which="both", dtype=torch.float64, seed=seed, progress=False)
        lmin, lmax = float(eig.values[-1]), float(eig.values[0])
        err, tau = float(eig.errors[-1]), float(eig.zero_tol)
        zeros, exact = None, False
        if bool(eig.negative[-1]):
            index = 1
        elif bool(eig.certified[-1]) and lmin - err >= -tau:
            index = 0
        else:
            index = None
    if index is None:
        kind = "unresolved"
    elif grad_norm > grad_tol:
        kind = "not critical"
    else:
        kind = "minimum" if index == 0 else "saddle"
    return SliceMinimum(coords, ix, loss, tuple(float(v) for v in a), point_loss, grad_norm, off, index, exact, zeros,
                        lmin, lmax, err, tau, kind)
