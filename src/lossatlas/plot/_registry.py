"""Plot kinds: one small record per kind, read by the CLI (``lossatlas plot --kind``,
``lossatlas surface --plot``) and the docs; adding a kind is one function and one :func:`register`.

Recipe (docs/architecture.md, "Add a plot kind"):

1. write the drawing function in a ``lossatlas/plot/`` module: ``draw(ds, variable, *, log, vmin, vmax,
   levels)`` returning a matplotlib figure (``interactive=True``: a plotly figure);
2. ``register(PlotKind("<name>", "<label>", draw, ndim=...))`` at the end of this module (or of yours);
3. the contract test ``tests/test_plot_registry.py`` draws every registered kind on a small surface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._records import add
from ..errors import InvalidArgumentError
from .interactive import interactive
from .surface import contour, heatmap, line, surface3d

__all__ = ["PlotKind", "REGISTRY", "register", "unregister", "names", "get", "default_for"]


@dataclass(frozen=True)
class PlotKind:
    """``name`` (the ``--kind`` value), ``label`` (help text), ``draw(ds, variable, *, log, vmin, vmax,
    levels)`` → figure, ``ndim``: the result dimensions it draws (``None``: any), ``interactive``: a plotly
    figure written as ``.html`` (else matplotlib: ``.png/.pdf/.svg``)."""

    name: str
    label: str
    draw: Callable[..., Any]
    ndim: int | None = 2
    interactive: bool = False

    @property
    def suffixes(self) -> tuple[str, ...]:
        return (".html", ".htm") if self.interactive else (".png", ".pdf", ".svg")


REGISTRY: dict[str, PlotKind] = {}


def register(kind: PlotKind, *, replace: bool = False) -> PlotKind:
    """Add a kind to :data:`REGISTRY` (an existing name is refused unless ``replace=True``)."""
    return add(REGISTRY, kind, cls=PlotKind, func="plot.register", arg="kind", expected="a PlotKind",
               what="a plot kind", replace=replace)


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str, option: str = "--kind") -> PlotKind:
    if name not in REGISTRY:
        raise InvalidArgumentError(f"{option} must be one of {', '.join(REGISTRY)}; received {name!r}")
    return REGISTRY[name]


def default_for(ndim: int, suffix: str = "") -> PlotKind:
    """The kind drawn when none is named: interactive for ``.html``, a line for 1-D, contours for 2-D."""
    if suffix.lower() in (".html", ".htm"):
        return REGISTRY["html"]
    return REGISTRY["line" if ndim == 1 else "contour"]


def _line(ds, variable, *, log, vmin, vmax, levels):
    return line(ds, variable, log=log, vmin=vmin, vmax=vmax)


def _contour(ds, variable, *, log, vmin, vmax, levels):
    return contour(ds, variable, log=log, vmin=vmin, vmax=vmax, levels=levels)


def _filled(ds, variable, *, log, vmin, vmax, levels):
    return contour(ds, variable, filled=True, log=log, vmin=vmin, vmax=vmax, levels=levels)


def _heatmap(ds, variable, *, log, vmin, vmax, levels):
    return heatmap(ds, variable, log=log, vmin=vmin, vmax=vmax)


def _surface3d(ds, variable, *, log, vmin, vmax, levels):
    return surface3d(ds, variable, log=log, vmin=vmin, vmax=vmax)


def _html(ds, variable, *, log, vmin, vmax, levels):
    return interactive(ds, variable, vmax=vmax, log=log)


register(PlotKind("line", "a 1-D slice", _line, ndim=1))
register(PlotKind("contour", "contour lines of a plane", _contour))
register(PlotKind("filled", "filled contours of a plane", _filled))
register(PlotKind("heatmap", "a plane as an image", _heatmap))
register(PlotKind("surface3d", "a plane as a 3-D surface", _surface3d))
register(PlotKind("html", "an interactive 3-D page (plotly)", _html, ndim=None, interactive=True))
