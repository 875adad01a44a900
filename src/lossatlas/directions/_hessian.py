"""Directions along Hessian eigenvectors (Böttcher & Wheeler, "Visualising the loss landscape along
Hessian eigenvectors", 2022): a random 2-D slice shows curvature averaged over random directions,
tr H / n, under which a saddle can look like a minimum; the plane of the eigenvectors of λmax and
λmin shows the steepest upward and the most negative curvature at θ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor

from .. import params as P
from ..curvature import _common as C
from ..curvature.eigen import DEFAULT_TOL, eigenvalues
from ..curvature.operators import as_operator
from ..errors import EvaluationError, bad_value, public, renamed
from ._base import Directions
from ._registry import DirectionKind, register

__all__ = ["hessian", "WHICH_DIRECTIONS"]

WHICH_DIRECTIONS = ("extremes", "top")
NORMS = ("unit", "model")


@public("directions.hessian")
@renamed(theta="center")
def hessian(problem, center: Mapping[str, Tensor] | None = None, *, n: int = 2, which: str = "extremes",
            seed: int = 0, tol: float = DEFAULT_TOL, max_products: int | None = 1000,
            norm: str = "unit", params=None, progress: bool = False) -> Directions:
    """``n`` Hessian eigenvectors at ``center`` as :class:`~lossatlas.Directions`.

    ``which="extremes"``: the eigenvectors of the ⌈n/2⌉ largest and ⌊n/2⌋ smallest eigenvalues (for
    n = 2: λmax and λmin); ``"top"``: the n largest. ``norm="unit"``: unit vectors (coordinates are
    distances in parameter space); ``"model"``: each rescaled to ‖θ‖ over the selected parameters, the
    scale of filter-normalised random directions. ``params`` restricts the eigenvectors to some
    parameters (see :func:`lossatlas.curvature.hessian_operator`); other entries are zero. The spec records the kind,
    eigenvalues, residuals, convergence, tolerance and seed; labels read
    ``"Hessian eigenvector (λmax = 9.15)"``.

    >>> import torch, lossatlas
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> x = torch.randn(64, 2)
    >>> problem = lossatlas.Problem(net, torch.nn.MSELoss(), (x, x[:, :1] * x[:, 1:]))
    >>> d = lossatlas.directions.hessian(problem, n=2, seed=0)
    >>> d.spec["kind"], len(d), d.labels[1].startswith("Hessian eigenvector (λmin = -")
    ('hessian', 2, True)
    """
    n = C.check_int("n", n)
    if which not in WHICH_DIRECTIONS:
        raise bad_value("which", f"one of {WHICH_DIRECTIONS}", which)
    if norm not in NORMS:
        raise bad_value("norm", f"one of {NORMS}", norm)
    op = as_operator(problem, center, params=params)
    if which == "top" or n == 1:
        eig = eigenvalues(op, k=n, which="largest", tol=tol, seed=seed, max_products=max_products, progress=progress)
        picks = list(range(n))
        tags = ["λmax" if i == 0 else f"λ{i + 1}" for i in range(n)]
    else:
        top, bottom = (n + 1) // 2, n // 2
        eig = eigenvalues(op, k=top, which="both", tol=tol, seed=seed, max_products=max_products, progress=progress)
        picks = list(range(top)) + [len(eig) - 1 - i for i in range(bottom)]
        tags = (["λmax" if i == 0 else f"λ{i + 1}" for i in range(top)]
                + ["λmin" if i == 0 else f"λmin+{i}" for i in range(bottom)])
    if not np.all(np.isfinite(eig.values)):
        raise EvaluationError(f"directions.hessian(): the Hessian is not finite at θ (NaN or Inf in the loss or its derivatives); "
                              "it has no eigenvectors to use as directions")
    vectors = [eig.vectors[i] for i in picks]
    if norm == "model":
        size = P.norm({k: op.theta[k] for k in op.names})
        vectors = [P.scale(v, size) for v in vectors]
    values = [float(eig.values[i]) for i in picks]
    spec = {
        "kind": "hessian",
        "n": n,
        "which": which,
        "norm": norm,
        "eigenvalues": values,
        "residuals": [float(eig.residuals[i]) for i in picks],
        "converged": [bool(eig.converged[i]) for i in picks],
        "extremal_certified": [bool(eig.extremal_certified[i]) for i in picks],
        "product_method": eig.product_method,
        "tol": tol,
        "scale": eig.scale,
        "seed": seed,
        "params": list(op.names),
        "products": eig.products,
        "center": P.fingerprint(op.theta),
        "curvature": op.kind,
        "labels": [f"Hessian eigenvector ({tag} = {value:.3g})" for tag, value in zip(tags, values)],
    }
    return Directions(vectors, spec)


def _from_cli(target: Any, *, dims: int, norm: str | None, ignore: str | None, seed: int, arg: str) -> Directions:
    return hessian(target.problem, target.center, n=dims, seed=seed)


register(DirectionKind("hessian", "Hessian eigenvectors", hessian, needs="problem", cli=_from_cli,
                       cli_usage="hessian", cli_help="eigenvectors of λmax and λmin", cli_options=("--seed",)))
