"""Stores left half-written by a crash are repaired (and say so) or refused with a clear message,
never used silently: leftover temporary files, unreadable or missing chunk files, torn creation
directories, damaged metadata."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lossatlas
from lossatlas.store import GridStore, StoreLock

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _dist_problem  # noqa: E402
from _store_fixtures import finished, one_thread, reference  # noqa: E402,F401 (fixtures)
from _store_fixtures import resume as _resume  # noqa: E402
from _store_fixtures import same as _same  # noqa: E402


def _overwrite(path: Path):
    problem, d = _dist_problem.build()
    return lossatlas.surface(problem, None, d, steps=8, chunk=4, strategy="loop", store=path, overwrite=True,
                             progress=False)


def _unmark(path: Path, chunk=(0, 1)):
    gstore = GridStore.open(path)
    gstore._array("chunk_done")[tuple(slice(i, i + 1) for i in chunk)] = np.zeros((1, 1), np.uint8)


def test_leftover_partial_files_are_removed_and_reported(finished, reference):
    _unmark(finished)
    (finished / "loss" / "c" / "0" / "1.3f2a.partial").write_bytes(b"half a chunk")
    ds, message = _resume(finished)
    assert "removed 1 unfinished temporary write" in message
    assert not list(finished.rglob("*.partial"))
    _same(ds, reference)


DAMAGE = {
    "unreadable values of a done chunk": (lambda p: (p / "loss" / "c" / "1" / "0").write_bytes(b"\x00not zstd"),
                                          "unreadable chunk (1, 0) of 'loss'"),
    "values of a done chunk missing": (lambda p: (p / "accuracy" / "c" / "2" / "1").unlink(),
                                       "chunk (2, 1) was marked done but its values are missing"),
    "unreadable done marker": (lambda p: (p / "chunk_done" / "c" / "3" / "0").write_bytes(b"junk"),
                               "unreadable done marker of chunk (3, 0)"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_chunks_are_recomputed_and_reported(finished, reference, damage):
    """What a power loss without fsync could leave (a renamed but empty or garbled file)."""
    harm, expected = DAMAGE[damage]
    harm(finished)
    ds, message = _resume(finished)
    assert expected in message
    _same(ds, reference)
    _same(lossatlas.open_surface(finished), reference)


def test_damaged_metadata_is_refused_then_overwritten_on_request(finished, reference):
    (finished / "loss" / "zarr.json").unlink()
    with pytest.raises(lossatlas.StoreError, match="damaged lossatlas store.*array 'loss' is missing.*overwrite=True"):
        _dist_problem.run(finished)
    with pytest.raises(lossatlas.StoreError, match="damaged"):
        lossatlas.open_surface(finished)
    _same(_overwrite(finished), reference)


def test_store_without_its_group_metadata_is_refused_and_can_be_overwritten(finished, reference):
    meta = finished / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["provenance"]
    meta.write_text(json.dumps(doc))
    with pytest.raises(lossatlas.StoreError, match="metadata lacks provenance"):
        lossatlas.open_surface(finished)
    meta.unlink()  # a store with no group metadata at all: still recognised as ours for overwrite
    with pytest.raises(lossatlas.StoreError, match="looks like a damaged lossatlas store"):
        lossatlas.open_surface(finished)
    _same(_overwrite(finished), reference)


def test_creation_leftovers_of_dead_processes_are_removed(tmp_path, reference):
    path = tmp_path / "s.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    torn = tmp_path / f".s.zarr.creating-{socket.gethostname()}-{int(dead.stdout)}-abcd1234"
    torn.mkdir()
    (torn / "zarr.json").write_text("{}")
    live = tmp_path / f".s.zarr.creating-{socket.gethostname()}-{os.getpid()}-abcd1234"  # a live creator: kept
    live.mkdir()
    ds = _dist_problem.run(path)
    _same(ds, reference)
    assert not torn.exists() and live.exists()
    shutil.rmtree(live)


def test_lock_is_job_wide_and_names_its_holder(finished):
    lock = StoreLock.acquire(finished, func="test", job="rank 0 of a 2-rank torch.distributed job (master h:1)")
    try:
        with pytest.raises(lossatlas.StoreLockedError, match=f"pid {os.getpid()} on .*rank 0 of a 2-rank"):
            _dist_problem.run(finished)
        with pytest.raises(lossatlas.StoreLockedError):
            StoreLock.acquire(finished, func="again")
    finally:
        lock.release()
    assert not lock.held
    StoreLock.acquire(finished, func="after").release()
