"""CUDA: every family of the zoo (tests/_zoo.py) on a GPU, along the loop and vmap strategies with
the first-layer fold, gives the values of the naive float64 reference computed on the CPU (float32
tolerance, TF32 off); a curvature estimate on the GPU matches the CPU's. Skipped cleanly where no
CUDA device is present (CI, the development machines): run ``pytest tests/test_cuda.py`` on a GPU.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lossatlas
from lossatlas.testing import assert_close

sys.path.insert(0, str(Path(__file__).parent))
import _zoo  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

STRATEGIES = ("loop", "vmap")


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
                             dtype=torch.float32, bn=case.bn, metrics=None, device="cuda", **case.problem_kw)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", sorted(_zoo.FAMILIES))
def test_zoo_on_cuda_matches_the_cpu_reference(name, strategy):
    case = _zoo.FAMILIES[name]()
    if strategy == "vmap" and (case.bn == "recalibrate" or not case.vmap):
        pytest.skip("this family does not run under torch.vmap (refused on every device)")
    problem = _cuda_problem(case, "equal")
    assert problem.device.type == "cuda"
    center = problem.params()
    dirs = _zoo.random_directions({k: v.cpu() for k, v in center.items()}, 2, seed=7)
    on_device = [{k: v.to("cuda") for k, v in d.items()} for d in dirs]
    ds = lossatlas.surface(problem, center, on_device, steps=3, span=1.0, strategy=strategy, exact_linear=True,
                           progress=False, metrics=False)
    coeffs = _zoo.grid_coefficients(ds)
    ref = _zoo.reference(case, case.sizes("equal"), {k: v.cpu() for k, v in center.items()}, dirs, coeffs)
    assert_close(ds.loss.values.reshape(-1), ref, torch.float32, what=f"{name} / {strategy} / cuda")


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
                            dtype=torch.float64, bn=case.bn, metrics=None, device="cuda", **case.problem_kw)
    lo = curvature.eigenvalues(cpu, k=1, which="both", tol=1e-8, seed=0, progress=False)
    hi = curvature.eigenvalues(gpu, k=1, which="both", tol=1e-8, seed=0, progress=False)
    assert hi.converged.all() and lo.converged.all()
    np.testing.assert_allclose(np.asarray(hi.values), np.asarray(lo.values), rtol=1e-6, atol=1e-9)
