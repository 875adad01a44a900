"""The curvature commands and figures."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import lossatlas  # noqa: E402
from lossatlas.cli import app  # noqa: E402
from lossatlas.plot import curvature as plot  # noqa: E402

TARGET = '''
import torch, lossatlas

def make():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    return lossatlas.Problem(net, torch.nn.MSELoss(), (x, x[:, :1] * x[:, 1:]))
'''


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "target.py"
    path.write_text(TARGET)
    return f"{path}:make"


def not_blank(path):
    img = np.asarray(Image.open(path).convert("L"), dtype=float)
    return img.std() > 5


def test_hessian_command_table_and_density_plot(target, tmp_path):
    fig = tmp_path / "density.png"
    result = CliRunner().invoke(app, ["hessian", target, "--k", "2", "--no-progress", "--trace-probes", "30",
                                      "--density-iters", "20", "--density-probes", "3", "--density-plot", str(fig),
                                      "--dtype", "float64", "--seed", "1"])
    assert result.exit_code == 0, result.output
    out = result.output
    for word in ("λmax", "λ2", "λmin+1", "λmin", "residual", "converged", "trace (hutch++, 30 products)",
                 "negative eigenvalue mass"):
        assert word in out, word
    # a negative eigenvalue is evidence, and the command says the audit decides (defect 8 of issue 12)
    flat = " ".join(out.split())
    assert "This is evidence of non-convexity, not a proof" in flat and "lossatlas audit" in flat
    assert "non-convex at this point" not in flat
    assert not_blank(fig)


def test_hessian_command_on_an_example_with_params_and_ggn():
    result = CliRunner().invoke(app, ["hessian", "seed-relu", "--k", "1", "--no-progress", "--params", "w0,w1",
                                      "--trace-probes", "6", "--density-iters", "2", "--density-probes", "2",
                                      "--ggn"])
    assert result.exit_code == 0, result.output
    assert "GGN of seed-relu" in result.output and "2 parameters" in result.output


def test_hessian_command_bad_input_exits_2(target):
    from lossatlas.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["hessian", target, "--tol", "5", "--no-progress"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["hessian", target, "--params", "nothing.like.this", "--no-progress"])
    assert exc.value.code == 2


def test_ratio_map_command_store_resume_and_figure(target, tmp_path):
    store, fig = tmp_path / "ratio.zarr", tmp_path / "ratio.png"
    args = ["ratio-map", target, "--steps", "3", "--span", "0.5", "--store", str(store), "--no-progress",
            "--out", str(fig)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "9 converged" in first.output or "/9 converged" in first.output
    assert not_blank(fig)
    ds = lossatlas.open_surface(store)
    assert ds.attrs["kind"] == "ratio_map" and ds.attrs["complete"] == 1
    again = CliRunner().invoke(app, args)  # complete store: reopened, nothing recomputed
    assert again.exit_code == 0, again.output
    changed = CliRunner().invoke(app, args[:-2] + ["--tol", "0.01"])
    assert changed.exit_code != 0  # provenance differs: refused …
    replaced = CliRunner().invoke(app, args[:-2] + ["--tol", "0.01", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output  # … unless --overwrite


def test_density_figure_and_bad_input():
    x = torch.linspace(-1, 1, 10, dtype=torch.float64).reshape(-1, 1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    problem = lossatlas.Problem(net, torch.nn.MSELoss(), (x, x ** 2))
    d = lossatlas.curvature.density(problem, iters=8, probes=3, progress=False)
    for log in (True, False):
        fig = plot.density(d, log=log)
        assert fig.axes[0].get_xlabel() == "eigenvalue λ"
    with pytest.raises(lossatlas.InvalidTypeError, match="plot.density"):
        plot.density({"grid": [1]})


def test_ratio_map_figure_marks_unconverged_points_and_rejects_bad_input():
    import xarray as xr

    a = np.linspace(-1, 1, 4)
    lam_min = np.add.outer(a, a)
    conv = np.ones((4, 4))
    conv[0, 0] = 0
    ds = xr.Dataset({"ratio": (("x", "y"), np.abs(lam_min)), "lambda_min": (("x", "y"), lam_min),
                     "loss": (("x", "y"), np.add.outer(a ** 2, a ** 2)), "converged": (("x", "y"), conv)},
                    coords={"x": a, "y": a})
    fig = plot.ratio_map(ds)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["not converged"]
    assert plot.ratio_map(ds, variable="lambda_min").axes[0].get_title() == "λmin"
    with pytest.raises(lossatlas.InvalidArgumentError, match="variable"):
        plot.ratio_map(ds, variable="nope")
    with pytest.raises(lossatlas.InvalidArgumentError, match="two directions"):
        plot.ratio_map(ds.isel(y=0))


def test_surface_along_hessian_eigenvectors(target, tmp_path):
    """`lossatlas surface TARGET --directions hessian`: a plane along the eigenvectors of λmax and λmin."""
    store = tmp_path / "hess.zarr"
    result = CliRunner().invoke(app, ["surface", target, "--directions", "hessian", "--steps", "5", "--store",
                                      str(store), "--no-progress"])
    assert result.exit_code == 0, result.output
    ds = lossatlas.open_surface(store)
    labels = [ds[d].attrs["long_name"] for d in ds.loss.dims]
    assert labels[0].startswith("Hessian eigenvector (λmax") and labels[1].startswith("Hessian eigenvector (λmin")
    centre = float(ds.loss.sel(x=0.0, y=0.0))
    assert float(ds.loss.sel(x=0.5, y=0.0)) > centre  # upward curvature along the top eigenvector
