"""GridJob and run_grid: one result schema with or without a store, resume after an interrupt, each
chunk of a store read at most once per call, and the jobs (surface, ratio_map, interpolate,
Curve.evaluate) free of runner and store code."""
from __future__ import annotations

import ast
import collections
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import lossatlas
from lossatlas.grid import Grid
from lossatlas.grid_job import RUN_KEYS, GridJob, open_grid, run_grid

GRID = Grid.make(2, (8, 6), ((-1.0, 2.0), (-1.5, 1.5)))  # 4 × 2 chunks of 2 × 3 points
SRC = Path(lossatlas.__file__).parent


def _closed_form(coefficients: np.ndarray) -> dict[str, np.ndarray]:
    a, b = coefficients[:, 0], coefficients[:, 1]
    return {"loss": a**2 + np.sin(3 * b) / 7, "other": np.exp(a * b) - a}


class _Counting:
    """The toy evaluator: counts the points it evaluates and may stop after some chunks."""

    def __init__(self, stop_after: int | None = None):
        self.points, self.chunks, self.stop_after, self.closed = 0, 0, stop_after, False

    def __call__(self, coefficients):
        if self.stop_after is not None and self.chunks == self.stop_after:
            raise KeyboardInterrupt
        self.chunks += 1
        self.points += len(coefficients)
        return _closed_form(coefficients)

    def close(self):
        self.closed = True


def _job(evaluator: _Counting | None = None, *, chunk=(2, 3), finish=None) -> GridJob:
    made = []

    def build(settings):
        ev = evaluator or _Counting()
        made.append(ev)
        return ev

    return GridJob(kind="toy", func="toy", grid=GRID, variables=("loss", "other"), provenance={"kind": "toy", "v": 1},
                   requested={"chunk_shape": None}, plan=lambda req: ({"chunk_shape": list(chunk)}, build({})),
                   evaluator=build, attrs=lambda s: {"kind": "toy", "note": ("a", 1)}, labels=("alpha", "beta"),
                   description="toy", finish=finish)


def _values_only(ds: xr.Dataset, *drop: str) -> xr.Dataset:
    return ds.drop_attrs(deep=False).assign_attrs({k: v for k, v in ds.attrs.items()
                                                   if k not in RUN_KEYS + drop})


def test_memory_and_store_give_the_same_dataset_and_attr_keys(tmp_path):
    memory = run_grid(_job(), progress=False)
    stored = run_grid(_job(), store=tmp_path / "s.zarr", progress=False)
    expected = _closed_form(GRID.coefficients((slice(None), slice(None))))
    np.testing.assert_array_equal(memory["loss"].values, expected["loss"].reshape(GRID.shape))
    assert set(memory.attrs) == set(stored.attrs)
    for key in ("seconds", "ranks", "rank_points", "rank_busy_seconds", "points_total", "points_done", "complete",
                "nan_points", "inf_points", "provenance", "store", "verified", "chunk_shape", "kind"):
        assert key in memory.attrs, key
    assert memory.attrs["store"] == "" and stored.attrs["store"] == str(tmp_path / "s.zarr")
    assert memory.attrs["rank_points"] == stored.attrs["rank_points"] == [GRID.size]
    xr.testing.assert_identical(_values_only(memory, "store"), _values_only(stored, "store"))
    assert memory.x.attrs["long_name"] == "alpha" and lossatlas.attrs(memory)["note"] == ["a", 1]  # as a store keeps it (JSON in attrs)
    reopened = open_grid(tmp_path / "s.zarr")  # the stored result is what reopening gives (but the run figures)
    assert set(reopened.attrs) == set(stored.attrs) and reopened.attrs["seconds"] == 0.0
    xr.testing.assert_identical(_values_only(reopened), _values_only(stored))
    again = run_grid(_job(), store=tmp_path / "s.zarr", progress=False)  # complete: nothing computed
    assert again.attrs["rank_points"] == [0] and again.attrs["seconds"] == 0.0
    xr.testing.assert_identical(_values_only(again), _values_only(stored))


def test_finish_attrs_are_written_through_the_store(tmp_path):
    def finish(ds):
        return {"summary": float(ds["loss"].max()), "kind": "toy-summary"}

    memory = run_grid(_job(finish=finish), progress=False)
    stored = run_grid(_job(finish=finish), store=tmp_path / "s.zarr", progress=False)
    reopened = open_grid(tmp_path / "s.zarr")  # sealed: an update, not an edit
    assert memory.attrs["summary"] == stored.attrs["summary"] == reopened.attrs["summary"]
    assert reopened.attrs["kind"] == "toy-summary" and reopened.attrs["verified"] == 1


def test_resume_after_an_interrupt_computes_only_what_is_missing(tmp_path):
    path = tmp_path / "s.zarr"
    first = _Counting(stop_after=4)
    with pytest.raises(KeyboardInterrupt) as err:
        run_grid(_job(first), store=path, progress=False)
    assert err.value.lossatlas_progress["points_done"] == 4 * 6
    assert first.closed  # the evaluator is closed on the way out
    partial = open_grid(path)
    assert partial.attrs["points_done"] == 24 and partial.attrs["complete"] == 0
    second = _Counting()
    done = run_grid(_job(second), store=path, progress=False)
    assert second.points == GRID.size - 24
    memory = run_grid(_job(), progress=False)
    xr.testing.assert_identical(_values_only(done, "store"), _values_only(memory, "store"))
    assert done.attrs["rank_points"] == [GRID.size - 24]


@pytest.fixture
def chunk_reads(monkeypatch):
    """How often each chunk file of a variable is read from disk (zarr's LocalStore.get)."""
    from zarr.storage import LocalStore

    reads: collections.Counter = collections.Counter()
    original = LocalStore.get

    async def counting(self, key, prototype=None, byte_range=None):
        out = await original(self, key, prototype, byte_range)
        parts = key.split("/")
        if out is not None and len(parts) > 2 and parts[0] in ("loss", "other") and parts[1] == "c":
            reads[key] += 1  # a chunk file read (asking for one not yet written reads nothing)
        return out

    monkeypatch.setattr(LocalStore, "get", counting)
    return reads


def test_each_chunk_is_read_at_most_once(tmp_path, chunk_reads):
    path = tmp_path / "s.zarr"
    run_grid(_job(), store=tmp_path / "fresh.zarr", progress=False)
    assert sum(chunk_reads.values()) == 0  # a fresh store: the values computed are kept, nothing read back
    with pytest.raises(KeyboardInterrupt):
        run_grid(_job(_Counting(stop_after=5)), store=path, progress=False)
    chunk_reads.clear()
    run_grid(_job(), store=path, progress=False)
    assert len(chunk_reads) == 2 * 5 and max(chunk_reads.values()) == 1  # the 5 chunks done before, once each
    chunk_reads.clear()
    run_grid(_job(), store=path, progress=False)  # complete: every chunk once
    n_chunks = GRID.chunks((2, 3)).n_chunks
    assert len(chunk_reads) == 2 * n_chunks and max(chunk_reads.values()) == 1


def test_a_damaged_chunk_done_before_is_recomputed_not_trusted(tmp_path):
    path = tmp_path / "s.zarr"
    with pytest.raises(KeyboardInterrupt):
        run_grid(_job(_Counting(stop_after=3)), store=path, progress=False)
    (path / "loss" / "c" / "0" / "1").write_bytes(b"garbage")
    with pytest.warns(lossatlas.StoreRepairWarning):
        done = run_grid(_job(), store=path, progress=False)
    memory = run_grid(_job(), progress=False)
    np.testing.assert_array_equal(done["loss"].values, memory["loss"].values)


# -- the jobs contain no runner or store code -----------------------------------------------------
FORBIDDEN_MODULES = {"runner", "store", "lossatlas.runner", "lossatlas.store"}
FORBIDDEN_NAMES = {"open_session", "run_chunks", "evaluate_chunks", "GridStore", "StoreLock", "update_attrs",
                   "read_checked", "write_chunk"}


@pytest.mark.parametrize("module", ["surface.py", "curvature/ratio.py", "paths.py", "connect.py"])
def test_jobs_do_not_import_runner_or_store(module):
    tree = ast.parse((SRC / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            name = (node.module or "").lstrip(".")
            assert name not in FORBIDDEN_MODULES and not name.endswith((".runner", ".store")), (module, name)
            assert not {a.name for a in node.names} & FORBIDDEN_NAMES, (module, name)
        elif isinstance(node, ast.Import):
            assert not {a.name for a in node.names} & FORBIDDEN_MODULES, module
        elif isinstance(node, (ast.Name, ast.Attribute)):
            ident = node.id if isinstance(node, ast.Name) else node.attr
            assert ident not in FORBIDDEN_NAMES, (module, ident)
