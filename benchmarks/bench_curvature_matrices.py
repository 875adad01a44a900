"""Curvature matrices: lossatlas vs curvlinops-for-pytorch, time and error against exact references.

Problem: an MLP 64-16-10 (tanh) on the 1797 digits of scikit-learn, cross-entropy, float64, batches
of 512 (1210 parameters, so every reference is a dense float64 matrix built with torch.func):
H (torch.autograd.functional.hessian), GGN = (1/N) Σ Jᵢᵀ (diag pᵢ − pᵢpᵢᵀ) Jᵢ (torch.func.jacrev),
EF = GᵀG/N (torch.func per-sample gradients); KFAC also on a single Linear layer under MSE, where it
is exact. One run; times are the median of 5 products (or one call for estimators), 1 thread.

    OMP_NUM_THREADS=1 python benchmarks/bench_curvature_matrices.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.func import functional_call, grad, jacrev, vmap

import lossatlas
from lossatlas import curvature as C
from lossatlas.testing import exact_hessian

torch.set_num_threads(1)
F64 = torch.float64


def timed(fn, repeat=5):
    out, times = None, []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def rel(a, b):
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    return float((a - b).norm() / b.norm())


def main():
    import curvlinops

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=F64)
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10)).double()
    loss = torch.nn.CrossEntropyLoss()
    batches = [(x[s:s + 512], y[s:s + 512]) for s in range(0, len(x), 512)]
    problem = lossatlas.Problem(net, loss, (x, y), batch_size=512)
    theta = problem.params()
    names = list(theta)
    N = len(x)
    params = [p for p in net.parameters()]
    n = sum(p.numel() for p in params)

    # exact references
    t = time.perf_counter()
    H = exact_hessian(net, loss, batches, theta)
    sizes = [theta[k].numel() for k in names]
    flat = torch.cat([theta[k].reshape(-1) for k in names])

    def f(vec, xb):
        p = {k: t_.reshape(theta[k].shape) for k, t_ in zip(names, vec.split(sizes))}
        return functional_call(net, p, (xb,))

    G = torch.zeros(n, n, dtype=F64)
    for xb, _ in batches:
        J = jacrev(f)(flat, xb)  # (b, 10, n)
        p = torch.softmax(f(flat, xb), 1)
        Hout = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        G += torch.einsum("bcn,bcd,bdm->nm", J, Hout, J) / N

    def one(pr, xi, yi):
        return loss(functional_call(net, pr, (xi[None],)), yi[None])

    g = vmap(grad(one), in_dims=(None, 0, 0))(theta, x, y)
    Gs = torch.cat([g[k].reshape(N, -1) for k in names], 1)
    EF = Gs.T @ Gs / N
    print(f"exact references: {time.perf_counter() - t:.1f} s, n = {n}")

    v = torch.randn(n, dtype=F64, generator=torch.Generator().manual_seed(0))
    rows = []

    def ours_and_theirs(name, ours_op, theirs_op, exact):
        ours_op @ v  # warm-up (graphs)
        out, dt = timed(lambda: ours_op @ v)
        rows.append((name + " product", rel(out, exact @ v), dt, "ours"))
        theirs_op @ v
        out, dt = timed(lambda: theirs_op @ v)
        rows.append((name + " product", rel(out, exact @ v), dt, "curvlinops"))

    common = dict(check_deterministic=False, num_data=N)
    ours_and_theirs("Hessian", C.hessian_operator(problem),
                    curvlinops.HessianLinearOperator(net, loss, params, batches, **common), H)
    ours_and_theirs("GGN", C.ggn_operator(problem),
                    curvlinops.GGNLinearOperator(net, loss, params, batches, **common), G)
    ours_and_theirs("empirical Fisher", C.ef_operator(problem),
                    curvlinops.EFLinearOperator(net, loss, params, batches, **common), EF)
    # sampled Fisher: the error is Monte-Carlo error against E[F] = GGN (1 draw per sample)
    ours_and_theirs("Fisher (MC, 1 draw) vs GGN", C.fisher_operator(problem, mc_samples=1, seed=0),
                    curvlinops.FisherMCLinearOperator(net, loss, params, batches, mc_samples=1, **common), G)
    Fo = C.fisher_operator(problem, mc_samples=16, seed=0)
    (mean, se), dt = timed(lambda: Fo.mv_stderr(v), repeat=1)
    rows.append(("Fisher (MC, 16 draws) ± stderr", rel(mean, G @ v), dt,
                 f"ours (median |error|/stderr {float(((mean - G @ v).abs() / se)[se > 0].median()):.2f})"))

    # diagonals
    d, dt = timed(lambda: C.diagonal(problem, method="exact"), repeat=1)
    rows.append(("Hessian diagonal, exact (n products)", rel(d.values, H.diag()), dt, "ours"))
    d, dt = timed(lambda: C.diagonal(problem, method="hutchinson", samples=100, seed=0), repeat=1)
    live = d.stderr > 0  # parameters of always-zero pixels have zero rows: no error, no stderr
    z = np.abs(d.values - H.diag().numpy())[live] / d.stderr[live]
    rows.append(("Hessian diagonal, Hutchinson 100", rel(d.values, H.diag()), dt,
                 f"ours (median |error|/stderr {np.median(z):.2f})"))
    Hcl = curvlinops.HessianLinearOperator(net, loss, params, batches, **common)
    torch.manual_seed(0)
    dc, dt = timed(lambda: curvlinops.hutchinson_diag(Hcl, 100), repeat=1)
    rows.append(("Hessian diagonal, Hutchinson 100", rel(dc, H.diag()), dt, "curvlinops (no stderr)"))

    # KFAC: an approximation on the MLP (error = KFAC vs GGN), exact on one Linear layer under MSE
    K, dt = timed(lambda: (lambda k: (k @ v, k)[1])(C.kfac_operator(problem)), repeat=1)  # factors: 1st product
    Kd = K.dense()
    rows.append(("KFAC (type-2) vs GGN, MLP: factors + 1st product", rel(Kd, G), dt, "curvlinops"))
    _, dt = timed(lambda: K @ v)
    rows.append(("KFAC product", rel(K @ v, G @ v), dt, "curvlinops"))
    E = C.kfac_operator(problem, ekfac=True)
    rows.append(("EKFAC vs GGN, MLP", rel(E.dense(), G), float("nan"), "curvlinops"))
    lin = torch.nn.Linear(64, 10).double()
    ty = torch.randn(N, 10, dtype=F64)
    one_layer = lossatlas.Problem(lin, torch.nn.MSELoss(), (x, ty), batch_size=512)
    G1 = C.ggn_operator(one_layer).dense()
    rows.append(("KFAC vs exact GGN, 1 Linear + MSE", rel(C.kfac_operator(one_layer).dense(), G1), float("nan"),
                 "curvlinops"))

    # damped inverse products (GGN + λI)⁻¹ v, λ = 1e-3
    lam = 1e-3
    exact = torch.linalg.solve(G + lam * torch.eye(n, dtype=F64), v)
    ggn = C.ggn_operator(problem)
    s, dt = timed(lambda: C.inverse_product(ggn, v, damping=lam, tol=1e-8, maxiter=2000), repeat=1)
    rows.append((f"CG (GGN+λI)⁻¹v: {s.iterations} it, residual {s.relative_residual:.1e}", rel(s.x, exact), dt,
                 "ours"))
    from linear_operator.utils.linear_cg import linear_cg

    Gcl = curvlinops.GGNLinearOperator(net, loss, params, batches, **common)
    out, dt = timed(lambda: linear_cg(lambda X: Gcl @ X + lam * X, v[:, None], tolerance=1e-8, max_iter=2000),
                    repeat=1)
    res = float((v - (G @ out[:, 0] + lam * out[:, 0])).norm() / v.norm())
    rows.append((f"CG (GGN+λI)⁻¹v (gpytorch linear_cg), residual {res:.1e}", rel(out[:, 0], exact), dt,
                 "curvlinops"))
    s, dt = timed(lambda: C.inverse_product(K, v, damping=lam, method="kfac"), repeat=1)
    rows.append(("KFAC (K+λI)⁻¹v vs (GGN+λI)⁻¹v", rel(s.x, exact), dt, "curvlinops"))

    print(f"\n{'quantity':58s} {'rel. error vs exact':>20s} {'time [s]':>10s}  engine")
    for name, err, dt, engine in rows:
        print(f"{name:58s} {err:20.2e} {dt:10.4f}  {engine}")


if __name__ == "__main__":
    main()
