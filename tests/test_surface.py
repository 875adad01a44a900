import json

import numpy as np
import pytest
import torch
import xarray as xr

import lossatlas
from lossatlas.grid import Grid
from lossatlas.testing import assert_close, naive_surface


def setup(classification, dtype=torch.float32, n=2, batches=None):
    model, loss_fn, x, y = classification
    data = batches if batches is not None else (x, y)
    pr = lossatlas.Problem(model, loss_fn, data, dtype=dtype)
    d = lossatlas.directions.random(pr, n=n, seed=0)
    return pr, d, model, loss_fn, x, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("exact_linear", [True, False])
def test_surface_equals_naive_evaluation(classification, dtype, strategy, exact_linear):
    pr, d, model, loss_fn, x, y = setup(classification, dtype)
    ds = lossatlas.surface(pr, None, d, steps=5, span=0.8, strategy=strategy, exact_linear=exact_linear,
                           progress=False, chunk=7)
    ref = naive_surface(model, loss_fn, [(x, y)], pr.params(), d.vectors, [ds.x.values, ds.y.values], dtype)
    assert_close(ds.loss.values, ref, dtype, what=f"{strategy} exact_linear={exact_linear}")


def test_linear_fold_is_active_for_first_layer(classification):
    pr, d, *_ = setup(classification)
    from lossatlas.evaluator import PointEvaluator

    before = pr._module.net[0].__dict__.get("forward")  # the private copy's own fast forward, if any
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop") as ev:
        assert ev.fold.active_layers == ["net.0"]
        assert pr._module.net[0].__dict__.get("forward") is not before
    # the patch is removed afterwards
    assert pr._module.net[0].__dict__.get("forward") is before


def test_fold_with_conv_first_layer_and_bn(cnn_data):
    model, loss_fn, x, y = cnn_data
    pr = lossatlas.Problem(model, loss_fn, (x, y), dtype=torch.float64, batch_size=16)
    d = lossatlas.directions.random(pr, n=2, seed=1)
    a = lossatlas.surface(pr, None, d, steps=3, progress=False, strategy="loop")
    b = lossatlas.surface(pr, None, d, steps=3, progress=False, strategy="loop", exact_linear=False)
    c = lossatlas.surface(pr, None, d, steps=3, progress=False, strategy="vmap")
    assert_close(a.loss.values, b.loss.values, torch.float64)
    assert_close(c.loss.values, b.loss.values, torch.float64)


def test_centre_equals_problem_loss_and_grid_is_symmetric(classification):
    pr, d, *_ = setup(classification)
    ds = lossatlas.surface(pr, None, d, steps=7, span=0.5, progress=False, strategy="loop")
    assert ds.x.values[3] == 0.0 and ds.y.values[3] == 0.0
    np.testing.assert_array_equal(ds.x.values, -ds.x.values[::-1])
    # the loop evaluates the centre exactly like problem.loss: bit-equal
    assert float(ds.loss.sel(x=0.0, y=0.0)) == pr.loss(pr.params())
    assert float(ds.accuracy.sel(x=0.0, y=0.0)) == pr.evaluate(pr.params())["accuracy"]
    # vmap batches the points (other GEMM kernels): equal up to rounding
    vm = lossatlas.surface(pr, None, d, steps=7, span=0.5, progress=False, strategy="vmap")
    assert_close(float(vm.loss.sel(x=0.0, y=0.0)), pr.loss(pr.params()), torch.float32)
    assert ds.x.attrs["long_name"] == "filter-normalised random direction 1"


def test_chunked_equals_unchunked(classification):
    pr, d, *_ = setup(classification, torch.float64)
    a = lossatlas.surface(pr, None, d, steps=6, progress=False, chunk=1, strategy="vmap")
    b = lossatlas.surface(pr, None, d, steps=6, progress=False, chunk=1000, strategy="vmap")
    c = lossatlas.surface(pr, None, d, steps=6, progress=False, strategy="loop")
    assert_close(a.loss.values, b.loss.values, torch.float64)
    assert_close(a.loss.values, c.loss.values, torch.float64)


def test_one_two_three_dimensions_and_spans(classification):
    model, loss_fn, x, y = classification
    pr = lossatlas.Problem(model, loss_fn, (x, y))
    d3 = lossatlas.directions.random(pr, n=3, seed=0)
    one = lossatlas.surface(pr, None, d3[0], steps=9, span=(-0.5, 1.5), progress=False)
    assert one.loss.dims == ("x",) and one.x.values[0] == -0.5 and one.x.values[-1] == 1.5
    assert 0.0 in one.x.values
    three = lossatlas.surface(pr, None, d3, steps=(3, 4, 5), span=[(-1, 1), (0, 1), (-2, 2)], progress=False)
    assert three.loss.dims == ("x", "y", "z") and three.loss.shape == (3, 4, 5)
    point = lossatlas.params.lincomb(pr.params(), d3.vectors, [1.0, 1 / 3, -1.0])
    assert_close(float(three.loss.isel(x=2, y=1, z=1)), pr.loss(point), torch.float32, factor=5)


def test_tensors_loader_and_dict_closure_give_the_same_surface(classification):
    model, loss_fn, x, y = classification
    from torch.utils.data import DataLoader, TensorDataset

    p1 = lossatlas.Problem(model, loss_fn, (x, y), dtype=torch.float64)
    p2 = lossatlas.Problem(model, loss_fn, DataLoader(TensorDataset(x, y), batch_size=17), dtype=torch.float64)
    p3 = lossatlas.Problem(model, None, [{"x": x[:30], "y": y[:30]}, {"x": x[30:], "y": y[30:]}],
                           closure=lambda call, b: loss_fn(call(b["x"]), b["y"]), dtype=torch.float64)
    d = lossatlas.directions.random(p1, n=2, seed=0)
    s = [lossatlas.surface(p, None, d, steps=5, progress=False, metrics=False) for p in (p1, p2, p3)]
    assert_close(s[1].loss.values, s[0].loss.values, torch.float64)
    assert_close(s[2].loss.values, s[0].loss.values, torch.float64)


def test_nan_and_inf_are_kept_and_counted():
    class Explode(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([1.0]))

        def forward(self, x):
            return torch.log(self.w) * x  # NaN for w < 0, -inf at w = 0

    x = torch.ones(4, 1)
    pr = lossatlas.Problem(Explode(), torch.nn.MSELoss(), (x, x), dtype=torch.float64)
    d = lossatlas.Directions([{"w": torch.tensor([1.0], dtype=torch.float64)}])
    ds = lossatlas.surface(pr, None, d, steps=5, span=2.0, progress=False)  # w = -1, 0, 1, 2, 3
    assert ds.attrs["nan_points"] == 1 and ds.attrs["inf_points"] == 1
    assert np.isnan(ds.loss.values[0]) and np.isinf(ds.loss.values[1])


def test_store_resume_reopen_and_xarray_reads_it(tmp_path, classification):
    pr, d, *_ = setup(classification, torch.float64)
    path = tmp_path / "s.zarr"
    ds = lossatlas.surface(pr, None, d, steps=7, progress=False, store=path, chunk=5)
    assert ds.attrs["complete"] == 1 and ds.attrs["points_done"] == 49
    again = lossatlas.open_surface(path)
    from lossatlas.grid_job import RUN_KEYS  # the figures of one call (seconds, ranks…), not of the values

    assert set(ds.attrs) == set(again.attrs) and again.attrs["seconds"] == 0.0
    def values(d):
        return d.drop_attrs(deep=False).assign_attrs({k: v for k, v in d.attrs.items() if k not in RUN_KEYS})

    xr.testing.assert_identical(values(ds), values(again))
    raw = xr.open_zarr(path, consolidated=False)
    np.testing.assert_array_equal(raw.loss.values, ds.loss.values)
    prov = json.loads(ds.attrs["provenance"])
    assert prov["direction_spec"]["seed"] == 0 and prov["center"] == lossatlas.params.fingerprint(pr.params())
    center, dirs = lossatlas.open_directions(path)
    assert dirs.fingerprint() == d.fingerprint()
    # rerun with the same arguments: nothing is recomputed, same values
    again2 = lossatlas.surface(pr, None, d, steps=7, progress=False, store=path)
    np.testing.assert_array_equal(again2.loss.values, ds.loss.values)


def test_partial_store_resumes_only_missing_chunks(tmp_path, classification, monkeypatch):
    pr, d, *_ = setup(classification, torch.float64)
    path = tmp_path / "s.zarr"
    full = lossatlas.surface(pr, None, d, steps=6, progress=False, chunk=6, strategy="loop")
    from lossatlas import runner

    calls = {"n": 0}
    original = runner.GridStore.write_chunk

    def flaky(self, chunk, values):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # interrupted after two chunks
        return original(self, chunk, values)

    monkeypatch.setattr(runner.GridStore, "write_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        lossatlas.surface(pr, None, d, steps=6, progress=False, store=path, chunk=6, strategy="loop")
    monkeypatch.setattr(runner.GridStore, "write_chunk", original)
    partial = lossatlas.open_surface(path)
    assert partial.attrs["points_done"] == 12 and partial.attrs["complete"] == 0
    counted = {"n": 0}

    def counting(self, chunk, values):
        counted["n"] += 1
        return original(self, chunk, values)

    monkeypatch.setattr(runner.GridStore, "write_chunk", counting)
    done = lossatlas.surface(pr, None, d, steps=6, progress=False, store=path)
    assert counted["n"] == 4
    np.testing.assert_array_equal(done.loss.values, full.loss.values)


def test_store_from_other_computation_is_refused(tmp_path, classification):
    pr, d, *_ = setup(classification)
    path = tmp_path / "s.zarr"
    lossatlas.surface(pr, None, d, steps=3, progress=False, store=path)
    other = lossatlas.directions.random(pr, n=2, seed=1)
    with pytest.raises(lossatlas.ProvenanceMismatchError, match="directions"):
        lossatlas.surface(pr, None, other, steps=3, progress=False, store=path)
    with pytest.raises(lossatlas.ProvenanceMismatchError, match="grid"):
        lossatlas.surface(pr, None, d, steps=5, progress=False, store=path)
    ds = lossatlas.surface(pr, None, other, steps=3, progress=False, store=path, overwrite=True)
    assert json.loads(ds.attrs["provenance"])["directions"] == other.fingerprint()


def test_lock_refuses_concurrent_writer(tmp_path, classification):
    pr, d, *_ = setup(classification)
    path = tmp_path / "s.zarr"
    lossatlas.surface(pr, None, d, steps=3, progress=False, store=path)
    from lossatlas.store import StoreLock

    holder = StoreLock.acquire(path, func="test")  # the writer lock run_grid takes
    try:
        with pytest.raises(lossatlas.StoreLockedError, match="pid"):
            lossatlas.surface(pr, None, d, steps=3, progress=False, store=path)
    finally:
        holder.release()


def test_overwrite_refuses_foreign_directories(tmp_path, classification):
    pr, d, *_ = setup(classification)
    foreign = tmp_path / "mydata"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(lossatlas.StoreError, match="not a lossatlas store"):
        lossatlas.surface(pr, None, d, steps=3, progress=False, store=foreign, overwrite=True)
    assert (foreign / "precious.txt").exists()


def test_grid_chunking_covers_every_point_once():
    g = Grid.make(2, (5, 7), 1.0)
    for pts in (1, 3, 7, 10, 35, 100):
        layout = g.chunks(g.chunk_shape_for(pts))
        seen = np.zeros(g.shape, dtype=int)
        for c in layout:
            seen[layout.index(c)] += 1
        assert (seen == 1).all()


def test_auto_strategy_skips_timing_on_small_grids(classification, monkeypatch):
    """Below AUTO_MIN_POINTS (256) points "auto" means "loop": timing both strategies would cost more than the grid."""
    from lossatlas.evaluator import AUTO_MIN_POINTS, PointEvaluator

    pr, d, *_ = setup(classification)
    probes = []
    monkeypatch.setattr(PointEvaluator, "_choose", lambda self: probes.append(1) or "loop")
    small = lossatlas.surface(pr, None, d, steps=7, progress=False)
    assert small.attrs["strategy"] == "loop" and probes == []
    lossatlas.surface(pr, None, d, steps=int(AUTO_MIN_POINTS ** 0.5) + 1, progress=False)
    assert probes == [1]
