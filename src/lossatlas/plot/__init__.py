"""Figures of lossatlas results.

Static (matplotlib, each returns a ``Figure``): :func:`line`, :func:`contour`, :func:`heatmap`,
:func:`surface3d`; :func:`save` writes PNG/PDF/SVG. Interactive (plotly): :func:`interactive`,
:func:`save_html`.
"""

from .interactive import interactive, save_html
from .surface import contour, heatmap, line, save, surface3d

__all__ = ["line", "contour", "heatmap", "surface3d", "save", "interactive", "save_html"]
