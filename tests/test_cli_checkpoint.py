"""``--checkpoint`` (and the ``trajectory`` command's checkpoints) carry the model's whole state:
BatchNorm running statistics and frozen parameters are what the problem evaluates with, exactly
as ``Problem(model_loaded, ...)`` in Python; missing/unexpected entries are one-line errors; the
loss at θ is never a neighbouring grid point's."""
from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lossatlas
from lossatlas.cli import app, main
from lossatlas.testing import assert_close
from lossatlas.trajectory import Trajectory, TrajectoryRecorder

sys.path.insert(0, str(Path(__file__).parent))

TARGET = textwrap.dedent("""
    import torch, lossatlas

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)
            self.frozen = torch.nn.Linear(16, 16)
            self.frozen.requires_grad_(False)
            self.fc = torch.nn.Linear(16, 3)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv(x)))
            h = torch.nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)
            return self.fc(torch.tanh(self.frozen(h)))

    def data():
        g = torch.Generator().manual_seed(0)
        x = 5.0 * torch.randn(48, 1, 6, 6, generator=g) + 10.0   # far from BatchNorm's initial statistics
        s = x[:, 0, :3].mean((1, 2)) - x[:, 0, 3:].mean((1, 2))     # learnable labels: tertiles of s
        return x, (s > s.quantile(1 / 3)).long() + (s > s.quantile(2 / 3)).long()

    def make():
        torch.manual_seed(0)
        return lossatlas.Problem(Net(), torch.nn.CrossEntropyLoss(), data(), batch_size=20)
""")


def _load_target(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_ckpt_target", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(module, steps=8):
    """A few SGD steps in train mode: running statistics and weights both move from the init."""
    torch.manual_seed(3)
    model = module.Net()
    with torch.no_grad():
        model.frozen.weight.mul_(-2.0)  # a frozen parameter that differs from the TARGET's
    x, y = module.data()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.bn.momentum = 0.5  # running statistics far from the initial (0, 1) after a few steps
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        model.fc.weight.mul_(10.0)  # outputs sensitive to the features, hence to the BatchNorm statistics
    return model


@pytest.fixture
def bn_setup(tmp_path):
    (tmp_path / "target.py").write_text(TARGET)
    module = _load_target(tmp_path / "target.py")
    trained = _train(module)
    torch.save(trained.state_dict(), tmp_path / "sd.pt")
    return tmp_path, module, trained


def _python_loss(module, state, dtype=torch.float32):
    """What a user gets in Python: a fresh model with the state_dict loaded, and a Problem."""
    model = module.Net()
    model.load_state_dict(state)
    problem = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), module.data(), batch_size=20, dtype=dtype)
    return problem.loss(problem.params()), problem


def _centre(output: str) -> float:
    return float(re.search(r"centre: loss ([0-9.eE+-]+)", output).group(1))


def _table_centre(output: str) -> float:
    return float(re.search(r"loss at centre θ[^│┃|]*[│┃|]\s*([0-9.eE+-]+)", output).group(1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_surface_checkpoint_uses_buffers_and_frozen_entries(bn_setup, dtype):
    tmp_path, module, trained = bn_setup
    torch_dtype = getattr(torch, dtype)
    expected, _ = _python_loss(module, trained.state_dict(), torch_dtype)
    target = module.make()  # the old behaviour: the checkpoint's trainable entries in the TARGET's model
    old = target.loss({k: v.to(torch.float32) for k, v in trained.state_dict().items() if k in target.param_names})
    assert abs(old - expected) > 0.5 * expected  # the test can tell the two apart
    store = tmp_path / "s.zarr"
    r = CliRunner().invoke(app, ["surface", f"{tmp_path / 'target.py'}:make", "--checkpoint", str(tmp_path / "sd.pt"),
                                 "--steps", "3", "--span", "0.5", "--store", str(store), "--no-progress",
                                 "--dtype", dtype])
    assert r.exit_code == 0, r.output
    assert "model loaded with all 11 entries (6 trainable, 2 frozen, 3 buffers)" in r.output, r.output
    ds = lossatlas.open_surface(store)
    assert_close(float(ds.loss.sel(x=0.0, y=0.0)), expected, torch_dtype, what="grid value at θ", factor=10)
    # printed with 6 significant digits: next to the grid's value at θ, what the checkpoint alone gives
    assert abs(_centre(r.output) - expected) <= 1e-5 * expected
    assert abs(_table_centre(r.output) - expected) <= 1e-5 * expected
    text = " ".join(r.output.split())
    plain = float(text.split("plain forward): loss ")[1].split()[0].rstrip(")"))  # the checkpoint in plain torch
    assert abs(plain - expected) <= 1e-5 * expected and "warning" not in text
    center, _ = lossatlas.open_directions(store)
    assert torch.equal(center["conv.weight"], trained.conv.weight.detach().to(torch_dtype))


def test_checkpoint_with_missing_or_unexpected_entries_is_one_line_exit_2(bn_setup, capsys):
    tmp_path, module, trained = bn_setup
    state = trained.state_dict()
    torch.save({k: v for k, v in state.items() if "running_var" not in k}, tmp_path / "missing.pt")
    torch.save({**state, "head.weight": torch.zeros(2)}, tmp_path / "extra.pt")
    torch.save({**state, "fc.bias": torch.zeros(5)}, tmp_path / "shape.pt")
    torch.save({k: v for k, v in state.items() if k in dict(trained.named_parameters())}, tmp_path / "params.pt")
    for name, words in [("missing.pt", ["bn.running_var"]), ("extra.pt", ["head.weight"]),
                        ("shape.pt", ["fc.bias", "(3,)", "(5,)"]),
                        ("params.pt", ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked"])]:
        with pytest.raises(SystemExit) as info:
            main(["surface", f"{tmp_path / 'target.py'}:make", "--checkpoint", str(tmp_path / name), "--steps", "3",
                  "--no-progress"])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
        for w in words:
            assert w in err, (w, err)


def test_the_users_model_is_not_touched_by_a_checkpoint(bn_setup):
    tmp_path, module, trained = bn_setup
    problem = module.make()
    before = {k: v.clone() for k, v in problem.model.state_dict().items()}
    loaded = problem.with_state(trained.state_dict())
    assert all(torch.equal(problem.model.state_dict()[k], v) for k, v in before.items())
    assert loaded.model is not problem.model
    assert problem.loss(problem.params()) != loaded.loss(loaded.params())
    expected, _ = _python_loss(module, trained.state_dict())
    assert_close(loaded.loss(loaded.params()), expected, torch.float32)


def _record(tmp_path, module, steps=6, buffers=True, **kw):
    torch.manual_seed(4)
    model = module.Net()
    x, y = module.data()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    with TrajectoryRecorder(tmp_path / "run", buffers=buffers, overwrite=True, **kw) as rec:
        for step in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            rec.record(model, step=step)
    return model


def test_trajectory_command_centres_on_the_final_checkpoint_with_its_buffers(bn_setup):
    tmp_path, module, _ = bn_setup
    model = _record(tmp_path, module)
    expected, _ = _python_loss(module, model.state_dict())
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["trajectory", f"{tmp_path / 'target.py'}:make", "--checkpoints", str(tmp_path / "run"),
                                 "--steps", "6", "--no-progress", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "model loaded with all 11 entries (6 trainable, 2 frozen, 3 buffers)" in r.output, r.output
    plane = lossatlas.open_surface(out / "trajectory-plane.zarr")
    # θ_n is a point of the plane's grid (an even --steps too) and its value is the Python loss
    assert (plane.x.values == 0.0).sum() == 1 and (plane.y.values == 0.0).sum() == 1
    assert_close(float(plane.loss.sel(x=0.0, y=0.0)), expected, torch.float32, factor=10)
    printed = float(re.search(r"loss at the plane's centre\s*[│┃|]?\s*([0-9.eE+-]+)", r.output).group(1))
    assert abs(printed - expected) <= 1e-5 * expected


def test_trajectory_command_refuses_a_recording_without_the_buffers(bn_setup, capsys):
    tmp_path, module, _ = bn_setup
    _record(tmp_path, module, buffers=False)
    with pytest.raises(SystemExit) as info:
        main(["trajectory", f"{tmp_path / 'target.py'}:make", "--checkpoints", str(tmp_path / "run"), "--steps", "3",
              "--no-progress", "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "bn.running_mean" in err and "\n" not in err


def test_trajectory_final_is_a_centre_and_problem_carries_the_buffers(bn_setup):
    tmp_path, module, _ = bn_setup
    model = _record(tmp_path, module)
    traj = Trajectory.open(tmp_path / "run")
    problem = module.make()
    final = traj.final()
    assert set(final) == set(problem.param_names)
    d = lossatlas.directions.pca(traj, n=2, like=problem)
    ds = lossatlas.surface(problem, final, d, steps=3, progress=False)  # usable directly
    assert float(ds.loss.sel(x=0.0, y=0.0)) == pytest.approx(problem.loss(final), rel=1e-6)
    assert set(traj.buffers()) == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked",
                                   "frozen.weight", "frozen.bias"}
    trained = traj.problem(problem)
    expected, _ = _python_loss(module, model.state_dict())
    ds = lossatlas.surface(trained, traj.final(like=trained), d, steps=3, progress=False)
    assert_close(float(ds.loss.sel(x=0.0, y=0.0)), expected, torch.float32, factor=10)
    p64 = problem.with_dtype(torch.float64)
    assert traj.final(like=p64)["fc.weight"].dtype == torch.float64


@pytest.mark.parametrize("steps, span", [("4", "1.0"), ("5", "0.5,1.5"), ("6", "-1,1")])
def test_loss_at_centre_is_theta_for_any_grid(steps, span):
    """An even --steps (or a span without 0) has no grid point at θ: the printed value is θ's, evaluated
    apart, and says so — not the nearest point's."""
    ex = lossatlas.examples.load("seed-relu")
    r = CliRunner().invoke(app, ["surface", "seed-relu", "--steps", steps, "--span", span, "--directions", "example",
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "θ is not a point of this grid" in r.output and "evaluated separately" in r.output
    assert abs(_table_centre(r.output) - ex.problem.loss(ex.center)) <= 1e-5 * ex.problem.loss(ex.center)


def test_loss_at_centre_on_the_grid_is_the_grid_value(tmp_path):
    store = tmp_path / "s.zarr"
    r = CliRunner().invoke(app, ["surface", "seed-relu", "--steps", "5", "--span", "-1,3", "--store", str(store),
                                 "--directions", "example", "--no-progress"])
    assert r.exit_code == 0, r.output
    ds = lossatlas.open_surface(store)
    assert "not a point of this grid" not in r.output
    value = float(ds.loss.sel(x=0.0, y=0.0))
    assert abs(_table_centre(r.output) - value) <= 1e-5 * abs(value)
    assert np.any(ds.x.values == 0.0)


def test_a_compact_recording_gives_centres_in_the_models_dtype(bn_setup):
    tmp_path, module, _ = bn_setup
    model = _record(tmp_path, module, dtype=torch.float16)
    traj = Trajectory.open(tmp_path / "run")
    problem = module.make()
    final = traj.final()
    assert final["fc.weight"].dtype == torch.float32
    assert torch.equal(final["fc.weight"], model.fc.weight.detach().half().float())
    d = lossatlas.directions.pca(traj, n=2, like=problem)
    ds = lossatlas.surface(traj.problem(problem), final, d, steps=3, progress=False)
    assert np.isfinite(ds.loss.values).all()


def test_the_3d_plot_marks_theta_at_its_value_not_a_neighbours():
    import xarray as xr

    from lossatlas.plot.surface import _value_at_origin

    x, y = np.array([-1.5, -0.5, 0.5, 1.5]), np.array([-1.0, 0.0, 1.0])  # x has no 0: an even count
    z = 10.0 + 2.0 * x[:, None] + 3.0 * y[None, :]
    da = xr.DataArray(z, dims=("x", "y"), coords={"x": x, "y": y})
    assert _value_at_origin(da, "x", "y") == pytest.approx(10.0)  # nearest would give 9 or 11
    on_grid = xr.DataArray(z[:3] * 0 + 7.0, dims=("x", "y"), coords={"x": [-1.0, 0.0, 1.0], "y": y})
    assert _value_at_origin(on_grid, "x", "y") == 7.0


@pytest.mark.parametrize("name", sorted(__import__("_zoo").FAMILIES))
def test_with_state_equals_a_problem_of_the_loaded_model_for_every_zoo_family(name):
    """Registry-driven: for every family (tied weights, frozen parts, BatchNorm, …) a problem given a
    changed state_dict evaluates like a problem built from a model with that state loaded."""
    import copy

    import _zoo

    case = _zoo.FAMILIES[name]()
    problem = case.problem("ragged", torch.float64)
    other = copy.deepcopy(case.model)
    with torch.no_grad():
        for k, t in other.state_dict(keep_vars=True).items():
            if t.is_floating_point():
                t.mul_(1.1).add_(0.01 * ("running_var" not in k))
    state = {k: v.detach().clone() for k, v in other.state_dict().items()}
    loaded = problem.with_state(state)
    direct = _zoo.Case(name, other, case.data, case.loss, case.closure, case.bn).problem("ragged", torch.float64)
    assert_close(loaded.loss(loaded.params()), direct.loss(direct.params()), torch.float64, what=name)
    assert loaded.fingerprint()["model"] == direct.fingerprint()["model"]
    trainable = {n for n, p in case.model.named_parameters(remove_duplicate=False) if p.requires_grad}
    if any(k not in trainable for k in state):  # buffers or frozen parameters changed: another computation
        assert loaded.fingerprint()["model"] != problem.fingerprint()["model"]


from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(lo=st.floats(-50, 50), width=st.floats(0, 80), margin=st.floats(0, 1), steps=st.integers(3, 61))
@example(lo=-2.2250738585072014e-308, width=1.0, margin=0.0, steps=51)  # a tiny negative lo: rounding at hi
def test_the_trajectory_plane_has_theta_on_its_grid_and_covers_the_path(lo, width, margin, steps):
    from lossatlas.cli.paths_cmd import _span_with_zero
    from lossatlas.grid import axis_coordinates

    hi = lo + width
    a, b = _span_with_zero(lo, hi, margin, steps)
    axis = axis_coordinates(a, b, steps)
    assert (axis == 0.0).sum() == 1
    assert axis[0] <= min(lo, 0.0) and axis[-1] >= max(hi, 0.0)


@pytest.mark.parametrize("command", [["hessian", "--k", "1", "--trace-probes", "4", "--density-iters", "2",
                                      "--density-probes", "2"], ["audit", "--methods", "jensen", "--budget", "20"]])
def test_every_command_with_a_checkpoint_prints_the_centre_and_the_checkpoints_own_loss(bn_setup, command):
    tmp_path, module, trained = bn_setup
    expected, _ = _python_loss(module, trained.state_dict())
    r = CliRunner().invoke(app, [command[0], f"{tmp_path / 'target.py'}:make", "--checkpoint",
                                 str(tmp_path / "sd.pt"), "--no-progress", *command[1:]])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert abs(_centre(r.output) - expected) <= 1e-5 * expected
    assert "plain forward): loss" in text and "warning" not in text
