"""span="auto": each axis spans where the loss has risen by the factor, found by a few evaluations."""
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lossatlas
from lossatlas import _auto_span
from lossatlas.cli import app


def _quadratic():
    # f(θ) = mean((x·θ − 0)²) + 1 with x = e1, e2 scaled: along e1 f = 1 + 4a², along e2 f = 1 + b²
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64) * (2 ** 0.5)
    model = torch.nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()

    def loss(out, y):
        return ((out - y) ** 2).mean() + 1.0
    return lossatlas.Problem(model, loss, (x, torch.zeros(2, 1, dtype=torch.float64)), dtype=torch.float64)


def test_auto_span_finds_the_factor_level_of_a_quadratic():
    p = _quadratic()
    d = lossatlas.directions.axes(p, ["weight[0, 0]", "weight[0, 1]"])
    found = _auto_span.auto_span(p, p.params(), d.vectors, factor=2.0)
    # f = 1 + 4a² reaches 2 at a = 0.5; f = 1 + b² at b = 1 (bisection bracket: within 1/16 of a doubling)
    assert found["spans"][0] == pytest.approx(0.5, rel=0.07) and found["spans"][0] >= 0.5
    assert found["spans"][1] == pytest.approx(1.0, rel=0.07) and found["spans"][1] >= 1.0
    assert all(found["reached"]) and found["evaluations"] <= 1 + 2 * 2 * (10 + _auto_span.BISECTIONS)


def test_surface_span_auto_records_it(tmp_path):
    p = _quadratic()
    d = lossatlas.directions.axes(p, ["weight[0, 0]", "weight[0, 1]"])
    ds = lossatlas.surface(p, None, d, steps=5, span="auto", progress=False)
    found = lossatlas.attrs(ds)["span_auto"]
    assert float(ds.x.max()) == found["spans"][0] and float(ds.y.min()) == -found["spans"][1]
    assert float(ds.loss.sel(x=0.0, y=0.0)) == 1.0
    edge = float(ds.loss.sel(x=found["spans"][0], y=0.0))
    assert 2.0 <= edge < 2.3
    stored = lossatlas.surface(p, None, d, steps=5, span="auto:3", progress=False, store=tmp_path / "s.zarr")
    again = lossatlas.open_surface(tmp_path / "s.zarr")
    assert lossatlas.attrs(again)["span_auto"]["factor"] == 3.0
    np.testing.assert_array_equal(again.loss.values, stored.loss.values)
    with pytest.raises(lossatlas.InvalidArgumentError, match="span"):
        lossatlas.surface(p, None, d, steps=5, span="auto:0.5", progress=False)


def test_cli_span_auto():
    r = CliRunner().invoke(app, ["surface", "mlp-digits", "--steps", "3", "--span", "auto", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "span (auto)" in r.output
    r = CliRunner().invoke(app, ["surface", "mlp-digits", "--steps", "3", "--span", "autox"])
    assert r.exit_code != 0 and "--span" in str(r.exception)
