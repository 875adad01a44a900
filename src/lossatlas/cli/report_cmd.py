"""``lossatlas report``: one offline HTML page for one or several targets (see :mod:`lossatlas.report`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from ..errors import InvalidArgumentError, StoreError
from ..report import SECTIONS
from ..report import report as make_report
from ._app import app
from ._app import console as _console


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
    hessian_audit: bool = typer.Option(None, "--hessian-audit/--no-hessian-audit", help="Let the audit search "
                                       "for a float64 negative-curvature certificate (default: only below 1,000 "
                                       "parameters, where it is quick)."),
    checkpoint: list[str] = typer.Option(None, "--checkpoint", help="A state_dict file giving a target's θ (its "
                                         "whole state: BatchNorm statistics too). Repeat it once per TARGET, in "
                                         "order; '-' for a target without one."),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Progress bars while computing."),
) -> None:
    """Write one self-contained offline HTML page: the convexity verdict and its certificate, why (the
    Gauss–Newton split), 1-D slices, a 2-D plane (contours; 3-D, static and rotatable), Hessian extremes, trace
    and density, and provenance. Every number is read from the stored results beside the page."""
    if section:
        unknown = [s for s in section if s not in SECTIONS]
        if unknown:
            raise typer.BadParameter(f"--section must be among {', '.join(SECTIONS)}; received {unknown[0]!r}")
    settings = {k: v for k, v in {"steps": steps, "span": span, "audit_budget": budget, "seed": seed}.items()
                if v is not None}
    if hessian_audit is not None:
        settings["audit_hessian_max_params"] = 10**12 if hessian_audit else 0
    checkpoints = None
    if checkpoint:
        if len(checkpoint) != len(targets):
            raise InvalidArgumentError(f"--checkpoint must be given once per TARGET, in order ({len(targets)} "
                                       f"target{'s' if len(targets) != 1 else ''}; '-' for one without); received "
                                       f"{len(checkpoint)}: {', '.join(checkpoint)}")
        checkpoints = [None if c == "-" else Path(c) for c in checkpoint]
        for c in checkpoints:
            if c is not None and not c.is_file():
                raise InvalidArgumentError(f"--checkpoint {str(c)!r} does not exist")
    t0 = time.perf_counter()
    path = make_report(targets, out=out, sections=section or None, settings=settings, progress=progress,
                       checkpoints=checkpoints)
    size = path.stat().st_size / 1e6
    typer.echo(f"wrote {path} ({size:.1f} MB) in {time.perf_counter() - t0:.1f} s; results in "
               f"{path.with_name(path.stem + '_files')}/")


def info_json(path: Path) -> None:
    """``lossatlas info`` of a report's JSON result (audit.json, curvature.json, provenance.json): every
    number and short text in it, one row per field (long arrays summarised)."""
    from rich.table import Table

    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"info: argument 'STORE' must be a store or a JSON result written by lossatlas; "
                         f"received {str(path)!r} ({exc})") from None
    table = Table(title=str(path))
    table.add_column("field", style="bold")
    table.add_column("value")

    def walk(prefix: str, v) -> None:
        if isinstance(v, dict):
            for k, item in v.items():
                if k != "key":
                    walk(f"{prefix}.{k}" if prefix else str(k), item)
        elif isinstance(v, list) and len(v) > 8 and all(isinstance(x, (int, float)) or x is None for x in v):
            nums = [x for x in v if x is not None]
            table.add_row(prefix, f"{len(v)} values in [{min(nums):.6g}, {max(nums):.6g}]" if nums
                          else f"{len(v)} values")
        elif isinstance(v, list):
            for i, item in enumerate(v):
                walk(f"{prefix}.{i}", item)
        else:
            table.add_row(prefix, repr(v) if isinstance(v, float) else str(v))
    walk("", value)
    _console().print(table)
