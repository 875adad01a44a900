"""Problems and runs shared by the distributed and fault tests (imported by torchrun workers,
forked children and the tests themselves), and a script entry point for torchrun.

    torchrun --nproc-per-node 2 tests/_dist_problem.py OUT_DIR [store|memory|data|all]
    torchrun --nproc-per-node 2 tests/_dist_problem.py OUT_DIR fault STORE DELAY
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import lossatlas


class SlowNet(torch.nn.Module):
    """A tiny MLP whose forward may sleep (``delay``, not part of the fingerprint) to slow runs down."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        torch.manual_seed(int(os.environ.get("DIST_PROBLEM_SEED", "0")))  # tests vary it to make ranks disagree
        self.l1 = torch.nn.Linear(4, 6)
        self.l2 = torch.nn.Linear(6, 3)
        self.delay = delay

    def forward(self, x):
        if self.delay:
            time.sleep(self.delay)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls > int(os.environ.get("DIST_PROBLEM_FAIL_AFTER", "1000000000")):  # tests inject a failure
            raise RuntimeError("injected failure")
        return self.l2(torch.tanh(self.l1(x)))


def build(delay: float = 0.0, batch_size: int | None = None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=g)
    y = torch.randint(0, 3, (48,), generator=g)
    problem = lossatlas.Problem(SlowNet(delay), torch.nn.CrossEntropyLoss(), (x, y), batch_size=batch_size)
    return problem, lossatlas.directions.random(problem, n=2, seed=0)


def run(store, delay: float = 0.0, *, steps: int = 8, chunk: int | None = 4, strategy: str = "loop",
        parallel: str = "grid", batch_size: int | None = None, progress: bool = False):
    problem, d = build(delay, batch_size)
    return lossatlas.surface(problem, None, d, steps=steps, span=1.0, strategy=strategy, chunk=chunk, store=store,
                             progress=progress, parallel=parallel)


def legacy(store, *, overwrite: bool = False, delay: float = 0.0) -> np.ndarray:
    """A grid job written by hand over the evaluator (a PointEvaluator, a provenance and a chunk shape,
    as ``curvature.ratio_map`` builds one), run on every rank by ``run_grid``: opening, locking,
    ``overwrite`` and the provenance check happen once, on rank 0, so ranks never race."""
    from lossatlas.evaluator import PointEvaluator
    from lossatlas.grid import Grid
    from lossatlas.grid_job import GridJob, run_grid

    problem, d = build(delay)
    grid = Grid.make(2, 8, 1.0)
    chunk_shape = grid.chunk_shape_for(4)
    prov = {"kind": "legacy", "center": lossatlas.params.fingerprint(problem.params())}

    def evaluator(settings):
        return PointEvaluator(problem, problem.params(), d.vectors, strategy="loop", metrics=False)

    job = GridJob(kind="legacy", func="legacy", grid=grid, variables=("loss",), provenance=prov,
                  requested={"chunk_shape": None}, plan=lambda req: ({"chunk_shape": list(chunk_shape)}, None),
                  evaluator=evaluator, attrs=lambda s: {"kind": "legacy"}, labels=("x", "y"), description="legacy")
    return run_grid(job, store=Path(store), overwrite=overwrite, progress=False)["loss"].values


def toy_job():
    """A GridJob of a closed-form function of the coefficients (no torch): 1 rank == 2 ranks by construction,
    so what it checks is run_grid's sharing of chunks and its assembly of the result."""
    from lossatlas.grid import Grid
    from lossatlas.grid_job import GridJob

    def evaluate(c):
        return {"loss": c[:, 0] ** 2 + np.sin(3 * c[:, 1]) / 7, "other": np.exp(c[:, 0] * c[:, 1])}

    return GridJob(kind="toy", func="toy", grid=Grid.make(2, (10, 7), 1.0), variables=("loss", "other"),
                   provenance={"kind": "toy"}, requested={"chunk_shape": None},
                   plan=lambda req: ({"chunk_shape": [2, 3]}, evaluate), evaluator=lambda s: evaluate,
                   attrs=lambda s: {"kind": "toy"}, labels=("a", "b"),
                   finish=lambda ds: {"loss_max": float(ds["loss"].max())})


def _save(ds, path: Path) -> None:
    np.savez(path, loss=ds.loss.values, accuracy=ds.accuracy.values)


def main(out: str, what: str) -> None:
    out_dir = Path(out)
    rank = int(os.environ.get("RANK", "0"))
    info = {"rank": rank, "threads": torch.get_num_threads()}
    if what in ("store", "all"):
        ds = run(out_dir / "grid.zarr", steps=11, chunk=4, progress=True)
        info["store"] = {"ranks": ds.attrs.get("ranks"), "complete": ds.attrs["complete"]}
        _save(ds, out_dir / f"store-{rank}.npz")
    if what in ("memory", "all"):
        ds = run(None, steps=11, chunk=4, strategy="vmap")
        info["memory"] = {"ranks": ds.attrs["ranks"], "rank_points": ds.attrs["rank_points"]}
        _save(ds, out_dir / f"memory-{rank}.npz")
    if what in ("data", "all"):
        ds = run(out_dir / "data.zarr", steps=5, chunk=5, parallel="data", batch_size=10)
        info["data"] = {"complete": ds.attrs["complete"]}
        _save(ds, out_dir / f"data-{rank}.npz")
    if what in ("toy", "all"):
        from lossatlas.grid_job import run_grid

        for where in ("memory", "store"):
            ds = run_grid(toy_job(), store=out_dir / "toy.zarr" if where == "store" else None, progress=False)
            np.savez(out_dir / f"toy-{where}-{rank}.npz", loss=ds.loss.values, accuracy=ds.other.values)
            info[f"toy-{where}"] = {k: ds.attrs[k] for k in ("ranks", "rank_points", "complete", "loss_max")}
            info[f"toy-{where}"]["keys"] = sorted(ds.attrs)
    (out_dir / f"info-{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "fault":  # OUT fault STORE DELAY: the run the fault tests kill
        run(sys.argv[3], float(sys.argv[4]))
    else:
        main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "all")
