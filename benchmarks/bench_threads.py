"""``lossatlas demo`` on an idle machine and with one core kept busy, new thread default vs old (issue 17).

Each run is a fresh ``python -m lossatlas demo --quick`` subprocess (``--full`` for the whole demo)
with ``OMP_NUM_THREADS``/``LOSSATLAS_THREADS`` unset, so the thread count is the default's choice:

* ``new``: the policy of :mod:`lossatlas._threads` (idle cores, one thread for a tiny problem);
* ``old``: torch's default, one thread per core (``LOSSATLAS_THREAD_POLICY=torch``);
* ``passive`` (information): the old default with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep
  instead of spinning while they wait), what one line before ``import torch`` would give.

"busy": a ``python -c "while True: pass"`` subprocess runs during the demo. Repetitions are
interleaved (each runs every variant once). The machine is shared, so "idle" is approximate: the
load of *other* processes during each run (busy core-seconds from /proc/stat, minus the demo's and
the spinner's own CPU time, per wall second; near the core count when other processes take all
they are given) and the 1-minute load average are printed beside each run. Target:
``demo busy / idle`` (new default, medians) ≤ 1.3. Usage::

    python benchmarks/bench_threads.py [--reps 3] [--full] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _verdict import verdict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_busy() -> float:
    """Busy core-seconds of the whole machine so far (/proc/stat, all CPUs)."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (float(parts[11]) + float(parts[12])) / TICK
    except OSError:
        return 0.0


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _provenance(store: Path) -> dict:
    import zarr

    prov = zarr.open_group(str(store), mode="r").attrs.get("provenance", {})
    return json.loads(prov) if isinstance(prov, str) else dict(prov)


def run_demo(variant: str, busy: bool, full: bool) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LOSSATLAS_THREADS", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    if variant in ("old", "passive"):
        env["LOSSATLAS_THREAD_POLICY"] = "torch"
    if variant == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if spinner is not None:
            time.sleep(0.3)  # the spinner is running before the demo measures the load
        with tempfile.TemporaryDirectory() as out:
            args = [sys.executable, "-m", "lossatlas", "demo", "--out", out, "--no-progress"]
            args += [] if full else ["--quick"]
            s0 = _proc_cpu(spinner.pid) if spinner else 0.0
            b0, c0, t0 = _cpu_busy(), _children_cpu(), time.perf_counter()
            done = subprocess.run(args, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            b1, c1, s1 = _cpu_busy(), _children_cpu(), _proc_cpu(spinner.pid) if spinner else 0.0
            if done.returncode != 0:
                raise SystemExit(f"demo failed ({variant}, busy={busy}): {done.stderr[-2000:]}")
            prov = _provenance(Path(out) / "mlp-digits-plane.zarr")
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    other = max(0.0, (b1 - b0) - (c1 - c0) - (s1 - s0)) / wall
    with open("/proc/loadavg") as f:
        loadavg = float(f.read().split()[0])
    return {"seconds": wall, "other_load": other, "loadavg": loadavg, "mlp_threads": prov.get("threads")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="the whole demo (default: demo --quick)")
    ap.add_argument("--no-passive", action="store_true", help="leave out the OMP_WAIT_POLICY=PASSIVE variant")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    cases = [("new", False), ("new", True), ("old", False), ("old", True)]
    if not a.no_passive:
        cases.append(("passive", True))
    runs: dict[str, list[dict]] = {f"{v}/{'busy' if b else 'idle'}": [] for v, b in cases}
    print(f"lossatlas demo{'' if a.full else ' --quick'}: {os.cpu_count()} CPUs, affinity "
          f"{len(os.sched_getaffinity(0))}; {a.reps} interleaved repetitions", flush=True)
    for rep in range(a.reps):
        for v, b in cases:
            key = f"{v}/{'busy' if b else 'idle'}"
            r = run_demo(v, b, a.full)
            runs[key].append(r)
            print(f"  rep {rep + 1} {key:13s} {r['seconds']:7.1f} s  other load {r['other_load']:.2f} cores  "
                  f"mlp-digits plane threads {r['mlp_threads']}", flush=True)
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    load = {k: statistics.median(r["other_load"] for r in v) for k, v in runs.items()}
    print("medians:")
    for k in runs:
        print(f"  {k:13s} {med[k]:7.1f} s   (other load median {load[k]:.2f} cores)")
    print(f"old default busy / idle: {med['old/busy'] / med['old/idle']:.2f}; new busy / old busy: "
          f"{med['new/busy'] / med['old/busy']:.2f}; new idle / old idle: {med['new/idle'] / med['old/idle']:.2f}")
    if "passive/busy" in med:
        print(f"old default + OMP_WAIT_POLICY=PASSIVE busy / new idle: {med['passive/busy'] / med['new/idle']:.2f}")
    verdict("demo busy / idle", med["new/busy"] / med["new/idle"], 1.3,
            detail=f"new default, medians {med['new/busy']:.1f} s / {med['new/idle']:.1f} s; "
                   f"old default {med['old/busy'] / med['old/idle']:.2f}")
    if a.json:
        a.json.write_text(json.dumps({"runs": runs, "medians": med, "other_load": load}, indent=2))


if __name__ == "__main__":
    main()
