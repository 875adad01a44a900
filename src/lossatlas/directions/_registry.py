"""The direction kinds: one small record per kind, which the CLI, plots and docs read.

Each kind module builds its factory and registers a :class:`DirectionKind`; adding a kind is one
module and one :func:`register` call (the contract tests in ``tests/test_direction_registry.py``
iterate over :data:`REGISTRY`). To add a kind:

1. write ``lossatlas/directions/_<kind>.py`` with the factory (returning :class:`Directions` whose
   ``spec["kind"]`` is the kind's name, errors naming ``directions.<kind>``, ``seed=`` if random);
2. at its end, ``register(DirectionKind("<kind>", "<plot label>", factory, needs=..., cli=...))``;
3. import it in ``lossatlas/directions/__init__.py`` and add it to ``__all__``;
4. add its case to ``CASES`` in ``tests/test_direction_registry.py`` (the test refuses a kind without one).

``lossatlas surface --directions`` and plot titles then offer and name it without further edits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._records import add
from ..errors import InvalidArgumentError

__all__ = ["DirectionKind", "REGISTRY", "register", "unregister", "NORMS", "NORM_WORDS", "norm_word",
           "cli_kinds", "describe"]

#: Normalisations of random directions (``None``: raw Gaussian draws).
NORMS = ("filter", "layer", "model", None)

#: How labels and titles name each normalisation (the one table of these words).
NORM_WORDS: dict[str | None, str] = {"filter": "filter-normalised", "layer": "layer-normalised",
                                     "model": "model-normalised", None: "unnormalised"}


def norm_word(norm: Any) -> str:
    """The adjective for a normalisation (``"filter"`` → ``"filter-normalised"``); ``None`` or the
    string ``"None"`` (as stored in attrs) → ``"unnormalised"``; anything else → ``""``."""
    if norm is None or norm == "None":
        return NORM_WORDS[None]
    return NORM_WORDS.get(norm, "") if isinstance(norm, str) else ""


@dataclass(frozen=True)
class DirectionKind:
    """How one kind of directions is made and shown.

    ``name``: the ``spec["kind"]`` of its Directions and the word ``--directions`` takes. ``label``:
    what a plot title calls such directions (``{norm}`` is replaced by :func:`norm_word` of the
    surface's normalisation). ``factory``: the public function (``lossatlas.directions.<name>``).
    ``needs``: what it is built from — ``"params"`` (θ, a module or a Problem), ``"problem"`` (a
    Problem: derivatives of the loss), ``"models"`` (several parameter points) or ``"trajectory"``.
    ``cli``: ``cli(target, *, dims, norm, ignore, seed, arg)`` making the directions for ``lossatlas
    surface --directions NAME[:ARG]`` (``None``: not offered there); ``cli_usage`` is how the help
    writes it, ``cli_help`` a short phrase, ``cli_options`` the other options it reads, and
    ``takes_argument`` whether it needs ``NAME:ARG``.
    """

    name: str
    label: str
    factory: Callable[..., Any]
    needs: str = "params"
    cli: Callable[..., Any] | None = None
    cli_usage: str = ""
    cli_help: str = ""
    cli_options: tuple[str, ...] = ()
    takes_argument: bool = False

    @property
    def func(self) -> str:
        """The public name its error messages use."""
        return f"directions.{self.name}"

    def describe(self, norm: Any = None) -> str:
        """The plot-title phrase, e.g. ``"filter-normalised random directions"``."""
        return self.label.replace("{norm}", norm_word(norm)).strip()


NEEDS = ("params", "problem", "models", "trajectory")

#: Direction kinds by name, in registration order.
REGISTRY: dict[str, DirectionKind] = {}


def register(kind: DirectionKind, *, replace: bool = False) -> DirectionKind:
    """Add a kind to :data:`REGISTRY` (an existing name is refused unless ``replace=True``)."""
    if isinstance(kind, DirectionKind) and kind.needs not in NEEDS:
        raise InvalidArgumentError(f"directions.register(): argument 'kind' must need one of {NEEDS}; received "
                                   f"{kind.needs!r}")
    return add(REGISTRY, kind, cls=DirectionKind, func="directions.register", arg="kind",
               expected="a DirectionKind", what="a direction kind", replace=replace)


def unregister(name: str) -> None:
    """Remove a kind (for tests and plug-ins that registered one for a while)."""
    REGISTRY.pop(name, None)


def cli_kinds() -> list[DirectionKind]:
    """The kinds ``lossatlas surface --directions`` accepts, in registration order."""
    return [k for k in REGISTRY.values() if k.cli is not None]


def describe(kind: str, attrs: Mapping[str, Any] | None = None) -> str:
    """The plot-title phrase for a surface whose directions are of ``kind`` (``attrs`` gives the
    normalisation as ``direction_norm``); an unknown kind is named as it is."""
    record = REGISTRY.get(kind)
    if record is None:
        return kind
    return record.describe((attrs or {}).get("direction_norm"))
