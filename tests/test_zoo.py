"""Differential testing: every family of the zoo (tests/_zoo.py) × every evaluation path × every
batching gives the values of a naive float64 reference (functional_call per batch, Σ n_b ℓ_b / N,
BatchNorm recalibrated by a plain loop), ≤ 1e-12 relative in float64 and ≤ 1e-6 in float32.

Paths: the per-point loop and ``torch.vmap``, each with the first-layer fold on and off
(``exact_linear``), data-parallel evaluation (``parallel="data"``), the two shards two ranks would
evaluate (combined in batch order, as the ranks do), and in a slow test a real 2-rank torchrun.
Batchings: one batch, equal batches, a ragged last batch, a DataLoader. The default run covers
float64 × every path × every batching and float32 × the main paths; ``-m slow`` the full product.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lossatlas
from lossatlas.testing import assert_close

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _zoo  # noqa: E402

FAMILIES = sorted(_zoo.FAMILIES)
BATCHINGS = list(_zoo.BATCHINGS)
DTYPES = {"float64": torch.float64, "float32": torch.float32}

#: evaluation path -> keyword arguments of lossatlas.surface ("shards2" is evaluated by hand)
PATHS = {
    "loop": dict(strategy="loop", exact_linear=False),
    "loop+fold": dict(strategy="loop", exact_linear=True),
    "vmap": dict(strategy="vmap", exact_linear=False),
    "vmap+fold": dict(strategy="vmap", exact_linear=True),
    "data-parallel": dict(strategy="loop", exact_linear=True, parallel="data"),
    "shards2": dict(strategy="loop", exact_linear=True),
}
MAIN_PATHS = ("loop", "loop+fold", "vmap+fold")


@functools.lru_cache(maxsize=None)
def _setup(name: str, batching: str, dtype: str):
    """(case, problem, centre, directions, reference at the 3×3 grid) — built once per combination."""
    case = _zoo.FAMILIES[name]()
    problem = case.problem(batching, DTYPES[dtype])
    assert problem.data.sizes == case.sizes(batching)
    center = problem.params()
    dirs = _zoo.random_directions(center, 2, seed=7)
    return case, problem, center, dirs


@functools.lru_cache(maxsize=None)
def _reference(name: str, batching: str, dtype: str, coefficients: bytes) -> np.ndarray:
    case, problem, center, dirs = _setup(name, batching, dtype)
    coeffs = np.frombuffer(coefficients, dtype=np.float64).reshape(-1, 2)
    return _zoo.reference(case, case.sizes(batching), center, dirs, coeffs)


def _shards(problem, center, dirs, coeffs, *, exact_linear=True, world=2) -> np.ndarray:
    """What ``world`` data-parallel ranks compute: each its round-robin share of the batches, the
    per-batch terms put back in batch order and summed left to right."""
    from lossatlas.distributed import shard_problem
    from lossatlas.evaluator import PointEvaluator, sum_batches

    terms = torch.zeros((len(coeffs), 1, problem.data.n_batches), dtype=torch.float64)
    for rank in range(world):
        view, indices = shard_problem(problem, rank, world)
        if view is None:
            continue
        with PointEvaluator(view, center, dirs, strategy="loop", exact_linear=exact_linear, metrics=False,
                            per_batch=True) as ev:
            terms[:, :, indices] = ev.terms(coeffs).cpu()
    return sum_batches(terms)[:, 0].numpy()


def _values(path: str, problem, center, dirs):
    """(loss on the 3×3 grid as a flat array, its coefficients) along one evaluation path."""
    kw = PATHS[path]
    ds = lossatlas.surface(problem, center, dirs, steps=3, span=1.0, progress=False, metrics=False,
                           **({k: v for k, v in kw.items()} if path != "shards2" else dict(strategy="loop")))
    coeffs = _zoo.grid_coefficients(ds)
    assert (ds.x.values == 0.0).any() and (ds.y.values == 0.0).any()  # θ is a point of the grid
    if path == "shards2":
        return _shards(problem, center, dirs, coeffs, exact_linear=kw["exact_linear"]), coeffs
    return ds.loss.values.reshape(-1), coeffs


def _supported(case, path: str) -> str | None:
    """Why a path does not apply to a family (lossatlas refuses it with a clear error), or None."""
    recal = case.bn == "recalibrate"
    if recal and path in ("data-parallel", "shards2"):
        return "bn='recalibrate' needs every batch at every point"
    if path.startswith("vmap") and recal:
        return "train-mode BatchNorm cannot be vmapped"
    if path.startswith("vmap") and not case.vmap:
        return "the model does not run under torch.vmap"
    return None


def check(name: str, batching: str, dtype: str, path: str) -> None:
    case, problem, center, dirs = _setup(name, batching, dtype)
    why = _supported(case, path)
    if why is not None:  # refused before any work, or a clean error of lossatlas's own type
        error = lossatlas.InvalidArgumentError if case.bn == "recalibrate" else lossatlas.EvaluationError
        with pytest.raises(error):
            _values(path, problem, center, dirs)
        return
    values, coeffs = _values(path, problem, center, dirs)
    ref = _reference(name, batching, dtype, np.ascontiguousarray(coeffs, dtype=np.float64).tobytes())
    assert_close(values, ref, DTYPES[dtype], what=f"{name} / {path} / {batching} / {dtype}")


DEFAULT = ([(f, b, "float64", p) for f in FAMILIES for b in BATCHINGS for p in PATHS]
           + [(f, b, "float32", p) for f in FAMILIES for b in BATCHINGS for p in MAIN_PATHS])
FULL = [(f, b, d, p) for f in FAMILIES for b in BATCHINGS for d in DTYPES for p in PATHS]


@pytest.mark.parametrize("name, batching, dtype, path", DEFAULT)
def test_zoo_matches_the_naive_reference(name, batching, dtype, path):
    check(name, batching, dtype, path)


@pytest.mark.slow
@pytest.mark.parametrize("name, batching, dtype, path", [c for c in FULL if c not in DEFAULT])
def test_zoo_full_cross_product(name, batching, dtype, path):
    check(name, batching, dtype, path)


def test_the_zoo_is_a_registry_of_at_least_25_families():
    assert len(FAMILIES) >= 25
    for name in FAMILIES:
        case = _zoo.FAMILIES[name]()
        assert case.name == name and sum(case.sizes("ragged")) == _zoo.N
    kinds = {_zoo.FAMILIES[n]().bn for n in FAMILIES}
    assert kinds == {"eval", "recalibrate"}


def test_the_reference_can_fail():
    """The reference is not lossatlas's own computation: a wrong batch weighting or BatchNorm
    statistics taken from the wrong data are caught."""
    case, problem, center, dirs = _setup("cnn-bn-recalibrate", "ragged", "float64")
    coeffs = np.zeros((1, 2))
    good = _zoo.reference(case, case.sizes("ragged"), center, dirs, coeffs)[0]
    assert_close(problem.loss(center), good, torch.float64)
    unweighted = _zoo.reference(case, [8, 8, 8], center, dirs, coeffs)[0]  # other batches, other statistics
    with pytest.raises(AssertionError):
        assert_close(problem.loss(center), unweighted, torch.float64)


# -- property-based: shapes vary ------------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(width=st.integers(1, 9), d_in=st.integers(1, 6), n=st.integers(1, 30), batch=st.integers(1, 12),
       conv=st.booleans(), fold=st.booleans(), vmap=st.booleans())
def test_varying_shapes_match_the_reference(width, d_in, n, batch, conv, fold, vmap):
    torch.manual_seed(width * 31 + d_in)
    g = torch.Generator().manual_seed(n * 7 + batch)
    if conv:
        model = torch.nn.Sequential(torch.nn.Conv1d(d_in, width, 2), torch.nn.Tanh(), torch.nn.Flatten(),
                                    torch.nn.Linear(width * 2, 2))
        x = torch.randn(n, d_in, 3, generator=g)
    else:
        model = torch.nn.Sequential(torch.nn.Linear(d_in, width), torch.nn.Tanh(), torch.nn.Linear(width, 2))
        x = torch.randn(n, d_in, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    case = _zoo.Case("hypothesis", model, (x, y), torch.nn.CrossEntropyLoss())
    problem = lossatlas.Problem(model, case.loss, (x, y), batch_size=batch, dtype=torch.float64, metrics=None)
    center = problem.params()
    dirs = _zoo.random_directions(center, 2, seed=width)
    ds = lossatlas.surface(problem, center, dirs, steps=3, progress=False, metrics=False,
                           strategy="vmap" if vmap else "loop", exact_linear=fold)
    sizes = [min(batch, n - s) for s in range(0, n, batch)]
    ref = _zoo.reference(case, sizes, center, dirs, _zoo.grid_coefficients(ds))
    assert_close(ds.loss.values.reshape(-1), ref, torch.float64, what=f"width {width} n {n} batch {batch}")


@settings(max_examples=20, deadline=None, derandomize=True)
@given(name=st.sampled_from(FAMILIES), batch=st.integers(1, _zoo.N), path=st.sampled_from(sorted(PATHS)),
       loader=st.booleans())
def test_any_family_at_any_batch_size(name, batch, path, loader):
    """Families of the registry with batch sizes drawn at random (a DataLoader or tensors)."""
    case = _zoo.FAMILIES[name]()
    if _supported(case, path) is not None:
        return
    data = case.problem_data("loader", batch) if loader else case.data
    problem = lossatlas.Problem(case.model, case.loss, data, closure=case.closure, batch_size=None if loader else batch,
                                dtype=torch.float64, bn=case.bn, metrics=None)
    sizes = [min(batch, _zoo.N - s) for s in range(0, _zoo.N, batch)]
    assert problem.data.sizes == sizes
    center = problem.params()
    dirs = _zoo.random_directions(center, 2, seed=batch)
    values, coeffs = _values(path, problem, center, dirs)
    ref = _zoo.reference(case, sizes, center, dirs, coeffs)
    assert_close(values, ref, torch.float64, what=f"{name} / {path} / batch {batch}{' loader' if loader else ''}")


# -- two torchrun ranks ---------------------------------------------------------------------------
TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
DIST_FAMILIES = ["mlp-tanh", "cnn-bn-eval", "cnn-bn-recalibrate", "attention", "tied-weights",
                 "dict-batch-closure", "physics-no-targets", "embedding-bag"]


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found beside the interpreter")
def test_zoo_under_two_torchrun_ranks(tmp_path):
    from lossatlas import distributed as D

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", D.SWITCH):
        env.pop(key, None)
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--standalone", str(HERE / "_zoo_dist.py"), str(tmp_path),
           *DIST_FAMILIES]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in DIST_FAMILIES:
        case, problem, center, dirs = _setup(name, "ragged", "float64")
        for parallel in ("grid", "data"):
            if parallel == "data" and case.bn == "recalibrate":
                continue
            for rank in (0, 1):
                got = np.load(tmp_path / f"{name}-{parallel}-{rank}.npz")
                ref = _zoo.reference(case, case.sizes("ragged"), center, dirs, got["coefficients"])
                assert_close(got["loss"], ref, torch.float64, what=f"{name} / torchrun {parallel} / rank {rank}")


def test_the_fold_paths_do_fold():
    """The "+fold" paths are not the plain paths again: in most families some layer is folded."""
    from lossatlas.evaluator import PointEvaluator

    folded = []
    for name in FAMILIES:
        case, problem, center, dirs = _setup(name, "ragged", "float64")
        with PointEvaluator(problem, center, dirs, strategy="loop", exact_linear=True, metrics=False) as ev:
            if ev.fold is not None and ev.fold.active_layers:
                folded.append(name)
    assert len(folded) >= len(FAMILIES) // 2, folded
    assert {"mlp-tanh", "cnn-bn-eval", "conv-transpose", "grouped-conv", "attention"} <= set(folded), folded
