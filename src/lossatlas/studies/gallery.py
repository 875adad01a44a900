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
TABLE = ["model", "params", "train_acc", "test_acc", "verdict", "nonconvexity", "nonconvexity_half", "minima",
         "minima_real", "minima_saddle", "minima_not_critical", "minima_unresolved", "lambda_max", "lambda_min",
         "ratio",
         "trace", "sam", "asam", "eps_sharpness", "filter_width"]


def _by(rows, key):
    return {r[key]: r for r in rows}


def _yes(flag: bool) -> str:
    return "**reproduces**" if flag else "**does not reproduce**"


def findings(name: str, rows: list[dict[str, Any]], cfg: dict[str, Any]) -> list[str]:
    """Sentences comparing this run with the paper's (or the theory's) claim, from the numbers."""
    out = []
    if name == "depth":
        nc = [r["nonconvexity"] for r in rows]
        lin = rows[0]
        deeper = ("proven non-convex" if all(r["verdict"].startswith("non-convex") for r in rows[1:])
                  else "not all proven non-convex")
        out.append(f"Convex end: the linear softmax model's audit says *{lin['verdict']}* and its plane's "
                   f"non-convexity fraction is {lin['nonconvexity']:.2f}; the deeper nets are {deeper}.")
        mono = all(a <= b for a, b in zip(nc, nc[1:]))
        by_depth = ", ".join(f"{r['model']} {r['nonconvexity']:.3f}" for r in rows)
        trend = "grows monotonically" if mono else "does not grow monotonically"
        out.append(f"Non-convexity fraction by depth: {by_depth} — {trend} with depth at this scale.")
    elif name == "skip":
        deep = max(r["depth"] for r in rows)
        s = [r for r in rows if r["depth"] == deep and r["shortcuts"]][0]
        n = [r for r in rows if r["depth"] == deep and not r["shortcuts"]][0]
        out.append(f"Li et al. Fig. 5 (deepest depth {deep}): non-convexity fraction with shortcuts "
                   f"{s['nonconvexity']:.3f} vs without {n['nonconvexity']:.3f} — "
                   f"{_yes(n['nonconvexity'] > s['nonconvexity'])} the paper's direction (more non-convex without).")
        out.append(f"Slice minima at depth {deep}: with shortcuts {s['minima']} ({s['minima_real']} real minima, "
                   f"{s['minima_saddle']} saddles, {s['minima_not_critical']} not critical), without {n['minima']} "
                   f"({n['minima_real']} real, {n['minima_saddle']} saddles, "
                   f"{n['minima_not_critical']} not critical) — "
                   f"{_yes(n['minima'] > s['minima'])} the paper's 'chaotic, many minima' without shortcuts"
                   + (" — but none of them is a minimum of the loss in the full parameter space, so the count is the "
                      "slice's, not the loss's." if s["minima_real"] + n["minima_real"] == 0 else "."))
        gaps = {d: [r for r in rows if r["depth"] == d and not r["shortcuts"]][0]["nonconvexity"]
                - [r for r in rows if r["depth"] == d and r["shortcuts"]][0]["nonconvexity"]
                for d in sorted({r["depth"] for r in rows})}
        out.append("Non-convexity gap (noshort − shortcuts) by depth: "
                   + ", ".join(f"{d}: {g:+.3f}" for d, g in gaps.items()) + ".")
    elif name == "width":
        nc = [r["nonconvexity"] for r in rows]
        fw = [r["filter_width"] for r in rows]
        ncs = ", ".join(f"{v:.2f}" for v in nc)
        out.append(f"Li et al. Fig. 6 (wider → more convex-looking): non-convexity {ncs} "
                   f"from narrowest to widest — {_yes(nc[-1] < nc[0])} (widest vs narrowest).")
        fws = ", ".join(f"{v:.2f}" for v in fw)
        lms = ", ".join(f"{r['lambda_max']:.3g}" for r in rows)
        out.append(f"Filter-normalised width {fws}; λmax {lms}.")
    elif name == "batch-size":
        bs = sorted({r["batch_size"] for r in rows})
        for wd in sorted({r["weight_decay"] for r in rows}):
            small = [r for r in rows if r["batch_size"] == bs[0] and r["weight_decay"] == wd][0]
            large = [r for r in rows if r["batch_size"] == bs[-1] and r["weight_decay"] == wd][0]
            out.append(f"Weight decay {wd:g}: filter-normalised width small batch {small['width_filter']:.3f} vs large "
                       f"{large['width_filter']:.3f} ({_yes(small['width_filter'] > large['width_filter'])} "
                       f"'small batch is flatter'); raw-direction width {small['width_raw']:.3f} vs "
                       f"{large['width_raw']:.3f}; test accuracy {small['test_acc']:.3f} vs {large['test_acc']:.3f}.")
            if wd > 0:
                out.append(f"Li et al. Fig. 3 (with weight decay, raw directions make the small-batch minimiser look "
                           f"*sharper*, an artefact of its larger weights): raw width {small['width_raw']:.3f} (small) "
                           f"vs {large['width_raw']:.3f} (large) — {_yes(small['width_raw'] < large['width_raw'])}.")
    elif name == "trajectory":
        for r in rows:
            out.append(f"{r['model']}: PC1 + PC2 explain {100 * (r['pc1_variance'] + r['pc2_variance']):.1f} % of the "
                       f"path's variance (Li et al. Figs. 9–10: most of it lies in two dimensions — "
                       f"{_yes(r['pc1_variance'] + r['pc2_variance'] > 0.5)}); largest λmax on the path "
                       f"{r['lambda_max_path_max']:.3g} vs 2/η = {r['stability_limit']:.3g} (edge of stability, "
                       f"Cohen et al. 2021: λmax reaches 2/η — "
                       f"{_yes(r['lambda_max_path_max'] > 0.9 * r['stability_limit'])} in this run).")
    elif name == "activation":
        out.append("Non-convexity fraction: " + ", ".join(f"{r['model']} {r['nonconvexity']:.2f} ({r['verdict']})"
                                                          for r in rows)
                   + ". A deep linear network is proven non-convex too: the weights multiply.")
    elif name == "targets":
        ok = all((r["verdict"] == "no violation found") == r["model"].startswith("linear + BCE") for r in rows)
        out.append("Linear + BCE stays *no violation found* on easy and hard targets, sigmoid + MSE and the "
                   "one-hidden-layer net are proven non-convex on both: "
                   + ("as theory says." if ok else "NOT as expected — see the table."))
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
    times = []
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
        lines += [f"## `{name}` — {study.question}", "", study.description, ""]
        for fig in meta["figures"]:
            target = images / f"{name}-{fig}"
            shutil.copyfile(out / fig, target)
            lines.append(f"![{name} {fig}](images/studies/{target.name})")
        lines += ["", markdown_table(rows, TABLE + [c for c in ("width_filter", "width_raw", "pc1_variance",
                                                              "pc2_variance", "lambda_max_path_max",
                                                              "stability_limit") if c in rows[0]]), ""]
        lines += [f"- {s}" for s in findings(name, rows, meta["config"])]
        lines += [f"- Note: {n}" for n in meta.get("notes", [])]
        lines += [f"- Data: {rows[0]['data']}; reference: {study.reference}.", ""]
    lines += ["## Time of each quick study", "",
              "Wall and CPU seconds of the last run that trained or measured something (a rerun only reads the "
              "cache and redraws). CPU is the process's CPU time; wall can be several times larger on a shared "
              "machine.", "", "| study | models | wall s | CPU s | torch threads |", "|---|---|---|---|---|"]
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
