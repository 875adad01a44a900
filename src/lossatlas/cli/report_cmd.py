"""``lossatlas report``: one offline HTML page for one or several targets (see :mod:`lossatlas.report`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app


@app.command()
def report(
    targets: list[str] = typer.Argument(..., help="Example names or path/to/file.py:function (several: side by "
                                        "side on shared scales)."),
    out: Path = typer.Option(Path("report.html"), "--out", help="The page to write; its results go to "
                             "<stem>_files/ beside it and are reused when the command is run again."),
    steps: int = typer.Option(None, "--steps", min=3, help="Points per axis of the 2-D plane (default 15)."),
    span: float = typer.Option(None, "--span", min=0.0, help="Half-width of the plane and slices in units of the "
                               "directions (default 1)."),
    budget: int = typer.Option(None, "--budget", min=20, help="Loss evaluations of the audit's Jensen search "
                               "(default 40)."),
    seed: int = typer.Option(None, "--seed", min=0, help="Seed of the directions, the audit and the probes."),
    section: list[str] = typer.Option(None, "--section", help="Only these sections (repeat the option); "
                                      "default: all."),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Progress bars while computing."),
) -> None:
    """Write one self-contained offline HTML page: the convexity verdict and its certificate, why (the
    Gauss–Newton split), 1-D slices, a 2-D plane (contours, rotatable 3-D), Hessian extremes, trace
    and density, and provenance. Every number is read from the stored results beside the page."""
    import time

    from ..report import SECTIONS
    from ..report import report as make_report

    if section:
        unknown = [s for s in section if s not in SECTIONS]
        if unknown:
            raise typer.BadParameter(f"--section must be among {', '.join(SECTIONS)}; received {unknown[0]!r}")
    settings = {k: v for k, v in {"steps": steps, "span": span, "audit_budget": budget, "seed": seed}.items()
                if v is not None}
    t0 = time.perf_counter()
    path = make_report(targets, out=out, sections=section or None, settings=settings, progress=progress)
    size = path.stat().st_size / 1e6
    typer.echo(f"wrote {path} ({size:.1f} MB) in {time.perf_counter() - t0:.1f} s; results in "
               f"{path.with_name(path.stem + '_files')}/")
