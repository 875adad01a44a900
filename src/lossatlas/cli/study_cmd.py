"""``lossatlas study NAME``: run a registered study (train a family of models, cache them, write one
table and one figure set with shared scales); ``--list`` shows the registry."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from .. import studies
from ..errors import bad_value
from ._app import app


@app.command()
def study(name: str = typer.Argument(None, help="Study name (see --list)."),
          out: Path = typer.Option(None, "--out", help="Output folder (default: studies/NAME)."),
          quick: bool = typer.Option(False, "--quick", help="The quick size (a couple of minutes on 2 cores)."),
          tiny: bool = typer.Option(False, "--tiny", help="A tiny size (seconds; for tests)."),
          list_: bool = typer.Option(False, "--list", help="List the studies and exit.")) -> None:
    """Reproducible experiments over a family of models: depth, skip, width, batch-size, trajectory,
    activation, targets. Rerunning resumes: only missing models are trained."""
    from rich.console import Console

    console = Console()
    if list_:
        for s in studies.REGISTRY.values():
            console.print(f"[bold]{s.name}[/bold]: {s.description}\n    question: {s.question}")
        return
    if name is None:
        raise bad_value("study", "NAME", f"one of {studies.names()} (or --list)", name)
    if name not in studies.REGISTRY:
        raise bad_value("study", "NAME", f"one of {studies.names()}", name)
    if quick and tiny:
        raise bad_value("study", "--tiny", "not together with --quick (choose one size)", True)
    size = "tiny" if tiny else "quick" if quick else "full"
    out = out or Path("studies") / name
    t0 = time.perf_counter()
    result = studies.run_study(name, out, size=size, log=lambda s: console.print(s))
    console.print(studies.markdown_table(result.rows))
    for n in result.notes:
        console.print(f"note: {n}")
    console.print(f"{name} ({size}): {len(result.rows)} models, {len(result.trained)} trained, "
                  f"{len(result.cached)} from cache; wrote table.csv, table.json, summary.md and "
                  f"{len(result.figures)} figures to {out} in {time.perf_counter() - t0:.1f} s")
