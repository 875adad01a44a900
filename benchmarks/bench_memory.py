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
``directions``). ``python benchmarks/bench_memory.py [--steps 5]``.
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
    args = ap.parse_args()
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
