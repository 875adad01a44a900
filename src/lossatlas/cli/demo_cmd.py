"""``lossatlas demo``: the main job on bundled data."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ._app import app


@app.command()
def demo(out: Path = typer.Option(Path("lossatlas-demo"), "--out", help="Output directory."),
         quick: bool = typer.Option(False, "--quick", help="Smaller grids (for tests)."),
         progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")) -> None:
    """Train a small MLP on scikit-learn digits and draw its filter-normalised 2D loss surface."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from sklearn.datasets import load_digits

    import lossatlas

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    problem = lossatlas.Problem(net, torch.nn.CrossEntropyLoss(), (x, y))
    d = lossatlas.directions.random(problem, n=2, seed=0)
    steps = 15 if quick else 41
    ds = lossatlas.surface(problem, None, d, steps=steps, span=1.0, store=out / "mlp-digits.zarr",
                           overwrite=True, progress=progress)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    cs = ax.contour(ds.x, ds.y, ds.loss.T, levels=20, cmap="viridis")
    ax.clabel(cs, fontsize=7)
    ax.plot(0, 0, "r*", markersize=10)
    ax.set_xlabel(ds.x.attrs["long_name"])
    ax.set_ylabel(ds.y.attrs["long_name"])
    ax.set_title("MLP on digits: cross-entropy loss")
    fig.tight_layout()
    fig.savefig(out / "mlp-digits-contour.png", dpi=120)
    typer.echo(f"wrote {out / 'mlp-digits-contour.png'} and {out / 'mlp-digits.zarr'} "
               f"in {time.perf_counter() - t0:.1f} s")
