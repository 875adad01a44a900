"""Curvature estimates that never overstate: checked against exact float64 Hessians of models with
exact zero eigenvalues, unused parameters and negative curvature; product-method fallbacks for
models torch cannot differentiate twice; NaN points."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lossatlas
from lossatlas import curvature as C
from lossatlas.errors import DifferentiationError, EvaluationError
from lossatlas.testing import exact_hessian

F64 = torch.float64


# -- models with exact Hessians ----------------------------------------------------------------------
class Unused(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 4)
        self.b = torch.nn.Linear(4, 1)
        self.unused = torch.nn.Parameter(torch.randn(3))

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class TinyCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.fc = torch.nn.Linear(2 * 3 * 3, 2)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def duplicated_regression(seed=0, features=4, copies=3, samples=30):
    """MSE linear regression whose design repeats features: exactly `copies` zero eigenvalues."""
    g = _gen(seed)
    x = torch.randn(samples, features, generator=g, dtype=F64)
    x = torch.cat([x, x[:, :copies] * 2.0], dim=1)
    y = torch.randn(samples, 1, generator=g, dtype=F64)
    torch.manual_seed(seed)
    return torch.nn.Linear(features + copies, 1).double(), torch.nn.MSELoss(), x, y


def unused_parameter(seed=0):
    g = _gen(seed)
    x, y = torch.randn(20, 3, generator=g, dtype=F64), torch.randn(20, 1, generator=g, dtype=F64)
    torch.manual_seed(seed)
    return Unused().double(), torch.nn.MSELoss(), x, y


def overparameterised_logistic(seed=0, features=12, samples=6):
    g = _gen(seed)
    x = torch.randn(samples, features, generator=g, dtype=F64)
    y = torch.randint(0, 2, (samples, 1), generator=g).to(F64)
    torch.manual_seed(seed)
    return torch.nn.Linear(features, 1).double(), torch.nn.BCEWithLogitsLoss(), x, y


def tanh_mlp(seed=0):
    g = _gen(seed)
    x, y = torch.randn(24, 3, generator=g, dtype=F64), torch.randint(0, 3, (24,), generator=g)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    return net, torch.nn.CrossEntropyLoss(), x, y


def seed_relu(seed=0):
    x = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=F64).reshape(-1, 1)
    torch.manual_seed(seed)
    return lossatlas.examples.SeedReLU().double(), torch.nn.MSELoss(), x, x.clone()


def deep_linear(seed=0):
    g = _gen(seed)
    x, y = torch.randn(16, 3, generator=g, dtype=F64), torch.randn(16, 2, generator=g, dtype=F64)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3, bias=False), torch.nn.Linear(3, 3, bias=False),
                              torch.nn.Linear(3, 2, bias=False)).double()
    return net, torch.nn.MSELoss(), x, y


def small_cnn(seed=0):
    g = _gen(seed)
    x, y = torch.randn(10, 1, 5, 5, generator=g, dtype=F64), torch.randint(0, 2, (10,), generator=g)
    torch.manual_seed(seed)
    return TinyCNN().double(), torch.nn.CrossEntropyLoss(), x, y


MODELS = {"duplicated-regression": duplicated_regression, "unused-parameter": unused_parameter,
          "overparameterised-logistic": overparameterised_logistic, "tanh-mlp": tanh_mlp, "seed-relu": seed_relu,
          "deep-linear": deep_linear, "small-cnn": small_cnn}


def exact_case(make, dtype=F64, **kw):
    model, loss_fn, x, y = make(**kw)
    problem = lossatlas.Problem(model, loss_fn, (x, y), dtype=dtype)
    H = exact_hessian(model, loss_fn, [(x, y)], problem.params())
    return problem, torch.linalg.eigvalsh(H).numpy()


def kth_extremes(exact, which, k):
    """The exact eigenvalues in the order :func:`eigenvalues` returns them."""
    if which == "largest":
        return exact[::-1][:k]
    if which == "smallest":
        return exact[:k]
    return np.concatenate([exact[::-1][:k], exact[:k][::-1]])


def assert_flags_honest(eig, exact, which, k):
    truth = kth_extremes(exact, which, k)
    assert len(eig.status) == len(eig.values)
    for value, truth_i, err, conv, ext, status in zip(eig.values, truth, eig.errors, eig.converged,
                                                      eig.extremal_certified, eig.status):
        if conv and ext:
            assert abs(value - truth_i) <= err, (value, truth_i, err)
            assert status == "converged, extremal"
        elif conv:
            assert status == "converged, extremality not certified"
            # a converged value is an eigenvalue within its error, extremal or not
            assert np.min(np.abs(exact - value)) <= err
    assert eig.all_converged == bool(np.all(eig.converged & eig.extremal_certified))


# -- density: the negative mass ----------------------------------------------------------------------
def test_psd_regression_has_no_negative_mass():
    """Exactly-zero eigenvalues are not negative: the old code counted their rounding sign (0.19
    here, with a bracket of zero width that excluded the truth)."""
    problem, exact = exact_case(duplicated_regression)
    for dtype in (F64, torch.float32):
        d = C.density(problem, dtype=dtype, progress=False)
        lo, hi = d.negative_bounds
        assert d.negative_mass.value == 0.0 and lo == 0.0
        assert hi >= 3 / 8  # 3 of 8 eigenvalues are 0 and could hide tiny negative ones: the bracket says so
        assert 0 < d.zero_tol < 1e-3 * float(exact[-1])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_density_bracket_contains_the_exact_negative_mass(name):
    problem, exact = exact_case(MODELS[name])
    for iters in (4, 30):  # a few Lanczos steps (CMS brackets) and enough to be exact for small models
        d = C.density(problem, iters=iters, probes=12, seed=1, progress=False)
        tau = d.zero_tol
        lo, hi = d.negative_bounds
        below = float((exact < -tau).mean())
        strictly = float((exact < 0).mean())
        assert lo <= below <= hi, (name, iters, lo, below, hi)
        assert lo <= strictly <= hi or np.all(np.abs(exact[exact < 0]) <= tau)
        assert 0.0 <= d.negative_mass.value <= 1.0 and lo <= d.negative_mass.value <= hi
        assert abs(d.trace.value - exact.sum()) <= 4 * d.trace.stderr + 1e-9 * abs(exact).sum()


@settings(max_examples=12, deadline=None)
@given(features=st.integers(1, 5), copies=st.integers(0, 4), samples=st.integers(2, 12), seed=st.integers(0, 99),
       iters=st.integers(1, 12), probes=st.integers(2, 6))
def test_density_bracket_random_regressions(features, copies, samples, seed, iters, probes):
    copies = min(copies, features)
    problem, exact = exact_case(duplicated_regression, features=features, copies=copies, samples=samples, seed=seed)
    d = C.density(problem, iters=iters, probes=probes, seed=seed, progress=False)
    lo, hi = d.negative_bounds
    assert lo <= float((exact < -d.zero_tol).mean()) <= hi
    assert d.negative_mass.value <= hi
    if np.all(exact > -d.zero_tol):  # positive semi-definite: no certain negative mass
        assert lo == 0.0


# -- eigenvalues: flags that never overstate --------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("which", ["smallest", "largest", "both"])
def test_eigen_flags_against_exact(name, which):
    problem, exact = exact_case(MODELS[name])
    n = len(exact)
    for k in sorted({1, min(3, n // 2)}):
        eig = C.eigenvalues(problem, k=k, which=which, tol=1e-8, progress=False)
        assert_flags_honest(eig, exact, which, k)
        assert eig.all_converged  # small models: the check certifies every pair
        assert eig.product_method == "double-backward"


def _repeated_zero_problem(n=60, zeros=3):
    """A 60-parameter least-squares Hessian with a 3-fold zero eigenvalue at the bottom and a
    spread of distinct positive eigenvalues: one Lanczos start sees one copy of the zero only."""
    g = _gen(5)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    spectrum = torch.cat([torch.zeros(zeros, dtype=F64), torch.linspace(0.05, 10.0, n - zeros, dtype=F64)])
    x = (q * torch.sqrt(spectrum * n / 2.0)) @ q.T  # (2/N) xᵀx = q diag(spectrum) qᵀ
    y = torch.randn(n, 1, generator=g, dtype=F64)
    problem = lossatlas.Problem(torch.nn.Linear(n, 1, bias=False).double(), torch.nn.MSELoss(), (x, y), dtype=F64)
    return problem, np.sort(spectrum.numpy())


def test_smallest_finds_every_copy_of_a_repeated_zero():
    """The old code flagged [0, 0.05, 0.22] as the three smallest converged eigenvalues of a Hessian
    whose three smallest are 0, 0, 0."""
    problem, exact = _repeated_zero_problem()
    eig = C.eigenvalues(problem, k=3, which="smallest", tol=1e-6, progress=False)
    assert_flags_honest(eig, exact, "smallest", 3)
    assert eig.all_converged and eig.checks >= 1
    np.testing.assert_allclose(eig.values, 0.0, atol=1e-6)
    unchecked = C.eigenvalues(problem, k=3, which="smallest", tol=1e-6, certify=False, progress=False)
    assert not unchecked.all_converged and not unchecked.extremal_certified.any()
    assert_flags_honest(unchecked, exact, "smallest", 3)
    assert "extremality not" in repr(unchecked)


def test_budget_too_small_is_not_certified():
    problem, exact = _repeated_zero_problem()
    eig = C.eigenvalues(problem, k=3, which="smallest", tol=1e-6, max_products=40, progress=False)
    assert_flags_honest(eig, exact, "smallest", 3)
    if not eig.extremal_certified.all():
        assert not eig.all_converged and any("not certified" in n for n in eig.notes)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(8, 40), zeros=st.integers(1, 4), k=st.integers(1, 4), seed=st.integers(0, 50),
       which=st.sampled_from(["smallest", "largest", "both", "magnitude"]))
def test_eigen_flags_random_spectra(n, zeros, k, seed, which):
    g = _gen(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    distinct = torch.rand(n - zeros, generator=g, dtype=F64) * 4 + 0.1
    spectrum = torch.cat([torch.zeros(zeros, dtype=F64), distinct])
    x = (q * torch.sqrt(spectrum * n / 2.0)) @ q.T
    problem = lossatlas.Problem(torch.nn.Linear(n, 1, bias=False).double(), torch.nn.MSELoss(),
                                (x, torch.randn(n, 1, generator=g, dtype=F64)), dtype=F64)
    exact = np.sort(spectrum.numpy())
    k = min(k, n // 2)
    eig = C.eigenvalues(problem, k=k, which=which, tol=1e-7, seed=seed, progress=False)
    if which == "magnitude":
        truth = exact[np.argsort(-np.abs(exact), kind="stable")][:k]
        for v, t, err, c in zip(eig.values, truth, eig.errors, eig.certified):
            if c:
                assert abs(abs(v) - abs(t)) <= err
    else:
        assert_flags_honest(eig, exact, which, k)


def test_trace_within_stderr_of_exact():
    for name, make in MODELS.items():
        problem, exact = exact_case(make)
        est = C.trace(problem, method="hutchinson", probes=60, seed=2, progress=False)
        assert abs(est.value - exact.sum()) <= 4 * est.stderr + 1e-9 * np.abs(exact).sum(), name
        assert est.product_method == "double-backward"


# -- models torch cannot differentiate twice ---------------------------------------------------------
D_MODEL, HEADS = 4, 2


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, 8, dropout=0.0, activation="gelu",
                                                    batch_first=True)
        self.out = torch.nn.Linear(D_MODEL, 1)

    def forward(self, x):
        return self.out(self.enc(x).mean(1))


def layer_norm(z, w, b, eps=1e-5):
    """By hand: on torch 2.13 forward-over-reverse through F.layer_norm (torch.func.hessian) is wrong."""
    m = z.mean(-1, keepdim=True)
    return (z - m) / torch.sqrt(((z - m) ** 2).mean(-1, keepdim=True) + eps) * w + b


def test_torch_func_hessian_of_layer_norm_is_not_an_oracle():
    """Why the oracle below writes layer norm by hand (and why vectorised products are checked)."""
    g = _gen(0)
    x, t = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64)
    p = torch.randn(8, generator=g, dtype=F64)

    def f(p, norm):
        h = norm(x, p[:4], p[4:])
        return ((norm(h * h.sum(1, keepdim=True) + x, p[:4], p[4:]) - t) ** 2).mean()

    native = lambda z, w, b: torch.nn.functional.layer_norm(z, (4,), w, b, 1e-5)  # noqa: E731
    by_hand = torch.func.hessian(lambda p: f(p, layer_norm))(p)
    torch.testing.assert_close(torch.autograd.functional.hessian(lambda p: f(p, native), p), by_hand)
    problem = lossatlas.Problem(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4),
                                                    torch.nn.Tanh(), torch.nn.Linear(4, 1)).double(),
                                torch.nn.MSELoss(), (x, t[:, :1]), dtype=F64)
    op = C.hessian_operator(problem, vectorize=True)
    eye = torch.eye(op.shape[0], dtype=F64)
    torch.testing.assert_close(op.mm(eye), C.hessian_operator(problem).mm(eye))


def encoder_by_hand(p, x):
    """The same network written with plain differentiable operations (the exact oracle)."""
    f = torch.nn.functional
    b, s, d = x.shape
    hd = d // HEADS
    qkv = x @ p["enc.self_attn.in_proj_weight"].T + p["enc.self_attn.in_proj_bias"]
    q, k, v = (t.reshape(b, s, HEADS, hd).transpose(1, 2) for t in qkv.split(d, dim=-1))
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
    att = att.transpose(1, 2).reshape(b, s, d) @ p["enc.self_attn.out_proj.weight"].T + p["enc.self_attn.out_proj.bias"]
    h = layer_norm(x + att, p["enc.norm1.weight"], p["enc.norm1.bias"])
    ff = f.gelu(h @ p["enc.linear1.weight"].T + p["enc.linear1.bias"]) @ p["enc.linear2.weight"].T
    h = layer_norm(h + ff + p["enc.linear2.bias"], p["enc.norm2.weight"], p["enc.norm2.bias"])
    return h.mean(1) @ p["out.weight"].T + p["out.bias"]


def test_transformer_layer_lambda_max_matches_a_hand_written_oracle():
    g = _gen(3)
    x, y = torch.randn(12, 5, D_MODEL, generator=g, dtype=F64), torch.randn(12, 1, generator=g, dtype=F64)
    torch.manual_seed(3)
    model = Encoder().double()
    problem = lossatlas.Problem(model, torch.nn.MSELoss(), (x, y), dtype=F64)
    theta = problem.params()
    names = list(theta)
    shapes = [theta[k].shape for k in names]

    def loss(flat):
        p = dict(zip(names, (t.reshape(s) for t, s in zip(flat.split([int(np.prod(s)) for s in shapes]), shapes))))
        return torch.nn.functional.mse_loss(encoder_by_hand(p, x), y)

    flat = torch.cat([theta[k].reshape(-1) for k in names])
    assert abs(float(loss(flat)) - problem.loss(theta)) < 1e-12  # the oracle is the same function
    exact = torch.linalg.eigvalsh(torch.func.hessian(loss)(flat)).numpy()
    eig = C.eigenvalues(problem, k=1, which="both", tol=1e-9, progress=False)
    assert eig.product_method == "double-backward-math-sdpa"
    assert any("double-backward failed" in n for n in eig.notes)
    assert abs(eig.values[0] - exact[-1]) <= 1e-4 * abs(exact[-1])
    assert abs(eig.values[-1] - exact[0]) <= 1e-4 * abs(exact[-1])
    assert_flags_honest(eig, exact, "both", 1)
    op = C.hessian_operator(problem)
    assert op.method == "double-backward-math-sdpa" and op.exact
    d = C.density(op, iters=20, probes=3, progress=False)
    assert d.product_method == "double-backward-math-sdpa"
    # vmap(jvp(grad)) blocks (forward-mode rules: checked against a double-backward product, or failing)
    vec = C.hessian_operator(problem, vectorize=True)
    block = torch.eye(vec.shape[0], dtype=F64)[:, :20]
    torch.testing.assert_close(vec.mm(block), op.mm(block), rtol=1e-10, atol=1e-12)


class Bag(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.EmbeddingBag(10, 3, mode="mean")
        self.out = torch.nn.Linear(3, 1)

    def forward(self, idx):
        return self.out(torch.tanh(self.emb(idx)))


def test_embedding_bag_falls_back_to_finite_differences_with_an_honest_error():
    g = _gen(4)
    idx, y = torch.randint(0, 10, (16, 3), generator=g), torch.randn(16, 1, generator=g, dtype=F64)
    torch.manual_seed(4)
    model = Bag().double()
    problem = lossatlas.Problem(model, torch.nn.MSELoss(), (idx, y), dtype=F64)
    theta = problem.params()

    def by_hand(p):
        h = torch.tanh(p["emb.weight"][idx].mean(1))
        return torch.nn.functional.mse_loss(h @ p["out.weight"].T + p["out.bias"], y)

    H = torch.func.hessian(lambda flat: by_hand(lossatlas.params.unflatten(flat, theta)))(
        lossatlas.params.flatten(theta))
    exact = torch.linalg.eigvalsh(H).numpy()
    op = C.hessian_operator(problem)
    eig = C.eigenvalues(op, k=2, which="both", tol=1e-6, progress=False)
    assert eig.product_method == op.method == "finite-difference" and not op.exact
    assert 0 < op.product_error < 1e-5
    assert any("finite-difference" in n for n in eig.notes)
    assert_flags_honest(eig, exact, "both", 2)
    assert abs(eig.values[0] - exact[-1]) <= eig.errors[0]
    v = torch.randn(op.shape[0], generator=g, dtype=F64)
    assert float(torch.linalg.vector_norm(op.mv(v) - H @ v)) <= 3 * op.product_error * float(v.norm())
    assert C.trace(op, probes=30, progress=False).product_method == "finite-difference"


@pytest.mark.parametrize("loss", [lambda o, t: (o.argmax(1) != t).float().mean(),
                                  lambda o, t: (o.round() - t.unsqueeze(1)).abs().mean()],
                         ids=["zero-one", "rounded"])
def test_losses_without_gradient_raise_differentiation_error(loss):
    g = _gen(6)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    problem = lossatlas.Problem(torch.nn.Linear(4, 3), loss, (x, y))
    for call in (lambda: C.eigenvalues(problem, progress=False), lambda: C.trace(problem, probes=6, progress=False),
                 lambda: C.density(problem, iters=3, probes=2, progress=False)):
        with pytest.raises(DifferentiationError, match="no curvature to measure"):
            call()


def test_parameters_the_loss_does_not_use_are_not_an_error():
    problem, _ = exact_case(unused_parameter)
    eig = C.eigenvalues(problem, params="unused", k=1, progress=False)
    assert eig.values[0] == 0.0 and eig.all_converged


# -- NaN / Inf points --------------------------------------------------------------------------------
class Sqrt(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([0.25]))
        self.b = torch.nn.Parameter(torch.tensor([0.1]))

    def forward(self, x):
        return x * torch.sqrt(self.a) + self.b * x ** 2


def _sqrt_problem():
    x = torch.linspace(-1, 1, 9).reshape(-1, 1)
    return lossatlas.Problem(Sqrt(), torch.nn.MSELoss(), (x, 0.5 * x), dtype=F64)


def test_eigenvalues_at_a_nan_point_are_nan_with_a_note():
    problem = _sqrt_problem()
    theta = {"a": torch.tensor([-1.0], dtype=F64), "b": torch.tensor([0.1], dtype=F64)}
    eig = C.eigenvalues(problem, theta, k=1, which="both", progress=False)
    assert np.isnan(eig.values).all() and not eig.converged.any() and not eig.all_converged
    assert eig.status == ["not finite", "not finite"] and any("not finite" in n for n in eig.notes)
    with pytest.raises(EvaluationError, match="not finite"):
        C.trace(problem, theta, probes=6, progress=False)
    with pytest.raises(EvaluationError, match="not finite"):
        C.density(problem, theta, iters=2, probes=2, progress=False)
    with pytest.raises(EvaluationError, match="not finite"):
        lossatlas.directions.hessian(problem, theta, n=2)


def test_ratio_map_keeps_nan_points_and_counts_them(tmp_path):
    problem = _sqrt_problem()
    d = lossatlas.directions.axes(problem, ["a[0]", "b[0]"])
    for store in (None, tmp_path / "r"):
        ds = C.ratio_map(problem, None, d, steps=5, span=0.5, max_products=40, progress=False, store=store)
        a = ds.x.values[:, None] + 0.25  # a + x·1 along the "a" axis
        bad = np.broadcast_to(a <= 0, ds.lambda_min.shape)  # sqrt has no derivative at 0 either
        assert bad.any() and (~bad).any()
        assert np.isnan(ds.lambda_min.values[bad]).all() and np.isfinite(ds.lambda_min.values[~bad]).all()
        assert (ds.converged.values[bad] == 0).all()
        assert ds.attrs["nan_curvature_points"] == int(bad.sum())


# -- float32 and single probes -----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODELS))
def test_float32_flags_and_brackets_never_overstate(name):
    problem, exact = exact_case(MODELS[name])
    for which in ("smallest", "both"):
        eig = C.eigenvalues(problem, k=2, which=which, dtype=torch.float32, progress=False)
        assert_flags_honest(eig, exact, which, 2)
        assert eig.zero_tol >= 100 * torch.finfo(torch.float32).eps * eig.scale
    for probes in (1, 4):
        d = C.density(problem, iters=5, probes=probes, dtype=torch.float32, progress=False)
        lo, hi = d.negative_bounds
        assert lo <= float((exact < -d.zero_tol).mean()) <= hi
        assert math.isfinite(d.negative_mass.stderr)


# -- products that are not trusted unchecked ---------------------------------------------------------
def test_wrong_vectorised_products_are_detected_and_not_used(monkeypatch):
    problem, _ = exact_case(tanh_mlp)
    reference = C.hessian_operator(problem)
    op = C.hessian_operator(problem, vectorize=True)
    real = op._vectorised

    def wrong():
        fn = real()
        return lambda block: 1.5 * fn(block)  # a forward-mode rule gone wrong

    monkeypatch.setattr(op, "_vectorised", wrong)
    block = torch.eye(op.shape[0], dtype=F64)[:, :5]
    torch.testing.assert_close(op.mm(block), reference.mm(block), rtol=1e-10, atol=1e-12)
    assert not op.vectorize and any("disagreed" in n for n in op.method_notes)


def test_forward_over_reverse_is_checked_against_finite_differences(monkeypatch):
    problem, exact = exact_case(tanh_mlp)
    op = C.hessian_operator(problem, retain=False)
    real = op._forward_over_reverse

    def no_double_backward(v, check):
        raise NotImplementedError("the derivative for 'fused_op_backward' is not implemented.")

    monkeypatch.setattr(op, "_double_backward", no_double_backward)
    monkeypatch.setattr(op, "_forward_over_reverse", lambda v: 2.0 * real(v))  # wrong
    eig = C.eigenvalues(op, k=1, tol=1e-6, progress=False)
    assert op.method == "finite-difference" and any("disagreed" in n for n in eig.notes)
    assert abs(eig.values[0] - exact[-1]) <= eig.errors[0]

    right = C.hessian_operator(problem, retain=False)
    monkeypatch.setattr(right, "_double_backward", no_double_backward)
    eig = C.eigenvalues(right, k=1, tol=1e-9, progress=False)
    assert right.method == "forward-over-reverse" and right.exact and right.product_error == 0.0
    assert abs(eig.values[0] - exact[-1]) <= 1e-9 * abs(exact[-1]) + eig.errors[0]


def test_exact_hessian_oracle_is_right_through_layer_norm():
    """lossatlas.testing.exact_hessian differentiates reverse-over-reverse: equal to the Hessian of the
    same network with layer norm written by hand (torch.func.hessian of the native one is not)."""
    from lossatlas.testing import exact_hessian

    g = _gen(1)
    x, t = torch.randn(6, 4, generator=g, dtype=F64), torch.randn(6, 1, generator=g, dtype=F64)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Tanh(),
                                torch.nn.Linear(4, 1)).double()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5, generator=g)
        model[1].bias.normal_(generator=g)
    theta = {k: v.detach() for k, v in model.named_parameters()}
    names, sizes = list(theta), [v.numel() for v in theta.values()]

    def by_hand(flat):
        p = {k: v.reshape(theta[k].shape) for k, v in zip(names, flat.split(sizes))}
        h = x @ p["0.weight"].T + p["0.bias"]
        h = torch.tanh(layer_norm(h, p["1.weight"], p["1.bias"]))
        return ((h @ p["3.weight"].T + p["3.bias"] - t) ** 2).mean()

    flat = torch.cat([v.reshape(-1) for v in theta.values()])
    torch.testing.assert_close(exact_hessian(model, torch.nn.MSELoss(), [(x, t)], theta),
                               torch.func.hessian(by_hand)(flat), rtol=1e-10, atol=1e-12)
