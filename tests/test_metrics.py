"""Landscape metrics on analytic oracles: quadratics with known minima and saddles, a double well with
a known merge tree, parabolas of known width, x² ± y², convex and concave losses for Jensen rates."""
import math

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import assume, given
from hypothesis import strategies as st

import lossatlas
from lossatlas import metrics
from lossatlas.metrics.minima import strict_minima
from lossatlas.metrics.topology import gudhi_pairs, union_find_pairs
from lossatlas.testing import assert_model_unchanged, model_state

F64 = torch.float64


class Vector(torch.nn.Module):
    """A model whose only parameter is θ and whose output is θ itself (one row per sample)."""

    def __init__(self, theta):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.as_tensor(theta, dtype=F64).clone())

    def forward(self, x):
        return self.theta.expand(len(x), -1)


def known_problem(f, theta0):
    """A Problem whose loss is f(θ) exactly (the model outputs θ, the loss reads it)."""
    model = Vector(theta0)
    data = (torch.zeros(1, 1, dtype=F64), torch.zeros(1, 1, dtype=F64))
    return lossatlas.Problem(model, lambda out, tgt: f(out[0]), data, metrics=None), model


def quadratic(diag, minimum=None):
    a = torch.as_tensor(diag, dtype=F64)
    m = torch.zeros_like(a) if minimum is None else torch.as_tensor(minimum, dtype=F64)
    return lambda t: 0.5 * (a * (t - m) ** 2).sum()


def axes_dirs(n, i, j):
    e = torch.eye(n, dtype=F64)
    return [{"theta": e[i].clone()}, {"theta": e[j].clone()}]


def plane(problem, center, dirs, steps=11, span=1.0, **kw):
    return lossatlas.surface(problem, center, dirs, steps=steps, span=span, progress=False, strategy="loop", **kw)


def grid2(f, x, y):
    X, Y = np.meshgrid(x, y, indexing="ij")
    return xr.Dataset({"loss": (("x", "y"), f(X, Y))}, coords={"x": x, "y": y})


# ---------------------------------------------------------------------------------------------- minima
@pytest.mark.parametrize("diag, kind, index", [((1.0, 2.0, 3.0), "minimum", 0), ((1.0, 2.0, -3.0), "saddle", 1),
                                               ((1.0, 2.0, -3.0, -0.5), "saddle", 2)])
@pytest.mark.parametrize("exact_limit", [400, 0])  # dense Hessian / Lanczos at both ends
def test_slice_minimum_of_a_quadratic_is_classified(diag, kind, index, exact_limit):
    n = len(diag)
    problem, model = known_problem(quadratic(diag), torch.zeros(n))
    before = model_state(model)
    center, dirs = problem.params(), axes_dirs(n, 0, 1)
    ds = plane(problem, center, dirs)
    found = metrics.local_minima(ds, problem, center=center, directions=dirs, exact_limit=exact_limit)
    assert found.count == 1 and found.count_half == 1
    m = found[0]
    assert m.coords == (0.0, 0.0) and m.kind == kind
    assert m.grad_norm < 1e-12
    if exact_limit:
        assert m.index == index and m.index_exact and m.zero_eigenvalues == 0
        assert m.lambda_min == pytest.approx(min(diag), abs=1e-12)
    else:
        assert m.index == min(index, 1) and not m.index_exact  # Lanczos tells 0 from ≥ 1
        assert m.lambda_min == pytest.approx(min(diag), abs=1e-6)
    assert found.counts == {kind: 1}
    assert kind in repr(found) and "SliceMinimum" in repr(m)
    assert_model_unchanged(model, before)


def test_slice_minimum_off_the_slice_is_not_critical():
    problem, _ = known_problem(quadratic((1.0, 2.0, 3.0)), torch.zeros(3))
    center = {"theta": torch.tensor([0.0, 0.0, 1.0], dtype=F64)}
    dirs = axes_dirs(3, 0, 1)
    m = metrics.local_minima(plane(problem, center, dirs), problem, center=center, directions=dirs)[0]
    assert m.kind == "not critical" and m.index == 0
    assert m.grad_norm == pytest.approx(3.0, rel=1e-12)  # ∂L/∂θ₃ = 3·1, orthogonal to the slice
    assert m.grad_off_slice == pytest.approx(3.0, rel=1e-12)


def test_refinement_moves_a_grid_minimum_to_the_true_one():
    true = (0.13, -0.07, 0.0)
    problem, _ = known_problem(quadratic((1.0, 2.0, 3.0), true), torch.zeros(3))
    center, dirs = problem.params(), axes_dirs(3, 0, 1)
    ds = plane(problem, center, dirs)
    m = metrics.local_minima(ds, problem, center=center, directions=dirs)[0]
    assert m.coords == pytest.approx((0.2, 0.0))  # the nearest grid point (spacing 0.2)
    assert m.refined == pytest.approx(true[:2], abs=1e-12)
    assert m.kind == "minimum" and m.grad_norm < 1e-12 and m.point_loss == pytest.approx(0.0, abs=1e-20)
    raw = metrics.local_minima(ds, problem, center=center, directions=dirs, refine=False)[0]
    assert raw.kind == "not critical"  # the grid's offset is a real gradient: ‖A·(0.07, 0.07)‖
    assert raw.grad_norm == pytest.approx(math.hypot(0.07, 2 * 0.07), rel=1e-9)


def test_two_slice_minima_of_a_double_well_and_the_saddle_between():
    # L = (θ₁² − 1)² + θ₂² − θ₃²: slice (θ₁, θ₂) has minima at θ₁ = ±1, both saddles in full space
    f = lambda t: (t[0] ** 2 - 1) ** 2 + t[1] ** 2 - t[2] ** 2  # noqa: E731
    problem, _ = known_problem(f, torch.zeros(3))
    center, dirs = problem.params(), axes_dirs(3, 0, 1)
    ds = plane(problem, center, dirs, steps=21, span=2.0)
    found = metrics.local_minima(ds, problem, center=center, directions=dirs)
    assert sorted(m.coords for m in found) == [(-1.0, 0.0), (1.0, 0.0)]
    assert [m.kind for m in found] == ["saddle", "saddle"] and [m.index for m in found] == [1, 1]
    assert all(m.lambda_min == pytest.approx(-2.0) for m in found)


def test_centre_and_directions_read_back_from_a_store(tmp_path):
    problem, _ = known_problem(quadratic((1.0, 2.0, -3.0)), torch.zeros(3))
    center, dirs = problem.params(), axes_dirs(3, 0, 1)
    ds = plane(problem, center, dirs, store=tmp_path / "plane.zarr")
    m = metrics.local_minima(ds, problem)[0]
    assert m.kind == "saddle" and m.index == 1


def test_in_memory_surface_needs_centre_and_directions():
    problem, _ = known_problem(quadratic((1.0, 2.0)), torch.zeros(2))
    ds = plane(problem, problem.params(), axes_dirs(2, 0, 1))
    with pytest.raises(lossatlas.InvalidArgumentError, match="'center' and 'directions'"):
        metrics.local_minima(ds, problem)
    assert metrics.local_minima(ds).count == 1  # without a problem: slice minima only, unchecked
    assert "unchecked" in repr(metrics.local_minima(ds))


@given(st.integers(0, 2**32 - 1), st.integers(3, 9), st.integers(3, 9))
def test_strict_minima_are_minima_over_all_neighbours(seed, nx, ny):
    v = np.random.default_rng(seed).permutation(nx * ny).reshape(nx, ny).astype(float)
    found = set(strict_minima(v, boundary=True))
    for i in range(nx):
        for j in range(ny):
            nb = v[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
            assert ((i, j) in found) == (v[i, j] == nb.min())


# ---------------------------------------------------------------------------------------- non-convexity
def test_nonconvexity_fraction_of_saddle_and_bowl():
    x = np.linspace(-1, 1, 21)
    saddle = metrics.nonconvexity_fraction(grid2(lambda X, Y: X ** 2 - Y ** 2, x, x))
    bowl = metrics.nonconvexity_fraction(grid2(lambda X, Y: X ** 2 + Y ** 2, x, x))
    assert (saddle.fraction, saddle.fraction_half, saddle.resolution_error) == (1.0, 1.0, 0.0)
    assert (bowl.fraction, bowl.fraction_half, bowl.negative_fraction) == (0.0, 0.0, 0.0)
    assert saddle.points == 19 * 19 and saddle.indefinite == 361


@given(st.floats(-3, 3), st.floats(-3, 3), st.floats(-3, 3))
def test_nonconvexity_fraction_of_any_quadratic_is_the_sign_of_its_determinant(a, b, c):
    det = 4 * a * c - b * b  # Hessian [[2a, b], [b, 2c]]
    assume(abs(det) > 1e-3)
    x = np.linspace(-1, 1, 9)
    r = metrics.nonconvexity_fraction(grid2(lambda X, Y: a * X ** 2 + b * X * Y + c * Y ** 2, x, x))
    assert r.fraction == (1.0 if det < 0 else 0.0) == r.fraction_half


def test_nonconvexity_fraction_resolution_error_and_1d():
    x = np.linspace(-3, 3, 41)
    r = metrics.nonconvexity_fraction(grid2(lambda X, Y: np.sin(2 * X) * np.cos(2 * Y), x, x))
    assert 0 < r.fraction < 1 and r.resolution_error == abs(r.fraction - r.fraction_half)
    t = np.linspace(-1, 1, 21)
    one = metrics.nonconvexity_fraction(xr.Dataset({"loss": (("x",), t ** 3)}, coords={"x": t}))
    assert one.fraction == pytest.approx(9 / 19)  # 6t < 0 at the 9 interior points left of 0
    assert "NonConvexity(" in repr(r)


def test_nonconvexity_fraction_refuses_bad_grids():
    x = np.array([0.0, 0.1, 0.3, 0.6])
    with pytest.raises(lossatlas.InvalidArgumentError, match="'surface'.*uniform"):
        metrics.nonconvexity_fraction(grid2(lambda X, Y: X + Y, x, x))
    with pytest.raises(lossatlas.InvalidTypeError, match="'surface'"):
        metrics.nonconvexity_fraction(np.zeros((5, 5)))
    with pytest.raises(lossatlas.InvalidArgumentError, match="'tol'"):
        metrics.nonconvexity_fraction(grid2(lambda X, Y: X + Y, np.linspace(0, 1, 5), np.linspace(0, 1, 5)), tol=-1)
    nan = grid2(lambda X, Y: np.where(X == 0.5, np.nan, X), np.linspace(0, 1, 5), np.linspace(0, 1, 5))
    with pytest.raises(lossatlas.InvalidArgumentError, match="finite"):
        metrics.nonconvexity_fraction(nan)


# ------------------------------------------------------------------------------------------ basin width
@given(st.floats(0.5, 10), st.floats(0.01, 1.0))
def test_basin_width_of_a_parabola(a, delta):
    t = np.linspace(-3, 3, 601)
    w = metrics.basin_width(xr.Dataset({"loss": (("x",), 0.5 * a * t ** 2)}, coords={"x": t}), delta)
    exact = 2 * math.sqrt(2 * delta / a)
    assert abs(w.widths[0] - exact) <= w.errors[0] and w.errors[0] == pytest.approx(0.01)
    assert w.bounded == (True,)


def test_basin_width_along_each_direction_and_unbounded():
    x, y = np.linspace(-2, 2, 401), np.linspace(-2, 2, 201)
    w = metrics.basin_width(grid2(lambda X, Y: 0.5 * 1.0 * X ** 2 + 0.5 * 8.0 * Y ** 2, x, y), 0.25)
    assert w.widths == pytest.approx((2 * math.sqrt(0.5), 2 * math.sqrt(0.5 / 8)), abs=0.02)
    assert w.dims == ("x", "y") and "BasinWidth" in repr(w)
    flat = metrics.basin_width(grid2(lambda X, Y: 1e-3 * X ** 2 + Y ** 2, x, y), 0.5)
    assert flat.bounded == (False, True) and flat.widths[0] == pytest.approx(4.0)
    with pytest.raises(lossatlas.InvalidArgumentError, match="'delta'"):
        metrics.basin_width(grid2(lambda X, Y: X ** 2, x, y), 0.0)


# -------------------------------------------------------------------------------------------- topology
@pytest.mark.parametrize("backend", ["gudhi", "union-find"])
def test_double_well_has_two_basins_with_the_barrier_as_persistence(backend):
    pytest.importorskip("gudhi") if backend == "gudhi" else None
    x, y = np.linspace(-2, 2, 41), np.linspace(-1, 1, 21)
    topo = metrics.sublevel_persistence(grid2(lambda X, Y: (X ** 2 - 1) ** 2 + Y ** 2, x, y), backend=backend)
    assert topo.count == 2 and topo.backend == backend and topo.count_half == 2
    deep, shallow = topo.basins[:2]
    assert deep.death == math.inf and shallow.persistence == pytest.approx(1.0, abs=1e-12)  # barrier at (0, 0)
    assert {deep.at, shallow.at} == {(-1.0, 0.0), (1.0, 0.0)}
    # tilted: the shallow well's persistence is the barrier above it, measured on the grid's row y = 0
    tilt = lambda X, Y: (X ** 2 - 1) ** 2 + 0.3 * X + Y ** 2  # noqa: E731
    topo = metrics.sublevel_persistence(grid2(tilt, x, y), backend=backend)
    row = tilt(x, 0.0)
    left, right = int(np.argmin(row[:20])), 20 + int(np.argmin(row[20:]))
    assert topo.basins[0].at[0] == x[left] and topo.basins[1].at[0] == x[right]
    assert topo.basins[1].persistence == pytest.approx(row[left:right + 1].max() - row[right], abs=1e-12)
    # a high tau keeps only the deepest basin
    assert metrics.sublevel_persistence(grid2(tilt, x, y), tau=2.0, backend=backend).count == 1


@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(3, 8))
def test_gudhi_and_union_find_agree_and_count_strict_minima(seed, nx, ny):
    pytest.importorskip("gudhi")
    shape = (ny,) if nx == 1 else (nx, ny)
    v = np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape).astype(float)
    a = sorted((b, d) for b, d, _ in union_find_pairs(v))
    g = sorted((b, d) for b, d, _ in gudhi_pairs(v))
    assert a == g
    assert len(a) == len(strict_minima(v, boundary=True))


@given(st.integers(0, 2**32 - 1), st.integers(3, 8), st.integers(3, 8), st.integers(2, 5))
def test_gudhi_and_union_find_agree_with_ties(seed, nx, ny, levels):
    pytest.importorskip("gudhi")
    v = np.random.default_rng(seed).integers(0, levels, (nx, ny)).astype(float)  # plateaus and equal minima
    assert sorted((b, d) for b, d, _ in union_find_pairs(v)) == sorted((b, d) for b, d, _ in gudhi_pairs(v))


def test_topology_bad_inputs():
    with pytest.raises(lossatlas.InvalidArgumentError, match="'backend'"):
        metrics.sublevel_persistence(grid2(lambda X, Y: X, np.arange(3.0), np.arange(3.0)), backend="ripser")
    with pytest.raises(lossatlas.InvalidArgumentError, match="'surface'"):
        metrics.sublevel_persistence(xr.Dataset({"acc": (("x",), np.zeros(5))}, coords={"x": np.arange(5.0)}))


# -------------------------------------------------------------------------------------- Jensen rate
def test_jensen_rate_is_zero_for_a_convex_loss_and_one_for_a_concave_one():
    problem, model = known_problem(quadratic((1.0, 4.0, 0.5)), torch.tensor([0.3, -1.0, 2.0]))
    before = model_state(model)
    convex = metrics.jensen_rate(problem, radii=(0.01, 0.1, 1.0), segments=40, seed=0)
    assert [r.violations for r in convex] == [0, 0, 0]
    assert convex.rows[0].stderr == 0.0 and convex.rows[0].interval[1] == pytest.approx(0.0876, abs=1e-4)
    assert_model_unchanged(model, before)
    concave, _ = known_problem(lambda t: -(t ** 2).sum(), torch.tensor([0.3, -1.0, 2.0]))
    rows = metrics.jensen_rate(concave, radii=(0.01, 1.0), segments=20).rows
    assert [r.rate for r in rows] == [1.0, 1.0]


def test_jensen_rate_of_an_indefinite_quadratic_is_one_half():
    # J = −¼ ΔᵀAΔ with A = diag(2, −2): a violation iff Δ₂² > Δ₁², probability ½ by symmetry
    problem, _ = known_problem(lambda t: t[0] ** 2 - t[1] ** 2, torch.zeros(2))
    r = metrics.jensen_rate(problem, radii=(0.5,), segments=400, relative=False, seed=3).rows[0]
    assert abs(r.rate - 0.5) < 4 * math.sqrt(0.25 / 400)
    lo, hi = r.interval
    assert lo < r.rate < hi and r.stderr == pytest.approx(math.sqrt(r.rate * (1 - r.rate) / 400))
    again = metrics.jensen_rate(problem, radii=(0.5,), segments=400, relative=False, seed=3).rows[0]
    assert again == r  # same seed, same segments


def test_jensen_rate_bad_inputs():
    problem, _ = known_problem(quadratic((1.0, 1.0)), torch.zeros(2))
    with pytest.raises(lossatlas.InvalidArgumentError, match="'relative'"):
        metrics.jensen_rate(problem)
    with pytest.raises(lossatlas.InvalidArgumentError, match="'radii'"):
        metrics.jensen_rate(problem, radii=(0.1, -1.0), relative=False)
    with pytest.raises(lossatlas.InvalidArgumentError, match="'segments'"):
        metrics.jensen_rate(problem, segments=0, relative=False)
    with pytest.raises(lossatlas.InvalidTypeError, match="'seed'"):
        metrics.jensen_rate(problem, seed=1.5, relative=False)
    with pytest.raises(lossatlas.InvalidTypeError, match="'problem'"):
        metrics.jensen_rate("not a problem")
