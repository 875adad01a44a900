"""The default number of intra-op CPU threads: the cores actually free, never more than the work can use.

torch's default is one thread per core. On a machine where another process keeps a core busy, every
parallel region then waits for the thread that shares that core (OpenMP threads spin, then the
scheduler gives the core away for a whole time slice): the demo ran 3–5× slower than on one thread,
a tiny problem with two threads 20× slower (measured, ``docs/benchmarks.md``). :func:`choose` decides,
in this order (the first that applies wins):

1. an explicit choice: ``--threads``/``LOSSATLAS_THREADS`` (the CLI calls :func:`mark_explicit`), a
   ``torch.set_num_threads`` by the user since lossatlas was imported, or ``OMP_NUM_THREADS`` /
   ``MKL_NUM_THREADS`` in the environment: ``torch.get_num_threads()`` as it is;
2. ``LOSSATLAS_THREAD_POLICY=torch``: torch's default (the behaviour before this policy; benchmarks);
3. the policy: the cores this process may run on (``os.sched_getaffinity``, capped by a cgroup CPU
   quota) that are idle now — the idle fraction of each over a 50 ms window of ``/proc/stat`` summed
   and rounded down (with a 0.35 allowance), at least 1 — and at most one thread per
   :data:`FLOPS_PER_THREAD` of work per evaluation when the work is known (a tiny problem: one
   thread, so no thread pool is ever started for it).

The choice never changes ``torch.get_num_threads()`` by itself; a grid job pins it in its provenance
and sets it only while evaluating (:func:`lossatlas.runner.pinned_threads`), so a resumed store keeps
the count it was made with whatever the default is on the day.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, NamedTuple

import torch

__all__ = ["Choice", "choose", "mark_explicit", "available_cores", "idle_cores", "problem_flops", "POLICY_ENV",
           "FLOPS_PER_THREAD"]

#: environment switch: ``torch`` = torch's default thread count (the behaviour before the policy)
POLICY_ENV = "LOSSATLAS_THREAD_POLICY"
#: least work (floating-point operations per evaluation) worth one more thread: below ~2 MFLOP
#: (≈ 20 µs at 100 GFLOP/s) a parallel region's start and join cost as much as the work
FLOPS_PER_THREAD = 2e6
#: how long the idle cores are measured, and how long a measurement is reused
WINDOW_S = 0.05
REUSE_S = 5.0
_ALLOWANCE = 0.35

_state: dict[str, Any] = {"baseline": torch.get_num_threads(), "explicit": False, "sample": None}


class Choice(NamedTuple):
    threads: int
    reason: str  #: "explicit", "torch" or "policy: …" (how it was decided, for messages and benchmarks)


def mark_explicit(threads: int | None = None) -> None:
    """Record that the thread count was chosen explicitly (``--threads``/``LOSSATLAS_THREADS``); ``None``
    forgets it (tests)."""
    _state["explicit"] = threads is not None
    _state["baseline"] = torch.get_num_threads()


def note_default(threads: int) -> None:
    """Record ``threads`` as the process's default set by lossatlas (not a user's explicit choice)."""
    _state["baseline"] = int(threads)


def state() -> dict[str, Any]:
    """What :func:`restore` puts back (the CLI's ``main`` leaves the policy as it found it)."""
    return dict(_state)


def restore(saved: dict[str, Any]) -> None:
    _state.update(saved)


def _explicit() -> bool:
    if _state["explicit"] or torch.get_num_threads() != _state["baseline"]:
        return True
    return any(os.environ.get(v, "").strip() for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_times() -> dict[int, tuple[float, float]]:
    """Per CPU: (idle + iowait, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *fields = line.split()
                values = [float(x) for x in fields[:8]]
                out[int(name[3:])] = (values[3] + values[4], sum(values))
    return out


def idle_cores(window: float = WINDOW_S) -> float | None:
    """Sum of the idle fractions, over ``window`` seconds, of the CPUs this process may run on (``None``
    where /proc/stat cannot be read). This process sleeps meanwhile, so it does not count itself."""
    try:
        cpus = os.sched_getaffinity(0)
        before = _cpu_times()
        time.sleep(window)
        after = _cpu_times()
    except (AttributeError, OSError, ValueError):
        return None
    idle = 0.0
    for cpu in cpus:
        if cpu in before and cpu in after:
            total = after[cpu][1] - before[cpu][1]
            idle += 1.0 if total <= 0 else min(1.0, max(0.0, (after[cpu][0] - before[cpu][0]) / total))
    return idle


def _free_cores() -> tuple[int, str]:
    cores = available_cores()
    now = time.monotonic()
    sample = _state["sample"]
    if sample is None or now - sample[0] > REUSE_S:
        sample = (now, idle_cores())
        _state["sample"] = sample
    idle = sample[1]
    if idle is None:
        return cores, f"{cores} cores (load unknown)"
    free = max(1, min(cores, int(idle + _ALLOWANCE)))
    return free, f"{idle:.2f} of {cores} cores idle"


def choose(work: float | None = None) -> Choice:
    """The thread count to use for work of ``work`` floating-point operations per evaluation (``None``:
    unknown), by the rules of the module notes."""
    if _explicit():
        return Choice(torch.get_num_threads(), "explicit")
    if os.environ.get(POLICY_ENV, "").strip().lower() == "torch":
        return Choice(torch.get_num_threads(), "torch")
    free, why = _free_cores()
    if work is not None:
        useful = max(1, int(float(work) // FLOPS_PER_THREAD))
        if useful < free:
            return Choice(useful, f"policy: {why}; {float(work):.2g} FLOP per evaluation")
    return Choice(free, f"policy: {why}")


def problem_flops(problem: Any) -> float:
    """Floating-point operations of one evaluation of a problem's loss, about: 2 per parameter per
    sample (exact for dense layers, a lower bound for convolutions, which reuse their weights)."""
    n = sum(int(v.numel()) for v in problem.params(copy=False).values())
    return 2.0 * n * int(getattr(problem, "n_samples", 1) or 1)


def for_problem(problem: Any) -> int | None:
    """The thread count a grid job over ``problem`` pins in its settings: :func:`choose` for its work
    per evaluation on CPU; ``None`` (threads do not apply) on another device."""
    return choose(problem_flops(problem)).threads if problem.device.type == "cpu" else None
