"""``lossatlas report``: the curvature step with one shared Hessian/GGN operator vs one operator per estimate.

The report's curvature step (``lossatlas.report._compute._curvature``: λmax/λmin, the GGN's λmin, the
Gauss–Newton split, the trace and the density) builds one Hessian and one GGN operator and hands them to
every estimate; the baseline (what the report did before) lets each estimate build its own, so each
rebuilds the graph and re-checks its first product against finite differences of exact gradients
(4 gradient evaluations). Runs are interleaved (each repetition runs both once), on one thread (the
report's CPU cost, not the machine's contention), with fresh folders (nothing reused). The numbers of
both are compared (they must be equal, except the baseline's split whose fresh operator may fall back
to finite differences). Usage: ``python benchmarks/bench_report.py [--target mlp-digits] [--reps 3]``.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _verdict import verdict  # noqa: E402

import lossatlas  # noqa: E402
from lossatlas import curvature  # noqa: E402
from lossatlas import params as P  # noqa: E402
from lossatlas.curvature import operators as O  # noqa: E402
from lossatlas.report import _compute as C  # noqa: E402

CALLS: collections.Counter = collections.Counter()


def _count(name: str) -> None:
    orig = getattr(O.CurvatureOperator, name)

    def wrapped(*a, **k):
        CALLS[name] += 1
        return orig(*a, **k)
    setattr(O.CurvatureOperator, name, wrapped)


for _name in ("__init__", "_gradient", "_double_backward"):
    _count(_name)


def separate(problem, center, s):
    """The baseline: every estimate builds its own operator (the report before the shared operator)."""
    eig = curvature.eigenvalues(problem, center, k=1, which="both", tol=s["eigen_tol"], seed=s["seed"],
                                certify=False, progress=False)
    ggn = curvature.eigenvalues(problem, center, k=1, which="smallest", tol=s["eigen_tol"], seed=s["seed"],
                                curvature="ggn", certify=False, progress=False)
    v = eig.vectors[-1]
    hv = curvature.hessian_operator(problem, center).apply(v)
    gv = curvature.ggn_operator(problem, center).apply(v)
    tr = curvature.trace(problem, center, probes=s["trace_probes"], seed=s["seed"], progress=False)
    dens = curvature.density(problem, center, iters=s["density_iters"], probes=s["density_probes"], seed=s["seed"],
                             points=401, progress=False)
    vv = P.dot(v, v)
    return {"lambda_max": float(eig.values[0]), "lambda_min": float(eig.values[-1]), "ggn_min": float(ggn.values[0]),
            "vHv": P.dot(v, hv) / vv, "vGv": P.dot(v, gv) / vv, "trace": float(tr.value),
            "negative_mass": float(dens.negative_mass.value)}


def shared(problem, center, s):
    folder = Path(tempfile.mkdtemp())
    out = C._curvature(problem, center, folder, s, C.TargetResult("bench", folder), False)
    return {"lambda_max": out["eigen"]["lambda_max"], "lambda_min": out["eigen"]["lambda_min"],
            "ggn_min": out["ggn"]["lambda_min"], "vHv": out["split"]["vHv"], "vGv": out["split"]["vGv"],
            "trace": out["trace"]["value"], "negative_mass": out["density"]["negative_mass"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="mlp-digits")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ex = lossatlas.examples.load(args.target)
    s = dict(C.DEFAULTS)
    cpu: dict[str, list[float]] = {"separate": [], "shared": []}
    wall: dict[str, list[float]] = {"separate": [], "shared": []}
    calls: dict[str, collections.Counter] = {}
    values: dict[str, dict] = {}
    for _ in range(args.reps):
        for name, fn in (("separate", separate), ("shared", shared)):
            CALLS.clear()
            c0, w0 = time.process_time(), time.perf_counter()
            values[name] = fn(ex.problem, ex.center, s)
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
            calls[name] = collections.Counter(CALLS)
    for name in cpu:
        print(f"{name:9s} CPU median {statistics.median(cpu[name]):.2f} s, wall median {statistics.median(wall[name]):.2f} s"
              f" ({args.reps} reps); operators {calls[name]['__init__']}, products {calls[name]['_double_backward']}, "
              f"gradients {calls[name]['_gradient']}")
    ratios = [a / b for a, b in zip(cpu["shared"], cpu["separate"])]
    differ = [k for k in values["shared"] if k not in ("vHv",) and values["shared"][k] != values["separate"][k]]
    print(f"values: {values['shared']}\nbaseline's split vHv {values['separate']['vHv']!r} "
          f"(shared: {values['shared']['vHv']!r}; λmin {values['shared']['lambda_min']!r})")
    verdict(f"{args.target}: CPU shared/separate (median of per-rep ratios)", statistics.median(ratios), 1.0)
    verdict(f"{args.target}: operators built, shared", calls["shared"]["__init__"], 2, "<=")
    verdict(f"{args.target}: estimates that differ from the baseline's (the split aside)", len(differ), 0, "<=",
            detail=", ".join(differ))


if __name__ == "__main__":
    main()
