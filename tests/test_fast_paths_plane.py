"""Differential tests of the MLP-plane fast paths (issue 17): the fold's combination with the ReLU in
its last pass, direct child dispatch and in-place activations in ``nn.Sequential``, and the loop's
row-cached parameter update, each against the naive evaluation over several model families, and
each independent of how the points are chunked (kill-and-resume stays bit-identical)."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import lossatlas
from lossatlas import _fast_paths as FP
from lossatlas._linear_fold import _Scratch
from lossatlas.evaluator import PointEvaluator
from lossatlas.testing import assert_close, naive_surface

F32, F64 = torch.float32, torch.float64
AXES = [np.linspace(-0.8, 0.8, 4), np.array([-0.6, 0.0, -0.0, 0.45])]


class Custom(nn.Module):
    """Not a Sequential: every layer through Module.__call__ (no container fast path)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 12), nn.Linear(12, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) * 0.5 + 0.1)


def _families():
    torch.manual_seed(0)
    return {
        "mlp relu": nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)),
        "mlp no bias": nn.Sequential(nn.Linear(6, 16, bias=False), nn.ReLU(), nn.Linear(16, 16, bias=False),
                                     nn.ReLU(), nn.Linear(16, 4, bias=False)),
        "tanh": nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)),
        "gelu": nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU(approximate="tanh"),
                              nn.Linear(16, 4)),
        "sigmoid + relu": nn.Sequential(nn.Linear(6, 16), nn.Sigmoid(), nn.Linear(16, 16), nn.ReLU(),
                                        nn.Linear(16, 4)),
        "nested": nn.Sequential(nn.Sequential(nn.Linear(6, 16), nn.ReLU()), nn.Linear(16, 4)),
        "custom": Custom(),
    }


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("name", list(_families()))
@pytest.mark.parametrize("dtype", [F32, F64])
def test_loop_plane_equals_naive_evaluation(name, dtype):
    model = _families()[name]
    x, y = _data()
    loss_fn = nn.CrossEntropyLoss()
    pr = lossatlas.Problem(model, loss_fn, (x, y), dtype=dtype, batch_size=25)  # two batches
    d = lossatlas.directions.random(pr, n=2, seed=1)
    ref = naive_surface(model, loss_fn, [(x[:25], y[:25]), (x[25:], y[25:])], pr.params(), d.vectors, AXES, dtype)
    mesh = np.stack(np.meshgrid(*AXES, indexing="ij"), -1).reshape(-1, 2)
    for exact_linear in (True, False):
        with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop", exact_linear=exact_linear) as ev:
            got = ev(mesh)["loss"].reshape(ref.shape)
        assert_close(got, ref, dtype, what=f"{name} {dtype} exact_linear={exact_linear}")


@pytest.mark.parametrize("name", ["mlp relu", "tanh", "custom"])
def test_points_do_not_depend_on_chunking_or_order(name):
    model = _families()[name]
    pr = lossatlas.Problem(model, nn.CrossEntropyLoss(), _data())
    d = lossatlas.directions.random(pr, n=2, seed=2)
    rows = np.array([[a, b] for a in (-0.5, 0.0, -0.0, 0.5, 0.5) for b in (-1.0, 0.0, 0.25)])
    order = np.random.default_rng(0).permutation(len(rows))
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop") as ev:
        whole = ev(rows)["loss"]
        shuffled = np.empty_like(whole)
        shuffled[order] = ev(rows[order])["loss"]
        single = np.array([ev(r[None])["loss"][0] for r in rows])
        halves = np.concatenate([ev(rows[:7])["loss"], ev(rows[7:])["loss"]])
    for other in (shuffled, single, halves):
        np.testing.assert_array_equal(whole, other)


def test_row_cached_parameter_update_is_bitwise_theta_plus_a_d1_plus_b_d2():
    """Without the fold the loop's value at a point is Problem.loss at ((θ + a·d₁) + b·d₂), bit for bit."""
    model = _families()["mlp relu"]
    pr = lossatlas.Problem(model, nn.CrossEntropyLoss(), _data())
    d = lossatlas.directions.random(pr, n=2, seed=3)
    theta = pr.params()
    rows = [(0.3, -0.2), (0.3, 0.0), (0.3, 0.7), (0.0, 0.5), (-0.0, 0.0), (-0.4, -0.2)]
    with PointEvaluator(pr, theta, d.vectors, strategy="loop", exact_linear=False, metrics=False) as ev:
        got = ev(np.array(rows))["loss"]
    for (a, b), value in zip(rows, got):
        p = {}
        for k, t in theta.items():
            v = t + a * d.vectors[0][k] if a != 0.0 else t.clone()
            p[k] = v + b * d.vectors[1][k] if b != 0.0 else v
        assert value == pr.loss(p), (a, b)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fold_combination_with_relu_equals_combination_then_relu(k):
    g = torch.Generator().manual_seed(k)
    entry = torch.randn(k + 1, 7, 5, generator=g)
    entry[0, 0, 0] = -0.0
    plain, fused = _Scratch(), _Scratch()
    for c in [(0.5, -0.25, 2.0), (0.5, 0.0, 1.0), (0.0, -0.0, 0.0), (-1.5, 0.75, -0.5), (-1.5, 3.0, 0.0)]:
        c = c[:k]
        want = torch.relu(plain.combine(entry, c).clone())
        got = fused.combine(entry, c, relu=True)
        assert torch.equal(got, want) and bool((got >= 0).all()), c
        # and equal to the from-scratch formula ((e₀ + c₁e₁) + c₂e₂) + … with separately rounded products
        ref = entry[0]
        for j, cj in enumerate(c):
            ref = ref + cj * entry[j + 1]
        assert torch.equal(got, torch.relu(ref)), c


def test_fold_relu_forward_is_installed_only_while_the_fold_is_and_survives_deep_copies():
    model = _families()["mlp relu"]
    x, y = _data()
    pr = lossatlas.Problem(model, nn.CrossEntropyLoss(), (x, y))
    d = lossatlas.directions.random(pr, n=2, seed=4)
    first = pr._module[0]
    assert FP.RELU_FORWARD not in first.__dict__
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop") as ev:
        assert ev.fold.active_layers == ["0"] and FP.RELU_FORWARD in first.__dict__
        clone = copy.deepcopy(pr._module)  # e.g. a curvature operator's copy while a surface runs
        with torch.no_grad():
            want = model(x)
            assert_close(clone(x).numpy(), want.numpy(), F32)
            with ev.fold.armed():
                ev.fold.coefficients = (0.0, 0.0)
                assert_close(clone(x).numpy(), want.numpy(), F32)  # the copy never reads the tables
    assert FP.RELU_FORWARD not in first.__dict__ and "forward" not in first.__dict__


def test_hooks_see_every_call_and_force_the_plain_path():
    model = _families()["mlp relu"]
    x, y = _data()
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(("relu", o.clone())))
    pr = lossatlas.Problem(model, nn.CrossEntropyLoss(), (x, y))
    seen.clear()
    d = lossatlas.directions.random(pr, n=2, seed=5)
    ref = naive_surface(model, nn.CrossEntropyLoss(), [(x, y)], pr.params(), d.vectors, AXES, F32)
    seen.clear()
    ds = lossatlas.surface(pr, None, d, steps=4, span=0.8, strategy="loop", progress=False)
    assert len(seen) >= 16 and all(bool((o >= 0).all()) for _, o in seen)
    got = lossatlas.surface(pr, None, d, steps=4, span=0.8, strategy="loop", progress=False)
    np.testing.assert_array_equal(ds.loss.values, got.loss.values)
    grid = [np.linspace(-0.8, 0.8, 4)] * 2
    ref = naive_surface(model, nn.CrossEntropyLoss(), [(x, y)], pr.params(), d.vectors, grid, F32)
    assert_close(ds.loss.values, ref, F32)


def test_global_module_hooks_disable_direct_dispatch():
    model = _families()["tanh"]
    x, _ = _data()
    net = copy.deepcopy(model)
    FP.patch_private_module(net)
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        handle.remove()
    assert calls.count("Linear") == 3  # every Linear went through Module.__call__
    with torch.no_grad():
        assert torch.equal(net(x), out)  # direct dispatch and in-place tanh: the same kernels, the same bits
        assert_close(out.numpy(), model(x).numpy(), F32)  # the last Linear's transposed GEMM: rounding


def test_low_precision_problem_stays_within_its_tolerance():
    model = _families()["mlp relu"]
    x, y = _data()
    pr = lossatlas.Problem(model, nn.CrossEntropyLoss(), (x, y), dtype=torch.bfloat16)
    d = lossatlas.directions.random(pr, n=2, seed=6)
    mesh = np.stack(np.meshgrid(*AXES, indexing="ij"), -1).reshape(-1, 2)
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop") as ev:
        folded = ev(mesh)["loss"]
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop", exact_linear=False) as ev:
        plain = ev(mesh)["loss"]
    np.testing.assert_allclose(folded, plain, rtol=2e-2)  # bf16 rounding of the activations
