"""``lossatlas export-surface``: a stored result as netCDF, VTK (ParaView) or CSV."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import export as E
from .. import open_surface
from ..errors import InvalidArgumentError
from . import _checks
from ._app import app


@app.command("export-surface")
def export_surface(
    store: Path = typer.Argument(..., help="A store written by lossatlas (surface, line, ratio map, interpolation)."),
    fmt: str = typer.Option(None, "--format", help="netcdf | vts | vtu | csv (default: from --out's suffix)."),
    out: Path = typer.Option(None, "--out", help="File to write (default: STORE with the format's suffix)."),
) -> None:
    """Write a stored result to a file other tools open: netCDF (xarray, Panoply), VTK structured grid
    .vts (ParaView; every variable as point data), .vtu (meshio) or CSV (one row per grid point)."""
    from rich.console import Console

    if fmt is not None:
        _checks.choice(fmt, "--format", E.FORMATS)
    if out is None:
        if fmt is None:
            raise InvalidArgumentError("export-surface needs --format or --out FILE (.nc, .vts, .vtu, .csv)")
        suffix = {"netcdf": ".nc", "vts": ".vts", "vtu": ".vtu", "csv": ".csv"}[fmt]
        out = store.with_name(store.name.removesuffix(".zarr") + suffix)
    if fmt is None and out.suffix.lower() not in (".nc", ".nc4", ".netcdf", ".vts", ".vtu", ".csv"):
        raise InvalidArgumentError(f"--out must end in .nc, .vts, .vtu or .csv (or pass --format); received "
                                   f"{str(out)!r}")
    _checks.out_file(out, "--out", None, what="export file")
    fmt = E.format_for(out, fmt)
    ds = open_surface(store)
    path = E.export(ds, out, format=fmt)
    Console(soft_wrap=True).print(f"wrote {path} ({fmt}; variables {', '.join(ds.data_vars)})", markup=False)
