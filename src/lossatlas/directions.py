"""Directions in parameter space, with a record of how they were made.

Every factory returns a :class:`Directions`: a list of parameter dicts plus a ``spec`` (kind,
normalisation, ignore rule, seeds, final cosines …). Directions are saved to and loaded from a
self-describing zarr group.

Filter normalisation follows Li et al., "Visualizing the Loss Landscape of Neural Nets" (2018,
arXiv:1712.09913): every filter d_{i,j} of a Gaussian direction is rescaled to the norm of the
corresponding filter of θ, d_{i,j} ← d_{i,j} · ‖θ_{i,j}‖ / ‖d_{i,j}‖, where a *filter* is one output
unit: dim 0 of Linear and ConvNd weights, **dim 1** of ConvTransposeNd weights (per group), one row
(token) of Embedding weights.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import params as P
from .errors import InvalidArgumentError, ParameterMismatchError, StoreError, bad_type, bad_value

__all__ = ["Directions", "random", "between", "plane", "axes", "filter_layout", "REGISTRY"]

NORMS = ("filter", "layer", "model", None)

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
if hasattr(nn, "RMSNorm"):
    _NORM_LAYERS = (*_NORM_LAYERS, nn.RMSNorm)


@dataclass
class Directions:
    """Directions d₁…d_n (parameter dicts) and the ``spec`` recording how they were made.

    ``labels`` are human-readable axis names used by plots, e.g.
    ``"filter-normalised random direction 1"``.
    """

    vectors: list[P.Params]
    spec: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise bad_value("Directions", "vectors", "at least one direction", self.vectors)
        first = self.vectors[0]
        for i, v in enumerate(self.vectors[1:], start=2):
            P.check_like(first, v, func="Directions", arg=f"vectors[{i - 1}]", ref_arg="vectors[0]")

    def __len__(self) -> int:
        return len(self.vectors)

    def __getitem__(self, i: int) -> P.Params:
        return self.vectors[i]

    def __iter__(self):
        return iter(self.vectors)

    def select(self, *indices: int) -> Directions:
        """A Directions object holding only the given directions (labels and spec kept)."""
        if not indices or any(not isinstance(i, int) or not -len(self) <= i < len(self) for i in indices):
            raise bad_value("Directions.select", "indices", f"integers in [0, {len(self)})", indices)
        spec = dict(self.spec)
        labels = self.labels
        spec["labels"] = [labels[i] for i in indices]
        spec["n"] = len(indices)
        spec["selected"] = list(indices)
        return Directions([self.vectors[i] for i in indices], spec)

    @property
    def labels(self) -> list[str]:
        labels = self.spec.get("labels")
        if labels and len(labels) == len(self):
            return list(labels)
        return [f"direction {i + 1}" for i in range(len(self))]

    @property
    def names(self) -> list[str]:
        return list(self.vectors[0].keys())

    def to(self, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Directions:
        """A copy converted to ``dtype`` / moved to ``device`` (same spec)."""
        return Directions([P.to(v, dtype=dtype, device=device) for v in self.vectors], dict(self.spec))

    def fingerprint(self) -> str:
        """SHA-256 of the exact direction tensors."""
        return P.fingerprint((f"{i}:{k}", t) for i, v in enumerate(self.vectors) for k, t in v.items())

    def cosines(self) -> list[list[float]]:
        """Pairwise cosines cos∠(dᵢ, dⱼ)."""
        return [[P.cosine(a, b) for b in self.vectors] for a in self.vectors]

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write to a zarr group at ``path`` (one array per parameter, stacked over directions)."""
        import zarr

        path = Path(path)
        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        write_params(root, {k: torch.stack([v[k] for v in self.vectors]) for k in self.names})
        root.attrs["lossatlas_directions"] = json.dumps(_jsonable(self.spec))
        root.attrs["n"] = len(self)
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: torch.device | str | None = None) -> Directions:
        """Read directions written by :meth:`save` (or the ``directions`` group of a surface store)."""
        import zarr

        path = Path(path)
        try:
            root = zarr.open_group(str(path), mode="r")
            spec = json.loads(root.attrs["lossatlas_directions"])
            n = int(root.attrs["n"])
        except Exception as exc:
            raise StoreError(f"Directions.load(): argument 'path' must be a directions group written by "
                             f"lossatlas; received {str(path)!r} ({exc})") from exc
        stacked = read_params(root, device=device)
        vectors = [{k: t[i].clone() for k, t in stacked.items()} for i in range(n)]
        return cls(vectors, spec)


def write_params(group: Any, tensors: Mapping[str, Tensor]) -> None:
    """Store a dict of tensors in a zarr group, keeping names, shapes, dtypes and order."""
    order = []
    for i, (k, t) in enumerate(tensors.items()):
        t = t.detach().cpu().contiguous()
        widened = t.dtype == torch.bfloat16  # numpy has no bfloat16: kept exactly as float32
        arr = (t.float() if widened else t).numpy()
        key = f"p{i}"
        group.create_array(key, shape=arr.shape, dtype=arr.dtype, chunks=arr.shape, overwrite=True)
        group[key][...] = arr
        order.append([key, k, "bfloat16"] if widened else [key, k])
    group.attrs["params"] = order


def read_params(group: Any, *, device: torch.device | str | None = None) -> P.Params:
    out = {}
    for entry in group.attrs["params"]:
        key, name = entry[0], entry[1]
        t = torch.from_numpy(np.asarray(group[key][...]).copy())
        if len(entry) > 2:
            t = t.to(getattr(torch, entry[2]))
        out[name] = t.to(device) if device is not None else t
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


# ---------------------------------------------------------------------------------------------
# Filter layout: which dimension indexes the output units of each parameter
# ---------------------------------------------------------------------------------------------
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
        if isinstance(owner, _NORM_LAYERS):
            layout[name] = "norm"
        elif t.ndim <= 1:
            layout[name] = "vector"
        elif isinstance(owner, nn.modules.conv._ConvTransposeNd) and name.endswith("weight"):
            layout[name] = f"convT:{owner.groups}"
        else:
            layout[name] = "dim0"
    return layout


def _filters(t: Tensor, rule: str) -> Tensor:
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


def _filter_norms(t: Tensor, rule: str) -> Tensor:
    return torch.linalg.vector_norm(_filters(t, rule), dim=1)


def _rescale_filters(d: Tensor, theta: Tensor, rule: str) -> Tensor:
    """d with every filter rescaled to the norm of θ's filter (0 where either is 0)."""
    fd = _filters(d, rule)
    nd = torch.linalg.vector_norm(fd, dim=1, keepdim=True)
    nt = torch.linalg.vector_norm(_filters(theta, rule), dim=1, keepdim=True)
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


def _ignored(ignore: IgnoreRule, layout: Mapping[str, str], params: Mapping[str, Tensor]) -> set[str]:
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


def _seeds(seed: int, n: int) -> list[int]:
    """One independent seed per direction, derived from ``seed`` (numpy SeedSequence.spawn)."""
    return [int(s.generate_state(1, dtype=np.uint64)[0] % (2**63))
            for s in np.random.SeedSequence(seed).spawn(n)]


_NORM_WORDS = {"filter": "filter-normalised", "layer": "layer-normalised", "model": "model-normalised",
               None: "unnormalised"}


def random(
    params: Mapping[str, Tensor] | nn.Module | Any,
    n: int = 2,
    *,
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
    func = "directions.random"
    params, model = _resolve_source(params, model, func)
    _check_params(params, func)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad_value(func, "n", "an integer >= 1", n)
    if norm not in NORMS:
        raise bad_value(func, "norm", f"one of {NORMS}", norm)
    from lossatlas.errors import check_seed

    seed = check_seed(func, seed)
    if model is not None and not isinstance(model, nn.Module):
        raise bad_type(func, "model", "an nn.Module or None", model)
    if model is not None:
        _check_model_params(model, params, func)
    theta = {k: v.detach() for k, v in params.items()}
    layout = filter_layout(model, theta)
    skip = _ignored(ignore, layout, theta)
    if len(skip) == len(theta):
        raise InvalidArgumentError(f"{func}(): argument 'ignore' leaves no parameter to move; received {ignore!r}")
    movable = sum(t.numel() for k, t in theta.items() if k not in skip)
    if orthogonal and n > movable:
        raise bad_value(func, "n", f"at most {movable} (the number of parameter entries that move; more "
                        "directions cannot be independent)", n)
    if not isinstance(orthogonal, bool):
        raise bad_type(func, "orthogonal", "a bool", orthogonal)
    seeds = _seeds(int(seed), n)
    vectors: list[P.Params] = []
    for s in seeds:
        gen = torch.Generator().manual_seed(s)
        d = {}
        for k, t in theta.items():
            draw = torch.randn(t.shape, generator=gen, dtype=torch.float64)
            d[k] = torch.zeros_like(draw) if k in skip else draw
        vectors.append(_normalise(d, {k: v.double().cpu() for k, v in theta.items()}, layout, norm, skip))
    deviation = 0.0
    if orthogonal and n > 1:
        vectors = P.orthogonalise(vectors)
        if norm == "filter":
            deviation = _filter_deviation(vectors, theta, layout, skip)
    out = [{k: v.to(dtype=theta[k].dtype, device=theta[k].device) for k, v in d.items()} for d in vectors]
    cos = [[P.cosine(a, b) for b in vectors] for a in vectors]
    word = _NORM_WORDS[norm]
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


def _normalise(d: P.Params, theta: P.Params, layout: Mapping[str, str], norm: str | None,
               skip: set[str]) -> P.Params:
    if norm is None:
        return d
    if norm == "filter":
        return {k: v if k in skip else _rescale_filters(v, theta[k], layout[k]) for k, v in d.items()}
    if norm == "layer":
        out = {}
        for k, v in d.items():
            nv = float(torch.linalg.vector_norm(v))
            out[k] = v if (k in skip or nv == 0) else v * (float(torch.linalg.vector_norm(theta[k])) / nv)
        return out
    moving = {k: v for k, v in d.items() if k not in skip}
    nd = P.norm(moving)
    nt = P.norm({k: theta[k] for k in moving})
    return {k: (v * (nt / nd) if nd > 0 else v) for k, v in d.items()}


def _filter_deviation(vectors: Sequence[P.Params], theta: Mapping[str, Tensor], layout: Mapping[str, str],
                      skip: set[str]) -> float:
    worst = 0.0
    for d in vectors:
        for k, v in d.items():
            if k in skip:
                continue
            nt = _filter_norms(theta[k].double().cpu(), layout[k])
            nd = _filter_norms(v.double().cpu(), layout[k])
            mask = nt > 0
            if mask.any():
                worst = max(worst, float(((nd[mask] - nt[mask]).abs() / nt[mask]).max()))
    return worst


def between(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Directions:
    """The single direction b − a (so the point at coordinate 1 from centre ``a`` is ``b``).

    >>> import torch
    >>> d = between({"w": torch.zeros(2)}, {"w": torch.ones(2)})
    >>> d[0]["w"].tolist(), d.spec["kind"]
    ([1.0, 1.0], 'between')
    """
    _check_params(a, "directions.between", "a")
    P.check_like(a, b, func="directions.between", arg="b", ref_arg="a")
    d = P.sub(b, a)
    _check_offset("directions.between", "b", P.norm(d))
    return Directions([d], {"kind": "between", "n": 1, "norm": None, "labels": ["interpolation a → b"],
                            "anchors": {"a": [0.0], "b": [1.0]}, "distance": P.norm(d)})


def _check_offset(func: str, arg: str, distance: float) -> None:
    """``arg`` − a must be a non-zero, finite direction."""
    if not math.isfinite(distance):
        raise InvalidArgumentError(f"{func}(): argument '{arg}' must be parameters with finite entries, at a finite "
                                   f"distance from 'a'; received parameters at distance {distance}")
    if distance == 0.0:
        raise InvalidArgumentError(f"{func}(): argument '{arg}' must be parameters that differ from 'a' (the "
                                   "direction to it would be zero); received parameters identical to 'a'")


def plane(a: Mapping[str, Tensor], b: Mapping[str, Tensor], c: Mapping[str, Tensor], *,
          orthogonal: bool = False) -> Directions:
    """Two directions spanning the plane through three models, for a surface centred at ``a``.

    ``orthogonal=False``: d₁ = b − a, d₂ = c − a (``b`` at (1, 0), ``c`` at (0, 1)).
    ``orthogonal=True``: d₂ is c − a minus its projection on d₁ and rescaled to ‖d₁‖, so the axes
    have equal units; ``c`` then sits at the coordinates recorded in ``spec["anchors"]``.
    """
    func = "directions.plane"
    _check_params(a, func, "a")
    P.check_like(a, b, func=func, arg="b", ref_arg="a")
    P.check_like(a, c, func=func, arg="c", ref_arg="a")
    d1, d2 = P.sub(b, a), P.sub(c, a)
    n1, n2 = P.norm(d1), P.norm(d2)
    _check_offset(func, "b", n1)
    _check_offset(func, "c", n2)
    cos = P.dot(d1, d2) / (n1 * n2)
    if not 1.0 - abs(cos) > 1e-10:  # the smallest eigenvalue of the directions' 2×2 Gram matrix of cosines
        raise InvalidArgumentError(f"{func}(): argument 'c' must be a model off the line through 'a' and 'b' "
                                   "(three collinear models span no plane); received parameters with c − a "
                                   f"parallel to b − a (|cos| = {abs(cos):.12g})")
    anchors = {"a": [0.0, 0.0], "b": [1.0, 0.0], "c": [0.0, 1.0]}
    if orthogonal:
        t = P.dot(d2, d1) / n1**2
        r = P.axpy(-t, d1, d2)
        nr = P.norm(r)
        if nr == 0:
            raise InvalidArgumentError(f"{func}(): arguments 'a', 'b', 'c' must not be collinear")
        d2 = P.scale(r, n1 / nr)
        anchors["c"] = [t, nr / n1]
    return Directions([d1, d2], {"kind": "plane", "n": 2, "norm": None, "orthogonal": orthogonal,
                                 "anchors": anchors, "cosines": [[1.0, P.cosine(d1, d2)], [P.cosine(d1, d2), 1.0]],
                                 "labels": ["direction a → b", "direction a → c" if not orthogonal
                                            else "direction a → c (orthogonalised)"]})


def axes(params: Mapping[str, Tensor] | nn.Module | Any, names: Sequence[str]) -> Directions:
    """Unit directions along single parameters: ``"w0"`` (a scalar parameter) or an element such as
    ``"fc.weight[3, 2]"``. Coordinates of a surface are then plain offsets of those parameters.

    >>> import torch
    >>> d = axes({"w0": torch.tensor(1.0), "w1": torch.tensor(2.0)}, ["w0", "w1"])
    >>> [float(v["w0"]) for v in d], d.labels
    ([1.0, 0.0], ['w0', 'w1'])
    """
    func = "directions.axes"
    params, _ = _resolve_source(params, None, func)
    _check_params(params, func)
    if isinstance(names, str) or not names:
        raise bad_value(func, "names", "a non-empty list of parameter names", names)
    vectors = []
    for spec in names:
        base, _, rest = str(spec).partition("[")
        if base not in params:
            raise bad_value(func, "names", f"names of parameters ({_short_list(list(params))})", spec)
        t = params[base]
        index: tuple[int, ...] = ()
        if rest:
            try:
                index = tuple(int(i) for i in rest.rstrip("]").split(","))
                torch.zeros(t.shape)[index]
            except (ValueError, IndexError) as exc:
                raise bad_value(func, "names", f"a valid element index of {base!r} with shape {tuple(t.shape)}",
                                spec) from exc
        if len(index) != t.ndim:
            raise bad_value(func, "names", f"a full element index of {base!r} (shape {tuple(t.shape)})", spec)
        d = {k: torch.zeros_like(v) for k, v in params.items()}
        d[base][index] = 1.0
        vectors.append(d)
    return Directions(vectors, {"kind": "axes", "n": len(names), "norm": None, "names": list(map(str, names)),
                                "labels": [str(n) for n in names]})


def check_independent(dirs: Directions, func: str, arg: str = "directions") -> float:
    """Refuse zero, non-finite or linearly dependent directions (a plane spanned by two parallel
    vectors is a line drawn twice); return the largest |cos| between two of them."""
    n = len(dirs)
    norms = [P.norm(d) for d in dirs]
    for i, v in enumerate(norms):
        if not math.isfinite(v) or v == 0.0:
            raise bad_value(func, f"{arg}[{i}]", "a non-zero direction with finite entries",
                            f"a direction of norm {v}")
    gram = np.array([[P.dot(a, b) / (norms[i] * norms[j]) for j, b in enumerate(dirs)] for i, a in enumerate(dirs)])
    off = [abs(gram[i, j]) for i in range(n) for j in range(n) if i != j]
    worst = float(max(off, default=0.0))
    if n > 1:
        smallest = float(np.linalg.eigvalsh((gram + gram.T) / 2)[0])
        if not smallest > 1e-10:
            raise bad_value(func, arg, "linearly independent directions", f"{n} directions spanning fewer than "
                            f"{n} dimensions (largest |cos| between two of them {worst:.6g})")
    return worst


def _short_list(items: Sequence[str], limit: int = 6) -> str:
    return ", ".join(items[:limit]) + (", …" if len(items) > limit else "")


def _resolve_source(source: Any, model: nn.Module | None, func: str):
    """(params, model) from a dict of parameters, an ``nn.Module`` or a ``Problem``."""
    from .problem import Problem

    if isinstance(source, Problem):
        return source.params(), source.model
    if isinstance(source, nn.Module):
        return P.params_of(source), source
    return source, model


def _check_params(params: Any, func: str, arg: str = "params") -> None:
    if isinstance(params, nn.Module):
        raise bad_type(func, arg, "a dict of parameter tensors (use lossatlas.params_of(model))", params)
    if not isinstance(params, Mapping) or not params:
        raise bad_type(func, arg, "a non-empty dict of parameter tensors", params)
    for k, v in params.items():
        if not isinstance(v, Tensor):
            raise bad_type(func, f"{arg}[{k!r}]", "a tensor", v)
        if not v.is_floating_point():
            raise bad_value(func, f"{arg}[{k!r}]", "a floating-point tensor", v)


def _check_model_params(model: nn.Module, params: Mapping[str, Tensor], func: str) -> None:
    names = dict(model.named_parameters())
    unknown = [k for k in params if k not in names]
    if unknown:
        raise ParameterMismatchError(f"{func}(): argument 'params' must be parameters of 'model'; received "
                                     f"unknown names {unknown[:4]}")
    for k, v in params.items():
        if tuple(names[k].shape) != tuple(v.shape):
            raise ParameterMismatchError(f"{func}(): argument 'params[{k!r}]' must have the shape of the "
                                         f"model's parameter {tuple(names[k].shape)}; received {tuple(v.shape)}")


#: Direction factories by kind; contract tests iterate over these (later: "pca", "hessian").
REGISTRY: dict[str, Callable[..., Directions]] = {"random": random, "between": between, "plane": plane,
                                                   "axes": axes}


def pca(trajectory: Any, n: int = 2, **kwargs: Any) -> Directions:
    """The first ``n`` principal directions of a training trajectory's θ_i − θ_final (Li et al. 2018),
    with their explained-variance ratios in ``spec``; see :func:`lossatlas.trajectory.pca`."""
    from .trajectory import pca as impl

    return impl(trajectory, n, **kwargs)


REGISTRY["pca"] = pca
__all__.append("pca")


def hessian(problem: Any, theta: Mapping[str, Tensor] | None = None, n: int = 2, which: str = "extremes",
            **kwargs: Any) -> Directions:
    """Hessian eigenvectors as directions (λmax and λmin for ``which="extremes"``, the n largest for
    ``"top"``); see :func:`lossatlas.curvature.hessian_directions` for the options."""
    from .curvature.hessian_directions import hessian_directions

    return hessian_directions(problem, theta, n, which, **kwargs)


REGISTRY["hessian"] = hessian
__all__.append("hessian")
