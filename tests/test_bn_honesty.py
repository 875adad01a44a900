"""BatchNorm honesty: stored running statistics at points they cannot describe are warned about
(BatchNormStatsWarning, once per call, and a CLI line), and interpolation recalibrates by default."""
import textwrap
import warnings

import numpy as np
import pytest
import torch

import lossatlas
from lossatlas import BatchNormStatsWarning


def _net():
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 3))


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g) * 2 + 1
    y = (x[:, 0] > 1).long() + (x[:, 1] > 1).long()
    return x, y


def _trained(seed):
    torch.manual_seed(seed)
    net = _net()
    x, y = _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def two():
    a, b = _trained(0), _trained(1)
    x, y = _data()
    problem = lossatlas.Problem(a, torch.nn.CrossEntropyLoss(), (x, y))
    return problem, lossatlas.params_of(a), lossatlas.params_of(b)


def _bn_warnings(record):
    return [w for w in record if issubclass(w.category, BatchNormStatsWarning)]


def test_interpolate_with_stored_statistics_warns_once(two):
    problem, a, b = two
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = lossatlas.interpolate(problem, a, b, steps=9, bn="eval", progress=False)
    assert len(_bn_warnings(rec)) == 1
    assert "bn='recalibrate'" in str(_bn_warnings(rec)[0].message)
    assert ds.attrs["bn"] == "eval"


def test_interpolate_recalibrates_by_default(two):
    problem, a, b = two
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        default = lossatlas.interpolate(problem, a, b, steps=9, progress=False)
    assert not _bn_warnings(rec)
    assert default.attrs["bn"] == "recalibrate" and problem.bn == "eval"
    explicit = lossatlas.interpolate(problem, a, b, steps=9, bn="recalibrate", progress=False)
    np.testing.assert_array_equal(default.loss.values, explicit.loss.values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stale = lossatlas.interpolate(problem, a, b, steps=9, bn="eval", progress=False)
    assert not np.allclose(stale.loss.values[1:-1], default.loss.values[1:-1])


def test_surface_warns_only_for_directions_feeding_batchnorm(two):
    problem, a, _ = two
    d = lossatlas.directions.random(problem, n=2, seed=0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        lossatlas.surface(problem, None, d, steps=3, progress=False)
    assert len(_bn_warnings(rec)) == 1
    head = lossatlas.directions.axes(problem, ["3.weight[0, 0]", "3.bias[1]"])  # after the last BN layer
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        lossatlas.surface(problem, None, head, steps=3, progress=False)
    assert not _bn_warnings(rec)
    rec_problem = lossatlas.Problem(problem.model, torch.nn.CrossEntropyLoss(), _data(), bn="recalibrate")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        lossatlas.surface(rec_problem, None, d, steps=3, progress=False, strategy="loop")
    assert not _bn_warnings(rec)


def test_curve_evaluate_with_stored_statistics_warns(two):
    problem, a, b = two
    mid = {k: (a[k] + b[k]) / 2 for k in a}
    curve = lossatlas.Curve("bezier", [a, mid, b], problem)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        curve.evaluate(5, bn="eval")
    assert len(_bn_warnings(rec)) == 1
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        curve.evaluate(5)  # recalibrates by default
    assert not _bn_warnings(rec)


def test_cli_prints_one_warning_line(tmp_path, capsys):
    from lossatlas.cli import main

    (tmp_path / "bn.py").write_text(textwrap.dedent("""
        import torch, lossatlas
        def make():
            torch.manual_seed(0)
            net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                      torch.nn.Linear(8, 2))
            net.train(); net(torch.randn(64, 4)); net.eval()
            x = torch.randn(64, 4)
            return lossatlas.Problem(net, torch.nn.CrossEntropyLoss(), (x, (x[:, 0] > 0).long()))
    """))
    with pytest.raises(SystemExit) as exc:
        main(["surface", f"{tmp_path / 'bn.py'}:make", "--steps", "3", "--no-progress"])
    assert exc.value.code == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "--bn recalibrate" in lines[0] and "BatchNorm" in lines[0]
