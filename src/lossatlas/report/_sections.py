"""The report's sections, in page order. A new section is one function here and one ``@section``."""

from __future__ import annotations

import shlex

import numpy as np

from .. import plot
from .._ncattrs import get as get_attr
from ..demo import second_difference_check
from ..plot._common import _mpl
from ..plot.grid import shared_range, use_log
from ._compute import slug
from ._page import Page, esc, section

_KIND_WORDS = {
    "symmetry": ("a symmetry of the network", "θ′ = g·θ computes the same function as θ (a hidden-unit permutation, a "
                 "sign flip or a positive rescaling), so f(θ′) = f(θ); a convex function would be at most that value "
                 "on the whole segment between them, but its midpoint is higher."),
    "hessian": ("negative curvature", "along the eigenvector v of a negative Hessian eigenvalue the loss bends down: "
                "the point θ is above the chord between θ − h·v and θ + h·v."),
    "jensen": ("a Jensen violation found by search", "a segment [a, b] of parameter space on which the loss at "
               "(1−t)a + t·b is above the chord (1−t)f(a) + t·f(b)."),
}


def _stale_bn_note(page: Page, t, names, what: str) -> str:
    """A visible note when the stored results ``names`` of target ``t`` were computed with BatchNorm statistics
    that do not describe their points (a recorded :class:`~lossatlas.errors.BatchNormStatsWarning`), saying
    what it means and how to get the other view; "" when none was recorded."""
    recorded = [w for w in t.warnings(*names) if w.get("category") == "BatchNormStatsWarning"]
    if not recorded:
        return ""
    ck = f" --checkpoint {shlex.quote(t.checkpoint)}" if t.checkpoint else ""
    s = t.provenance.get("settings") or {}
    grid = "".join(f" --{k} {s[k]:g}" for k in ("steps", "span", "seed") if isinstance(s.get(k), (int, float)))
    cmd = f"lossatlas surface {shlex.quote(t.spec)}{ck} --directions example{grid} --bn recalibrate"
    messages = "; ".join(esc(w.get("message", "")) for w in recorded)
    return (f'<div class="banner bn-stale" data-warning="BatchNormStatsWarning" data-target="{esc(slug(t.name))}">'
            f"<b>Stale BatchNorm statistics ({esc(t.name)}):</b> this model has BatchNorm layers, and {what} was "
            "evaluated with the running statistics stored with it at θ (<code>bn=\"eval\"</code>). The directions "
            "move weights that feed those layers, so away from θ the stored statistics no longer describe the network "
            "being evaluated: the values off θ are those of each point's weights normalised by θ's statistics, not "
            "what that network would give with its own (recomputed) statistics, and they can be far off (at θ "
            "itself they are θ's own: its value is the stored model's). For the other view, with the statistics "
            f"recomputed at every point, run <code>{esc(cmd)}</code>: the same plane, whose two directions are also "
            "the slices' (in Python: <code>problem.replace(bn=\"recalibrate\")</code>)."
            f'<br><span class="muted">Recorded warning: {messages}</span></div>')


def _table(rows) -> str:
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


@section("verdict", "Is the loss convex? The audit's verdict and its certificate", needs=("audit", "curvature"))
def verdict(page: Page) -> str:
    """The convexity audit's verdict, the certificate in plain words and how to re-check it."""
    cells = []
    for t in page.targets:
        a = t.audit or {}
        proven = bool(a.get("proven_nonconvex"))
        cls = "proven" if proven else "notfound"
        out = [f'<p class="verdict {cls}" data-verdict="{esc(a.get("verdict"))}">{esc(a.get("verdict", "–"))}</p>']
        certs = a.get("certificates") or []
        if proven and certs:
            c = certs[0]
            what, how = _KIND_WORDS.get(c["kind"], (c["kind"], ""))
            w = "audit.json#certificates.0"
            out.append(f"<p><b>Proven by {esc(what)}.</b> {esc(how)}</p>")
            out.append(f'<p class="muted">Witness: {esc(a.get("certificate_note", ""))}</p>')
            out.append(_table([
                ("f(a)", page.num(t, f"{w}.losses.a", c["losses"]["a"], ".8g")),
                ("f(b)", page.num(t, f"{w}.losses.b", c["losses"]["b"], ".8g")),
                ("f((1−t)a + t·b)", page.num(t, f"{w}.losses.t", c["losses"]["t"], ".8g") + " at t = "
                 + page.num(t, f"{w}.t", c["t"], ".3g")),
                ("Jensen gap", page.num(t, f"{w}.gap", c["gap"], ".4e")
                 + " (how far the point is above the chord, computed in float64)"),
                ("rounding bound", page.num(t, f"{w}.bound", c["bound"], ".2e")
                 + " (the gap must beat this and the measured rounding error)"),
            ]))
            cert_file = f"{page.files}/{slug(t.name)}/certificate.npz"
            cmd = f"lossatlas verify {shlex.quote(cert_file)} {shlex.quote(t.spec)}" + (
                f" --checkpoint {shlex.quote(t.checkpoint)}" if t.checkpoint else "")
            out.append(f"<p>Re-check it yourself (float64, independent of the fast paths):</p><pre>{esc(cmd)}</pre>")
        else:
            gap = a.get("best_jensen_gap")
            out.append("<p>No Jensen violation, negative curvature or symmetry argument survived float64 "
                       "verification. <b>This is not a proof of convexity</b>: the search only sampled the "
                       "landscape.</p>")
            out.append(_table([("largest relative Jensen gap seen",
                                page.num(t, "audit.json#best_jensen_gap", gap, ".3e")),
                               ("methods", esc(", ".join(a.get("methods", []))))]))
        if "hessian" not in a.get("methods", []):
            lam = (t.curvature or {}).get("eigen", {}).get("lambda_min")
            out.append(f'<p class="muted">The float64 negative-curvature search was not run '
                       f'({page.num(t, "provenance.json#parameters", t.provenance.get("parameters"), "d")} parameters; '
                       f"<code>lossatlas report --hessian-audit</code> runs it)"
                       + (f"; λmin = {page.num(t, 'curvature.json#eigen.lambda_min', lam)} &lt; 0 at θ (Hessian "
                          f"section) is evidence of non-convexity, not a proof." if lam is not None and lam < 0
                          else ".") + "</p>")
        skipped = a.get("skipped") or {}
        if skipped:
            out.append("<ul>" + "".join(f"<li class='muted'>{esc(r)}</li>" for r in skipped.values()) + "</ul>")
        tried = a.get("tried") or {}
        out.append(f'<p class="muted">Methods run: {esc(", ".join(a.get("methods", [])))}; '
                   f'{page.num(t, "audit.json#seconds", a.get("seconds"), ".1f")} s. '
                   + ("".join(f"{esc(m)}: {page.num(t, f'audit.json#tried.{m}.seconds', i.get('seconds'), '.1f')} s. "
                              for m, i in tried.items() if i.get("seconds") is not None)) + "</p>")
        cells.append("".join(out))
    return page.columns(cells)


@section("why", "Why: the Gauss–Newton split of the Hessian", needs=("curvature",))
def why(page: Page) -> str:
    """Which term of H = JᵀH_ℓJ + Σ (∂ℓ/∂f)∇²f produced the negative curvature, or why there is none."""
    head = ("<p>For a loss ℓ(f(x; θ), y) the Hessian in the parameters splits into "
            "<b>H = Jᵀ H<sub>ℓ</sub> J + Σ (∂ℓ/∂f) ∇²f</b>. The first term, the generalised Gauss–Newton matrix G, "
            "is positive semi-definite whenever ℓ is convex in the prediction f (MSE, cross-entropy). Negative "
            "curvature can therefore only come from the second term, the model's own curvature ∇²f weighted by "
            "the residuals ∂ℓ/∂f. A model linear in its parameters has ∇²f = 0, so H = G ⪰ 0 everywhere: with a "
            "convex loss it cannot have any negative curvature.</p>")
    cells = []
    for t in page.targets:
        c = t.curvature or {}
        e, g, s = c.get("eigen", {}), c.get("ggn", {}), c.get("split", {})
        lam_min, lam_max = e.get("lambda_min"), e.get("lambda_max")
        tol = max(e.get("residual_min") or 0.0, 1e-6 * abs(lam_max or 0.0))
        rows = [("λmin of the full Hessian H", page.num(t, "curvature.json#eigen.lambda_min", lam_min)
                 + f" (residual {page.num(t, 'curvature.json#eigen.residual_min', e.get('residual_min'), '.1e')})"),
                ("λmin of the Gauss–Newton part G", page.num(t, "curvature.json#ggn.lambda_min", g.get("lambda_min"))
                 + ("" if g.get("lambda_min") is not None else f" ({esc(g.get('note', ''))})"))]
        if s.get("available"):
            rows += [("along H's lowest eigenvector v: vᵀHv", page.num(t, "curvature.json#split.vHv", s.get("vHv"))),
                     ("vᵀGv (Gauss–Newton term, ≥ 0)", page.num(t, "curvature.json#split.vGv", s.get("vGv"))),
                     ("vᵀ(Σ ∂ℓ/∂f ∇²f)v (model term)", page.num(t, "curvature.json#split.model_term",
                                                             s.get("model_term")))]
        out = [_table(rows)]
        negative = lam_min is not None and lam_min < -tol
        if negative and s.get("available") and (s.get("vHv") or 0) < 0:
            out.append(f"<p><b>The negative curvature comes from the model term.</b> Along v the Gauss–Newton part "
                       f"is {'≥ 0' if (s.get('vGv') or 0) >= 0 else 'slightly negative only by rounding'} and the "
                       f"model's own second-order term pulls vᵀHv below zero: the network is non-linear in its "
                       f"parameters, and composing a convex loss with it breaks convexity.</p>")
        elif negative:
            out.append("<p><b>Negative curvature at θ</b> (λmin &lt; 0); the split along v is not available for "
                       "this loss.</p>")
        else:
            small = s.get("available") and abs(s.get("model_term") or 0) <= 1e-6 * max(abs(s.get("vHv") or 0), 1e-12)
            out.append("<p><b>No negative curvature at θ.</b> "
                       + ("The model term vanishes along v (as it must for a model linear in its parameters, "
                          "∇²f = 0): H = G, positive semi-definite for a convex loss, so no direction can curve "
                          "down." if small else
                          "G is positive semi-definite and the model term is not large enough here to make any "
                          "direction curve down; elsewhere it may.") + "</p>")
        cells.append("".join(out))
    return head + page.columns(cells)


def _pooled_log(datasets) -> bool:
    return use_log(datasets)


@section("slices", "1-D slices through θ", needs=("slices",))
def slices(page: Page) -> str:
    """The loss along each of the two directions, all panels on one loss axis."""
    datasets, titles = [], []
    for t in page.targets:
        for i, ds in enumerate(t.slices):
            datasets.append(ds)
            titles.append(f"{t.name}: direction {i + 1}")
    if not datasets:
        return "<p>No slices.</p>"
    fig = plot.grid(datasets, ncols=min(4, len(datasets)), titles=titles, sharex=False, panel_size=(3.6, 2.7))
    img = page.png(fig, "loss along 1-D slices through θ")
    cells = []
    for t in page.targets:
        rows = []
        for i, ds in enumerate(t.slices):
            axis = "xy"[i]
            chk = second_difference_check(ds)
            where = f"slice-{axis}.zarr"
            rows.append((f"direction {i + 1}", "loss at θ " + page.num(t, f"{where}#loss@0", float(ds.loss.sel(x=0.0))
                                                                         if 0.0 in ds.x.values else None)
                         + ", min " + page.num(t, f"{where}#loss.min", float(np.nanmin(ds.loss.values)))
                         + ", max " + page.num(t, f"{where}#loss.max", float(np.nanmax(ds.loss.values)))
                         + "; smallest second difference " + page.num(t, f"{where}#second_difference.min",
                                                                      chk["min_second_difference"], ".3e")
                         + (" — <b>non-convex slice</b> (below the rounding bound)" if chk["proves_nonconvex_slice"]
                            else " — convex along this line (as far as the grid shows)")))
        cells.append(_table(rows))
    notes = "".join(_stale_bn_note(page, t, [f"slice-{a}.zarr" for a in "xy"[:len(t.slices)]], "each slice")
                    for t in page.targets)
    return (f'{notes}<div class="wide">{img}</div><p class="muted">Random slices average the curvature over many '
            f"directions; they can look convex even where the loss is not (see the verdict above).</p>"
            + page.columns(cells))


@section("plane", "The loss over a 2-D plane through θ", needs=("plane",))
def plane(page: Page) -> str:
    """Contours on shared levels (log when the data span more than 100×), and rotatable 3-D views with θ marked."""
    planes = [t.plane for t in page.targets]
    log = _pooled_log(planes)
    fig = plot.grid(planes, kind="filled", levels=25, log=log, titles=[t.name for t in page.targets],
                    sharex=False, sharey=False)
    img = page.png(fig, "filled contours of the loss over the plane")
    lo, hi = shared_range(planes, log=log)
    cmin, cmax = (np.log10(lo), np.log10(hi)) if log else (lo, hi)
    cells = []
    for t, ds in zip(page.targets, planes):
        centre = float(ds.loss.sel(x=0.0, y=0.0)) if 0.0 in ds.x.values and 0.0 in ds.y.values else None
        f = plot.interactive(ds, log=log, title=f"{t.name}: {'log10 ' if log else ''}loss (drag to rotate)")
        f.data[0].update(cmin=float(cmin), cmax=float(cmax))
        if centre is not None:
            import plotly.graph_objects as go

            f.add_trace(go.Scatter3d(x=[0.0], y=[0.0], z=[np.log10(centre) if log else centre], mode="markers",
                                     marker={"size": 6, "color": "red", "symbol": "diamond"}, name="θ"))
        f.update_layout(showlegend=False, scene_camera={"eye": {"x": 1.5, "y": 1.5, "z": 1.0}})
        still = page.png(_static3d(ds, log, cmin, cmax, t.name), f"3-D view of the loss of {t.name} over the plane, "
                         f"θ marked by a red star")
        half = page.num(t, "plane.zarr#x.max", float(ds.x.max()), "g")
        rows = [("grid", f"{ds.sizes['x']}×{ds.sizes['y']} points, ± {half} "
                         f"along {esc(', '.join(get_attr(ds, 'direction_labels') or []) or 'two directions')}"),
                ("loss at θ", page.num(t, "plane.zarr#loss@0,0", centre)),
                ("lowest / highest", page.num(t, "plane.zarr#loss.min", float(np.nanmin(ds.loss.values))) + " / "
                 + page.num(t, "plane.zarr#loss.max", float(np.nanmax(ds.loss.values))))]
        if "accuracy" in ds:
            acc = float(ds.accuracy.sel(x=0.0, y=0.0)) if centre is not None else None
            rows.append(("accuracy at θ", page.num(t, "plane.zarr#accuracy@0,0", acc)))
        cells.append(_table(rows) + page.plotly(f, height=430, static=still))
    scale = "a log colour scale (the loss spans more than a factor 100)" if log else "a linear colour scale"
    notes = "".join(_stale_bn_note(page, t, ["plane.zarr"], "this plane") for t in page.targets)
    return (f"{notes}<p>All panels share one colour range and contour levels ({scale}); θ is the red star (static "
            f'pictures) or diamond (rotatable 3-D).</p><div class="wide">{img}</div>' + page.columns(cells))


def _static3d(ds, log: bool, cmin: float, cmax: float, name: str):
    """The plane as a matplotlib 3-D surface on the page's shared colour range, θ drawn on top (a red star)."""
    plt = _mpl()
    fig = plt.figure(figsize=(5.0, 3.9))
    ax = fig.add_subplot(projection="3d", computed_zorder=False)  # θ's star in front of the surface
    plot.surface3d(ds, log=log, ax=ax, title=f"{name}: {'log10 ' if log else ''}loss, θ ★", elev=30, azim=-55)
    ax.collections[0].set_clim(float(cmin), float(cmax))
    return fig


@section("hessian", "Hessian: extremes, trace and spectral density at θ", needs=("curvature",))
def hessian(page: Page) -> str:
    """λmax and λmin (Lanczos, residuals), tr H ± stderr (Hutch++), the eigenvalue density (SLQ)."""
    import matplotlib.pyplot as plt

    _mpl()
    n = len(page.targets)
    fig, axs = plt.subplots(1, n, figsize=(4.6 * n, 3.2), squeeze=False)
    cells = []
    for ax, t in zip(axs[0], page.targets):
        c = t.curvature or {}
        e, tr, d = c.get("eigen", {}), c.get("trace", {}), c.get("density", {})
        grid, values = np.asarray(d.get("grid", []), float), np.asarray(d.get("values", []), float)
        if grid.size:
            ax.semilogy(grid, np.maximum(values, 1e-6), lw=1.2)
            ax.axvline(0.0, color="red", ls=":", lw=1)
        ax.set_title(t.name, fontsize=10)
        ax.set_xlabel("eigenvalue λ")
        ax.set_ylabel("density (log)")
        rows = [("λmax", page.num(t, "curvature.json#eigen.lambda_max", e.get("lambda_max"))
                 + (" (converged)" if e.get("converged_max") else " (<b>not converged</b>)")),
                ("λmin", page.num(t, "curvature.json#eigen.lambda_min", e.get("lambda_min"))
                 + (" (converged)" if e.get("converged_min") else " (<b>not converged</b>)")),
                ("tr H", page.num(t, "curvature.json#trace.value", tr.get("value")) + " ± "
                 + page.num(t, "curvature.json#trace.stderr", tr.get("stderr"), ".2g")
                 + f" ({esc(tr.get('method', ''))}, "
                 + page.num(t, "curvature.json#trace.probes", tr.get("probes"), "g") + " probes)"),
                ("mass of negative eigenvalues", page.num(t, "curvature.json#density.negative_mass",
                                                          d.get("negative_mass"), ".3g") + " ± "
                 + page.num(t, "curvature.json#density.negative_mass_stderr", d.get("negative_mass_stderr"), ".2g"))]
        cells.append(_table(rows))
    fig.tight_layout()
    img = page.png(fig, "Hessian eigenvalue densities")
    return page.columns(cells) + f'<div class="wide">{img}</div>'


@section("provenance", "Provenance: model, data, versions, seeds, times", needs=())
def provenance(page: Page) -> str:
    """Where every result came from and where it is stored."""
    cells = []
    for t in page.targets:
        p = t.provenance
        folder = f"{page.files}/{slug(t.name)}"
        secs = p.get("seconds") or {}
        dirs = p.get("directions") or {}
        ck = p.get("checkpoint") or {}
        rows = [("target", f"<code>{esc(t.spec)}</code>"), ("description", esc(p.get("description") or "–")),
                *([("checkpoint", f"<code>{esc(ck.get('file'))}</code>: all "
                    + page.num(t, "provenance.json#checkpoint.entries", ck.get("entries"), "d") + " entries loaded ("
                    + page.num(t, "provenance.json#checkpoint.trainable", ck.get("trainable"), "d") + " trainable, "
                    + (page.num(t, "provenance.json#checkpoint.frozen", ck.get("frozen"), "d") + " frozen, "
                       if ck.get("frozen") else "")
                    + page.num(t, "provenance.json#checkpoint.buffers", ck.get("buffers"), "d")
                    + " buffers such as BatchNorm statistics); its loss by plain torch "
                    + page.num(t, "provenance.json#checkpoint.plain_loss", ck.get("plain_loss"), ".6g"))]
                  if ck else []),
                ("model", esc(p.get("model"))),
                ("parameters / samples", page.num(t, "provenance.json#parameters", p.get("parameters"), "d") + " / "
                 + page.num(t, "provenance.json#samples", p.get("samples"), "d")),
                ("dtype / device / threads", esc(f"{p.get('dtype')} / {p.get('device')} / {p.get('threads')}")),
                ("fingerprints", esc(", ".join(f"{k} {v[:12]}" for k, v in (p.get("fingerprints") or {}).items()))),
                ("versions", esc(", ".join(f"{k} {v}" for k, v in (p.get("versions") or {}).items()))),
                ("seeds", esc(", ".join(f"{k} {v}" for k, v in (p.get("seeds") or {}).items()))),
                ("directions", esc(f"{dirs.get('kind')} ({dirs.get('norm')})")),
                ("times (s)", ", ".join(f"{esc(k)} {page.num(t, f'provenance.json#seconds.{k}', v, '.1f')}"
                                       for k, v in secs.items())),
                ("made / updated", esc(f"{p.get('made')} / {p.get('updated')}")),
                ("reused from an earlier run", esc(", ".join(p.get("reused") or []) or "nothing")),
                ("warnings recorded", esc("; ".join(f"{k}: {w.get('category')}" for k, ws in
                                                   (p.get("warnings") or {}).items() for w in ws) or "none")),
                ("stored results", "<br>".join(f"<code>{esc(folder)}/{esc(f)}</code>" for f in
                                                ("plane.zarr", "slice-x.zarr", "slice-y.zarr", "audit.json",
                                                 "certificate.npz", "curvature.json", "provenance.json")
                                                if (t.folder / f).exists())),
                ("inspect", f"<code>lossatlas info {esc(folder)}/plane.zarr</code>")]
        cells.append(_table(rows))
    return page.columns(cells)
