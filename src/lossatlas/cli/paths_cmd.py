"""``lossatlas interpolate | trajectory | connect``: paths between models, from the command line.

A and B are checkpoint files (``state_dict``s, or dicts holding one under ``"state_dict"``/
``"model"``) of TARGET's model; TARGET gives the problem (see ``lossatlas.cli._target``).
Each command writes its stores (zarr, reopenable) and figures (PNG) to ``--out`` and prints a
short summary.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from .. import align, connect, interpolate, surface
from ..directions import Directions, pca
from ..errors import InvalidArgumentError
from ..params import to
from ..paths import with_bn
from ..plot.paths import interpolation, line_vs_curve, path_on_plane
from ..store import GridStore
from ..surface import open_directions
from ..trajectory import Trajectory, load_state, project
from . import _checks
from ._app import app
from ._app import console


def _console():
    return console(soft_wrap=True)
from ._target import _center_from_checkpoint, checkpoint_note, problem_from_checkpoint, resolve

_OUT = typer.Option(None, "--out", help="Output directory (default: lossatlas-<command>).")
_DTYPE = typer.Option(None, "--dtype", help="Evaluate in this dtype (float32, float64).")
_DEVICE = typer.Option(None, "--device", help="Device, e.g. cpu or cuda.")
_BN = typer.Option(None, "--bn", help="BatchNorm statistics: eval (stored) or recalibrate (at every point).")
_PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
_ALLOW_LARGE = typer.Option(False, "--allow-large", help="Run a grid of more than 10⁷ points (refused otherwise, "
                                 "with its estimated memory and time).")


def _table(title: str, rows: list[tuple[str, Any]]):
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold", overflow="fold")
    table.add_column(overflow="fold")
    for k, v in rows:
        table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    return table


def _agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _check_common(out: Path, bn: str | None) -> None:
    """The options every path command shares, checked before the target is loaded."""
    if bn is not None:
        _checks.choice(bn, "--bn", ("eval", "recalibrate"))
    _checks.out_dir(out, "--out", what="output folder")


def _endpoints(target, a: Path, b: Path):
    return _center_from_checkpoint(a, target.problem), _center_from_checkpoint(b, target.problem)


def _aligned(target, a: Path, b: Path, out: Path):
    """Align B's units to A's (weight matching); write the aligned state_dict; return its params."""
    problem = target.problem
    result = align(load_state(a), load_state(b), problem)
    torch.save(result.params, out / "b-aligned.pt")
    params = {n: result.params[n].to(dtype=problem.dtype, device=problem.device) for n in problem.param_names}
    return params, result


@app.command("interpolate")
def interpolate_cmd(
    target: str = typer.Argument(..., help="Example name or path/to/file.py:function."),
    a: Path = typer.Argument(..., help="Checkpoint of model a (t = 0)."),
    b: Path = typer.Argument(..., help="Checkpoint of model b (t = 1)."),
    steps: int = typer.Option(101, "--steps", min=2, help="Number of values of t."),
    t_from: float = typer.Option(0.0, "--from", help="First t (<= 0)."),
    t_to: float = typer.Option(1.0, "--to", help="Last t (>= 1)."),
    align_b: bool = typer.Option(False, "--align", help="Also interpolate to B aligned to A (weight matching)."),
    bn: str = _BN, out: Path = _OUT, dtype: str = _DTYPE, device: str = _DEVICE, progress: bool = _PROGRESS,
) -> None:
    """Loss along the straight line from A to B: barrier height, monotonicity (MLI), figure."""
    t0 = time.perf_counter()
    out = out or Path("lossatlas-interpolate")
    _checks.finite(t_from, "--from")
    _checks.finite(t_to, "--to")
    if not (t_from <= 0.0 and t_to >= 1.0):
        raise InvalidArgumentError(f"--from must be <= 0 and --to >= 1; received --from {t_from:g} and --to {t_to:g}")
    _check_common(out, bn)
    tgt = resolve(target, dtype=dtype, device=device)
    pa, pb = _endpoints(tgt, a, b)
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(steps=steps, extend=(t_from, t_to), bn=bn, progress=progress, overwrite=True)
    line = interpolate(tgt.problem, pa, pb, store=out / "interpolation.zarr", **kw)
    datasets, labels = [line], ["A → B"]
    rows = [("loss at A", line.attrs["loss_a"]), ("loss at B", line.attrs["loss_b"]),
            ("barrier", line.attrs["barrier"]), ("barrier at t", line.attrs["barrier_t"]),
            ("barrier above the chord", line.attrs["barrier_linear"]),
            ("monotone (MLI)", "yes" if line.attrs["mli"] else f"no (largest bump {line.attrs['largest_bump']:.3g})"),
            ("‖B − A‖", line.attrs["distance"])]
    if align_b:
        pb_aligned, result = _aligned(tgt, a, b, out)
        aligned = interpolate(tgt.problem, pa, pb_aligned, store=out / "interpolation-aligned.zarr", **kw)
        datasets.append(aligned)
        labels.append("A → B aligned")
        rows += [("barrier after alignment", aligned.attrs["barrier"]),
                 ("‖B − A‖ after alignment", aligned.attrs["distance"])]
    plt = _agg()
    fig = interpolation(*datasets, labels=labels)
    fig.savefig(out / "interpolation.png", dpi=120)
    plt.close(fig)
    console = _console()
    console.print(_table(f"interpolation {tgt.name}: {a.name} → {b.name}", rows))
    if tgt.problem.has_batchnorm and (bn or tgt.problem.bn) == "eval":
        console.print("note: A and B are parameters only; BatchNorm used the TARGET model's running statistics "
                      "at every t (not A's or B's): pass --bn recalibrate to recompute them at each point")
    console.print(f"wrote {out / 'interpolation.zarr'} and {out / 'interpolation.png'} "
                  f"in {time.perf_counter() - t0:.1f} s")


@app.command("trajectory")
def trajectory_cmd(
    target: str = typer.Argument(..., help="Example name or path/to/file.py:function."),
    checkpoints_arg: Path = typer.Argument(None, metavar="CHECKPOINTS",
                                           help="Directory of checkpoints (or --checkpoints DIR)."),
    checkpoints: Path = typer.Option(None, "--checkpoints", help="Directory of checkpoints (a recording or *.pt)."),
    steps: int = typer.Option(31, "--steps", min=1, help="Grid points per axis of the plane."),
    margin: float = typer.Option(0.25, "--margin", help="Extra span around the path (fraction of its extent)."),
    directions: Path = typer.Option(None, "--directions", help="Reuse a plane: a surface store written by this "
                                    "command (same centre and directions) or saved Directions."),
    bn: str = _BN, out: Path = _OUT, dtype: str = _DTYPE, device: str = _DEVICE, progress: bool = _PROGRESS,
    allow_large: bool = _ALLOW_LARGE,
) -> None:
    """A training trajectory on the plane of its first two principal components (Li et al. 2018)."""
    t0 = time.perf_counter()
    out = out or Path("lossatlas-trajectory")
    if checkpoints_arg is not None and checkpoints is not None and checkpoints_arg != checkpoints:
        raise InvalidArgumentError(f"CHECKPOINTS and --checkpoints name different folders; received "
                                   f"{str(checkpoints_arg)!r} and {str(checkpoints)!r} (give one)")
    checkpoints = checkpoints or checkpoints_arg
    if checkpoints is None:
        raise InvalidArgumentError("trajectory needs its checkpoints: CHECKPOINTS or --checkpoints DIR (a folder "
                                   "of checkpoints or a recording); received neither")
    if not math.isfinite(margin) or margin < 0:
        raise InvalidArgumentError(f"--margin must be a finite number >= 0; received {margin}")
    _check_common(out, bn)
    tgt = resolve(target, dtype=dtype, device=device)
    traj = Trajectory.open(checkpoints)
    # the last checkpoint's whole state (buffers such as BatchNorm statistics, frozen parameters):
    # the plane is drawn around the model as trained, not around its parameters in the TARGET's model
    final_file = traj._items[-1]
    source = Path(final_file) if isinstance(final_file, Path) else Path(f"checkpoint {len(traj) - 1}")
    problem, final, tgt.info["checkpoint"] = problem_from_checkpoint(
        source, tgt.problem, option="--checkpoints", state=traj.state(-1))
    tgt.problem, tgt.center = problem, final
    if directions is not None:
        if GridStore.exists(directions):
            center, d = open_directions(directions)
            center, d = to(center, dtype=problem.dtype, device=problem.device), d.to(dtype=problem.dtype,
                                                                                    device=problem.device)
        else:
            center, d = final, Directions.load(directions).to(dtype=problem.dtype, device=problem.device)
    else:
        center, d = final, pca(traj, n=2, like=problem)
    if len(d) != 2:
        raise InvalidArgumentError(f"--directions must hold 2 directions (a plane); received {len(d)}")
    problem.check_params(center, func="trajectory", arg="center")
    path = project(traj, d, center)
    span = [_span_with_zero(float(path[v].min()), float(path[v].max()), margin, steps) for v in ("x", "y")]
    out.mkdir(parents=True, exist_ok=True)
    ds = surface(with_bn(problem, bn), center, d, steps=steps, span=span, store=out / "trajectory-plane.zarr",
                 overwrite=True, progress=progress, allow_large=allow_large)
    path.to_zarr(out / "trajectory-path.zarr", mode="w", consolidated=False)
    plt = _agg()
    ratios = d.spec.get("explained_variance_ratio")
    fig = path_on_plane(ds, path, anchors={"final": (0.0, 0.0)},
                        title="training trajectory" + (f" (PCA: {100 * sum(ratios):.1f}% of variance)" if ratios
                                                       else ""))
    fig.savefig(out / "trajectory.png", dpi=120)
    plt.close(fig)
    rows = [("checkpoints", len(traj)), ("steps", f"{int(traj.steps[0])} … {int(traj.steps[-1])}")]
    if ratios:
        rows.append(("explained variance", ", ".join(f"PC{i + 1} {100 * r:.1f}%" for i, r in enumerate(ratios))))
    rows += [("largest relative residual", float(np.max(path.relative_residual.values))),
             ("loss at the plane's centre", problem.loss(center))]
    console = _console()
    console.print(_table(f"trajectory of {tgt.name} ({checkpoints})", rows))
    if directions is None or center is final:
        console.print(f"centre: the last checkpoint ({checkpoint_note(tgt.info['checkpoint'])})")
    console.print(f"wrote {out / 'trajectory-plane.zarr'} and {out / 'trajectory.png'} "
                  f"in {time.perf_counter() - t0:.1f} s")


def _span_with_zero(lo: float, hi: float, margin: float, steps: int) -> tuple[float, float]:
    """An axis range covering [lo, hi] ∪ {0} padded by ``margin`` of its extent, on which 0 (the
    plane's centre θ_n) is exactly one of ``steps`` evenly spaced points (``steps`` ≥ 3)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = margin * max(hi - lo, 1e-3)
    lo, hi = lo - pad, hi + pad
    if hi - lo < 1e-3:  # a path that does not move (and no margin): a small plane around θ_n
        lo, hi = lo - 5e-4, hi + 5e-4
    if steps < 3:
        return lo, hi
    # one step of slack, so that shifting the axis onto 0 keeps [lo, hi] covered; widened by a few ulps so that
    # rounding in (steps - 1 - k)·h cannot end the axis just below hi (lo = −1e-300, hi = 1, 51 steps did)
    h = (hi - lo) / (steps - 2) * (1.0 + 1e-12)
    k = math.ceil(-lo / h)  # 0 is the k-th point: -k·h <= lo and (steps - 1 - k)·h >= hi
    return -k * h + 0.0, (steps - 1 - k) * h


@app.command("connect")
def connect_cmd(
    target: str = typer.Argument(..., help="Example name or path/to/file.py:function."),
    a: Path = typer.Argument(..., help="Checkpoint of model a (t = 0)."),
    b: Path = typer.Argument(..., help="Checkpoint of model b (t = 1)."),
    curve: str = typer.Option("bezier", "--curve", help="bezier or polychain."),
    bends: int = typer.Option(1, "--bends", min=1, help="Number of trainable bends."),
    train_steps: int = typer.Option(600, "--train-steps", min=1, help="Optimiser steps."),
    lr: float = typer.Option(0.01, "--lr", help="Adam learning rate (cosine decay)."),
    batch_size: int = typer.Option(128, "--batch-size", min=0, help="Samples per step (0: the problem's batches)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="Seed of the t draws and mini-batches."),
    steps: int = typer.Option(61, "--steps", min=2, help="Values of t at which line and curve are evaluated."),
    plane_steps: int = typer.Option(21, "--plane-steps", min=0, help="Grid points per axis of the plane through A, B "
                                    "and the bend (0: skip)."),
    align_b: bool = typer.Option(False, "--align", help="Align B's units to A's first (weight matching)."),
    bn: str = _BN, out: Path = _OUT, dtype: str = _DTYPE, device: str = _DEVICE, progress: bool = _PROGRESS,
    allow_large: bool = _ALLOW_LARGE,
) -> None:
    """Train a low-loss curve from A to B (Garipov et al. 2018) and compare it with the straight line."""
    t0 = time.perf_counter()
    out = out or Path("lossatlas-connect")
    _check_common(out, bn)  # --curve, --lr, --bends: checked by connect() before it trains
    tgt = resolve(target, dtype=dtype, device=device)
    problem = tgt.problem
    pa, pb = _endpoints(tgt, a, b)
    out.mkdir(parents=True, exist_ok=True)
    if align_b:
        pb, _ = _aligned(tgt, a, b, out)
    c = connect(problem, pa, pb, curve=curve, bends=bends, iters=train_steps, lr=lr,
                batch_size=batch_size or None, seed=seed, progress=progress)
    c.save(out / "curve.pt")
    eval_bn = bn if bn is not None else ("recalibrate" if problem.has_batchnorm else None)
    line = interpolate(problem, pa, pb, steps=steps, bn=eval_bn, store=out / "line.zarr", overwrite=True,
                       progress=progress)
    along = c.evaluate(steps, bn=eval_bn, progress=progress)
    along.to_zarr(out / "curve.zarr", mode="w", consolidated=False)
    plt = _agg()
    fig = line_vs_curve(line, along)
    fig.savefig(out / "line-vs-curve.png", dpi=120)
    plt.close(fig)
    if plane_steps > 0:
        d = c.plane(orthogonal=True)
        anchors = {"a": tuple(d.spec["anchors"]["a"]), "b": tuple(d.spec["anchors"]["b"]),
                   "bend": tuple(d.spec["anchors"]["c"])}
        path = c.project(d, pa, steps=steps)
        xs = [p[0] for p in anchors.values()] + list(path.x.values)
        ys = [p[1] for p in anchors.values()] + list(path.y.values)
        span = [(min(xs) - 0.2 * (max(xs) - min(xs)), max(xs) + 0.2 * (max(xs) - min(xs))),
                (min(ys) - 0.3 * (max(ys) - min(ys) or 1.0), max(ys) + 0.3 * (max(ys) - min(ys) or 1.0))]
        plane = surface(with_bn(problem, eval_bn), pa, d, steps=plane_steps, span=span,
                        store=out / "curve-plane.zarr", overwrite=True, progress=progress,
                        allow_large=allow_large)
        fig = path_on_plane(plane, path, anchors=anchors, annotate=None,
                            title=f"plane through a, b and the bend ({c.kind})")
        fig.savefig(out / "curve-plane.png", dpi=120)
        plt.close(fig)
    rows = [("curve", f"{c.kind}, {len(c.bends)} bend(s), {train_steps} steps in {c.info['seconds']:.1f} s"),
            ("loss at A / B", f"{line.attrs['loss_a']:.4g} / {line.attrs['loss_b']:.4g}"),
            ("line: max loss, barrier", f"{line.attrs['max_loss']:.4g}, {line.attrs['barrier']:.4g}"),
            ("curve: max loss, barrier", f"{along.attrs['max_loss']:.4g}, {along.attrs['barrier']:.4g}"),
            ("curve length / ‖B − A‖", along.attrs["length"] / max(along.attrs["distance"], 1e-300))]
    console = _console()
    console.print(_table(f"connect {tgt.name}: {a.name} → {b.name}", rows))
    console.print(f"wrote {out / 'curve.pt'}, {out / 'line-vs-curve.png'} in {time.perf_counter() - t0:.1f} s")
