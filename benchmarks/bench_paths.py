"""Paths between models: speed of each step, measured in one run against baselines from the same run.

On the two ``mlp-digits`` networks of ``lossatlas.examples.mlp_digits_pair`` (MLP 64-128-128-10,
1797 samples) and the recorded ``mlp-digits`` trajectory (31 checkpoints):

1. ``interpolate`` (101 values of t) vs a naive loop (functional_call at a + t·(b − a) per t);
2. ``align`` (weight matching) — and the barrier before and after it;
3. ``directions.pca`` (streamed Gram matrix) vs scikit-learn's ``PCA(svd_solver="full")`` on the
   checkpoint matrix (loading included for both);
4. ``connect``: seconds per training step (one-bend Bezier, 128 samples per step).

Runs are interleaved (each repetition runs every contender once); medians and the median of the
per-repetition ratios are printed. Usage: ``python benchmarks/bench_paths.py [--reps 5]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch.func import functional_call

import lossatlas
from lossatlas import examples


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def naive_line(model, loss_fn, x, y, a, b, ts):
    net = copy.deepcopy(model).eval()
    out = []
    with torch.no_grad():
        for t in ts:
            p = {k: a[k] + float(t) * (b[k] - a[k]) for k in a}
            out.append(float(loss_fn(functional_call(net, p, (x,)), y)))
    return np.array(out)


def sklearn_pca(traj, names):
    m = np.stack([lossatlas.params.flatten(traj.load(i, names)).double().numpy() for i in range(len(traj))])
    return PCA(n_components=2, svd_solver="full").fit(m - m[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    ea, eb = examples.mlp_digits_pair()
    problem = ea.problem
    a, b = ea.center, eb.center
    x, y = examples.digits()
    loss_fn = torch.nn.CrossEntropyLoss()
    traj = examples.mlp_digits_trajectory()
    names = problem.param_names
    ts = np.linspace(0, 1, 101)
    times: dict[str, list[float]] = {k: [] for k in ("interpolate", "naive line", "align", "pca", "sklearn pca",
                                                    "connect step")}
    for rep in range(args.reps):
        dt, line = timed(lambda: lossatlas.interpolate(problem, a, b, steps=101, strategy="loop", progress=False))
        times["interpolate"].append(dt)
        dt, ref = timed(lambda: naive_line(ea.model, loss_fn, x, y, a, b, ts))
        times["naive line"].append(dt)
        if rep == 0:
            print(f"interpolate vs naive loop: max |Δloss| = {np.abs(line.loss.values - ref).max():.2e}")
        dt, result = timed(lambda: lossatlas.align(a, b, problem))
        times["align"].append(dt)
        dt, d = timed(lambda: lossatlas.directions.pca(traj, n=2, like=problem))
        times["pca"].append(dt)
        dt, sk = timed(lambda: sklearn_pca(traj, names))
        times["sklearn pca"].append(dt)
        if rep == 0:
            print("explained variance ratio: lossatlas", np.round(d.spec["explained_variance_ratio"], 10),
                  "sklearn", np.round(sk.explained_variance_ratio_, 10))
            after = lossatlas.interpolate(problem, a, result.params, steps=101, progress=False)
            print(f"barrier {line.attrs['barrier']:.4f} -> {after.attrs['barrier']:.4f} after alignment "
                  f"({result.iterations} sweeps)")
        dt, curve = timed(lambda: lossatlas.connect(problem, a, b, iters=50, lr=0.03, batch_size=128, seed=rep,
                                                    progress=False))
        times["connect step"].append(dt / 50)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmedians over {args.reps} interleaved repetitions, torch threads {torch.get_num_threads()}:")
    for k, v in med.items():
        print(f"  {k:14s} {v * 1e3:9.1f} ms")
    ratio = statistics.median(n / i for n, i in zip(times["naive line"], times["interpolate"]))
    print(f"  naive line / interpolate: {ratio:.2f}×")
    ratio = statistics.median(s / p for s, p in zip(times["sklearn pca"], times["pca"]))
    print(f"  sklearn pca / lossatlas pca: {ratio:.2f}×")


if __name__ == "__main__":
    main()
