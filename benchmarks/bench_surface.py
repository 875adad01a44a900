"""Surface evaluation speed, measured in one run against baselines from the same run.

1. A 41×41 filter-normalised plane of an MLP 64-128-128-10 on scikit-learn digits (1797 samples):
   lossatlas.surface vs a naive reference loop (functional_call at θ + a·d1 + b·d2 per point) vs the
   PyPI package ``loss-landscapes`` (``random_plane``; optional peer: ``pip install --no-deps
   loss-landscapes``).
2. A 401×401 grid of a 4-parameter model (the seed toy net relu(w1·relu(w0·x+b0)+b1)).

Runs are interleaved (each repetition runs every contender once) and the medians and the median
of the per-repetition ratios are printed. Each repetition also measures the plane's GEMM floor (the
products after the folded first layer alone, as bare GEMMs on preallocated buffers) so that the
target — the plane within 1.18× its own floor (issue 17) — is a ratio measured in the same run.
Usage: ``python benchmarks/bench_surface.py [--reps 5]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.func import functional_call

import lossatlas

try:
    from _verdict import verdict
except ImportError:  # run as a module from the repository root
    from benchmarks._verdict import verdict

FLOOR_TARGET = 1.18  # issue 17: the plane within 1.18× the bare-GEMM floor measured in the same run


def digits_mlp():
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                              torch.nn.ReLU(), torch.nn.Linear(128, 10))
    return net, x, y


def naive_plane(net, loss_fn, x, y, center, d1, d2, coords):
    """Reference: every point evaluated from scratch with functional_call."""
    out = np.empty((len(coords), len(coords)))
    with torch.no_grad():
        for i, a in enumerate(coords):
            for j, b in enumerate(coords):
                p = {k: center[k] + a * d1[k] + b * d2[k] for k in center}
                out[i, j] = float(loss_fn(functional_call(net, p, (x,)), y))
    return out


class SeedNet(torch.nn.Module):
    """f(x) = relu(w1·relu(w0·x + b0) + b1): four scalar parameters."""

    def __init__(self):
        super().__init__()
        self.w0 = torch.nn.Parameter(torch.tensor(1.0))
        self.b0 = torch.nn.Parameter(torch.tensor(0.1))
        self.w1 = torch.nn.Parameter(torch.tensor(1.0))
        self.b1 = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, x):
        return torch.relu(self.w1 * torch.relu(self.w0 * x + self.b0) + self.b1)


CLOCK = [time.perf_counter]  # --clock cpu: time.process_time (CPU seconds of this process; robust on a
                             # shared machine when torch runs one thread, meaningless as wall time otherwise)


def gemm_floor(net, x, points: int, reps: int = 30) -> float:
    """Seconds that the unavoidable products of one plane take on this machine at best: every layer
    after the first (whose product the exact fold removes) as one bare GEMM per point on preallocated
    activations of the right shape (the faster of x·Wᵀ and (W·xᵀ)ᵀ), with no activation function,
    loss, bias or parameter update."""
    total = 0.0
    for m in [m for m in net if isinstance(m, torch.nn.Linear)][1:]:
        a, w = torch.rand(len(x), m.in_features), m.weight.detach().clone()
        out, out_t = torch.empty(len(x), m.out_features), torch.empty(m.out_features, len(x))
        forms = (lambda: torch.mm(a, w.t(), out=out), lambda: torch.mm(w, a.t(), out=out_t))
        best = []
        for form in forms:
            for _ in range(5):
                form()
            samples = []
            for _ in range(5):
                t = CLOCK[0]()
                for _ in range(reps):
                    form()
                samples.append((CLOCK[0]() - t) / reps)
            best.append(statistics.median(samples))
        total += min(best)
    return total * points


def timed(fn):
    t = CLOCK[0]()
    result = fn()
    return CLOCK[0]() - t, result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=41)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: perf_counter; cpu: process CPU time (use with OMP_NUM_THREADS=1 on a busy machine)")
    args = ap.parse_args()
    if args.clock == "cpu":
        CLOCK[0] = time.process_time
    try:
        import loss_landscapes
        import loss_landscapes.metrics
    except ImportError:
        loss_landscapes = None
        print("loss-landscapes not installed: `pip install --no-deps loss-landscapes` to compare")

    net, x, y = digits_mlp()
    loss_fn = torch.nn.CrossEntropyLoss()
    problem = lossatlas.Problem(net, loss_fn, (x, y))
    d = lossatlas.directions.random(problem, n=2, seed=0)
    center = problem.params()
    coords = np.linspace(-1, 1, args.steps)
    flops = args.steps**2 * 2 * len(x) * sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight"))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, clock {args.clock}; MLP plane {args.steps}x{args.steps} "
          f"on {len(x)} samples = {flops / 1e9:.0f} GFLOP (forward GEMMs)")

    seed_x = torch.tensor([[1.0], [2.0], [-1.0]])
    seed_problem = lossatlas.Problem(SeedNet(), torch.nn.MSELoss(), (seed_x, seed_x.clone()))
    seed_d = lossatlas.directions.random(seed_problem, n=2, seed=0, norm=None, ignore=None)

    rows: dict[str, list[float]] = {}
    floors: list[float] = []  # the GEMM floor of the plane, measured in every repetition
    check = None
    for rep in range(args.reps):
        t, ds = timed(lambda: lossatlas.surface(problem, center, d, steps=args.steps, span=1.0, progress=False,
                                                metrics=False))
        rows.setdefault("lossatlas (loss)", []).append(t)
        t, ds_acc = timed(lambda: lossatlas.surface(problem, center, d, steps=args.steps, span=1.0,
                                                    progress=False))
        rows.setdefault("lossatlas (loss+accuracy)", []).append(t)
        t, ref = timed(lambda: naive_plane(problem._module, loss_fn, x, y, center, d[0], d[1], coords))
        rows.setdefault("naive loop", []).append(t)
        if loss_landscapes is not None:
            metric = loss_landscapes.metrics.Loss(loss_fn, x, y)
            model = copy.deepcopy(net)
            t, _ = timed(lambda: loss_landscapes.random_plane(model, metric, distance=1, steps=args.steps,
                                                              normalization="filter", deepcopy_model=True))
            rows.setdefault("loss-landscapes random_plane", []).append(t)
        t, tiny = timed(lambda: lossatlas.surface(seed_problem, None, seed_d, steps=401, span=1.0, progress=False))
        rows.setdefault("401x401 tiny grid (lossatlas)", []).append(t)
        floors.append(gemm_floor(net, x, args.steps**2))
        check = float(np.max(np.abs(ds.loss.values - ref) / np.abs(ref)))
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in rows.items())
              + f", GEMM floor {floors[-1]:.3f}s", flush=True)

    print(f"\nmax relative difference lossatlas vs naive loop: {check:.2e}; strategy chosen: {ds.attrs['strategy']}"
          f"; tiny grid strategy: {tiny.attrs['strategy']}")
    print(f"\n{'contender':34s} {'median s':>9s} {'min s':>8s} {'GFLOP/s':>8s}")
    for k, v in rows.items():
        gf = f"{flops / statistics.median(v) / 1e9:8.1f}" if "tiny" not in k else "       -"
        print(f"{k:34s} {statistics.median(v):9.3f} {min(v):8.3f} {gf}")
    base = rows["lossatlas (loss)"]
    print("\nratios (median over repetitions of per-repetition ratios):")
    for k in rows:
        if k.startswith("lossatlas") or "tiny" in k:
            continue
        r = statistics.median(a / b for a, b in zip(base, rows[k]))
        print(f"  lossatlas (loss) / {k}: {r:.2f}x")
    floor_ratio = statistics.median(a / f for a, f in zip(base, floors))
    print(f"  lossatlas (loss) / GEMM floor: {floor_ratio:.2f}x (floor median {statistics.median(floors):.3f}s: the "
          f"{args.steps**2} points' products after the first layer alone, bare GEMMs on preallocated buffers)")
    if "loss-landscapes random_plane" in rows:
        ll = statistics.median(rows["loss-landscapes random_plane"])
        print(f"  GEMM floor / loss-landscapes: {statistics.median(floors) / ll:.2f}x")
    print()
    verdict("MLP plane / GEMM floor", floor_ratio, FLOOR_TARGET, unit="x",
            detail=f"median of {len(floors)} per-repetition ratios")
    tiny_med = statistics.median(rows["401x401 tiny grid (lossatlas)"])
    verdict("401x401 tiny grid", tiny_med, 1.0, unit=" s")


if __name__ == "__main__":
    main()
