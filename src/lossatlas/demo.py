"""The main job: pictures and numbers that answer *why is a neural network's loss non-convex when
MSE or cross-entropy is convex?*

``run(out)`` writes into ``out``:

* the seed net f(x) = relu(w1·relu(w0·x + b0) + b1): the loss over (w0, w1), 1-D slices along each
  parameter, and the segment from θ* to its rescaled twin (same function, same loss) whose midpoint
  is worse — a Jensen violation, so the loss is not convex;
* logistic regression with BCE (convex) beside the same model with MSE (non-convex) on the same
  data, along the same directions;
* a filter-normalised 2-D plane of an MLP on digits as contour, filled contour and 3-D surface, and
  1-D slices;
* convexity audits of convex baselines beside non-convex models (``convexity-audit.png``), with the
  strongest certificate of each proof in ``certificates/NAME.npz`` (check with ``lossatlas verify``);
* ``summary.md`` (figures linked, what they show) and ``summary.json`` (the numbers).

Every surface is stored (zarr) and can be reopened with ``lossatlas plot``/``lossatlas info``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import convexity, examples, plot
from . import directions as D
from . import params as P
from .surface import surface


def second_difference_check(ds, variable: str = "loss") -> dict[str, float]:
    """For a 1-D slice f(t) on an even grid: the most negative scaled second difference
    f(t−h) − 2f(t) + f(t+h) and the rounding bound it must exceed to prove the slice non-convex.

    A convex function is convex along every line, so Δ² < −bound proves non-convexity.
    The bound is 8·eps·(|f(t−h)| + 2|f(t)| + |f(t+h)|) for values computed in the problem's dtype.
    """
    f = np.asarray(ds[variable].values, dtype=np.float64)
    eps = float(np.finfo(np.float32 if ds.attrs.get("dtype", "float32") == "float32" else np.float64).eps)
    d2 = f[:-2] - 2 * f[1:-1] + f[2:]
    bound = 8 * eps * (np.abs(f[:-2]) + 2 * np.abs(f[1:-1]) + np.abs(f[2:]))
    margin = d2 + bound
    i = int(np.nanargmin(margin))
    return {"min_second_difference": float(np.nanmin(d2)), "worst_margin": float(margin[i]),
            "at": float(ds[ds[variable].dims[0]].values[i + 1]), "rounding_bound": float(bound[i]),
            "proves_nonconvex_slice": bool(margin[i] < 0)}


def _save(fig, out: Path, name: str, files: list[str]) -> str:
    import matplotlib.pyplot as plt

    plot.save(fig, out / name)
    plt.close(fig)
    files.append(name)
    return name


def _seed_relu(out: Path, quick: bool, progress: bool, files: list[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    ex = examples.load("seed-relu")
    pr, theta = ex.problem, ex.center
    steps = 81 if quick else 201
    # the (w0, w1) plane in absolute coordinates: centre with w0 = w1 = 0, unit axes
    origin = P.clone(theta)
    origin["w0"] = torch.zeros_like(origin["w0"])
    origin["w1"] = torch.zeros_like(origin["w1"])
    axes = D.axes(pr, ["w0", "w1"])
    plane = surface(pr, origin, axes, steps=steps, span=(-2.0, 3.0), store=out / "seed-relu-plane.zarr",
                    overwrite=True, progress=progress, strategy="vmap")
    plane.attrs["name"] = "seed-relu"
    # θ* and its rescaled twin: (α·w0, α·b0, w1/α, b1) computes the same function for α > 0
    alpha = 2.0
    twin = P.clone(theta)
    twin["w0"] = theta["w0"] * alpha
    twin["b0"] = theta["b0"] * alpha
    twin["w1"] = theta["w1"] / alpha
    segment = surface(pr, theta, D.between(theta, twin), steps=steps, span=(-0.25, 1.25),
                      store=out / "seed-relu-segment.zarr", overwrite=True, progress=progress, strategy="loop")
    f_a, f_b = pr.loss(theta), pr.loss(twin)
    mid = P.lincomb(theta, [P.sub(twin, theta)], [0.5])
    f_mid = pr.loss(mid)
    gap = f_mid - 0.5 * (f_a + f_b)

    fig = plot.contour(plane, filled=True, levels=np.geomspace(1e-3, float(np.nanmax(plane.loss)), 25), log=True,
                       mark_center=False, title="seed-relu: loss over (w0, w1), b0 and b1 at θ*")
    ax = fig.axes[0]
    ax.plot([float(theta["w0"]), float(twin["w0"])], [float(theta["w1"]), float(twin["w1"])], "w--", lw=1.2)
    ax.plot(float(theta["w0"]), float(theta["w1"]), "r*", ms=12, label="θ* (trained)")
    ax.plot(float(twin["w0"]), float(twin["w1"]), "c*", ms=12, label="rescaled twin (same function)")
    ax.plot(float(mid["w0"]), float(mid["w1"]), "wo", ms=6, label="midpoint (worse)")
    ax.set_xlabel("w0")
    ax.set_ylabel("w1")
    ax.legend(fontsize=8, loc="upper right")
    plane_png = _save(fig, out, "seed-relu-plane.png", files)

    fig, axs = plt.subplots(1, 5, figsize=(17, 3.4))
    slices = {}
    for ax, name in zip(axs[:4], ["w0", "w1", "b0", "b1"]):
        ds = surface(pr, theta, D.axes(pr, [name]), steps=steps, span=2.0, progress=False, strategy="vmap")
        slices[name] = second_difference_check(ds)
        plot.line(ds, ax=ax, title=f"along {name} (offset from θ*)")
    plot.line(segment, ax=axs[4], title="θ* → rescaled twin (t = 0 → 1)")
    axs[4].plot([0, 1], [f_a, f_b], "ko")
    fig.tight_layout()
    slices_png = _save(fig, out, "seed-relu-slices.png", files)
    return {
        "example": "seed-relu", "description": ex.description, "theta": {k: float(v) for k, v in theta.items()},
        "figures": [plane_png, slices_png], "stores": ["seed-relu-plane.zarr", "seed-relu-segment.zarr"],
        "loss_at_theta": f_a, "loss_at_twin": f_b, "loss_at_midpoint": f_mid, "jensen_gap": gap,
        "rescaling_alpha": alpha, "slices": slices,
        "shows": (f"θ* and its rescaled twin (w0·{alpha:g}, b0·{alpha:g}, w1/{alpha:g}) compute the same function, "
                  f"so both have loss {max(f_a, f_b):.2e}; their midpoint has loss {f_mid:.4f}, above the chord by "
                  f"{gap:.4f}: Jensen's inequality fails, so the loss is not convex in the parameters. In the "
                  "(w0, w1) plane the zero-loss set is the curved valley w0·w1 ≈ 1 — not a convex set — and "
                  "for w0 < 0 a flat plateau where the hidden ReLU is dead."),
    }


def _logreg_pair(out: Path, quick: bool, progress: bool, files: list[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    results: dict[str, Any] = {}
    steps1, steps2 = (61, 21) if quick else (201, 41)
    span = 8.0
    fig1, ax1 = plt.subplots(1, 2, figsize=(11, 3.8))
    fig2, ax2 = plt.subplots(1, 2, figsize=(11, 4.6))
    for i, name in enumerate(["logreg-bce", "logreg-mse"]):
        ex = examples.load(name)
        d = D.random(ex.problem, n=2, seed=0)  # the same random draw for both: same model, same data
        line_ds = surface(ex.problem, None, d.select(0), steps=steps1, span=span, progress=False, strategy="loop",
                          store=out / f"{name}-slice.zarr", overwrite=True)
        plane_ds = surface(ex.problem, None, d, steps=steps2, span=span, progress=progress,
                           store=out / f"{name}-plane.zarr", overwrite=True)
        line_ds.attrs["name"] = plane_ds.attrs["name"] = name
        plot.line(line_ds, ax=ax1[i], accuracy=False, title=f"{name}: 1-D slice")
        plot.contour(plane_ds, ax=ax2[i], levels=25, title=f"{name}: 2-D slice")
        check = second_difference_check(line_ds)
        results[name] = {"convex_known": ex.convex, "loss_at_theta": ex.problem.loss(ex.center),
                         "slice": check, "stores": [f"{name}-slice.zarr", f"{name}-plane.zarr"],
                         "description": ex.description}
    fig1.tight_layout()
    fig2.tight_layout()
    f1 = _save(fig1, out, "logreg-slices.png", files)
    f2 = _save(fig2, out, "logreg-planes.png", files)
    bce, mse = results["logreg-bce"]["slice"], results["logreg-mse"]["slice"]
    return {
        "example": "logreg-bce vs logreg-mse", "figures": [f1, f2], "models": results,
        "shows": ("The same linear model w·x + b on the same data (breast cancer) along the same direction. With "
                  f"binary cross-entropy the slice is convex (smallest second difference {bce['min_second_difference']:.2e}, "
                  f"never below the rounding bound). With the squared loss on the sigmoid output it is not: the "
                  f"sigmoid saturates, the loss flattens out and bends the wrong way (second difference "
                  f"{mse['min_second_difference']:.2e}, below the rounding bound by {-mse['worst_margin']:.2e} at "
                  f"t = {mse['at']:.2f}). BCE composes log with the sigmoid into log(1 + e^(−z)), convex in z = w·x + b; "
                  "(y − σ(z))² is not convex in z."),
    }


def _mlp_digits(out: Path, quick: bool, progress: bool, files: list[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    ex = examples.load("mlp-digits")
    pr = ex.problem
    d = D.random(pr, n=2, seed=0)
    steps = 15 if quick else 41
    t0 = time.perf_counter()
    ds = surface(pr, None, d, steps=steps, span=1.0, store=out / "mlp-digits-plane.zarr", overwrite=True,
                 progress=progress)
    seconds = time.perf_counter() - t0
    ds.attrs["name"] = "mlp-digits"
    names = []
    vmax = float(np.nanpercentile(ds.loss.values, 90))
    names.append(_save(plot.contour(ds, levels=30, vmax=vmax), out, "mlp-digits-contour.png", files))
    names.append(_save(plot.contour(ds, filled=True, levels=30, vmax=vmax), out, "mlp-digits-filled.png", files))
    names.append(_save(plot.surface3d(ds, log=True), out, "mlp-digits-3d.png", files))
    plot.save_html(plot.interactive(ds, log=True, title="mlp-digits: log10 loss (drag to rotate)"),
                   out / "mlp-digits-3d.html")
    fig, axs = plt.subplots(1, 2, figsize=(11, 3.8))
    checks = {}
    for i, ax in enumerate(axs):
        s = surface(pr, None, d.select(i), steps=4 * steps + 1, span=1.0, progress=False)
        s.attrs["name"] = "mlp-digits"
        checks[f"direction {i + 1}"] = second_difference_check(s)
        plot.line(s, ax=ax, title=f"mlp-digits: slice along direction {i + 1}")
    fig.tight_layout()
    names.append(_save(fig, out, "mlp-digits-slices.png", files))
    loss = ds.loss.values
    return {
        "example": "mlp-digits", "description": ex.description, "figures": names, "stores": ["mlp-digits-plane.zarr"],
        "interactive": "mlp-digits-3d.html",
        "grid": list(ds.loss.shape), "seconds": seconds, "strategy": ds.attrs["strategy"],
        "loss_at_theta": pr.loss(ex.center), "loss_min": float(np.nanmin(loss)), "loss_max": float(np.nanmax(loss)),
        "accuracy_at_theta": pr.evaluate(ex.center).get("accuracy"), "slices": checks,
        "max_abs_cosine": d.spec["max_abs_cosine"],
        "shows": ("A filter-normalised random plane (Li et al. 2018) through the trained MLP: a basin around θ* "
                  "that rises steeply within one filter-norm unit. Random slices average the curvature over "
                  "many directions, so they often look convex near a minimum even though the loss is not "
                  "(the seed net and the logistic pair show why); `lossatlas hessian` and `lossatlas audit` "
                  "look along the directions where it is not."),
    }


def _audits(out: Path, quick: bool, progress: bool, files: list[str]) -> dict[str, Any]:
    """Convexity audits side by side; the strongest certificate of each proof saved and re-checked from disk."""
    names = ("logreg-bce", "logreg-mse", "seed-relu") if quick else \
        ("linreg-mse", "logreg-bce", "softmax-ce", "logreg-mse", "seed-relu", "mlp-digits")
    comparison = convexity.compare(*names, budget=120 if quick else 300, progress=False)
    figure = _save(comparison.figure(), out, "convexity-audit.png", files)
    (out / "certificates").mkdir(exist_ok=True)
    results: dict[str, Any] = {}
    for row, result in zip(comparison.rows(), comparison.audits):
        entry = {k: row[k] for k in ("verdict", "kinds", "best_jensen_gap", "lambda_min", "lambda_max", "seconds",
                                     "known_convex")}
        if result.certificates:
            best = max(result.certificates, key=lambda c: c.margin)
            path = best.save(out / "certificates" / f"{row['name']}.npz")
            entry.update(certificate=str(path.relative_to(out)), certificate_kind=best.kind,
                         certificate_gap=best.gap, certificate_bound=best.bound,
                         verified_from_file=convexity.Certificate.load(path).verify(examples.load(row["name"]).problem))
        results[row["name"]] = entry
    return {
        "example": "convexity audit", "figures": [figure], "audits": results,
        "shows": ("Each model audited the same way: a search for a violation of Jensen's inequality, the extreme "
                  "Hessian eigenvalues, and hidden-unit symmetries. A proof is a certificate (three points and their "
                  "losses) that anyone can re-check in float64 with `lossatlas verify`; a convex baseline gets "
                  "\"no violation found\" — never \"convex\", because sampling cannot prove convexity. The figure "
                  "shows the relative Jensen gaps of all sampled segments (> 0 is a violation), λmin/λmax at θ "
                  "and a random slice of each model."),
    }


def run(out: str | Path = "lossatlas-demo", *, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out`` and return the summary (also written as summary.json/summary.md)."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files: list[str] = []
    sections = [_seed_relu(out, quick, progress, files), _logreg_pair(out, quick, progress, files),
                _mlp_digits(out, quick, progress, files), _audits(out, quick, progress, files)]
    summary = {"lossatlas_version": __import__("lossatlas").__version__, "quick": quick,
               "seconds": time.perf_counter() - t0, "sections": sections, "figures": files}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "summary.md").write_text(_markdown(summary))
    return summary


def _markdown(summary: dict[str, Any]) -> str:
    lines = ["# lossatlas demo", "",
             "Why is a neural network's loss non-convex although MSE or cross-entropy is convex? The loss is "
             "convex *in the model's output*; as a function of the *parameters* it is the composition of that "
             "convex function with the network, and composition with a non-linear map breaks convexity.", ""]
    for sec in summary["sections"]:
        lines += [f"## {sec['example']}", "", sec["shows"], ""]
        for f in sec["figures"]:
            lines += [f"![{f}]({f})", ""]
        if "jensen_gap" in sec:
            lines += [f"- loss at θ*: {sec['loss_at_theta']:.3e}; at the rescaled twin: {sec['loss_at_twin']:.3e}; "
                      f"at the midpoint: {sec['loss_at_midpoint']:.4f}; Jensen gap: {sec['jensen_gap']:.4f}", ""]
        if "models" in sec:
            for name, m in sec["models"].items():
                s = m["slice"]
                lines.append(f"- {name}: smallest second difference along the slice {s['min_second_difference']:.3e} "
                             f"(rounding bound {s['rounding_bound']:.1e}) → "
                             f"{'non-convex slice: proven' if s['proves_nonconvex_slice'] else 'no violation found'}")
            lines.append("")
        if "audits" in sec:
            lines += ["| model | verdict | certificates | λmin / λmax at θ | certificate (re-checked from file) | time |",
                      "|---|---|---|---|---|---|"]
            for name, a in sec["audits"].items():
                lam = (f"{a['lambda_min']:.3g} / {a['lambda_max']:.3g}" if a["lambda_min"] is not None else "–")
                cert = (f"[{a['certificate_kind']}]({a['certificate']}): gap {a['certificate_gap']:.3g} > bound "
                        f"{a['certificate_bound']:.1e}, {'verified' if a['verified_from_file'] else 'NOT verified'}"
                        if "certificate" in a else "none")
                lines.append(f"| {name} | {a['verdict']} | {', '.join(a['kinds']) or '–'} | {lam} | {cert} | "
                             f"{a['seconds']:.1f} s |")
            lines += ["", "Check a certificate yourself: `lossatlas verify certificates/seed-relu.npz seed-relu`.", ""]
        if "grid" in sec:
            lines += [f"- {sec['grid'][0]}×{sec['grid'][1]} grid in {sec['seconds']:.1f} s ({sec['strategy']} "
                      f"strategy); loss at θ* {sec['loss_at_theta']:.4f}, range {sec['loss_min']:.4f} – "
                      f"{sec['loss_max']:.2f}", ""]
        if sec.get("interactive"):
            lines += [f"Interactive 3-D view: [{sec['interactive']}]({sec['interactive']})", ""]
        if sec.get("stores"):
            lines += ["Stores (reopen with `lossatlas plot STORE` / `lossatlas info STORE`): " +
                      ", ".join(f"`{s}`" for s in sec["stores"]), ""]
    lines.append(f"_Made by lossatlas {summary['lossatlas_version']} in {summary['seconds']:.1f} s._")
    return "\n".join(lines) + "\n"
