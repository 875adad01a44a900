"""Landscape metrics: numbers that say *how* non-convex a loss landscape is, each with its uncertainty.

Every metric is one function over a surface (an ``xarray.Dataset`` from :func:`lossatlas.surface`,
dims ``x``/``y``, variable ``loss``) or over a problem, returning a small frozen result with a short
repr:

* :func:`local_minima` — strict minima of a slice, each checked in the full parameter space
  (gradient norm, Hessian index): minimum, saddle, not critical or unresolved;
* :func:`nonconvexity_fraction` — share of grid points with an indefinite sampled Hessian, with the
  half-resolution value as its resolution error;
* :func:`basin_width` — width of {L ≤ L_min + δ} along each direction, ± the grid spacing;
* :func:`sublevel_persistence` — merge tree / 0-dim persistence of the sublevel sets: basins and
  their barriers;
* :func:`jensen_rate` — Jensen violation rate of random segments at several radii, with binomial
  standard errors and Wilson intervals.

>>> import numpy as np, xarray as xr, lossatlas
>>> x = np.linspace(-1, 1, 11)
>>> X, Y = np.meshgrid(x, x, indexing="ij")
>>> ds = xr.Dataset({"loss": (("x", "y"), X ** 2 - Y ** 2)}, coords={"x": x, "y": x})
>>> lossatlas.metrics.nonconvexity_fraction(ds)
NonConvexity(1.000 ± 0.000 (half resolution 1.000), 81/81 points)
"""

from .basin import BasinWidth, basin_width
from .jensen import JensenRate, JensenRow, jensen_rate, wilson_interval
from .minima import LocalMinima, SliceMinimum, local_minima
from .nonconvexity import NonConvexity, nonconvexity_fraction, sampled_hessian
from .topology import Basin, Topology, sublevel_persistence

__all__ = ["local_minima", "nonconvexity_fraction", "basin_width", "sublevel_persistence", "jensen_rate",
           "sampled_hessian", "wilson_interval", "LocalMinima", "SliceMinimum", "NonConvexity", "BasinWidth",
           "Topology", "Basin", "JensenRate", "JensenRow"]
