"""Directions in parameter space, with a record of how they were made.

Every factory returns a :class:`Directions`: a list of parameter dicts plus a ``spec`` (kind,
normalisation, ignore rule, seeds, final cosines …). Directions are saved to and loaded from a
self-describing zarr group. One module per kind (``_random``, ``_linear`` for between/plane/axes,
``_pca``, ``_hessian``), each registering a :class:`DirectionKind` in :data:`REGISTRY`, which the CLI,
the plots and the contract tests read.
"""

from ._base import Directions, check_independent
from ._registry import NORM_WORDS, NORMS, REGISTRY, DirectionKind, norm_word, register, unregister
from ._random import random
from ._linear import axes, between, plane
from ._pca import pca
from ._hessian import hessian
from ..params._layout import filter_layout

__all__ = ["Directions", "random", "between", "plane", "axes", "pca", "hessian", "filter_layout", "REGISTRY",
           "DirectionKind", "register"]
