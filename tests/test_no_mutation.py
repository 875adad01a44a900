"""The user's model is never changed by any public call: parameters, buffers, requires_grad, mode, .grad."""
import torch

import lossatlas
from lossatlas.testing import assert_model_unchanged, model_state


def test_every_public_call_leaves_the_model_alone(cnn_data, tmp_path):
    model, loss_fn, x, y = cnn_data
    model.fc.bias.requires_grad_(False)  # a frozen parameter
    loss_fn(model(x), y).backward()     # a .grad present
    before = model_state(model)
    calls = []
    pr = lossatlas.Problem(model, loss_fn, (x, y))
    calls.append("Problem")
    theta = pr.params()
    pr.loss(theta), pr.evaluate(theta), pr.grad(theta)
    lossatlas.params_of(model)
    d = lossatlas.directions.random(model, n=2, seed=0)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    lossatlas.directions.between(theta, lossatlas.params.axpy(0.1, d[0], theta))
    for strategy in ("loop", "vmap", "auto"):
        lossatlas.surface(pr, None, d, steps=3, strategy=strategy, progress=False)
    lossatlas.surface(pr, None, d, steps=3, progress=False, store=tmp_path / "s")
    lossatlas.open_surface(tmp_path / "s")
    rec = lossatlas.Problem(model, loss_fn, (x, y), bn="recalibrate", dtype=torch.float64)
    lossatlas.surface(rec, None, lossatlas.directions.random(rec, n=1, seed=0), steps=3, progress=False)
    pr.with_dtype(torch.float64).loss(lossatlas.params.to(theta, dtype=torch.float64))
    assert_model_unchanged(model, before)


def test_failure_midway_restores_the_private_model(classification):
    model, loss_fn, x, y = classification
    pr = lossatlas.Problem(model, loss_fn, (x, y))
    bad = {k: v.clone() for k, v in pr.params().items()}
    bad["net.0.weight"] = torch.zeros(7, 5, dtype=torch.float64)  # wrong dtype → fails inside torch
    try:
        pr.evaluate_tensors(bad)
    except RuntimeError:
        pass
    # private copy got its own parameters back
    for name, p in pr._module.named_parameters():
        assert isinstance(p, torch.nn.Parameter), name
    assert pr.loss(pr.params()) == lossatlas.Problem(model, loss_fn, (x, y)).loss(pr.params())
