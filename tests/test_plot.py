"""Figures: every kind renders something non-blank, masks NaN/Inf, labels axes by direction."""
import numpy as np
import pytest
import xarray as xr
from PIL import Image

import lossatlas
from lossatlas import plot


@pytest.fixture
def plane():
    x = np.linspace(-1, 1, 21)
    X, Y = np.meshgrid(x, x, indexing="ij")
    loss = (X**2 + 2 * Y**2 + 0.3 * np.sin(4 * X)) + 1.0
    loss[0, 0] = np.nan
    loss[-1, -1] = np.inf
    ds = xr.Dataset({"loss": (("x", "y"), loss), "accuracy": (("x", "y"), 1 - loss / loss[np.isfinite(loss)].max())},
                    coords={"x": ("x", x, {"long_name": "filter-normalised random direction 1"}),
                            "y": ("y", x, {"long_name": "filter-normalised random direction 2"})})
    ds.attrs.update(direction_kind="random", direction_norm="filter")
    return ds


def pixels(path):
    return np.asarray(Image.open(path).convert("L"), dtype=float)


@pytest.mark.parametrize("kind", ["contour", "filled", "heatmap", "surface3d"])
@pytest.mark.parametrize("log", [False, True])
def test_2d_kinds_render_and_save(plane, tmp_path, kind, log):
    fn = {"contour": plot.contour, "filled": lambda ds, **k: plot.contour(ds, filled=True, **k),
          "heatmap": plot.heatmap, "surface3d": plot.surface3d}[kind]
    fig = fn(plane, log=log)
    path = plot.save(fig, tmp_path / f"{kind}.png")
    assert pixels(path).std() > 10
    ax = fig.axes[0]
    assert ax.get_xlabel() == "filter-normalised random direction 1"
    texts = [t.get_text() for t in ax.texts]
    assert any("2 NaN/Inf points masked" in t for t in texts)
    assert "filter-normalised random directions" in ax.get_title()


def test_line_with_twin_accuracy_axis_and_formats(plane, tmp_path):
    sl = plane.sel(y=0.0)
    fig = plot.line(sl)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "accuracy"
    for ext in ("png", "pdf", "svg"):
        p = plot.save(fig, tmp_path / f"line.{ext}")
        assert p.stat().st_size > 1000
    with pytest.raises(lossatlas.InvalidArgumentError, match="'path'"):
        plot.save(fig, tmp_path / "line.bmp")


def test_contour_options_and_path_overlay(plane):
    fig = plot.contour(plane, levels=[1.5, 2.0, 2.5], vmax=2.5, path=np.array([[0.8, 0.8], [0.4, 0.3], [0.0, 0.0]]))
    lines = [l for l in fig.axes[0].lines if l.get_label() == "trajectory"]
    assert len(lines) == 1 and np.allclose(lines[0].get_xdata(), [0.8, 0.4, 0.0])
    path_ds = xr.Dataset({"x": ("step", [0.5, 0.0]), "y": ("step", [0.5, 0.0])})
    fig = plot.contour(plane, path=path_ds)
    assert any(l.get_label() == "trajectory" for l in fig.axes[0].lines)


def test_wrong_dimensionality_is_explained(plane):
    with pytest.raises(lossatlas.InvalidArgumentError, match="select a slice first"):
        plot.line(plane)
    with pytest.raises(lossatlas.InvalidArgumentError, match="'variable'"):
        plot.contour(plane, "sharpness")
    with pytest.raises(lossatlas.InvalidTypeError, match="'ds'"):
        plot.heatmap(np.zeros((3, 3)))


def test_interactive_html(plane, tmp_path):
    fig = plot.interactive(plane)
    path = plot.save_html(fig, tmp_path / "p.html")
    text = path.read_text()
    assert "plotly" in text.lower() and "filter-normalised random direction 1" in text
    one = plot.interactive(plane.sel(y=0.0))
    assert one.data[0].type == "scatter"


def test_real_surface_plots(classification, tmp_path):
    model, loss_fn, x, y = classification
    pr = lossatlas.Problem(model, loss_fn, (x, y))
    ds = lossatlas.surface(pr, None, lossatlas.directions.random(pr, n=2, seed=0), steps=9, progress=False)
    fig = plot.contour(ds)
    assert any(l.get_label() == "θ (centre)" for l in fig.axes[0].lines)
    assert pixels(plot.save(fig, tmp_path / "c.png")).std() > 10


def test_plot_lines_messages_name_the_function_called_once():
    import numpy as np
    import xarray as xr

    from lossatlas import plot
    from lossatlas.errors import InvalidArgumentError

    one = xr.Dataset({"loss": ("x", np.arange(3.0))}, coords={"x": np.arange(3.0)})
    with pytest.raises(InvalidArgumentError) as info:
        plot.lines([one], labels=["a", "b"])
    assert str(info.value).startswith("plot.lines(): argument 'labels'")  # not "plot.lines(): plot.line(): …"
