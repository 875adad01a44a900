"""Curvature of the loss: Hessian eigenvalues at both ends, trace, spectral density, |λmin/λmax| maps.

A C² loss is convex only if its Hessian is positive semi-definite at every point, so one converged
negative eigenvalue proves non-convexity; a random 2-D slice only shows the *average* curvature
along random directions (tr H / n), so saddles can look like minima unless one looks along Hessian
eigenvectors (:func:`lossatlas.directions.hessian`).

>>> import torch, lossatlas
>>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
>>> problem = lossatlas.Problem(torch.nn.Linear(1, 1), torch.nn.MSELoss(), (x, 3 * x))
>>> eig = lossatlas.curvature.eigenvalues(problem, k=2, dtype=torch.float64, progress=False)
>>> eig.values.round(4).tolist(), eig.all_converged   # 2·mean(x²) and 2: a convex quadratic
([2.0, 0.8571], True)
"""

from .density import density
from .eigen import eigenvalues
from .operators import CurvatureOperator, ggn_operator, hessian_operator
from .ratio import ratio_map
from .results import Density, Eigen, Estimate
from .trace import trace

__all__ = ["eigenvalues", "trace", "density", "ratio_map", "hessian_operator", "ggn_operator",
           "CurvatureOperator", "Eigen", "Estimate", "Density"]
