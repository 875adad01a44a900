"""The runner's session protocol as documented in lossatlas.runner (one process; the distributed
side is in test_distributed.py and test_faults.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lossatlas
from lossatlas.grid import Grid
from lossatlas.runner import open_session, pinned_threads, run_chunks
from lossatlas.store import GridStore

GRID = Grid.make(2, 5, 1.0)


def _evaluate(coefficients: np.ndarray) -> dict[str, np.ndarray]:
    return {"loss": (coefficients**2).sum(axis=1)}


def _open(path, calls, *, chunk=None, overwrite=False):
    def decide(requested, local):
        calls.append("decide")
        local["made by"] = "decide"
        return {"chunk_shape": requested["chunk_shape"] or [1, 5]}

    def create(settings):
        calls.append("create")
        return GridStore.create(path, grid=GRID, chunk_shape=settings["chunk_shape"], variables=["loss"],
                                provenance={"kind": "test", **settings})

    return open_session(path, func="test", overwrite=overwrite, provenance={"kind": "test"},
                        requested={"chunk_shape": chunk}, decide=decide, create=create)


def test_session_creates_locks_resumes_and_checks(tmp_path):
    path, calls = tmp_path / "s.zarr", []
    with _open(path, calls) as session:
        assert calls == ["decide", "create"] and session.local == {"made by": "decide"}
        assert session.settings == {"chunk_shape": [1, 5]} and not session.complete
        with pytest.raises(lossatlas.StoreLockedError):
            _open(path, [])
        values = run_chunks(GRID.chunks([1, 5]), _evaluate, ["loss"], store=session.store, progress=False,
                            description="t")
    expected = (GRID.coefficients(tuple(slice(None) for _ in range(2))) ** 2).sum(axis=1).reshape(5, 5)
    np.testing.assert_array_equal(values["loss"], expected)
    calls.clear()
    with _open(path, calls) as again:  # the store settles the settings: no decision, no creation
        assert calls == [] and again.complete and again.settings == {"chunk_shape": [1, 5]}
    with pytest.raises(lossatlas.ProvenanceMismatchError, match="chunk_shape"):
        _open(path, calls, chunk=[5, 1])
    with _open(path, calls, chunk=[5, 1], overwrite=True) as replaced:
        assert calls == ["decide", "create"] and replaced.settings == {"chunk_shape": [5, 1]}


def test_in_memory_session_only_decides():
    calls = []
    with _open(None, calls) as session:
        assert calls == ["decide"] and session.store is None and session.lock is None


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
