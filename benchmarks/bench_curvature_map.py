"""|λmin/λmax| map of ``mlp-digits`` (26,122 parameters): warm-started Lanczos vs cold starts (issue 17).

* ``old``: every point from the seeded Gaussian vector, chunks of 4 points (the behaviour before:
  ``warm_start=False, chunk=4``);
* ``new``: the default — whole-row chunks, each point but a chunk's first warm-started from its
  neighbours' Ritz vectors (the nearest predecessor's and the others' within 1.5 grid steps, summed at
  each end), stopping on the same residual rule.

Both are compared, point by point, with a tight cold-start reference (``tol=1e-7``, extremality
certified by :func:`lossatlas.curvature.eigenvalues`): the largest relative error of λmin and λmax
(relative to |λmax|, the scale of the residual rule) and of λmax alone. Repetitions are
interleaved; medians are printed. Also measured: a block of Hessian-vector products in one
``torch.vmap``-ed forward-over-reverse call (:meth:`CurvatureOperator.mm` with ``vectorize=True``)
vs one double-backward product at a time, per product.

Target: ``ratio map products per point new/old`` ≤ 0.3. Usage::

    python benchmarks/bench_curvature_map.py [--steps 5] [--span 1.0] [--reps 2] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _verdict import verdict  # noqa: E402

import lossatlas  # noqa: E402
from lossatlas import curvature, examples  # noqa: E402
from lossatlas import params as P  # noqa: E402


def block_products(problem, theta, ks=(1, 2, 4, 8), reps=5) -> dict:
    """Seconds per product: one at a time (double backward) vs blocks of k in one vmap-ed call."""
    loop = curvature.hessian_operator(problem, theta, vectorize=False)
    block = curvature.hessian_operator(problem, theta, vectorize=True)
    n = loop.shape[0]
    out = {}
    for k in ks:
        V = torch.randn(n, k, generator=torch.Generator().manual_seed(k), dtype=loop.dtype)
        block.mm(V)  # warm-up (and the vmap check)
        times = {"loop": [], "block": []}
        for _ in range(reps):
            for name, op in (("loop", loop), ("block", block)):
                t = time.perf_counter()
                op.mm(V)
                times[name].append((time.perf_counter() - t) / k)
        out[k] = {name: statistics.median(v) for name, v in times.items()}
        out[k]["vectorized"] = bool(block.vectorize)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--span", type=float, default=1.0)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ex = examples.load("mlp-digits")
    pr = ex.problem
    d = lossatlas.directions.random(pr, n=2, seed=0)
    kw = dict(steps=a.steps, span=a.span, tol=a.tol, progress=False)
    variants = {"old": dict(warm_start=False, chunk=4), "new": dict(warm_start=True)}
    times = {k: [] for k in variants}
    maps = {}
    for _ in range(a.reps):
        for name, extra in variants.items():
            t = time.perf_counter()
            maps[name] = curvature.ratio_map(pr, None, d, **kw, **extra)
            times[name].append(time.perf_counter() - t)
    # the reference: every point cold, tight, extremality certified
    t = time.perf_counter()
    xs, ys = maps["new"].x.values, maps["new"].y.values
    ref_min = np.empty((len(xs), len(ys)))
    ref_max = np.empty_like(ref_min)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            theta = P.lincomb(pr.params(), list(d.vectors), [float(x), float(y)])
            e = curvature.eigenvalues(pr, theta, k=1, which="both", tol=1e-7, max_products=3000, progress=False)
            ref_max[i, j], ref_min[i, j] = e.values[0], e.values[-1]
    ref_seconds = time.perf_counter() - t
    med = {k: statistics.median(v) for k, v in times.items()}
    products = {k: float(np.mean(m.products.values)) for k, m in maps.items()}
    errors = {}
    for k, m in maps.items():
        scale = np.abs(ref_max)
        err = np.maximum(np.abs(m.lambda_min.values - ref_min), np.abs(m.lambda_max.values - ref_max)) / scale
        errors[k] = {"max_rel_err_vs_lambda_max": float(err.max()),
                     "max_rel_err_lambda_max": float((np.abs(m.lambda_max.values - ref_max) / scale).max()),
                     "max_rel_err_lambda_min": float((np.abs(m.lambda_min.values - ref_min) / np.abs(ref_min)).max()),
                     "converged": int(m.converged.values.sum())}
    print(f"mlp-digits |λmin/λmax| map {a.steps}×{a.steps}, span {a.span}, tol {a.tol:g}, {a.threads} thread(s), "
          f"{a.reps} interleaved repetitions; reference (tol 1e-7, certified) in {ref_seconds:.0f} s")
    for k in variants:
        e = errors[k]
        print(f"  {k}: {products[k]:5.1f} products per point (min {maps[k].products.values.min():.0f}, max "
              f"{maps[k].products.values.max():.0f}), median {med[k]:6.1f} s; vs reference: max |Δλ|/|λmax| "
              f"{e['max_rel_err_vs_lambda_max']:.1e}, λmax rel {e['max_rel_err_lambda_max']:.1e}, λmin rel "
              f"{e['max_rel_err_lambda_min']:.1e}; converged {e['converged']}/{maps[k].products.size}")
    print(f"  products per point new/old {products['new'] / products['old']:.2f}; time new/old "
          f"{med['new'] / med['old']:.2f}")
    theta = P.lincomb(pr.params(), list(d.vectors), [0.5, 0.5])
    blocks = block_products(pr, theta)
    for k, b in blocks.items():
        used = "used" if b["vectorized"] else "fell back"
        print(f"  block of {k}: {b['block'] * 1e3:6.2f} ms per product vmap-ed ({used})"
              f" vs {b['loop'] * 1e3:6.2f} ms one at a time: {b['block'] / b['loop']:.2f}×")
    err_new, err_old = errors["new"]["max_rel_err_vs_lambda_max"], errors["old"]["max_rel_err_vs_lambda_max"]
    verdict("ratio map products per point new/old", products["new"] / products["old"], 0.3,
            detail=f"{products['new']:.1f} / {products['old']:.1f}; max |Δλ|/|λmax| vs a tight reference "
                   f"new {err_new:.1e}, old {err_old:.1e}")
    if a.json:
        a.json.write_text(json.dumps({"products": products, "seconds": med, "errors": errors,
                                      "blocks": {str(k): v for k, v in blocks.items()}}, indent=2))


if __name__ == "__main__":
    main()
