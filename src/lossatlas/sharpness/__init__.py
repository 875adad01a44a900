"""Sharpness measures at a point θ, each labelled scale-invariant or not.

* :func:`lambda_max`, :func:`trace` — Hessian curvature (reusing :mod:`lossatlas.curvature`);
* :func:`epsilon_sharpness` — Keskar et al. 2017, worst case over a box of size ε(|θ|+1);
* :func:`sam_sharpness` — Foret et al. 2021, worst case over an L2 ball of radius ρ;
* :func:`adaptive_sharpness` — Kwon et al. 2021 (ASAM), the ball scaled elementwise by |θ|;
* :func:`filter_width` — width of a filter-normalised 1D slice (Li et al. 2018).

Worst-case measures are *lower bounds*: the loss increase at a point actually evaluated inside the
set (the ``witness``), re-checked in float64. Rescaling a ReLU layer by α and the next by 1/α leaves
the function unchanged; the measures with ``scale_invariant=True`` are unchanged by it, the others
are not (Dinh et al. 2017, arXiv:1703.04933).

>>> import torch, lossatlas
>>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
>>> problem = lossatlas.Problem(torch.nn.Linear(1, 1), torch.nn.MSELoss(), (x, 3 * x))
>>> lossatlas.sharpness.lambda_max(problem)        # doctest: +ELLIPSIS
Sharpness(lambda_max: 2 ± ... (estimate), scale_invariant=False)
"""

from ._result import Sharpness
from .measures import adaptive_sharpness, epsilon_sharpness, filter_width, lambda_max, sam_sharpness, trace

__all__ = ["lambda_max", "trace", "epsilon_sharpness", "sam_sharpness", "adaptive_sharpness", "filter_width",
           "Sharpness"]
