"""CUDA: every family of the zoo (tests/_zoo.py) on a GPU, along the loop and vmap strategies with
the first-layer fold, gives the values of the naive float64 reference computed on the CPU (float32
tolerance, TF32 off); the same plane on the GPU and on the CPU agree, loop and vmap alike; a
curvature estimate on the GPU matches the CPU's. Skipped cleanly where no CUDA device is present (CI,
the development machines): run ``pytest tests/test_cuda.py`` on a GPU (``benchmarks/gpu_check.sh``).
``LOSSATLAS_TEST_DEVICE=cpu`` runs the same tests with the CPU in the GPU's place, a rehearsal of
the tests themselves (it proves nothing about CUDA).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lossatlas
from lossatlas.testing import assert_close

sys.path.insert(0, str(Path(__file__).parent))
import _zoo  # noqa: E402

DEVICE = os.environ.get("LOSSATLAS_TEST_DEVICE", "cuda")  # "cpu": a rehearsal on a machine without a GPU
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")

STRATEGIES = ("loop", "vmap")
#: one family per kind of layer the planes of bench_zoo exercise: MLP, conv + BatchNorm, attention, gather
PLANE_FAMILIES = ("mlp-tanh", "cnn-bn-eval", "transformer-encoder", "embedding", "residual")


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 off for matmuls and convolutions (its 10-bit mantissa is not float32), restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _cuda_problem(case, batching):
    return lossatlas.Problem(case.model, case.loss, case.problem_data(batching), closure=case.closure,
                             batch_size=None if batching in ("one", "loader") else _zoo.BATCHINGS[batching],
                             dtype=torch.float32, bn=case.bn, metrics=None, device=DEVICE, **case.problem_kw)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", sorted(_zoo.FAMILIES))
def test_zoo_on_cuda_matches_the_cpu_reference(name, strategy):
    case = _zoo.FAMILIES[name]()
    if strategy == "vmap" and (case.bn == "recalibrate" or not case.vmap):
        pytest.skip("this family does not run under torch.vmap (refused on every device)")
    problem = _cuda_problem(case, "equal")
    assert problem.device.type == DEVICE
    center = problem.params()
    dirs = _zoo.random_directions({k: v.cpu() for k, v in center.items()}, 2, seed=7)
    on_device = [{k: v.to(DEVICE) for k, v in d.items()} for d in dirs]
    ds = lossatlas.surface(problem, center, on_device, steps=3, span=1.0, strategy=strategy, exact_linear=True,
                           progress=False, metrics=False)
    coeffs = _zoo.grid_coefficients(ds)
    ref = _zoo.reference(case, case.sizes("equal"), {k: v.cpu() for k, v in center.items()}, dirs, coeffs)
    assert_close(ds.loss.values.reshape(-1), ref, torch.float32, what=f"{name} / {strategy} / cuda")


@pytest.mark.parametrize("name", PLANE_FAMILIES)
def test_the_same_plane_on_cuda_and_on_the_cpu_loop_and_vmap(name):
    """lossatlas on the GPU against lossatlas on the CPU, both float32 with the same directions: each
    is within float32 rounding of the float64 truth (the test above), so within twice that of the
    other; and on the GPU the loop and vmap planes agree as on the CPU."""
    case = _zoo.FAMILIES[name]()
    cpu = case.problem("equal", torch.float32)
    gpu = _cuda_problem(case, "equal")
    dirs = _zoo.random_directions(cpu.params(), 2, seed=3)
    planes = {}
    for where, problem in (("cpu", cpu), ("cuda", gpu)):
        on = [{k: v.to(problem.device) for k, v in d.items()} for d in dirs]
        for strategy in STRATEGIES:
            ds = lossatlas.surface(problem, None, on, steps=5, span=1.0, strategy=strategy, progress=False,
                                   metrics=False)
            planes[where, strategy] = ds.loss.values
    for strategy in STRATEGIES:
        assert_close(planes["cuda", strategy], planes["cpu", strategy], torch.float32, factor=2,
                     what=f"{name} / {strategy}: {DEVICE} vs cpu")
    assert_close(planes["cuda", "vmap"], planes["cuda", "loop"], torch.float32, factor=2,
                 what=f"{name}: vmap vs loop on {DEVICE}")


def test_loop_and_vmap_agree_on_cuda_and_the_user_model_stays_on_the_cpu():
    case = _zoo.FAMILIES["mlp-tanh"]()
    before = {k: v.clone() for k, v in case.model.state_dict().items()}
    problem = _cuda_problem(case, "one")
    d = lossatlas.directions.random(problem, n=2, seed=0)
    a = lossatlas.surface(problem, None, d, steps=5, strategy="loop", progress=False)
    b = lossatlas.surface(problem, None, d, steps=5, strategy="vmap", progress=False)
    np.testing.assert_allclose(a.loss.values, b.loss.values, rtol=1e-5)
    assert all(v.device.type == "cpu" and torch.equal(v, before[k]) for k, v in case.model.state_dict().items())


def test_lambda_max_on_cuda_matches_the_cpu():
    from lossatlas import curvature

    case = _zoo.FAMILIES["mlp-tanh"]()
    cpu = case.problem("one", torch.float64)
    gpu = lossatlas.Problem(case.model, case.loss, case.problem_data("one"), closure=case.closure,
                            dtype=torch.float64, bn=case.bn, metrics=None, device=DEVICE, **case.problem_kw)
    lo = curvature.eigenvalues(cpu, k=1, which="both", tol=1e-8, seed=0, progress=False)
    hi = curvature.eigenvalues(gpu, k=1, which="both", tol=1e-8, seed=0, progress=False)
    assert hi.converged.all() and lo.converged.all()
    np.testing.assert_allclose(np.asarray(hi.values), np.asarray(lo.values), rtol=1e-6, atol=1e-9)
