"""Mode-connecting curves (Garipov et al. 2018): geometry of the curves, determinism, evaluation
against a naive loop, and a one-bend Bezier curve between two digit MLPs that removes most of the
straight line's barrier."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lossatlas
from lossatlas import examples
from lossatlas import params as P
from lossatlas.connect import Curve, coefficients
from lossatlas.testing import assert_close, naive_loss


@pytest.fixture
def tiny(classification):
    model, loss_fn, x, y = classification
    problem = lossatlas.Problem(model, loss_fn, (x, y), dtype=torch.float64)
    a = problem.params()
    g = torch.Generator().manual_seed(7)
    b = {k: v + torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in a.items()}
    return problem, a, b, model, loss_fn, x, y


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
@pytest.mark.parametrize("bends", [1, 3])
def test_coefficients(kind, bends):
    t = np.linspace(0, 1, 41)
    c = coefficients(kind, bends, t)
    assert c.shape == (41, bends + 2)
    np.testing.assert_allclose(c.sum(1), 1.0, rtol=1e-14)
    assert np.all(c >= 0)
    assert c[0].tolist() == [1.0] + [0.0] * (bends + 1) and c[-1].tolist() == [0.0] * (bends + 1) + [1.0]
    # control points evenly spaced on a line reproduce the line: Σ c_i(t)·i/(k+1) = t
    np.testing.assert_allclose(c @ (np.arange(bends + 2) / (bends + 1)), t, atol=1e-14)
    if kind == "polychain":
        knots = coefficients(kind, bends, np.arange(bends + 2) / (bends + 1))
        np.testing.assert_allclose(knots, np.eye(bends + 2), atol=1e-14)


def test_training_starts_from_the_line_and_is_deterministic(tiny):
    problem, a, b, *_ = tiny
    untrained = lossatlas.connect(problem, a, b, iters=1, lr=1e-12, progress=False)
    mid = untrained.point(0.5)
    line_mid = P.axpy(0.5, P.sub(b, a), a)
    assert max(float((mid[k] - line_mid[k]).abs().max()) for k in a) < 1e-9
    c1 = lossatlas.connect(problem, a, b, iters=20, seed=3, progress=False)
    c2 = lossatlas.connect(problem, a, b, iters=20, seed=3, progress=False)
    c3 = lossatlas.connect(problem, a, b, iters=20, seed=4, progress=False)
    assert P.fingerprint(c1.bends[0]) == P.fingerprint(c2.bends[0]) and c1.history == c2.history
    assert P.fingerprint(c1.bends[0]) != P.fingerprint(c3.bends[0])
    # endpoints stay fixed, exactly
    assert all(torch.equal(c1.points[0][k], a[k]) and torch.equal(c1.points[-1][k], b[k]) for k in a)
    assert all(torch.equal(c1.point(0.0)[k], a[k]) and torch.equal(c1.point(1.0)[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_evaluate_equals_a_naive_loop(tiny, kind):
    problem, a, b, model, loss_fn, x, y = tiny
    c = lossatlas.connect(problem, a, b, curve=kind, bends=2, iters=15, progress=False)
    ds = c.evaluate(7)
    expected = []
    for row in c.coefficients(ds.t.values):
        point = {k: sum(float(w) * p[k] for w, p in zip(row, c.points)) for k in a}
        expected.append(naive_loss(model, loss_fn, [(x, y)], point, torch.float64))
    assert_close(ds.loss.values, expected, torch.float64, what=f"{kind} curve vs naive loop", factor=10)
    assert ds.attrs["loss_a"] == pytest.approx(problem.loss(a), rel=1e-12)
    assert ds.attrs["loss_b"] == pytest.approx(problem.loss(b), rel=1e-12)
    assert ds.attrs["length"] >= ds.attrs["distance"] * (1 - 1e-12)  # a curve is never shorter than the chord


def test_bezier_curve_between_two_digit_mlps_removes_most_of_the_barrier():
    ea, eb = examples.mlp_digits_pair()
    problem = ea.problem
    line = lossatlas.interpolate(problem, ea.center, eb.center, steps=21, progress=False)
    curve = lossatlas.connect(problem, ea.center, eb.center, bends=1, iters=80, lr=0.03, batch_size=128, seed=0,
                              progress=False)
    along = curve.evaluate(21)
    print(f"\nline: max loss {line.attrs['max_loss']:.4f}, barrier {line.attrs['barrier']:.4f}; bezier (1 bend, "
          f"80 steps, {curve.info['seconds']:.1f} s): max loss {along.attrs['max_loss']:.4f}, barrier "
          f"{along.attrs['barrier']:.4f}")
    assert along.attrs["loss_a"] == line.attrs["loss_a"] and along.attrs["loss_b"] == pytest.approx(
        line.attrs["loss_b"], rel=1e-6)
    # the curve's maximum loss rises above the endpoints by at most half the line's barrier
    assert along.attrs["barrier"] <= 0.5 * line.attrs["barrier"]
    # the curve lies in the plane through a, b and its bend: its projection is exact
    proj = curve.project(steps=11)
    assert proj.residual.max() < 1e-4 * proj.distance.max()


def test_batchnorm_model_trains_on_batch_statistics_and_keeps_stored_ones(cnn_data):
    model, loss_fn, x, y = cnn_data
    problem = lossatlas.Problem(model, loss_fn, (x, y))
    buffers = {k: v.clone() for k, v in problem._module.named_buffers()}
    a = problem.params()
    b = P.axpy(0.3, lossatlas.directions.random(problem, n=1, seed=0, ignore=None)[0], a)
    c = lossatlas.connect(problem, a, b, iters=10, batch_size=16, progress=False)
    for k, v in problem._module.named_buffers():
        assert torch.equal(v, buffers[k]), k
    assert all(not m.training for m in problem._module.modules())
    ds = c.evaluate(5)
    assert ds.attrs["bn"] == "recalibrate"
    rec = lossatlas.Problem(model, loss_fn, (x, y), bn="recalibrate")
    assert ds.loss.values[2] == pytest.approx(rec.loss(c.point(0.5)), rel=1e-5)


def test_save_and_load(tiny, tmp_path):
    problem, a, b, *_ = tiny
    c = lossatlas.connect(problem, a, b, curve="polychain", bends=2, iters=5, progress=False)
    c.save(tmp_path / "curve.pt")
    back = Curve.load(tmp_path / "curve.pt", problem)
    assert back.kind == "polychain" and len(back.bends) == 2 and back.history == c.history
    assert all(P.fingerprint(p) == P.fingerprint(q) for p, q in zip(back.points, c.points))
    assert np.array_equal(back.evaluate(5).loss.values, c.evaluate(5).loss.values)
    with pytest.raises(lossatlas.StoreError, match="Curve.load"):
        Curve.load(tmp_path / "missing.pt")
    with pytest.raises(lossatlas.InvalidTypeError, match="'problem'"):
        Curve.load(tmp_path / "curve.pt").evaluate(3)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"curve": "spline"}, lossatlas.InvalidArgumentError, ["'curve'", "bezier"]),
    ({"bends": 0}, lossatlas.InvalidArgumentError, ["'bends'"]),
    ({"iters": 0}, lossatlas.InvalidArgumentError, ["'iters'"]),
    ({"steps": 0}, lossatlas.InvalidArgumentError, ["'iters' (formerly 'steps')"]),  # the old name, for a release
    ({"lr": -1.0}, lossatlas.InvalidArgumentError, ["'lr'"]),
    ({"batch_size": 0}, lossatlas.InvalidArgumentError, ["'batch_size'"]),
    ({"seed": "0"}, lossatlas.InvalidTypeError, ["'seed'"]),
])
def test_bad_inputs(tiny, kwargs, error, words):
    problem, a, b, *_ = tiny
    with pytest.raises(error) as info:
        lossatlas.connect(problem, a, b, progress=False, **kwargs)
    for w in words:
        assert w in str(info.value)
    with pytest.raises(lossatlas.InvalidArgumentError, match="must differ"):
        lossatlas.connect(problem, a, a, progress=False)
    with pytest.raises(lossatlas.ParameterMismatchError):
        lossatlas.connect(problem, a, lossatlas.params_of(torch.nn.Linear(2, 2)), progress=False)
    c = lossatlas.connect(problem, a, b, iters=1, progress=False)
    with pytest.raises(lossatlas.InvalidArgumentError, match="'t'"):
        c.point(1.5)
    with pytest.raises(lossatlas.InvalidArgumentError, match="'steps'"):
        c.evaluate(1)


@given(kind=st.sampled_from(["bezier", "polychain"]), bends=st.integers(1, 5),
       t=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20))
def test_coefficients_are_a_partition_of_unity(kind, bends, t):
    c = coefficients(kind, bends, np.array(t))
    assert np.all(c >= -1e-15) and np.allclose(c.sum(1), 1.0, rtol=0, atol=1e-13)
    # evenly spaced control points on a line reproduce the line
    np.testing.assert_allclose(c @ (np.arange(bends + 2) / (bends + 1)), t, atol=1e-13)
