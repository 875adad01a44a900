"""Curvature against exact Hessians (torch.func.hessian in float64), closed forms and brute force."""
import copy

import numpy as np
import pytest
import torch

import lossatlas
from lossatlas import curvature as C
from lossatlas.testing import EIGEN_RTOL, EIGEN_TOL, assert_model_unchanged, exact_hessian, model_state


def batches_of(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def with_exact_hessian(model, loss_fn, x, y, batch_size=16):
    problem = lossatlas.Problem(model, loss_fn, (x, y), dtype=torch.float64, batch_size=batch_size)
    return problem, exact_hessian(model, loss_fn, batches_of(x, y, batch_size), problem.params())


@pytest.fixture
def mlp(classification):
    """Tanh MLP, 122 parameters, 60 samples in batches 16/16/16/12 (exercises batch weighting)."""
    return with_exact_hessian(*classification)


@pytest.fixture
def cnn(cnn_data):
    """Conv + BatchNorm (stored statistics: eval mode) + dropout + linear, 243 parameters."""
    return with_exact_hessian(*cnn_data)


def check_extremes(problem, H, k=5):
    exact = torch.linalg.eigvalsh(H).numpy()
    lmax = exact[-1]
    eig = C.eigenvalues(problem, k=k, which="both", tol=EIGEN_TOL, progress=False)
    top, bottom = eig.values[:k], eig.values[k:][::-1]
    np.testing.assert_allclose(top, exact[::-1][:k], rtol=EIGEN_RTOL)
    np.testing.assert_allclose(bottom, exact[:k], rtol=0, atol=EIGEN_RTOL * lmax)
    assert eig.all_converged
    assert np.all(eig.residuals <= eig.tol * eig.scale)
    # residuals are real: recompute ‖Hv − λv‖ with the exact matrix
    for value, vec, res in zip(eig.values, eig.vectors, eig.residuals):
        v = torch.cat([t.reshape(-1) for t in vec.values()])
        assert abs(float(torch.linalg.vector_norm(H @ v - value * v)) - res) < 1e-9 * lmax
        assert abs(float(v.norm()) - 1.0) < 1e-12
    return eig


def test_operator_is_the_exact_hessian(mlp):
    problem, H = mlp
    op = C.hessian_operator(problem)
    assert op.retained and op.shape == H.shape
    torch.testing.assert_close(op.dense(), H, rtol=1e-10, atol=1e-12)
    fresh = C.hessian_operator(problem, retain=False)  # recomputes the graph at every product
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fresh.mv(v), H @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op @ v, H @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.to_scipy() @ v.numpy(), (H @ v).numpy(), rtol=1e-10, atol=1e-12)
    block = torch.randn(H.shape[0], 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for vectorize in (False, True):  # a loop of products, or vmap(jvp(grad)) over blocks of columns
        torch.testing.assert_close(C.hessian_operator(problem, vectorize=vectorize).mm(block), H @ block,
                                   rtol=1e-10, atol=1e-12)
    applied = op.apply(op.unflatten(v))
    torch.testing.assert_close(op.flatten(applied), H @ v, rtol=1e-10, atol=1e-12)


def test_top_and_bottom_five_match_exact_mlp(mlp):
    eig = check_extremes(*mlp)
    assert eig.min < 0  # a tanh network at random weights has negative curvature


def test_top_and_bottom_five_match_exact_cnn_with_batchnorm(cnn):
    check_extremes(*cnn)


def test_which_orders_and_magnitude(mlp):
    problem, H = mlp
    exact = torch.linalg.eigvalsh(H).numpy()
    kw = dict(tol=EIGEN_TOL, progress=False)
    largest = C.eigenvalues(problem, k=3, which="largest", **kw).values
    smallest = C.eigenvalues(problem, k=3, which="smallest", **kw).values
    magnitude = C.eigenvalues(problem, k=3, which="magnitude", **kw).values
    atol = EIGEN_RTOL * exact[-1]
    np.testing.assert_allclose(largest, exact[::-1][:3], atol=atol)
    np.testing.assert_allclose(smallest, exact[:3], atol=atol)
    by_magnitude = exact[np.argsort(-np.abs(exact))][:3]
    np.testing.assert_allclose(magnitude, by_magnitude, atol=atol)


def test_float32_agrees_with_float64(classification):
    model, loss_fn, x, y = classification
    p32 = lossatlas.Problem(model, loss_fn, (x, y))
    e32 = C.eigenvalues(p32, k=1, which="both", tol=1e-4, progress=False)
    e64 = C.eigenvalues(p32, k=1, which="both", tol=1e-9, dtype=torch.float64, progress=False)
    assert e32.vectors[0]["net.0.weight"].dtype == torch.float32
    assert e64.vectors[0]["net.0.weight"].dtype == torch.float64
    np.testing.assert_allclose(e32.values, e64.values, atol=1e-4 * e64.scale)


def test_logistic_regression_closed_form():
    """H = X̃ᵀ diag(p(1 − p)) X̃ / n with X̃ = [X, 1] (weights then bias), p = σ(X̃ w)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(80, 4, generator=g, dtype=torch.float64)
    y = (torch.rand(80, generator=g, dtype=torch.float64) < 0.4).to(torch.float64).unsqueeze(1)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1).double()
    problem = lossatlas.Problem(model, torch.nn.BCEWithLogitsLoss(), (x, y), batch_size=32)
    xt = torch.cat([x, torch.ones(80, 1, dtype=torch.float64)], dim=1)
    p = torch.sigmoid(model(x).detach()).squeeze(1)
    closed = xt.T @ (xt * (p * (1 - p)).unsqueeze(1)) / len(x)
    op = C.hessian_operator(problem)
    torch.testing.assert_close(op.dense(), closed, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(C.ggn_operator(problem).dense(), closed, rtol=1e-12, atol=1e-14)  # linear model
    eig = C.eigenvalues(problem, k=2, which="both", tol=EIGEN_TOL, progress=False)
    exact = torch.linalg.eigvalsh(closed).numpy()
    np.testing.assert_allclose(eig.values, [exact[-1], exact[-2], exact[1], exact[0]], rtol=EIGEN_RTOL)
    assert eig.min > 0  # convex: positive definite
    tr = C.trace(problem, probes=18, progress=False)  # n = 5 ≤ 18 / 3: the products span the space
    assert tr.stderr == 0.0 and abs(tr.value - float(torch.trace(closed))) < 1e-12


def test_ggn_is_jt_hout_j_and_psd(classification):
    model, loss_fn, x, y = classification
    problem = lossatlas.Problem(model, loss_fn, (x, y), dtype=torch.float64, batch_size=25)
    theta = problem.params()
    names = list(theta)
    m = problem._module
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(m, p, (x.double(),)))(theta)
    J = torch.cat([jac[k].reshape(len(x) * 3, -1) for k in names], dim=1)  # (N·C, P)
    out = m(x.double()).detach()
    h_out = torch.func.hessian(lambda o: loss_fn(o, y))(out).reshape(len(x) * 3, len(x) * 3)
    expected = J.T @ h_out @ J
    G = C.ggn_operator(problem).dense()
    torch.testing.assert_close(G, expected, rtol=1e-10, atol=1e-12)
    assert float(torch.linalg.eigvalsh(G).min()) > -1e-12
    eig = C.eigenvalues(problem, k=1, which="smallest", curvature="ggn", tol=EIGEN_TOL, progress=False)
    assert eig.values[0] > -1e-9


def test_ggn_of_mse_network():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 2, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    problem = lossatlas.Problem(net, torch.nn.MSELoss(), (x, x.flip(1)))
    theta = problem.params()
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(problem._module, p, (x,)))(theta)
    J = torch.cat([jac[k].reshape(60, -1) for k in theta], dim=1)
    expected = J.T @ J * (2.0 / 60)  # MSE over N·C outputs: ∇²_f = 2/(N·C) I
    torch.testing.assert_close(C.ggn_operator(problem).dense(), expected, rtol=1e-10, atol=1e-12)


def test_trace_hutchinson_within_three_stderr_and_layers(mlp):
    problem, H = mlp
    exact = float(torch.trace(H))
    est = C.trace(problem, method="hutchinson", probes=200, seed=0, progress=False)
    assert abs(est.value - exact) <= 3 * est.stderr
    assert est.samples == 200 and est.products == 200
    assert sum(e.value for e in est.layers.values()) == pytest.approx(est.value, rel=1e-12)
    blocks = {"net.0": (0, 42), "net.2": (42, 98), "net.4": (98, 122)}
    assert set(est.layers) == set(blocks)
    for name, (s, e) in blocks.items():
        layer = est.layers[name]
        assert abs(layer.value - float(torch.trace(H[s:e, s:e]))) <= 4 * layer.stderr + 1e-12


def test_hutchpp_within_one_percent_with_100_products():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x[:300] / 16, dtype=torch.float32), torch.tensor(y[:300])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    problem = lossatlas.Problem(net, torch.nn.CrossEntropyLoss(), (x, y), dtype=torch.float64)
    H = exact_hessian(net, torch.nn.CrossEntropyLoss(), [(x, y)], problem.params())
    exact = float(torch.trace(H))
    op = C.hessian_operator(problem)
    for seed in range(2):
        est = C.trace(op, probes=100, seed=seed, progress=False)
        assert est.products == 100
        assert abs(est.value - exact) <= 0.01 * abs(exact), (seed, est, exact)
        assert abs(est.value - exact) <= 3 * est.stderr


def test_density_integrates_to_one_and_negative_mass(mlp):
    problem, H = mlp
    exact = torch.linalg.eigvalsh(H).numpy()
    d = C.density(problem, iters=40, probes=8, seed=0, progress=False)
    assert d.integral() == pytest.approx(1.0, abs=1e-6)
    fraction = float((exact < 0).mean())
    # the stderr counts the probes' sampling error and the quadrature's uncertainty near zero
    assert abs(d.negative_mass.value - fraction) <= 3 * d.negative_mass.stderr
    lo, hi = d.negative_bounds
    assert lo - 3 * d.negative_mass.stderr <= fraction <= hi + 3 * d.negative_mass.stderr
    assert abs(d.trace.value - exact.sum()) <= 3 * d.trace.stderr
    assert exact[0] - 1e-9 <= d.lambda_min and d.lambda_max <= exact[-1] + 1e-9  # Ritz values interlace
    np.testing.assert_allclose(d.weights.sum(axis=1), 1.0, rtol=1e-12)
    t = np.array([-0.1, 0.0, 0.2])
    kernel = np.exp(-0.5 * ((t[:, None, None] - d.nodes) / d.sigma) ** 2) / (d.sigma * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(d(t), (kernel * d.weights).sum(axis=(1, 2)) / d.nodes.shape[0])


def test_density_is_exact_when_iterations_cover_the_space():
    """With as many Lanczos steps as rows, each probe's quadrature is exact: its nodes are the
    eigenvalues."""
    x = torch.linspace(-1, 1, 9, dtype=torch.float64).reshape(-1, 1)
    problem = lossatlas.Problem(torch.nn.Linear(1, 2).double(), torch.nn.MSELoss(), (x, x.repeat(1, 2)))
    H = C.hessian_operator(problem).dense()
    exact = torch.linalg.eigvalsh(H).numpy()
    d = C.density(problem, iters=50, probes=4, progress=False)
    assert d.iters == 4
    for nodes, weights in zip(d.nodes, d.weights):
        kept = nodes[weights > 1e-12]
        assert np.all(np.min(np.abs(kept[:, None] - exact[None, :]), axis=1) < 1e-10)


def test_unused_and_frozen_parameters():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 4)
            self.b = torch.nn.Linear(4, 2)
            self.unused = torch.nn.Parameter(torch.randn(5))
            self.frozen = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.frozen(self.b(torch.tanh(self.a(x))))

    torch.manual_seed(0)
    net = Net().double()
    net.frozen.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (20,), generator=g)
    problem = lossatlas.Problem(net, torch.nn.CrossEntropyLoss(), (x, y))
    assert "unused" in problem.param_names and "frozen.weight" not in problem.param_names
    H = exact_hessian(net, torch.nn.CrossEntropyLoss(), [(x, y)], problem.params())
    op = C.hessian_operator(problem)
    torch.testing.assert_close(op.dense(), H, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(C.hessian_operator(problem, vectorize=True).dense(), H, rtol=1e-10, atol=1e-12)
    eig = C.eigenvalues(problem, k=2, which="both", tol=EIGEN_TOL, progress=False)
    assert eig.all_converged
    assert float(eig.vectors[0]["unused"].abs().max()) < 1e-8  # no curvature along an unused parameter
    tr = C.trace(problem, method="hutchinson", probes=50, progress=False)
    assert tr.layers["unused"].value == 0.0
    (start, stop), = op.layer_slices()["unused"]
    assert C.ggn_operator(problem).dense()[start:stop].abs().max() == 0.0


def test_dict_batches_with_a_closure():
    g = torch.Generator().manual_seed(2)
    data = {"x": torch.randn(24, 3, generator=g, dtype=torch.float64),
            "t": torch.randn(24, 1, generator=g, dtype=torch.float64)}
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()

    def closure(model_call, batch):  # a physics-style residual: no (inputs, targets) pair
        return ((model_call(batch["x"]) - batch["t"]) ** 2).mean() + 0.1 * (model_call(batch["x"]) ** 4).mean()

    problem = lossatlas.Problem(net, None, data, closure=closure, batch_size=10)
    batches = [{k: v[i:i + 10] for k, v in data.items()} for i in range(0, 24, 10)]
    H = exact_hessian(net, None, batches, problem.params(), closure=closure)
    for vectorize in (False, True):
        torch.testing.assert_close(C.hessian_operator(problem, vectorize=vectorize).dense(), H, rtol=1e-10,
                                   atol=1e-12)
    check_extremes(problem, H, k=2)
    with pytest.raises(lossatlas.InvalidArgumentError, match="closure"):
        C.ggn_operator(problem)


def test_parameter_subsets(mlp):
    problem, H = mlp
    layer = C.hessian_operator(problem, params="net.2")
    assert layer.names == ("net.2.weight", "net.2.bias")
    torch.testing.assert_close(layer.dense(), H[42:98, 42:98], rtol=1e-10, atol=1e-12)
    weights = C.hessian_operator(problem, params="weights")
    assert weights.names == ("net.0.weight", "net.2.weight", "net.4.weight")
    idx = torch.cat([torch.arange(0, 35), torch.arange(42, 91), torch.arange(98, 119)])
    torch.testing.assert_close(weights.dense(), H[idx][:, idx], rtol=1e-10, atol=1e-12)
    listed = C.hessian_operator(problem, params=["net.0.bias", "*.4.*"])
    assert listed.names == ("net.0.bias", "net.4.weight", "net.4.bias")
    picked = C.hessian_operator(problem, params=lambda name, t: t.ndim == 1)
    assert picked.names == ("net.0.bias", "net.2.bias", "net.4.bias")
    eig = C.eigenvalues(problem, k=1, params="net.2", tol=EIGEN_TOL, progress=False)
    assert eig.values[0] == pytest.approx(float(torch.linalg.eigvalsh(H[42:98, 42:98])[-1]), rel=EIGEN_RTOL)
    assert float(eig.vectors[0]["net.0.weight"].abs().max()) == 0.0  # zero outside the selection


def test_seeds_are_deterministic(mlp):
    problem, _ = mlp
    a = C.eigenvalues(problem, k=2, which="both", seed=3, progress=False)
    b = C.eigenvalues(problem, k=2, which="both", seed=3, progress=False)
    assert a.values.tobytes() == b.values.tobytes()
    assert lossatlas.params.fingerprint(a.vectors[0]) == lossatlas.params.fingerprint(b.vectors[0])
    t1, t2 = (C.trace(problem, seed=3, probes=30, progress=False) for _ in range(2))
    assert (t1.value, t1.stderr) == (t2.value, t2.stderr)
    assert C.trace(problem, seed=4, probes=30, progress=False).value != t1.value
    d1, d2 = (C.density(problem, seed=3, iters=10, probes=2, progress=False) for _ in range(2))
    assert d1.values.tobytes() == d2.values.tobytes()
    h1, h2 = (lossatlas.directions.hessian(problem, n=2, seed=3) for _ in range(2))
    assert h1.fingerprint() == h2.fingerprint()


def test_hessian_directions_show_the_curvature_they_claim(mlp):
    problem, H = mlp
    d = lossatlas.directions.hessian(problem, problem.params(), n=2, which="extremes", seed=0, tol=1e-9)
    exact = torch.linalg.eigvalsh(H).numpy()
    spec = d.spec
    assert spec["kind"] == "hessian" and spec["which"] == "extremes" and spec["seed"] == 0
    assert spec["eigenvalues"][0] == pytest.approx(exact[-1], rel=EIGEN_RTOL)
    assert spec["eigenvalues"][1] == pytest.approx(exact[0], abs=EIGEN_RTOL * exact[-1])
    assert all(spec["converged"]) and len(spec["residuals"]) == 2
    assert d.labels[0] == f"Hessian eigenvector (λmax = {exact[-1]:.3g})"
    assert d.labels[1].startswith("Hessian eigenvector (λmin = -")
    assert abs(lossatlas.params.cosine(d[0], d[1])) < 1e-10
    # along each direction the loss curves like ½ λ t²: a central second difference recovers λ
    ds = lossatlas.surface(problem, None, d[1], steps=3, span=1e-3, progress=False)
    second = (ds.loss.values[0] - 2 * ds.loss.values[1] + ds.loss.values[2]) / 1e-6
    assert second == pytest.approx(spec["eigenvalues"][1], rel=1e-3)
    top = lossatlas.directions.hessian(problem, n=3, which="top", norm="model", seed=0)
    assert len(top) == 3 and top.labels[1].startswith("Hessian eigenvector (λ2 = ")
    size = lossatlas.params.norm(problem.params())
    assert lossatlas.params.norm(top[0]) == pytest.approx(size, rel=1e-10)
    three = lossatlas.directions.hessian(problem, n=3, which="extremes", seed=0)
    assert [lab.split("(")[1].split(" ")[0] for lab in three.labels] == ["λmax", "λ2", "λmin"]


def test_user_model_untouched(cnn_data, tmp_path):
    model, loss_fn, x, y = cnn_data
    model.fc.bias.requires_grad_(False)
    loss_fn(model(x), y).backward()
    before = model_state(model)
    problem = lossatlas.Problem(model, loss_fn, (x, y))
    C.eigenvalues(problem, k=1, which="both", progress=False)
    C.eigenvalues(problem, k=1, dtype=torch.float64, curvature="ggn", progress=False)
    C.trace(problem, probes=9, progress=False)
    C.density(problem, iters=5, probes=2, progress=False)
    d = lossatlas.directions.hessian(problem, n=2)
    C.ratio_map(problem, None, d, steps=2, span=0.1, max_products=30, progress=False, store=tmp_path / "r")
    rec = lossatlas.Problem(model, loss_fn, (x, y), bn="recalibrate")
    C.eigenvalues(rec, k=1, progress=False)
    assert_model_unchanged(model, before)


def test_recalibrated_batchnorm_holds_statistics_fixed(cnn_data):
    """bn='recalibrate': statistics recomputed once at θ and then held fixed, i.e. the Hessian of the
    eval-mode loss with those statistics as buffers."""
    model, loss_fn, x, y = cnn_data
    rec = lossatlas.Problem(model, loss_fn, (x, y), dtype=torch.float64, bn="recalibrate")
    buffers = rec.recalibrated_buffers(rec.params())
    fixed = copy.deepcopy(model).double()
    with torch.no_grad():
        for name, value in buffers.items():
            fixed.get_buffer(name).copy_(value)
    H = exact_hessian(fixed, loss_fn, [(x, y)], rec.params())
    torch.testing.assert_close(C.hessian_operator(rec).dense(), H, rtol=1e-9, atol=1e-11)
