"""Peak memory of a plane of a ≥ 10 M-parameter model, against the model's own memory plus the data.

Target (issue 17): a plane of a model with ≥ 10 M parameters runs within 2 × the model's own memory
plus the data (no grid × parameters materialisation), measured by peak RSS.

The model is a wide MLP 784-2048-2048-2048-10 (10.0 M parameters, 40 MB in float32) on 512 synthetic
samples. Every contender runs in a fresh subprocess (its peak RSS, ``VmHWM``, is a lifetime peak) that imports
torch and lossatlas, builds the same model and data, and then:

* ``empty``: nothing more (the interpreter, torch and lossatlas: subtracted from every other row);
* ``baseline``: one forward pass under ``torch.no_grad()`` — the model's own memory plus the data
  (and one forward pass's activations), measured in this run;
* ``problem``: ``lossatlas.Problem`` (its private copy of the model) and θ₀;
* ``directions``: ``problem`` + two filter-normalised random directions (``directions.random``);
* ``loop`` / ``vmap``: ``problem`` + a 5×5 ``lossatlas.surface`` with that strategy, the two
  directions loaded from a file the parent wrote (so their construction is not in this peak).

Verdict per contender: (peak − empty) / ((baseline − empty) + model bytes + direction bytes), i.e.
the peak against 2 × model + data, where the data includes one forward pass's activations and the
two directions (inputs of a plane, each the size of the parameters; they are the output of
``directions``). ``python benchmarks/bench_memory.py [--steps 5] [--reps 3]``.

``--stages loop|vmap`` instead: one process, the peak of every stage (Problem, ``directions.random``,
``check_independent``, the behaviour fingerprint, the fold's set-up, the point loop) above the RSS at
its start; ``--drop-model`` adds what sharing the user's parameter storage would save.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTENDERS = ("empty", "baseline", "problem", "directions", "loop", "vmap")
WIDTHS = [784, 2048, 2048, 2048, 10]
SAMPLES = 512
GLIBC_DEFAULT = False


def _peak_bytes() -> int:
    """Peak resident set size of this process: ``VmHWM`` (Linux), else ``ru_maxrss``. On Linux
    ``ru_maxrss`` keeps the parent's high-water mark across fork + exec (it would report the parent's
    peak for a child smaller than it); the new address space's ``VmHWM`` does not."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _build():
    import torch

    torch.manual_seed(0)
    layers = []
    for i in range(len(WIDTHS) - 1):
        layers.append(torch.nn.Linear(WIDTHS[i], WIDTHS[i + 1]))
        if i < len(WIDTHS) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, WIDTHS[0], generator=g)
    y = torch.randint(0, WIDTHS[-1], (SAMPLES,), generator=g)
    return model, x, y


def child(name: str, dirs_path: str, steps: int) -> None:
    import torch

    import lossatlas

    info = {"name": name}
    if name != "empty":
        model, x, y = _build()
        info["model_bytes"] = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        info["params"] = sum(p.numel() for p in model.parameters())
        info["data_bytes"] = x.numel() * x.element_size() + y.numel() * y.element_size()
        if name == "baseline":
            with torch.no_grad():
                model(x)
        elif name != "empty":
            problem = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), (x, y))
            if name == "directions":
                lossatlas.directions.random(problem, n=2, seed=0)
            elif name in ("loop", "vmap"):
                saved = torch.load(dirs_path, weights_only=True)
                ds = lossatlas.surface(problem, None, saved, steps=steps, span=1.0, progress=False, strategy=name)
                info["strategy"] = ds.attrs["strategy"]
                info["loss_center"] = float(ds.loss.values[steps // 2, steps // 2])
                info["vmap_batch"] = None
    info["peak"] = _peak_bytes()
    print(json.dumps(info))


def _rss(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def stages(strategy: str, steps: int, drop_model: bool) -> None:
    """``--stages``: in one process, the peak RSS of every stage of a plane above the RSS at its start
    (``VmHWM`` reset through ``/proc/self/clear_refs`` at each stage's start; Linux), in models.
    ``--drop-model``: the user's model deleted once the Problem exists — what a Problem sharing the
    user's parameter storage instead of its snapshot of θ₀ would save (not lossatlas's semantics)."""
    import functools
    import importlib

    import torch

    import lossatlas
    from lossatlas import _linear_fold, evaluator, problem as problem_mod

    model, x, y = _build()
    size = sum(t.numel() * t.element_size() for t in model.parameters())
    seen: dict[str, int] = {}

    def staged(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            start = _rss("VmRSS:")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM; a stage inside another one ends the outer one's window
            try:
                return fn(*a, **k)
            finally:
                seen[name] = seen.get(name, 0) + 1
                if seen[name] <= 2:
                    peak = _rss("VmHWM:") - start
                    print(f"  {name:32s} start {start / 2**20:7.1f} MiB, peak +{peak / 2**20:6.1f} MiB "
                          f"= +{peak / size:5.2f} models", flush=True)
        return wrapper
    surface_mod = importlib.import_module("lossatlas.surface")
    surface_mod.check_independent = staged("check_independent", surface_mod.check_independent)
    P = problem_mod.Problem
    P.behaviour_fingerprint = staged("behaviour fingerprint", P.behaviour_fingerprint)
    _linear_fold.LinearFold.__init__ = staged("LinearFold.__init__", _linear_fold.LinearFold.__init__)
    E = evaluator.PointEvaluator
    E._run_loop, E._run_vmap = staged("_run_loop", E._run_loop), staged("_run_vmap", E._run_vmap)
    print(f"model {size / 2**20:.1f} MiB; RSS after building model and data {_rss('VmRSS:') / 2**20:.1f} MiB")
    problem = staged("Problem", lossatlas.Problem)(model, torch.nn.CrossEntropyLoss(), (x, y))
    if drop_model:  # the Problem's own reference too (problem.model: the user's module, kept)
        problem.model = None
        del model
    d = staged("directions.random", lossatlas.directions.random)(problem, n=2, seed=0)
    vectors = [dict(v) for v in d.vectors]
    del d
    ds = lossatlas.surface(problem, None, vectors, steps=steps, span=1.0, progress=False, strategy=strategy)
    print(f"loss at the centre {float(ds.loss.values[steps // 2, steps // 2]):.6f}; lifetime peak "
          f"{_peak_bytes() / 2**20:.1f} MiB (the stage resets end it: read the stages)")


def _run(name: str, dirs_path: str, steps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    # a fixed glibc mmap threshold: every tensor ≥ 1 MiB is its own mapping, returned when freed, so the
    # peak RSS counts live tensors (glibc's dynamic threshold otherwise keeps freed 16 MiB tensors in its
    # heap, and the peak of the same run varied by ±230 MiB); --glibc-default measures without it
    if not GLIBC_DEFAULT:
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(2**20))
    out = subprocess.run([sys.executable, __file__, "--child", name, "--dirs", dirs_path, "--steps", str(steps)],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"contender {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--dirs", default="")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--reps", type=int, default=1, help="repetitions of every contender (the median peak)")
    ap.add_argument("--glibc-default", action="store_true", help="children keep glibc's dynamic mmap threshold")
    ap.add_argument("--stages", choices=("loop", "vmap"), help="in-process peak of every stage of a plane")
    ap.add_argument("--drop-model", action="store_true", help="with --stages: the user's model deleted")
    args = ap.parse_args()
    if args.stages:
        stages(args.stages, args.steps, args.drop_model)
        return
    global GLIBC_DEFAULT
    GLIBC_DEFAULT = args.glibc_default
    if args.child:
        child(args.child, args.dirs, args.steps)
        return
    sys.path.insert(0, str(HERE))
    import statistics

    import torch

    import lossatlas
    from _verdict import verdict

    model, x, y = _build()
    problem = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), (x, y))
    d = lossatlas.directions.random(problem, n=2, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        dirs_path = os.path.join(tmp, "directions.pt")
        torch.save([dict(v) for v in d.vectors], dirs_path)
        del problem, d
        rows: dict[str, list[dict]] = {k: [] for k in CONTENDERS}
        for _ in range(args.reps):  # interleaved: every contender once per repetition
            for name in CONTENDERS:
                rows[name].append(_run(name, dirs_path, args.steps))
    peak = {k: statistics.median(r["peak"] for r in v) for k, v in rows.items()}
    info = rows["baseline"][0]
    mb = 2**20
    model_b, data_b = info["model_bytes"], info["data_bytes"]
    own = peak["baseline"] - peak["empty"]  # model + data + one forward pass, as measured
    dir_b = 2 * info["params"] * 4  # two float32 directions
    allowance = own + model_b + dir_b
    threshold = "(glibc default)" if GLIBC_DEFAULT else os.environ.get("MALLOC_MMAP_THRESHOLD_", 2**20)
    print(f"wide MLP {'-'.join(map(str, WIDTHS))}: {info['params']:,} parameters = {model_b / mb:.1f} MiB; "
          f"data {SAMPLES} samples = {data_b / mb:.1f} MiB; plane {args.steps}x{args.steps}; "
          f"torch {torch.__version__}; children MALLOC_MMAP_THRESHOLD_={threshold}")
    print(f"runtime (empty child: interpreter + torch + lossatlas) {peak['empty'] / mb:.0f} MiB, subtracted below; "
          f"baseline (model + data + one forward) {own / mb:.1f} MiB; two directions {dir_b / mb:.1f} MiB;"
          f" allowance 2 x model + data (+ directions) = {allowance / mb:.1f} MiB")
    print(f"\n{'contender':12s} {'peak MiB':>9s} {'- runtime':>10s} {'/ model':>8s} {'/ allow':>8s}")
    for name in CONTENDERS:
        extra = peak[name] - peak["empty"]
        print(f"{name:12s} {peak[name] / mb:9.1f} {extra / mb:10.1f} {extra / model_b:8.2f} {extra / allowance:8.2f}")
    for name in ("loop", "vmap"):
        r = rows[name][0]
        print(f"  {name}: strategy {r['strategy']}, loss at the centre {r['loss_center']:.6f}")
    print()
    verdict("directions (2 filter-normalised) peak RSS / (2 × model + data)",
            (peak["directions"] - peak["empty"]) / allowance, 1.0, op="<=")
    for name in ("loop", "vmap"):
        verdict(f"≥10M-param plane ({name}) peak RSS / (2 × model + data)",
                (peak[name] - peak["empty"]) / allowance, 1.0, op="<=")


if __name__ == "__main__":
    main()
