"""Time per grid point of ``lossatlas.surface`` ÷ one bare forward pass, for a zoo of model families.

Target (issue 17): for every model, a point of a plane costs at most 1.10 × ``model(x)`` over the same
data under ``torch.no_grad()`` in eval mode (below 1.0 where the exact linear fold applies).

The zoo: the 64-128-128-10 digits MLP, the CNN with BatchNorm and the small ResNet of
``lossatlas.examples`` (cnn-digits, resnet-skip, trained weights from the example cache), a 2-layer
``nn.TransformerEncoder`` (d=64, 4 heads) classifying token sequences, and an embedding model
(``nn.Embedding`` + mean pooling + ``nn.Linear``).

Per repetition (interleaved: each repetition runs every contender once, in the same process):

* **forward**: the median of ``--fwd`` calls of the *user's* model (eval mode, ``torch.no_grad()``)
  over the problem's batches (the same tensors the surface evaluates; no loss, no metric);
* **plane**: ``lossatlas.surface(problem, None, d, steps=S, progress=False)`` (no store, default
  strategy "auto", loss + accuracy) — wall time ÷ S² points is the *point* time;
* **pinned** and **small**: the same call with the strategy the plane chose, ``steps=S`` and
  ``steps=3``: the marginal cost of a point is ``(pinned − small) / (S² − 9)`` and the fixed
  overhead of the plane ``plane − S²·marginal`` (fingerprints, the automatic strategy choice, the
  chunk-size timing, assembling the Dataset).

Printed: medians over repetitions, the median of per-repetition ratios point / forward and marginal /
forward, the minor page faults of a forward pass and of a marginal point (``fwd flt``, ``marg flt``:
fresh memory mapped and zeroed by the kernel, a large and variable share of CPU time here), and one
``verdict`` line per model. ``python benchmarks/bench_zoo.py [--reps 5] [--only mlp,cnn]``.

``--device cuda`` (issue 17's GPU row) runs the same zoo on a CUDA device instead: per model the
planes of the strategies ``auto`` / ``loop`` / ``vmap`` (one warm-up plane each, then interleaved
repetitions, every timing between two ``torch.cuda.synchronize``), in points/s, point / forward, the
FLOP of a point (one forward pass of the user's model over the data, counted by
``torch.utils.flop_counter.FlopCounterMode``: matmuls and convolutions, the fold's savings not
subtracted) and the fraction of the device's float32 matmul rate measured in the same run, with the
TF32 state stated; the loop's and vmap's losses are compared. Without a CUDA device it prints
``GPU: not measured (no CUDA device)`` and exits 0; ``--gpu-device cpu`` rehearses the table on the
CPU (``benchmarks/gpu_check.sh``). ``--gpu-steps`` sets its planes (``name=S,…`` or one S for all).
"""

from __future__ import annotations

import argparse
import copy
import gc
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lossatlas  # noqa: E402
from _verdict import verdict  # noqa: E402
from bench_scale import float32_rate, forward_flops, gpu_device, synced  # noqa: E402


class TokenEncoder(nn.Module):
    """Token embedding + learned positions + 2-layer TransformerEncoder (d=64, 4 heads) + mean pool + Linear."""

    def __init__(self, vocab: int = 32, length: int = 16, d: int = 64, classes: int = 4):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.02 * torch.randn(length, d))
        layer = nn.TransformerEncoderLayer(d, 4, dim_feedforward=128, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.encoder(self.tok(x) + self.pos).mean(dim=1))


class BagOfEmbeddings(nn.Module):
    """nn.Embedding + mean pooling over the sequence + Linear (a fastText-like classifier)."""

    def __init__(self, vocab: int = 2000, d: int = 64, classes: int = 10):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.fc = nn.Linear(d, classes)

    def forward(self, x):
        return self.fc(self.emb(x).mean(dim=1))


def _tokens(n, length, vocab, classes, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, length), generator=g)
    y = (x[:, : length // 2].sum(1) % classes)  # a label the tokens determine
    return x, y


def zoo(only, device=None):
    """name -> (user model, Problem, description); models in eval mode, problems on ``device``."""
    out = {}
    if "mlp" in only:
        ex = lossatlas.examples.load("mlp-digits", device=device)
        out["mlp"] = (ex.model, ex.problem, "MLP 64-128-128-10, digits 1797")
    if "cnn" in only:
        ex = lossatlas.examples.load("cnn-digits", device=device)
        out["cnn"] = (ex.model, ex.problem, "CNN+BN (cnn-digits), 1797 8x8")
    if "resnet" in only:
        ex = lossatlas.examples.load("resnet-skip", device=device)
        # without the Debian package dataset-fashion-mnist the example falls back to 8x8 digits: another model
        shape = "x".join(map(str, ex.problem.data.first()[0][0].shape[-2:]))
        out["resnet"] = (ex.model, ex.problem, f"ResNet (resnet-skip), 1024 {shape} images of {ex.info['data']} "
                                               "in 2 batches")
    if "transformer" in only:
        torch.manual_seed(0)
        model = TokenEncoder().eval()
        x, y = _tokens(512, 16, 32, 4, 1)
        out["transformer"] = (model, lossatlas.Problem(model, nn.CrossEntropyLoss(), (x, y), device=device),
                              "TransformerEncoder 2x(d=64,h=4), 512x16 tokens")
    if "embedding" in only:
        torch.manual_seed(0)
        model = BagOfEmbeddings().eval()
        x, y = _tokens(4096, 32, 2000, 10, 2)
        out["embedding"] = (model, lossatlas.Problem(model, nn.CrossEntropyLoss(), (x, y), device=device),
                            "Embedding(2000,64)+mean+Linear, 4096x32 tokens")
    for model, _, _ in out.values():
        model.eval()  # the examples' models come back in the mode training left them in
    return out


CLOCK = time.perf_counter  # --clock cpu: time.process_time (CPU seconds of this process; 1 thread)


def faults() -> int:
    """Minor page faults of this process so far (fresh memory the kernel maps and zeroes: on this
    machine a large share of a forward pass's CPU time, counted in --clock cpu as system time)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def forward_times(model, inputs, calls, fault_counts=None):
    """``calls`` timings of the bare forward pass over every batch (after one warm-up call); the page
    faults of each call are appended to ``fault_counts``."""
    with torch.no_grad():
        for x in inputs:
            model(x)
        samples = []
        for _ in range(calls):
            f, t = faults(), CLOCK()
            for x in inputs:
                model(x)
            samples.append(CLOCK() - t)
            if fault_counts is not None:
                fault_counts.append(faults() - f)
    return samples


def naive_losses(model, problem, d, coords):
    """Reference: functional_call of the user's model at θ + a·d1 + b·d2 formed afresh per point,
    dataset loss Σ_b n_b·ℓ_b / N (float32, as the problem)."""
    center = problem.params()
    batches = list(problem.data)
    out = np.empty((len(coords), len(coords)))
    with torch.no_grad():
        for i, a in enumerate(coords):
            for j, b in enumerate(coords):
                p = {k: center[k] + float(a) * d[0][k] + float(b) * d[1][k] for k in center}
                out[i, j] = sum(float(problem.loss_fn(torch.func.functional_call(model, p, (batch[0],)), batch[1])) * n
                                for batch, n in batches) / problem.n_samples
    return out


def timed(fn, fault_counts=None):
    f, t = faults(), CLOCK()
    out = fn()
    elapsed = CLOCK() - t
    if fault_counts is not None:
        fault_counts.append(faults() - f)
    return elapsed, out


def _steps(spec: str, names) -> dict[str, int]:
    """``name=S,…`` (or one S for every model) -> {name: S}."""
    if spec.isdigit():
        return dict.fromkeys(names, int(spec))
    return {k: int(v) for k, v in (kv.split("=") for kv in spec.split(","))}


DEVICE_STRATEGIES = ("auto", "loop", "vmap")


def device_table(args, only) -> int:
    """The zoo on ``--gpu-device``: strategies auto / loop / vmap per model (module docstring); the
    exit status (1 when a plane failed other than by lossatlas refusing a strategy)."""
    dev = gpu_device(args.gpu_device)
    if dev is None:
        return 0
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU rehearsal"
    print(f"torch {torch.__version__}, device {dev} ({name})")
    rate = float32_rate(dev)
    steps = _steps(args.gpu_steps, only)
    failed = False
    print(f"\n{'model':12s} {'strategy':13s} {'median s':>9s} {'points/s':>9s} {'point/fwd':>9s} "
          f"{'GFLOP/pt':>9s} {'TFLOP/s':>8s} {'of f32 mm':>9s}", flush=True)
    for model_name, (model, problem, desc) in zoo(only, device=dev).items():
        s = steps[model_name]
        d = lossatlas.directions.random(problem, n=2, seed=0)
        inputs = [batch[0].to(dev) for batch, _ in problem.data]
        on_device = copy.deepcopy(model).to(dev).eval()  # the user's model stays where it is
        flops = forward_flops(on_device, inputs)

        def forward():
            with torch.no_grad():
                for x in inputs:
                    on_device(x)

        def plane(strategy, steps=s):
            return lossatlas.surface(problem, None, d, steps=steps, span=1.0, strategy=strategy, progress=False)
        rows: dict[str, list[float]] = {}
        refused: dict[str, str] = {}
        chosen, losses = "", {}
        for strategy in DEVICE_STRATEGIES:  # warm-up: kernels, allocator, cuDNN's choice, vmap's first trace
            try:
                plane(strategy, 3)
                rows[strategy] = []
            except lossatlas.errors.LossAtlasError as exc:
                refused[strategy] = f"refused ({type(exc).__name__})"
            except Exception as exc:  # noqa: BLE001 - one broken model must not cost the rest of a GPU run
                refused[strategy] = f"FAILED: {type(exc).__name__}: {str(exc)[:60]}"
                failed = True
        forward()
        fwd = []
        for _ in range(args.reps):  # interleaved: the forward pass, then every strategy once
            fwd.append(statistics.median(synced(forward, dev)[0] for _ in range(args.fwd)))
            for strategy, row in rows.items():
                seconds, ds = synced(lambda: plane(strategy), dev)
                row.append(seconds)
                losses[strategy] = ds.loss.values
                chosen = ds.attrs["strategy"] if strategy == "auto" else chosen
        print(f"{model_name:12s} {desc}; plane {s}x{s}; forward {1e3 * statistics.median(fwd):.3f} ms")
        for strategy in DEVICE_STRATEGIES:
            label = f"auto ({chosen})" if strategy == "auto" and chosen else strategy
            if strategy in refused:
                print(f"{'':12s} {label:13s} {refused[strategy]}")
                continue
            med = statistics.median(rows[strategy])
            ratio = statistics.median(t / s**2 / f for t, f in zip(rows[strategy], fwd))
            print(f"{'':12s} {label:13s} {med:9.3f} {s**2 / med:9.0f} {ratio:9.3f} {flops / 1e9:9.3f} "
                  f"{flops * s**2 / med / 1e12:8.3f} {flops * s**2 / med / rate:9.2%}", flush=True)
        if "loop" in losses and "vmap" in losses:
            ref = losses["loop"]
            print(f"{'':12s} loop vs vmap: max |Δloss| / |loss| = "
                  f"{float(np.max(np.abs(losses['vmap'] - ref) / np.abs(ref))):.1e}", flush=True)
    return 1 if failed else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--fwd", type=int, default=5, help="forward calls per repetition (median)")
    ap.add_argument("--only", default="mlp,cnn,resnet,transformer,embedding")
    ap.add_argument("--steps", default="mlp=11,cnn=11,resnet=5,transformer=11,embedding=11")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time (meaningful with OMP_NUM_THREADS=1; robust on a shared machine)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: the zoo's planes on a CUDA device, strategies auto / loop / vmap (docstring)")
    ap.add_argument("--gpu-device", choices=("cuda", "cpu"), default="cuda",
                    help="with --device cuda: where that table runs (cpu rehearses it on the CPU)")
    ap.add_argument("--gpu-steps", default="mlp=41,cnn=21,resnet=11,transformer=15,embedding=21",
                    help="planes of the --device cuda table: name=S,... or one S for every model")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=lossatlas.errors.BatchNormStatsWarning)
    warnings.filterwarnings("ignore", message=".*batching rule.*")  # vmap of the fused encoder layer
    if args.device == "cuda":
        sys.exit(device_table(args, args.only.split(",")))
    global CLOCK
    if args.clock == "cpu":
        CLOCK = time.process_time
        if torch.get_num_threads() != 1:
            print("warning: --clock cpu sums the CPU time of all threads; run with OMP_NUM_THREADS=1")
    only = args.only.split(",")
    steps = _steps(args.steps, only)
    models = zoo(only)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, clock {args.clock}")
    setup = {}
    for name, (model, problem, desc) in models.items():
        d = lossatlas.directions.random(problem, n=2, seed=0)
        inputs = [batch[0] for batch, _ in problem.data]
        n = sum(p.numel() for p in model.parameters())
        setup[name] = (d, inputs)
        print(f"  {name:12s} {desc}; {n:,} parameters; plane {steps[name]}x{steps[name]}")

    # the interpreter's first full collection after the imports (~190 ms: 270 k objects) would land in
    # one repetition's timing (in a 0.3 s MLP plane or in its forward passes); collected here, once. In
    # steady state a plane triggers no full collection (0 in 250 MLP planes in one process)
    gc.collect()
    rows: dict[str, dict[str, list[float]]] = {k: {"forward": [], "plane": [], "pinned": [], "small": [],
                                                   "fwd_faults": [], "pinned_faults": [], "small_faults": []}
                                               for k in models}
    chosen, err = {}, {}
    for rep in range(args.reps):
        for name, (model, problem, _) in models.items():
            d, inputs = setup[name]
            s = steps[name]
            r = rows[name]
            before = forward_times(model, inputs, args.fwd, r["fwd_faults"])
            t, ds = timed(lambda: lossatlas.surface(problem, None, d, steps=s, span=1.0, progress=False))
            r["plane"].append(t)
            # the forward pass timed just before and just after the plane: the median of both brackets
            r["forward"].append(statistics.median(before + forward_times(model, inputs, args.fwd, r["fwd_faults"])))
            chosen[name] = ds.attrs["strategy"]
            t, _ = timed(lambda: lossatlas.surface(problem, None, d, steps=s, span=1.0, progress=False,
                                                   strategy=chosen[name]), r["pinned_faults"])
            r["pinned"].append(t)
            t, small = timed(lambda: lossatlas.surface(problem, None, d, steps=3, span=1.0, progress=False,
                                                       strategy=chosen[name]), r["small_faults"])
            r["small"].append(t)
            if rep == 0:
                ref = naive_losses(model, problem, d, small.x.values)
                err[name] = float(np.max(np.abs(small.loss.values - ref) / np.abs(ref)))
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {v['plane'][-1]:.2f}s" for k, v in rows.items()), flush=True)

    print(f"\n{'model':12s} {'strategy':8s} {'forward ms':>10s} {'point ms':>9s} {'marginal':>9s} "
          f"{'overhead s':>10s} {'point/fwd':>9s} {'marg/fwd':>8s} {'rel.err':>8s} {'fwd flt':>8s} {'marg flt':>8s}")
    results = {}
    for name, r in rows.items():
        pts = steps[name] ** 2
        point = [p / pts for p in r["plane"]]
        marg = [(p - sm) / (pts - 9) for p, sm in zip(r["pinned"], r["small"])]
        over = [p - pts * m for p, m in zip(r["plane"], marg)]
        mflt = [(p - sm) / (pts - 9) for p, sm in zip(r["pinned_faults"], r["small_faults"])]
        ratio = statistics.median(a / f for a, f in zip(point, r["forward"]))
        mratio = statistics.median(m / f for m, f in zip(marg, r["forward"]))
        results[name] = (ratio, mratio)
        print(f"{name:12s} {chosen[name]:8s} {1e3 * statistics.median(r['forward']):10.2f} "
              f"{1e3 * statistics.median(point):9.2f} {1e3 * statistics.median(marg):9.2f} "
              f"{statistics.median(over):10.3f} {ratio:9.3f} {mratio:8.3f} {err[name]:8.1e} "
              f"{statistics.median(r['fwd_faults']):8.0f} {statistics.median(mflt):8.0f}")
    print()
    for name, (ratio, mratio) in results.items():
        detail = f"marginal point / forward {mratio:.3f}"
        if name == "resnet" and "fallback" in models[name][2]:  # another model than the target names
            detail += "; ON THE DIGITS FALLBACK: install dataset-fashion-mnist for the benchmark's ResNet"
        verdict(f"{name}: point / forward", ratio, 1.10, detail=detail)


if __name__ == "__main__":
    main()
