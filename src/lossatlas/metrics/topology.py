"""Topology of a sampled slice: the merge tree (0-dimensional persistence) of its sublevel sets.

As the level c rises, the sublevel set {L ≤ c} gains a component at each local minimum (its
*birth*) and two components merge at a saddle level (the *death* of the younger one: elder rule).
A basin's persistence, death − birth, is the barrier it must climb to reach a deeper basin; the
deepest basin never dies (death = ∞). Grid points are connected to their 3ᵈ − 1 neighbours
(diagonals included), the same neighbourhood as :func:`lossatlas.metrics.local_minima`, so the
basins of persistence > 0 are exactly its strict minima with ``boundary=True`` (ties aside): a basin
whose minimum lies on the grid's edge counts here, and may be the slice's truncation, not a basin.

Computed with gudhi's ``CubicalComplex`` (top-dimensional cells = grid points) when gudhi is
installed, else with a union-find over the grid; the two agree (tests/test_metrics.py).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, bad_value, public
from . import _common as C

__all__ = ["sublevel_persistence", "Topology", "Basin", "BACKENDS"]

BACKENDS = ("auto", "gudhi", "union-find")


@dataclass(frozen=True)
class Basin:
    """One basin of the sublevel-set filtration: born at ``birth`` (its minimum, at slice coordinates
    ``at``), merged into an older basin at level ``death`` (∞ for the deepest)."""

    birth: float
    death: float
    at: tuple[float, ...]

    @property
    def persistence(self) -> float:
        return self.death - self.birth

    def __repr__(self) -> str:
        at = ", ".join(f"{c:.4g}" for c in self.at)
        return f"Basin(({at}): {self.birth:.6g} → {self.death:.6g}, persistence {self.persistence:.4g})"


@dataclass(frozen=True)
class Topology:
    """The 0-dimensional persistence of a slice's sublevel sets (its merge tree's pairs).

    ``basins``: every pair, most persistent first; ``count``: basins with persistence > ``tau``
    (the deepest included); ``count_half``: the same on the half-resolution grid (the difference is
    the resolution error); ``backend``: ``"gudhi"`` or ``"union-find"``.
    """

    basins: tuple[Basin, ...]
    tau: float
    count: int
    count_half: int
    backend: str

    @property
    def pairs(self) -> list[tuple[float, float]]:
        """(birth, death) of every basin."""
        return [(b.birth, b.death) for b in self.basins]

    @property
    def resolution_error(self) -> int:
        return abs(self.count - self.count_half)

    def __repr__(self) -> str:
        top = ", ".join(f"{b.persistence:.4g}" for b in self.basins[:4])
        more = ", …" if len(self.basins) > 4 else ""
        return (f"Topology({self.count} basin(s) with persistence > {self.tau:.3g} (half resolution: "
                f"{self.count_half}); persistence [{top}{more}]; {self.backend})")


def _neighbour_offsets(ndim: int) -> list[tuple[int, ...]]:
    return [o for o in itertools.product((-1, 0, 1), repeat=ndim) if any(o)]


def union_find_pairs(values: np.ndarray) -> list[tuple[float, float, tuple[int, ...]]]:
    """(birth, death, index of the minimum) of every 0-dim pair, by union-find with the elder rule
    (points in ascending order, ties by flat index)."""
    shape = values.shape
    flat = values.ravel()
    order = np.argsort(flat, kind="stable")
    parent = np.full(flat.size, -1, dtype=np.int64)
    birth_of: dict[int, int] = {}  # root -> flat index of its minimum
    offsets = _neighbour_offsets(values.ndim)
    pairs = []

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    for v in order:
        v = int(v)
        parent[v] = v
        birth_of[v] = v
        here = np.unravel_index(v, shape)
        roots = set()
        for o in offsets:
            q = tuple(h + d for h, d in zip(here, o))
            if all(0 <= c < s for c, s in zip(q, shape)):
                qi = int(np.ravel_multi_index(q, shape))
                if parent[qi] >= 0:
                    roots.add(find(qi))
        if not roots:
            continue
        roots.add(v)
        elder = min(roots, key=lambda r: (flat[birth_of[r]], birth_of[r]))
        for r in roots:
            if r == elder:
                continue
            if r != v and flat[birth_of[r]] < flat[v]:  # zero-length pairs (v itself, plateaus) are not recorded
                pairs.append((float(flat[birth_of[r]]), float(flat[v]), np.unravel_index(birth_of[r], shape)))
            parent[r] = elder
    roots = {find(i) for i in range(flat.size)}
    for r in roots:
        pairs.append((float(flat[birth_of[r]]), math.inf, np.unravel_index(birth_of[r], shape)))
    return [(b, d, tuple(int(i) for i in ix)) for b, d, ix in pairs]


def gudhi_pairs(values: np.ndarray) -> list[tuple[float, float, tuple[int, ...]]]:
    """The same pairs from gudhi's CubicalComplex (top-dimensional cells = grid points)."""
    import gudhi

    cc = gudhi.CubicalComplex(top_dimensional_cells=values)
    cc.compute_persistence()
    regular, essential = cc.cofaces_of_persistence_pairs()
    flat = values.ravel(order="F")
    out = []
    if len(regular) and len(regular[0]):
        for b, d in np.asarray(regular[0]).reshape(-1, 2):
            out.append((float(flat[b]), float(flat[d]), np.unravel_index(int(b), values.shape, order="F")))
    if len(essential) and len(essential[0]):
        for b in np.asarray(essential[0]).reshape(-1):
            out.append((float(flat[b]), math.inf, np.unravel_index(int(b), values.shape, order="F")))
    return [(b, d, tuple(int(i) for i in ix)) for b, d, ix in out if d > b or d == math.inf]


def _has_gudhi() -> bool:
    try:
        import gudhi  # noqa: F401
    except ImportError:
        return False
    return True


@public("metrics.sublevel_persistence")
def sublevel_persistence(surface: Any, *, tau: float | None = None, backend: str = "auto") -> Topology:
    """The basins of a 1D or 2D slice and their persistence (0-dim persistent homology of the
    sublevel sets {L ≤ c}, Edelsbrunner, Letscher & Zomorodian 2002), counting those with
    persistence > ``tau``.

    persistence(basin) = (level at which it merges into a deeper basin) − (its minimum); the deepest
    basin has persistence ∞. ``tau`` (default: the rounding band 16·u·max|L|, u the unit roundoff of
    the surface's dtype) separates basins from noise. ``backend``: ``"gudhi"``
    (``gudhi.CubicalComplex``), ``"union-find"``, or ``"auto"`` (gudhi if installed). The count on
    the half-resolution grid is reported beside it.

    >>> import numpy as np, xarray as xr
    >>> x, y = np.linspace(-2, 2, 21), np.linspace(-1, 1, 11)
    >>> X, Y = np.meshgrid(x, y, indexing="ij")
    >>> ds = xr.Dataset({"loss": (("x", "y"), (X ** 2 - 1) ** 2 + Y ** 2)}, coords={"x": x, "y": y})
    >>> topo = sublevel_persistence(ds)               # a double well: two basins, barrier 1
    >>> topo.count, [round(b.persistence, 6) for b in topo.basins]
    (2, [inf, 1.0])
    """
    func = "metrics.sublevel_persistence"
    values, axes, dims = C.check_surface(surface)
    if backend not in BACKENDS:
        raise bad_value("backend", f"one of {BACKENDS}", backend)
    tau = C.check_number("tau", tau, minimum=0.0, allow_none=True)
    if tau is None:
        tau = 16.0 * C.roundoff(surface) * float(np.max(np.abs(values)))
    if backend == "auto":
        backend = "gudhi" if _has_gudhi() else "union-find"
    if backend == "gudhi" and not _has_gudhi():
        raise MissingDependencyError(f"{func}(): backend='gudhi' needs gudhi (pip install gudhi); "
                                     "use backend='union-find'")
    compute = gudhi_pairs if backend == "gudhi" else union_find_pairs
    raw = compute(values)
    basins = sorted((Basin(b, d, tuple(float(a[i]) for a, i in zip(axes, ix))) for b, d, ix in raw),
                    key=lambda b: (-b.persistence, b.birth, b.at))
    count = sum(1 for b in basins if b.persistence > tau)
    half = C.half_grid(values)
    count_half = sum(1 for b, d, _ in compute(half) if d - b > tau)
    return Topology(tuple(basins), tau, count, count_half, backend)
