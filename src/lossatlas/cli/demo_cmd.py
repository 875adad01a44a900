"""``lossatlas demo``: the main job on bundled data."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from .. import demo as demo_mod
from . import _checks
from ._app import app


@app.command()
def demo(out: Path = typer.Option(Path("lossatlas-demo"), "--out", help="Output directory."),
         quick: bool = typer.Option(False, "--quick", help="Smaller grids (under 30 s; for tests)."),
         progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")) -> None:
    """Why is a network's loss non-convex when MSE/cross-entropy is convex? Pictures and numbers."""
    from rich.console import Console

    _checks.out_dir(out, "--out", what="output folder")
    console = Console()
    t0 = time.perf_counter()
    summary = demo_mod.run(out, quick=quick, progress=progress)
    for sec in summary["sections"]:
        console.print(f"[bold]{sec['example']}[/bold]: {sec['shows']}\n")
    console.print(f"wrote {len(summary['figures'])} figures, summary.md and summary.json to {out} "
                  f"in {time.perf_counter() - t0:.1f} s")
