"""The :class:`Directions` record (vectors + how they were made), its persistence, and the input
checks every direction factory shares."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import params as P
from ..params import _points
from .._param_io import read_params, write_params
from ..errors import ParameterMismatchError, StoreError, bad_type, bad_value, current_function
from ..problem import Problem

__all__ = ["Directions", "check_independent"]


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


def check_independent(dirs: Directions, arg: str = "directions") -> float:
    """Refuse zero, non-finite or linearly dependent directions (a plane spanned by two parallel
    vectors is a line drawn twice); return the largest |cos| between two of them. Messages name the
    public function running."""
    n = len(dirs)
    norms = [_norm64(d) for d in dirs]
    for i, v in enumerate(norms):
        if not math.isfinite(v) or v == 0.0:
            raise bad_value(f"{arg}[{i}]", "a non-zero direction with finite entries",
                            f"a direction of norm {v}")
    # each pair once: a·b and b·a are the same bits (elementwise products commute, the same summation order)
    gram = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            gram[i, j] = gram[j, i] = _dot64(dirs[i], dirs[j]) / (norms[i] * norms[j])
    off = [abs(gram[i, j]) for i in range(n) for j in range(n) if i != j]
    worst = float(max(off, default=0.0))
    if n > 1:
        smallest = float(np.linalg.eigvalsh((gram + gram.T) / 2)[0])
        if not smallest > 1e-10:
            raise bad_value(arg, "linearly independent directions", f"{n} directions spanning fewer than "
                            f"{n} dimensions (largest |cos| between two of them {worst:.6g})")
    return worst


def _on_cpu(tensors) -> bool:
    return all(t.device.type == "cpu" for t in tensors)


def _norm64(d: P.Params) -> float:
    """:func:`lossatlas.params.norm` (the same bits) with one float64 copy alive at a time, not one of
    every tensor (on the CPU, where ``_foreach_norm`` is a loop over the tensors)."""
    if not d or not _on_cpu(d.values()):
        return P.norm(d)
    return float(torch.linalg.vector_norm(torch.stack([torch._foreach_norm([v.double()])[0] for v in d.values()])))


def _dot64(a: P.Params, b: P.Params) -> float:
    """:func:`lossatlas.params.dot` (the same bits: each tensor's float64 products summed, the sums
    added left to right) with one float64 tensor alive per tensor, not three: the elementwise float64
    products are formed slice by slice (elementwise, hence the same values) into one buffer, which is
    then summed whole, as P.dot sums its product tensor."""
    if not a:
        return 0.0
    total = None
    for k, v in a.items():
        w = b[k]
        if not (v.is_contiguous() and w.is_contiguous()) or v.numel() <= _points.CHUNK:
            part = torch.sum(v.double() * w.double())  # P.dot's own expression
        else:  # in the point formation's slices (2 MiB of float64 each)
            prod = torch.empty(v.shape, dtype=torch.float64, device=v.device)
            for sv, sw, sp in zip(_points.slices(v), _points.slices(w), _points.slices(prod)):
                torch.mul(sv.double(), sw.double(), out=sp)
            part = torch.sum(prod)
            del prod
        total = part if total is None else total + part
    return float(total)


def _short_list(items: Sequence[str], limit: int = 6) -> str:
    return ", ".join(items[:limit]) + (", …" if len(items) > limit else "")


def _resolve_source(source: Any, model: nn.Module | None):
    """(params, model) from a dict of parameters, an ``nn.Module`` or a ``Problem``."""
    if isinstance(source, Problem):  # θ₀ itself, read-only (the factories only read it): no copy
        return source.params(copy=False), source.model
    if isinstance(source, nn.Module):
        return P.params_of(source), source
    return source, model


def _check_params(params: Any, arg: str = "params") -> None:
    """A non-empty dict of floating-point tensors (messages name the public function running)."""
    if isinstance(params, nn.Module):
        raise bad_type(arg, "a dict of parameter tensors (use lossatlas.params_of(model))", params)
    if not isinstance(params, Mapping) or not params:
        raise bad_type(arg, "a non-empty dict of parameter tensors", params)
    for k, v in params.items():
        if not isinstance(v, Tensor):
            raise bad_type(f"{arg}[{k!r}]", "a tensor", v)
        if not v.is_floating_point():
            raise bad_value(f"{arg}[{k!r}]", "a floating-point tensor", v)


def _check_model_params(model: nn.Module, params: Mapping[str, Tensor]) -> None:
    func = current_function("directions", innermost=True)
    names = dict(model.named_parameters())
    unknown = [k for k in params if k not in names]
    if unknown:
        raise ParameterMismatchError(f"{func}(): argument 'params' must be parameters of 'model'; received "
                                     f"unknown names {unknown[:4]}")
    P.check_shapes(names, params, func=func, arg="params", like="the model's parameter")
