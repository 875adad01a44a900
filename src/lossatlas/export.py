"""Export a result (a surface, line, ratio map, interpolation…) to files other tools open.

- **netCDF** (``.nc``): ``xarray.Dataset.to_netcdf`` with every variable, coordinate and attribute
  (attributes are kept netCDF-safe, see :mod:`lossatlas._ncattrs`; reopen with
  ``xarray.open_dataset`` and read JSON-valued ones with :func:`lossatlas.attrs`).
- **VTK structured grid** (``.vts``, ParaView/VisIt): the grid's points (x, y, z = the first three
  coordinates, 0 for missing axes) with every variable as point data, written as VTK XML (ASCII).
  In ParaView, "Warp By Scalar" on ``loss`` turns a plane into a 3-D surface.
- **VTK unstructured grid** (``.vtu``) via meshio (``pip install meshio``): the same points and
  point data with line/quad/hexahedron cells.
- **CSV** (``.csv``): one row per grid point, the coordinates then the variables, with a header.

>>> import numpy as np, xarray as xr, tempfile, os
>>> ds = xr.Dataset({"loss": (("x", "y"), np.arange(6.0).reshape(2, 3))}, coords={"x": [0., 1], "y": [0., 1, 2]})
>>> with tempfile.TemporaryDirectory() as d:
...     print(open(export(ds, os.path.join(d, "s.csv"))).read().splitlines()[:2])
['x,y,loss', '0,0,0']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import xarray as xr

from ._ncattrs import make_safe
from .errors import MissingDependencyError, bad_type, bad_value

__all__ = ["export", "FORMATS", "to_netcdf", "to_vts", "to_vtu", "to_csv", "format_for"]

FORMATS = ("netcdf", "vts", "vtu", "csv")
_SUFFIX = {".nc": "netcdf", ".nc4": "netcdf", ".netcdf": "netcdf", ".vts": "vts", ".vtu": "vtu", ".csv": "csv"}


def format_for(path: str | Path, fmt: str | None = None, *, func: str = "export") -> str:
    """The format named, or the one the file's suffix implies."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise bad_value(func, "format", f"one of {FORMATS}", fmt)
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX:
        raise bad_value(func, "path", f"a file ending in one of {sorted(_SUFFIX)} (or pass format=)", str(path))
    return _SUFFIX[suffix]


def _grid(ds: xr.Dataset, func: str) -> tuple[tuple[str, ...], list[str]]:
    if not isinstance(ds, xr.Dataset):
        raise bad_type(func, "ds", "an xarray.Dataset (a lossatlas result)", ds)
    variables = [v for v in ds.data_vars if ds[v].ndim > 0]
    if not variables:
        raise bad_value(func, "ds", "a Dataset with at least one gridded variable", "none")
    dims = ds[variables[0]].dims
    variables = [v for v in variables if ds[v].dims == dims]
    return tuple(dims), variables


def to_netcdf(ds: xr.Dataset, path: str | Path, *, engine: str | None = None) -> Path:
    """Write ``ds`` as netCDF (the engine xarray picks: netCDF4, h5netcdf or scipy's netCDF3)."""
    path = Path(path)
    out = make_safe(ds.copy())
    out.to_netcdf(path, engine=engine)
    return path


def to_csv(ds: xr.Dataset, path: str | Path) -> Path:
    """One row per grid point: the coordinates, then every variable on the grid."""
    dims, variables = _grid(ds, "to_csv")
    path = Path(path)
    frame = ds[variables].to_dataframe().reset_index()
    frame = frame[[*dims, *variables]]
    frame.to_csv(path, index=False, float_format="%.17g")
    return path


def _points(ds: xr.Dataset, dims: tuple[str, ...], func: str) -> tuple[np.ndarray, tuple[int, ...]]:
    if len(dims) > 3:
        raise bad_value(func, "ds", "a result on 1 to 3 axes (VTK grids are at most 3-D)", f"{len(dims)} axes")
    axes = [np.asarray(ds[d].values, dtype=np.float64) for d in dims]
    shape = tuple(len(a) for a in axes) + (1,) * (3 - len(axes))
    while len(axes) < 3:
        axes.append(np.zeros(1))
    mesh = np.meshgrid(*axes, indexing="ij")  # VTK order: the first axis varies fastest
    pts = np.stack([m.ravel(order="F") for m in mesh], axis=1)
    return pts, shape


def _values(ds: xr.Dataset, v: str) -> np.ndarray:
    a = np.asarray(ds[v].values, dtype=np.float64)
    return a.reshape(a.shape + (1,) * (3 - a.ndim)).ravel(order="F")


def to_vts(ds: xr.Dataset, path: str | Path) -> Path:
    """A VTK XML structured grid with every variable as point data (ASCII, NaN written as ``nan``)."""
    dims, variables = _grid(ds, "to_vts")
    pts, shape = _points(ds, dims, "to_vts")
    extent = " ".join(f"0 {n - 1}" for n in shape)

    def number(x: float) -> str:
        return repr(x) if np.isfinite(x) else ("NaN" if np.isnan(x) else ("Infinity" if x > 0 else "-Infinity"))

    def numbers(a: np.ndarray) -> str:
        return " ".join(number(float(x)) for x in a.ravel())

    lines = ['<?xml version="1.0"?>',
             '<VTKFile type="StructuredGrid" version="1.0" byte_order="LittleEndian">',
             f'  <StructuredGrid WholeExtent="{extent}">',
             f'    <Piece Extent="{extent}">',
             f'      <PointData Scalars={quoteattr(variables[0])}>']
    for v in variables:
        lines.append(f'        <DataArray type="Float64" Name={quoteattr(v)} format="ascii">{numbers(_values(ds, v))}'
                     '</DataArray>')
    lines += ['      </PointData>', '      <Points>',
              f'        <DataArray type="Float64" NumberOfComponents="3" format="ascii">{numbers(pts)}</DataArray>',
              '      </Points>', '    </Piece>', '  </StructuredGrid>', '</VTKFile>', '']
    path = Path(path)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def to_vtu(ds: xr.Dataset, path: str | Path) -> Path:
    """The grid as a VTK unstructured grid (meshio): points, line/quad/hexahedron cells, point data."""
    try:
        import meshio
    except ImportError:
        raise MissingDependencyError("to_vtu() needs meshio: pip install meshio (or write .vts, which needs "
                                   "nothing)") from None
    dims, variables = _grid(ds, "to_vtu")
    pts, shape = _points(ds, dims, "to_vtu")
    nx, ny, nz = shape
    idx = np.arange(nx * ny * nz).reshape((nx, ny, nz), order="F")
    if len(dims) == 1:
        cells = [("line", np.stack([idx[:-1, 0, 0], idx[1:, 0, 0]], axis=1))]
    elif len(dims) == 2:
        i = idx[:, :, 0]
        cells = [("quad", np.stack([i[:-1, :-1], i[1:, :-1], i[1:, 1:], i[:-1, 1:]], axis=-1).reshape(-1, 4))]
    else:
        c = [idx[:-1, :-1, :-1], idx[1:, :-1, :-1], idx[1:, 1:, :-1], idx[:-1, 1:, :-1],
             idx[:-1, :-1, 1:], idx[1:, :-1, 1:], idx[1:, 1:, 1:], idx[:-1, 1:, 1:]]
        cells = [("hexahedron", np.stack(c, axis=-1).reshape(-1, 8))]
    mesh = meshio.Mesh(pts, cells, point_data={v: _values(ds, v) for v in variables})
    path = Path(path)
    meshio.write(path, mesh, file_format="vtu")
    return path


_WRITERS: dict[str, Any] = {"netcdf": to_netcdf, "vts": to_vts, "vtu": to_vtu, "csv": to_csv}


def export(ds: xr.Dataset, path: str | Path, *, format: str | None = None) -> Path:
    """Write ``ds`` to ``path`` in ``format`` (``"netcdf"``, ``"vts"``, ``"vtu"``, ``"csv"``; default:
    from the suffix — ``.nc``, ``.vts``, ``.vtu``, ``.csv``). Returns the path written."""
    if not isinstance(path, (str, Path)):
        raise bad_type("export", "path", "a file path (str or pathlib.Path)", path)
    fmt = format_for(path, format)
    _grid(ds, "export")
    return _WRITERS[fmt](ds, path)
