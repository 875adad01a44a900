"""``lossatlas interpolate | trajectory | connect`` write their stores and figures; the figures of
lossatlas.plot.paths draw what they are given."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import lossatlas  # noqa: E402
from lossatlas import examples  # noqa: E402
from lossatlas.cli import app, main  # noqa: E402
from lossatlas.paths import open_interpolation  # noqa: E402
from lossatlas.plot import paths as plots  # noqa: E402


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    ea, eb = examples.mlp_digits_pair()
    torch.save(ea.model.state_dict(), root / "a.pt")
    torch.save({"state_dict": eb.model.state_dict(), "epoch": 3}, root / "b.pt")
    return root


def not_blank(path):
    img = np.asarray(Image.open(path).convert("L"), dtype=float)
    return img.std() > 5


def run(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_interpolate_command_with_alignment(checkpoints, tmp_path):
    out = run(["interpolate", "mlp-digits", str(checkpoints / "a.pt"), str(checkpoints / "b.pt"), "--steps", "11",
               "--align", "--no-progress", "--out", str(tmp_path)])
    assert "barrier" in out and "after alignment" in out
    line = open_interpolation(tmp_path / "interpolation.zarr")
    aligned = open_interpolation(tmp_path / "interpolation-aligned.zarr")
    assert line.sizes["t"] == 11 and aligned.attrs["barrier"] < line.attrs["barrier"]
    assert (tmp_path / "b-aligned.pt").exists() and not_blank(tmp_path / "interpolation.png")


def test_trajectory_command_and_a_reused_plane(tmp_path):
    recording = examples.mlp_digits_trajectory().source
    out = run(["trajectory", "mlp-digits", "--checkpoints", recording, "--steps", "7", "--no-progress",
               "--out", str(tmp_path / "first")])
    assert "explained variance" in out and "PC1" in out
    plane = lossatlas.open_surface(tmp_path / "first" / "trajectory-plane.zarr")
    assert plane.attrs["direction_kind"] == "pca" and plane.loss.shape == (7, 7)
    path = xr.open_zarr(tmp_path / "first" / "trajectory-path.zarr", consolidated=False).load()
    assert path.sizes["step"] == 31 and float(path.x[-1]) == 0.0
    assert not_blank(tmp_path / "first" / "trajectory.png")
    # the same plane (centre and directions) for another run
    run(["trajectory", "mlp-digits", "--checkpoints", recording, "--steps", "5", "--no-progress",
         "--directions", str(tmp_path / "first" / "trajectory-plane.zarr"), "--out", str(tmp_path / "second")])
    again = lossatlas.open_surface(tmp_path / "second" / "trajectory-plane.zarr")
    assert again.attrs["directions_fingerprint"] == plane.attrs["directions_fingerprint"]


def test_connect_command(checkpoints, tmp_path):
    out = run(["connect", "mlp-digits", str(checkpoints / "a.pt"), str(checkpoints / "b.pt"), "--train-steps", "20",
               "--lr", "0.03", "--steps", "9", "--plane-steps", "5", "--no-progress", "--out", str(tmp_path)])
    assert "curve: max loss" in out
    curve = lossatlas.Curve.load(tmp_path / "curve.pt")
    assert curve.kind == "bezier" and len(curve.bends) == 1 and curve.info["steps"] == 20
    along = xr.open_zarr(tmp_path / "curve.zarr", consolidated=False).load()
    assert along.sizes["t"] == 9 and along.attrs["kind"] == "curve"
    for name in ("line-vs-curve.png", "curve-plane.png"):
        assert not_blank(tmp_path / name), name


def test_bad_input_exits_with_one_line(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["connect", "mlp-digits", str(checkpoints / "a.pt"), str(tmp_path / "missing.pt"), "--no-progress",
              "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as info:
        main(["connect", "mlp-digits", str(checkpoints / "a.pt"), str(checkpoints / "b.pt"), "--curve", "spline",
              "--no-progress", "--out", str(tmp_path)])
    assert info.value.code == 2 and "--curve" in capsys.readouterr().err  # the CLI's flag, not the argument


def test_figures_draw_their_inputs_and_refuse_others():
    t = np.linspace(-0.5, 1.5, 21)
    line = xr.Dataset({"loss": ("t", 1 + np.sin(np.pi * np.clip(t, 0, 1)))}, coords={"t": t})
    line.attrs.update(lossatlas.paths.path_metrics(np.linspace(0, 1, 11), 1 + np.sin(np.pi * np.linspace(0, 1, 11))))
    curve = line.copy()
    curve["loss"] = 1 + 0.1 * line.loss
    curve.attrs.update(kind="curve", curve="bezier", bends=1)
    fig = plots.line_vs_curve(line, curve)
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and any("barrier" in txt.get_text() for txt in ax.texts)
    grid = np.linspace(-1, 1, 9)
    surf = xr.Dataset({"loss": (("x", "y"), np.add.outer(grid**2, grid**2) + 0.1)}, coords={"x": grid, "y": grid})
    path = np.array([[0.9, 0.9], [0.5, 0.4], [0.0, 0.0]])
    fig = plots.path_on_plane(surf, path, anchors={"a": (0, 0)})
    drawn = fig.axes[0].lines[0].get_xydata()
    np.testing.assert_allclose(drawn, path)
    with pytest.raises(lossatlas.InvalidTypeError, match="'path'"):
        plots.path_on_plane(surf, np.zeros((3, 3)))
    with pytest.raises(lossatlas.InvalidTypeError, match="'datasets\\[0\\]'"):
        plots.interpolation(surf)
    with pytest.raises(lossatlas.InvalidArgumentError, match="'metric'"):
        plots.interpolation(line, metric="accuracy")
