"""Curvature of the loss: Hessian eigenvalues at both ends, trace, spectral density, |λmin/λmax| maps.

A C² loss is convex only if its Hessian is positive semi-definite at every point, so one converged
negative eigenvalue proves non-convexity; a random 2-D slice only shows the *average* curvature
along random directions (tr H / n), so saddles can look like minima unless one looks along Hessian
eigenvectors (:func:`lossatlas.directions.hessian`).

Curvature matrices: the Hessian, the GGN, the empirical Fisher, the (sampled) Fisher and KFAC/EKFAC
(:func:`hessian_operator`, :func:`ggn_operator`, :func:`ef_operator`, :func:`fisher_operator`,
:func:`kfac_operator`); their diagonals (:func:`diagonal`), damped inverse products
(:func:`inverse_product`, CG with its residual and iterations, or KFAC) and the influence of training
points on a test loss (:func:`influence`).

>>> import torch, lossatlas
>>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
>>> problem = lossatlas.Problem(torch.nn.Linear(1, 1), torch.nn.MSELoss(), (x, 3 * x))
>>> eig = lossatlas.curvature.eigenvalues(problem, k=2, dtype=torch.float64, progress=False)
>>> eig.values.round(4).tolist(), eig.all_converged   # 2·mean(x²) and 2: a convex quadratic
([2.0, 0.8571], True)
"""

from .along import along_trajectory
from .density import density
from .eigen import eigenvalues
from .influence import Influence, influence
from .matrices import (Diagonal, FisherOperator, KFACOperator, curvature_operator, diagonal, ef_operator,
                       fisher_operator, kfac_operator)
from .operators import CurvatureOperator, ggn_operator, hessian_operator
from .per_layer import BlockCurvature, LayerCurvature, per_layer
from .ratio import ratio_map
from .results import Density, Eigen, Estimate
from .solve import Solve, inverse_product
from .trace import trace

from . import _registry  # noqa: F401,I001  (registers the matrices and quantities lossatlas hessian reads)

__all__ = ["eigenvalues", "along_trajectory", "trace", "density", "ratio_map", "hessian_operator", "ggn_operator",
           "per_layer", "CurvatureOperator", "Eigen", "Estimate", "Density",
           "LayerCurvature", "BlockCurvature",
           "ef_operator", "fisher_operator", "kfac_operator", "curvature_operator", "diagonal", "inverse_product",
           "influence", "FisherOperator", "KFACOperator", "Diagonal", "Solve", "Influence"]
