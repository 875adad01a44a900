"""The session of lossatlas.grid_job.run_grid (one process; the distributed side is in
test_distributed.py and test_faults.py) and the chunk loop of lossatlas.runner."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lossatlas
from lossatlas.grid import Grid
from lossatlas.grid_job import GridJob, run_grid
from lossatlas.runner import pinned_threads, run_chunks

GRID = Grid.make(2, 5, 1.0)


def _evaluate(coefficients: np.ndarray) -> dict[str, np.ndarray]:
    return {"loss": (coefficients**2).sum(axis=1)}


def _job(calls, *, chunk=None, hold=None):
    def held(coefficients):  # the evaluator planned on rank 0: runs while the lock is held
        if hold is not None:
            hold()
        return _evaluate(coefficients)

    def plan(requested):
        calls.append("plan")
        return {"chunk_shape": requested["chunk_shape"] or [1, 5]}, held

    def evaluator(settings):
        calls.append("evaluator")
        return _evaluate

    return GridJob(kind="test", func="test", grid=GRID, variables=("loss",), provenance={"kind": "test"},
                   requested={"chunk_shape": chunk}, plan=plan, evaluator=evaluator,
                   attrs=lambda s: {"kind": "test"}, labels=("a", "b"))


def test_session_creates_locks_resumes_and_checks(tmp_path):
    path, calls = tmp_path / "s.zarr", []

    def refused_while_running():
        with pytest.raises(lossatlas.StoreLockedError):
            run_grid(_job([]), store=path, progress=False)

    ds = run_grid(_job(calls, hold=refused_while_running), store=path, progress=False)
    assert calls == ["plan"] and ds.attrs["chunk_shape"] == [1, 5]  # planned once, its evaluator used
    expected = (GRID.coefficients(tuple(slice(None) for _ in range(2))) ** 2).sum(axis=1).reshape(5, 5)
    np.testing.assert_array_equal(ds["loss"].values, expected)
    calls.clear()
    again = run_grid(_job(calls), store=path, progress=False)  # the store settles the settings: no plan, no run
    assert calls == [] and again.attrs["complete"] == 1 and again.attrs["chunk_shape"] == [1, 5]
    with pytest.raises(lossatlas.ProvenanceMismatchError, match="chunk_shape"):
        run_grid(_job(calls, chunk=[5, 1]), store=path, progress=False)
    replaced = run_grid(_job(calls, chunk=[5, 1]), store=path, overwrite=True, progress=False)
    assert calls == ["plan"] and replaced.attrs["chunk_shape"] == [5, 1]


def test_in_memory_session_only_plans():
    calls = []
    ds = run_grid(_job(calls), progress=False)
    assert calls == ["plan"] and ds.attrs["store"] == ""


def test_run_chunks_reports_and_validates():
    report = {}
    run_chunks(GRID.chunks([1, 5]), _evaluate, ["loss"], store=None, progress=False, description="t", report=report)
    assert report["world"] == 1 and report["points"] == [25] and report["seconds"] >= 0
    with pytest.raises(lossatlas.InvalidArgumentError, match="split"):
        run_chunks(GRID.chunks([1, 5]), _evaluate, ["loss"], store=None, progress=False, description="t",
                   split="rows")


def test_pinned_threads_restores_the_count():
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    with pinned_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pinned_threads(None):
        assert torch.get_num_threads() == before


def test_rank_progress_shows_points_rate_and_every_rank(capsys):
    from lossatlas.progress import rank_progress

    with rank_progress(100, "job", world=2) as update:
        update(60, [(40, 2.0), (20, 4.0)])
    out = capsys.readouterr().out
    assert "job" in out and "60/100" in out
    assert "20.0" in out and "5.0" in out and "67%" in out and "33%" in out  # per-rank points/s and shares
    with rank_progress(100, "quiet", world=2, enabled=False) as update:
        update(1, [(1, 1.0), (0, 0.0)])
    assert capsys.readouterr().out == ""
