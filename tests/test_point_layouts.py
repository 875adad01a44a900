"""The loop's two point layouts (``lossatlas.params._points``) give the bits of the flat formation
the loop used before them (kept below as the oracle) on several model families and dtypes, and the
big-model layout holds only the point and one slice of scratch."""

import numpy as np
import pytest
import torch

from lossatlas.evaluator import PointEvaluator, point_dtype
from lossatlas.params import _points

from _zoo import FAMILIES, random_directions

FAMILY_NAMES = ["mlp-tanh", "cnn-bn-eval", "cnn-bn-recalibrate", "frozen-features", "partially-frozen-first-layer",
                "tied-weights", "shared-layer-twice", "transformer-encoder", "embedding"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
# zeros of both signs, a repeated first coefficient (the flat layout's row cache)
COEFFS = [(0.5, -0.25), (0.5, 0.0), (0.5, -0.0), (0.0, 0.75), (-0.0, 0.0), (-1.25, 1e-3), (-1.25, 2.0)]


def _todays_points(center, directions, dtype, coefficients):
    """The loop's formation before the layouts (commit faad3d7), as the oracle: θ and the directions
    flattened in the point dtype, ((θ + a₁d₁) + a₂d₂) with separately rounded products."""
    pdt = point_dtype(dtype)
    base = torch.cat([t.reshape(-1).to(pdt) for t in center])
    dirs = [torch.cat([d.reshape(-1).to(pdt) for d in ds]) for ds in directions]
    out = []
    for c in coefficients:
        flat = base.clone()
        for j, a in enumerate(c):
            if a != 0.0:
                flat = flat + torch.mul(dirs[j], a)
        parts, s = [], 0
        for t in center:
            parts.append(flat[s:s + t.numel()].view(t.shape).to(dtype))
            s += t.numel()
        out.append(parts)
    return out


def _inputs(name, dtype):
    case = FAMILIES[name]()
    problem = case.problem("one", dtype)
    center = problem.params(copy=False)
    return problem, center, random_directions(center, 2, seed=3)


@pytest.mark.parametrize("layout", ["flat", "tensors", "tensors-chunked"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_layouts_give_todays_bits(name, dtype, layout, monkeypatch):
    if layout == "tensors-chunked":
        monkeypatch.setattr(_points, "CHUNK", 7)  # many slices, and a ragged last one
    _, center, dirs = _inputs(name, dtype)
    keys = list(center)
    theta, ds = [center[k] for k in keys], [[d[k] for k in keys] for d in dirs]
    cls = _points.FlatPoints if layout == "flat" else _points.TensorPoints
    points = cls(theta, ds, dtype, point_dtype(dtype))
    for c, want in zip(COEFFS, _todays_points(theta, ds, dtype, COEFFS)):
        points.form(c)
        for k, b, w in zip(keys, points.bound, want):
            assert b.dtype == dtype and b.shape == w.shape
            assert torch.equal(b, w), (name, dtype, layout, c, k)


def test_one_direction_and_no_direction():
    _, center, dirs = _inputs("cnn-bn-eval", torch.float32)
    theta = list(center.values())
    for cls in (_points.FlatPoints, _points.TensorPoints):
        one = cls(theta, [list(dirs[0].values())], torch.float32, torch.float32)
        one.form((3.0,))
        want = _todays_points(theta, [list(dirs[0].values())], torch.float32, [(3.0,)])[0]
        assert all(torch.equal(b, w) for b, w in zip(one.bound, want))
        none = cls(theta, [], torch.float32, torch.float32)
        none.form(())
        assert all(torch.equal(b, t) for b, t in zip(none.bound, theta))


def test_non_contiguous_parameters_are_formed_whole(monkeypatch):
    monkeypatch.setattr(_points, "CHUNK", 5)
    g = torch.Generator().manual_seed(0)
    theta = [torch.randn(6, 4, generator=g).t(), torch.randn(3, 5, generator=g)]  # the first transposed
    ds = [[torch.randn(t.shape, generator=g) for t in theta] for _ in range(2)]
    for dtype in (torch.float32, torch.bfloat16):
        th = [t.to(dtype) for t in theta]
        dd = [[d.to(dtype) for d in x] for x in ds]
        points = _points.TensorPoints(th, dd, dtype, point_dtype(dtype))
        points.form((0.3, -0.7))
        want = _todays_points(th, dd, dtype, [(0.3, -0.7)])[0]
        assert all(torch.equal(b, w) for b, w in zip(points.bound, want))


def test_flat_views_are_aligned():
    _, center, dirs = _inputs("transformer-encoder", torch.float32)
    theta = list(center.values())
    points = _points.FlatPoints(theta, [list(d.values()) for d in dirs], torch.float32, torch.float32)
    base = points.flat.data_ptr()
    assert all((b.data_ptr() - base) % _points.ALIGN == 0 for b in points.bound)
    assert base % _points.ALIGN == 0


def test_big_model_layout_holds_the_point_and_one_slice(monkeypatch):
    monkeypatch.setattr(_points, "CHUNK", 1000)
    theta = [torch.zeros(40, 100), torch.zeros(7), torch.zeros(30, 90)]
    ds = [[torch.ones_like(t) for t in theta] for _ in range(2)]
    for dtype, extra in ((torch.float32, 1), (torch.bfloat16, 2)):
        th = [t.to(dtype) for t in theta]
        dd = [[d.to(dtype) for d in x] for x in ds]
        points = _points.TensorPoints(th, dd, dtype, point_dtype(dtype))
        own = sum(t.numel() * t.element_size() for t in points.bound)
        scratch = [t for t in (points.product, points.sum) if t is not None]
        assert own == sum(t.numel() * t.element_size() for t in th)
        assert len(scratch) == extra and all(t.numel() == 1000 for t in scratch)
        assert all(t.numel() == 0 or t.data_ptr() not in {d.data_ptr() for x in dd for d in x} for t in points.bound)


def test_former_picks_by_size(monkeypatch):
    theta, ds = [torch.zeros(10, 10)], [[torch.zeros(10, 10)]]
    monkeypatch.setattr(_points, "FLAT_MAX_BYTES", 400)
    assert isinstance(_points.former(theta, ds, torch.float32, torch.float32), _points.FlatPoints)
    # a bfloat16 model of 200 bytes forms its points in 400 bytes of float32: still flat
    assert isinstance(_points.former([theta[0].bfloat16()], [[ds[0][0].bfloat16()]], torch.bfloat16,
                                     torch.float32), _points.FlatPoints)
    monkeypatch.setattr(_points, "FLAT_MAX_BYTES", 399)
    assert isinstance(_points.former(theta, ds, torch.float32, torch.float32), _points.TensorPoints)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_loop_values_do_not_depend_on_the_layout(name, dtype, monkeypatch):
    problem, center, dirs = _inputs(name, dtype)
    coefficients = np.array([[a, b] for a in (-0.6, 0.0, 0.45) for b in (-0.3, -0.0, 0.8)])
    out = {}
    for layout, limit in (("flat", 1 << 40), ("tensors", -1)):
        monkeypatch.setattr(_points, "FLAT_MAX_BYTES", limit)
        monkeypatch.setattr(_points, "CHUNK", 11)
        with PointEvaluator(problem, center, dirs, strategy="loop") as ev:
            out[layout] = ev(coefficients)
    for k in out["flat"]:
        np.testing.assert_array_equal(out["flat"][k], out["tensors"][k], err_msg=f"{name} {dtype} {k}")


@pytest.mark.parametrize("layout", ["flat", "tensors"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_the_former_kept_across_chunks_gives_a_fresh_evaluators_bits(name, dtype, layout, monkeypatch):
    """PointEvaluator makes its point former once and reuses it chunk after chunk (the flat layout's
    row cache too: a chunk may start with the row the last one ended in): each chunk's values are those
    of a fresh evaluator given that chunk alone."""
    if layout == "tensors":
        monkeypatch.setattr(_points, "FLAT_MAX_BYTES", -1)
    problem, center, dirs = _inputs(name, dtype)
    coefficients = np.array([[a, b] for a in (-0.6, 0.0, 0.45) for b in (-0.3, -0.0, 0.8)] + [[0.45, 0.1]])
    chunks = [coefficients[:2], coefficients[2:5], coefficients[5:], coefficients[3:4], coefficients[:2]]
    with PointEvaluator(problem, center, dirs, strategy="loop") as ev:
        got = [ev(c) for c in chunks]
        former = ev._points
        assert isinstance(former, _points.FlatPoints if layout == "flat" else _points.TensorPoints)
        ev(chunks[0])
        assert ev._points is former  # made once
    assert ev._points is None  # dropped on close
    for c, values in zip(chunks, got):
        with PointEvaluator(problem, center, dirs, strategy="loop") as fresh:
            want = fresh(c)
        for k in want:
            np.testing.assert_array_equal(values[k], want[k], err_msg=f"{name} {dtype} {layout} {k}")


def test_the_former_is_dropped_before_vmap():
    problem, center, dirs = _inputs("mlp-tanh", torch.float32)
    c = np.array([[0.1, 0.2], [0.3, -0.4]])
    with PointEvaluator(problem, center, dirs, strategy="loop") as ev:
        loop = ev(c)
        assert ev._points is not None
        ev.strategy, ev.vmap_batch = "vmap", 2
        ev(c)
        assert ev._points is None
        ev.strategy = "loop"
        np.testing.assert_array_equal(ev(c)["loss"], loop["loss"])
