"""``lossatlas hessian`` and ``lossatlas ratio-map``: curvature of a target at its centre and over a plane."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from .. import curvature
from ..curvature import _registry as estimators
from ..errors import InvalidArgumentError
from ..plot.curvature import density as plot_density
from ..plot.curvature import ratio_map as plot_ratio_map
from ..plot.per_layer import per_layer as plot_per_layer
from . import _checks
from ._app import app
from ._target import centre_line, resolve


def _selection(params: str | None):
    if params is None:
        return None
    items = [p.strip() for p in params.split(",") if p.strip()]
    return items[0] if len(items) == 1 else items


def _figure_out(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def _matrix_help() -> str:
    return "The curvature matrix: " + "; ".join(f"{r.name} ({r.description})" for r in estimators.cli_matrices()) \
        + " (default: hessian)."


def _matrix(matrix: str | None, ggn: bool, per_layer: bool) -> estimators.CurvatureEstimator:
    """The record of ``--matrix`` (``--ggn`` is short for ``--matrix ggn``), checked before any work."""
    names = [r.name for r in estimators.cli_matrices()]
    if ggn and matrix not in (None, "ggn"):
        raise InvalidArgumentError(f"--ggn is short for --matrix ggn; received --ggn with --matrix {matrix}")
    name = "ggn" if ggn else (matrix or "hessian")
    if name not in names:
        raise InvalidArgumentError(f"--matrix must be one of {', '.join(names)}; received {name!r}")
    layers = estimators.REGISTRY["per_layer"]
    if per_layer and not layers.accepts(name):
        raise InvalidArgumentError(f"--per-layer needs --matrix {' or '.join(layers.matrices)}; received "
                                   f"--matrix {name}")
    return estimators.REGISTRY[name]


@app.command()
def hessian(target: str = typer.Argument(..., help="Example name or path/to/file.py:function."),
            k: int = typer.Option(3, "--k", min=1, help="Eigenvalues at each end of the spectrum."),
            tol: float = typer.Option(1e-4, "--tol", help="Convergence: residual ≤ tol · max|λ|."),
            seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="Seed of the Lanczos start vector and of the probes."),
            trace_probes: int = typer.Option(99, "--trace-probes", min=1, help="Products for the Hutch++ trace."),
            density_iters: int = typer.Option(90, "--density-iters", min=1, help="Lanczos steps per density probe."),
            density_probes: int = typer.Option(8, "--density-probes", min=1, help="Random probes of the density."),
            density_plot: Path | None = typer.Option(None, "--density-plot", help="Write the density figure here."),
            params: str | None = typer.Option(None, "--params", help="Parameters: 'weights', a layer, names or "
                                              "glob patterns separated by commas (default: all)."),
            matrix: str | None = typer.Option(None, "--matrix", help=_matrix_help()),
            ggn: bool = typer.Option(False, "--ggn", help="Short for --matrix ggn."),
            checkpoint: Path | None = typer.Option(None, "--checkpoint", help="A state_dict for the centre."),
            dtype: str | None = typer.Option(None, "--dtype", help="float32 or float64."),
            device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1, …"),
            per_layer: bool = typer.Option(False, "--per-layer", help="Also a table of each layer's (module's) "
                                           "restricted Hessian H_bb: trace ± stderr (Hutchinson) and λmax ± error."),
            per_layer_probes: int = typer.Option(30, "--per-layer-probes", help="Hutchinson probes per layer."),
            per_layer_plot: Path | None = typer.Option(None, "--per-layer-plot", help="Write the per-layer bar "
                                                       "chart here (implies --per-layer)."),
            progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")) -> None:
    """Extreme Hessian eigenvalues (with errors), trace and eigenvalue density at the target's centre
    (or of another curvature matrix: --matrix); with --per-layer, the trace and λmax of each layer's block."""
    from rich.console import Console

    _checks.positive(tol, "--tol")
    _checks.out_file(density_plot, "--density-plot", _checks.FIGURE_SUFFIXES, what="figure file")
    record = _matrix(matrix, ggn, per_layer or per_layer_plot is not None)
    console = Console()
    t0 = time.perf_counter()
    tgt = resolve(target, checkpoint=checkpoint, dtype=dtype, device=device)
    if "checkpoint" in tgt.info:
        console.print(centre_line(tgt), soft_wrap=True, highlight=False)
    kind = record.name
    op = record.cli(tgt.problem, tgt.center, params=_selection(params), seed=seed)
    size = op.shape[0]
    k = max(1, min(k, size // 2)) if size >= 2 else 1
    eig = curvature.eigenvalues(op, k=k, which="both" if size >= 2 else "largest", tol=tol, seed=seed,
                                progress=progress)
    tr = curvature.trace(op, probes=trace_probes, seed=seed, progress=progress)
    dens = curvature.density(op, iters=density_iters, probes=density_probes, seed=seed, progress=progress)
    name = record.label
    console.print(_eigen_table(eig, f"{name} of {tgt.name} at its centre ({size:,} parameters, {op.dtype})"))
    exactness = "exact" if op.exact else "approximate: finite differences"
    console.print(f"products: {op.method} ({exactness}); zero band τ = {eig.zero_tol:.1e} (|λ| ≤ τ cannot be told "
                  "from 0 by these "
                  "products)", highlight=False)
    for note in dict.fromkeys((*op.method_notes, *eig.notes, *tr.notes, *dens.notes)):
        console.print(f"note: {note}", highlight=False)
    _print_density(console, tr, dens, eig)
    _print_curvature_verdict(console, eig, target)
    for extra in estimators.quantities():
        if extra.report is not None and extra.accepts(kind):
            console.print(f"{extra.label}: {extra.report(op, seed=seed, progress=progress)}", highlight=False)
    if density_plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        _figure_out(plot_density(dens, title=f"{name} eigenvalue density: {tgt.name}"), density_plot)
        console.print(f"wrote {density_plot}")
    products = op.products
    if per_layer or per_layer_plot is not None:
        layers = curvature.per_layer(tgt.problem, tgt.center, params=_selection(params), curvature=kind,
                                     probes=per_layer_probes, tol=tol, seed=seed, method=op.method, progress=progress)
        products += sum(b.products for b in layers)
        _print_layers(console, layers, f"{name} blocks of {tgt.name} (one per layer)")
        if per_layer_plot is not None:
            import matplotlib

            matplotlib.use("Agg")

            _figure_out(plot_per_layer(layers, title=tgt.name), per_layer_plot)
            console.print(f"wrote {per_layer_plot}")
    console.print(f"{products} products in {time.perf_counter() - t0:.1f} s")


def _eigen_table(eig, title: str):
    """The table of the extreme eigenvalues: value, error, relative residual, status (red unless
    converged and certified extreme)."""
    from rich.table import Table

    table = Table(title=title.replace("torch.", ""))
    table.add_column("", overflow="fold")
    table.add_column("eigenvalue", justify="right", overflow="fold")
    table.add_column("± error", justify="right", overflow="fold")
    table.add_column("residual / max|λ|", justify="right", overflow="fold")
    table.add_column("status", justify="left", overflow="fold")
    half = len(eig) // 2 if len(eig) > 1 else len(eig)
    labels = [f"λ{i + 1}" if i else "λmax" for i in range(half)]
    labels += [f"λmin+{len(eig) - 1 - i}" if i < len(eig) - 1 else "λmin" for i in range(half, len(eig))]
    for label, row in zip(labels, eig.summary()):
        status = row["status"] if row["converged"] and row["extremal_certified"] else f"[red]{row['status']}[/red]"
        table.add_row(label, f"{row['value']:.6g}", f"{row['error']:.1e}", f"{row['relative_residual']:.1e}", status)
    return table


def _print_density(console, tr, dens, eig) -> None:
    """The trace, and the negative eigenvalue mass of the density with its bracket."""
    lo, hi = dens.negative_bounds
    console.print(f"trace ({tr.method}, {tr.products} products): {tr}")
    console.print(f"negative eigenvalue mass below −τ (SLQ, {dens.nodes.shape[0]} probes × {dens.iters} steps): "
                  f"{dens.negative_mass} (bracket {lo:.3f}–{hi:.3f})")
    eps = 1e-3 * eig.scale
    lo, hi = dens.mass_bounds(-eps)
    console.print(f"mass below −10⁻³·max|λ| = {-eps:.3g}: {dens.mass_below(-eps)} (bracket {lo:.3f}–{hi:.3f})")
    if max(hi - lo, dens.negative_bounds[1] - dens.negative_bounds[0]) > 0.1:
        console.print("(a wide bracket: many eigenvalues sit too close to the threshold for this many Lanczos "
                      "steps to tell their signs apart; raise --density-iters to narrow it)")


def _print_curvature_verdict(console, eig, target: str) -> None:
    """What the extreme eigenvalues say: a converged negative one (evidence of non-convexity), one
    within its error of zero, or none."""
    negative = [(v, e) for v, e, neg in zip(eig.values, eig.errors, eig.negative) if neg]
    if negative:
        v, e = min(negative)
        console.print(f"[bold]negative eigenvalue[/bold] λ = {v:.4g} ± {e:.1e} (converged): the Hessian here is "
                      "not positive semi-definite. This is evidence of non-convexity, not a proof: "
                      f"`lossatlas audit {target}` turns it into a certificate (a Jensen triple θ ∓ h·v that beats "
                      "measured rounding) or says why it cannot (e.g. ReLU kinks closer than the step that beats "
                      "rounding).", highlight=False)
    elif eig.min < 0:
        i = int(np.argmin(eig.values))
        console.print(f"λmin = {eig.values[i]:.3g} lies within its error ± {eig.errors[i]:.1e} of zero "
                      f"({eig.status[i]}): indistinguishable from 0 with these products — not evidence of negative "
                      "curvature.", highlight=False)
    elif eig.all_converged:
        console.print("no negative curvature found: every extreme eigenvalue converged, was checked to be extreme, "
                      "and is ≥ 0 (locally convex here; this says nothing about other points).")


def _print_layers(console, layers, title: str) -> None:
    """The per-layer table, never truncated: wider than the terminal (or a pipe's 80 columns) when the
    layer names need it, so every name and number is printed in full."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("layer", no_wrap=True, overflow="fold")
    table.add_column("size", justify="right", no_wrap=True, overflow="fold")
    table.add_column("trace", justify="right", no_wrap=True, overflow="fold")
    table.add_column("± stderr", justify="right", no_wrap=True, overflow="fold")
    table.add_column("λmax", justify="right", no_wrap=True, overflow="fold")
    table.add_column("± error", justify="right", no_wrap=True, overflow="fold")
    table.add_column("status", no_wrap=True, overflow="fold")
    for b in layers:
        status = "converged" if b.converged else "[red]not converged[/red]"
        table.add_row(b.name, f"{b.size:,}", f"{b.trace.value:.6g}", f"{b.trace.stderr:.2g}", f"{b.lambda_max:.6g}",
                      f"{b.lambda_max_error:.1e}", status)
    needed = Console(width=10_000).measure(table).maximum  # the natural width (the console's own is capped)
    out = console if needed <= console.width else Console(width=needed, file=console.file,
                                                         force_terminal=console.is_terminal)
    out.print(table)
    console.print(f"per layer: trace by {layers.trace_method} ({layers.probes} probes per layer; exact, ± 0, for "
                  "layers "
                  f"of at most {layers.probes} parameters), λmax by Lanczos "
                  f"(tol {layers.tol:g}); products: {layers.product_method} "
                  f"({'exact' if layers.exact else 'approximate: finite differences'})", highlight=False)
    for note in layers.notes:
        console.print(f"note: {note}", highlight=False)


@app.command("ratio-map")
def ratio_map_cmd(target: str = typer.Argument(..., help="Example name or path/to/file.py:function."),
                  steps: int = typer.Option(11, "--steps", min=1, help="Grid points per axis."),
                  span: float = typer.Option(1.0, "--span", help="Each axis covers [-span, span]."),
                  seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="Seed of the directions and of Lanczos."),
                  tol: float = typer.Option(1e-3, "--tol", help="Convergence: residual ≤ tol · max|λ|."),
                  max_products: int = typer.Option(500, "--max-products", min=1, help="Products per point at most."),
                  store: Path | None = typer.Option(None, "--store", help="Resumable store (zarr directory)."),
                  resume: bool = typer.Option(True, "--resume/--overwrite",
                                              help="Resume an existing store, or replace it."),
                  out: Path | None = typer.Option(None, "--out", help="Write the |λmin/λmax| figure here."),
                  checkpoint: Path | None = typer.Option(None, "--checkpoint", help="A state_dict for the centre."),
                  dtype: str | None = typer.Option(None, "--dtype", help="float32 or float64."),
                  device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1, …"),
                  progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
                  allow_large: bool = typer.Option(False, "--allow-large", help="Run a grid of more than 10⁶ "
                                                   "points (refused otherwise, with its estimated memory and time)."),
                  ) -> None:
    """|λmin/λmax| of the Hessian over the target's default plane (Li et al. 2018, Fig. 7)."""
    from rich.console import Console

    _checks.positive(span, "--span")
    _checks.positive(tol, "--tol")
    _checks.store_path(store, "--store")
    _checks.out_file(out, "--out", _checks.FIGURE_SUFFIXES, what="figure file")
    console = Console()
    t0 = time.perf_counter()
    tgt = resolve(target, checkpoint=checkpoint, dtype=dtype, device=device)
    directions = tgt.default_directions(n=2, seed=seed)
    ds = curvature.ratio_map(tgt.problem, tgt.center, directions, steps=steps, span=span, tol=tol, seed=seed,
                             max_products=max_products, store=store, overwrite=not resume, progress=progress,
                             allow_large=allow_large)
    ratio, conv = ds.ratio.values, ds.converged.values
    console.print(f"|λmin/λmax| over {'×'.join(map(str, ratio.shape))} points of {tgt.name}: "
                  f"min {ratio.min():.3g}, median {float(np.nanmedian(ratio)):.3g}, max {ratio.max():.3g}; "
                  f"negative curvature shown (λmin + residual < 0, converged; evidence, not a proof) at "
                  f"{int(((ds.lambda_min.values + ds.residual_min.values < 0) & (conv == 1)).sum())} points; "
                  f"{int(conv.sum())}/{conv.size} converged")
    if store is not None:
        console.print(f"store: {store}")
    if out is not None:
        import matplotlib

        matplotlib.use("Agg")
        _figure_out(plot_ratio_map(ds, title=f"|λmin / λmax|: {tgt.name}"), out)
        console.print(f"wrote {out}")
    console.print(f"done in {time.perf_counter() - t0:.1f} s")

