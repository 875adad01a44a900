"""The registry of built-in example problems and the on-disk cache of their trained centres."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import directions as D
from .. import params as P
from .._version import __version__
from ..errors import InvalidArgumentError, bad_type
from ..problem import Problem


@dataclass
class Example:
    """A built-in problem with its trained centre θ* and what it is meant to show.

    ``convex`` is the known truth for the loss as a function of the parameters: ``True`` (a convex
    baseline), ``False`` (provably non-convex) or ``None`` (not known). ``directions`` makes the
    example's default directions (e.g. the (w0, w1) axes of ``seed-relu``).
    """

    name: str
    problem: Problem
    center: P.Params
    description: str
    convex: bool | None
    model: nn.Module
    family: str = "network"
    info: dict[str, Any] = field(default_factory=dict)
    directions: Callable[..., Any] | None = None

    def default_directions(self, n: int = 2, *, seed: int = 0):
        """The example's natural directions (random filter-normalised unless it defines others)."""
        if self.directions is not None:
            return self.directions(self, n=n, seed=seed)
        return D.random(self.problem, n=n, seed=seed)


@dataclass(frozen=True)
class ExampleSpec:
    name: str
    description: str
    convex: bool | None
    build: Callable[..., Example]
    family: str = "network"


REGISTRY: dict[str, ExampleSpec] = {}


def register(name: str, description: str, convex: bool | None, family: str = "network"):
    """Decorator adding a builder ``build(*, dtype, device, cache) -> Example`` to the registry."""
    def wrap(fn: Callable[..., Example]) -> Callable[..., Example]:
        REGISTRY[name] = ExampleSpec(name, description, convex, fn, family)
        return fn
    return wrap


def names() -> list[str]:
    """Names of the built-in examples, in registry order.

    >>> "seed-relu" in names() and "mlp-digits" in names()
    True
    """
    return list(REGISTRY)


def load(name: str, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
         cache: bool = True) -> Example:
    """Build an example: its ``Problem``, trained centre θ* (cached on disk) and description.

    >>> ex = load("seed-relu")
    >>> ex.convex, sorted(ex.center)
    (False, ['b0', 'b1', 'w0', 'w1'])
    """
    if not isinstance(name, str):
        raise bad_type("examples.load", "name", "an example name (str)", name)
    if name not in REGISTRY:
        raise InvalidArgumentError(f"examples.load(): argument 'name' must be one of {names()}; received {name!r}")
    return REGISTRY[name].build(dtype=dtype, device=device, cache=cache)


def cache_dir() -> Path:
    """Where trained example weights are cached (``$LOSSATLAS_CACHE`` or ``~/.cache/lossatlas``)."""
    root = os.environ.get("LOSSATLAS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lossatlas")
    return Path(root) / "examples"


#: intra-op threads of every built-in example's training. CPU reductions split their work by thread,
#: so trained weights depend on the count (measured: cnn-digits max |Δw| 0.07 and resnet-noskip 0.12
#: between 1 and 2 threads; mlp-digits 5e-7): with one thread the weights are the same on any core
#: count and load (cold training of mlp-digits on a busy 2-core machine: 0.6 s vs 12.5 s with torch's
#: 2 threads). Part of every cache key, so weights trained with another count are never reused.
TRAINING_THREADS = 1


def cache_digest(key: dict[str, Any]) -> str:
    """The cache file's digest of ``key`` with what else decides the trained weights: the library and
    torch versions and :data:`TRAINING_THREADS`."""
    full = {**key, "version": __version__, "torch": torch.__version__, "threads": TRAINING_THREADS}
    return hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16]


def trained(model: nn.Module, key: dict[str, Any], train: Callable[[nn.Module], None], *, cache: bool) -> nn.Module:
    """Train ``model`` with ``train`` (deterministic) or load the cached result for the same ``key``.

    The key (example name, hyper-parameters, library version) is hashed into the file name, so a
    change to any of them retrains instead of silently reusing stale weights."""
    path = cache_dir() / f"{key['name']}-{cache_digest(key)}.pt"
    if cache and path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model
        except Exception:  # a corrupt cache entry: retrain and rewrite
            pass
    train(model)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return model
