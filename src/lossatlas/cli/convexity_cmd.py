"""``lossatlas audit | verify | compare``: proofs of non-convexity from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .. import convexity, plot
from ..convexity._methods import REGISTRY as METHOD_REGISTRY
from ..convexity._methods import method_names
from ..errors import InvalidArgumentError
from . import _checks
from ._app import app
from ._app import console as _console
from ._target import centre_line, resolve


def _methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in methods if m not in METHOD_REGISTRY]
    if bad or not methods:
        raise InvalidArgumentError(f"--methods must be a comma-separated subset of {', '.join(method_names())}; "
                                   f"received {text!r}")
    return methods


#: the default of --methods (every method registered when the CLI loads) and its help
_DEFAULT_METHODS = ",".join(method_names())
_METHODS_HELP = "Comma-separated methods: " + "; ".join(f"{m.name} ({m.description})" for m in METHOD_REGISTRY.values())


@app.command()
def audit(
    target: str = typer.Argument(..., help="Example name, or path/to/file.py:function returning a Problem."),
    budget: int = typer.Option(400, "--budget", min=1, help="Loss evaluations for the Jensen search."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1),
    methods: str = typer.Option(_DEFAULT_METHODS, "--methods", help=_METHODS_HELP),
    save_certificate: Path = typer.Option(None, "--save-certificate", help="Write the strongest certificate (.npz)."),
    json_out: Path = typer.Option(None, "--json", help="Write the audit as JSON."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="state_dict file giving θ."),
    device: str = typer.Option(None, "--device"),
    dtype: str = typer.Option(None, "--dtype", help="float32 | float64 (search precision; proofs are float64)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Prove the loss non-convex (certificates re-checked in float64) or report "no violation found"."""
    from rich.table import Table

    methods_value = _methods(methods)
    _checks.out_file(save_certificate, "--save-certificate", what="certificate file")
    _checks.out_file(json_out, "--json", (".json",), what="JSON file")
    tgt = resolve(target, checkpoint=checkpoint, dtype=dtype, device=device)
    if "checkpoint" in tgt.info:
        _console().print(centre_line(tgt), soft_wrap=True, highlight=False)
    result = convexity.audit(tgt.problem, tgt.center, budget=budget, seed=seed, methods=methods_value,
                             progress=progress, name=tgt.name)
    console = _console()
    colour = "red" if result.proven_nonconvex else "green"
    lines = result.summary().split("\n")
    console.print(f"[bold {colour}]{lines[0]}[/]", highlight=False)  # the verdict, once
    if result.certificates:
        table = Table(title="certificates (re-checked by the plain float64 path, rounding error measured)")
        for col in ("kind", "t", "f(a)", "f(b)", "f(midpoint)", "Jensen gap", "bound", "detail"):
            table.add_column(col, overflow="fold")
        for c in result.certificates:
            detail = (c.symmetry or {}).get("description") or (
                f"λ = {c.eigen['value']:.4g}, residual {c.eigen['residual']:.1e}" if c.eigen else c.note)
            table.add_row(c.kind, f"{c.t:.3g}", f"{c.losses['a']:.6g}", f"{c.losses['b']:.6g}", f"{c.losses['t']:.6g}",
                          f"{c.gap:.3e}", f"{c.bound:.1e}", detail)
        console.print(table)
    console.print("\n".join(lines[1:]), highlight=False)
    if save_certificate is not None:
        if not result.certificates:
            console.print("no certificate to save: no violation found")
        else:
            path = max(result.certificates, key=lambda c: c.margin).save(save_certificate)
            console.print(f"certificate written to {path} (check it: lossatlas verify {path} {target})")
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_dict(), indent=2, default=float))


@app.command()
def verify(
    certificate: Path = typer.Argument(..., help="A certificate written by `lossatlas audit --save-certificate`."),
    target: str = typer.Argument(..., help="The problem it is about (example name or file.py:function)."),
    checkpoint: Path = typer.Option(None, "--checkpoint"),
) -> None:
    """Re-check a certificate in float64; exit status 0 if it holds, 1 if it does not."""
    cert = convexity.Certificate.load(certificate)
    tgt = resolve(target, checkpoint=checkpoint)
    report = cert.check(tgt.problem)
    console = _console()
    console.print(f"f(a) = {report.losses.get('a', float('nan')):.10g}, f(b) = {report.losses.get('b', float('nan')):.10g}, "
                  f"f((1−t)a + tb) = {report.losses.get('t', float('nan')):.10g} at t = {cert.t:.4g}")
    console.print(f"Jensen gap {report.gap:.6e} vs rounding bound {report.bound:.3e}"
                  + (f" (measured float64 error of the gap ≈ {report.error_estimate:.1e})"
                     if report.error_estimate is not None else "")
                  + (f"; vᵀHv = {report.rayleigh:.4g}, residual {report.residual:.2e}" if report.rayleigh is not None else ""))
    if report.accepted:
        console.print(f"[bold green]VALID[/]: the {cert.kind} certificate proves that the loss of {tgt.name} is not convex")
        return
    console.print("[bold red]REJECTED[/]: " + "; ".join(report.reasons))
    raise typer.Exit(1)


@app.command()
def compare(
    targets: list[str] = typer.Argument(None, help="Example names or path/to/file.py:function returning a Problem "
                                        "(default: convex baselines and non-convex models)."),
    budget: int = typer.Option(300, "--budget", min=1),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1),
    methods: str = typer.Option(_DEFAULT_METHODS, "--methods", help=_METHODS_HELP),
    out: Path = typer.Option(None, "--out", help="Figure file (PNG/PDF/SVG)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Audit convex baselines and non-convex models the same way: one table and one figure."""
    from rich.table import Table

    methods_value = _methods(methods)
    _checks.out_file(out, "--out", _checks.FIGURE_SUFFIXES, what="figure file")
    resolved = []
    for t in targets or ():
        if ":" in t and t.split(":", 1)[0].endswith(".py"):  # a user's file: (name, problem, theta)

            tgt = resolve(t)
            resolved.append((tgt.name, tgt.problem, tgt.center))
        else:
            resolved.append(t)
    result = convexity.compare(*resolved, budget=budget, seed=seed, methods=methods_value,
                               progress=progress)
    table = Table(title="convexity audit, same budget and seed for every model")
    longest = max((len(r["name"]) for r in result.rows()), default=5)
    for col in ("model", "known", "verdict", "certificates", "best Jensen gap", "λmin", "λmax", "λmin/λmax", "time"):
        # names whole (up to 24 characters), the other columns wrap rather than being cut
        table.add_column(col, overflow="fold", min_width=min(longest, 24) if col == "model" else None)

    def fmt(v, spec=".3g"):
        return "—" if v is None else format(v, spec)
    for r in result.rows():
        known = {True: "convex", False: "non-convex", None: "?"}[r["known_convex"]]
        table.add_row(r["name"], known, r["verdict"], f"{r['certificates']} {','.join(r['kinds'])}",
                      fmt(r["best_jensen_gap"], ".2e"), fmt(r["lambda_min"]), fmt(r["lambda_max"]), fmt(r["ratio"]),
                      f"{r['seconds']:.1f} s")
    _console().print(table)
    if out is not None:
        import matplotlib

        matplotlib.use("Agg")
        plot.save(result.figure(), out)
        _console().print(f"figure: {out}")
