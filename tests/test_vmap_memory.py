"""Memory bounds of grid evaluation (issue 17, "big models"): the vmap strategy never materialises
more than a bounded number of parameter copies, θ₀ costs the Problem no memory of its own, the
behaviour probes are made one point at a time — and none of it changes a value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lossatlas
from lossatlas import _behaviour
from lossatlas import evaluator as E
from lossatlas.evaluator import PointEvaluator
from lossatlas.testing import assert_close, naive_surface


def _problem(width=16, n=40, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)
    return net, x, y, lossatlas.Problem(net, nn.CrossEntropyLoss(), (x, y))


def _param_bytes(problem):
    return sum(v.numel() * v.element_size() for v in problem.params().values())


def test_vmap_batch_bounds_parameter_copies(monkeypatch):
    _, _, _, pr = _problem()
    d = lossatlas.directions.random(pr, n=2, seed=0)
    size = _param_bytes(pr)
    for copies in (1, 3, 5):
        monkeypatch.setattr(E, "VMAP_PARAM_MEMORY", copies * size + size // 2)
        with PointEvaluator(pr, pr.params(), d.vectors, strategy="vmap") as ev:
            assert ev.vmap_batch == copies  # B·|θ| ≤ max(|θ|, VMAP_PARAM_MEMORY)
    monkeypatch.setattr(E, "VMAP_PARAM_MEMORY", 1)
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="vmap") as ev:
        assert ev.vmap_batch == 1  # a model larger than the allowance: one point at a time


def test_large_model_needs_no_activation_probe_and_auto_keeps_the_loop(monkeypatch):
    _, _, _, pr = _problem()
    d = lossatlas.directions.random(pr, n=2, seed=0)
    monkeypatch.setattr(E, "VMAP_PARAM_MEMORY", 1)

    def refuse(self):
        raise AssertionError("the forward pass that measures activations should not run")
    monkeypatch.setattr(PointEvaluator, "_activation_bytes", refuse)
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="auto") as ev:
        assert (ev.vmap_batch, ev.strategy) == (1, "loop")


def test_explicit_loop_runs_no_vmap_measurement(monkeypatch):
    _, _, _, pr = _problem()
    d = lossatlas.directions.random(pr, n=2, seed=0)

    def refuse(self):
        raise AssertionError("strategy='loop' measured the vmap batch")
    monkeypatch.setattr(PointEvaluator, "_activation_bytes", refuse)
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop") as ev:
        assert ev.vmap_batch is None
        ev(np.zeros((2, 2)))


@pytest.mark.parametrize("copies", [1, 3])
def test_vmap_in_small_batches_matches_the_naive_loop_and_the_default_batch(monkeypatch, copies):
    net, x, y, pr = _problem()
    d = lossatlas.directions.random(pr, n=2, seed=0)
    axes = [np.linspace(-1, 1, 5)] * 2
    ref = naive_surface(net, nn.CrossEntropyLoss(), [(x, y)], pr.params(), d.vectors, axes, torch.float32)
    default = lossatlas.surface(pr, None, d, steps=5, strategy="vmap", progress=False)
    monkeypatch.setattr(E, "VMAP_PARAM_MEMORY", copies * _param_bytes(pr))
    small = lossatlas.surface(pr, None, d, steps=5, strategy="vmap", progress=False)
    loop = lossatlas.surface(pr, None, d, steps=5, strategy="loop", progress=False)
    assert small.attrs["strategy"] == "vmap"
    for ds in (small, default, loop):
        assert_close(ds.loss.values, ref, torch.float32, what="loss vs naive loop")
    np.testing.assert_array_equal(small.loss.values, default.loss.values)  # the batch size changes no bit here


def test_problem_center_shares_the_private_module_parameters():
    net, _, _, pr = _problem()
    module = dict(pr.module.named_parameters())
    for name, t in pr._center.items():
        assert t.data_ptr() == module[name].data_ptr()  # θ₀ costs no memory of its own
    for name, t in pr.params().items():  # params() is still a copy, equal to the model's values
        assert t.data_ptr() != module[name].data_ptr()
        assert torch.equal(t, dict(net.named_parameters())[name].detach())
    with torch.no_grad():
        next(net.parameters()).add_(1.0)  # the user's model changes: the snapshot does not
    assert not torch.equal(pr.params()["0.weight"], net[0].weight.detach())
    p64 = pr.with_dtype(torch.float64)
    for name, t in p64.params().items():
        assert torch.equal(t, pr.params()[name].double())
    state = {k: v.clone() for k, v in net.state_dict().items()}
    ps = pr.with_state(state)
    for name, t in ps.params().items():
        assert torch.equal(t, state[name])


def _old_probe_points(problem):
    """The probe points as formerly made (all at once, base + r·k): the new generator must match."""
    center = problem._center
    gen = torch.Generator(device="cpu").manual_seed(_behaviour.SEED)
    points = [center]
    for eps in _behaviour.PROBES:
        point = {}
        for name in problem.param_names:
            t = center[name]
            r = torch.randn(tuple(t.shape), generator=gen, dtype=torch.float64)
            base = t.detach().to("cpu", torch.float64)
            scale = float(base.norm()) or 1.0
            rn = float(r.norm()) or 1.0
            point[name] = (base + r * (eps * scale / rn)).to(device=t.device, dtype=t.dtype)
        points.append(point)
    return points


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_behaviour_probe_points_are_bit_identical_to_the_former_ones(dtype):
    _, _, _, pr = _problem()
    pr = pr.with_dtype(dtype)
    new = list(_behaviour._probe_points(pr))
    old = _old_probe_points(pr)
    assert len(new) == len(old) == 1 + len(_behaviour.PROBES)
    for a, b in zip(new, old):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])
