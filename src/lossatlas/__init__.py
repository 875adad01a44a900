"""lossatlas: map the loss landscapes of neural networks, and prove (or honestly fail to prove)
that they are non-convex.

Quick start::

    import lossatlas
    problem = lossatlas.Problem(model, loss_fn, (inputs, targets))
    d = lossatlas.directions.random(problem, n=2, seed=0)      # filter-normalised (Li et al. 2018)
    ds = lossatlas.surface(problem, None, d, steps=41, span=1.0)  # an xarray.Dataset
"""

from . import convexity, curvature, directions, distributed, examples, export, metrics, params, plot, sharpness, studies
from ._ncattrs import decoded as attrs
from ._version import __version__
from .directions import Directions
from .errors import (DataError, DifferentiationError, DistributedError, EvaluationError, InvalidArgumentError, InvalidTypeError,
                     LossAtlasError, LossFunctionError, MissingDependencyError, ParameterMismatchError,
                     ProvenanceMismatchError, StoreError, StoreLockedError, StoreRepairWarning,
                     BatchNormStatsWarning, DataWriteWarning)
from .grid import Grid
from .params import params_of
from .problem import Problem
from .surface import open_directions, open_surface, surface
from .subsample import surface_stderr
from .paths import interpolate
from .trajectory import Trajectory, TrajectoryRecorder
from .connect import Curve, connect
from .align import Alignment, align
from .report import report  # the function; its package stays importable as lossatlas.report._page etc.

__all__ = [
    "__version__",
    "Problem",
    "params_of",
    "params",
    "directions",
    "distributed",
    "convexity",
    "examples",
    "plot",
    "export",
    "attrs",
    "curvature",
    "metrics",
    "sharpness",
    "studies",
    "surface_stderr",
    "Directions",
    "Grid",
    "surface",
    "open_surface",
    "open_directions",
    "interpolate",
    "TrajectoryRecorder",
    "Trajectory",
    "connect",
    "Curve",
    "align",
    "Alignment",
    "report",
    "LossAtlasError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "ParameterMismatchError",
    "DataError",
    "LossFunctionError",
    "EvaluationError",
    "DifferentiationError",
    "StoreError",
    "ProvenanceMismatchError",
    "StoreLockedError",
    "DistributedError",
    "StoreRepairWarning",
    "BatchNormStatsWarning",
    "DataWriteWarning",
    "MissingDependencyError",
]
