"""Warm-started |λmin/λmax| maps (issue 17): each point but a chunk's first starts from its nearest
predecessor's Ritz vectors; a chunk's result depends on the chunk alone (ranks, resumes)."""
import json

import numpy as np
import pytest
import torch

import lossatlas
from lossatlas import curvature as C
from lossatlas.curvature import ratio as ratio_module


@pytest.fixture
def small():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    problem = lossatlas.Problem(net, torch.nn.MSELoss(), (x, x[:, :1] * x[:, 1:2] - x[:, 2:]))
    return problem, lossatlas.directions.random(problem, n=2, seed=0)


@pytest.mark.slow
def test_warm_map_matches_the_exact_spectrum_with_fewer_products(small):
    problem, d = small
    kw = dict(steps=4, span=0.3, tol=1e-6, progress=False)
    warm = C.ratio_map(problem, None, d, **kw)
    cold = C.ratio_map(problem, None, d, **kw, warm_start=False)
    assert json.loads(warm.attrs["provenance"])["eigen"]["start"] == "warm-neighbours"
    assert "start" not in json.loads(cold.attrs["provenance"])["eigen"]  # as stores made before warm starts
    assert warm.products.values.sum() < cold.products.values.sum()
    for i, a in enumerate(warm.x.values):
        for j, b in enumerate(warm.y.values):
            theta = lossatlas.params.lincomb(problem.params(), d.vectors, [a, b])
            exact = torch.linalg.eigvalsh(C.hessian_operator(problem, theta).dense()).numpy()
            point = warm.isel(x=i, y=j)
            assert float(point.converged) == 1.0
            assert abs(float(point.lambda_max) - exact[-1]) <= 1e-5 * exact[-1]
            assert abs(float(point.lambda_min) - exact[0]) <= 1e-5 * exact[-1]


@pytest.mark.slow
def test_cold_points_are_the_eigenvalues_call_and_each_chunk_starts_cold(small):
    problem, d = small
    kw = dict(steps=4, span=0.3, tol=1e-4, progress=False)
    cold = C.ratio_map(problem, None, d, **kw, warm_start=False)
    theta = lossatlas.params.lincomb(problem.params(), d.vectors, [float(cold.x[1]), float(cold.y[2])])
    e = C.eigenvalues(problem, theta, which="both", tol=1e-4, max_products=500, certify=False, progress=False)
    assert float(cold.lambda_max[1, 2]) == e.values[0] and float(cold.lambda_min[1, 2]) == e.values[-1]
    warm = C.ratio_map(problem, None, d, **kw, chunk=4)  # chunks: the rows (1, 4)
    assert list(json.loads(warm.attrs["provenance"])["chunk_shape"]) == [1, 4]
    for v in ("lambda_min", "lambda_max", "products"):  # the first point of each row: a cold start
        np.testing.assert_array_equal(warm[v].values[:, 0], cold[v].values[:, 0])
    assert (warm.products.values[:, 1:] < cold.products.values[:, 1:]).mean() > 0.5


def test_a_chunk_evaluated_alone_gives_the_same_bits(small):
    """What a rank or a resume does: a chunk computed by itself equals the same chunk in a whole run."""
    problem, d = small
    whole = C.ratio_map(problem, None, d, steps=4, span=0.3, tol=1e-4, chunk=8, progress=False)
    names = tuple(problem.params())
    grid = lossatlas.grid.Grid.make(2, 4, 0.3)
    evaluate = ratio_module._PointCurvature(problem, problem.params(), d, names, kind="hessian", tol=1e-4, seed=0,
                                            max_products=500, basis=None, warm_start=True,
                                            unit=ratio_module._steps_of(grid))
    xs, ys = whole.x.values, whole.y.values
    second = np.array([[xs[i], ys[j]] for i in (2, 3) for j in range(4)])  # the second chunk (2, 4)
    out = evaluate(second)
    for v in ratio_module.VARIABLES:
        np.testing.assert_array_equal(out[v], whole[v].values[2:].reshape(-1))


def test_ratio_map_pins_threads_and_checks_warm_start(small):
    problem, d = small
    ds = C.ratio_map(problem, None, d, steps=2, span=0.3, progress=False)
    assert json.loads(ds.attrs["provenance"])["threads"] == torch.get_num_threads()
    with pytest.raises(TypeError, match="warm_start"):
        C.ratio_map(problem, None, d, steps=2, progress=False, warm_start="yes")


def test_cold_store_is_the_old_format_and_a_warm_resume_is_refused_by_name(small, tmp_path):
    """A store made before warm starts existed had no eigen 'start' entry: warm_start=False writes the
    same, so such a store resumes; the new default refuses it, naming what differs and what to do."""
    problem, d = small
    path = tmp_path / "cold.zarr"
    cold = C.ratio_map(problem, None, d, steps=2, span=0.3, progress=False, warm_start=False, store=path)
    again = C.ratio_map(problem, None, d, steps=2, span=0.3, progress=False, warm_start=False, store=path)
    np.testing.assert_array_equal(cold.ratio.values, again.ratio.values)
    with pytest.raises(lossatlas.errors.ProvenanceMismatchError, match=r"eigen.*overwrite=True"):
        C.ratio_map(problem, None, d, steps=2, span=0.3, progress=False, store=path)


def test_warm_start_sums_the_neighbours_sign_aligned_and_ignores_far_points():
    g = torch.Generator().manual_seed(0)
    vec = [torch.randn(6, generator=g, dtype=torch.float64) for _ in range(6)]
    unit = np.array([0.5, 0.5])
    c = np.array([0.5, 0.5])
    left, above, far = np.array([0.5, 0.0]), np.array([0.0, 0.5]), np.array([-0.5, -0.5])
    done = [(far, (vec[4], vec[5])), (above, (vec[2], vec[3])), (left, (vec[0], vec[1]))]
    start = ratio_module._warm_start(c, done, unit)

    def unit_sum(a, b):
        s = a + (b if float(a @ b) >= 0 else -b)  # both at one grid step: weight 1
        return s / s.norm()

    expected = unit_sum(vec[0], vec[2]) + unit_sum(vec[1], vec[3])  # the far point (2√2 steps) is left out
    torch.testing.assert_close(start, expected, rtol=1e-15, atol=1e-15)
    flipped = [(far, (vec[4], vec[5])), (above, (-vec[2], -vec[3])), (left, (vec[0], vec[1]))]
    torch.testing.assert_close(ratio_module._warm_start(c, flipped, unit), start, rtol=1e-15, atol=1e-15)
    alone = ratio_module._warm_start(c, [(far, (vec[4], vec[5]))], unit)  # only a far point: the nearest counts
    torch.testing.assert_close(alone, vec[4] / vec[4].norm() + vec[5] / vec[5].norm(), rtol=1e-15, atol=1e-15)


def _killed_after(points: int, problem, d, kw, store, monkeypatch) -> None:
    """A ratio map into ``store`` interrupted (KeyboardInterrupt) when ``points`` points are done."""
    original = ratio_module._PointCurvature.point
    calls = []

    def failing(self, c, *args):
        if len(calls) == points:
            raise KeyboardInterrupt
        calls.append(tuple(c))
        return original(self, c, *args)

    monkeypatch.setattr(ratio_module._PointCurvature, "point", failing)
    with pytest.raises(KeyboardInterrupt):
        C.ratio_map(problem, None, d, **kw, store=store)
    monkeypatch.setattr(ratio_module._PointCurvature, "point", original)


def test_a_warm_map_killed_and_resumed_gives_the_same_bits(small, tmp_path, monkeypatch):
    """Chunks of two rows (points with three neighbours above and one before): a kill at the start of
    the second chunk and a resume give the values of an uninterrupted run, bit for bit."""
    problem, d = small
    kw = dict(steps=3, span=0.3, tol=1e-4, chunk=6, progress=False)
    reference = C.ratio_map(problem, None, d, **kw)
    assert list(json.loads(reference.attrs["provenance"])["chunk_shape"]) == [2, 3]
    _killed_after(6, problem, d, kw, tmp_path / "warm.zarr", monkeypatch)
    assert lossatlas.open_surface(tmp_path / "warm.zarr").attrs["points_done"] == 6
    done = C.ratio_map(problem, None, d, **kw, store=tmp_path / "warm.zarr")
    for v in ratio_module.VARIABLES:
        np.testing.assert_array_equal(done[v].values, reference[v].values)


def test_a_store_made_with_the_older_nearest_point_rule_resumes_with_it(small, tmp_path, monkeypatch):
    """Stores made before the neighbour rule recorded eigen.start = "warm" (the nearest point's ymax + ymin):
    resumed by today's default they keep that rule, so their bytes equal an uninterrupted run of it."""
    problem, d = small
    kw = dict(steps=3, span=0.3, tol=1e-4, chunk=6, progress=False)
    monkeypatch.setattr(ratio_module, "START_RULE", "warm")
    older = C.ratio_map(problem, None, d, **kw)
    assert json.loads(older.attrs["provenance"])["eigen"]["start"] == "warm"
    _killed_after(6, problem, d, kw, tmp_path / "old.zarr", monkeypatch)
    monkeypatch.setattr(ratio_module, "START_RULE", "warm-neighbours")  # today's default resumes it
    done = C.ratio_map(problem, None, d, **kw, store=tmp_path / "old.zarr")
    assert json.loads(done.attrs["provenance"])["eigen"]["start"] == "warm"
    for v in ratio_module.VARIABLES:
        np.testing.assert_array_equal(done[v].values, older[v].values)
    today = C.ratio_map(problem, None, d, **kw)
    assert json.loads(today.attrs["provenance"])["eigen"]["start"] == "warm-neighbours"
    assert not np.array_equal(today["products"].values, older["products"].values) or \
        not np.array_equal(today["lambda_min"].values, older["lambda_min"].values)  # the rules differ
    # a new store, and overwrite=True, use today's rule
    fresh = C.ratio_map(problem, None, d, **kw, store=tmp_path / "old.zarr", overwrite=True)
    assert json.loads(fresh.attrs["provenance"])["eigen"]["start"] == "warm-neighbours"


def test_the_older_rule_is_the_nearest_points_two_vectors_as_they_are():
    g = torch.Generator().manual_seed(1)
    a, b, c2, d2 = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4))
    done = [(np.array([0.0, 0.0]), (a, b)), (np.array([0.0, 0.5]), (c2, d2))]
    start = ratio_module._warm_start(np.array([0.0, 1.0]), done, np.array([0.5, 0.5]), radius=None)
    assert torch.equal(start, c2 + d2)
