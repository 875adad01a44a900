"""Kill-and-resume guarantees: SIGKILL at 20 seeded moments (start-up, creating the store, holding
the lock, mid-chunk, between the variables of a chunk, before its done marker), for a single
process and for one rank of a 2-rank torch.distributed job; every resume must end with values
identical to an uninterrupted run, and nothing finished before the kill may be lost."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import lossatlas
from lossatlas.runner import pinned_threads
from lossatlas.store import GridStore

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _dist_problem  # noqa: E402
from _fault_harness import (DELAY, fault_env, free_port, kill, rank_env, schedule, shared_zygote,  # noqa: E402
                            wait_dead, wait_phase)


@pytest.fixture(scope="module")
def zygote():
    return shared_zygote()


@pytest.fixture(scope="module")
def reference(zygote, tmp_path_factory):
    """An uninterrupted run, made the way the killed runs are (a forked child, one thread)."""
    path = tmp_path_factory.mktemp("reference") / "ref.zarr"
    pid = zygote.spawn({"store": str(path), "log": str(path) + ".log"})
    assert wait_dead([pid])
    assert Path(str(path) + ".log.ok").exists(), Path(str(path) + ".log").read_text()
    return lossatlas.open_surface(path)


def _done_lines(trace: Path, pids) -> int:
    if not trace.exists():
        return 0
    return sum(1 for line in trace.read_text().splitlines()
               if line.split()[0] == "done" and int(line.split()[1]) in pids)


def _check_nothing_finished_was_lost(store: Path, trace: Path, pids, in_flight: int) -> int:
    """Every chunk whose values were fully written before the kill is still marked done."""
    if not GridStore.exists(store):
        assert _done_lines(trace, pids) == 0
        return 0
    gstore = GridStore.open(store)
    done = int(gstore.done_mask().sum())
    assert done >= _done_lines(trace, pids) - in_flight, (done, _done_lines(trace, pids))
    return done


def _resume_and_compare(store: Path, reference) -> None:
    with warnings.catch_warnings(), pinned_threads(1):  # relaunched like the killed run (one thread)
        warnings.simplefilter("ignore", lossatlas.StoreRepairWarning)
        resumed = _dist_problem.run(store)  # a plain single-process rerun with the same arguments
    assert resumed.attrs["complete"] == 1
    for name in ("loss", "accuracy"):
        np.testing.assert_array_equal(resumed[name].values, reference[name].values)
        np.testing.assert_array_equal(lossatlas.open_surface(store)[name].values, reference[name].values)
    assert not list(store.rglob("*.partial"))
    assert not list(store.parent.glob(f".{store.name}.creating-*"))


def test_sigkill_single_process_at_20_moments(zygote, reference, tmp_path):
    moments = schedule(20, seed=20240607)
    killed_in = []
    for i, m in enumerate(moments):
        store, trace = tmp_path / f"run{i}.zarr", tmp_path / f"run{i}.trace"
        pid = zygote.spawn({"store": str(store), "log": str(tmp_path / f"run{i}.log"), "delay": DELAY,
                            "env": fault_env(trace)})
        assert wait_phase(trace, pid, m.phase, m.occurrence), (i, m)
        time.sleep(m.delay)
        kill(pid)
        killed_in.append(m.phase)
        _check_nothing_finished_was_lost(store, trace, {pid}, in_flight=1)
        _resume_and_compare(store, reference)
    assert set(killed_in) == {"start", "create", "locked", "chunk", "write", "done"}


def test_sigkill_one_rank_of_two_at_20_moments(zygote, reference, tmp_path):
    moments = schedule(20, seed=31337)
    victims = []
    for i, m in enumerate(moments):
        victim = 0 if m.phase in ("create", "locked") else (i // 6) % 2  # only rank 0 creates and locks
        store, trace = tmp_path / f"job{i}.zarr", tmp_path / f"job{i}.trace"
        port = free_port()
        pids = [zygote.spawn({"store": str(store), "log": str(tmp_path / f"job{i}-rank{r}.log"), "delay": DELAY,
                              "env": {**fault_env(trace), **rank_env(r, 2, port)}}) for r in (0, 1)]
        assert wait_phase(trace, pids[victim], m.phase, m.occurrence), (i, m, victim)
        time.sleep(m.delay)
        kill(pids[victim])
        # what torchrun's agent does when a worker dies: stop the others
        time.sleep(0.02)
        for p in pids:
            kill(p, signal.SIGTERM)
        assert wait_dead(pids)
        victims.append((victim, m.phase))
        _check_nothing_finished_was_lost(store, trace, set(pids), in_flight=2)
        _resume_and_compare(store, reference)
    assert {v for v, _ in victims} == {0, 1}
    assert {p for v, p in victims if v == 1} == {"start", "chunk", "write", "done"}


def test_concurrent_run_is_refused_naming_the_holder(zygote, tmp_path):
    store, trace = tmp_path / "busy.zarr", tmp_path / "busy.trace"
    env = {"LOSSATLAS_DEBUG_TRACE": str(trace), "LOSSATLAS_DEBUG_PAUSE": "chunk=0.5"}
    pid = zygote.spawn({"store": str(store), "log": str(tmp_path / "busy.log"), "env": env})
    try:
        assert wait_phase(trace, pid, "chunk", 1)
        with pytest.raises(lossatlas.StoreLockedError, match=f"pid {pid} on "):
            _dist_problem.run(store)
    finally:
        kill(pid)


def test_second_distributed_job_is_refused_on_every_rank(zygote, tmp_path):
    store, trace = tmp_path / "busy.zarr", tmp_path / "busy.trace"
    env = {"LOSSATLAS_DEBUG_TRACE": str(trace), "LOSSATLAS_DEBUG_PAUSE": "chunk=0.5"}
    port = free_port()
    first = [zygote.spawn({"store": str(store), "log": str(tmp_path / f"a{r}.log"),
                           "env": {**env, **rank_env(r, 2, port)}}) for r in (0, 1)]
    try:
        assert wait_phase(trace, first[0], "chunk", 1)
        port2 = free_port()
        second = [zygote.spawn({"store": str(store), "log": str(tmp_path / f"b{r}.log"),
                                "env": rank_env(r, 2, port2)}) for r in (0, 1)]
        assert wait_dead(second)
        for r in (0, 1):
            err = Path(tmp_path / f"b{r}.log.err").read_text()
            assert err.startswith("StoreLockedError") and "rank 0 of a 2-rank torch.distributed job" in err, err
        # a single process is refused too, with the job named
        with pytest.raises(lossatlas.StoreLockedError, match="2-rank torch.distributed job"):
            _dist_problem.run(store)
    finally:
        for p in first:
            kill(p)


# -- the same through torchrun itself (its agent stops the other rank, or restarts the job) ----------
def _torchrun(trace: Path, store: Path, *extra: str) -> subprocess.Popen:
    from test_distributed import TORCHRUN, _env

    env = {**_env(), **fault_env(trace), "LOSSATLAS_DIST_TIMEOUT": "120"}  # a rendezvous never hangs the test
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--standalone", "--monitor-interval", "0.1", *extra,
           str(HERE / "_dist_problem.py"), str(store.parent), "fault", str(store), str(DELAY)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(job: subprocess.Popen, timeout: float) -> str:
    """torchrun's output once it ends; past ``timeout`` stop it (its agent stops the ranks) and fail."""
    try:
        out, _ = job.communicate(timeout=timeout)
        return out
    except subprocess.TimeoutExpired:
        job.terminate()
        try:
            out, _ = job.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            job.kill()
            out, _ = job.communicate()
        raise AssertionError(f"torchrun still running after {timeout:.0f} s; stopped it:\n{out[-3000:]}") from None


def _rank_pid(trace: Path, rank: int, timeout: float = 120.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if trace.exists():
            for line in trace.read_text().splitlines():
                phase, pid, r = line.split()
                if int(r) == rank:
                    return int(pid)
        time.sleep(0.01)
    raise AssertionError(f"rank {rank} never started")


@pytest.mark.slow
@pytest.mark.parametrize("i", range(20))
def test_torchrun_sigkill_one_rank_at_20_moments(reference, tmp_path, i):
    m = schedule(20, seed=4242)[i]
    victim = 0 if m.phase in ("create", "locked") else (i // 6) % 2
    store, trace = tmp_path / "job.zarr", tmp_path / "job.trace"
    job = _torchrun(trace, store)
    pid = _rank_pid(trace, victim)
    assert wait_phase(trace, pid, m.phase, m.occurrence, timeout=120), (m, victim)
    time.sleep(m.delay)
    kill(pid)
    out = _finish(job, 120)
    assert job.returncode != 0, out[-2000:]  # torchrun reports the failure and stops the other rank
    _check_nothing_finished_was_lost(store, trace, {pid}, in_flight=2)
    _resume_and_compare(store, reference)


@pytest.mark.slow
def test_torchrun_restart_resumes_by_itself(reference, tmp_path):
    """With --max-restarts, torchrun relaunches the job after a rank is killed; the new job resumes the
    store and ends with the values of an uninterrupted run, with no manual step."""
    store, trace = tmp_path / "job.zarr", tmp_path / "job.trace"
    job = _torchrun(trace, store, "--max-restarts", "1")
    pid = _rank_pid(trace, 1)
    assert wait_phase(trace, pid, "done", 3, timeout=120)
    kill(pid)
    out = _finish(job, 300)
    assert job.returncode == 0, out[-3000:]
    pids = {int(line.split()[1]) for line in trace.read_text().splitlines()}
    assert len(pids) == 4  # two ranks, twice
    ds = lossatlas.open_surface(store)
    assert ds.attrs["complete"] == 1
    for name in ("loss", "accuracy"):
        np.testing.assert_array_equal(ds[name].values, reference[name].values)


def test_restarted_job_does_not_dial_the_ranks_of_the_previous_attempt(zygote, tmp_path):
    """torchrun (torch >= 2.5) keeps its agent's TCPStore, at the same MASTER_PORT, across --max-restarts
    restarts: the rendezvous keys of the first attempt (the gloo addresses of its dead ranks) are still
    there when the restarted ranks meet. A restarted rank that reads them first dials a dead address
    (gloo: "connectFullMesh failed ... Connection refused", or a wait for the whole gloo timeout).
    Here rank 1 of the second attempt starts well before rank 0, so it would read them for sure."""
    import datetime

    import torch.distributed as dist

    agent_store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                                timeout=datetime.timedelta(seconds=60))

    def attempt(k: int, order=(0, 1), pause: float = 0.0):
        env = {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": str(k),
               "TORCHELASTIC_RUN_ID": "restart-test", "GROUP_WORLD_SIZE": "1", "LOSSATLAS_DIST_TIMEOUT": "30"}
        logs, pids = {}, []
        for r in order:
            logs[r] = str(tmp_path / f"attempt{k}-rank{r}.log")
            pids.append(zygote.spawn({"store": str(tmp_path / f"attempt{k}.zarr"), "log": logs[r],
                                      "env": {**env, **rank_env(r, 2, agent_store.port)}}))
            time.sleep(pause)
        if not wait_dead(pids, timeout=90):
            for p in pids:
                kill(p)
            raise AssertionError(f"attempt {k} still running after 90 s: " + Path(logs[order[0]]).read_text()[-2000:])
        for r, log in logs.items():
            assert Path(log + ".ok").exists(), Path(log).read_text()[-2000:]

    attempt(0)
    keys = agent_store.num_keys()
    assert keys > 0  # the first attempt left its rendezvous keys in the agent's store
    attempt(1, order=(1, 0), pause=1.5)
    assert agent_store.num_keys() > keys  # the second met under keys of its own
