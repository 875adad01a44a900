"""The exact Hessian spectrum of a (small enough) problem, computed once and cached on disk.

The dense Hessian is built column block by column block from exact float64 Hessian-vector products
(n products), symmetrised, and all its eigenvalues computed in place by LAPACK (``dsyevd``, values
only). For the 26,122-parameter ``mlp-digits`` example the matrix takes 5.5 GB and the
eigenvalues take about an hour on 2 CPU cores; the result (eigenvalues and diagonal) is cached in
``$LOSSATLAS_EXACT_CACHE`` (default ``/tmp/lossatlas-exact``) under a key made of the parameter
fingerprint, the data fingerprint and the torch version.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch

import lossatlas
from lossatlas import curvature


def cache_path(problem: lossatlas.Problem, center) -> Path:
    key = hashlib.sha256(f"{lossatlas.params.fingerprint(center)}|{problem.fingerprint()['data']}|"
                         f"{torch.__version__}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("LOSSATLAS_EXACT_CACHE", "/tmp/lossatlas-exact"))
    return root / f"spectrum-{key}.npz"


def exact_spectrum(problem: lossatlas.Problem, center, *, block: int = 16, log=print) -> dict[str, np.ndarray]:
    """``{"eigenvalues": ascending float64, "diagonal": float64}`` of the Hessian at ``center``."""
    path = cache_path(problem, center)
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    import scipy.linalg

    op = curvature.hessian_operator(problem, center, dtype=torch.float64)
    n = op.shape[0]
    log(f"exact spectrum: building the dense {n}×{n} Hessian ({n * n * 8 / 2**30:.1f} GiB) from {n} products")
    dense = np.empty((n, n), dtype=np.float64)
    t0 = time.perf_counter()
    for s in range(0, n, block):
        e = torch.zeros(n, min(block, n - s), dtype=torch.float64)
        e[torch.arange(s, s + e.shape[1]), torch.arange(e.shape[1])] = 1.0
        cols = torch.stack([op.mv(e[:, j]) for j in range(e.shape[1])])   # rows of the symmetric matrix
        dense[s:s + e.shape[1]] = cols.numpy()
        if (s // block) % 200 == 0:
            log(f"  {s + e.shape[1]}/{n} products, {time.perf_counter() - t0:.0f} s")
    for s in range(0, n, 2048):  # symmetrise in place, block by block: (A + Aᵀ)/2
        for t in range(s, n, 2048):
            a = dense[s:s + 2048, t:t + 2048]
            b = dense[t:t + 2048, s:s + 2048]
            avg = (a + b.T) / 2
            dense[s:s + 2048, t:t + 2048] = avg
            dense[t:t + 2048, s:s + 2048] = avg.T
    diagonal = np.diag(dense).copy()
    log(f"exact spectrum: Hessian built in {time.perf_counter() - t0:.0f} s; eigenvalues (LAPACK dsyevd)…")
    t1 = time.perf_counter()
    values = scipy.linalg.eigh(dense.T, eigvals_only=True, overwrite_a=True, check_finite=False, driver="evd")
    del dense
    log(f"exact spectrum: eigenvalues in {time.perf_counter() - t1:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, eigenvalues=values, diagonal=diagonal)
    os.replace(tmp, path)
    return {"eigenvalues": values, "diagonal": diagonal}


if __name__ == "__main__":
    from lossatlas import examples

    torch.set_num_threads(1)  # products on one thread (the machine is shared); LAPACK uses its own threads
    ex = examples.load("mlp-digits")
    spec = exact_spectrum(ex.problem, ex.center)
    ev = spec["eigenvalues"]
    print(f"λmax {ev[-1]:.6f}  λmin {ev[0]:.6f}  trace {ev.sum():.4f} (diag {spec['diagonal'].sum():.4f})  "
          f"negative fraction {(ev < 0).mean():.4f}")
