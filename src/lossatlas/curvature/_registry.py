"""The curvature estimators: one small record per matrix and per quantity, which ``lossatlas hessian``
and the docs read.

A *matrix* record makes a curvature operator (Hessian, GGN, empirical Fisher, Fisher, KFAC); a
*quantity* record is an estimator over such an operator (extreme eigenvalues, trace, density,
per-layer blocks). Adding one is one function and one :func:`register` call (the contract tests in
``tests/test_method_registries.py`` iterate over :data:`REGISTRY`). To add an estimator:

1. write the public function (``@public("curvature.<name>")``, ``seed=`` if random, family arguments
   ``(problem, center=None, *, ..., params=, dtype=)`` or an operator as ``problem``);
2. ``register(CurvatureEstimator("<name>", "<label>", function, kind="matrix"|"quantity", ...))``
   — a matrix with ``cli=make(problem, center, *, params, seed)`` is offered by ``lossatlas hessian
   --matrix``; a quantity with ``report=report(op, *, seed, progress) -> str`` is printed by it;
3. export the function in ``lossatlas/curvature/__init__.py`` and add its case to ``CASES`` in
   ``tests/test_method_registries.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._records import add
from ..errors import InvalidArgumentError
from .density import density
from .eigen import eigenvalues
from .matrices import ef_operator, fisher_operator, kfac_operator
from .operators import as_operator, ggn_operator, hessian_operator
from .per_layer import per_layer
from .trace import trace

__all__ = ["CurvatureEstimator", "REGISTRY", "register", "unregister", "matrices", "quantities", "cli_matrices",
           "KINDS"]

KINDS = ("matrix", "quantity")


@dataclass(frozen=True)
class CurvatureEstimator:
    """A curvature matrix or a quantity estimated from one.

    ``name``: the word ``--matrix`` (matrices) takes, or the quantity's name. ``label``: how tables,
    titles and docs call it (``"Hessian"``, ``"GGN"``, ``"trace"``). ``function``: the public function
    (``lossatlas.curvature.<function>``). ``kind``: ``"matrix"`` or ``"quantity"``. ``description``:
    one phrase for help texts and docs. ``cli_options``: the ``lossatlas hessian`` options it reads.
    ``matrices``: for a quantity, the matrix names it accepts (``()``: any curvature operator).
    ``cli``: for a matrix, ``make(problem, center, *, params, seed)`` giving the operator for ``lossatlas
    hessian --matrix NAME`` (``None``: not offered there). ``report``: for a quantity the command does not
    print itself, ``report(op, *, seed, progress) -> str``, one line it prints.
    """

    name: str
    label: str
    function: Callable[..., Any]
    kind: str = "quantity"
    description: str = ""
    cli_options: tuple[str, ...] = ()
    matrices: tuple[str, ...] = ()
    cli: Callable[..., Any] | None = None
    report: Callable[..., str] | None = None

    @property
    def func(self) -> str:
        """The public name its error messages use."""
        return f"curvature.{self.function.__name__}"

    def accepts(self, matrix: str) -> bool:
        """Whether this quantity can be estimated from ``matrix``."""
        return not self.matrices or matrix in self.matrices


#: Curvature matrices and quantities by name, in registration order.
REGISTRY: dict[str, CurvatureEstimator] = {}


def register(estimator: CurvatureEstimator, *, replace: bool = False) -> CurvatureEstimator:
    """Add an estimator to :data:`REGISTRY` (an existing name is refused unless ``replace=True``)."""
    if isinstance(estimator, CurvatureEstimator) and estimator.kind not in KINDS:
        raise InvalidArgumentError(f"curvature.register(): argument 'estimator' must be of a kind in {KINDS}; "
                                   f"received {estimator.kind!r}")
    return add(REGISTRY, estimator, cls=CurvatureEstimator, func="curvature.register", arg="estimator",
               expected="a CurvatureEstimator", what="a curvature estimator", replace=replace)


def unregister(name: str) -> None:
    """Remove an estimator (for tests and plug-ins that registered one for a while)."""
    REGISTRY.pop(name, None)


def matrices() -> list[CurvatureEstimator]:
    """The matrix records, in registration order."""
    return [r for r in REGISTRY.values() if r.kind == "matrix"]


def quantities() -> list[CurvatureEstimator]:
    """The quantity records, in registration order."""
    return [r for r in REGISTRY.values() if r.kind == "quantity"]


def cli_matrices() -> list[CurvatureEstimator]:
    """The matrices ``lossatlas hessian --matrix`` accepts, in registration order."""
    return [r for r in matrices() if r.cli is not None]


# -- the built-in matrices and quantities --------------------------------------------------------------
def _family(kind: str) -> Callable[..., Any]:
    def make(problem, theta, *, params=None, seed=0):
        return as_operator(problem, theta, func="hessian", curvature=kind, params=params)
    return make


register(CurvatureEstimator("hessian", "Hessian", hessian_operator, kind="matrix",
                            description="the Hessian ∇²L (exact products by double backward)", cli=_family("hessian")))
register(CurvatureEstimator("ggn", "GGN", ggn_operator, kind="matrix",
                            description="the generalised Gauss–Newton JᵀHₗJ (positive semi-definite for a convex "
                                        "loss)", cli=_family("ggn")))
register(CurvatureEstimator("ef", "empirical Fisher", ef_operator, kind="matrix",
                            description="the empirical Fisher (1/N) Σ ∇ℓᵢ∇ℓᵢᵀ (needs a loss(outputs, targets))",
                            cli=lambda problem, theta, *, params=None, seed=0: ef_operator(problem, theta,
                                                                                        params=params)))
register(CurvatureEstimator("fisher", "Fisher", fisher_operator, kind="matrix",
                            description="the Fisher, labels sampled from the model (--seed; needs a likelihood loss)",
                            cli=lambda problem, theta, *, params=None, seed=0: fisher_operator(
                                problem, theta, params=params, seed=seed)))
register(CurvatureEstimator("kfac", "KFAC", kfac_operator, kind="matrix",
                            description="Kronecker-factored GGN/Fisher of Linear/Conv2d layers (curvlinops); used "
                                        "for damped inverse products, not by lossatlas hessian"))
register(CurvatureEstimator("eigenvalues", "extreme eigenvalues", eigenvalues,
                            description="the k largest and smallest eigenvalues with errors (block Lanczos)",
                            cli_options=("--k", "--tol", "--seed")))
register(CurvatureEstimator("trace", "trace", trace, description="Hutch++ estimate of the trace ± stderr",
                            cli_options=("--trace-probes", "--seed")))
register(CurvatureEstimator("density", "eigenvalue density", density,
                            description="spectral density by stochastic Lanczos quadrature; negative mass brackets",
                            cli_options=("--density-iters", "--density-probes", "--density-plot", "--seed")))
register(CurvatureEstimator("per_layer", "per-layer blocks", per_layer, matrices=("hessian", "ggn"),
                            description="trace ± stderr and λmax of each layer's diagonal block",
                            cli_options=("--per-layer", "--per-layer-probes", "--per-layer-plot", "--seed")))
