"""Curvature of each parameter block on its own: trace ± stderr and λmax of the restricted Hessian.

A *block* b is a group of parameters — by default each module that owns parameters (``"net.0"``
holds ``net.0.weight`` and ``net.0.bias``), or any named groups of parameter selections. Its
restricted Hessian ``H_bb`` is the diagonal block of the full Hessian: the curvature of the loss
when only block b moves and every other parameter is held at θ. For each block:

* ``trace``: tr H_bb ± one standard error, by :func:`lossatlas.curvature.trace` on the restricted
  operator (Hutchinson by default, or Hutch++); a block with at most ``probes`` coordinates gets
  its exact trace Σᵢ eᵢᵀ H_bb eᵢ instead (``method="exact"``, stderr 0) from no more products;
* ``lambda_max``: the largest eigenvalue of H_bb with its error bound and convergence flag, by
  :func:`lossatlas.curvature.eigenvalues` (``which="largest"``, certified extremal).

Each block costs ``probes`` products for the trace and a Lanczos run for λmax, each product a full
forward and backward pass (the other blocks are held, not skipped). Products are computed by the
method found for the first block (:data:`~lossatlas.curvature.operators.PRODUCT_METHODS`, recorded
in the result as ``product_method``) so that every row of the table is computed the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from .._ncattrs import make_safe
from ..errors import EvaluationError, bad_type, bad_value, public, renamed
from . import _common as C
from ..params.selection import layers, select
from .eigen import DEFAULT_TOL, solve
from .operators import CurvatureOperator, PRODUCT_METHODS, _make
from .results import Estimate
from .trace import METHODS as TRACE_METHODS
from .trace import trace

__all__ = ["per_layer", "LayerCurvature", "BlockCurvature"]

DEFAULT_PROBES = 30


@dataclass(frozen=True)
class BlockCurvature:
    """One block's curvature: ``trace`` (an :class:`Estimate` of tr H_bb) and ``lambda_max`` of H_bb with
    ``lambda_max_error`` (|value − λmax(H_bb)| ≤ error when ``converged``: residual bound plus the zero
    band of the products) and ``converged`` (converged and certified extremal). ``params``: the
    parameter names of the block, ``size`` its number of coordinates, ``products`` the products spent."""

    name: str
    params: tuple[str, ...]
    size: int
    trace: Estimate
    lambda_max: float
    lambda_max_error: float
    converged: bool
    products: int

    def __repr__(self) -> str:
        flag = "converged" if self.converged else "NOT converged"
        return (f"BlockCurvature({self.name!r}, size={self.size}, trace={self.trace}, "
                f"lambda_max={self.lambda_max:.6g} ± {self.lambda_max_error:.1e} ({flag}))")


@dataclass(frozen=True)
class LayerCurvature:
    """Per-block curvature (see :mod:`lossatlas.curvature.per_layer`): ``blocks`` in the problem's
    parameter order; ``result["net.0"]`` picks one block by name, iteration goes over the blocks.
    ``product_method`` says how the products were computed, ``exact`` whether they are exact up to
    rounding, ``notes`` what else to know (a fallback product method, unconverged blocks)."""

    blocks: tuple[BlockCurvature, ...]
    kind: str = "hessian"
    trace_method: str = "hutchinson"
    probes: int = DEFAULT_PROBES
    tol: float = DEFAULT_TOL
    seed: int = 0
    dtype: str = ""
    product_method: str = "double-backward"
    exact: bool = True
    notes: tuple[str, ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[BlockCurvature]:
        return iter(self.blocks)

    def __getitem__(self, name: str) -> BlockCurvature:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"no block {name!r}; blocks: {[b.name for b in self.blocks]}")

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    @property
    def all_converged(self) -> bool:
        return bool(self.blocks) and all(b.converged for b in self.blocks)

    def summary(self) -> list[dict[str, Any]]:
        """One plain dict per block (for tables and JSON)."""
        return [{"block": b.name, "size": b.size, "trace": b.trace.value, "trace_stderr": b.trace.stderr,
                 "lambda_max": b.lambda_max, "lambda_max_error": b.lambda_max_error, "converged": b.converged,
                 "products": b.products} for b in self.blocks]

    def to_dataset(self):
        """An ``xarray.Dataset`` over a ``block`` coordinate (``trace``, ``trace_stderr``, ``lambda_max``,
        ``lambda_max_error``, ``converged``, ``size``) with attrs recording how it was computed
        (``product_method``, ``exact``, ``kind``, ``trace_method``, ``probes``, ``tol``, ``seed``)."""
        rows = self.summary()
        data = {key: ("block", np.array([r[key] for r in rows]))
                for key in ("trace", "trace_stderr", "lambda_max", "lambda_max_error", "size", "products")}
        data["converged"] = ("block", np.array([int(r["converged"]) for r in rows]))

        return make_safe(xr.Dataset(data, coords={"block": [r["block"] for r in rows]},
                          attrs={"kind": self.kind, "product_method": self.product_method, "exact": int(self.exact),
                                 "trace_method": self.trace_method, "probes": self.probes, "tol": self.tol,
                                 "seed": self.seed, "dtype": self.dtype, "notes": "\n".join(self.notes)}))

    def __repr__(self) -> str:
        rows = "\n".join(f"  {b!r}," for b in self.blocks)
        return (f"LayerCurvature(kind={self.kind!r}, product_method={self.product_method!r}, exact={self.exact}, "
                f"trace_method={self.trace_method!r}, probes={self.probes}, blocks=[\n{rows}\n])")


def _blocks(problem, names: tuple[str, ...], blocks: Any) -> dict[str, tuple[str, ...]]:
    if blocks is None:
        sizes = {n: 1 for n in names}
        return {layer: tuple(names[s] for s, _ in slices) for layer, slices in layers(names, sizes).items()}
    if not isinstance(blocks, Mapping) or not blocks:
        raise bad_type("blocks", "None (one block per module) or a non-empty dict name -> parameter selection",
                       blocks)
    out: dict[str, tuple[str, ...]] = {}
    for key, selection in blocks.items():
        if not isinstance(key, str):
            raise bad_type("blocks", "a dict with string keys (block names)", key)
        chosen = select(problem, selection)
        picked = tuple(n for n in chosen if n in names)
        if not picked:
            raise bad_value(f"blocks[{key!r}]", "a selection of at least one of the selected parameters",
                            selection)
        out[key] = picked
    return out


@public("curvature.per_layer")
@renamed(theta="center")
def per_layer(problem, center: Mapping[str, Tensor] | None = None, *, blocks: Mapping[str, Any] | None = None,
              probes: int = DEFAULT_PROBES, trace_method: str = "hutchinson", tol: float = DEFAULT_TOL,
              seed: int = 0, max_products: int | None = 1000, params=None, dtype: torch.dtype | None = None,
              curvature: str = "hessian", method: str | None = None, progress: bool = True) -> LayerCurvature:
    """Trace ± stderr and λmax of each block's restricted Hessian H_bb (``curvature="ggn"``: of the GGN).

    ``blocks``: ``None`` (one block per module owning selected parameters, in the problem's order)
    or a dict ``{name: selection}`` with selections as ``params`` of :func:`hessian_operator`.
    ``params``: which parameters to cover (default all). ``probes``: products per block for the
    trace (``trace_method`` ``"hutchinson"`` or ``"hutch++"``). ``tol``, ``max_products``: of the
    λmax Lanczos run of each block (:func:`eigenvalues`). ``method``: the product method
    (default: found automatically at the first block, then used for every block). ``seed``: of the
    probes and start vectors (the same for every block). Returns a :class:`LayerCurvature`.

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1), torch.nn.MSELoss(), (x, 3 * x))
    >>> r = lossatlas.curvature.per_layer(problem, blocks={"w": "weight", "b": "bias"}, dtype=torch.float64,
    ...                                   trace_method="hutch++", progress=False)
    >>> [(b.name, round(b.lambda_max, 4), round(b.trace.value, 4)) for b in r]   # 2·mean(x²) and 2
    [('w', 0.8571, 0.8571), ('b', 2.0, 2.0)]
    """
    if trace_method not in TRACE_METHODS:
        raise bad_value("trace_method", f"one of {TRACE_METHODS}", trace_method)
    probes = C.check_int("probes", probes, minimum=3 if trace_method == "hutch++" else 2)
    tol = C.check_tol(tol)
    seed = C.check_seed(seed)
    max_products = C.check_int("max_products", max_products, allow_none=True)
    C.check_flag("progress", progress)
    if curvature not in ("hessian", "ggn"):
        raise bad_value("curvature", "'hessian' or 'ggn'", curvature)

    if method is not None and method not in PRODUCT_METHODS:
        raise bad_value("method", f"None (automatic) or one of {PRODUCT_METHODS}", method)
    # validates problem, center, dtype, params and (for the GGN) the loss, before any product
    full = _make(curvature, problem, center, params=params, dtype=dtype, retain=False, method=method)
    problem, theta_d, names = full.problem, full.theta, full.names
    groups = _blocks(problem, names, blocks)
    chosen = method
    out: list[BlockCurvature] = []
    notes: list[str] = []
    exact = True
    for name, members in groups.items():
        op = CurvatureOperator(problem, theta_d, members, kind=curvature, method=chosen)
        if op.shape[0] <= probes:  # as few products as probes give the exact trace: e_iᵀ H_bb e_i
            diag = op.mm(torch.eye(op.shape[0], dtype=op.dtype, device=op.device)).diagonal()
            if not bool(torch.isfinite(diag).all()):
                raise EvaluationError(f"curvature.per_layer(): the curvature products of block {name!r} are not finite at θ "
                                      "(NaN or Inf in the loss or its derivatives)")
            tr = Estimate(float(diag.to(torch.float64).sum()), 0.0, 0, "exact", op.shape[0], product_method=op.method)
        else:
            tr = trace(op, method=trace_method, probes=probes, seed=seed, progress=progress)
        chosen = op.method
        eig = solve(op, k=1, which="largest", tol=tol, seed=seed, max_products=max_products, basis=None,
                    progress=progress)
        exact = exact and op.exact
        for note in (*op.method_notes, *eig.notes):
            if note not in notes:
                notes.append(note)
        value = float(eig.values[0])
        error = float(eig.errors[0]) if eig.errors is not None else float("nan")
        ok = bool(eig.certified[0]) and math.isfinite(value)
        out.append(BlockCurvature(name, members, op.shape[0], tr, value, error, ok, op.products))
    bad = [b.name for b in out if not b.converged]
    if bad:
        notes.append(f"λmax not converged (or not certified extremal) for {len(bad)} block(s): {', '.join(bad[:5])}"
                     + ("…" if len(bad) > 5 else "") + "; raise max_products or loosen tol")
    if not exact:
        notes.append("products by finite differences: λmax errors include the estimated product error, the trace "
                     "standard errors do not")
    return LayerCurvature(tuple(out), kind=curvature, trace_method=trace_method, probes=probes, tol=tol, seed=seed,
                          dtype=str(problem.dtype).replace("torch.", ""), product_method=str(chosen), exact=exact,
                          notes=tuple(notes))
