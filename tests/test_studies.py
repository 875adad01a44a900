"""Studies at a tiny size (every study, caching and resume, shared scales, the targets verdicts),
curvature along a trajectory against direct eigenvalue calls, and surfaces with a standard error."""

import json
import math

import numpy as np
import pytest
import torch

import lossatlas
from lossatlas import studies
from lossatlas.studies import COLUMNS, run_study

def _has_fashion():
    from lossatlas.examples._data import FASHION_DIR

    return (FASHION_DIR / "train-images-idx3-ubyte.gz").exists()


NAMES = ["depth", "skip", "width", "batch-size", "trajectory", "activation", "targets"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    return {name: run_study(name, root / name, size="tiny") for name in NAMES}, root


def test_registry_lists_every_study():
    assert set(NAMES) <= set(studies.names())
    for s in studies.REGISTRY.values():
        assert s.description and s.question
        assert set(s.configs) == {"tiny", "quick", "full"}


@pytest.mark.parametrize("name", NAMES)
def test_every_study_writes_table_and_figures(tiny, name):
    results, root = tiny
    r = results[name]
    out = root / name
    assert (out / "table.csv").exists() and (out / "summary.md").exists()
    table = json.loads((out / "table.json").read_text())
    assert table["study"] == name and len(table["rows"]) == len(r.rows) >= 1
    for row in table["rows"]:
        assert set(COLUMNS) <= set(row)
        assert row["verdict"] in ("no violation found", "non-convex (proven)")
        assert 0.0 <= row["nonconvexity"] <= 1.0
        assert row["minima"] >= row["minima_real"] + row["minima_saddle"]
        assert 0.0 <= row["train_acc"] <= 1.0
    header = (out / "table.csv").read_text().splitlines()[0].split(",")
    assert header[:len(COLUMNS)] == COLUMNS
    for fig in r.figures:
        assert (out / fig).stat().st_size > 1000


@pytest.mark.parametrize("name", NAMES)
def test_planes_share_one_colour_scale(tiny, name):
    r = tiny[0][name]
    drawn = r.scales["planes"]["drawn"]
    assert len(drawn) == len(r.rows)
    assert len({(d["vmin"], d["vmax"]) for d in drawn}) == 1
    lo = min(float(np.nanmin(row_plane)) for row_plane in _planes(tiny[1] / name))
    assert drawn[0]["vmin"] == pytest.approx(lo)


def _planes(out):
    for f in (out / "metrics").glob("*.json"):
        yield np.asarray(json.loads(f.read_text())["plane"]["loss"], dtype=float)


def test_depth_study_has_the_convex_end(tiny):
    rows = {r["model"]: r for r in tiny[0]["depth"].rows}
    assert rows["linear (depth 1)"]["verdict"] == "no violation found"
    assert rows["linear (depth 1)"]["nonconvexity"] == 0.0
    assert rows["depth 2"]["verdict"] == "non-convex (proven)"


def test_targets_verdicts(tiny):
    rows = {r["model"]: r for r in tiny[0]["targets"].rows}
    for targets in ("easy", "hard"):
        assert rows[f"linear + BCE, {targets}"]["verdict"] == "no violation found"
        assert rows[f"sigmoid + MSE, {targets}"]["verdict"] == "non-convex (proven)"
        assert rows[f"1-hidden + BCE, {targets}"]["verdict"] == "non-convex (proven)"


def test_second_run_trains_and_measures_nothing(tiny):
    results, root = tiny
    again = run_study("depth", root / "depth", size="tiny")
    assert again.trained == [] and len(again.cached) == len(again.rows)
    assert len(again.metrics_cached) == len(again.rows)
    assert [r["train_acc"] for r in again.rows] == [r["train_acc"] for r in results["depth"].rows]


def test_changed_config_retrains_only_what_changed(tiny):
    results, root = tiny
    cfg = studies.REGISTRY["depth"].config("tiny")
    cfg["depths"] = [1, 2, 3]                      # one new member, the others as before
    r = run_study("depth", root / "depth", config=cfg)
    assert r.trained == ["depth 3"]
    cfg["train"]["epochs"] += 1                    # every member's training changes
    r = run_study("depth", root / "depth", config=cfg)
    assert sorted(r.trained) == sorted(m["model"] for m in r.rows)


def test_interrupted_study_reruns_only_what_is_missing(tiny, tmp_path):
    results, root = tiny
    import shutil

    out = tmp_path / "width"
    shutil.copytree(root / "width", out)
    model_files = sorted((out / "models").glob("*.pt"))
    model_files[0].unlink()                        # as if interrupted before this model was saved
    r = run_study("width", out, size="tiny")
    assert len(r.trained) == 1 and len(r.cached) == len(r.rows) - 1


def test_gallery_page_from_the_tables(tiny, tmp_path):
    from lossatlas.studies.gallery import ORDER, findings, write_gallery

    results, root = tiny
    page = write_gallery(root, tmp_path / "docs", run=False).read_text()
    assert "## What reproduces at this scale" in page and "## Time of each quick study" in page
    for name in ORDER:
        assert f"## `{name}`" in page and f"| {name} |" in page
        for fig in results[name].figures:
            assert (tmp_path / "docs" / "images" / "studies" / f"{name}-{fig}").exists()
    claims = []
    lines = findings("skip", results["skip"].rows, {}, claims)
    assert lines[0].startswith("Training: lowest training accuracy")
    s, n = sorted(results["skip"].rows, key=lambda r: not r["shortcuts"])[:2]
    assert claims[0][2] == (n["nonconvexity"] > s["nonconvexity"])      # the flag is the numbers' comparison
    assert f"{s['nonconvexity']:.3f} with vs {n['nonconvexity']:.3f} without" == claims[0][3]
    assert claims[1][2] == (n["minima"] > s["minima"])


def test_config_hash_is_canonical():
    assert studies.config_hash({"a": 1, "b": [1, 2]}) == studies.config_hash({"b": [1, 2], "a": 1})
    assert studies.config_hash({"a": 1}) != studies.config_hash({"a": 2})


def test_cli_lists_and_runs(tmp_path):
    from typer.testing import CliRunner

    from lossatlas.cli import app

    res = CliRunner().invoke(app, ["study", "--list"])
    assert res.exit_code == 0
    for name in NAMES:
        assert name in res.output
    from lossatlas.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["study", "nope"])
    assert exc.value.code == 2
    res = CliRunner().invoke(app, ["study", "targets", "--tiny", "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "t" / "table.csv").exists() and "targets (tiny)" in res.output


# --------------------------------------------------------------------------- curvature along a trajectory

def _toy_problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    x = torch.randn(40, 3, dtype=torch.float64)
    return lossatlas.Problem(net, torch.nn.MSELoss(), (x, torch.sin(x[:, :1]) * x[:, 1:2]))


def test_curvature_along_trajectory_matches_direct_calls(tmp_path):
    problem = _toy_problem()
    theta = problem.params()
    g = torch.Generator().manual_seed(1)
    points = [{k: v + 0.3 * i * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in theta.items()}
              for i in range(4)]
    with lossatlas.TrajectoryRecorder(tmp_path / "run") as rec:
        for i, p in enumerate(points):
            rec.record(p, step=10 * i)
    ds = lossatlas.curvature.along_trajectory(problem, tmp_path / "run", lr=0.5, trace_probes=0)
    assert ds["step"].values.tolist() == [0, 10, 20, 30]
    assert ds.attrs["threshold"] == pytest.approx(4.0)
    for i, p in enumerate(points):
        eig = lossatlas.curvature.eigenvalues(problem, p, k=1, which="both", dtype=torch.float64, progress=False)
        assert ds["lambda_max"].values[i] == pytest.approx(float(eig.values[0]), rel=1e-6)
        assert ds["lambda_min"].values[i] == pytest.approx(float(eig.values[-1]), rel=1e-6, abs=1e-9)
        H = torch.autograd.functional.hessian(lambda w: _flat_loss(problem, p, w), _flat(p))
        ev = torch.linalg.eigvalsh(H)
        assert ds["lambda_max"].values[i] == pytest.approx(float(ev[-1]), rel=1e-6)
        assert ds["lambda_min"].values[i] == pytest.approx(float(ev[0]), rel=1e-6, abs=1e-9)
    sub = lossatlas.curvature.along_trajectory(problem, points, indices=[-1], trace_probes=40, seed=2)
    direct = lossatlas.curvature.trace(problem, points[-1], probes=40, seed=2, dtype=torch.float64, progress=False)
    assert sub["trace"].values[0] == pytest.approx(direct.value, rel=1e-12)
    assert sub["trace_stderr"].values[0] == pytest.approx(direct.stderr, rel=1e-12)
    exact_trace = float(torch.trace(torch.autograd.functional.hessian(
        lambda w: _flat_loss(problem, points[-1], w), _flat(points[-1]))))
    assert abs(sub["trace"].values[0] - exact_trace) <= 4 * sub["trace_stderr"].values[0] + 1e-9
    fig = lossatlas.plot.edge_of_stability(ds)
    assert any("2/η" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def _flat(p):
    return torch.cat([v.reshape(-1) for v in p.values()])


def _flat_loss(problem, like, w):
    out, i = {}, 0
    for k, v in like.items():
        out[k] = w[i:i + v.numel()].reshape(v.shape)
        i += v.numel()
    return problem.evaluate_tensors(out, metrics=False)["loss"]


def test_curvature_along_trajectory_rejects_bad_input():
    problem = _toy_problem()
    with pytest.raises(lossatlas.InvalidArgumentError):
        lossatlas.curvature.along_trajectory(problem, [problem.params()], every=0)
    with pytest.raises(lossatlas.InvalidArgumentError):
        lossatlas.curvature.along_trajectory(problem, [problem.params()], indices=[5])
    with pytest.raises(lossatlas.InvalidTypeError):
        lossatlas.curvature.along_trajectory("x", [problem.params()])


# ------------------------------------------------------------------------------- surfaces with stderr

def test_stderr_is_zero_when_every_batch_is_identical():
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1).double()
    base = torch.randn(10, 2, dtype=torch.float64)
    x = base.repeat(4, 1)
    y = x.sum(1, keepdim=True) ** 2
    d = lossatlas.directions.random(net, n=2, seed=0, ignore=None)
    ds = lossatlas.surface_stderr(net, torch.nn.MSELoss(), (x, y), None, d, groups=4, shuffle=False, steps=5)
    assert float(ds["loss_stderr"].max()) <= 1e-12 * float(ds["loss"].max())
    full = lossatlas.surface(lossatlas.Problem(net, torch.nn.MSELoss(), (x, y)), None, d, steps=5, progress=False)
    np.testing.assert_allclose(ds["loss"].values, full["loss"].values, rtol=1e-12)


def test_stderr_matches_numpy_between_batch_standard_error():
    torch.manual_seed(1)
    net = torch.nn.Linear(1, 1).double()
    x = torch.randn(60, 1, dtype=torch.float64)
    y = 3 * x + 0.5 * torch.randn(60, 1, dtype=torch.float64)
    d = lossatlas.directions.random(net, n=1, seed=0, ignore=None)
    ds = lossatlas.surface_stderr(net, torch.nn.MSELoss(), (x, y), None, d, groups=5, fraction=0.5, seed=3,
                                  steps=7, span=2.0)
    idx = torch.randperm(60, generator=torch.Generator().manual_seed(3))[:30].numpy()
    theta = {k: v.detach() for k, v in net.named_parameters()}
    groups = np.array_split(idx, 5)
    for j, a in enumerate(ds["x"].values):
        w = (theta["weight"] + a * d[0]["weight"]).item()
        b = (theta["bias"] + a * d[0]["bias"]).item()
        per = np.array([np.mean((w * x.numpy()[g, 0] + b - y.numpy()[g, 0]) ** 2) for g in groups])
        assert ds["loss"].values[j] == pytest.approx(per.mean(), rel=1e-10)
        assert ds["loss_stderr"].values[j] == pytest.approx(per.std(ddof=1) / math.sqrt(5), rel=1e-8)
        np.testing.assert_allclose(ds["loss_groups"].values[:, j], per, rtol=1e-10)
    assert ds.attrs["samples"] == 30 and ds.attrs["group_sizes"] == [6] * 5


def test_stderr_rejects_bad_input():
    net = torch.nn.Linear(1, 1)
    x = torch.randn(8, 1)
    d = lossatlas.directions.random(net, n=1, seed=0, ignore=None)
    with pytest.raises(lossatlas.InvalidArgumentError):
        lossatlas.surface_stderr(net, torch.nn.MSELoss(), (x, x), None, d, groups=1)
    with pytest.raises(lossatlas.InvalidArgumentError):
        lossatlas.surface_stderr(net, torch.nn.MSELoss(), (x, x), None, d, fraction=0.1, groups=4)
    with pytest.raises(lossatlas.InvalidTypeError):
        lossatlas.surface_stderr(net, torch.nn.MSELoss(), x, None, d)


# ------------------------------------------------------------------------------------ full quick runs

@pytest.mark.slow
@pytest.mark.timeout(2400)                # a quick study is ~1–3 min of CPU; wall on a shared machine is several ×
@pytest.mark.parametrize("name", NAMES)
def test_quick_study(tmp_path, name):
    r = run_study(name, tmp_path / name, size="quick")
    assert r.trained and len({(d["vmin"], d["vmax"]) for d in r.scales["planes"]["drawn"]}) == 1
    if name == "targets":
        for row in r.rows:
            expect = "no violation found" if row["model"].startswith("linear + BCE") else "non-convex (proven)"
            assert row["verdict"] == expect, row["model"]
    if name == "depth":
        assert r.rows[0]["verdict"] == "no violation found"


def test_fashion_falls_back_to_digits_with_a_note(monkeypatch, tmp_path):
    from lossatlas.examples import _data
    from lossatlas.studies._models import load_data

    monkeypatch.setattr(_data, "FASHION_DIR", tmp_path / "absent")
    train, test, name, note = load_data({"name": "fashion", "n_train": 64, "n_test": 32, "side": 14})
    assert name == "digits (fallback)" and "dataset-fashion-mnist" in note
    assert train[0].shape[1:] == (1, 8, 8)


@pytest.mark.skipif(not _has_fashion(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_is_read_and_pooled():
    from lossatlas.studies._models import load_data

    train, test, name, note = load_data({"name": "fashion", "n_train": 64, "n_test": 32, "side": 14})
    assert name == "fashion-mnist (14×14)" and note == ""
    assert train[0].shape == (64, 1, 14, 14) and test[0].shape == (32, 1, 14, 14)
