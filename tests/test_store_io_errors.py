"""I/O failures and interrupts during a stored run (issue 14).

A failure of the file system under a store (disk full, read-only, permission denied, a bad parent)
is one :class:`StoreError` naming the store's path, what failed and what the errno means, converted
at one place (:func:`lossatlas.store.store_io`); the CLI prints it as one line and exits 2. Ctrl-C
(KeyboardInterrupt) propagates unchanged from the API, and the CLI prints one line saying how many
points are saved and exits 130. Either way the store stays consistent and unlocked, and rerunning
gives the bytes of an uninterrupted run.

Faults are injected (tests may run as root, where ``chmod a-w`` blocks nothing): zarr's one file
write (``zarr.storage._local._put``) or ``os.open`` of the lock raise the OSError a real disk would,
and the evaluator raises KeyboardInterrupt at chunk k.
"""
from __future__ import annotations

import errno
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import lossatlas
from lossatlas.evaluator import PointEvaluator
from lossatlas.store import GridStore, StoreLock

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _dist_problem  # noqa: E402
from _store_fixtures import one_thread, reference  # noqa: E402,F401 (fixtures)
from _store_fixtures import same  # noqa: E402

SURFACE = sys.modules["lossatlas.surface"]
ERRNOS = {"ENOSPC": "no space left", "EROFS": "read-only", "EACCES": "permission denied"}
DATA = ("/loss/c/", "/accuracy/c/", "/chunk_done/c/")  # 16 chunks of 4 points, 3 files per chunk


def _fail_puts(monkeypatch, code: int, *, at: int = 1, where=DATA) -> dict:
    """From the ``at``-th zarr file write whose path contains one of ``where`` on, raise OSError(code)."""
    import zarr.storage._local as local

    original = local._put
    seen = {"n": 0}

    def put(path, value, exclusive=False):
        if any(w in str(path) for w in where):
            seen["n"] += 1
            if seen["n"] >= at:
                raise OSError(code, os.strerror(code), str(path))
        return original(path, value, exclusive)

    monkeypatch.setattr(local, "_put", put)
    return seen


def _interrupt_at(monkeypatch, k: int) -> None:
    """The evaluator raises KeyboardInterrupt when it starts its k-th chunk."""
    original = PointEvaluator.__call__
    calls = {"n": 0}

    def call(self, coefficients):
        calls["n"] += 1
        if calls["n"] == k:
            raise KeyboardInterrupt
        return original(self, coefficients)

    monkeypatch.setattr(PointEvaluator, "__call__", call)


def _unlocked(path: Path) -> bool:
    try:
        StoreLock.acquire(path, func="test").release()
        return True
    except lossatlas.StoreLockedError:
        return False


def _rerun(path: Path):
    """A plain rerun (a leftover temporary file of a killed write may be reported as repaired)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lossatlas.StoreRepairWarning)
        return _dist_problem.run(path)


@pytest.mark.parametrize("name", list(ERRNOS))
@pytest.mark.parametrize("k", [1, 3, 8, 24])  # the first write; a done marker; a chunk's 2nd variable; later
def test_write_failure_at_chunk_k_is_one_store_error_and_resumes(tmp_path, reference, monkeypatch, name, k):
    code = getattr(errno, name)
    path = tmp_path / "s.zarr"
    _fail_puts(monkeypatch, code, at=k)
    with pytest.raises(lossatlas.StoreError) as err:
        _dist_problem.run(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "surface()" in msg, msg
    assert name in msg and ERRNOS[name] in msg and "rerun the same command to resume" in msg, msg
    assert f"write chunk {divmod(k - 1, 3)[0] // 2, divmod(k - 1, 3)[0] % 2}" in msg, msg
    assert err.value.errno == code and isinstance(err.value.__cause__, OSError)
    assert isinstance(err.value, OSError)  # StoreError is also an OSError
    monkeypatch.undo()
    assert _unlocked(path)
    saved = (k - 1) // 3  # chunks whose three files were written before the failure
    partial = lossatlas.open_surface(path)  # consistent: opens, checks, nothing already saved is lost
    assert partial.attrs["points_done"] == 4 * saved
    assert GridStore.open(path).audit() == []
    same(_rerun(path), reference)
    same(lossatlas.open_surface(path), reference)


@pytest.mark.parametrize("name", list(ERRNOS))
def test_failure_while_creating_the_store_leaves_nothing(tmp_path, reference, monkeypatch, name):
    path = tmp_path / "s.zarr"
    _fail_puts(monkeypatch, getattr(errno, name), where=(".creating-",))
    with pytest.raises(lossatlas.StoreError) as err:
        _dist_problem.run(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "could not create" in msg and name in msg, msg
    monkeypatch.undo()
    assert not path.exists() and not list(tmp_path.glob(".s.zarr.creating-*"))
    assert _unlocked(path)
    same(_dist_problem.run(path), reference)


@pytest.mark.parametrize("name", ["EACCES", "EROFS"])
def test_lock_that_cannot_be_created_is_one_store_error(tmp_path, monkeypatch, name):
    path = tmp_path / "s.zarr"
    code = getattr(errno, name)
    original = os.open

    def deny(file, flags, *args, **kwargs):
        if str(file).endswith(".lock"):
            raise OSError(code, os.strerror(code), str(file))
        return original(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(lossatlas.StoreError) as err:
        _dist_problem.run(path)
    msg = str(err.value)
    assert "\n" not in msg and "argument 'store'" in msg and str(path) in msg, msg
    assert "lock file" in msg and name in msg and ERRNOS[name] in msg, msg
    assert not path.exists()


def test_store_whose_parent_is_a_file_or_cannot_be_made(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for path, why in ((afile / "s.zarr", "ENOTDIR"), (Path("/proc/lossatlas-no/s.zarr"), "ENOENT")):
        with pytest.raises(lossatlas.StoreError) as err:
            _dist_problem.run(path)
        msg = str(err.value)
        assert "\n" not in msg and "argument 'store'" in msg and str(path) in msg and why in msg, msg
    sub = tmp_path / "a" / "b" / "s.zarr"  # missing parents that can be made are made
    _dist_problem.run(sub)
    assert GridStore.exists(sub)


def test_attribute_write_failure_keeps_the_store_intact(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    _dist_problem.run(path)
    _fail_puts(monkeypatch, errno.ENOSPC, where=("zarr.json",))
    with pytest.raises(lossatlas.StoreError, match=r"could not write the attributes of the store .*\[ENOSPC\]"):
        GridStore.update_attrs(path, {"summary": 1})
    monkeypatch.undo()
    ds = lossatlas.open_surface(path)  # neither edited nor half-sealed
    assert "summary" not in ds.attrs
    GridStore.update_attrs(path, {"summary": 1})
    assert lossatlas.open_surface(path).attrs["summary"] == 1


def test_read_only_store_on_resume(tmp_path, reference, monkeypatch):
    """An interrupted store resumed on a file system that became read-only: one error, nothing lost."""
    path = tmp_path / "s.zarr"
    _interrupt_at(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        _dist_problem.run(path)
    monkeypatch.undo()
    _fail_puts(monkeypatch, errno.EROFS)
    with pytest.raises(lossatlas.StoreError, match=r"write chunk \(2, 1\).*read-only.*\[EROFS\]"):
        _rerun(path)
    monkeypatch.undo()
    assert lossatlas.open_surface(path).attrs["points_done"] == 20
    same(_rerun(path), reference)


def test_overwrite_that_cannot_delete_is_one_store_error(tmp_path, monkeypatch):
    import shutil

    path = tmp_path / "s.zarr"
    _dist_problem.run(path)

    def rmtree(p, *a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    problem, d = _dist_problem.build()
    with pytest.raises(lossatlas.StoreError, match=r"argument 'store' .*could not delete it.*\[EACCES\]"):
        lossatlas.surface(problem, None, d, steps=8, span=1.0, strategy="loop", chunk=4, store=path, overwrite=True,
                          progress=False)
    monkeypatch.undo()
    assert _unlocked(path) and lossatlas.open_surface(path).attrs["complete"] == 1


# -- KeyboardInterrupt ----------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 9])
def test_api_interrupt_propagates_unchanged_and_resumes(tmp_path, reference, monkeypatch, k):
    path = tmp_path / "s.zarr"
    _interrupt_at(monkeypatch, k)
    with pytest.raises(KeyboardInterrupt) as info:
        _dist_problem.run(path)
    assert type(info.value) is KeyboardInterrupt
    assert lossatlas.runner.interrupt_progress(info.value) == {"store": str(path), "points_done": 4 * (k - 1),
                                                              "points_total": 64}
    monkeypatch.undo()
    assert _unlocked(path)
    assert lossatlas.open_surface(path).attrs["points_done"] == 4 * (k - 1)
    assert GridStore.open(path).audit() == []
    same(_rerun(path), reference)


def _cli(args, capsys):
    from lossatlas.cli import main

    with pytest.raises(SystemExit) as code:
        main(args)
    out = capsys.readouterr()
    return code.value.code, out.out, out.err


CLI_SURFACE = ["surface", "seed-relu", "--steps", "11", "--ignore", "none", "--strategy", "loop", "--no-progress"]


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(SURFACE, "_auto_chunk", lambda *a, **k: 11)  # 11 chunks of 11 points


def test_cli_interrupt_says_how_much_is_saved_and_resumes(tmp_path, small_chunks, monkeypatch, capsys):
    whole = tmp_path / "whole.zarr"
    assert _cli(CLI_SURFACE + ["--store", str(whole)], capsys)[0] in (0, None)
    path = tmp_path / "s.zarr"
    with monkeypatch.context() as m:
        original = PointEvaluator.__call__
        calls = {"n": 0}

        def call(self, coefficients):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt
            return original(self, coefficients)

        m.setattr(PointEvaluator, "__call__", call)
        code, out, err = _cli(CLI_SURFACE + ["--store", str(path)], capsys)
    assert code == 130
    assert err.strip() == f"interrupted: 33 of 121 points saved in {path}; rerun the same command to resume", err
    assert "Traceback" not in out + err
    assert _unlocked(path)
    assert _cli(CLI_SURFACE + ["--store", str(path)], capsys)[0] in (0, None)
    a, b = lossatlas.open_surface(path), lossatlas.open_surface(whole)
    for name in ("loss", "accuracy"):
        if name in b:
            np.testing.assert_array_equal(a[name].values, b[name].values)


def test_cli_interrupt_of_an_in_memory_run_suggests_store(small_chunks, monkeypatch, capsys):
    _interrupt_at(monkeypatch, 2)
    code, out, err = _cli(CLI_SURFACE, capsys)
    assert code == 130
    line = err.strip()
    assert len(line.splitlines()) == 1 and "nothing was saved" in line and "--store" in line, err


def test_cli_disk_full_is_one_line_exit_2_and_resumes(tmp_path, small_chunks, monkeypatch, capsys):
    whole = tmp_path / "whole.zarr"
    assert _cli(CLI_SURFACE + ["--store", str(whole)], capsys)[0] in (0, None)
    path = tmp_path / "s.zarr"
    with monkeypatch.context() as m:
        import zarr.storage._local as local

        original = local._put
        seen = {"n": 0}

        def put(p, value, exclusive=False):
            if str(path) in str(p) and "/c/" in str(p) and ".creating-" not in str(p):
                seen["n"] += 1
                if seen["n"] >= 10:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(p))
            return original(p, value, exclusive)

        m.setattr(local, "_put", put)
        code, out, err = _cli(CLI_SURFACE + ["--store", str(path)], capsys)
    assert code == 2, out + err
    line = err.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in out + err, err
    assert line.startswith("error: surface(): could not write chunk") and str(path) in line and "[ENOSPC]" in line
    assert _unlocked(path)
    assert _cli(CLI_SURFACE + ["--store", str(path)], capsys)[0] in (0, None)
    a, b = lossatlas.open_surface(path), lossatlas.open_surface(whole)
    np.testing.assert_array_equal(a.loss.values, b.loss.values)


TARGET = """
import os, sys
sys.path.insert(0, {tests!r})
import _dist_problem


def make():
    return _dist_problem.build(float(os.environ.get("SLOW_DELAY", "0")))[0]
"""


def test_real_sigint_of_the_cli_says_what_is_saved_and_resumes(tmp_path):
    """A real Ctrl-C (SIGINT) while the CLI writes a store: one line, exit 130, lock released, and the
    same command resumes to the values of an uninterrupted run."""
    import re
    import signal
    import subprocess
    import time

    target = tmp_path / "slow.py"
    target.write_text(TARGET.format(tests=str(HERE)))
    trace = tmp_path / "trace"
    env = dict(os.environ, OMP_NUM_THREADS="1", SLOW_DELAY="0.02", LOSSATLAS_DEBUG_TRACE=str(trace),
               PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, "-m", "lossatlas", "surface", f"{target}:make", "--steps", "9", "--ignore", "none",
            "--strategy", "loop", "--no-progress"]
    path = tmp_path / "s.zarr"
    proc = subprocess.Popen(args + ["--store", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if trace.exists() and "done " in trace.read_text():  # a chunk's values are written
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt")  # a very fast machine: nothing to test
    assert proc.returncode == 130, out + err
    line = err.strip().splitlines()[-1]
    match = re.fullmatch(rf"interrupted: (\d+) of 81 points saved in {re.escape(str(path))}; rerun the same "
                         r"command to resume", line)
    assert match and "Traceback" not in err, err
    assert _unlocked(path)
    assert lossatlas.open_surface(path).attrs["points_done"] == int(match.group(1))
    fast = dict(env, SLOW_DELAY="0")
    fast.pop("LOSSATLAS_DEBUG_TRACE")
    done = subprocess.run(args + ["--store", str(path)], env=fast, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    whole = tmp_path / "whole.zarr"
    done = subprocess.run(args + ["--store", str(whole)], env=fast, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    a, b = lossatlas.open_surface(path), lossatlas.open_surface(whole)
    for name in ("loss", "accuracy"):
        np.testing.assert_array_equal(a[name].values, b[name].values)



@pytest.mark.parametrize("which", ["/loss/c/", "/chunk_done/c/"])
def test_sigint_while_zarr_writes_a_chunk_is_held_until_the_chunk_is_written(tmp_path, reference, monkeypatch, which):
    """A real SIGINT arriving while zarr writes a chunk's file on its own event-loop thread: the
    interrupt used to abandon the main thread's wait but not the write, so the chunk landed after
    the count was reported ("0 of 64 points saved", then 4 in the store). Now the chunk is finished,
    then the interrupt is raised, and the number reported is the number the store holds."""
    import signal
    import threading
    import time

    import zarr.storage._local as local

    original = local._put
    seen = {"n": 0}

    def slow_put(path, value, exclusive=False):
        if which in str(path):
            seen["n"] += 1
            if seen["n"] == 3:  # the third chunk: interrupt the main thread while this write is under way
                threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
                time.sleep(0.3)
        return original(path, value, exclusive)

    monkeypatch.setattr(local, "_put", slow_put)
    path = tmp_path / "s.zarr"
    with pytest.raises(KeyboardInterrupt) as info:
        _dist_problem.run(path)
    time.sleep(0.4)  # a write abandoned by the interrupt would land now
    monkeypatch.undo()
    reported = lossatlas.runner.interrupt_progress(info.value)["points_done"]
    held = lossatlas.open_surface(path).attrs["points_done"]
    assert reported == held == 12  # three chunks of 4 points, the third finished before the interrupt
    assert GridStore.open(path).audit() == [] and _unlocked(path)
    same(_rerun(path), reference)
