"""Curvature speed and accuracy on the 26,122-parameter MLP 64-128-128-10 trained on digits (``mlp-digits``).

Every estimate is compared with the *exact* Hessian spectrum (dense float64 Hessian, all eigenvalues
by LAPACK; computed once and cached, see ``_exact_spectrum.py``) and, in the same run, with peers:

* PyPI ``pyhessian`` (power iteration, Hutchinson, SLQ; optional: ``pip install --no-deps pyhessian``;
  its ``density`` calls ``torch.eig``, removed from torch, so this benchmark shims it with
  ``torch.linalg.eigh`` on the symmetric tridiagonal matrix);
* SciPy's ``eigsh`` (ARPACK) on lossatlas's Hessian operator;
* PyPI ``curvlinops-for-pytorch`` (Hessian products; optional, installed *without* its
  dependencies, which pull torchvision and another torch: ``pip install --no-deps --target DIR
  curvlinops-for-pytorch backpack-for-pytorch unfoldNd linear_operator jaxtyping wadler-lindig
  einops einconv opt-einsum tqdm`` and pass ``--peers DIR``).

Targets (issue 4): largest eigenvalue no slower than pyhessian at ≤ 1e-5 relative error; smallest
eigenvalue (which power iteration cannot find) converged with residual ≤ 1e-3·λmax in under 1 s;
trace within 1 % in under 1 s.

Runs are interleaved (each repetition runs every contender once); medians are printed, with the
ratio to pyhessian's median. Usage::

    python benchmarks/bench_curvature.py [--reps 9] [--threads 2] [--peers /tmp/peers-curv] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lossatlas  # noqa: E402
from lossatlas import curvature, examples  # noqa: E402
from _verdict import verdict  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def interleave(contenders: dict, reps: int) -> dict:
    """{name: (median seconds, last result)}; each repetition runs every contender once."""
    times = {k: [] for k in contenders}
    last = {}
    for _ in range(reps):
        for name, fn in contenders.items():
            dt, out = timed(fn)
            times[name].append(dt)
            last[name] = out
    return {k: (statistics.median(v), last[k]) for k, v in times.items()}


class PyHessian:
    """pyhessian on a private copy of the model (it calls .eval() and .backward() on what it gets)."""

    def __init__(self, model, x, y):
        import pyhessian  # noqa: F401  (its package attribute "hessian" is the class; the module is in sys.modules)

        module = sys.modules["pyhessian.hessian"]
        self.model = copy.deepcopy(model)
        self.hc = module.hessian(self.model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        self.products = 0
        original = module.hessian_vector_product

        def counted(*args, **kwargs):  # count pyhessian's Hessian-vector products
            self.products += 1
            return original(*args, **kwargs)
        module.hessian_vector_product = counted

    def eigenvalue(self, tol):
        torch.manual_seed(0)
        start = self.products
        values, _ = self.hc.eigenvalues(maxIter=500, tol=tol, top_n=1)
        return values[0], self.products - start

    def trace(self):
        torch.manual_seed(0)
        samples = self.hc.trace(maxIter=100, tol=1e-3)
        return float(np.mean(samples)), len(samples)

    def density(self, iters, probes):
        torch.manual_seed(0)
        original = getattr(torch, "eig", None)

        def eig(T, eigenvectors=True):  # torch.eig was removed; T is symmetric, so eigh gives the same pairs
            values, vectors = torch.linalg.eigh(T)
            return torch.stack([values, torch.zeros_like(values)], dim=1), vectors

        torch.eig = eig
        try:
            nodes, weights = self.hc.density(iter=iters, n_v=probes)
        finally:
            if original is None:
                del torch.eig
            else:
                torch.eig = original
        return np.asarray(nodes, dtype=np.float64), np.asarray(weights, dtype=np.float64)


def wasserstein(exact: np.ndarray, nodes: np.ndarray, weights: np.ndarray) -> float:
    """W₁ distance between the exact spectral measure and the SLQ estimate (mean of the probes' quadratures)."""
    from scipy.stats import wasserstein_distance

    w = np.clip(weights, 0, None).reshape(-1)
    return float(wasserstein_distance(exact, nodes.reshape(-1), v_weights=w / w.sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", type=str, default=None, help="folder with curvlinops installed --no-deps")
    ap.add_argument("--json", type=str, default=None, help="write the numbers here")
    ap.add_argument("--no-exact", action="store_true", help="skip the exact spectrum (errors not reported)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.peers:
        sys.path.insert(0, args.peers)

    ex = examples.load("mlp-digits")
    problem, center = ex.problem, ex.center
    (x, y), _ = problem.data.first()
    model = copy.deepcopy(ex.model)
    import os

    print(f"mlp-digits: {problem}, loss {problem.loss(center):.4f}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f} (other work on the machine)")
    results: dict = {"threads": torch.get_num_threads(), "reps": args.reps}

    exact = None
    if not args.no_exact:
        from _exact_spectrum import exact_spectrum

        dt, spec = timed(lambda: exact_spectrum(problem, center, log=lambda m: print("  " + m)))
        ev = spec["eigenvalues"]
        exact = {"lmax": float(ev[-1]), "lmin": float(ev[0]), "trace": float(spec["diagonal"].sum()),
                 "negative": float((ev < 0).mean()), "values": ev}
        eps = 1e-3 * exact["lmax"]
        exact["negative_eps"] = float((ev < -eps).mean())
        print(f"exact (float64 dense, cached): λmax {exact['lmax']:.6f}, λmin {exact['lmin']:.6f}, "
              f"trace {exact['trace']:.4f}, fraction < 0: {exact['negative']:.4f}, "
              f"< −1e-3·λmax: {exact['negative_eps']:.4f}  ({dt:.1f} s to load/compute)")
        results["exact"] = {k: v for k, v in exact.items() if k != "values"}

    try:
        peer = PyHessian(model, x, y)
    except ImportError:
        peer = None
        print("pyhessian not installed: peer columns skipped (pip install --no-deps pyhessian)")

    op = curvature.hessian_operator(problem, center)
    n = op.shape[0]

    # -- 1. products --------------------------------------------------------------------------------
    print("\n1. Hessian-vector product (per product, median of interleaved runs)")
    leaves = {k: v.detach().requires_grad_(True) for k, v in center.items()}
    (batch, nb), = list(problem.data)
    fresh = curvature.hessian_operator(problem, center, retain=False)
    vs = torch.randn(n, 16, generator=torch.Generator().manual_seed(0))
    v0 = vs[:, 0].contiguous()  # like pyhessian's inputs (a strided column would add a copy to each product)
    contenders = {
        "forward+backward (unit)": lambda: torch.autograd.grad(problem.batch_terms(leaves, batch, nb, metrics=False)
                                                               ["loss"], list(leaves.values())),
        "lossatlas (graph kept)": lambda: op.mv(v0),
        "lossatlas (graph rebuilt)": lambda: fresh.mv(v0),
    }
    if peer is not None:
        from pyhessian.utils import hessian_vector_product

        pv = [t.reshape(p.shape) for t, p in zip(op.unflatten(vs[:, 0]).values(), peer.hc.params)]
        contenders["pyhessian"] = lambda: hessian_vector_product(peer.hc.gradsH, peer.hc.params, pv)
    try:
        from curvlinops import HessianLinearOperator

        cl_model = copy.deepcopy(model)
        cl = HessianLinearOperator(cl_model, torch.nn.CrossEntropyLoss(), list(cl_model.parameters()), [(x, y)],
                                   check_deterministic=False)
        contenders["curvlinops (1 vector)"] = lambda: cl @ vs[:, 0]
        contenders["curvlinops (16 vectors, per vector)"] = lambda: cl @ vs
        rel = float((cl @ vs[:, 0] - op.mv(vs[:, 0])).norm() / op.mv(vs[:, 0]).norm())
        print(f"   curvlinops vs lossatlas product: relative difference {rel:.1e}")
    except ImportError:
        print("   curvlinops not importable (pass --peers DIR): skipped")
    timing = interleave(contenders, max(args.reps, 20))  # products are cheap: more repetitions, steadier medians
    base = timing["forward+backward (unit)"][0]
    products = {}
    for name, (t, _) in timing.items():
        per = t / 16 if "16 vectors" in name else t
        products[name] = per
        print(f"   {name:38s} {per * 1e3:8.2f} ms  ({per / base:4.2f}× forward+backward)")
    results["products_ms"] = {k: v * 1e3 for k, v in products.items()}

    # -- 2. largest eigenvalue ---------------------------------------------------------------------------
    print("\n2. Largest eigenvalue λmax")
    from scipy.sparse.linalg import eigsh

    v0 = np.random.default_rng(0).standard_normal(n)
    scipy_op = op.to_scipy()

    def ours_top():
        start = op.products
        e = curvature.eigenvalues(op, k=1, which="largest", tol=1e-4, progress=False)
        return e.values[0], op.products - start, e.residuals[0], bool(e.converged[0])

    def arpack_top():
        start = op.products
        val = eigsh(scipy_op, k=1, which="LA", tol=1e-5, v0=v0, return_eigenvectors=False)[0]
        return val, op.products - start, None, None

    contenders = {"lossatlas Lanczos (tol 1e-4)": ours_top, "scipy eigsh LA (tol 1e-5)": arpack_top}
    if peer is not None:
        for tol in (1e-3, 1e-4, 1e-5, 1e-6):
            label = f"pyhessian power (tol {tol:g}{', default' if tol == 1e-3 else ''})"
            contenders[label] = lambda tol=tol: (*peer.eigenvalue(tol), None, None)
    timing = interleave(contenders, args.reps)
    rel_error = exact and (lambda v: abs(v - exact["lmax"]) / exact["lmax"])
    ref_name = None
    if peer is not None:  # the reference: pyhessian's loosest tolerance that reaches 1e-5 relative error
        accurate = [k for k, (t, out) in timing.items() if k.startswith("pyhessian")
                    and (not rel_error or rel_error(out[0]) <= 1e-5)]
        ref_name = accurate[0] if accurate else None
        print(f"   (reference: {ref_name}, pyhessian's loosest tolerance with ≤ 1e-5 relative error)")
    results["lambda_max"] = _report(timing, ref_name, rel_error, "rel. error")
    results["lambda_max_reference"] = ref_name

    # -- 3. smallest eigenvalue --------------------------------------------------------------------------
    print("\n3. Smallest eigenvalue λmin (power iteration finds only the eigenvalue of largest |λ|)")

    def ours_bottom():
        start = op.products
        e = curvature.eigenvalues(op, k=1, which="smallest", tol=1e-3, progress=False)
        return e.values[0], op.products - start, e.residuals[0] / e.scale, bool(e.converged[0])

    def ours_both():
        start = op.products
        e = curvature.eigenvalues(op, k=1, which="both", tol=1e-3, progress=False)
        return e.values[-1], op.products - start, e.residuals[-1] / e.scale, bool(e.all_converged)

    lmax_hint = exact["lmax"] if exact else 1.0

    def arpack_bottom():
        start = op.products
        vals, vecs = eigsh(scipy_op, k=1, which="SA", v0=v0, tol=0.0 if not exact else 1e-3 * lmax_hint / abs(
            exact["lmin"]))
        products = op.products - start
        r = np.linalg.norm(scipy_op @ vecs[:, 0] - vals[0] * vecs[:, 0]) / lmax_hint
        return vals[0], products, r, r <= 1e-3

    timing = interleave({"lossatlas Lanczos smallest (tol 1e-3)": ours_bottom,
                         "lossatlas Lanczos both ends (tol 1e-3)": ours_both,
                         "scipy eigsh SA (same absolute tol)": arpack_bottom}, args.reps)
    results["lambda_min"] = _report(timing, None, exact and (lambda v: abs(v - exact["lmin"]) / exact["lmax"]),
                                    "error/λmax", residual="residual/λmax")

    # -- 4. trace ------------------------------------------------------------------------------------------
    print("\n4. Trace")
    contenders = {
        "lossatlas Hutch++ (99 products)": lambda: curvature.trace(op, probes=99, progress=False),
        "lossatlas Hutchinson (99 products)": lambda: curvature.trace(op, method="hutchinson", probes=99,
                                                                      progress=False),
    }
    if peer is not None:
        contenders["pyhessian Hutchinson (tol 1e-3 on a moving mean)"] = peer.trace
    timing = interleave(contenders, args.reps)
    rows = {}
    ref = timing.get("pyhessian Hutchinson (tol 1e-3 on a moving mean)", (None,))[0]
    for name, (t, out) in timing.items():
        value, extra = (out.value, f"± {out.stderr:.3f} (1 s.e.), {out.products} products") if hasattr(
            out, "stderr") else (out[0], f"{out[1]} products, no error bar")
        err = abs(value - exact["trace"]) / abs(exact["trace"]) if exact else float("nan")
        ratio = f"{t / ref:5.2f}× pyhessian" if ref else ""
        print(f"   {name:50s} {t:7.3f} s  {ratio}  trace {value:.4f} {extra}  rel. error {err:.2%}")
        rows[name] = {"seconds": t, "value": value, "rel_error": err}
    results["trace"] = rows

    # -- 5. density ------------------------------------------------------------------------------------------
    print("\n5. Spectral density (stochastic Lanczos quadrature)")
    contenders = {
        "lossatlas SLQ (90 steps × 1 probe)": lambda: curvature.density(op, iters=90, probes=1, progress=False),
        "lossatlas SLQ (90 steps × 8 probes)": lambda: curvature.density(op, iters=90, probes=8, progress=False),
    }
    if peer is not None:
        contenders["pyhessian SLQ (90 steps × 1 probe, torch.eig shim)"] = lambda: peer.density(90, 1)
    timing = interleave(contenders, max(1, min(args.reps, 3)))  # slow: at most 3 repetitions
    rows = {}
    ref = timing.get("pyhessian SLQ (90 steps × 1 probe, torch.eig shim)", (None,))[0]
    for name, (t, out) in timing.items():
        if isinstance(out, tuple):
            nodes, weights = out
            neg = float(np.mean((weights * (nodes < 0)).sum(axis=1)))
            neg_text = f"negative mass {neg:.3f} (count of nodes < 0)"
        else:
            nodes, weights = out.nodes, out.weights
            lo, hi = out.negative_bounds
            neg = out.negative_mass.value
            neg_text = f"negative mass {neg:.3f} (bracket {lo:.3f}–{hi:.3f})"
        w1 = wasserstein(exact["values"], nodes, weights) if exact else float("nan")
        ratio = f"{t / ref:5.2f}× pyhessian" if ref else ""
        print(f"   {name:52s} {t:7.2f} s  {ratio}  W₁ to exact {w1:.2e}  {neg_text}")
        rows[name] = {"seconds": t, "wasserstein": w1, "negative_mass": neg}
    if exact:
        print(f"   exact fraction of eigenvalues < 0: {exact['negative']:.3f}; < −1e-3·λmax: {exact['negative_eps']:.4f}")
    results["density"] = rows

    # -- targets -------------------------------------------------------------------------------------------
    print("\nTargets")
    lm = results["lambda_max"]
    ours, ref = lm["lossatlas Lanczos (tol 1e-4)"], lm.get(results.get("lambda_max_reference"))
    if ref and exact:
        ok = ours["seconds"] <= ref["seconds"] and ours["error"] <= 1e-5
        print(f"   λmax ≤ 1e-5 rel. error, no slower than pyhessian at that accuracy (its error "
              f"{ref['error']:.1e}): {ours['seconds']:.3f} s vs {ref['seconds']:.3f} s, error {ours['error']:.1e}"
              f" → {'met' if ok else 'NOT met'}")
        verdict("λmax (rel. error ≤ 1e-5) time / pyhessian's", ours["seconds"] / ref["seconds"], 1.0,
                detail=f"error {ours['error']:.1e}")
    small = results["lambda_min"]["lossatlas Lanczos smallest (tol 1e-3)"]
    ok = small["converged"] and small["residual"] <= 1e-3 and small["seconds"] < 1.0
    print(f"   λmin converged, residual ≤ 1e-3·λmax, < 1 s: {small['seconds']:.3f} s, residual/λmax "
          f"{small['residual']:.1e} → {'met' if ok else 'NOT met'}")
    verdict("λmin converged, residual ≤ 1e-3·λmax: seconds", small["seconds"] if small["converged"] and
            small["residual"] <= 1e-3 else float("inf"), 1.0, unit=" s")
    tr = results["trace"]["lossatlas Hutch++ (99 products)"]
    if exact:
        ok = tr["rel_error"] <= 0.01 and tr["seconds"] < 1.0
        print(f"   trace within 1 % in < 1 s: {tr['seconds']:.3f} s, error {tr['rel_error']:.2%} → "
              f"{'met' if ok else 'NOT met'}")
        verdict("trace within 1 %: seconds", tr["seconds"] if tr["rel_error"] <= 0.01 else float("inf"), 1.0,
                unit=" s", detail=f"error {tr['rel_error']:.2%}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))


def _report(timing: dict, ref_name: str | None, error, error_label: str, residual: str = "residual") -> dict:
    ref = timing[ref_name][0] if ref_name else None
    rows = {}
    for name, (t, (value, products, res, converged)) in timing.items():
        err = error(value) if error else float("nan")
        ratio = f"{t / ref:5.2f}× pyhessian" if ref else ""
        extra = f"{products:4d} products" + (f", {residual} {res:.1e}, converged {converged}" if res is not None
                                             else "")
        print(f"   {name:42s} {t:7.3f} s  {ratio}  λ = {value:.6f}  {error_label} {err:.1e}  {extra}")
        rows[name] = {"seconds": t, "value": float(value), "error": err, "products": products,
                      "residual": res, "converged": converged}
    return rows


if __name__ == "__main__":
    main()
