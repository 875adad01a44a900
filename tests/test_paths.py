"""Interpolation between two models: values equal a naive evaluation, barrier and MLI metrics are
right on constructed cases, stores reopen, bad input is refused, the user's model is untouched."""
import copy

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lossatlas
from lossatlas import params as P
from lossatlas.paths import open_interpolation, path_metrics
from lossatlas.testing import assert_close, assert_model_unchanged, model_state, naive_loss


@pytest.fixture
def pair(classification):
    model, loss_fn, x, y = classification
    problem = lossatlas.Problem(model, loss_fn, (x, y), dtype=torch.float64)
    a = problem.params()
    g = torch.Generator().manual_seed(3)
    b = {k: v + 0.8 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in a.items()}
    return problem, a, b, model, loss_fn, x, y


def test_values_equal_a_naive_evaluation(pair):
    problem, a, b, model, loss_fn, x, y = pair
    ds = lossatlas.interpolate(problem, a, b, steps=9, extend=(-0.5, 1.5), progress=False)
    assert ds.loss.dims == ("t",) and float(ds.t[0]) == -0.5 and float(ds.t[-1]) == 1.5
    naive = [naive_loss(model, loss_fn, [(x, y)], {k: a[k] + float(t) * (b[k] - a[k]) for k in a}, torch.float64)
             for t in ds.t.values]
    assert_close(ds.loss.values, naive, torch.float64, what="interpolation vs naive loop")
    net = copy.deepcopy(model).double().eval()
    acc = [float((torch.func.functional_call(net, {k: a[k] + float(t) * (b[k] - a[k]) for k in a},
                                             (x.double(),)).argmax(1) == y).double().mean()) for t in ds.t.values]
    assert_close(ds.accuracy.values, acc, torch.float64, what="accuracy")


def test_barrier_attributes_match_their_definitions(pair):
    problem, a, b, *_ = pair
    ds = lossatlas.interpolate(problem, a, b, steps=17, extend=(-0.5, 1.5), progress=False)
    assert 0.0 in ds.t.values and 1.0 in ds.t.values
    inside = ds.sel(t=slice(0.0, 1.0))
    f, t = inside.loss.values, inside.t.values
    f0, f1 = problem.loss(a), problem.loss(b)
    assert ds.attrs["loss_a"] == pytest.approx(f0, rel=1e-12) and ds.attrs["loss_b"] == pytest.approx(f1, rel=1e-12)
    assert ds.attrs["barrier"] == pytest.approx(f.max() - max(f0, f1), rel=1e-12)
    assert ds.attrs["barrier_linear"] == pytest.approx(np.max(f - ((1 - t) * f0 + t * f1)), rel=1e-12, abs=1e-15)
    assert ds.attrs["distance"] == pytest.approx(P.norm(P.sub(b, a)), rel=1e-12)
    assert ds.attrs["barrier"] >= 0 and ds.attrs["barrier_linear"] >= ds.attrs["barrier"] - 1e-12
    assert 0.0 <= ds.attrs["barrier_t"] <= 1.0


def test_endpoint_not_on_the_grid_is_evaluated_separately(pair):
    problem, a, b, *_ = pair
    ds = lossatlas.interpolate(problem, a, b, steps=6, extend=(-0.3, 1.2), progress=False)
    assert 1.0 not in ds.t.values
    assert ds.attrs["loss_b"] == pytest.approx(problem.loss(b), rel=1e-12)
    assert ds.attrs["loss_a"] == pytest.approx(problem.loss(a), rel=1e-12)


def quadratic_problem():
    """Least squares: f(θ) is a convex quadratic with its minimum at θ*."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 4, generator=g, dtype=torch.float64)
    y = x @ torch.randn(4, 1, generator=g, dtype=torch.float64) + 0.1 * torch.randn(80, 1, generator=g,
                                                                                 dtype=torch.float64)
    model = torch.nn.Linear(4, 1, bias=False).double()
    problem = lossatlas.Problem(model, torch.nn.MSELoss(), (x, y))
    opt = torch.linalg.lstsq(x, y).solution.T
    return problem, {"weight": opt.clone()}


def test_mli_flag_on_constructed_monotone_and_non_monotone_paths():
    problem, best = quadratic_problem()
    d = {"weight": torch.tensor([[1.0, -2.0, 0.5, 1.5]], dtype=torch.float64)}
    far = P.axpy(1.0, d, best)
    # from a far point straight to the minimum: the loss decreases all the way
    ds = lossatlas.interpolate(problem, far, best, steps=41, progress=False)
    assert ds.attrs["mli"] == 1 and ds.attrs["largest_bump"] <= ds.attrs["mli_tol"]
    assert np.all(np.diff(ds.loss.values) < 0)
    # through the minimum and out the other side: it decreases, then rises again
    beyond = P.axpy(-0.5, d, best)
    ds = lossatlas.interpolate(problem, far, beyond, steps=31, progress=False)
    assert ds.attrs["mli"] == 0
    f_min = problem.loss(best)  # the minimum of the path, at t = 2/3
    expected_bump = problem.loss(beyond) - ds.loss.values.min()
    assert ds.attrs["largest_bump"] == pytest.approx(expected_bump, rel=1e-10)
    assert ds.attrs["largest_bump"] > 0.1 * (problem.loss(beyond) - f_min)
    assert ds.attrs["barrier"] == pytest.approx(0.0, abs=1e-12)  # a convex path has no barrier


@pytest.mark.parametrize("loss, expected", [
    ([3.0, 2.0, 1.0, 0.5], {"mli": 1, "largest_bump": 0.0, "barrier": 0.0}),
    ([3.0, 2.0, 2.5, 0.5], {"mli": 0, "largest_bump": 0.5, "barrier": 0.0}),
    ([1.0, 2.0, 4.0, 1.5], {"mli": 0, "largest_bump": 3.0, "barrier": 2.5}),
    ([1.0, 1.0, 1.0, 1.0], {"mli": 1, "largest_bump": 0.0, "barrier": 0.0}),
])
def test_path_metrics_by_hand(loss, expected):
    t = np.linspace(0, 1, 4)
    m = path_metrics(t, np.array(loss))
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, abs=1e-15), k
    chord = (1 - t) * loss[0] + t * loss[-1]
    assert m["barrier_linear"] == pytest.approx(max(np.array(loss) - chord))


def test_batchnorm_recalibration_option(cnn_data):
    model, loss_fn, x, y = cnn_data
    problem = lossatlas.Problem(model, loss_fn, (x, y), dtype=torch.float64)
    a = problem.params()
    g = torch.Generator().manual_seed(0)
    b = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in a.items()}
    rec = lossatlas.interpolate(problem, a, b, steps=5, bn="recalibrate", progress=False)
    assert problem.bn == "eval"  # the problem passed in is not changed
    ref = lossatlas.Problem(model, loss_fn, (x, y), dtype=torch.float64, bn="recalibrate")
    expected = [ref.loss({k: a[k] + float(t) * (b[k] - a[k]) for k in a}) for t in rec.t.values]
    assert_close(rec.loss.values, expected, torch.float64, what="recalibrated interpolation")
    default = lossatlas.interpolate(problem, a, b, steps=5, progress=False)  # BN: recalibrated by default
    np.testing.assert_array_equal(default.loss.values, rec.loss.values)
    with pytest.warns(lossatlas.BatchNormStatsWarning):
        plain = lossatlas.interpolate(problem, a, b, steps=5, bn="eval", progress=False)
    assert not np.allclose(plain.loss.values, rec.loss.values)


def test_store_reopens_with_the_same_values_and_metrics(pair, tmp_path):
    problem, a, b, *_ = pair
    ds = lossatlas.interpolate(problem, a, b, steps=11, store=tmp_path / "line.zarr", progress=False)
    back = open_interpolation(tmp_path / "line.zarr")
    assert np.array_equal(back.loss.values, ds.loss.values) and np.array_equal(back.t.values, ds.t.values)
    for key in ("barrier", "barrier_linear", "mli", "largest_bump", "distance", "loss_a", "loss_b"):
        assert back.attrs[key] == ds.attrs[key], key
    again = lossatlas.interpolate(problem, a, b, steps=11, store=tmp_path / "line.zarr", progress=False)
    assert np.array_equal(again.loss.values, ds.loss.values)


def test_modules_as_endpoints(classification):
    model, loss_fn, x, y = classification
    other = type(model)()
    problem = lossatlas.Problem(model, loss_fn, (x, y))
    ds = lossatlas.interpolate(problem, model, other, steps=3, progress=False)
    assert ds.attrs["loss_b"] == pytest.approx(lossatlas.Problem(other, loss_fn, (x, y)).loss(
        lossatlas.params_of(other)), rel=1e-6)


@pytest.mark.parametrize("call, error, words", [
    (lambda p, a, b: lossatlas.interpolate("problem", a, b), lossatlas.InvalidTypeError, ["'problem'"]),
    (lambda p, a, b: lossatlas.interpolate(p, a, "b.pt"), lossatlas.InvalidTypeError, ["'b'"]),
    (lambda p, a, b: lossatlas.interpolate(p, a, lossatlas.params_of(torch.nn.Linear(5, 3))),
     lossatlas.ParameterMismatchError, ["'b'"]),
    (lambda p, a, b: lossatlas.interpolate(p, a, b, steps=1), lossatlas.InvalidArgumentError, ["'steps'", ">= 2"]),
    (lambda p, a, b: lossatlas.interpolate(p, a, b, extend=(0.2, 1.0)), lossatlas.InvalidArgumentError,
     ["'extend'", "lo <= 0"]),
    (lambda p, a, b: lossatlas.interpolate(p, a, b, extend=1.5), lossatlas.InvalidArgumentError, ["'extend'"]),
    (lambda p, a, b: lossatlas.interpolate(p, a, b, bn="train"), lossatlas.InvalidArgumentError, ["'bn'"]),
    (lambda p, a, b: lossatlas.interpolate(p, a, b, tol=-1.0), lossatlas.InvalidArgumentError, ["'tol'"]),
])
def test_bad_inputs(pair, call, error, words):
    problem, a, b, *_ = pair
    with pytest.raises(error) as info:
        call(problem, a, b)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("interpolate():")
    for w in words:
        assert w in msg, msg


def test_every_paths_call_leaves_the_users_model_alone(cnn_data, tmp_path):
    model, loss_fn, x, y = cnn_data
    model.fc.bias.requires_grad_(False)
    loss_fn(model(x), y).backward()
    before = model_state(model)
    problem = lossatlas.Problem(model, loss_fn, (x, y))
    a = problem.params()
    b = P.axpy(0.2, lossatlas.directions.random(problem, n=1, seed=0)[0], a)
    lossatlas.interpolate(problem, a, b, steps=3, bn="recalibrate", progress=False)
    curve = lossatlas.connect(problem, a, b, iters=3, progress=False)
    curve.evaluate(3)
    lossatlas.align(model, model, model)
    with lossatlas.TrajectoryRecorder(tmp_path / "run") as rec:
        rec.record(model, step=0)
        rec.record(model, step=1)
    lossatlas.trajectory.project(rec.trajectory(), lossatlas.directions.random(problem, n=2, seed=1), a)
    assert_model_unchanged(model, before)
    # the problem's private copy is back in eval mode with its statistics intact
    assert all(not m.training for m in problem._module.modules())
    assert problem.loss(a) == lossatlas.Problem(model, loss_fn, (x, y)).loss(a)


@given(st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=2, max_size=30))
def test_path_metrics_properties(values):
    f = np.array(values)
    t = np.linspace(0.0, 1.0, len(f))
    m = path_metrics(t, f, tol=0.0)
    assert m["barrier"] >= 0.0 and m["barrier_linear"] >= m["barrier"] - 1e-12
    brute = max(max(f[j] - f[i] for i in range(len(f)) for j in range(i, len(f))), 0.0)
    assert m["largest_bump"] == pytest.approx(brute, abs=1e-12)
    assert m["mli"] == int(bool(np.all(np.diff(f) <= 0)))
    assert m["max_loss"] == f.max() and t[0] <= m["barrier_t"] <= t[-1]
