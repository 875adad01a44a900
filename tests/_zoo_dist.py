"""torchrun entry point of the zoo's 2-rank test:

    torchrun --nproc-per-node 2 tests/_zoo_dist.py OUT_DIR FAMILY [FAMILY ...]

Every rank evaluates each family's 3×3 surface (float64, ragged batches) with ``parallel="grid"``
and ``parallel="data"`` and writes the values it returns to OUT_DIR/FAMILY-PARALLEL-RANK.npz.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

import lossatlas

sys.path.insert(0, str(Path(__file__).parent))
import _zoo  # noqa: E402


def main(out: str, names: list[str]) -> None:
    rank = int(os.environ.get("RANK", "0"))
    for name in names:
        case = _zoo.FAMILIES[name]()
        problem = case.problem("ragged", torch.float64)
        center = problem.params()
        dirs = _zoo.random_directions(center, 2, seed=7)
        for parallel in ("grid", "data"):
            if parallel == "data" and case.bn == "recalibrate":
                continue
            ds = lossatlas.surface(problem, center, dirs, steps=3, span=1.0, progress=False, metrics=False,
                                   strategy="loop", chunk=2, parallel=parallel)
            np.savez(Path(out) / f"{name}-{parallel}-{rank}.npz", loss=ds.loss.values.reshape(-1),
                     coefficients=_zoo.grid_coefficients(ds))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
