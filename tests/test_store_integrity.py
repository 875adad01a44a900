"""Damaged stores are never read as good (issue 14): every chunk carries a checksum written with
its done marker, coordinates and attributes carry digests taken at creation. A deleted, truncated
or bit-flipped chunk, an edited coordinate or attribute, leftover temporary files: each is detected
(on read, on resume, by ``lossatlas info --check``), reported by chunk index, and recomputed on
resume or refused. ``overwrite=True`` deletes only stores; the writer lock holds through symlinks."""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import lossatlas
from lossatlas.runner import pinned_threads
from lossatlas.store import GridStore, StoreLock

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _dist_problem  # noqa: E402
from _store_fixtures import finished, one_thread, reference  # noqa: E402,F401 (fixtures)
from _store_fixtures import resume as _resume  # noqa: E402
from _store_fixtures import same as _same  # noqa: E402


def _flip(file: Path, offset: int = -3) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x01
    file.write_bytes(bytes(data))


def _valid_other_values(path: Path) -> None:
    """Replace chunk (1, 0) of 'loss' by a well-formed chunk holding other values (zstd decodes it)."""
    import zarr

    arr = zarr.open_array(str(path / "loss"), mode="r+")
    index = (slice(1, 2), slice(0, 4))  # chunk (1, 0) with chunk shape (1, 4)
    arr[index] = np.asarray(arr[index]) + 1e-9


def _forge_marker(path: Path, chunk) -> None:
    """Mark a chunk done by hand (as a store made before checksums would: 1), over other values."""
    _valid_other_values(path)
    gstore = GridStore.open(path)
    gstore._array("chunk_done")[tuple(slice(i, i + 1) for i in chunk)] = np.ones((1, 1), np.uint64)


CHUNK_DAMAGE = {
    "deleted": (lambda p: (p / "loss" / "c" / "1" / "0").unlink(), (1, 0), "values are missing"),
    "truncated": (lambda p: (p / "loss" / "c" / "1" / "0").write_bytes((p / "loss" / "c" / "1" / "0").read_bytes()[:9]),
                  (1, 0), "unreadable chunk (1, 0) of 'loss'"),
    "bit-flipped": (lambda p: _flip(p / "loss" / "c" / "1" / "0"), (1, 0), "(1, 0)"),
    "rewritten with other values": (_valid_other_values, (1, 0), "chunk (1, 0) does not match its checksum"),
    "moved from another chunk": (lambda p: (p / "accuracy" / "c" / "1" / "0").write_bytes(
        (p / "accuracy" / "c" / "0" / "0").read_bytes()), (1, 0), "chunk (1, 0) does not match its checksum"),
    "done marker forged": (lambda p: _forge_marker(p, (1, 0)), (1, 0), "chunk (1, 0) does not match its checksum"),
}


@pytest.mark.parametrize("damage", list(CHUNK_DAMAGE))
def test_damaged_chunk_is_refused_on_read_by_index(finished, damage):
    harm, chunk, _ = CHUNK_DAMAGE[damage]
    harm(finished)
    with pytest.raises(lossatlas.StoreError, match=r"damaged: 1 chunk\(s\) \(1, 0\) cannot be trusted") as err:
        lossatlas.open_surface(finished)
    assert "Traceback" not in str(err.value) and "zstd" not in str(err.value).lower()


@pytest.mark.parametrize("damage", list(CHUNK_DAMAGE))
def test_damaged_chunk_is_recomputed_on_resume_and_named(finished, reference, damage):
    harm, chunk, expected = CHUNK_DAMAGE[damage]
    harm(finished)
    ds, message = _resume(finished)
    assert expected in message, message
    assert f"chunk(s) {chunk} will be computed again" in message, message
    _same(ds, reference)
    _same(lossatlas.open_surface(finished), reference)
    assert GridStore.open(finished).audit() == []


@pytest.mark.parametrize("damage", list(CHUNK_DAMAGE))
def test_info_check_reports_damage_by_index(finished, damage, capsys):
    from lossatlas.cli import main

    harm, chunk, _ = CHUNK_DAMAGE[damage]
    with pytest.raises(SystemExit) as code:
        main(["info", "--check", str(finished)])
    assert code.value.code in (0, None)
    assert "intact" in capsys.readouterr().out
    harm(finished)
    with pytest.raises(SystemExit) as code:
        main(["info", "--check", str(finished)])
    out = capsys.readouterr().out
    assert code.value.code == 1, out
    assert str(chunk) in out and "DAMAGED" in out, out
    with pytest.raises(SystemExit) as code:  # plain info no longer says "complete yes"
        main(["info", str(finished)])
    captured = capsys.readouterr()
    assert code.value.code == 2
    assert "complete" not in captured.out and "damaged" in captured.err


def test_every_damaged_chunk_is_named(finished, reference):
    (finished / "loss" / "c" / "0" / "1").unlink()
    _flip(finished / "accuracy" / "c" / "1" / "1")
    (finished / "loss" / "c" / "1" / "0").write_bytes(b"")
    damage = GridStore.open(finished).audit()
    assert {d.chunk for d in damage} == {(0, 1), (1, 1), (1, 0)}
    with pytest.raises(lossatlas.StoreError, match=r"3 chunk\(s\) \(0, 1\), \(1, 0\), \(1, 1\)"):
        lossatlas.open_surface(finished)
    ds, message = _resume(finished)
    assert "chunk(s) (0, 1), (1, 0), (1, 1) will be computed again" in message
    _same(ds, reference)


def test_partial_store_checks_done_chunks_only(tmp_path, reference):
    """A chunk not yet done reads as NaN (even if a killed run left its values), and is not damage."""
    path = tmp_path / "s.zarr"
    _dist_problem.run(path)
    gstore = GridStore.open(path)
    gstore._array("chunk_done")[0:1, 1:2] = np.zeros((1, 1), np.uint8)
    ds = lossatlas.open_surface(path)
    assert ds.attrs["complete"] == 0 and np.isnan(ds.loss.values[0:1, 4:8]).all()
    assert gstore.audit() == []
    (path / "loss" / "c" / "0" / "1").write_bytes(b"junk")  # unreadable, but not done: not reported
    assert lossatlas.open_surface(path).attrs["points_done"] == 64 - 4


# -- coordinates and attributes ---------------------------------------------------------------------
def _edit_coords(path: Path) -> None:
    import zarr

    arr = zarr.open_array(str(path / "x"), mode="r+")
    values = np.asarray(arr[...])
    values[3] += 0.01
    arr[...] = values


def _edit_attr(key, value):
    def edit(path: Path) -> None:
        meta = path / "zarr.json"
        doc = json.loads(meta.read_text())
        doc["attributes"][key] = value
        meta.write_text(json.dumps(doc))
    return edit


def _remove_attr(path: Path) -> None:
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["direction_seed"]
    meta.write_text(json.dumps(doc))


def _edit_coord_attrs(path: Path) -> None:
    meta = path / "y" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["long_name"] = "something else"
    meta.write_text(json.dumps(doc))


META_DAMAGE = {
    "coordinate values": (_edit_coords, "coordinate array 'x' was edited"),
    "coordinate attributes": (_edit_coord_attrs, "coordinate array 'y' was edited"),
    "an attribute edited": (_edit_attr("direction_seed", "7"), "attribute 'direction_seed' was edited"),
    "an attribute added": (_edit_attr("note", "mine"), "attribute 'note' was added"),
    "an attribute removed": (_remove_attr, "attribute 'direction_seed' was removed"),
    "provenance edited": (_edit_attr("provenance", "{}"), "attribute 'provenance' was edited"),
}


@pytest.mark.parametrize("damage", list(META_DAMAGE))
def test_edited_coordinates_or_attributes_are_refused(finished, reference, damage, capsys):
    from lossatlas.cli import main

    harm, expected = META_DAMAGE[damage]
    harm(finished)
    with pytest.raises(lossatlas.StoreError, match=expected):
        lossatlas.open_surface(finished)
    with pytest.raises(lossatlas.StoreError, match=expected):
        _dist_problem.run(finished)  # a resume refuses too: it would use the edited grid
    with pytest.raises(SystemExit) as code:
        main(["info", "--check", str(finished)])
    assert code.value.code == 1
    assert expected in capsys.readouterr().out
    problem, d = _dist_problem.build()  # and overwrite=True replaces it
    ds = lossatlas.surface(problem, None, d, steps=8, chunk=4, strategy="loop", store=finished, overwrite=True,
                           progress=False)
    _same(ds, reference)


def test_removed_integrity_attribute_is_refused(finished):
    _remove = json.loads((finished / "zarr.json").read_text())
    del _remove["attributes"]["integrity"]
    (finished / "zarr.json").write_text(json.dumps(_remove))
    with pytest.raises(lossatlas.StoreError, match="checksums .* were removed"):
        lossatlas.open_surface(finished)


def test_interpolation_summary_is_not_an_edit(tmp_path):
    problem, _ = _dist_problem.build()
    a = problem.params()
    b = {k: v + 0.1 for k, v in a.items()}
    line = lossatlas.paths.interpolate(problem, a, b, steps=5, store=tmp_path / "line.zarr", progress=False)
    again = lossatlas.paths.open_interpolation(tmp_path / "line.zarr")
    assert again.attrs["barrier"] == line.attrs["barrier"] and again.attrs["verified"] == 1


# -- stores made before checksums ---------------------------------------------------------------------
def _make_old(path: Path) -> None:
    """What a store written before checksums looks like: uint8 done markers (1), no integrity attribute."""
    import shutil

    import zarr

    done = (np.asarray(zarr.open_array(str(path / "chunk_done"), mode="r")[...]) != 0).astype(np.uint8)
    shutil.rmtree(path / "chunk_done")
    group = zarr.open_group(str(path), mode="r+")
    arr = group.create_array("chunk_done", shape=done.shape, dtype="uint8", chunks=(1, 1), fill_value=0,
                             dimension_names=["chunk_x", "chunk_y"],
                             chunk_key_encoding={"name": "default", "separator": "/"})
    arr.with_config({"write_empty_chunks": True})[...] = done
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["integrity"]
    meta.write_text(json.dumps(doc))


def test_old_store_opens_unverified_and_resumes(finished, reference, capsys):
    from lossatlas.cli import main

    _make_old(finished)
    gstore = GridStore.open(finished)
    assert not gstore.verified and gstore.audit() == []
    ds = lossatlas.open_surface(finished)
    assert ds.attrs["verified"] == 0
    _same(ds, reference)
    gstore._array("chunk_done")[0:1, 0:1] = np.zeros((1, 1), np.uint8)
    _same(_dist_problem.run(finished), reference)  # resumed without checksums, no crash
    assert str(GridStore.open(finished).group["chunk_done"].dtype) == "uint8"
    with pytest.raises(SystemExit) as code:
        main(["info", "--check", str(finished)])
    assert code.value.code in (0, None)
    assert "unverified (made before checksums)" in capsys.readouterr().out
    main_out = None
    try:
        main(["info", str(finished)])
    except SystemExit as exc:
        main_out = exc.code
    assert main_out in (0, None)
    assert "unverified (made before checksums)" in capsys.readouterr().out


# -- leftover temporary files ---------------------------------------------------------------------------
def test_leftover_temporary_files_are_reported_by_check_and_removed_on_resume(finished, reference, capsys):
    from lossatlas.cli import main

    (finished / "loss" / "c" / "0" / "1.3f2a.partial").write_bytes(b"half a chunk")
    torn = finished.parent / ".s.zarr.creating-otherhost-1-abcd1234"
    torn.mkdir()
    with pytest.raises(SystemExit) as code:
        main(["info", "--check", str(finished)])
    out = capsys.readouterr().out
    assert code.value.code == 1
    assert "1.3f2a.partial" in out and torn.name in out
    _same(lossatlas.open_surface(finished), reference)  # a leftover is not damage of the values
    ds, message = _resume(finished)
    assert "removed 1 unfinished temporary write" in message
    assert not list(finished.rglob("*.partial"))


# -- overwrite deletes only stores ------------------------------------------------------------------------
def _overwrite(path):
    problem, d = _dist_problem.build()
    return lossatlas.surface(problem, None, d, steps=8, chunk=4, strategy="loop", store=path, overwrite=True,
                             progress=False)


def test_overwrite_refuses_a_regular_file(tmp_path):
    path = tmp_path / "thesis.tex"
    path.write_text("years of work")
    with pytest.raises(lossatlas.StoreError, match="is a file, not a lossatlas store; refusing to delete it"):
        _overwrite(path)
    assert path.read_text() == "years of work"
    with pytest.raises(lossatlas.StoreError, match="not a lossatlas store"):  # without overwrite too
        _dist_problem.run(path)
    assert path.read_text() == "years of work"
    with pytest.raises(lossatlas.StoreError):
        GridStore.remove_here(path, func="test")  # what overwrite=True calls
    assert path.read_text() == "years of work"


def test_overwrite_refuses_a_directory_that_is_not_a_store(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    (path / "mine.txt").write_text("keep")
    with pytest.raises(lossatlas.StoreError, match="not a lossatlas store; refusing"):
        _overwrite(path)
    assert (path / "mine.txt").read_text() == "keep"


def test_overwrite_through_a_symlink_replaces_the_store_it_points_to(tmp_path, reference):
    real = tmp_path / "real.zarr"
    _dist_problem.run(real)
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    _same(_overwrite(link), reference)
    assert link.is_symlink() and GridStore.exists(real)
    target = tmp_path / "f.txt"
    target.write_text("x")
    bad = tmp_path / "bad.zarr"
    bad.symlink_to(target)
    with pytest.raises(lossatlas.StoreError, match="refusing to delete"):
        _overwrite(bad)
    assert target.read_text() == "x"


def test_overwrite_of_an_empty_directory_makes_the_store_there(tmp_path, reference):
    path = tmp_path / "empty.zarr"
    path.mkdir()
    _same(_overwrite(path), reference)


# -- the lock holds through symlinks ----------------------------------------------------------------------
def test_lock_is_shared_by_every_path_to_a_store(finished, tmp_path):
    link = tmp_path / "link.zarr"
    link.symlink_to(finished)
    linked_dir = tmp_path / "linked"
    linked_dir.symlink_to(finished.parent)
    assert StoreLock.file_for(link) == StoreLock.file_for(finished) == StoreLock.file_for(linked_dir / finished.name)
    lock = StoreLock.acquire(finished, func="test")
    try:
        with pytest.raises(lossatlas.StoreLockedError):
            _dist_problem.run(link)
        with pytest.raises(lossatlas.StoreLockedError):
            _dist_problem.run(linked_dir / finished.name)
        with pytest.raises(lossatlas.StoreLockedError):
            StoreLock.acquire(link, func="again")
    finally:
        lock.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dist_problem.run(link).attrs["complete"] == 1


def test_store_created_through_a_dangling_symlink_is_made_where_it_points(tmp_path, reference):
    real = tmp_path / "elsewhere" / "s.zarr"
    real.parent.mkdir()
    link = tmp_path / "s.zarr"
    link.symlink_to(real)
    _same(_dist_problem.run(link), reference)
    assert link.is_symlink() and GridStore.exists(real)
    assert (real.parent / ".s.zarr.lock").exists()


def test_checksums_do_not_change_the_values(finished, reference):
    _same(lossatlas.open_surface(finished), reference)
    gstore = GridStore.open(finished)
    assert gstore.verified and str(gstore.group["chunk_done"].dtype) == "uint64"
    assert os.path.isdir(finished / "chunk_done")


def test_info_check_of_something_that_is_not_a_store_exits_2(tmp_path, capsys):
    from lossatlas.cli import main

    (tmp_path / "plain").mkdir()
    with pytest.raises(SystemExit) as code:
        main(["info", "--check", str(tmp_path / "plain")])
    assert code.value.code == 2
    assert "must be a lossatlas store" in capsys.readouterr().err


# -- SIGKILL while checksums are written ------------------------------------------------------------------
# A chunk's checksums are written after its values and before its done marker: a kill at any moment
# in between leaves the chunk not done (recomputed), never a done chunk that looks damaged, and the
# resumed store holds the bytes of an uninterrupted run.
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from _fault_harness import (DELAY, PAUSE_DIGEST, free_port, kill, rank_env, shared_zygote,  # noqa: E402
                            wait_dead, wait_phase)


def _digest_env(trace: Path) -> dict:
    return {"LOSSATLAS_DEBUG_TRACE": str(trace), "LOSSATLAS_DEBUG_PAUSE": PAUSE_DIGEST}


def _moments(n: int, seed: int):
    rng = np.random.default_rng(seed)
    # the digest pause (10 ms), the digest write, the done pause (10 ms): kills land in all three
    return [(int(rng.integers(1, 4)), float(rng.uniform(0.0, 0.025))) for _ in range(n)]


@pytest.fixture(scope="module")
def zygote():
    return shared_zygote()


@pytest.fixture(scope="module")
def forked_reference(zygote, tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "ref.zarr"
    pid = zygote.spawn({"store": str(path), "log": str(path) + ".log"})
    assert wait_dead([pid])
    assert Path(str(path) + ".log.ok").exists(), Path(str(path) + ".log").read_text()
    return lossatlas.open_surface(path)


def _after_kill(store: Path, trace: Path, pids, reference) -> None:
    if GridStore.exists(store):
        gstore = GridStore.open(store)
        assert gstore.audit() == []  # a kill never leaves a done chunk that fails its checksum
        lossatlas.open_surface(store)  # readable as it is (partial)
        finished = sum(1 for line in trace.read_text().splitlines()
                       if line.split()[0] == "done" and int(line.split()[1]) in pids)
        assert int(gstore.done_mask().sum()) >= finished - len(pids)
    with warnings.catch_warnings(), pinned_threads(1):
        warnings.simplefilter("ignore", lossatlas.StoreRepairWarning)
        resumed = _dist_problem.run(store)
    assert resumed.attrs["complete"] == 1
    _same(resumed, reference)
    _same(lossatlas.open_surface(store), reference)
    assert GridStore.open(store).audit() == []


def test_sigkill_while_writing_checksums_single_process(zygote, forked_reference, tmp_path):
    for i, (occurrence, delay) in enumerate(_moments(6, seed=1414)):
        store, trace = tmp_path / f"run{i}.zarr", tmp_path / f"run{i}.trace"
        pid = zygote.spawn({"store": str(store), "log": str(tmp_path / f"run{i}.log"), "delay": DELAY,
                            "env": _digest_env(trace)})
        assert wait_phase(trace, pid, "digest", occurrence), (i, occurrence)
        time.sleep(delay)
        kill(pid)
        _after_kill(store, trace, {pid}, forked_reference)


def test_sigkill_one_rank_of_two_while_writing_checksums(zygote, forked_reference, tmp_path):
    for i, (occurrence, delay) in enumerate(_moments(8, seed=2718)):
        victim = i % 2
        store, trace = tmp_path / f"job{i}.zarr", tmp_path / f"job{i}.trace"
        port = free_port()
        pids = [zygote.spawn({"store": str(store), "log": str(tmp_path / f"job{i}-rank{r}.log"), "delay": DELAY,
                              "env": {**_digest_env(trace), **rank_env(r, 2, port)}}) for r in (0, 1)]
        assert wait_phase(trace, pids[victim], "digest", occurrence), (i, occurrence, victim)
        time.sleep(delay)
        kill(pids[victim])
        time.sleep(0.02)  # what torchrun's agent does when a worker dies: stop the others
        for p in pids:
            kill(p, signal.SIGTERM)
        assert wait_dead(pids)
        _after_kill(store, trace, set(pids), forked_reference)


def _rank_pid(trace: Path, rank: int, timeout: float = 120.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if trace.exists():
            for line in trace.read_text().splitlines():
                _, pid, r = line.split()
                if int(r) == rank:
                    return int(pid)
        time.sleep(0.01)
    raise AssertionError(f"rank {rank} never started")


@pytest.mark.slow
@pytest.mark.parametrize("i", range(4))
def test_torchrun_sigkill_one_rank_while_writing_checksums(forked_reference, tmp_path, i):
    """Through torchrun itself: one rank of a 2-rank job is killed while it writes a chunk's
    checksums; torchrun stops the job, and a plain rerun resumes it to the uninterrupted bytes."""
    from test_distributed import TORCHRUN, _env

    if TORCHRUN is None:
        pytest.skip("torchrun not found beside the interpreter")
    occurrence, delay = _moments(4, seed=99)[i]
    victim = i % 2
    store, trace = tmp_path / "job.zarr", tmp_path / "job.trace"
    env = {**_env(), **_digest_env(trace), "LOSSATLAS_DIST_TIMEOUT": "120"}
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--standalone", "--monitor-interval", "0.1",
           str(HERE / "_dist_problem.py"), str(store.parent), "fault", str(store), str(DELAY)]
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pid = _rank_pid(trace, victim)
        assert wait_phase(trace, pid, "digest", occurrence, timeout=120), (occurrence, victim)
        time.sleep(delay)
        kill(pid)
        out, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode != 0, out[-2000:]
    pids = {int(line.split()[1]) for line in trace.read_text().splitlines()}
    _after_kill(store, trace, pids, forked_reference)


def test_edited_saved_centre_is_refused_by_open_directions(finished):
    import zarr

    center, dirs = lossatlas.open_directions(finished)  # intact: loads
    group = zarr.open_group(str(finished / "center"), mode="r+")
    name = sorted(group.array_keys())[0]
    arr = group[name]
    values = np.asarray(arr[...])
    values.flat[0] += 1.0
    arr[...] = values
    with pytest.raises(lossatlas.StoreError, match="saved centre differ"):
        lossatlas.open_directions(finished)


def test_damaged_store_without_group_metadata_is_not_called_foreign(finished):
    (finished / "zarr.json").unlink()
    with pytest.raises(lossatlas.StoreError, match="damaged lossatlas store"):
        _dist_problem.run(finished)
