"""Scaling out with torchrun, measured in one run against a single process measured in the same run.

1. Speed-up: the 41×41 filter-normalised plane of the ``mlp-digits`` example (MLP 64-128-128-10 on
   the 1797 digits) written to a store, by one process with one thread versus ``torchrun
   --nproc-per-node 2`` with one thread per rank (OMP_NUM_THREADS=1). Times are measured inside
   the workers, from a synchronised start to the end of ``surface()``; launcher start-up
   (interpreter, imports, rendezvous) is reported apart. Target: speed-up ≥ 1.6×.
2. Per-point overhead of the distributed path: the same grid with a trivial evaluation (so only the
   runner's own work remains: claims from the shared counter, per-rank figures, store writes, the
   final gather), one process versus two ranks, in µs per point; and the time the plane's ranks
   spent in the shared counters.
3. Mixed precision: the mlp-digits plane with ``dtype=torch.bfloat16`` (float32 loss) and float32,
   against float64: largest absolute/relative error of the loss and of the accuracy.
4. On a CUDA machine (not measured otherwise): the plane on the GPU, ``loop`` versus ``vmap``, in
   points/s and as a fraction of the GPU's measured matmul rate (float32 and bfloat16), the TF32
   state stated; ``--gpu-device cpu`` rehearses the section on the CPU (``benchmarks/gpu_check.sh``).

The device helpers below (:func:`sync`, :func:`synced`, :func:`tf32_state`, :func:`matmul_rate`,
:func:`matmul_rates`, :func:`float32_rate`, :func:`forward_flops`) are shared with ``bench_zoo.py``.

Repetitions are interleaved (each runs every contender once); medians and the median of the
per-repetition ratios are printed. Usage::

    python benchmarks/bench_scale.py [--reps 3] [--steps 41] [--bf16-steps 15] [--skip-bf16] [--sections 1234]
                                     [--gpu-device cuda|cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _verdict import GPU_NOT_MEASURED, verdict  # noqa: E402

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


# -- workers (run in subprocesses, possibly under torchrun) ------------------------------------------
def _plane(steps: int, store: str | None, strategy: str = "loop", device: str | None = None,
           dtype: torch.dtype | None = None):
    import lossatlas
    from lossatlas import examples

    ctx = lossatlas.distributed.context()
    ex = examples.load("mlp-digits", device=device, dtype=dtype)
    d = ex.default_directions()
    ctx.barrier()
    t0 = time.perf_counter()
    ds = lossatlas.surface(ex.problem, ex.center, d, steps=steps, span=1.0, strategy=strategy, store=store,
                           progress=False)
    return time.perf_counter() - t0, ds, ctx


def worker_plane(args) -> None:
    seconds, ds, ctx = _plane(args.steps, args.store)
    if ctx.is_main:
        Path(args.out).write_text(json.dumps({"seconds": seconds, "ranks": ctx.world,
                                              "chunk_shape": json.loads(ds.attrs["provenance"])["chunk_shape"],
                                              "threads": torch.get_num_threads(),
                                              "loss_sum": float(np.nansum(ds.loss.values))}))


def worker_matmul(args) -> None:
    """One thread of float32 GEMMs for ~3 s: the machine's compute rate available to one process."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 3.0:
        a @ b
        n += 1
    Path(args.out).write_text(json.dumps({"gflops": n * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9}))


def ceiling(tmp: Path) -> float:
    """How much faster two one-thread processes compute than one, on this machine right now
    (1 process alone, then 2 at once): the most any 2-rank run can gain here."""
    def start():
        out = tmp / f"mm-{time.monotonic_ns()}.json"
        return out, subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", "matmul", "--out",
                                      str(out)], env=_env())
    out, p = start()
    p.wait()
    alone = json.loads(out.read_text())["gflops"]
    pair = [start() for _ in range(2)]
    for _, p in pair:
        p.wait()
    return sum(json.loads(o.read_text())["gflops"] for o, _ in pair) / alone


def worker_overhead(args) -> None:
    """The chunk loop alone: a trivial evaluation over the plane's grid, in memory and into a store
    (created by rank 0, as :func:`lossatlas.grid_job.run_grid` does)."""
    import lossatlas
    from lossatlas.grid import Grid
    from lossatlas.runner import evaluate_chunks
    from lossatlas.store import GridStore

    ctx = lossatlas.distributed.context()
    grid = Grid.make(2, args.steps, 1.0)
    layout = grid.chunks(grid.chunk_shape_for(args.chunk))

    def trivial(coefficients: np.ndarray) -> dict[str, np.ndarray]:
        return {"loss": coefficients.sum(axis=1)}

    def create(path):
        GridStore.remove_here(path, func="bench")
        GridStore.create(path, grid=grid, chunk_shape=layout.chunk_shape, variables=["loss"],
                         provenance={"bench": "overhead"})

    out = {"ranks": ctx.world, "points": grid.size, "chunks": layout.n_chunks}
    for where in ("memory", "store"):
        path = Path(args.store) / where if where == "store" else None
        ctx.barrier()
        t0 = time.perf_counter()
        if path is not None:
            ctx.run_on_main(lambda path=path: create(path))
        gstore = GridStore.open(path, func="bench") if path is not None else None
        opened = time.perf_counter() - t0
        report: dict = {}
        t0 = time.perf_counter()
        evaluate_chunks(layout, trivial, ["loss"], store=gstore, progress=False, description="overhead",
                        context=ctx, report=report)
        out[where] = {"seconds": time.perf_counter() - t0, "session_seconds": opened,
                      "coordination_seconds": report.get("coordination_seconds", 0.0),
                      "wait_seconds": report.get("wait_seconds", 0.0)}
    if ctx.is_main:
        Path(args.out).write_text(json.dumps(out))


# -- launching --------------------------------------------------------------------------------------
def _env(threads: int = 1) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(key, None)
    return env


def launch(ranks: int, mode: str, tmp: Path, steps: int, chunk: int = 41) -> tuple[dict, float]:
    out = tmp / f"{mode}-{ranks}-{time.monotonic_ns()}.json"
    store = tmp / f"{mode}-{ranks}-{time.monotonic_ns()}"
    worker = [str(Path(__file__).resolve()), "--worker", mode, "--out", str(out), "--store", str(store) + ".zarr"
              if mode == "plane" else str(store), "--steps", str(steps), "--chunk", str(chunk)]
    if ranks == 1:
        cmd = [sys.executable, *worker]
    else:
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
        cmd = [torchrun, "--nproc-per-node", str(ranks), "--standalone", *worker]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text()), wall


# -- sections ---------------------------------------------------------------------------------------
def section_speedup(args, tmp: Path) -> None:
    print(f"\n## 1. mlp-digits plane {args.steps}x{args.steps}, store, strategy loop, one thread per process")
    rows: dict[str, list[float]] = {"1 process": [], "torchrun 2 ranks": []}
    walls: dict[str, list[float]] = {"1 process": [], "torchrun 2 ranks": []}
    ceilings = []
    sums = set()
    for rep in range(args.reps):
        ceilings.append(ceiling(tmp))
        for name, ranks in (("1 process", 1), ("torchrun 2 ranks", 2)):
            res, wall = launch(ranks, "plane", tmp, args.steps)
            rows[name].append(res["seconds"])
            walls[name].append(wall)
            sums.add(res["loss_sum"])
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s (launch+run {walls[k][-1]:.1f}s)"
                                             for k, v in rows.items())
              + f"; two 1-thread GEMM processes vs one: {ceilings[-1]:.2f}x", flush=True)
    speedups = [a / b for a, b in zip(rows["1 process"], rows["torchrun 2 ranks"])]
    print(f"\n{'run':20s} {'median s':>9s} {'min s':>7s} {'launcher+startup s':>19s}")
    for k, v in rows.items():
        print(f"{k:20s} {statistics.median(v):9.3f} {min(v):7.3f} "
              f"{statistics.median(walls[k]) - statistics.median(v):19.1f}")
    med = statistics.median(speedups)
    print(f"speed-up 2 ranks / 1 process: median of per-repetition ratios {med:.2f}x "
          f"(ratio of medians {statistics.median(rows['1 process']) / statistics.median(rows['torchrun 2 ranks']):.2f}x)"
          f"; target >= 1.6x: {'OK' if med >= 1.6 else 'MISSED'}")
    verdict("torchrun 2 ranks / 1 process speed-up", med, 1.6, ">=", unit="x")
    ceil = statistics.median(ceilings)
    print(f"machine ceiling (two one-thread GEMM processes / one, measured between runs): {ceil:.2f}x; "
          f"the 2-rank run reached {med / ceil:.0%} of it (other jobs on a shared machine lower the ceiling)")
    print(f"identical values in every run (sum of the loss over the grid): {len(sums) == 1}")


def section_overhead(args, tmp: Path) -> None:
    print(f"\n## 2. runner overhead: trivial evaluation on the {args.steps}x{args.steps} grid, chunks of "
          f"{args.chunk} points")
    rows: dict[str, list[dict]] = {"1 process": [], "torchrun 2 ranks": []}
    for _ in range(args.reps):
        for name, ranks in (("1 process", 1), ("torchrun 2 ranks", 2)):
            rows[name].append(launch(ranks, "overhead", tmp, args.steps, args.chunk)[0])
    points = rows["1 process"][0]["points"]
    chunks = rows["1 process"][0]["chunks"]

    def med(name, where, key):
        return statistics.median(r[where][key] for r in rows[name])

    print(f"{'run':18s} {'where':7s} {'µs/point':>9s} {'ms/chunk':>9s} {'counters µs/pt':>15s} "
          f"{'session ms':>11s} {'end wait ms':>12s}")
    for name in rows:
        for where in ("memory", "store"):
            total = med(name, where, "seconds")
            print(f"{name:18s} {where:7s} {total / points * 1e6:9.1f} {total / chunks * 1e3:9.2f} "
                  f"{med(name, where, 'coordination_seconds') / points * 1e6:15.1f} "
                  f"{med(name, where, 'session_seconds') * 1e3:11.1f} {med(name, where, 'wait_seconds') * 1e3:12.1f}")
    for where in ("memory", "store"):
        extra = med("torchrun 2 ranks", where, "seconds") - med("1 process", where, "seconds")
        print(f"distributed minus single-process ({where}): {extra / points * 1e6:+.1f} µs per point of wall "
              f"time, of which shared counters {med('torchrun 2 ranks', where, 'coordination_seconds') / points * 1e6:.1f}"
              f" µs/point; the rest is per call (settings broadcast, final wait and gather)")


def section_bf16(args) -> None:
    import lossatlas
    from lossatlas import examples

    steps = args.bf16_steps
    print(f"\n## 3. mixed precision on the mlp-digits plane {steps}x{steps} (loop), error against float64")
    d = examples.load("mlp-digits").default_directions()
    results = {}
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        ex = examples.load("mlp-digits", dtype=dtype)
        t0 = time.perf_counter()
        ds = lossatlas.surface(ex.problem, ex.center, d.to(dtype=dtype), steps=steps, span=1.0, strategy="loop",
                               progress=False)
        results[dtype] = (ds, time.perf_counter() - t0)
    ref = results[torch.float64][0]
    print(f"{'dtype':16s} {'seconds':>8s} {'max |Δloss|':>12s} {'max rel':>9s} {'median rel':>11s} "
          f"{'max |Δacc|':>11s}")
    for dtype, (ds, secs) in results.items():
        err = np.abs(ds.loss.values - ref.loss.values)
        rel = err / np.abs(ref.loss.values)
        acc = np.abs(ds.accuracy.values - ref.accuracy.values).max()
        name = str(dtype).replace("torch.", "") + (" (f32 loss)" if dtype == torch.bfloat16 else "")
        print(f"{name:16s} {secs:8.2f} {err.max():12.2e} {rel.max():9.2e} {np.median(rel):11.2e} {acc:11.2e}")


# -- device helpers (shared with bench_zoo.py) -----------------------------------------------------
def gpu_device(name: str) -> torch.device | None:
    """The device the GPU sections run on: ``cuda`` when a CUDA device is present, ``cpu`` to rehearse
    them on a CPU; None (after printing :data:`_verdict.GPU_NOT_MEASURED`) for ``cuda`` without one."""
    if name == "cuda" and not torch.cuda.is_available():
        print(GPU_NOT_MEASURED, flush=True)
        return None
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op on the CPU): every timing starts and ends here."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synced(fn, device: torch.device):
    """``(seconds, fn())``, wall clock from a synchronised start to a synchronised end."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def tf32_state() -> str:
    """Whether float32 matmuls and cuDNN convolutions may run in TF32 (10-bit mantissa) right now."""
    with warnings.catch_warnings():  # torch >= 2.9 points from allow_tf32 to its fp32_precision settings
        warnings.simplefilter("ignore")
        matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    return (f"TF32 matmul {'on' if matmul else 'off'}, cuDNN conv {'on' if conv else 'off'} "
            f"(float32 matmul precision {torch.get_float32_matmul_precision()!r})")


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None,
                reps: int = 10) -> float:
    """FLOP/s of an n×n×n product on ``device`` (mean of ``reps`` after 3 warm-ups; n = 8192 on a GPU,
    512 for a CPU rehearsal)."""
    n = n or (8192 if device.type == "cuda" else 512)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds, _ = synced(lambda: [a @ b for _ in range(reps)], device)
    return reps * 2 * n**3 / seconds


def matmul_rates(device: torch.device, dtypes=(torch.float32, torch.bfloat16)) -> dict[torch.dtype, float]:
    """:func:`matmul_rate` per dtype, each printed with the TF32 state it was measured under."""
    rates = {}
    for dtype in dtypes:
        rates[dtype] = matmul_rate(device, dtype)
        print(f"measured matmul rate {str(dtype).replace('torch.', '')}: {rates[dtype] / 1e12:.3g} TFLOP/s "
              f"({tf32_state()})", flush=True)
    return rates


def float32_rate(device: torch.device) -> float:
    """The float32 matmul rate of ``device`` under the current TF32 state, printed."""
    return matmul_rates(device, (torch.float32,))[torch.float32]


def forward_flops(model: torch.nn.Module, inputs) -> int:
    """FLOP of one forward pass of ``model`` over every input (torch.utils.flop_counter: matmuls and
    convolutions; elementwise work and gathers are not counted), without autograd. The fused
    transformer fast path is off meanwhile: the counter does not know its kernel (0 FLOP otherwise)."""
    from torch.utils.flop_counter import FlopCounterMode

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            for x in inputs:
                model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops()


def section_gpu(args) -> None:
    print("\n## 4. ", end="")
    dev = gpu_device(args.gpu_device)
    if dev is None:
        return
    import lossatlas
    from lossatlas import examples

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU rehearsal"
    print(f"GPU ({name}): mlp-digits plane {args.steps}x{args.steps}")
    rates = matmul_rates(dev)
    cpu = examples.load("mlp-digits")
    # the forward GEMMs of every point, counted on the user's (CPU, float32) model over the batch
    flops = args.steps**2 * forward_flops(cpu.model, [cpu.problem.data.first()[0][0]])
    print(f"{'dtype':10s} {'strategy':9s} {'median s':>9s} {'points/s':>10s} {'TFLOP/s':>8s} {'of matmul':>10s}")
    for dtype in (torch.float32, torch.bfloat16):
        ex = examples.load("mlp-digits", device=dev, dtype=dtype)
        d = ex.default_directions()

        def plane(strategy, steps=args.steps):
            return lossatlas.surface(ex.problem, ex.center, d, steps=steps, span=1.0, strategy=strategy,
                                     progress=False)
        times: dict[str, list[float]] = {"loop": [], "vmap": []}
        for strategy in times:  # warm-up: kernels, allocator, vmap's first trace
            plane(strategy, 3)
        for _ in range(args.reps):  # interleaved repetitions
            for strategy, row in times.items():
                row.append(synced(lambda: plane(strategy), dev)[0])
        for strategy, row in times.items():
            med = statistics.median(row)
            print(f"{str(dtype).replace('torch.', ''):10s} {strategy:9s} {med:9.3f} {args.steps**2 / med:10.0f} "
                  f"{flops / med / 1e12:8.2f} {flops / med / rates[dtype]:10.1%}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=41)
    ap.add_argument("--chunk", type=int, default=41, help="points per chunk in the overhead section")
    ap.add_argument("--bf16-steps", type=int, default=15)
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--sections", default="1234", help="which sections to run, e.g. 12")
    ap.add_argument("--gpu-device", choices=("cuda", "cpu"), default="cuda",
                    help="section 4's device; cpu rehearses it on the CPU")
    ap.add_argument("--worker", choices=("plane", "overhead", "matmul"))
    ap.add_argument("--out")
    ap.add_argument("--store")
    args = ap.parse_args()
    if args.worker:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        {"plane": worker_plane, "overhead": worker_overhead, "matmul": worker_matmul}[args.worker](args)
        return
    sys.path.insert(0, str(SRC))
    from lossatlas import examples

    examples.load("mlp-digits")  # train/cache the example once, outside the timings
    print(f"torch {torch.__version__}; {os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f} "
          "(timings on a shared machine are noisy: medians of interleaved repetitions)")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        if "1" in args.sections:
            section_speedup(args, Path(tmp))
        if "2" in args.sections:
            section_overhead(args, Path(tmp))
    if "3" in args.sections and not args.skip_bf16:
        section_bf16(args)
    if "4" in args.sections:
        section_gpu(args)


if __name__ == "__main__":
    main()
