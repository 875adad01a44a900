"""How each parameter's filters are laid out, and which parameters an ignore rule leaves out.

A *filter* is one output unit: dim 0 of Linear and ConvNd weights, **dim 1** of ConvTransposeNd
weights (per group), one row (token) of Embedding weights; ≤ 1-D tensors and normalisation layers'
parameters are one filter each (bias-like). Filter normalisation (:func:`lossatlas.directions.random`)
and parameter selection (:mod:`lossatlas.params.selection`) read this layout.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from ..errors import bad_value

__all__ = ["filter_layout", "IgnoreRule", "ignored", "filters", "filter_norms", "rescale_filters"]

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
if hasattr(nn, "RMSNorm"):
    NORM_LAYERS = (*NORM_LAYERS, nn.RMSNorm)


def filter_layout(model: nn.Module | None, params: Mapping[str, Tensor]) -> dict[str, str]:
    """For each parameter, how its filters are laid out: ``"dim0"``, ``"convT:<groups>"`` (dim 1
    within each group), ``"vector"`` (≤ 1-D: one filter), ``"norm"`` (a normalisation layer's
    parameter: bias-like). Without a model, the rule is ``"dim0"`` for ≥ 2-D tensors."""
    owners: dict[str, nn.Module] = {}
    if model is not None:
        for mname, module in model.named_modules():
            for pname, _ in module.named_parameters(recurse=False):
                owners[f"{mname}.{pname}" if mname else pname] = module
    layout = {}
    for name, t in params.items():
        owner = owners.get(name)
        if isinstance(owner, NORM_LAYERS):
            layout[name] = "norm"
        elif t.ndim <= 1:
            layout[name] = "vector"
        elif isinstance(owner, nn.modules.conv._ConvTransposeNd) and name.endswith("weight"):
            layout[name] = f"convT:{owner.groups}"
        else:
            layout[name] = "dim0"
    return layout


def filters(t: Tensor, rule: str) -> Tensor:
    """View of ``t`` as (n_filters, filter_size) following ``rule``."""
    if rule in ("vector", "norm"):
        return t.reshape(1, -1)
    if rule.startswith("convT:"):
        groups = int(rule.split(":")[1])
        cin, cout_g = t.shape[0], t.shape[1]
        rest = t.shape[2:]
        g = t.reshape(groups, cin // groups, cout_g, *rest)           # (G, Cin/G, Cout/G, k…)
        g = g.movedim(2, 1)                                           # (G, Cout/G, Cin/G, k…)
        return g.reshape(groups * cout_g, -1)
    return t.reshape(t.shape[0], -1)


def filter_norms(t: Tensor, rule: str) -> Tensor:
    """The norm of each filter of ``t`` (one entry per filter)."""
    return torch.linalg.vector_norm(filters(t, rule), dim=1)


def rescale_filters(d: Tensor, theta: Tensor, rule: str) -> Tensor:
    """d with every filter rescaled to the norm of θ's filter (0 where either is 0)."""
    fd = filters(d, rule)
    nd = torch.linalg.vector_norm(fd, dim=1, keepdim=True)
    nt = torch.linalg.vector_norm(filters(theta, rule), dim=1, keepdim=True)
    factor = torch.where(nd > 0, nt / torch.where(nd > 0, nd, torch.ones_like(nd)), torch.zeros_like(nd))
    scaled = fd * factor
    if rule.startswith("convT:"):
        groups = int(rule.split(":")[1])
        cin, cout_g = d.shape[0], d.shape[1]
        rest = d.shape[2:]
        g = scaled.reshape(groups, cout_g, cin // groups, *rest).movedim(1, 2)
        return g.reshape(d.shape)
    return scaled.reshape(d.shape)


IgnoreRule = str | Callable[[str, Tensor], bool] | Iterable[str] | None


def ignored(ignore: IgnoreRule, layout: Mapping[str, str], params: Mapping[str, Tensor]) -> set[str]:
    """The names ``ignore`` leaves out: ``"biasbn"`` (≤ 1-D and normalisation-layer parameters), a
    callable ``(name, tensor) -> bool``, a list of glob patterns, or ``None`` (none)."""
    if ignore is None:
        return set()
    if ignore == "biasbn":
        return {k for k, rule in layout.items() if rule in ("vector", "norm")}
    if isinstance(ignore, str):
        raise bad_value("directions.random", "ignore", "'biasbn', None, a callable(name, tensor) or a list "
                        "of name patterns", ignore)
    if callable(ignore):
        return {k for k, t in params.items() if ignore(k, t)}
    patterns = list(ignore)
    if not all(isinstance(p, str) for p in patterns):
        raise bad_value("directions.random", "ignore", "a list of name patterns (strings)", ignore)
    return {k for k in params if any(fnmatch.fnmatchcase(k, pat) for pat in patterns)}
