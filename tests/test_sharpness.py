"""Sharpness measures on quadratics with closed-form worst cases, and the ReLU rescaling test:
scale-invariant measures stay equal, λmax and SAM change."""
import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lossatlas
from lossatlas import params as P
from lossatlas import sharpness as S
from lossatlas.testing import assert_model_unchanged, model_state

from test_metrics import known_problem, quadratic

F64 = torch.float64
A = (4.0, 1.0)


def test_curvature_measures_of_a_quadratic():
    problem, model = known_problem(quadratic(A), torch.tensor([0.1, 0.0]))
    before = model_state(model)
    lam, tr = S.lambda_max(problem), S.trace(problem)
    assert lam.value == pytest.approx(4.0, rel=1e-10) and lam.details["converged"]
    assert tr.value == pytest.approx(5.0, rel=1e-12) and tr.error == 0.0
    assert not lam.scale_invariant and not tr.scale_invariant
    assert "lambda_max" in repr(lam) and "estimate" in repr(lam)
    assert_model_unchanged(model, before)


@settings(max_examples=10)
@given(st.floats(0.01, 0.5), st.floats(-1.0, 1.0))
def test_sam_sharpness_of_a_quadratic_reaches_the_closed_form(rho, offset):
    # L = ½(4θ₁² + θ₂²) at θ = (δ, 0), δ ≠ 0: the worst ε in the ball is ρ·sign(δ)·e₁, increase 2((|δ|+ρ)² − δ²)
    delta = offset if abs(offset) > 1e-3 else 0.3
    problem, _ = known_problem(quadratic(A), torch.tensor([delta, 0.0], dtype=F64))
    s = S.sam_sharpness(problem, rho=rho, iters=5)
    exact = 2 * ((abs(delta) + rho) ** 2 - delta ** 2)
    assert s.value == pytest.approx(exact, rel=1e-9) and s.value <= exact * (1 + 1e-12)
    assert s.kind == "lower bound" and not s.scale_invariant
    # the witness is a point of the ball, and its loss is the bound
    eps = P.sub(s.witness, problem.params())
    assert P.norm(eps) <= rho * (1 + 1e-12)
    assert problem.loss(s.witness) - problem.loss(problem.params()) == pytest.approx(s.value, rel=1e-12)


def test_sam_sharpness_at_a_critical_point_starts_at_random():
    problem, _ = known_problem(quadratic(A), torch.zeros(2))
    s = S.sam_sharpness(problem, rho=0.1, iters=30)
    assert 0 < s.value <= 2 * 0.1 ** 2 * (1 + 1e-12)  # ≤ ½λmax ρ², reached along e₁
    assert s.value == pytest.approx(0.02, rel=1e-3)


def test_epsilon_sharpness_of_a_quadratic_is_the_box_corner():
    theta = torch.tensor([0.5, -0.2])
    problem, model = known_problem(quadratic(A), theta)
    before = model_state(model)
    eps = 1e-2
    s = S.epsilon_sharpness(problem, epsilon=eps)
    w = eps * (theta.abs().double() + 1)
    a = torch.tensor(A, dtype=F64)
    increase = float((0.5 * a * ((theta.abs().double() + w) ** 2 - theta.double() ** 2)).sum())
    f0 = float((0.5 * a * theta.double() ** 2).sum())
    assert s.details["increase"] == pytest.approx(increase, rel=1e-12)
    assert s.value == pytest.approx(100 * increase / (1 + f0), rel=1e-12)
    offset = P.flatten(P.sub(s.witness, problem.params())).abs()
    assert bool((offset <= w * (1 + 1e-12)).all())
    assert_model_unchanged(model, before)


def test_adaptive_sharpness_bounds_on_a_quadratic():
    theta = torch.tensor([0.5, -0.2])
    problem, _ = known_problem(quadratic(A), theta)
    rho = 0.2
    s = S.adaptive_sharpness(problem, rho=rho)
    # φ(u) = L(θ + |θ|⊙u) over ‖u‖ ≤ ρ: at least the first-order step, at most the quadratic bound
    T = theta.abs().double()
    g = torch.tensor(A, dtype=F64) * theta.double()
    lin = rho * float(torch.linalg.vector_norm(T * g))
    upper = lin + 0.5 * rho ** 2 * float((torch.tensor(A, dtype=F64) * T ** 2).max())
    assert lin <= s.value <= upper
    assert s.scale_invariant and not S.adaptive_sharpness(problem, rho=rho, eta=0.01).scale_invariant
    u = P.flatten(P.sub(s.witness, problem.params())) / T
    assert float(torch.linalg.vector_norm(u)) <= rho * (1 + 1e-12)


def relu_pair(alpha):
    """A ReLU MLP and its rescaled twin (W1·α, b1·α, W2/α): the same function."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).double()
    twin = copy.deepcopy(net)
    with torch.no_grad():
        twin[0].weight.mul_(alpha)
        twin[0].bias.mul_(alpha)
        twin[2].weight.div_(alpha)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=g, dtype=F64)
    y = torch.sin(x[:, :1]) + x[:, 1:2] * x[:, 2:]
    return net, twin, x, y


def test_relu_rescaling_leaves_the_scale_invariant_measures_equal():
    net, twin, x, y = relu_pair(3.0)
    torch.testing.assert_close(net(x), twin(x), rtol=1e-13, atol=1e-13)  # the same function
    before = model_state(net)
    a = lossatlas.Problem(net, torch.nn.MSELoss(), (x, y))
    b = lossatlas.Problem(twin, torch.nn.MSELoss(), (x, y))
    assert a.loss(a.params()) == pytest.approx(b.loss(b.params()), rel=1e-13)
    measures = {
        "lambda_max": lambda p: S.lambda_max(p),
        "trace": lambda p: S.trace(p),
        "epsilon_sharpness": lambda p: S.epsilon_sharpness(p, epsilon=1e-2),
        "sam_sharpness": lambda p: S.sam_sharpness(p, rho=0.05),
        "adaptive_sharpness": lambda p: S.adaptive_sharpness(p, rho=0.05),
        "filter_width": lambda p: S.filter_width(p, delta=0.05, steps=41, span=1.0),
    }
    changed = []
    for name, measure in measures.items():
        ra, rb = measure(a), measure(b)
        assert ra.name == name and ra.scale_invariant == rb.scale_invariant
        if ra.scale_invariant:
            assert rb.value == pytest.approx(ra.value, rel=1e-6), name
        elif not math.isclose(ra.value, rb.value, rel_tol=1e-2):
            changed.append(name)
    assert {"lambda_max", "sam_sharpness"} <= set(changed), changed
    assert {n for n, m in measures.items() if m(a).scale_invariant} == {"adaptive_sharpness", "filter_width"}
    assert_model_unchanged(net, before)


def test_filter_width_is_the_slice_width():
    net, _, x, y = relu_pair(1.0)
    problem = lossatlas.Problem(net, torch.nn.MSELoss(), (x, y))
    s = S.filter_width(problem, delta=0.05, steps=41, span=1.0, seed=2)
    d = lossatlas.directions.random(problem, n=1, seed=2)
    ds = lossatlas.surface(problem, None, d, steps=41, span=1.0, progress=False, metrics=False)
    w = lossatlas.metrics.basin_width(ds, 0.05)
    assert s.value == pytest.approx(w.widths[0], rel=1e-9) and s.error == pytest.approx(0.05)
    assert s.kind == "width" and s.scale_invariant


@pytest.mark.parametrize("call, arg", [
    (lambda p: S.sam_sharpness(p, rho=0.0), "'rho'"),
    (lambda p: S.sam_sharpness(p, rho=float("nan")), "'rho'"),
    (lambda p: S.epsilon_sharpness(p, epsilon=-1.0), "'epsilon'"),
    (lambda p: S.adaptive_sharpness(p, eta=-0.1), "'eta'"),
    (lambda p: S.sam_sharpness(p, steps=-1), "'steps'"),
    (lambda p: S.filter_width(p, delta=0.0), "'delta'"),
    (lambda p: S.filter_width(p, steps=2), "'steps'"),
    (lambda p: S.sam_sharpness(p, {"w": torch.zeros(2)}), "'theta'"),
])
def test_bad_inputs_name_the_argument(call, arg):
    problem, _ = known_problem(quadratic(A), torch.tensor([0.1, 0.0]))
    with pytest.raises(lossatlas.LossAtlasError, match=arg):
        call(problem)


def test_problem_must_be_a_problem():
    for fn in (S.lambda_max, S.trace, S.sam_sharpness, S.epsilon_sharpness, S.adaptive_sharpness, S.filter_width):
        with pytest.raises(lossatlas.InvalidTypeError, match="'problem'"):
            fn(np.zeros(3))
