"""Say so when BatchNorm's stored running statistics cannot describe the points evaluated.

With ``bn="eval"`` a BatchNorm layer normalises by the mean and variance stored with the model
(those of θ's training run). At any other point whose earlier weights differ (a point between two
networks, a point of a plane along directions that move weights feeding BatchNorm) the layer's
input distribution has changed and the stored statistics describe neither it nor θ: the loss can be
far off. :func:`warn_if_stale` emits one :class:`~lossatlas.errors.BatchNormStatsWarning` per call.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

from torch import Tensor

from .errors import BatchNormStatsWarning


def upstream_params(problem) -> set[str]:
    """Names of the parameters registered before the last BatchNorm layer (in module order): the
    weights whose change alters some BatchNorm layer's input (an approximation for models that
    register modules in the order they run, as nn.Sequential and most nets do)."""
    bn = problem.batchnorm_modules
    if not bn:
        return set()
    module = problem.module
    last = None
    for name, m in module.named_modules():
        if any(m is b for b in bn):
            last = name
    names: set[str] = set()
    for mname, m in module.named_modules():
        if mname == last:
            break
        for pname, _ in m.named_parameters(recurse=False):
            names.add(f"{mname}.{pname}" if mname else pname)
    return names


def moves(vectors: Iterable[Mapping[str, Tensor]], names: set[str]) -> bool:
    """Whether any of ``vectors`` is non-zero on one of ``names``."""
    for v in vectors:
        for k in names:
            if k in v and bool((v[k] != 0).any()):
                return True
    return False


def warn_if_stale(problem, func: str, vectors: Iterable[Mapping[str, Tensor]], where: str,
                  stacklevel: int = 3) -> bool:
    """One warning when ``problem`` evaluates BatchNorm with stored statistics (``bn="eval"``) and
    ``vectors`` move weights feeding a BatchNorm layer; returns whether it warned."""
    if _QUIET[0] or getattr(problem, "bn", None) != "eval" or not getattr(problem, "_bn_modules", None):
        return False
    if not moves(vectors, upstream_params(problem)):
        return False
    warnings.warn(f"{func}(): the model has BatchNorm layers evaluated with the running statistics stored with "
                  f"it (bn='eval'), but {where} moves weights feeding them, so those statistics do not describe "
                  "the points evaluated and the loss there can be far off (e.g. a barrier of 0 between two BN "
                  "networks); pass bn='recalibrate' to recompute them at every point",
                  BatchNormStatsWarning, stacklevel=stacklevel)
    return True


_QUIET = [0]


class quiet:
    """Within it, :func:`warn_if_stale` says nothing (a caller that already warned, e.g.
    :func:`~lossatlas.interpolate` around its :func:`~lossatlas.surface`)."""

    def __enter__(self):
        _QUIET[0] += 1

    def __exit__(self, *exc):
        _QUIET[0] -= 1
