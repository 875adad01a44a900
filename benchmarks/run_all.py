"""Run every benchmark of ``make bench`` and end with one table of its targets (PASS/MISS).

Each benchmark runs as its own process (its own interpreter, threads and peak memory), its output is
shown as it comes and appended to ``build/bench.log``, and the ``[PASS]``/``[MISS]`` lines printed by
:func:`_verdict.verdict` are collected. On a machine without CUDA the GPU benchmarks (the ``gpu``
row, section 4 of ``scale``) print :data:`_verdict.GPU_NOT_MEASURED`; the table shows it once. Exit
status 1 when a benchmark crashed (a MISS is a measurement, not a failure). Usage:
``python benchmarks/run_all.py [--only surface,zoo]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _verdict import GPU_NOT_MEASURED  # noqa: E402

ONE_THREAD = {"OMP_NUM_THREADS": "1"}

#: (name, arguments, extra environment): one-thread CPU clocks where the shared machine makes wall
#: time meaningless; the thread and scale benchmarks choose their threads themselves
BENCHMARKS = [
    ("surface", ["bench_surface.py", "--clock", "cpu"], ONE_THREAD),
    ("zoo", ["bench_zoo.py", "--clock", "cpu"], ONE_THREAD),
    ("memory", ["bench_memory.py"], {}),
    ("curvature", ["bench_curvature.py", "--no-exact"], {}),
    ("curvature_map", ["bench_curvature_map.py"], {}),
    ("report", ["bench_report.py"], ONE_THREAD),
    ("paths", ["bench_paths.py"], {}),
    ("scale", ["bench_scale.py"], {}),
    ("threads", ["bench_threads.py"], {}),
    ("gpu", ["bench_zoo.py", "--device", "cuda"], {}),  # the zoo on CUDA (issue 17's GPU row)
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated names (default: all): "
                    + ",".join(n for n, _, _ in BENCHMARKS))
    ap.add_argument("--log", default="build/bench.log")
    args = ap.parse_args()
    chosen = [b for b in BENCHMARKS if not args.only or b[0] in args.only.split(",")]
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    verdicts, crashed = [], []
    with log.open("w") as out:
        for name, argv, env in chosen:
            print(f"\n=== {name}: {' '.join(argv)}", flush=True)
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, str(HERE / argv[0]), *argv[1:]], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
            for line in proc.stdout:
                sys.stdout.write(line)
                out.write(line)
                if line.startswith(("[PASS]", "[MISS]")):
                    verdicts.append(f"{name:14s} {line.rstrip()}")
                gpu_line = f"{'gpu':14s} {GPU_NOT_MEASURED}"
                if GPU_NOT_MEASURED in line and gpu_line not in verdicts:
                    verdicts.append(gpu_line)
            if proc.wait() != 0:
                crashed.append(name)
            print(f"=== {name}: {time.perf_counter() - start:.0f} s, exit {proc.returncode}", flush=True)
    print("\nTargets (docs/benchmarks.md explains each):")
    for line in verdicts:
        print("  " + line)
    if crashed:
        print("crashed: " + ", ".join(crashed))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
