"""Trajectories: the recorder writes to disk and holds nothing, reopens and resumes; PCA matches
scikit-learn; projections reproduce each checkpoint's in-plane component exactly."""
import gc
import json
import tracemalloc

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

import lossatlas
from lossatlas import examples
from lossatlas import params as P
from lossatlas.directions import Directions, pca
from lossatlas.trajectory import Trajectory, TrajectoryRecorder, project


def train_and_record(path, model, x, y, steps=12, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    with TrajectoryRecorder(path, **kw) as rec:
        for step in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            rec.record(model, step=step, loss=loss)
    return rec


def test_recorder_round_trip(classification, tmp_path):
    model, _, x, y = classification
    saved = []
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    rec = TrajectoryRecorder(tmp_path / "run")
    for step in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        assert rec.record(model, step=10 * step, lr=0.2)
        saved.append(lossatlas.params_of(model))
    traj = Trajectory.open(tmp_path / "run")
    assert len(traj) == len(rec) == 5 and traj.steps.tolist() == [0, 10, 20, 30, 40]
    assert traj.param_names == list(saved[0]) and traj.scalars["lr"].tolist() == [0.2] * 5
    for i, p in enumerate(saved):
        loaded = traj.load(i, traj.param_names)
        assert all(torch.equal(loaded[k], p[k]) for k in p)
    assert all(torch.equal(traj.final()[k], saved[-1][k]) for k in saved[-1])
    # each checkpoint is an ordinary state_dict file
    state = torch.load(tmp_path / "run" / "ckpt-000000.pt", weights_only=True)
    assert set(state) == set(dict(model.state_dict()))


def test_buffers_every_resume_overwrite(cnn_data, tmp_path):
    model, _, x, y = cnn_data
    rec = TrajectoryRecorder(tmp_path / "run", every=3)
    recorded = [rec.record(model) for _ in range(7)]
    assert recorded == [True, False, False, True, False, False, True]
    traj = rec.trajectory()
    assert traj.steps.tolist() == [0, 3, 6] and "bn.running_mean" in traj.load(0)
    with pytest.raises(lossatlas.StoreError, match="resume=True"):
        TrajectoryRecorder(tmp_path / "run")
    more = TrajectoryRecorder(tmp_path / "run", resume=True, every=3)
    with pytest.raises(lossatlas.InvalidArgumentError, match="larger than the last recorded step 6"):
        more.record(model, step=6)
    more.record(model, step=9)
    assert Trajectory.open(tmp_path / "run").steps.tolist() == [0, 3, 6, 9]
    with pytest.raises(lossatlas.ParameterMismatchError):
        more.record(torch.nn.Linear(2, 2), step=12)
    fresh = TrajectoryRecorder(tmp_path / "run", overwrite=True, buffers=False)
    fresh.record(model, step=0)
    assert len(fresh.trajectory()) == 1 and "bn.running_mean" not in fresh.trajectory().load(0)


def test_recorder_holds_nothing_between_calls(tmp_path):
    """Memory does not grow with the number of checkpoints (Python heap and live tensors)."""
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 4))
    checkpoint_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())  # ≈ 0.5 MB
    rec = TrajectoryRecorder(tmp_path / "run")

    def live_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) in (torch.Tensor, torch.nn.Parameter))

    for step in range(10):  # warm up (imports, torch's own caches)
        rec.record(model, step=step)
    tensors_before = live_tensors()
    tracemalloc.start()
    growth = []
    for window in (range(10, 60), range(60, 110)):
        gc.collect()  # torch.save leaves cyclic garbage (a pickler class per call) until the collector runs
        start, _ = tracemalloc.get_traced_memory()
        for step in window:
            with torch.no_grad():
                model[0].weight.add_(1e-3)
            rec.record(model, step=step)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
        growth.append(end - start)
    tracemalloc.stop()
    assert live_tensors() <= tensors_before
    # 50 more checkpoints (≈ 25 MB on disk) leave less than a tenth of one checkpoint in memory, in at
    # least one of two windows: a leak grows in both, while a one-off resize of a process-wide table
    # (e.g. the interned-strings dict, megabytes after a long test session) lands in one window only
    assert min(growth) < checkpoint_bytes / 10, (growth, checkpoint_bytes)
    assert len(rec) == 110 and len(list((tmp_path / "run").glob("ckpt-*.pt"))) == 110
    assert torch.equal(rec.trajectory().final()["0.weight"], model[0].weight)


def test_a_crash_mid_write_leaves_a_readable_recording(classification, tmp_path):
    model, _, x, y = classification
    rec = train_and_record(tmp_path / "run", model, x, y, steps=4)
    (tmp_path / "run" / ".ckpt-000004.pt.123.tmp").write_bytes(b"partial")
    with open(tmp_path / "run" / "index.jsonl", "a") as f:
        f.write('{"step": 4, "fi')  # a line cut short
    traj = Trajectory.open(tmp_path / "run")
    assert traj.steps.tolist() == [0, 1, 2, 3] and len(traj.scalars["loss"]) == 4
    assert len(rec) == 4


def test_directory_of_plain_checkpoints_in_natural_order(classification, tmp_path):
    model, *_ = classification
    for step in (2, 10, 1):
        with torch.no_grad():
            model.net[0].bias.fill_(step)
        torch.save({"state_dict": model.state_dict(), "epoch": step}, tmp_path / f"epoch_{step}.pt")
    traj = Trajectory.open(tmp_path)
    assert traj.steps.tolist() == [1, 2, 10]
    assert [float(traj.load(i)["net.0.bias"][0]) for i in range(3)] == [1.0, 2.0, 10.0]
    with pytest.raises(lossatlas.StoreError, match="checkpoint files"):
        Trajectory.open(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)


def synthetic(n=9, shapes=((6, 5), (6,), (3, 6)), seed=0):
    g = torch.Generator().manual_seed(seed)
    pts, theta = [], {f"p{i}": torch.randn(s, generator=g, dtype=torch.float64) for i, s in enumerate(shapes)}
    drift = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in theta.items()}
    for i in range(n):
        noise = {k: 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in theta.items()}
        pts.append({k: theta[k] + (1 - i / n) ** 2 * drift[k] + noise[k] for k in theta})
    return pts


def checkpoint_matrix(pts, names):
    m = np.stack([P.flatten({k: p[k] for k in names}).double().numpy() for p in pts])
    return m - m[-1]


def test_pca_matches_scikit_learn_on_the_checkpoint_matrix():
    pts = synthetic()
    d = pca(pts, n=3)
    sk = PCA(n_components=3, svd_solver="full").fit(checkpoint_matrix(pts, list(pts[0])))
    np.testing.assert_allclose(d.spec["explained_variance_ratio"], sk.explained_variance_ratio_, rtol=1e-10)
    np.testing.assert_allclose(d.spec["explained_variance"], sk.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(d.spec["singular_values"], sk.singular_values_, rtol=1e-10)
    comps = np.stack([P.flatten(v).numpy() for v in d])
    np.testing.assert_allclose(comps, sk.components_, atol=1e-10)  # same signs too
    assert d.spec["kind"] == "pca" and d.labels[0].startswith("PC1 (")
    # streamed in small blocks: the same numbers
    small = pca(pts, n=3, max_bytes=700)
    assert max(float((a[k] - b[k]).abs().max()) for a, b in zip(small, d) for k in a) < 1e-12


def test_pca_of_the_recorded_digits_run_matches_scikit_learn():
    traj = examples.mlp_digits_trajectory()
    problem = examples.load("mlp-digits").problem
    d = lossatlas.directions.pca(traj, n=2, like=problem)
    assert d[0]["0.weight"].dtype == problem.dtype
    names = problem.param_names
    sk = PCA(n_components=2, svd_solver="full").fit(checkpoint_matrix([traj.load(i, names) for i in range(len(traj))],
                                                                       names))
    np.testing.assert_allclose(d.spec["explained_variance_ratio"], sk.explained_variance_ratio_, rtol=1e-8)
    assert sum(d.spec["explained_variance_ratio"]) > 0.8
    proj = traj.project(d)
    assert proj.x.values[-1] == 0.0 and proj.y.values[-1] == 0.0 and proj.residual.values[-1] == 0.0
    assert proj.attrs["explained_variance_ratio"] == d.spec["explained_variance_ratio"]
    # the last checkpoint is the mlp-digits example's centre (same training run)
    final = traj.final(names)
    assert problem.loss(final) == pytest.approx(problem.loss(problem.params()), rel=1e-3)


def test_projection_reproduces_the_in_plane_component_exactly():
    """Non-orthonormal directions: θ_i = c + x_i d1 + y_i d2 + r_i with r_i ⟂ plane gives back (x_i, y_i)."""
    g = torch.Generator().manual_seed(1)
    shapes = {"w": (7, 4), "b": (7,)}
    rand = lambda: {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}  # noqa: E731
    center, d1 = rand(), rand()
    d2 = P.axpy(0.9, d1, P.scale(rand(), 0.3))  # strongly correlated with d1, different norm
    assert abs(P.cosine(d1, d2)) > 0.5
    xs, ys = np.linspace(-2, 3, 6), np.linspace(1.5, -0.5, 6)
    pts, residuals = [], []
    for x, y in zip(xs, ys):
        r = P.orthogonalise([d1, d2, rand()])[2]
        r = P.scale(r, 0.5 / P.norm(r))
        residuals.append(P.norm(r))
        pts.append(P.add(P.lincomb(center, [d1, d2], [x, y]), r))
    ds = project(pts, Directions([d1, d2]), center)
    np.testing.assert_allclose(ds.x.values, xs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.y.values, ys, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.residual.values, residuals, rtol=1e-10)
    # the fitted point is the orthogonal projection: the remainder is perpendicular to both directions
    for i, p in enumerate(pts):
        rem = P.sub(P.sub(p, center), P.lincomb(P.zeros_like(center), [d1, d2], [ds.x.values[i], ds.y.values[i]]))
        assert abs(P.dot(rem, d1)) < 1e-10 and abs(P.dot(rem, d2)) < 1e-10
    # a normalised dot product (what drawing with cosines does) would be off the plane's coordinates
    naive_x = [P.dot(P.sub(p, center), d1) / P.norm(d1) ** 2 for p in pts]
    assert np.max(np.abs(np.array(naive_x) - xs)) > 0.1


def test_a_fixed_plane_for_two_runs(classification, tmp_path):
    model, _, x, y = classification
    first = train_and_record(tmp_path / "sgd", model, x, y, steps=8).trajectory()
    torch.manual_seed(5)
    other = type(model)()
    second = train_and_record(tmp_path / "other", other, x, y, steps=8).trajectory()
    d = pca(first, n=2)
    center = first.final(first.param_names)
    p1, p2 = project(first, d, center), project(second, d, center)
    assert p1.attrs["directions_fingerprint"] == p2.attrs["directions_fingerprint"]
    assert p1.attrs["center_fingerprint"] == p2.attrs["center_fingerprint"]
    assert p2.residual.values.min() > 0 and "loss" in p2


def test_bad_inputs(tmp_path):
    pts = synthetic(n=4)
    with pytest.raises(lossatlas.InvalidArgumentError, match="'n'"):
        pca(pts, n=4)
    with pytest.raises(lossatlas.InvalidArgumentError, match="at least 2 checkpoints"):
        pca(pts[:1])
    with pytest.raises(lossatlas.InvalidTypeError, match="'trajectory'"):
        pca(42)
    with pytest.raises(lossatlas.InvalidArgumentError, match="'ignore'"):
        pca(pts, n=1, ignore=["p*"])
    with pytest.raises(lossatlas.InvalidArgumentError, match="spans fewer than 1 dimension"):
        pca([pts[0]] * 3, n=1)
    with pytest.raises(lossatlas.InvalidArgumentError, match="linearly independent"):
        project(pts, [pts[0], pts[0]], pts[1])
    with pytest.raises(lossatlas.ParameterMismatchError):
        project(pts, Directions([{"w": torch.zeros(2)}]))
    with pytest.raises(lossatlas.InvalidArgumentError, match="'every'"):
        TrajectoryRecorder(tmp_path / "r", every=0)
    with pytest.raises(lossatlas.InvalidArgumentError, match="'step'"):
        TrajectoryRecorder(tmp_path / "r2").record(torch.nn.Linear(2, 2), step=-1)
    with pytest.raises(lossatlas.InvalidTypeError, match="'model'"):
        TrajectoryRecorder(tmp_path / "r3").record("model")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(lossatlas.StoreError, match="new or empty"):
        TrajectoryRecorder(tmp_path / "busy")
    with pytest.raises(lossatlas.StoreError, match="directory"):
        Trajectory.open(tmp_path / "missing")


def test_ignore_biasbn_gives_zero_bias_directions():
    pts = synthetic()
    d = pca(pts, n=2, ignore="biasbn")
    assert float(d[0]["p1"].abs().sum()) == 0.0 and float(d[0]["p0"].abs().sum()) > 0
    sk = PCA(n_components=2, svd_solver="full").fit(checkpoint_matrix(pts, ["p0", "p2"]))
    np.testing.assert_allclose(d.spec["explained_variance_ratio"], sk.explained_variance_ratio_, rtol=1e-10)
    assert json.dumps(d.spec["ignored"]) == '["p1"]'
