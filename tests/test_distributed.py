"""Distributed evaluation: a real ``torchrun --nproc-per-node 2`` job (gloo, CPU) gives exactly the
values of a single process; data-parallel points equal single-process points bit for bit; ranks
that built different problems are refused; per-rank figures and progress."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lossatlas
from lossatlas import distributed as D
from lossatlas.evaluator import PointEvaluator, sum_batches
from lossatlas.runner import pinned_threads

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _dist_problem  # noqa: E402
from _fault_harness import free_port, rank_env, shared_zygote, wait_dead  # noqa: E402

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", D.SWITCH):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def torchrun_job(tmp_path_factory):
    """One 2-rank torchrun job running every case of tests/_dist_problem.py."""
    out = tmp_path_factory.mktemp("torchrun")
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--standalone", str(HERE / "_dist_problem.py"), str(out), "all"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


def _same(a, b) -> None:
    names = [n for n in ("loss", "accuracy") if n in b]
    assert names[0] == "loss"
    for name in names:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found beside the interpreter")
def test_torchrun_two_ranks_equal_one_process(torchrun_job):
    out, log = torchrun_job
    single_store = _dist_problem.run(None, steps=11, chunk=4)
    single_memory = _dist_problem.run(None, steps=11, chunk=4, strategy="vmap")
    single_data = _dist_problem.run(None, steps=5, chunk=5, batch_size=10)
    for rank in (0, 1):
        _same(np.load(out / f"store-{rank}.npz"), single_store)   # chunks shared, each rank writes its own
        _same(np.load(out / f"memory-{rank}.npz"), single_memory)  # in memory, gathered once at the end
        _same(np.load(out / f"data-{rank}.npz"), single_data)     # batches shared, one point at a time
    # the store on disk holds the same values, with the settings rank 0 decided pinned
    stored = lossatlas.open_surface(out / "grid.zarr")
    _same(stored, single_store)
    prov = json.loads(stored.attrs["provenance"])
    assert prov["strategy"] == "loop" and prov["threads"] == 1 and prov["chunk_shape"] == [1, 4]
    info = [json.loads((out / f"info-{r}.json").read_text()) for r in (0, 1)]
    assert [i["memory"]["ranks"] for i in info] == [2, 2]
    assert sum(info[0]["memory"]["rank_points"]) == 121
    # progress is shown once, by rank 0, with a line per rank
    assert log.count("surface 11×11 (2 ranks)") >= 1 and "points/s" in log


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found beside the interpreter")
def test_grid_job_on_two_ranks_equals_one_process(torchrun_job):
    """A toy GridJob through run_grid: chunks shared, each rank's result assembled from its own chunks and
    the others' (read from the store, or gathered in memory): the one-process Dataset, the same attrs."""
    from lossatlas.grid_job import run_grid

    out, _ = torchrun_job
    single = run_grid(_dist_problem.toy_job(), progress=False)
    info = [json.loads((out / f"info-{r}.json").read_text()) for r in (0, 1)]
    for where in ("memory", "store"):
        for rank in (0, 1):
            got = np.load(out / f"toy-{where}-{rank}.npz")
            np.testing.assert_array_equal(got["loss"], single.loss.values)
            np.testing.assert_array_equal(got["accuracy"], single.other.values)
            i = info[rank][f"toy-{where}"]
            assert i["ranks"] == 2 and sum(i["rank_points"]) == 70 and i["complete"] == 1
            assert i["loss_max"] == single.attrs["loss_max"] and i["keys"] == sorted(single.attrs)
    assert lossatlas.grid_job.open_grid(out / "toy.zarr").attrs["loss_max"] == single.attrs["loss_max"]


def test_data_parallel_terms_sum_to_the_single_process_value_exactly(classification):
    with pinned_threads(1):  # a tiny model: one thread is quicker on a busy machine
        _data_parallel_matches(classification)


def _data_parallel_matches(classification):
    model, loss_fn, x, y = classification
    problem = lossatlas.Problem(model, loss_fn, (x, y), batch_size=7)  # 9 uneven batches
    d = lossatlas.directions.random(problem, n=2, seed=3)
    coeffs = np.random.default_rng(0).uniform(-1, 1, (10, 2))
    for strategy in ("loop", "vmap"):
        with PointEvaluator(problem, problem.params(), d.vectors, strategy=strategy) as plain, \
                D.DataParallelEvaluator(problem, problem.params(), d.vectors, strategy=strategy) as dp:
            a, b = plain(coeffs), dp(coeffs)
            terms = dp.terms(coeffs)
        assert terms.shape == (10, 2, problem.data.n_batches) and terms.dtype == torch.float64
        _same(a, b)
        np.testing.assert_array_equal(sum_batches(terms)[:, 0].numpy(), a["loss"])
    ds = lossatlas.surface(problem, None, d, steps=5, progress=False, parallel="data", strategy="loop")
    ref = lossatlas.surface(problem, None, d, steps=5, progress=False, strategy="loop")
    _same(ds, ref)


def test_data_parallel_shards_batches_round_robin(classification):
    model, loss_fn, x, y = classification
    problem = lossatlas.Problem(model, loss_fn, (x, y), batch_size=7)
    views = [D.shard_problem(problem, r, 4) for r in range(4)]
    assert [idx for _, idx in views] == [[0, 4, 8], [1, 5], [2, 6], [3, 7]]
    assert [n for _, n in views[1][0].data] == [7, 7] and views[1][0].n_samples == 60  # weights keep N
    assert D.shard_problem(problem, 9, 10) == (None, [])


def test_data_parallel_refuses_batchnorm_recalibration(cnn_data):
    model, loss_fn, x, y = cnn_data
    problem = lossatlas.Problem(model, loss_fn, (x, y), bn="recalibrate")
    d = lossatlas.directions.random(problem, n=1, seed=0)
    with pytest.raises(lossatlas.InvalidArgumentError, match="parallel"):
        lossatlas.surface(problem, None, d, steps=3, progress=False, parallel="data")
    with pytest.raises(lossatlas.InvalidArgumentError, match="parallel"):
        lossatlas.surface(problem, None, d, steps=3, progress=False, parallel="shards")


def test_launch_detection_and_switch(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert not D.launched() and D.context().world == 1 and not D.context().active
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    assert D.launched()
    monkeypatch.setenv(D.SWITCH, "0")
    assert not D.launched() and D.context().world == 1
    monkeypatch.setenv(D.SWITCH, "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not D.launched()  # one rank: a single process
    assert D.device_for_rank(D.Context()).type in ("cpu", "cuda")


def test_errors_of_rank_zero_are_raised_with_the_same_type_everywhere():
    exc = lossatlas.StoreLockedError("surface(): argument 'store' at 'x' is being written by another run (pid 1)")
    again = D._rebuild(D._portable(exc))
    assert type(again) is lossatlas.StoreLockedError and str(again) == str(exc)
    other = D._rebuild(D._portable(KeyError("boom")))
    assert isinstance(other, lossatlas.DistributedError) and "KeyError" in str(other)
    single = D.Context()
    assert single.broadcast(3) == 3 and single.gather(4) == [4] and single.run_on_main(lambda: 5) == 5
    single.check_same({"a": 1}, func="f", what="w")  # one rank: nothing to compare


def test_ranks_with_different_problems_are_refused(tmp_path):
    """Rank 1 seeds its model differently: both ranks stop with the same clear error."""
    port = free_port()
    pids = [shared_zygote().spawn({"store": str(tmp_path / "s.zarr"), "log": str(tmp_path / f"r{r}.log"),
                                   "env": {**rank_env(r, 2, port), "DIST_PROBLEM_SEED": str(r)}}) for r in (0, 1)]
    assert wait_dead(pids)
    for r in (0, 1):
        err = (tmp_path / f"r{r}.log.err").read_text()
        assert err.startswith("DistributedError") and "rank 1 has a different computation" in err
        assert "model" in err and "seed" in err
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found beside the interpreter")
def test_cli_under_torchrun_writes_the_single_process_store(tmp_path):
    from typer.testing import CliRunner

    from lossatlas.cli import app

    args = ["surface", "seed-relu", "--directions", "example", "--steps", "9", "--strategy", "loop",
            "--no-progress", "--store"]
    single = CliRunner().invoke(app, [*args, str(tmp_path / "single.zarr")])  # also trains and caches the example
    assert single.exit_code == 0, single.output
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--standalone", "-m", "lossatlas", *args, str(tmp_path / "two.zarr")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("surface of seed-relu") == 1  # the summary comes from rank 0 only
    _same(lossatlas.open_surface(tmp_path / "two.zarr"), lossatlas.open_surface(tmp_path / "single.zarr"))


def test_code_using_the_store_primitives_is_distributed_too(tmp_path):
    """A hand-written grid job over a PointEvaluator (the pattern of curvature.ratio_map) run by
    ``run_grid`` on every rank: locking and ``overwrite`` happen once, so ranks never race; values
    equal one process's."""
    with pinned_threads(1):
        reference = _dist_problem.legacy(tmp_path / "single.zarr")
    for overwrite in (False, True):
        port = free_port()
        pids = [shared_zygote().spawn({"kind": "legacy", "store": str(tmp_path / "two.zarr"), "overwrite": overwrite,
                                       "log": str(tmp_path / f"{overwrite}-{r}.log"), "env": rank_env(r, 2, port)})
                for r in (0, 1)]
        assert wait_dead(pids)
        for r in (0, 1):
            assert (tmp_path / f"{overwrite}-{r}.log.ok").exists(), (tmp_path / f"{overwrite}-{r}.log").read_text()
            np.testing.assert_array_equal(np.load(tmp_path / f"{overwrite}-{r}.log.npy"), reference)


def test_a_failing_rank_stops_the_job_with_its_error_on_every_rank(tmp_path):
    store = tmp_path / "s.zarr"
    port = free_port()
    fail = {0: {}, 1: {"DIST_PROBLEM_FAIL_AFTER": "12"}}  # rank 1 fails in its 4th chunk (it takes 5-8 of 16)
    pids = [shared_zygote().spawn({"store": str(store), "log": str(tmp_path / f"r{r}.log"), "delay": 0.005,
                                   "env": {**rank_env(r, 2, port), **fail[r]}}) for r in (0, 1)]
    assert wait_dead(pids)
    own = (tmp_path / "r1.log.err").read_text()
    other = (tmp_path / "r0.log.err").read_text()
    assert own.startswith("EvaluationError") and "injected failure" in own
    assert other.startswith("DistributedError") and "rank 1 failed with EvaluationError" in other
    with pinned_threads(1):  # like the ranks (and quicker for a tiny model on a busy machine)
        resumed = _dist_problem.run(store)  # what was finished is kept; a rerun completes the store
        _same(resumed, _dist_problem.run(None))


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf", "nan"])
def test_dist_timeout_must_be_positive_seconds(monkeypatch, value):
    monkeypatch.setenv(D.TIMEOUT, value)
    with pytest.raises(lossatlas.InvalidArgumentError, match=f"{D.TIMEOUT} must be a positive number"):
        D._timeout_from_environment()
    monkeypatch.setenv(D.TIMEOUT, "90")
    assert D._timeout_from_environment().total_seconds() == 90
    monkeypatch.delenv(D.TIMEOUT)
    assert D._timeout_from_environment() is None
