"""The plot-kind registry (issue 13): every registered kind draws a stored surface through the CLI,
and a kind registered in a test appears in `lossatlas plot --kind` (values and help) and runs."""
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import lossatlas  # noqa: E402
from lossatlas.cli import app  # noqa: E402
from lossatlas.plot import _registry as PK  # noqa: E402


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("plotreg")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    x = torch.randn(32, 2)
    pr = lossatlas.Problem(net, torch.nn.MSELoss(), (x, x.sum(1, keepdim=True)))
    plane = d / "plane.zarr"
    lossatlas.surface(pr, None, lossatlas.directions.random(pr, n=2, seed=0), steps=5, store=plane, progress=False)
    line = d / "line.zarr"
    lossatlas.surface(pr, None, lossatlas.directions.random(pr, n=1, seed=0), steps=5, store=line, progress=False)
    return d, {1: line, 2: plane}


@pytest.mark.parametrize("name", PK.names())
def test_every_registered_kind_draws_through_the_cli(stores, name):
    d, by_ndim = stores
    kind = PK.REGISTRY[name]
    store = by_ndim[kind.ndim or 2]
    out = d / f"{name}{kind.suffixes[0]}"
    r = CliRunner().invoke(app, ["plot", str(store), "--kind", name, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.exists() and out.stat().st_size > 1000


def test_a_kind_registered_in_a_test_appears_in_the_cli_and_runs(stores, monkeypatch):
    d, by_ndim = stores
    calls = []

    def draw(ds, variable, *, log, vmin, vmax, levels):
        calls.append(variable)
        return PK.REGISTRY["heatmap"].draw(ds, variable, log=log, vmin=vmin, vmax=vmax, levels=levels)

    PK.register(PK.PlotKind("toy", "a toy kind", draw))
    try:
        r = CliRunner().invoke(app, ["plot", str(by_ndim[2]), "--kind", "nope", "--out", str(d / "x.png")])
        assert r.exit_code != 0 and "toy" in (r.output + str(r.exception))
        r = CliRunner().invoke(app, ["plot", str(by_ndim[2]), "--kind", "toy", "--out", str(d / "toy.png")])
        assert r.exit_code == 0, r.output
        assert calls == ["loss"] and (d / "toy.png").exists()
    finally:
        PK.unregister("toy")
    with pytest.raises(lossatlas.LossAtlasError, match="already registered"):
        PK.register(PK.PlotKind("line", "again", draw, ndim=1))
