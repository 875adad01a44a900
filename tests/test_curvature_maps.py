"""|λmin/λmax| maps (resumable like surfaces) and the curvature functions' input errors."""
import numpy as np
import pytest
import torch

import lossatlas
from lossatlas import curvature as C
from lossatlas.curvature import ratio as ratio_module


@pytest.fixture
def small():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 2, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    problem = lossatlas.Problem(net, torch.nn.MSELoss(), (x, x[:, :1] * x[:, 1:]))
    d = lossatlas.directions.random(problem, n=2, seed=0)
    return problem, d


def test_ratio_map_values_are_the_eigenvalues_at_each_point(small):
    problem, d = small
    ds = C.ratio_map(problem, None, d, steps=3, span=0.5, tol=1e-8, progress=False)
    assert set(ratio_module.VARIABLES) <= set(ds.data_vars) and ds.attrs["kind"] == "ratio_map"
    for i, a in enumerate(ds.x.values):
        for j, b in enumerate(ds.y.values):
            theta = lossatlas.params.lincomb(problem.params(), d.vectors, [a, b])
            H = C.hessian_operator(problem, theta).dense()
            exact = torch.linalg.eigvalsh(H).numpy()
            point = ds.isel(x=i, y=j)
            assert float(point.lambda_max) == pytest.approx(exact[-1], rel=1e-6)
            assert float(point.lambda_min) == pytest.approx(exact[0], abs=1e-6 * exact[-1])
            assert float(point.ratio) == pytest.approx(abs(exact[0] / exact[-1]), rel=1e-5)
            assert float(point.loss) == pytest.approx(problem.loss(theta), rel=1e-12)
            assert float(point.converged) == 1.0
            assert float(point.residual_min) <= 1e-8 * exact[-1] * 1.01
    assert ds.attrs["complete"] == 1 and ds.attrs["points_done"] == 9


def test_ratio_map_resumes_after_interruption(small, tmp_path, monkeypatch):
    problem, d = small
    store = tmp_path / "ratio.zarr"
    kw = dict(steps=3, span=0.5, chunk=2, store=store, progress=False)
    reference = C.ratio_map(problem, None, d, steps=3, span=0.5, chunk=2, progress=False)
    original = ratio_module._PointCurvature.point
    calls = []

    def failing(self, c, *args):
        if len(calls) == 5:
            raise KeyboardInterrupt  # a kill at the start of the fourth chunk (chunks of 2, 1, 2, 1, … points)
        calls.append(tuple(c))
        return original(self, c, *args)

    monkeypatch.setattr(ratio_module._PointCurvature, "point", failing)
    with pytest.raises(KeyboardInterrupt):
        C.ratio_map(problem, None, d, **kw)
    partial = lossatlas.open_surface(store)
    assert partial.attrs["points_done"] == 5 and partial.attrs["complete"] == 0
    monkeypatch.setattr(ratio_module._PointCurvature, "point",
                        lambda self, c, *a: calls.append(tuple(c)) or original(self, c, *a))
    calls.clear()
    done = C.ratio_map(problem, None, d, **kw)
    assert len(calls) == 4  # only the 4 missing points were computed
    assert done.attrs["complete"] == 1
    for v in ratio_module.VARIABLES:
        np.testing.assert_array_equal(done[v].values, reference[v].values)
    calls.clear()
    C.ratio_map(problem, None, d, **kw)
    assert calls == []  # complete: reopened
    with pytest.raises(lossatlas.ProvenanceMismatchError, match="eigen"):
        C.ratio_map(problem, None, d, **dict(kw, chunk=None), tol=1e-4)
    replaced = C.ratio_map(problem, None, d, **dict(kw, chunk=None), tol=1e-4, overwrite=True)
    assert replaced.attrs["complete"] == 1 and replaced.attrs["tol"] == 1e-4


def test_ratio_map_with_hessian_directions_float32_problem(classification):
    model, loss_fn, x, y = classification
    problem = lossatlas.Problem(model, loss_fn, (x, y))
    d = lossatlas.directions.hessian(problem, n=2)
    ds = C.ratio_map(problem, None, d, steps=(3, 1), span=0.2, dtype=torch.float64, progress=False)
    assert ds.ratio.shape == (3, 1)
    assert ds.x.attrs["long_name"].startswith("Hessian eigenvector (λmax")
    assert ds.attrs["dtype"] == "float64"
    ggn = C.ratio_map(problem, None, d, steps=(2, 1), span=0.2, curvature="ggn", progress=False)
    assert bool((ggn.lambda_min >= -1e-5 * ggn.lambda_max).all())  # the GGN is positive semi-definite
    assert ggn.attrs["curvature"] == "ggn"


@pytest.mark.parametrize("call, match", [
    (lambda p: C.eigenvalues(p, k=0), "'k' must be an integer >= 1"),
    (lambda p: C.eigenvalues(p, k=99, which="both"), "'k' must be at most"),
    (lambda p: C.eigenvalues(p, which="middle"), "'which' must be one of"),
    (lambda p: C.eigenvalues(p, tol=2.0), "'tol' must be a number in"),
    (lambda p: C.eigenvalues(p, seed=-1), "'seed' must be a non-negative integer"),
    (lambda p: C.eigenvalues(p, max_products=0), "'max_products'"),
    (lambda p: C.eigenvalues(p, dtype=torch.float16), "'dtype'"),
    (lambda p: C.eigenvalues(p, params="nope"), "'params' must be a selection"),
    (lambda p: C.eigenvalues(p, params=3), "'params' must be"),
    (lambda p: C.eigenvalues(p, curvature="fisher"), "'curvature' must be one of"),
    (lambda p: C.eigenvalues(p, {"w": torch.zeros(2)}), "'theta'"),
    (lambda p: C.eigenvalues("problem"), "'problem' must be a lossatlas.Problem"),
    (lambda p: C.eigenvalues(C.hessian_operator(p), params="all"), "'params' must be None"),
    (lambda p: C.trace(p, method="exact"), "'method' must be one of"),
    (lambda p: C.trace(p, probes=2), "'probes' must be an integer >= 3"),
    (lambda p: C.trace(p, method="hutchinson", probes=1), "'probes' must be an integer >= 2"),
    (lambda p: C.density(p, iters=0), "'iters'"),
    (lambda p: C.density(p, sigma=-1.0), "'sigma'"),
    (lambda p: C.hessian_operator(p, retain="yes"), "'retain'"),
    (lambda p: C.hessian_operator(p).mv(torch.zeros(3)), "'v' must be a 1-D tensor"),
    (lambda p: C.ggn_operator(lossatlas.Problem(torch.nn.Linear(2, 1), torch.nn.L1Loss(),
                                                (torch.zeros(4, 2), torch.zeros(4, 1)))), "convex in the model output"),
    (lambda p: lossatlas.directions.hessian(p, n=0), "'n' must be an integer >= 1"),
    (lambda p: lossatlas.directions.hessian(p, which="bottom"), "'which' must be one of"),
    (lambda p: lossatlas.directions.hessian(p, norm="filter"), "'norm' must be one of"),
    (lambda p: C.ratio_map(p, None, lossatlas.directions.random(p, n=2), steps=0), "'steps'"),
    (lambda p: C.ratio_map(p, None, lossatlas.directions.random(p, n=2), chunk=0), "'chunk'"),
    (lambda p: C.ratio_map(p, None, lossatlas.directions.random(p, n=2), store=3), "'store'"),
    (lambda p: C.ratio_map(p, None, "up"), "'directions'"),
])
def test_bad_inputs_raise_lossatlas_errors(small, call, match):
    problem, _ = small
    with pytest.raises(lossatlas.LossAtlasError, match=match) as info:
        call(problem)
    message = str(info.value)
    assert "():" in message and "\n" not in message
