"""Alternatives for the MLP plane's per-point work, each against the GEMM floor of the same run.

A record of what was measured for issue 17 (docs/benchmarks.md, "The MLP plane against its own GEMM
floor"), not a target of ``make bench``. Three parts, one torch thread, interleaved repetitions:

1. ``stages``: per-point sequences on preallocated, hot buffers (no library Python), each divided by
   the floor of the same repetition — today's eager sequence; the fold as one fused pass
   (``_add_relu(first, e₂, alpha=b)``: one fused multiply-add, other bits); layer 2 as ``mm(out=)``
   then ``_add_relu_(y, bias)``; the biases inside the GEMMs (a ones column, K = 129); the samples
   in row tiles (fold, layer 2 and layer 3 per tile, so the activations stay in the cache).
2. ``plane``: the loop strategy on rows of the real 41×41 plane with layer 2 replaced through the
   container's ReLU hook (``lossatlas._fast_paths.RELU_FORWARD``), and the vmap strategy with small
   batches, alternating per row; ratios to today's loop and whether the values are bit-identical.
3. ``compile`` (``--compile``; minutes): ``torch.compile`` (inductor, C++) of the per-point function:
   compile time, steady state against eager and the floor, rounding against eager. Run it twice
   with the same ``TORCHINDUCTOR_CACHE_DIR`` for the warm-cache compile time of a fresh process.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/plane_ideas.py [--parts stages,plane] [--compile]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

try:
    from bench_surface import digits_mlp
except ImportError:  # run as a module from the repository root
    from benchmarks.bench_surface import digits_mlp

import lossatlas
from lossatlas._fast_paths import RELU_FORWARD
from lossatlas.evaluator import PointEvaluator

N_CLASSES, HIDDEN = 10, 128
NLL = torch._C._nn.nll_loss_nd


def interleaved(fns: dict, reps: int, inner: int, base: str) -> None:
    """Print the median µs per call of each function and the median per-repetition ratio to ``base``."""
    for f in fns.values():
        for _ in range(3):
            f()
    res: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(reps):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t = time.process_time()
            for _ in range(inner):
                fns[k]()
            res[k].append((time.process_time() - t) / inner * 1e6)
    for k, v in res.items():
        ratio = statistics.median(a / b for a, b in zip(v, res[base]))
        print(f"  {k:34s} {statistics.median(v):8.1f} µs   / {base} {ratio:.3f}")


def _ce(z_t: Tensor, y: Tensor) -> Tensor:
    """The library's CE over few classes: log-softmax over dim 0 of zᵀ, nll over one 'image'."""
    return NLL(torch.log_softmax(z_t, dim=0).unsqueeze(0), y.unsqueeze(0), None, 1, -100).to(torch.float64)


def stages(reps: int) -> None:
    torch.manual_seed(0)
    _, x, y = digits_mlp()
    n = len(x)
    e = torch.randn(3, n, HIDDEN)
    first, out, h = torch.empty(n, HIDDEN), torch.empty(n, HIDDEN), torch.rand(n, HIDDEN)
    h2_out = torch.empty(n, HIDDEN)
    torch.mul(e[1], 0.3, out=first).add_(e[0])
    w2, b2 = torch.randn(HIDDEN, HIDDEN) * 0.1, torch.randn(HIDDEN) * 0.1
    w3, b3 = torch.randn(N_CLASSES, HIDDEN) * 0.1, torch.randn(N_CLASSES) * 0.1
    floor_out, floor_t = torch.empty(n, HIDDEN), torch.empty(N_CLASSES, n)
    # biases inside the GEMMs: [x | 1]·[W | b]ᵀ, and a 129th output fixed at 1 for the next layer
    x_aug, h_aug = torch.ones(n, HIDDEN + 1), torch.empty(n, HIDDEN + 1)
    w2_aug = torch.zeros(HIDDEN + 1, HIDDEN + 1)
    w2_aug[:HIDDEN, :HIDDEN], w2_aug[:HIDDEN, HIDDEN], w2_aug[HIDDEN, HIDDEN] = w2, b2, 1.0
    w3_aug = torch.cat([w3, b3[:, None]], 1)

    def tail(h1):
        h2 = torch.relu_(torch.addmm(b2, h1, w2.t()))
        return _ce(torch.addmm(b3.unsqueeze(1), w3, h2.t()), y)

    def tail_add_relu(h1):
        h2 = torch._add_relu_(torch.mm(h1, w2.t(), out=h2_out), b2)
        return _ce(torch.addmm(b3.unsqueeze(1), w3, h2.t()), y)

    def k129(b):
        torch.mul(e[2], b, out=out)
        torch._add_relu_(out, first)
        x_aug[:, :HIDDEN].copy_(out)  # (a fold writing into x_aug directly would save this pass)
        h2 = torch.relu_(torch.mm(x_aug, w2_aug.t(), out=h_aug))
        return _ce(torch.mm(w3_aug, h2.t()), y)

    z_t = torch.empty(N_CLASSES, n)

    def tiles(b, size):  # fold, layer 2 and layer 3 on row tiles that stay in the cache (the same bits)
        for s in range(0, n, size):
            h1 = torch._add_relu_(torch.mul(e[2, s:s + size], b, out=out[s:s + size]), first[s:s + size])
            h2 = torch.relu_(torch.addmm(b2, h1, w2.t()))
            torch.addmm(b3.unsqueeze(1), w3, h2.t(), out=z_t[:, s:s + size])
        return _ce(z_t, y)

    fused = torch._add_relu(first, e[2], alpha=0.3)
    split = torch._add_relu_(torch.mul(e[2], 0.3), first)
    print(f"stages (hot buffers, {n} samples; fused fold differs from the split one in "
          f"{int((fused != split).sum())} of {fused.numel()} values: fused multiply-add):")
    interleaved({
        "floor (bare GEMMs, layers 2, 3)": lambda: (torch.mm(h, w2.t(), out=floor_out),
                                                   torch.mm(w3, h.t(), out=floor_t)),
        "GEMMs with bias (addmm)": lambda: (torch.addmm(b2, h, w2.t()), torch.addmm(b3.unsqueeze(1), w3, h.t())),
        "today: fold 2 passes + layers + CE": lambda: tail(torch._add_relu_(torch.mul(e[2], 0.3, out=out), first)),
        "fold in 1 fused pass (FMA)": lambda: tail(torch._add_relu(first, e[2], alpha=0.3, out=out)),
        "layer 2 as mm(out=) + _add_relu_":
            lambda: tail_add_relu(torch._add_relu_(torch.mul(e[2], 0.3, out=out), first)),
        "biases in the GEMMs (K = 129)": lambda: k129(0.3),
        "rows in tiles of 256 samples": lambda: tiles(0.3, 256),
        "rows in tiles of 900 samples": lambda: tiles(0.3, 900),
    }, reps, 5, "floor (bare GEMMs, layers 2, 3)")


def plane(cycles: int) -> None:
    net, x, y = digits_mlp()
    problem = lossatlas.Problem(net, torch.nn.CrossEntropyLoss(), (x, y))
    d = lossatlas.directions.random(problem, n=2, seed=0)
    center = problem.params()
    coords = np.linspace(-1, 1, 41)
    rows = [np.array([(a, b) for b in coords]) for a in coords]
    layer2 = problem._module[2]
    buf = torch.empty(len(x), HIDDEN)

    def add_relu_out(mod, h):
        return torch._add_relu_(torch.mm(h, mod.weight.t(), out=buf), mod.bias)

    loop = PointEvaluator(problem, center, d, strategy="loop", metrics=False)
    runs = {"loop (today)": (loop, None), "loop, layer 2 mm(out=) + _add_relu_": (loop, add_relu_out)}
    for b in (2, 8):
        runs[f"vmap, {b} points a call"] = (PointEvaluator(problem, center, d, strategy="vmap", vmap_batch=b,
                                                          metrics=False), None)
    res: dict[str, list[float]] = {k: [] for k in runs}
    worst = {k: 0.0 for k in runs}
    for c in range(cycles):
        got = {}
        for k in (list(runs) if c % 2 == 0 else list(runs)[::-1]):
            ev, relu_forward = runs[k]
            if relu_forward is not None:
                layer2.__dict__[RELU_FORWARD] = relu_forward
            try:
                t = time.process_time()
                got[k] = ev(rows[c % len(rows)])["loss"]
                res[k].append(time.process_time() - t)
            finally:
                layer2.__dict__.pop(RELU_FORWARD, None)
        for k in runs:
            worst[k] = max(worst[k], float(np.max(np.abs(got[k] - got["loop (today)"]) / np.abs(got["loop (today)"]))))
    print(f"plane rows (41 points each, {cycles} alternating cycles):")
    for k, v in res.items():
        ratio = statistics.median(a / b for a, b in zip(v, res["loop (today)"]))
        print(f"  {k:34s} {statistics.median(v) / 41 * 1e6:8.0f} µs/pt / today {ratio:.3f}  "
              f"max rel. diff to today {worst[k]:.1e}")
    for ev, _ in runs.values():
        ev.close()


def compiled(reps: int) -> None:
    torch.manual_seed(0)
    net, x, y = digits_mlp()
    with torch.no_grad():
        e0, e2 = net[0](x), F.linear(x, torch.randn(HIDDEN, 64) * 0.1, torch.randn(HIDDEN) * 0.1)
    w2, b2, w3, b3 = (p.detach() for p in (net[2].weight, net[2].bias, net[4].weight, net[4].bias))

    def point(first, e2, b, w2, b2, w3, b3, y):
        # the library's layouts: (W₃h₂ᵀ + b₃)ᵀ and the log-softmax over dim 0 of zᵀ
        h1 = torch.relu(first + b * e2)
        h2 = torch.relu(F.linear(h1, w2, b2))
        z_t = torch.addmm(b3.unsqueeze(1), w3, h2.t())
        return F.nll_loss(torch.log_softmax(z_t, dim=0).unsqueeze(0), y.unsqueeze(0))

    b = torch.tensor(0.25)  # a tensor: a Python float would be specialised (one compilation per point)
    with torch.no_grad():
        t, tc = time.perf_counter(), time.process_time()
        fn = torch.compile(point, dynamic=False)
        fn(e0, e2, b, w2, b2, w3, b3, y)
        print(f"compile: first call {time.perf_counter() - t:.1f} s wall, {time.process_time() - tc:.1f} s CPU "
              "of this process (the C++ compiler runs in others)")
        worst, same = 0.0, 0
        for v in np.linspace(-1, 1, 41):
            b.fill_(float(v))
            want, got = float(point(e0, e2, float(v), w2, b2, w3, b3, y)), float(fn(e0, e2, b, w2, b2, w3, b3, y))
            worst, same = max(worst, abs(got - want) / abs(want)), same + (got == want)
        print(f"compiled vs eager over 41 points: max rel. diff {worst:.1e}, bit-identical {same}/41")
        h, o1, o2 = torch.rand(len(x), HIDDEN), torch.empty(len(x), HIDDEN), torch.empty(N_CLASSES, len(x))
        interleaved({"floor": lambda: (torch.mm(h, w2.t(), out=o1), torch.mm(w3, h.t(), out=o2)),
                     "eager point": lambda: point(e0, e2, 0.25, w2, b2, w3, b3, y),
                     "compiled point": lambda: fn(e0, e2, b, w2, b2, w3, b3, y)}, reps, 10, "floor")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="stages,plane")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes when cold)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU clock of this process")
    parts = args.parts.split(",")
    if "stages" in parts:
        stages(args.reps)
    if "plane" in parts:
        plane(args.reps)
    if args.compile:
        compiled(args.reps)


if __name__ == "__main__":
    main()
