"""The default thread count (lossatlas._threads): idle cores, tiny problems on one thread, explicit
choices win, the user's count restored, the choice pinned in a store's provenance and kept on resume."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import lossatlas
from lossatlas import _threads as T
from lossatlas import examples
from lossatlas.cli import main


@pytest.fixture
def policy(monkeypatch):
    monkeypatch.setattr(T, "FLOPS_PER_THREAD", 1e-9)  # tiny test problems count as work for 2 threads
    """The policy as on a 2-core machine with no explicit choice; ``policy.idle = x`` sets the load."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LOSSATLAS_THREADS", T.POLICY_ENV):
        monkeypatch.delenv(var, raising=False)
    saved, threads = T.state(), torch.get_num_threads()

    class Load:
        idle = 2.0
    load = Load()
    monkeypatch.setattr(T, "available_cores", lambda: 2)
    monkeypatch.setattr(T, "idle_cores", lambda window=T.WINDOW_S: load.idle)
    T.restore({"baseline": torch.get_num_threads(), "explicit": False, "sample": None})
    monkeypatch.setattr(T, "REUSE_S", -1.0)  # measure every time
    yield load
    torch.set_num_threads(threads)
    T.restore(saved)


@pytest.mark.parametrize("idle, expected", [(2.0, 2), (1.9, 2), (1.7, 2), (1.5, 1), (1.0, 1), (0.9, 1), (0.0, 1),
                                            (None, 2)])
def test_threads_follow_the_idle_cores(policy, idle, expected):
    policy.idle = idle
    choice = T.choose()
    assert choice.threads == expected and choice.reason.startswith("policy")


def test_tiny_work_gets_one_thread(policy, monkeypatch):
    monkeypatch.setattr(T, "FLOPS_PER_THREAD", 2e6)
    assert T.choose(work=1e3).threads == 1
    assert T.choose(work=3 * T.FLOPS_PER_THREAD).threads == 1 + (T.choose().threads > 1)
    assert T.choose(work=1e12).threads == 2
    assert T.problem_flops(examples.load("seed-relu").problem) < T.FLOPS_PER_THREAD
    assert T.problem_flops(examples.load("mlp-digits").problem) > 10 * T.FLOPS_PER_THREAD


def test_explicit_choices_win(policy, monkeypatch):
    policy.idle = 0.0
    torch.set_num_threads(2)  # the user's own choice, made after lossatlas was imported
    assert T.choose(work=1.0) == (2, "explicit")
    T.restore({"baseline": torch.get_num_threads(), "explicit": False, "sample": None})
    assert T.choose().reason.startswith("policy")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert T.choose(work=1.0) == (2, "explicit")
    monkeypatch.delenv("OMP_NUM_THREADS")
    T.mark_explicit(2)
    assert T.choose(work=1.0) == (2, "explicit")
    T.mark_explicit(None)
    monkeypatch.setenv(T.POLICY_ENV, "torch")
    assert T.choose(work=1.0) == (2, "torch")


def test_the_cli_default_precedence_and_restoration(policy, monkeypatch, tmp_path, capsys):
    """--threads > LOSSATLAS_THREADS > the policy; main() leaves the caller's thread count as it was."""
    torch.set_num_threads(1)
    T.restore({"baseline": 1, "explicit": False, "sample": None})
    policy.idle = 2.0
    mlp = ["surface", "seed-relu", "--directions", "random", "--steps", "2", "--no-progress"]

    def threads_of(*args, name):
        with pytest.raises(SystemExit) as exc:
            main([*map(str, args), "--store", str(tmp_path / name)])
        assert exc.value.code == 0, capsys.readouterr().err
        assert torch.get_num_threads() == 1  # restored
        return json.loads(lossatlas.open_surface(tmp_path / name).attrs["provenance"])["threads"]

    assert threads_of(*mlp, name="a.zarr") == 2          # the policy: 2 idle cores, work enough for 2
    policy.idle = 1.0
    assert threads_of(*mlp, name="b.zarr") == 1          # one core busy
    monkeypatch.setenv("LOSSATLAS_THREADS", "2")
    assert threads_of(*mlp, name="c.zarr") == 2          # the environment beats the policy
    assert threads_of(*mlp, "--threads", "1", name="d.zarr") == 1  # the flag beats the environment
    monkeypatch.delenv("LOSSATLAS_THREADS")
    policy.idle = 2.0
    monkeypatch.setattr(T, "FLOPS_PER_THREAD", 2e6)
    assert threads_of(*mlp, name="e.zarr") == 1          # a tiny problem: one thread even on an idle machine


def test_library_call_pins_the_policy_choice_and_restores_the_users_count(policy, monkeypatch):
    ex = examples.load("seed-relu")
    d = lossatlas.directions.axes(ex.problem, ["w0"])
    torch.set_num_threads(1)
    T.restore({"baseline": 1, "explicit": False, "sample": None})
    seen = []
    original = sys.modules["lossatlas.surface"].PointEvaluator.__call__

    def spy(self, coefficients):
        seen.append(torch.get_num_threads())
        return original(self, coefficients)

    monkeypatch.setattr(sys.modules["lossatlas.surface"].PointEvaluator, "__call__", spy)
    ds = lossatlas.surface(ex.problem, None, d, steps=3, progress=False, strategy="loop")
    assert json.loads(ds.attrs["provenance"])["threads"] == 2 and seen[-1] == 2  # the chunk loop: pinned
    assert torch.get_num_threads() == 1


def test_a_resume_keeps_the_pinned_count_bit_identical(policy, monkeypatch, tmp_path):
    """A store made with the policy's 2 threads, interrupted, resumed on a day the policy says 1: the
    resumed chunks run on the pinned 2 threads and the values equal an uninterrupted run's bits."""
    ex = examples.load("seed-relu")
    d = lossatlas.directions.axes(ex.problem, ["w0", "w1"])
    kw = dict(steps=4, span=0.5, chunk=4, progress=False, strategy="loop")
    reference = lossatlas.surface(ex.problem, None, d, **kw)
    assert json.loads(reference.attrs["provenance"])["threads"] == 2
    cls = sys.modules["lossatlas.surface"].PointEvaluator
    original, seen = cls.__call__, []

    def failing(self, coefficients):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(torch.get_num_threads())
        return original(self, coefficients)

    monkeypatch.setattr(cls, "__call__", failing)
    with pytest.raises(KeyboardInterrupt):
        lossatlas.surface(ex.problem, None, d, store=tmp_path / "s.zarr", **kw)
    policy.idle = 1.0
    assert T.choose(T.problem_flops(ex.problem)).threads == 1
    seen.clear()
    monkeypatch.setattr(cls, "__call__", lambda self, c: seen.append(torch.get_num_threads()) or original(self, c))
    done = lossatlas.surface(ex.problem, None, d, store=tmp_path / "s.zarr", **kw)
    assert seen and set(seen) == {2}
    assert json.loads(done.attrs["provenance"])["threads"] == 2
    np.testing.assert_array_equal(done.loss.values, reference.loss.values)


@pytest.mark.slow
def test_a_tiny_problem_starts_no_thread_pool(tmp_path):
    """On an idle 2-core machine (as the policy sees it), a surface of a tiny problem runs on one thread:
    the process has as many threads after the surface as before it (what loading the example starts
    before is not counted here)."""
    script = textwrap.dedent("""
        import os, torch, lossatlas
        from lossatlas import _threads as T, examples
        T.available_cores = lambda: 2
        T.idle_cores = lambda window=0: 2.0
        ex = examples.load("logreg-bce")
        d = lossatlas.directions.random(ex.problem, n=2, seed=0)
        before = len(os.listdir("/proc/self/task"))
        ds = lossatlas.surface(ex.problem, None, d, steps=9, progress=False, strategy="loop")
        import json
        print(before, len(os.listdir("/proc/self/task")), json.loads(ds.attrs["provenance"])["threads"])
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["LOSSATLAS_CACHE"] = os.environ.get("LOSSATLAS_CACHE", str(tmp_path))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after, threads = map(int, out.stdout.split()[-3:])
    assert threads == 1 and after == before


def test_idle_cores_reads_this_machine():
    idle = T.idle_cores(0.02)
    assert idle is None or 0.0 <= idle <= len(os.sched_getaffinity(0))
    assert 1 <= T.available_cores() <= (os.cpu_count() or 1)
