"""Directions between given models: the line a → b, the plane through a, b, c, and unit axes of
single parameters."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import params as P
from ..errors import InvalidArgumentError, bad_value, current_function, public
from ._base import Directions, _check_params, _resolve_source, _short_list
from ._registry import DirectionKind, register

__all__ = ["between", "plane", "axes"]


@public("directions.between")
def between(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Directions:
    """The single direction b − a (so the point at coordinate 1 from centre ``a`` is ``b``).

    >>> import torch
    >>> d = between({"w": torch.zeros(2)}, {"w": torch.ones(2)})
    >>> d[0]["w"].tolist(), d.spec["kind"]
    ([1.0, 1.0], 'between')
    """
    _check_params(a, arg="a")
    P.check_like(a, b, arg="b", ref_arg="a")
    d = P.sub(b, a)
    _check_offset("b", P.norm(d))
    return Directions([d], {"kind": "between", "n": 1, "norm": None, "labels": ["interpolation a → b"],
                            "anchors": {"a": [0.0], "b": [1.0]}, "distance": P.norm(d)})


def _check_offset(arg: str, distance: float) -> None:
    """``arg`` − a must be a non-zero, finite direction (messages name the public function running)."""
    func = current_function("directions", innermost=True)
    if not math.isfinite(distance):
        raise InvalidArgumentError(f"{func}(): argument '{arg}' must be parameters with finite entries, at a finite "
                                   f"distance from 'a'; received parameters at distance {distance}")
    if distance == 0.0:
        raise InvalidArgumentError(f"{func}(): argument '{arg}' must be parameters that differ from 'a' (the "
                                   "direction to it would be zero); received parameters identical to 'a'")


@public("directions.plane")
def plane(a: Mapping[str, Tensor], b: Mapping[str, Tensor], c: Mapping[str, Tensor], *,
          orthogonal: bool = False) -> Directions:
    """Two directions spanning the plane through three models, for a surface centred at ``a``.

    ``orthogonal=False``: d₁ = b − a, d₂ = c − a (``b`` at (1, 0), ``c`` at (0, 1)).
    ``orthogonal=True``: d₂ is c − a minus its projection on d₁ and rescaled to ‖d₁‖, so the axes
    have equal units; ``c`` then sits at the coordinates recorded in ``spec["anchors"]``.
    """
    _check_params(a, arg="a")
    P.check_like(a, b, arg="b", ref_arg="a")
    P.check_like(a, c, arg="c", ref_arg="a")
    d1, d2 = P.sub(b, a), P.sub(c, a)
    n1, n2 = P.norm(d1), P.norm(d2)
    _check_offset("b", n1)
    _check_offset("c", n2)
    cos = P.dot(d1, d2) / (n1 * n2)
    if not 1.0 - abs(cos) > 1e-10:  # the smallest eigenvalue of the directions' 2×2 Gram matrix of cosines
        raise InvalidArgumentError("directions.plane(): argument 'c' must be a model off the line through 'a' and 'b' "
                                   "(three collinear models span no plane); received parameters with c − a "
                                   f"parallel to b − a (|cos| = {abs(cos):.12g})")
    anchors = {"a": [0.0, 0.0], "b": [1.0, 0.0], "c": [0.0, 1.0]}
    if orthogonal:
        t = P.dot(d2, d1) / n1**2
        r = P.axpy(-t, d1, d2)
        nr = P.norm(r)
        if nr == 0:
            raise InvalidArgumentError("directions.plane(): arguments 'a', 'b', 'c' must not be collinear")
        d2 = P.scale(r, n1 / nr)
        anchors["c"] = [t, nr / n1]
    return Directions([d1, d2], {"kind": "plane", "n": 2, "norm": None, "orthogonal": orthogonal,
                                 "anchors": anchors, "cosines": [[1.0, P.cosine(d1, d2)], [P.cosine(d1, d2), 1.0]],
                                 "labels": ["direction a → b", "direction a → c" if not orthogonal
                                            else "direction a → c (orthogonalised)"]})


@public("directions.axes")
def axes(params: Mapping[str, Tensor] | nn.Module | Any, names: Sequence[str]) -> Directions:
    """Unit directions along single parameters: ``"w0"`` (a scalar parameter) or an element such as
    ``"fc.weight[3, 2]"``. Coordinates of a surface are then plain offsets of those parameters.

    >>> import torch
    >>> d = axes({"w0": torch.tensor(1.0), "w1": torch.tensor(2.0)}, ["w0", "w1"])
    >>> [float(v["w0"]) for v in d], d.labels
    ([1.0, 0.0], ['w0', 'w1'])
    """
    params, _ = _resolve_source(params, None)
    _check_params(params)
    if isinstance(names, str) or not names:
        raise bad_value("names", "a non-empty list of parameter names", names)
    vectors = []
    for spec in names:
        base, _, rest = str(spec).partition("[")
        if base not in params:
            raise bad_value("names", f"names of parameters ({_short_list(list(params))})", spec)
        t = params[base]
        index: tuple[int, ...] = ()
        if rest:
            try:
                index = tuple(int(i) for i in rest.rstrip("]").split(","))
                torch.zeros(t.shape)[index]
            except (ValueError, IndexError) as exc:
                raise bad_value("names", f"a valid element index of {base!r} with shape {tuple(t.shape)}",
                                spec) from exc
        if len(index) != t.ndim:
            raise bad_value("names", f"a full element index of {base!r} (shape {tuple(t.shape)})", spec)
        d = {k: torch.zeros_like(v) for k, v in params.items()}
        d[base][index] = 1.0
        vectors.append(d)
    return Directions(vectors, {"kind": "axes", "n": len(names), "norm": None, "names": list(map(str, names)),
                                "labels": [str(n) for n in names]})


def _split_names(text: str) -> list[str]:
    """Comma-separated names, where an element index ``w[1, 2]`` keeps its comma."""
    names, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            names.append(cur.strip())
            cur = ""
        else:
            cur += ch
    names.append(cur.strip())
    return [n for n in names if n]


def _axes_from_cli(target: Any, *, dims: int, norm: str | None, ignore: str | None, seed: int, arg: str) -> Directions:
    """``--directions axes:NAME[,NAME]``: a scalar parameter or an element ``w[i, j]`` is a unit
    coordinate direction; the name of a whole tensor (a layer's ``fc.weight``) is one direction along
    that tensor's own values, normalised to norm 1 (the coordinate is the distance moved, and −‖W‖
    zeroes the layer)."""
    names = _split_names(arg)
    kind = "axes:" + arg
    if len(names) != dims:
        raise InvalidArgumentError(f"--directions {kind!r} names {len(names)} parameters but --dims is {dims}")
    center = target.center
    whole = [n for n in names if "[" not in n and n in center and center[n].ndim > 0]
    if not whole:
        return axes(center, names)
    vectors, labels = [], []
    for n in names:
        if n in whole:
            t = center[n]
            size = float(torch.linalg.vector_norm(t.detach().double()))
            if not size > 0:
                raise InvalidArgumentError(f"--directions {kind!r}: layer {n!r} is all zeros, so it gives no "
                                           "direction; name one of its elements (NAME[i,j]) instead")
            d = {k: torch.zeros_like(v) for k, v in center.items()}
            d[n] = t.detach() / size
            vectors.append(d)
            labels.append(f"{n} (whole tensor, unit norm)")
        else:
            vectors.append(axes(center, [n]).vectors[0])
            labels.append(n)
    return Directions(vectors, {"kind": "axes", "n": len(names), "norm": "layer-unit", "names": names,
                                "labels": labels})


register(DirectionKind("between", "interpolation", between, needs="models"))
register(DirectionKind("plane", "plane through models", plane, needs="models"))
register(DirectionKind("axes", "parameter axes", axes, needs="params", cli=_axes_from_cli,
                       cli_usage="axes:NAME[,NAME]", cli_help="a scalar parameter, an element W[i,j], or a whole tensor: one direction along its values, unit norm", takes_argument=True))
