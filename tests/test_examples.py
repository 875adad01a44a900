"""Every built-in example builds (deterministically, cached) and gives a quick surface."""
import numpy as np
import pytest
import torch

import lossatlas
from lossatlas import examples


@pytest.mark.parametrize("name", examples.names())
def test_every_example_builds_and_gives_a_surface(name):
    ex = examples.load(name)
    assert isinstance(ex.problem, lossatlas.Problem) and ex.description and ex.convex in (True, False, None)
    values = ex.problem.evaluate(ex.center)
    assert np.isfinite(values["loss"])
    if "accuracy" in values:
        assert values["accuracy"] > 0.5, (name, values)  # trained, not random
    d = ex.default_directions(n=2, seed=0)
    ds = lossatlas.surface(ex.problem, ex.center, d, steps=3, span=0.5, progress=False)
    assert ds.loss.shape == (3, 3) and np.isfinite(ds.loss.values).all()
    # the loss at the trained centre is the lowest of this small grid for the trained examples
    assert float(ds.loss.sel(x=0.0, y=0.0)) <= float(ds.loss.max())


def test_training_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSATLAS_CACHE", str(tmp_path))
    a = examples.load("mlp-digits", cache=False)
    b = examples.load("mlp-digits")  # trains and writes the cache
    files = list((tmp_path / "examples").glob("mlp-digits-*.pt"))
    assert len(files) == 1
    c = examples.load("mlp-digits")  # reads it
    for k in a.center:
        assert torch.equal(a.center[k], b.center[k]) and torch.equal(b.center[k], c.center[k])


def test_convex_baselines_and_nonconvex_pair_share_data():
    bce, mse = examples.load("logreg-bce"), examples.load("logreg-mse")
    assert bce.convex is True and mse.convex is False
    assert bce.problem.fingerprint()["data"] == mse.problem.fingerprint()["data"]


def test_seed_relu_is_the_classic_net():
    ex = examples.load("seed-relu")
    x = torch.tensor([[0.5], [2.0]])
    c = {k: float(v) for k, v in ex.center.items()}
    with torch.no_grad():
        expected = torch.relu(c["w1"] * torch.relu(c["w0"] * x + c["b0"]) + c["b1"])
        assert torch.allclose(ex.model(x), expected)
    assert ex.default_directions().labels == ["w0", "w1"]


def test_unknown_example_is_a_clear_error():
    with pytest.raises(lossatlas.InvalidArgumentError, match="'name' must be one of"):
        examples.load("resnet-9000")


def test_fashion_fallback_warns(monkeypatch, tmp_path):
    from lossatlas.examples import _data

    monkeypatch.setattr(_data, "FASHION_DIR", tmp_path / "missing")
    with pytest.warns(UserWarning, match="falling back to scikit-learn digits"):
        (xtr, ytr), _, name = _data.fashion_mnist()
    assert name == "digits (fallback)" and xtr.shape[1:] == (1, 8, 8)
