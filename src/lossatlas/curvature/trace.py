"""The trace of the Hessian (or GGN) from matrix-vector products, with a standard error.

* Hutchinson (1989): tr A = E[zᵀ A z] for Rademacher z; the estimate is the mean over m probes and
  its standard error the sample standard deviation over √m.
* Hutch++ (Meyer, Musco, Musco & Woodruff 2021): with m products split in thirds, Q = orth(A S)
  for random S, then tr A = tr(Qᵀ A Q) + tr((I − QQᵀ) A (I − QQᵀ)); the first term is exact, the
  second is Hutchinson's on the deflated matrix, which is small when A has a few large
  eigenvalues (as Hessians of trained networks do). The standard error is that of the second term
  (conditional on Q).

Per-layer traces tr A_ll come from the same products: for a probe z, ⟨P_l z, A z⟩ is an unbiased
estimate of tr A_ll (P_l keeps layer l's coordinates), and for Hutch++ tr(P_l A QQᵀ) = Σⱼ ⟨P_l qⱼ, A qⱼ⟩.
The estimate is made with a fixed number of probes: it never stops on a moving mean.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ..errors import EvaluationError, bad_value, public, renamed
from ..progress import progress_bar
from . import _common as C
from .operators import CurvatureOperator, as_operator
from .results import Estimate, _mean_estimate

__all__ = ["trace", "METHODS"]

METHODS = ("hutch++", "hutchinson")
DEFAULT_PROBES = 99
BLOCK = 16  # products per vectorised backward pass


@public("curvature.trace")
@renamed(theta="center")
def trace(problem, center: Mapping[str, Tensor] | None = None, *, method: str = "hutch++",
          probes: int = DEFAULT_PROBES, seed: int = 0, params=None, dtype: torch.dtype | None = None,
          curvature: str = "hessian", progress: bool = True) -> Estimate:
    """Estimate tr H (``curvature="ggn"``: tr G) at ``center`` with ``probes`` matrix-vector products.

    ``method``: ``"hutch++"`` (default; ``probes`` ≥ 3, split in thirds) or ``"hutchinson"``
    (``probes`` ≥ 2). Returns an :class:`Estimate` whose ``layers`` maps each layer (module) to
    its own trace estimate. ``params``, ``dtype``: as :func:`hessian_operator`; ``problem`` may be
    a :class:`CurvatureOperator`. When the products cover the whole space (n ≤ probes/3 for
    Hutch++) the result is exact, with standard error 0. The result records how products were
    computed (``product_method``) and ``notes``; non-finite products raise
    :class:`~lossatlas.errors.EvaluationError`.

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1), torch.nn.MSELoss(), (x, 3 * x))
    >>> t = lossatlas.curvature.trace(problem, dtype=torch.float64, progress=False)
    >>> round(t.value, 6), t.stderr                    # 2·mean(x²) + 2
    (2.857143, 0.0)
    """
    if method not in METHODS:
        raise bad_value("method", f"one of {METHODS}", method)
    probes = C.check_int("probes", probes, minimum=3 if method == "hutch++" else 2)
    seed = C.check_seed(seed)
    C.check_flag("progress", progress)
    op = as_operator(problem, center, curvature=curvature, params=params, dtype=dtype)
    start = op.products
    with progress_bar(probes, f"trace ({method})", enabled=progress, unit="products") as advance:
        product = _blocked(op, advance)
        if method == "hutchinson":
            exact, samples = None, _hutchinson(op, product, probes, seed)
        else:
            exact, samples = _hutchpp(op, product, probes, seed)
    for part in (exact, samples):
        if part is not None and not np.all(np.isfinite(part)):
            raise EvaluationError(f"curvature.trace(): the curvature products are not finite at θ (NaN or Inf in the loss or "
                                  "its derivatives); there is no trace to estimate")
    est = _assemble(op, exact, samples, method, op.products - start)
    notes = tuple(op.method_notes)
    if not op.exact:
        notes += (f"products by finite differences: each may be off by about {op.product_error:.2g} (per unit "
                  "vector), not included in the standard error",)
    return Estimate(est.value, est.stderr, est.samples, est.method, est.products, est.layers,
                    product_method=op.method, notes=notes)


def _blocked(op: CurvatureOperator, advance):
    """A · V for a tall V, BLOCK columns per vectorised backward pass, reported to the progress bar."""
    def product(vs: Tensor) -> Tensor:
        out = []
        for s in range(0, vs.shape[1], BLOCK):
            block = vs[:, s:s + BLOCK]
            out.append(op.mm(block).to(torch.float64))
            advance(block.shape[1])
        return torch.cat(out, dim=1)
    return product


def _per_layer(op: CurvatureOperator, a: Tensor, b: Tensor) -> np.ndarray:
    """(layers, columns): Σ over each layer's coordinates of a ⊙ b, column by column."""
    rows = []
    for slices in op.layer_slices().values():
        rows.append(sum((a[s:e] * b[s:e]).sum(dim=0) for s, e in slices))
    return torch.stack(rows).cpu().numpy()


def _hutchinson(op: CurvatureOperator, product, probes: int, seed: int) -> np.ndarray:
    z = C.rademacher(op.shape[0], probes, seed, device=op.device)
    return _per_layer(op, z, product(z))


def _hutchpp(op: CurvatureOperator, product, probes: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    n = op.shape[0]
    sketch = probes // 3
    if n <= sketch:  # the products span the whole space: exact trace
        eye = torch.eye(n, dtype=torch.float64, device=op.device)
        return _per_layer(op, eye, product(eye)).sum(axis=1), None
    s = C.rademacher(n, sketch, seed, stream=1, device=op.device)
    q, _ = torch.linalg.qr(product(s))
    exact = _per_layer(op, q, product(q)).sum(axis=1)
    g = C.rademacher(n, probes - 2 * sketch, seed, stream=2, device=op.device)
    w = g - q @ (q.T @ g)
    return exact, _per_layer(op, w, product(w))


def _assemble(op: CurvatureOperator, exact: np.ndarray | None, samples: np.ndarray | None, method: str,
              products: int) -> Estimate:
    names = list(op.layer_slices())
    layers = {}
    for i, name in enumerate(names):
        layers[name] = _layer_estimate(exact, samples, i, method, products)
    total_samples = samples.sum(axis=0) if samples is not None else None
    base = float(exact.sum()) if exact is not None else 0.0
    if total_samples is None:
        return Estimate(base, 0.0, samples=0, method=method, products=products, layers=layers)
    est = _mean_estimate(total_samples, method, products)
    return Estimate(base + est.value, est.stderr, samples=est.samples, method=method, products=products,
                    layers=layers)


def _layer_estimate(exact, samples, i: int, method: str, products: int) -> Estimate:
    base = float(exact[i]) if exact is not None else 0.0
    if samples is None:
        return Estimate(base, 0.0, method=method, products=products)
    est = _mean_estimate(samples[i], method, products)
    return Estimate(base + est.value, est.stderr, samples=est.samples, method=method, products=products)
