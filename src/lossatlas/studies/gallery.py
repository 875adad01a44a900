"""Regenerate ``docs/gallery.md`` from the quick studies (``make images``)::

    python -m lossatlas.studies.gallery --build build/studies --docs docs

Each quick study runs into ``build/studies/NAME`` (resuming from its cache), its figures are copied to
``docs/images/studies/`` and the page is written from the tables. The comparisons with Li et al. 2018
are computed from the numbers in the tables, so the page says what *this* run shows.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from ._core import REGISTRY, markdown_table, run_study

ORDER = ["depth", "skip", "width", "batch-size", "trajectory", "activation", "targets"]
TABLE = ["model", "params", "train_acc", "test_acc", "train_loss", "verdict", "nonconvexity", "nonconvexity_half",
         "minima", "minima_real", "minima_saddle", "minima_not_critical", "minima_unresolved", "lambda_max",
         "lambda_min", "ratio", "trace", "sam", "asam", "eps_sharpness", "filter_width"]
EXTRA = ["lr", "width_filter", "width_raw", "pc1_variance", "pc2_variance", "lambda_max_path_max", "stability_limit"]


def _by(rows, key):
    return {r[key]: r for r in rows}


def _yes(flag: bool) -> str:
    return "**reproduces**" if flag else "**does not reproduce**"


def _claim(claims: list | None, study: str, claim: str, flag: bool, numbers: str) -> str:
    """``_yes(flag)``, recording ``(study, claim, flag, numbers)`` in ``claims`` for the page's summary."""
    if claims is not None:
        claims.append((study, claim, bool(flag), numbers))
    return _yes(flag)


def _training(rows: list[dict[str, Any]]) -> str:
    worst = min(rows, key=lambda r: r["train_acc"])
    loss = max(rows, key=lambda r: r.get("train_loss", float("nan")))
    low = [r["model"] for r in rows if r["train_acc"] < 0.9]
    return (f"Training: lowest training accuracy {worst['train_acc']:.3f} ({worst['model']}), highest training loss "
            f"{loss.get('train_loss', float('nan')):.3g} ({loss['model']}) — "
            + (f"below 90 % training accuracy: {', '.join(low)}." if low else "every member fits its training set "
               "to ≥ 90 %."))


def _depth(name: str, rows: list[dict[str, Any]], cfg: dict[str, Any], claims: list | None) -> list[str]:
    """Depth study: the linear model's convex end and non-convexity growing with depth (Li et al. Fig. 5)."""
    out = []
    nc = [r["nonconvexity"] for r in rows]
    lin = rows[0]
    deeper = ("proven non-convex" if all(r["verdict"].startswith("non-convex") for r in rows[1:])
              else "not all proven non-convex")
    ok = lin["verdict"] == "no violation found" and lin["nonconvexity"] == 0.0
    res = _claim(claims, name, "linear softmax model (depth 1) convex-looking: no violation, fraction 0 (theory)",
                 ok, f"{lin['verdict']}, {lin['nonconvexity']:.3f}")
    out.append(f"Convex end: the linear softmax model's audit says *{lin['verdict']}* and its plane's "
               f"non-convexity fraction is {lin['nonconvexity']:.2f} ({res} the theory); the deeper nets are "
               f"{deeper}.")
    mono = all(a <= b for a, b in zip(nc, nc[1:])) and nc[-1] > nc[0]
    by_depth = ", ".join(f"{r['model']} {r['nonconvexity']:.3f}" for r in rows)
    res = _claim(claims, name, "non-convexity fraction grows with depth (no shortcuts)", mono, by_depth)
    out.append(f"Non-convexity fraction by depth: {by_depth} — "
               f"{'grows monotonically' if mono else 'does not grow monotonically'} with depth at this scale "
               f"({res} 'deeper plain nets are less convex', Li et al. Fig. 5).")
    return out


def _skip(name: str, rows: list[dict[str, Any]], cfg: dict[str, Any], claims: list | None) -> list[str]:
    """Skip study: with vs without shortcuts — non-convexity, slice minima, training (Li et al. Fig. 5)."""
    out = []
    deep = max(r["depth"] for r in rows)
    s = [r for r in rows if r["depth"] == deep and r["shortcuts"]][0]
    n = [r for r in rows if r["depth"] == deep and not r["shortcuts"]][0]
    nums = f"{s['nonconvexity']:.3f} with vs {n['nonconvexity']:.3f} without"
    res = _claim(claims, name, f"deepest depth {deep}: more non-convex without shortcuts",
                 n["nonconvexity"] > s["nonconvexity"], nums)
    out.append(f"Li et al. Fig. 5 (deepest depth {deep}): non-convexity fraction with shortcuts "
               f"{s['nonconvexity']:.3f} vs without {n['nonconvexity']:.3f} — {res} the paper's direction "
               f"(more non-convex without).")
    nums = f"{s['minima']} with vs {n['minima']} without"
    res = _claim(claims, name, f"deepest depth {deep}: more slice minima without shortcuts",
                 n["minima"] > s["minima"], nums)
    out.append(f"Slice minima at depth {deep}: with shortcuts {s['minima']} ({s['minima_real']} real minima, "
               f"{s['minima_saddle']} saddles, {s['minima_not_critical']} not critical), without {n['minima']} "
               f"({n['minima_real']} real, {n['minima_saddle']} saddles, "
               f"{n['minima_not_critical']} not critical) — {res} the paper's 'chaotic, many minima' without "
               "shortcuts"
               + (" — none of those checked is a minimum of the loss in the full parameter space, so the count "
                  "is the slice's, not the loss's." if s["minima_real"] + n["minima_real"] == 0 else "."))
    gaps = {d: [r for r in rows if r["depth"] == d and not r["shortcuts"]][0]["nonconvexity"]
            - [r for r in rows if r["depth"] == d and r["shortcuts"]][0]["nonconvexity"]
            for d in sorted({r["depth"] for r in rows})}
    out.append("Non-convexity gap (noshort − shortcuts) by depth: "
               + ", ".join(f"{d}: {g:+.3f}" for d, g in gaps.items()) + ".")
    acc = ", ".join(f"{r['model']} {r['test_acc']:.3f}" for r in rows)
    epochs = cfg.get("train", {}).get("epochs", "?")
    out.append(f"Every ResNet gets the same schedule ({epochs} epochs), not training to convergence; at depth "
               f"{deep} the plain net fits {'less' if n['train_acc'] < s['train_acc'] else 'no less'} of its "
               f"training set ({n['train_acc']:.3f} vs {s['train_acc']:.3f} with shortcuts; He et al. 2016 and "
               f"Li et al. 2018: deep plain nets train worse). Test accuracy: {acc}.")
    out.append(f"The landscape metrics use {rows[0].get('metric_n', '?')} training samples and the BatchNorm "
               "statistics stored with each model (bn='eval', as the library warns): away from θ they do not "
               "describe the point evaluated, which is part of what the planes show.")
    return out


def _width(name: str, rows: list[dict[str, Any]], cfg: dict[str, Any], claims: list | None) -> list[str]:
    """Width study: wider → more convex-looking and flatter (Li et al. Fig. 6)."""
    out = []
    nc = [r["nonconvexity"] for r in rows]
    fw = [r["filter_width"] for r in rows]
    ncs = ", ".join(f"{v:.3f}" for v in nc)
    res = _claim(claims, name, "wider → more convex-looking (widest vs narrowest non-convexity)", nc[-1] < nc[0],
                 ncs)
    out.append(f"Li et al. Fig. 6 (wider → more convex-looking): non-convexity {ncs} "
               f"from narrowest to widest — {res} (widest vs narrowest).")
    fws = ", ".join(f"{v:.2f}" for v in fw)
    res = _claim(claims, name, "wider → flatter (filter-normalised width, widest vs narrowest)", fw[-1] > fw[0],
                 fws)
    lms = ", ".join(f"{r['lambda_max']:.3g}" for r in rows)
    out.append(f"Filter-normalised width {fws} ({res} 'wider is flatter'); λmax {lms}.")
    return out


def _batch_size(name: str, rows: list[dict[str, Any]], cfg: dict[str, Any], claims: list | None) -> list[str]:
    """Batch-size study: small vs large batch width per weight decay, raw vs filter-normalised (Li et al. Fig. 3)."""
    out = []
    bs = sorted({r["batch_size"] for r in rows})
    for wd in sorted({r["weight_decay"] for r in rows}):
        small = [r for r in rows if r["batch_size"] == bs[0] and r["weight_decay"] == wd][0]
        large = [r for r in rows if r["batch_size"] == bs[-1] and r["weight_decay"] == wd][0]
        res = _claim(claims, name, f"weight decay {wd:g}: small batch flatter (filter-normalised width)",
                     small["width_filter"] > large["width_filter"],
                     f"{small['width_filter']:.3f} vs {large['width_filter']:.3f}")
        out.append(f"Weight decay {wd:g}: filter-normalised width small batch {small['width_filter']:.3f} vs large "
                   f"{large['width_filter']:.3f} ({res} 'small batch is flatter'); raw-direction width "
                   f"{small['width_raw']:.3f} vs {large['width_raw']:.3f}; test accuracy {small['test_acc']:.3f} "
                   f"vs {large['test_acc']:.3f}.")
        if wd > 0:
            res = _claim(claims, name, f"weight decay {wd:g}: raw directions make the small batch look sharper",
                         small["width_raw"] < large["width_raw"],
                         f"{small['width_raw']:.3f} vs {large['width_raw']:.3f}")
            out.append(f"Li et al. Fig. 3 (with weight decay, raw directions make the small-batch minimiser look "
                       f"*sharper*, an artefact of its larger weights): raw width {small['width_raw']:.3f} (small) "
                       f"vs {large['width_raw']:.3f} (large) — {res}.")
    return out


def _trajectory(name: str, rows: list[dict[str, Any]], cfg: dict[str, Any], claims: list | None) -> list[str]:
    """Trajectory study: a path in two dimensions (Li et al. Figs. 9–10), edge of stability (Cohen et al. 2021)."""
    out = []
    for r in rows:
        two = r["pc1_variance"] + r["pc2_variance"]
        res1 = _claim(claims, name, f"{r['model']}: the path lies mostly in two dimensions (PC1 + PC2 > 50 %)",
                      two > 0.5, f"{100 * two:.1f} %")
        res2 = _claim(claims, name, f"{r['model']}: λmax reaches 2/η (edge of stability, > 0.9 · 2/η)",
                      r["lambda_max_path_max"] > 0.9 * r["stability_limit"],
                      f"{r['lambda_max_path_max']:.3g} vs {r['stability_limit']:.3g}")
        out.append(f"{r['model']}: PC1 + PC2 explain {100 * two:.1f} % of the path's variance (Li et al. "
                   f"Figs. 9–10: most of it lies in two dimensions — {res1}); largest λmax on the path "
                   f"{r['lambda_max_path_max']:.3g} vs 2/η = {r['stability_limit']:.3g} (edge of stability, "
                   f"Cohen et al. 2021: λmax reaches 2/η — {res2} in this run).")
    return out


def _activation(name: str, rows: list[dict[str, Any]], cfg: dict[str, Any], claims: list | None) -> list[str]:
    """Activation study: non-convexity per activation, the deep linear network's verdict, learning rates."""
    out = []
    lin = [r for r in rows if r["model"] == "linear"]
    out.append("Non-convexity fraction: " + ", ".join(f"{r['model']} {r['nonconvexity']:.3f} ({r['verdict']})"
                                                      for r in rows) + ".")
    if lin:
        res = _claim(claims, name, "a deep linear network is non-convex in its weights (theory)",
                     lin[0]["verdict"].startswith("non-convex"), lin[0]["verdict"])
        out.append(f"Deep linear network: *{lin[0]['verdict']}* ({res} the theory: the weights multiply, so the "
                   "loss is non-convex although the function is linear).")
    lrs = ", ".join(f"{r['model']} {r['lr']:g}" for r in rows if "lr" in r)
    if lrs:
        out.append(f"Learning rates: {lrs} (a sigmoid's slope is at most 1/4, so it gets a larger step).")
    return out


def _targets(name: str, rows: list[dict[str, Any]], cfg: dict[str, Any], claims: list | None) -> list[str]:
    """Targets study: convexity verdicts of linear + BCE vs sigmoid + MSE and 1-hidden on easy/hard targets."""
    out = []
    ok = all((r["verdict"] == "no violation found") == r["model"].startswith("linear + BCE") for r in rows)
    _claim(claims, name, "linear + BCE convex-looking on easy and hard targets; sigmoid + MSE and 1-hidden "
                         "proven non-convex on both (theory)", ok,
           ", ".join(f"{r['model']}: {r['verdict']}" for r in rows))
    out.append("Linear + BCE stays *no violation found* on easy and hard targets, sigmoid + MSE and the "
               "one-hidden-layer net are proven non-convex on both: "
               + ("as theory says." if ok else "NOT as expected — see the table.")
               + " The hard targets cap the training accuracy by design: XOR is not linearly separable (the "
               "linear models stay near 50 %) and 15 % of the labels are flipped.")
    return out


_FINDINGS = {
    "depth": _depth,
    "skip": _skip,
    "width": _width,
    "batch-size": _batch_size,
    "trajectory": _trajectory,
    "activation": _activation,
    "targets": _targets,
}


def findings(name: str, rows: list[dict[str, Any]], cfg: dict[str, Any], claims: list | None = None) -> list[str]:
    """Sentences comparing this run with the paper's (or the theory's) claim, from the numbers; each
    claim's outcome is also appended to ``claims`` as ``(study, claim, reproduced, numbers)``."""
    out = [_training(rows)]
    study = _FINDINGS.get(name)
    if study is not None:
        out += study(name, rows, cfg, claims)
    return out


def write_gallery(build: Path, docs: Path, *, run: bool = True, size: str = "quick") -> Path:
    images = docs / "images" / "studies"
    images.mkdir(parents=True, exist_ok=True)
    lines = ["# Gallery: the quick studies", "",
             "Generated by `make images` (`python -m lossatlas.studies.gallery`) from `lossatlas study NAME --quick`. "
             "Every plane is a filter-normalised random plane (Li et al. 2018) through the trained model, span ±1, "
             "drawn on one colour scale per study. The verdict is the convexity audit's: *non-convex (proven)* "
             "means a certificate verified in float64; *no violation found* is not a proof of convexity. Slice "
             "minima are classified in the full parameter space (real minimum / saddle / not critical / "
             "unresolved — only the first few, lowest first, are checked). Seeds are fixed and were never tuned: "
             "where a finding of the paper does not reproduce at this scale, this page says so.", ""]
    times, sections, claims = [], [], []
    for name in ORDER:
        study = REGISTRY[name]
        out = build / name
        if run:
            run_study(name, out, size=size)
        meta = json.loads((out / "table.json").read_text())
        rows = meta["rows"]
        fresh = meta.get("fresh_run", {})
        times.append((name, len(rows), fresh.get("seconds", float("nan")), fresh.get("cpu_seconds", float("nan")),
                      meta.get("threads", 1)))
        sections += [f"## `{name}` — {study.question}", "", study.description, ""]
        for fig in meta["figures"]:
            target = images / f"{name}-{fig}"
            shutil.copyfile(out / fig, target)
            sections.append(f"![{name} {fig}](images/studies/{target.name})")
        sections += ["", markdown_table(rows, TABLE + [c for c in EXTRA if c in rows[0]]), ""]
        sections += [f"- {s}" for s in findings(name, rows, meta["config"], claims)]
        sections += [f"- Note: {n}" for n in meta.get("notes", [])]
        data = ", ".join(dict.fromkeys(str(r["data"]) for r in rows))
        sections += [f"- Data: {data}; reference: {study.reference}.", ""]
    lines += ["## What reproduces at this scale", "",
              "Each claim of the paper (or of the theory) checked against the tables below, from the numbers of "
              "this run.", "", "| study | claim | at this scale | numbers |", "|---|---|---|---|"]
    lines += [f"| {st} | {c} | {'reproduces' if ok else '**does not reproduce**'} | {n} |" for st, c, ok, n in claims]
    lines += [""] + sections
    lines += ["## Time of each quick study", "",
              "Wall and CPU seconds of the last run that trained or measured something (a rerun only reads the "
              "cache and redraws). CPU is the process's CPU time (all threads); wall can be several times larger on "
              "a shared machine.", "", "| study | models | wall s | CPU s | torch threads |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {k} | {w:.0f} | {c:.0f} | {t} |" for n, k, w, c, t in times]
    lines.append("")
    page = docs / "gallery.md"
    page.write_text("\n".join(lines))
    return page


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=Path, default=Path("build/studies"))
    ap.add_argument("--docs", type=Path, default=Path("docs"))
    ap.add_argument("--no-run", action="store_true", help="Only rewrite the page from existing tables.")
    args = ap.parse_args(argv)
    print(write_gallery(args.build, args.docs, run=not args.no_run))


if __name__ == "__main__":
    main()
