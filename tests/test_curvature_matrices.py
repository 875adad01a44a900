"""Oracle tests of the curvature matrices beyond the Hessian/GGN: empirical Fisher, sampled Fisher,
diagonals, KFAC/EKFAC, damped inverse products (float64 dense references via torch.func)."""
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap

import lossatlas
from lossatlas import curvature as C
from lossatlas.errors import InvalidArgumentError
from lossatlas.testing import exact_hessian

F64 = torch.float64


def _mlp_problem(loss=None, n=40, out=4, batch_size=16, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, out)).double()
    x = torch.randn(n, 3, dtype=F64)
    loss = loss or torch.nn.CrossEntropyLoss()
    if isinstance(loss, torch.nn.CrossEntropyLoss):
        y = torch.randint(0, out, (n,))
    elif isinstance(loss, torch.nn.BCEWithLogitsLoss):
        y = torch.randint(0, 2, (n, out)).to(F64)
    else:
        y = torch.randn(n, out, dtype=F64)
    return net, loss, x, y, lossatlas.Problem(net, loss, (x, y), batch_size=batch_size)


def _per_sample_grads(net, loss, theta, x, y):
    def one(p, xi, yi):
        return loss(functional_call(net, p, (xi[None],)), yi[None])

    g = vmap(grad(one), in_dims=(None, 0, 0))(theta, x, y)
    return torch.cat([g[k].reshape(len(x), -1) for k in theta], 1)


def _ggn_oracle(net, loss, theta, x, y):
    """(1/N) Σ Jᵢᵀ ∇²_f ℓᵢ Jᵢ from dense per-sample Jacobians and output Hessians (torch.func)."""
    names = list(theta)
    flat = torch.cat([theta[k].reshape(-1) for k in names])
    sizes = [theta[k].numel() for k in names]

    def f(vec, xi):
        p = {k: t.reshape(theta[k].shape) for k, t in zip(names, vec.split(sizes))}
        return functional_call(net, p, (xi[None],))[0]

    total = 0
    for xi, yi in zip(x, y):
        out = f(flat, xi)
        J = torch.func.jacrev(f)(flat, xi)
        Hout = torch.func.hessian(lambda o: loss(o[None], yi[None]))(out)
        total = total + J.T @ Hout @ J
    return total / len(x)


@pytest.mark.parametrize("loss", [torch.nn.CrossEntropyLoss(), torch.nn.MSELoss(), torch.nn.BCEWithLogitsLoss()],
                         ids=["ce", "mse", "bce"])
def test_empirical_fisher_is_mean_of_gradient_outer_products(loss):
    net, loss, x, y, problem = _mlp_problem(loss)
    G = _per_sample_grads(net, loss, problem.params(), x, y)
    ef = C.ef_operator(problem, dtype=F64)
    dense = ef.dense()
    assert torch.allclose(dense, G.T @ G / len(x), rtol=1e-10, atol=1e-13)
    assert float(torch.linalg.eigvalsh(dense).min()) > -1e-12
    v = torch.randn(ef.shape[0], dtype=F64)
    value, stderr = ef.mv_stderr(v)
    assert torch.allclose(value, ef @ v, atol=1e-13) and not stderr.any()  # not sampled


def test_ef_selection_and_float32():
    net, loss, x, y, problem = _mlp_problem()
    G = _per_sample_grads(net, loss, problem.params(), x, y)
    ef = C.ef_operator(problem, params="2", dtype=torch.float32)  # the last layer only, float32
    assert ef.names == ("2.weight", "2.bias") and ef.dtype == torch.float32
    k = ef.shape[0]
    assert torch.allclose(ef.dense().double(), (G.T @ G / len(x))[-k:, -k:], rtol=1e-4, atol=1e-6)


def test_fisher_with_its_labels_and_in_expectation():
    net, loss, x, y, problem = _mlp_problem()
    theta = problem.params()
    F = C.fisher_operator(problem, dtype=F64, mc_samples=3, seed=5)
    dense = F.dense()
    labels = torch.cat(F.labels, dim=1)  # (M, N): the draws of every batch
    oracle = sum(_per_sample_grads(net, loss, theta, x, labels[m]).T @ _per_sample_grads(net, loss, theta, x,
                                                                                          labels[m])
                 for m in range(3)) / (3 * len(x))
    assert torch.allclose(dense, oracle, rtol=1e-10, atol=1e-13)
    # same seed → same bytes; another seed → other draws
    assert torch.equal(C.fisher_operator(problem, dtype=F64, mc_samples=3, seed=5).dense(), dense)
    assert not torch.equal(C.fisher_operator(problem, dtype=F64, mc_samples=3, seed=6).dense(), dense)
    streamed = C.fisher_operator(problem, dtype=F64, mc_samples=3, seed=5, retain=False)
    assert not streamed.retained and torch.allclose(streamed.dense(), dense, rtol=1e-12, atol=1e-15)
    w = torch.randn(dense.shape[0], dtype=F64)
    assert torch.allclose(streamed.mv_stderr(w)[1], F.mv_stderr(w)[1], rtol=1e-10, atol=1e-15)
    # E[F] = Jᵀ ∇²ℓ J (the GGN): a product with many draws within its Monte-Carlo error
    ggn = _ggn_oracle(net, loss, theta, x, y)
    big = C.fisher_operator(problem, dtype=F64, mc_samples=400, seed=1)
    v = torch.randn(big.shape[0], dtype=F64, generator=torch.Generator().manual_seed(0))
    value, stderr = big.mv_stderr(v)
    z = ((value - ggn @ v) / stderr).numpy()
    assert np.all(np.isfinite(z)) and np.abs(z).max() < 5 and 0.3 < float(np.mean(z ** 2)) < 3


@pytest.mark.parametrize("loss", [torch.nn.MSELoss(), torch.nn.BCEWithLogitsLoss()], ids=["mse", "bce"])
def test_fisher_expectation_is_the_ggn_for_gaussian_and_bernoulli(loss):
    net, loss, x, y, problem = _mlp_problem(loss, out=2)
    ggn = _ggn_oracle(net, loss, problem.params(), x, y)
    F = C.fisher_operator(problem, dtype=F64, mc_samples=300, seed=2)
    v = torch.randn(F.shape[0], dtype=F64, generator=torch.Generator().manual_seed(1))
    value, stderr = F.mv_stderr(v)
    z = ((value - ggn @ v) / stderr).numpy()  # entries are correlated: one draw moves them together
    assert np.abs(z).max() < 5 and float(np.mean(z ** 2)) < 3
    assert torch.allclose(C.ggn_operator(problem, dtype=F64).dense(), ggn, rtol=1e-9, atol=1e-12)


def test_fisher_rejects_non_likelihood_losses():
    torch.manual_seed(0)
    data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
    smoothed = lossatlas.Problem(torch.nn.Linear(3, 2), torch.nn.CrossEntropyLoss(label_smoothing=0.1), data)
    with pytest.raises(InvalidArgumentError, match="label_smoothing"):
        C.fisher_operator(smoothed)
    huber = lossatlas.Problem(torch.nn.Linear(3, 2), torch.nn.HuberLoss(), (data[0], torch.randn(8, 2)))
    with pytest.raises(InvalidArgumentError, match="HuberLoss"):
        C.fisher_operator(huber)
    with pytest.raises(ValueError, match="mc_samples"):
        C.fisher_operator(lossatlas.Problem(torch.nn.Linear(3, 2), torch.nn.CrossEntropyLoss(), data), mc_samples=0)


def test_hessian_diagonal_exact_and_hutchinson():
    net, loss, x, y, problem = _mlp_problem()
    theta = problem.params()
    H = exact_hessian(net, loss, [(x, y)], theta)
    d = C.diagonal(problem, dtype=F64)
    assert d.method == "exact" and d.products == H.shape[0]
    assert np.allclose(d.values, H.diag().numpy(), rtol=1e-10, atol=1e-13) and not d.stderr.any()
    assert set(d.as_params()) == set(theta) and d.as_params()["0.weight"].shape == (5, 3)
    h = C.diagonal(problem, dtype=F64, method="hutchinson", samples=300, seed=3)
    z = (h.values - H.diag().numpy()) / h.stderr
    assert h.samples == 300 and np.abs(z).max() < 5 and 0.3 < float(np.mean(z ** 2)) < 3
    again = C.diagonal(problem, dtype=F64, method="hutchinson", samples=300, seed=3)
    assert np.array_equal(again.values, h.values)
    # a diagonal of another matrix, and of an operator
    ef = C.ef_operator(problem, dtype=F64)
    assert np.allclose(C.diagonal(ef).values, ef.dense().diag().numpy(), rtol=1e-10, atol=1e-13)
    assert np.allclose(C.diagonal(problem, curvature="ggn", dtype=F64).values,
                       _ggn_oracle(net, loss, theta, x, y).diag().numpy(), rtol=1e-9, atol=1e-12)
    assert "Diagonal(kind='hessian'" in repr(d)


def test_kfac_is_exact_for_one_linear_layer_under_mse():
    pytest.importorskip("curvlinops")
    torch.manual_seed(0)
    x = torch.randn(50, 3, dtype=F64)
    problem = lossatlas.Problem(torch.nn.Linear(3, 2).double(), torch.nn.MSELoss(), (x, torch.randn(50, 2,
                                                                                                     dtype=F64)),
                                batch_size=16)
    ggn = C.ggn_operator(problem).dense()
    # the exact Kronecker factors: GGN = (2/D)·I_out ⊗ mean(ã ãᵀ) with ã = (x, 1), over [W | b] rows
    a = torch.cat([x, torch.ones(50, 1, dtype=F64)], 1)
    A = a.T @ a / 50
    joint = torch.kron(torch.eye(2, dtype=F64), A) * (2 / 2)
    order = [r * 4 + c for r in range(2) for c in range(3)] + [r * 4 + 3 for r in range(2)]  # W then b
    assert torch.allclose(joint[order][:, order], ggn, atol=1e-13)
    for ekfac in (False, True):
        K = C.kfac_operator(problem, ekfac=ekfac)
        assert torch.allclose(K.dense(), ggn, atol=1e-12), ekfac
    K = C.kfac_operator(problem)
    b = torch.randn(8, dtype=F64)
    s = C.inverse_product(K, b, damping=0.1, method="kfac")
    assert torch.allclose(s.x, torch.linalg.solve(ggn + 0.1 * torch.eye(8, dtype=F64), b), atol=1e-12)
    assert s.iterations == 0 and s.relative_residual < 1e-12 and s.converged


def test_kfac_of_a_two_layer_net_is_block_diagonal_and_exact_on_the_last_layer_for_mse():
    pytest.importorskip("curvlinops")
    net, loss, x, y, problem = _mlp_problem(torch.nn.MSELoss(), out=2, batch_size=40)
    K = C.kfac_operator(problem).dense()
    ggn = C.ggn_operator(problem, dtype=F64).dense()
    first = 5 * 3 + 5
    assert not K[:first, first:].any()  # no cross-layer blocks
    assert torch.allclose(K[first:, first:], ggn[first:, first:], atol=1e-12)
    assert float(torch.linalg.eigvalsh(K).min()) > -1e-12
    with pytest.raises(InvalidArgumentError, match="KFAC"):
        C.kfac_operator(lossatlas.Problem(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2)),
                                          torch.nn.MSELoss(), (x.float(), y.float())))


def test_cg_inverse_products_against_solve():
    net, loss, x, y, problem = _mlp_problem()
    theta = problem.params()
    H = exact_hessian(net, loss, [(x, y)], theta)
    lam = 1.0 + max(0.0, -float(torch.linalg.eigvalsh(H).min()))
    b = torch.randn(H.shape[0], dtype=F64, generator=torch.Generator().manual_seed(0))
    s = C.inverse_product(problem, b, damping=lam, dtype=F64)
    exact = torch.linalg.solve(H + lam * torch.eye(H.shape[0], dtype=F64), b)
    assert s.converged and s.relative_residual <= 1e-10 and 0 < s.iterations <= H.shape[0] + 5
    cond = float(torch.linalg.cond(H + lam * torch.eye(H.shape[0], dtype=F64)))
    assert float((s.x - exact).norm() / exact.norm()) <= 10 * cond * 1e-10  # ‖δx‖/‖x‖ ≤ κ·relative residual
    assert s.products == s.iterations + 1 and "Solve(kind='hessian', method='cg'" in repr(s)
    # the GGN, damped
    G = _ggn_oracle(net, loss, theta, x, y)
    sg = C.inverse_product(problem, b, curvature="ggn", damping=0.01, dtype=F64)
    assert torch.allclose(sg.x, torch.linalg.solve(G + 0.01 * torch.eye(G.shape[0], dtype=F64), b), rtol=1e-6,
                          atol=1e-8)
    # an indefinite matrix without damping: stopped and said so
    if float(torch.linalg.eigvalsh(H).min()) < 0:
        bad = C.inverse_product(problem, torch.linalg.eigh(H).eigenvectors[:, 0], dtype=F64)
        assert not bad.converged and "non-positive curvature" in bad.notes[0]
    # float32 and a parameter dict
    s32 = C.inverse_product(problem, problem.params(), damping=lam, params="2", tol=1e-5, dtype=torch.float32)
    assert s32.x.dtype == torch.float32 and s32.converged and s32.relative_residual <= 1e-5
    with pytest.raises(ValueError, match="damping"):
        C.inverse_product(problem, b, damping=-1.0)
    with pytest.raises(ValueError, match="method"):
        C.inverse_product(problem, b, method="lu")


def test_results_are_frozen():
    net, loss, x, y, problem = _mlp_problem()
    d = C.diagonal(problem, dtype=F64)
    with pytest.raises(Exception):
        d.method = "x"
    s = C.inverse_product(problem, torch.ones(C.hessian_operator(problem).shape[0]), damping=10.0)
    with pytest.raises(Exception):
        s.iterations = 0
    assert math.isfinite(s.residual)


def test_kfac_conv2d_runs_and_is_a_positive_semi_definite_block_diagonal():
    pytest.importorskip("curvlinops")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3)).double()
    x, y = torch.randn(12, 1, 6, 6, dtype=F64), torch.randint(0, 3, (12,))
    problem = lossatlas.Problem(net, torch.nn.CrossEntropyLoss(), (x, y))
    K = C.kfac_operator(problem).dense()
    conv = 2 * 9 + 2
    assert K.shape == (conv + 32 * 3 + 3,) * 2 and not K[:conv, conv:].any()
    assert float(torch.linalg.eigvalsh(K).min()) > -1e-12
    # the last (Linear) layer's block: KFAC of the GGN restricted to it, the same as KFAC of that layer alone
    last = C.kfac_operator(problem, params="2").dense()
    assert torch.allclose(K[conv:, conv:], last, atol=1e-12)
    mc = C.kfac_operator(problem, fisher_type="mc", mc_samples=2, seed=1).dense()
    assert torch.equal(mc, C.kfac_operator(problem, fisher_type="mc", mc_samples=2, seed=1).dense())
