"""Figures of lossatlas results.

Static (matplotlib, each returns a ``Figure``): :func:`line`, :func:`contour`, :func:`heatmap`,
:func:`surface3d`; :func:`save` writes PNG/PDF/SVG. Interactive (plotly): :func:`interactive`,
:func:`save_html`. Paths between models: :func:`interpolation`, :func:`line_vs_curve`,
:func:`path_on_plane`. Curvature: :func:`density` (spectral density), :func:`ratio_map`
(|λmin/λmax| over a plane), :func:`per_layer` (trace and λmax of each block, with error bars) and
:func:`edge_of_stability` (λmax along training against 2/η).
Several results on shared scales: :func:`grid` (shared contour levels, colour range and axes) and
:func:`lines` (several slices on one axes; also ``line([ds1, ds2])``).
"""

from .curvature import density, ratio_map
from .grid import grid, lines
from .interactive import interactive, save_html
from .per_layer import per_layer
from .paths import interpolation, line_vs_curve, path_coordinates, path_on_plane
from .stability import edge_of_stability
from .surface import contour, heatmap, line, save, surface3d

__all__ = ["line", "contour", "heatmap", "surface3d", "save", "interactive", "save_html", "interpolation",
           "line_vs_curve", "path_on_plane", "path_coordinates", "density", "ratio_map",
           "per_layer", "grid", "lines", "edge_of_stability"]
