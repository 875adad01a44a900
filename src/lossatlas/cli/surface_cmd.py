"""``lossatlas examples | surface | plot | info``: surfaces from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from .. import distributed, open_surface, plot
from .. import examples as ex
from .. import surface as surface_fn
from .._auto_span import parse
from .._cost import check_grid_cost
from ..directions import _registry as D
from ..errors import InvalidArgumentError, StoreError
from ..evaluator import STRATEGIES
from ..examples._builtin import mlp_digits
from .._ncattrs import get as get_attr
from ..grid import Grid
from ..plot import _registry as PK
from ..params import filter_layout
from ..params._layout import ignored
from ..paths import with_bn
from ..store import GridStore
from ..surface import PARALLEL
from . import _checks
from ._app import app
from ._app import console as _console
from ._target import centre_line, resolve
from .report_cmd import info_json

_NORMS = tuple(str(n).lower() for n in D.NORMS)  # filter, layer, model, none
KINDS = tuple(PK.names())  # the plot kinds registered when the CLI loads (lossatlas/plot/_registry.py)


def _attr(ds, key, default=None):
    return get_attr(ds, key, default)


@app.command()
def examples() -> None:
    """List the built-in example problems."""
    from rich.table import Table

    table = Table(title="lossatlas examples")
    table.add_column("name", style="bold", overflow="fold")
    table.add_column("convex in θ", overflow="fold")
    table.add_column("description", overflow="fold")
    for spec in ex.REGISTRY.values():
        convex = {True: "yes", False: "no (provably)", None: "unknown"}[spec.convex]
        table.add_row(spec.name, convex, spec.description)
    _console().print(table)


@app.command()
def export(
    name: str = typer.Argument(..., help="A built-in example."),
    out: Path = typer.Argument(..., help="File for the state_dict (.pt), or a directory with --trajectory."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="Initialisation seed (mlp-digits only)."),
    trajectory: bool = typer.Option(False, "--trajectory", help="Record the training run of mlp-digits into OUT "
                                    "(a checkpoint every --every steps)."),
    every: int = typer.Option(10, "--every", min=1, help="Steps between recorded checkpoints (--trajectory)."),
) -> None:
    """Write an example's trained weights as a state_dict (or its recorded training run), to use as
    checkpoints with `surface --checkpoint`, `interpolate`, `connect` or `trajectory`."""
    if name not in ex.names():
        raise InvalidArgumentError(f"NAME must be one of {', '.join(ex.names())}; received {name!r}")
    if trajectory:
        if name != "mlp-digits":
            raise InvalidArgumentError(f"--trajectory is available for mlp-digits; received {name!r}")
        _checks.out_dir(out, "OUT", what="folder for the recording")
        traj = ex.mlp_digits_trajectory(out, seed=seed, every=every)
        _console().print(f"recorded {len(traj)} checkpoints of mlp-digits (seed {seed}) in {out}")
        return
    if seed != 0 and name != "mlp-digits":
        raise InvalidArgumentError(f"--seed applies to mlp-digits only; received --seed {seed} for {name!r}")
    if name == "mlp-digits":
        example = mlp_digits(seed=seed)
    else:
        example = ex.load(name)
    _checks.out_file(out, "OUT", _checks.CHECKPOINT_SUFFIXES, what="checkpoint file")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in example.model.state_dict().items()}, out)
    _console().print(f"wrote the trained {name} (seed {seed}) to {out}")


def _accepted_directions() -> list[str]:
    """The values ``--directions`` takes: the registered kinds the CLI can build, and ``example``."""
    return [k.cli_usage or k.name for k in D.cli_kinds()] + ["example"]


def _direction_kind(kind: str):
    """The registry record for ``--directions KIND`` (``None`` for ``example``), checked before the target loads."""
    if kind == "example":
        return None
    name, sep, _ = kind.partition(":")
    record = D.REGISTRY.get(name)
    if record is None or record.cli is None or bool(sep) != record.takes_argument:
        accepted = _accepted_directions()
        raise InvalidArgumentError(f"--directions must be {', '.join(accepted[:-1])} or {accepted[-1]}; "
                                   f"received {kind!r}")
    return record


def _directions(target, kind: str, dims: int, norm: str, ignore: str, seed: int):
    record = _direction_kind(kind)
    if record is None:
        return target.default_directions(n=dims, seed=seed)
    return record.cli(target, dims=dims, norm=None if norm == "none" else norm,
                      ignore=None if ignore == "none" else ignore, seed=seed, arg=kind.partition(":")[2])


def _auto_ignore(tgt, kind: str) -> str:
    """``--ignore auto``: leave biases and normalisation parameters out (Li et al. 2018) unless that
    leaves nothing to move (e.g. the seed net, whose every parameter is a scalar): then move all, and
    say so — never silently."""
    theta = {k: v.detach() for k, v in tgt.center.items()}
    if len(ignored("biasbn", filter_layout(tgt.problem.model, theta), theta)) < len(theta):
        return "biasbn"
    record = _direction_kind(kind)
    if record is not None and record.name == "random":
        _console().print("note: every parameter of this model is a bias, a scalar or a normalisation "
                         "parameter, so --ignore biasbn would leave nothing to move; using --ignore none")
    return "none"


def _span(span: str, dims: int):
    if span.strip().lower().startswith("auto"):
        try:
            parse(span)
        except InvalidArgumentError:
            raise InvalidArgumentError(f"--span must be a number S, LO,HI, {dims} LO,HI pairs, auto or auto:F (F > 1); "
                                       f"received {span!r}") from None
        return span.strip().lower()
    try:
        parts = [float(v) for v in span.replace(":", ",").split(",")]
    except ValueError:
        raise InvalidArgumentError(f"--span must be a number S, LO,HI or {dims} LO,HI pairs; received {span!r}"
                                   ) from None
    if not all(np.isfinite(parts)):
        raise InvalidArgumentError(f"--span must be finite numbers (S, LO,HI or {dims} LO,HI pairs); "
                                   f"received {span!r}")
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return (parts[0], parts[1])
    if len(parts) == 2 * dims:
        return [(parts[2 * i], parts[2 * i + 1]) for i in range(dims)]
    raise InvalidArgumentError(f"--span must be S, LO,HI or {dims} LO,HI pairs; received {span!r}")


def _check_surface_options(dims, steps, span, directions, norm, ignore, store, strategy, parallel, bn,
                           plot_file) -> tuple[Any, Grid]:
    """Check the options of ``surface`` (before the target is loaded): the --span value and the grid."""
    if dims not in (1, 2, 3, 4):
        raise InvalidArgumentError(f"--dims must be 1, 2, 3 or 4; received {dims}")
    if plot_file is not None and dims > 2:
        raise InvalidArgumentError(f"--plot draws a line (--dims 1) or a plane (--dims 2); received --dims {dims} "
                                   "(save it with --store and slice it: lossatlas plot STORE --at z=0,w=0)")
    span_value = _span(span, dims)
    grid = Grid.make(dims, steps, 1.0 if isinstance(span_value, str) else span_value,  # --steps and --span,
                     func="surface")  # as surface() checks them ("auto": the spans are found later)
    _checks.choice(strategy, "--strategy", STRATEGIES)
    _checks.choice(parallel, "--parallel", PARALLEL)
    _checks.choice(norm, "--norm", _NORMS)
    _checks.choice(ignore, "--ignore", ("biasbn", "none", "auto"))
    _direction_kind(directions)
    _checks.store_path(store, "--store")
    _check_figure_path(plot_file, "--plot")
    if bn is not None:
        _checks.choice(bn, "--bn", ("eval", "recalibrate"))
    return span_value, grid


def _surface_table(ds, tgt, seconds: float, store) -> tuple[Any, bool]:
    """The summary table of a surface, and whether θ's values were evaluated apart from the grid."""
    from rich.table import Table

    loss = ds.loss.values
    table = Table(title=f"surface of {tgt.name}")
    table.add_column("quantity", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    at_center, where = centre_values(ds, tgt.problem, tgt.center)
    rows = [("grid", " × ".join(map(str, loss.shape)) + f" ({ds.attrs['points_done']}/{ds.attrs['points_total']} done)"),
            ("directions", ", ".join(_attr(ds, "direction_labels", []))),
            ("loss at centre θ" + "*" * bool(where), f"{at_center['loss']:.6g}"),
            ("loss min / max", f"{np.nanmin(loss):.6g} / {np.nanmax(loss):.6g}"),
            ("NaN / Inf points", f"{ds.attrs['nan_points']} / {ds.attrs['inf_points']}"),
            ("strategy", str(ds.attrs.get("strategy"))), ("time", f"{seconds:.2f} s")]
    if "accuracy" in at_center:
        rows.insert(4, ("accuracy at centre θ" + "*" * bool(where), f"{at_center['accuracy']:.4f}"))
    found = _attr(ds, "span_auto")
    if found:
        rows.insert(2, ("span (auto)", ", ".join(f"±{v:.3g}" for v in found["spans"])
                        + f" (loss ×{found['factor']:g}, {found['evaluations']} evaluations)"))
    if store is not None:
        rows.append(("store", str(store)))
    for k, v in rows:
        table.add_row(k, v)
    return table, where


@app.command()
def surface(
    target: str = typer.Argument(..., help="Example name, or path/to/file.py:function returning a Problem."),
    dims: int = typer.Option(2, "--dims", help="1 for a line, 2 for a plane, 3 or 4 for a volume (no figure)."),
    steps: int = typer.Option(41, "--steps", help="Points per axis (odd with a symmetric --span keeps θ on the "
                              "grid; otherwise θ's loss is evaluated apart)."),
    span: str = typer.Option("1.0", "--span", help="Half-width S, or LO,HI, in units of the directions; auto (or "
                             "auto:F): where the loss has risen by the factor F (default 2) along each direction."),
    directions: str = typer.Option("random", "--directions", help=" | ".join(
        [k.cli_usage + (f" ({k.cli_help})" if k.cli_help else "") for k in D.cli_kinds()] + ["example"]) + "."),
    norm: str = typer.Option("filter", "--norm", help=" | ".join(_NORMS) + " (random directions)."),
    ignore: str = typer.Option("auto", "--ignore", help="biasbn | none | auto (random directions; auto: biasbn, "
                               "as Li et al., unless that leaves nothing to move, then none — said on the output)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="Seed of the random directions."),
    store: Path = typer.Option(None, "--store", help="Zarr store to write (resumable)."),
    resume: bool = typer.Option(True, "--resume/--overwrite", help="Resume an existing store, or replace it."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="state_dict file giving the centre θ."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 … (default: the model's); 'rank': "
                               "cuda:LOCAL_RANK under torchrun when CUDA is available, else cpu."),
    dtype: str = typer.Option(None, "--dtype", help="float32 | float64 | bfloat16 (16-bit forward, float32 loss)."),
    strategy: str = typer.Option("auto", "--strategy", help="auto | loop | vmap."),
    parallel: str = typer.Option("grid", "--parallel", help="Under torchrun: grid (ranks share the grid's "
                                 "chunks) | data (ranks share each point's batches)."),
    bn: str = typer.Option(None, "--bn", help="BatchNorm statistics: eval (stored with the model; warned about when "
                           "the directions move weights feeding BatchNorm) or recalibrate (recomputed at every point)."),
    plot_file: Path = typer.Option(None, "--plot", help="Also save a figure (PNG/PDF/SVG/HTML)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    allow_large: bool = typer.Option(False, "--allow-large", help="Run a grid of more than 10⁷ points (refused "
                                     "otherwise, with its estimated memory and time)."),
) -> None:
    """Compute a 1-D or 2-D loss surface around a model and print a summary."""
    # every option is checked before the target is loaded and the directions are made
    span_value, grid = _check_surface_options(dims, steps, span, directions, norm, ignore, store, strategy, parallel,
                                              bn, plot_file)
    if device == "rank":
        device = str(distributed.device_for_rank())
    tgt = resolve(target, checkpoint=checkpoint, dtype=dtype, device=device)
    if bn is not None:
        tgt.problem = with_bn(tgt.problem, bn)
    check_grid_cost("surface", grid, tgt.problem, tgt.center, variables=len(tgt.problem.metric_names),
                    allow_large=allow_large)
    if ignore == "auto":
        ignore = _auto_ignore(tgt, directions)
    d = _directions(tgt, directions, dims, norm, ignore, seed)
    t0 = time.perf_counter()
    ds = surface_fn(tgt.problem, tgt.center, d, steps=steps, span=span_value, strategy=strategy,
                    store=store, overwrite=not resume, progress=progress, parallel=parallel,
                    allow_large=allow_large)
    seconds = time.perf_counter() - t0
    if not distributed.context().is_main:
        return  # under torchrun, rank 0 reports and draws
    ds.attrs["name"] = tgt.name
    if store is not None:
        _record_name(store, tgt.name)
    table, where = _surface_table(ds, tgt, seconds, store)
    console = _console()
    console.print(table)
    if "checkpoint" in tgt.info:
        console.print(centre_line(tgt), soft_wrap=True)
    if where:
        console.print("* θ is not a point of this grid (an even --steps, or a --span without 0): its values were "
                      "evaluated separately, not read off a neighbouring point; an odd --steps with a symmetric "
                      "--span puts θ on the grid", soft_wrap=True)
    if plot_file is not None:
        _write_figure(ds, plot_file, kind=None)
        _console().print(f"figure: {plot_file}")
    if store is None and plot_file is None:
        console.print("nothing was saved: pass --store PATH to keep the values (resumable), or --plot FILE for a "
                      "figure", soft_wrap=True)


def _record_name(store: Path, name: str) -> None:
    """The problem's name in the store's attrs (figures drawn later from the store are titled by it)."""
    try:
        GridStore.update_attrs(store, {"name": str(name)})  # re-sealed: not an edit
    except Exception:  # pragma: no cover - a read-only store still gives its values
        pass


def centre_values(ds, problem, center) -> tuple[dict[str, float], str]:
    """The values at θ (every coordinate 0) and "" when θ is a point of the grid; otherwise θ's
    values evaluated separately and a note saying so (never a neighbouring grid point's)."""
    dims = ds.loss.dims
    if all(np.any(ds[d].values == 0.0) for d in dims):
        point = {d: 0.0 for d in dims}
        return {k: float(ds[k].sel(point)) for k in ("loss", "accuracy") if k in ds}, ""
    values = problem.evaluate(center)
    return {k: values[k] for k in ("loss", "accuracy") if k in values}, "not on the grid"


def _check_figure_path(out: Path | None, option: str, kind: str | None = None) -> Path | None:
    """A figure file: .html/.htm for the interactive kind, .png/.pdf/.svg for the others (either
    when the kind follows from the suffix)."""
    if kind is None:
        suffixes = _checks.FIGURE_SUFFIXES + _checks.HTML_SUFFIXES
    else:
        suffixes = _checks.HTML_SUFFIXES if PK.get(kind).interactive else _checks.FIGURE_SUFFIXES
    return _checks.out_file(out, option, suffixes, what="figure file")


def _write_figure(ds, out: Path, *, kind: str | None, variable: str = "loss", log: bool = False,
                  vmin: float | None = None, vmax: float | None = None, levels: int = 30) -> Path:
    record = PK.default_for(ds[variable].ndim, out.suffix) if kind is None else PK.get(kind)
    fig = record.draw(ds, variable, log=log, vmin=vmin, vmax=vmax, levels=levels)
    if record.interactive:
        return plot.save_html(fig, out)
    import matplotlib.pyplot as plt

    path = plot.save(fig, out)
    plt.close(fig)
    return path


@app.command("plot")
def plot_cmd(
    store: Path = typer.Argument(..., help="A store written by `lossatlas surface`, `ratio-map` (or the demo)."),
    kind: str = typer.Option(None, "--kind", help=" | ".join(PK.names()) + " (default: line for 1-D, contour for "
                             "2-D, the |λmin/λmax| map for a ratio map)."),
    out: Path = typer.Option(None, "--out", help="Figure file (.png, .pdf, .svg, .html)."),
    variable: str = typer.Option(None, "--var", help="Variable to draw (default: loss; ratio for a ratio map)."),
    at: str = typer.Option(None, "--at", help="Slice the stored grid first: y=0 (a plane → a line), z=0,w=0 …; "
                           "the nearest grid value is used and printed."),
    log: bool = typer.Option(False, "--log", help="Logarithmic colour/value scale."),
    vmin: float = typer.Option(None, "--vmin"),
    vmax: float = typer.Option(None, "--vmax"),
    levels: int = typer.Option(30, "--levels", min=1, help="Number of contour levels."),
) -> None:
    """Draw a stored surface (or a slice of it, --at), or a stored |λmin/λmax| ratio map."""
    if kind is not None:
        _checks.choice(kind, "--kind", tuple(PK.names()))
    _checks.value_range(vmin, vmax)
    _check_figure_path(out, "--out", kind)
    cuts = _parse_at(at)
    ds = open_surface(store)
    ratio = ds.attrs.get("kind") == "ratio_map"
    if variable is None:
        variable = "ratio" if ratio else "loss"
    if variable not in ds.data_vars:
        raise InvalidArgumentError(f"--var must be one of {sorted(ds.data_vars)}; received {variable!r}")
    console = _console()
    if cuts:
        ds, note = _slice(ds, cuts)
        console.print(note, soft_wrap=True, markup=False)
    if ds[variable].ndim not in (1, 2):
        raise InvalidArgumentError(f"this store has {ds[variable].ndim} axes ({', '.join(ds[variable].dims)}); "
                                   "slice it to 1 or 2 with --at, e.g. --at z=0,w=0")
    if out is None:
        suffix = ".html" if kind is not None and PK.get(kind).interactive else ".png"
        tag = kind or ("ratio" if ratio and variable == "ratio" else "plot")
        cut = "".join(f"-{d}{ds.attrs[f'slice_{d}']:g}" for d in cuts)
        out = store.with_name(store.name.removesuffix(".zarr") + f"{cut}-{tag}{suffix}")
        _check_figure_path(out, "--out", kind)
    if ratio and kind is None and ds[variable].ndim == 2 and variable in ("ratio", "lambda_min", "lambda_max"):
        path = _write_ratio(ds, out, variable)
    else:
        path = _write_figure(ds, out, kind=kind, variable=variable, log=log, vmin=vmin, vmax=vmax, levels=levels)
    console.print(f"wrote {path}")


def _parse_at(at: str | None) -> dict[str, float]:
    if at is None:
        return {}
    cuts: dict[str, float] = {}
    for part in at.split(","):
        name, eq, value = part.partition("=")
        try:
            if not eq or not name.strip():
                raise ValueError
            cuts[name.strip()] = float(value)
        except ValueError:
            raise InvalidArgumentError(f"--at must be AXIS=VALUE[,AXIS=VALUE] (e.g. y=0); received {at!r}") from None
    return cuts


def _slice(ds, cuts: dict[str, float]):
    """``ds`` at the grid values nearest to ``cuts``, and a line saying which values were used."""
    dims = list(ds.loss.dims) if "loss" in ds else list(ds.dims)
    unknown = [d for d in cuts if d not in dims]
    if unknown:
        raise InvalidArgumentError(f"--at names axis {unknown[0]!r}; this store's axes are {', '.join(dims)}")
    used = {}
    for d, v in cuts.items():
        axis = ds[d].values
        used[d] = float(axis[int(np.argmin(np.abs(axis - v)))])
    out = ds.sel(used)
    words = ", ".join(f"{d}={used[d]:g}" + ("" if used[d] == cuts[d] else f" (nearest grid value to {cuts[d]:g})")
                      for d in cuts)
    for d in cuts:
        out.attrs[f"slice_{d}"] = used[d]
    return out, f"slice at {words}"


def _write_ratio(ds, out: Path, variable: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plot.ratio_map(ds, variable=variable)
    path = plot.save(fig, out)
    plt.close(fig)
    return path


def _check_store(store: Path) -> int:
    """``info --check``: audit every chunk, coordinate and attribute; one line per problem."""
    console = _console()
    try:
        gstore = GridStore.open(store, func="info", verify=False)
    except StoreError as exc:
        if not GridStore.is_store(store):
            raise  # not a lossatlas store at all: the usual error (exit status 2)
        console.print(f"DAMAGED {store}: {exc}", markup=False, soft_wrap=True)
        return 1
    lines = [f"DAMAGED metadata: {p}" for p in gstore.metadata_problems]
    damage = gstore.audit()
    lines += [f"DAMAGED chunk {d.chunk}: {d}" for d in damage]
    lines += [f"LEFTOVER temporary file of an interrupted run: {name} (removed by the next run)"
              for name in gstore.leftovers()]
    for line in lines:
        console.print(line, markup=False, soft_wrap=True)
    n_done = int(gstore.done_mask().sum()) if not any(d.kind == "marker" for d in damage) else None
    checks = ("checksums verified" if gstore.verified else "unverified (made before checksums)")
    chunks = sorted({d.chunk for d in damage})
    if lines:
        console.print(f"{store}: {len(lines)} problem(s); {len(chunks)} damaged chunk(s)"
                      f"{' ' + ', '.join(map(str, chunks)) if chunks else ''} ({checks}); rerun the computation "
                      "that made it with the same arguments to repair it", markup=False, soft_wrap=True)
        return 1
    total = gstore.layout.n_chunks
    console.print(f"{store}: intact ({n_done}/{total} chunks done, {checks})", markup=False, soft_wrap=True)
    return 0


@app.command()
def info(store: Path = typer.Argument(..., help="A store written by lossatlas."),
         check: bool = typer.Option(False, "--check", help="Audit the store: check every chunk against its "
                                    "checksum, the coordinates and attributes against their digests, and look "
                                    "for leftover temporary files; one line per problem. Exit status 0: intact, "
                                    "1: damaged or leftovers found (rerun the computation to repair), 2: not a "
                                    "store.")) -> None:
    """Provenance, grid, completeness and NaN count of a store (``--check``: audit its integrity).

    A store with a damaged chunk (missing, truncated, altered) or edited coordinates or attributes
    is refused with an error naming them (exit status 2); ``--check`` lists every problem."""
    from rich.table import Table

    if store.suffix == ".json":  # a report's result (audit.json, curvature.json, provenance.json)

        return info_json(store)
    if check:
        raise typer.Exit(_check_store(store))
    ds = open_surface(store)
    prov = json.loads(ds.attrs["provenance"])
    table = Table(title=f"{store}")
    table.add_column("field", style="bold", overflow="fold")
    table.add_column("value", overflow="fold")
    grid = ", ".join(f"{d}: {ds.sizes[d]} points in [{float(ds[d].min()):g}, {float(ds[d].max()):g}]"
                     for d in ds.loss.dims)
    rows = [
        ("kind", str(ds.attrs.get("kind"))),
        ("complete", f"{'yes' if ds.attrs['complete'] else 'NO'} ({ds.attrs['points_done']}/{ds.attrs['points_total']} points)"),
        ("NaN / Inf points", f"{ds.attrs['nan_points']} / {ds.attrs['inf_points']}"),
        ("grid", grid),
        ("chunk shape", str(ds.attrs.get("chunk_shape"))),
        ("variables", ", ".join(ds.data_vars)),
        ("directions", f"{prov['direction_spec'].get('kind')} — " + ", ".join(_attr(ds, "direction_labels", []))),
        ("norm / ignore / seed", f"{ds.attrs.get('direction_norm')} / {ds.attrs.get('direction_ignore')} / "
                                 f"{ds.attrs.get('direction_seed')}"),
        ("dtype / strategy", f"{ds.attrs.get('dtype')} / {ds.attrs.get('strategy')}"),
        ("samples", str(ds.attrs.get("n_samples"))),
        ("integrity", "checksums verified (every done chunk)" if ds.attrs.get("verified")
         else "unverified (made before checksums)"),
        ("software", prov.get("software", "")),
        ("model fingerprint", prov["model"][:16]),
        ("data fingerprint", prov["data"][:16]),
        ("centre fingerprint", prov["center"][:16]),
        ("directions fingerprint", prov["directions"][:16]),
    ]
    for k, v in rows:
        table.add_row(k, v)
    _console().print(table)
