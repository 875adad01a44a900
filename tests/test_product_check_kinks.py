"""The automatic product-method check and kinks (ReLU, max-pool).

Finite differences of exact gradients across ReLU / max-pool kinks measure a smoothed curvature, not
the Hessian at θ (the number of kinks crossed grows ∝ h, so the jump term of D(h) is nearly constant
in h and Richardson's error estimate stays small): they must never make the operator switch away
from the exact double-backward product, whose value (a.e.) is the library's Hessian. A custom
autograd.Function whose backward runs outside autograd (a silently partial Hessian) is still caught.
"""

import pytest
import torch
from _custom_functions import NumpyTanh

import lossatlas
from lossatlas import curvature as C
from lossatlas.testing import assert_close, exact_hessian

nn = torch.nn
F64 = torch.float64


def relu_mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def maxpool_cnn():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 3, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 3))


def kink_case(build, dtype, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g) if build is relu_mlp else torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    torch.manual_seed(seed)
    model = build()
    return model, (x, y), lossatlas.Problem(model, nn.CrossEntropyLoss(), (x, y), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("build", [relu_mlp, maxpool_cnn], ids=["relu-mlp", "maxpool-cnn"])
def test_kinks_keep_double_backward_and_its_products_are_the_hessian(build, dtype):
    model, (x, y), problem = kink_case(build, dtype)
    op = C.hessian_operator(problem)
    assert op.method == "double-backward" and op.exact and op.method_notes == [] and op.product_error == 0.0
    reference = exact_hessian(model, nn.CrossEntropyLoss(), [(x, y)], problem.params())
    # float32 products accumulate rounding over the batch: 100 × the float32 tolerance
    assert_close(op.dense().to(F64).numpy(), reference.numpy(), dtype,
                 what="Hessian by double backward", factor=1.0 if dtype == F64 else 100.0)


@pytest.mark.parametrize("build", [relu_mlp, maxpool_cnn], ids=["relu-mlp", "maxpool-cnn"])
def test_finite_differences_across_kinks_cannot_switch_the_method(build, monkeypatch):
    """What kinks do to the check, made deterministic: a finite-difference "product" that is a smoothed
    curvature (here half the Hessian) with a tiny error estimate. Before the fix it switched every
    product to finite differences; torch's own operations are not checked against differences now."""
    _, _, problem = kink_case(build, torch.float32)
    op = C.hessian_operator(problem)
    reference = C.hessian_operator(problem, method="double-backward")

    def smoothed(v):
        op.product_error = 1e-9
        return 0.5 * reference.mv(v)

    monkeypatch.setattr(op, "_finite_difference", smoothed)
    assert op.method == "double-backward" and op.method_notes == []
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(op.mv(v), reference.mv(v), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_cnn_digits_keeps_exact_products(dtype):
    problem = lossatlas.examples.load("cnn-digits", dtype=dtype).problem
    op = C.hessian_operator(problem)
    assert op.method == "double-backward" and op.method_notes == []
    # against an independent exact method in float64 (forward-over-reverse, same a.e. Hessian)
    ref = C.hessian_operator(problem, dtype=F64, method="forward-over-reverse")
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(2), dtype=F64)
    got, want = op.mv(v).to(F64), ref.mv(v)
    scale = float(want.abs().max())
    assert_close(got.numpy() / scale, want.numpy() / scale, dtype, what="cnn-digits Hessian product",
                 factor=1.0 if dtype == F64 else 100.0)


class OpaqueReluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 6), nn.Linear(6, 4), nn.Linear(4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(NumpyTanh.apply(self.a(x)))))


def test_a_non_differentiable_custom_backward_is_still_caught():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(24, 3, generator=g, dtype=F64), torch.randn(24, 1, generator=g, dtype=F64)
    torch.manual_seed(5)
    problem = lossatlas.Problem(OpaqueReluNet().double(), nn.MSELoss(), (x, y), dtype=F64)
    op = C.hessian_operator(problem)
    assert op.method == "finite-difference" and not op.exact
    assert any("disagreed with finite differences" in n and "NumpyTanh" in n for n in op.method_notes)
    assert op._cut == {"NumpyTanh"}  # found structurally (the backward's result is cut from the graph)


class TorchTanh(torch.autograd.Function):
    """tanh with a backward of torch operations: differentiable, so double backward is exact."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1.0 - torch.tanh(x) ** 2)


class CustomTanhNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 1)

    def forward(self, x):
        return self.b(TorchTanh.apply(self.a(x)))


def test_a_differentiable_custom_backward_keeps_double_backward():
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(32, 3, generator=g, dtype=F64), torch.randn(32, 1, generator=g, dtype=F64)
    torch.manual_seed(6)
    problem = lossatlas.Problem(CustomTanhNet().double(), nn.MSELoss(), (x, y), dtype=F64)
    op = C.hessian_operator(problem)
    assert op.method == "double-backward" and op._opaque == {"TorchTanh"} and not op._cut
    p = problem.params()

    def by_hand(flat):
        q = lossatlas.params.unflatten(flat, p)
        h = torch.tanh(x @ q["a.weight"].T + q["a.bias"])
        return nn.functional.mse_loss(h @ q["b.weight"].T + q["b.bias"], y)

    reference = torch.func.hessian(by_hand)(lossatlas.params.flatten(p))
    assert_close(op.dense().numpy(), reference.numpy(), F64, what="Hessian through a custom Function")


@pytest.mark.parametrize("build", [relu_mlp, maxpool_cnn], ids=["relu-mlp", "maxpool-cnn"])
def test_forward_over_reverse_across_kinks_is_confirmed_without_finite_differences(build, monkeypatch):
    """When double backward is unavailable, forward-over-reverse is confirmed by reverse-over-forward,
    not by finite differences across kinks (here made deterministic: a smoothed "product")."""
    model, (x, y), problem = kink_case(build, F64)
    op = C.hessian_operator(problem, retain=False)

    def no_double_backward(v, check):
        raise NotImplementedError("the derivative for 'fused_op_backward' is not implemented.")

    def smoothed(v):
        op.product_error = 1e-12
        return 0.5 * op._forward_over_reverse(v)

    monkeypatch.setattr(op, "_double_backward", no_double_backward)
    monkeypatch.setattr(op, "_finite_difference", smoothed)
    assert op.method == "forward-over-reverse" and op.exact and op.product_error == 0.0
    reference = exact_hessian(model, nn.CrossEntropyLoss(), [(x, y)], problem.params())
    assert_close(op.dense().numpy(), reference.numpy(), F64, what="Hessian by forward-over-reverse")
