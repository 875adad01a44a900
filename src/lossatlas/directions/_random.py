"""Gaussian random directions, normalised like Li et al. (2018).

Filter normalisation follows Li et al., "Visualizing the Loss Landscape of Neural Nets" (2018,
arXiv:1712.09913): every filter d_{i,j} of a Gaussian direction is rescaled to the norm of the
corresponding filter of θ, d_{i,j} ← d_{i,j} · ‖θ_{i,j}‖ / ‖d_{i,j}‖, where a *filter* is one output
unit (see :mod:`lossatlas.params._layout`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import params as P
from ..errors import InvalidArgumentError, bad_type, bad_value, check_seed, public
from ..params._layout import IgnoreRule, filter_layout, filter_norms, filters, ignored, rescale_filters
from . import _streamed
from ._base import Directions, _check_model_params, _check_params, _resolve_source
from ._registry import NORM_WORDS, NORMS, DirectionKind, register

__all__ = ["random"]


def _seeds(seed: int, n: int) -> list[int]:
    """One independent seed per direction, derived from ``seed`` (numpy SeedSequence.spawn)."""
    return [int(s.generate_state(1, dtype=np.uint64)[0] % (2**63))
            for s in np.random.SeedSequence(seed).spawn(n)]


@public("directions.random")
def random(
    params: Mapping[str, Tensor] | nn.Module | Any,
    *,
    n: int = 2,
    norm: str | None = "filter",
    ignore: IgnoreRule = "biasbn",
    orthogonal: bool = True,
    seed: int = 0,
    model: nn.Module | None = None,
) -> Directions:
    """Gaussian random directions, normalised like Li et al. (2018).

    ``params`` is θ as a dict of tensors, or an ``nn.Module`` / a :class:`~lossatlas.Problem`
    (then θ is its trainable parameters, in the problem's dtype, and the layer types are known).

    ``norm``: ``"filter"`` (each filter rescaled to the norm of θ's filter), ``"layer"`` (each
    parameter tensor rescaled to ‖θ_p‖), ``"model"`` (whole direction rescaled to ‖θ‖ over the
    parameters that move) or ``None`` (raw N(0, 1) draws). ``ignore="biasbn"`` gives a zero direction
    to every parameter with ≤ 1 dimension and to normalisation layers' parameters; with
    ``ignore=None`` they get a Gaussian direction normalised like a single filter. ``ignore`` may also
    be a callable ``(name, tensor) -> bool`` or a list of glob patterns. ``model`` (optional) tells
    the layer types: it is needed to treat ConvTranspose weights (filters along dim 1) and
    normalisation layers correctly. Buffers are never part of a direction.

    ``orthogonal=True`` applies Gram–Schmidt after normalisation (the final cosines are recorded in
    ``spec["cosines"]`` and the largest relative change of a filter norm in
    ``spec["filter_norm_deviation"]``). Each direction has its own seed derived from ``seed``, drawn
    in float64 on the CPU, so the same seed gives the same bytes on every device.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> d = random(net, n=2, seed=0)
    >>> len(d), d.labels[0]
    (2, 'filter-normalised random direction 1')
    >>> float(d[0]["0.bias"].abs().sum())  # biases ignored by default
    0.0
    """
    params, model, seed = _check_arguments(params, model, n, norm, seed)
    theta = {k: v.detach() for k, v in params.items()}
    layout = filter_layout(model, theta)
    skip = ignored(ignore, layout, theta)
    if len(skip) == len(theta):
        raise InvalidArgumentError(f"directions.random(): argument 'ignore' leaves no parameter to move; received {ignore!r}")
    movable = sum(t.numel() for k, t in theta.items() if k not in skip)
    if orthogonal and n > movable:
        raise bad_value("n", f"at most {movable} (the number of parameter entries that move; more "
                        "directions cannot be independent)", n)
    if not isinstance(orthogonal, bool):
        raise bad_type("orthogonal", "a bool", orthogonal)
    seeds = _seeds(int(seed), n)
    if _streamed.wanted(theta, norm):  # a large model: the same bits without a float64 direction kept whole
        out, cos, deviation = _streamed.draw(theta, seeds, layout, skip, orthogonal, _filter_draw)
    else:
        out, cos, deviation = _in_memory(theta, seeds, layout, norm, skip, orthogonal)
    word = NORM_WORDS[norm]
    spec = {
        "kind": "random",
        "n": n,
        "norm": norm,
        "ignore": ignore if (ignore is None or isinstance(ignore, str)) else repr(ignore),
        "ignored": sorted(skip),
        "orthogonal": orthogonal,
        "seed": int(seed),
        "seeds": seeds,
        "layout": layout,
        "cosines": cos,
        "max_abs_cosine": max((abs(cos[i][j]) for i in range(n) for j in range(n) if i != j), default=0.0),
        "filter_norm_deviation": deviation,
        "labels": [f"{word} random direction {i + 1}" for i in range(n)],
    }
    return Directions(out, spec)


def _in_memory(theta: Mapping[str, Tensor], seeds: Sequence[int], layout: Mapping[str, str], norm: str | None,
               skip: set[str], orthogonal: bool) -> tuple[list[P.Params], list[list[float]], float]:
    """(directions in θ's dtype, cosines, filter-norm deviation) with every direction held in float64."""
    # float64 on the CPU, one parameter tensor at a time (no float64 copy of the whole of θ, no second set
    # of draws): the same operations on the same values as drawing every tensor, then normalising
    vectors = [_direction(theta, s, layout, norm, skip) for s in seeds]
    deviation = 0.0
    if orthogonal and len(seeds) > 1:
        _orthogonalise_(vectors)
        if norm == "filter":
            deviation = _filter_deviation(vectors, theta, layout, skip)
    cos = [[P.cosine(a, b) for b in vectors] for a in vectors]
    # the float64 vectors are released tensor by tensor as their model-dtype copies are made
    out = [_to_model(d, theta) for d in vectors]
    del vectors
    return out, cos, deviation


def _check_arguments(params: Any, model: Any, n: Any, norm: Any, seed: Any) -> tuple[Any, Any, int]:
    """(params, model, seed) of a valid call, in the order the checks were always made."""
    params, model = _resolve_source(params, model)
    _check_params(params)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad_value("n", "an integer >= 1", n)
    if norm not in NORMS:
        raise bad_value("norm", f"one of {NORMS}", norm)
    seed = check_seed(seed)
    if model is not None and not isinstance(model, nn.Module):
        raise bad_type("model", "an nn.Module or None", model)
    if model is not None:
        _check_model_params(model, params)
    return params, model, seed


def _direction(theta: Mapping[str, Tensor], seed: int, layout: Mapping[str, str], norm: str | None,
               skip: set[str]) -> P.Params:
    """One normalised direction in float64 on the CPU: an N(0, 1) draw per entry from its own generator
    (every tensor drawn in order, zero where ignored), normalised as ``norm`` says. Each tensor is drawn
    and normalised before the next is drawn, with θ's tensor promoted to float64 only while it is used."""
    gen = torch.Generator().manual_seed(seed)
    d: P.Params = {}
    for k, t in theta.items():
        if norm == "filter" and k not in skip:
            d[k] = _filter_draw(t, gen, layout[k])
            continue
        draw = torch.randn(t.shape, generator=gen, dtype=torch.float64)
        if k in skip:
            d[k] = torch.zeros_like(draw)
        elif norm == "layer":
            nv = float(torch.linalg.vector_norm(draw))
            d[k] = draw if nv == 0 else draw * (float(torch.linalg.vector_norm(t.double().cpu())) / nv)
        else:
            d[k] = draw
        del draw
    if norm == "model":  # ‖θ‖ over the moving parameters, as P.norm, one float64 tensor at a time
        moving = [k for k in d if k not in skip]
        nd = P.norm({k: d[k] for k in moving})
        nt = float(torch.linalg.vector_norm(torch.stack(
            [torch._foreach_norm([theta[k].double().cpu()])[0] for k in moving])))
        if nd > 0:
            for v in d.values():
                v.mul_(nt / nd)
    return d


def _filter_draw(t: Tensor, gen: torch.Generator, rule: str) -> Tensor:
    """``rescale_filters(N(0, 1) draw, θ_k in float64, rule)`` (the same bits) with θ_k's float64 copy
    released before the draw is made and the draw rescaled in place: one float64 tensor at a time."""
    if rule.startswith("convT:"):  # filters() of a ConvTranspose weight is a copy, not a view
        return rescale_filters(torch.randn(t.shape, generator=gen, dtype=torch.float64), t.double().cpu(), rule)
    nt = torch.linalg.vector_norm(filters(t.double().cpu(), rule), dim=1, keepdim=True)
    draw = torch.randn(t.shape, generator=gen, dtype=torch.float64)
    fd = filters(draw, rule)  # a view of the (contiguous) draw
    nd = torch.linalg.vector_norm(fd, dim=1, keepdim=True)
    factor = torch.where(nd > 0, nt / torch.where(nd > 0, nd, torch.ones_like(nd)), torch.zeros_like(nd))
    fd.mul_(factor)
    return draw


def _orthogonalise_(vectors: list[P.Params]) -> None:
    """:func:`lossatlas.params.orthogonalise` (modified Gram–Schmidt, twice) in place on float64
    vectors: the same arithmetic, without a clone of every vector."""
    for i, w in enumerate(vectors):
        for _ in range(2):
            for u in vectors[:i]:
                uu = P.dot(u, u)
                if uu > 0:
                    c = P.dot(w, u) / uu
                    torch._foreach_add_(list(w.values()), [u[k] for k in w], alpha=-c)


def _to_model(d: P.Params, theta: Mapping[str, Tensor]) -> P.Params:
    """``d`` in θ's dtype and device, emptying ``d`` as it goes (one float64 tensor freed per copy)."""
    out = {}
    for k in list(d):
        out[k] = d.pop(k).to(dtype=theta[k].dtype, device=theta[k].device)
    return out


def _filter_deviation(vectors: Sequence[P.Params], theta: Mapping[str, Tensor], layout: Mapping[str, str],
                      skip: set[str]) -> float:
    worst = 0.0
    for d in vectors:
        for k, v in d.items():
            if k in skip:
                continue
            nt = filter_norms(theta[k].double().cpu(), layout[k])
            nd = filter_norms(v.double().cpu(), layout[k])
            mask = nt > 0
            if mask.any():
                worst = max(worst, float(((nd[mask] - nt[mask]).abs() / nt[mask]).max()))
    return worst


def _from_cli(target: Any, *, dims: int, norm: str | None, ignore: str | None, seed: int, arg: str) -> Directions:
    return random(target.center, n=dims, norm=norm, ignore=ignore, seed=seed, model=target.problem.model)


register(DirectionKind("random", "{norm} random directions", random, needs="params", cli=_from_cli,
                       cli_usage="random", cli_options=("--norm", "--ignore", "--seed")))
