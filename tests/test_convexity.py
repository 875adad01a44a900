"""Convexity audit: no false proofs on convex baselines, verified proofs on non-convex models,
tamper-evident certificates, and property tests of the Jensen-gap arithmetic."""
import copy

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lossatlas
from lossatlas import convexity, examples
from lossatlas import params as P
from lossatlas.convexity import Certificate, jensen_gap, rounding_bound
from lossatlas.testing import assert_model_unchanged, model_state


# -- convex baselines: never a false proof ---------------------------------------------------------
def _convex_problems(seed):
    g = torch.Generator().manual_seed(seed)
    x, y = examples.digits()
    idx = torch.randperm(len(x), generator=g)[:300]
    torch.manual_seed(seed)
    soft = lossatlas.Problem(torch.nn.Linear(64, 10), torch.nn.CrossEntropyLoss(), (x[idx], y[idx]))
    xb, yb = examples.breast_cancer()
    logi = lossatlas.Problem(torch.nn.Linear(30, 1), torch.nn.BCEWithLogitsLoss(), (xb, yb))
    xr, yr = examples.synthetic_regression(n=120, d=6, seed=seed)
    lin = lossatlas.Problem(torch.nn.Linear(6, 1), torch.nn.MSELoss(), (xr, yr))
    return {"softmax-ce digits": soft, "logreg-bce breast cancer": logi, "linreg-mse synthetic": lin}


@pytest.mark.parametrize("seed", range(20))
def test_no_false_proof_on_convex_baselines(seed):
    for name, problem in _convex_problems(seed).items():
        theta = {k: v + 0.5 * torch.randn_like(v) for k, v in problem.params().items()}  # not only minima
        result = convexity.audit(problem, theta, budget=40, seed=seed, progress=False)
        assert result.verdict == "no violation found", (name, result.summary())
        assert not result.proven_nonconvex and result.certificates == []
        assert "convex" not in result.verdict.replace("non-convex", "")


def test_would_be_certificates_on_convex_problems_fail_verification():
    from lossatlas.convexity._search import jensen_search

    problem = _convex_problems(0)["logreg-bce breast cancer"]
    theta = problem.params()
    search = jensen_search(problem, theta, budget=120, seed=1)
    p64 = problem.with_dtype(torch.float64)
    assert search.candidates
    for cand in search.candidates[:4]:
        # claim the float32 numbers as a certificate: float64 re-checking must refuse it
        forged = Certificate("jensen", cand.a, cand.b, cand.t, {"a": cand.f_a, "b": cand.f_b, "t": cand.f_t},
                             gap=max(cand.gap, 1e-3), bound=0.0,
                             fingerprints={k: v for k, v in p64.fingerprint().items() if k != "settings"})
        assert forged.verify(problem) is False


# -- non-convex models: proofs found and verified -------------------------------------------------
@pytest.mark.parametrize("name", ["seed-relu", "logreg-mse"])
def test_proofs_for_the_classic_examples(name):
    ex = examples.load(name)
    result = convexity.audit(ex.problem, ex.center, budget=150, progress=False)
    assert result.verdict == "non-convex (proven)"
    for cert in result.certificates:
        assert cert.verify(ex.problem) and cert.margin > 0


@pytest.mark.parametrize("act, widths", [(torch.nn.ReLU, [5, 16, 3]), (torch.nn.Tanh, [5, 8, 8, 3]),
                                         (torch.nn.GELU, [5, 12, 6, 3])])
def test_proofs_for_mlps_of_several_shapes(act, widths):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 5, generator=g), torch.randint(0, 3, (80,), generator=g)
    torch.manual_seed(0)
    net = examples.mlp(widths, act)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    problem = lossatlas.Problem(net, torch.nn.CrossEntropyLoss(), (x, y))
    result = convexity.audit(problem, budget=120, progress=False)
    assert result.proven_nonconvex, result.summary()
    kinds = {c.kind for c in result.certificates}
    assert "symmetry" in kinds  # hidden units can always be permuted
    assert all(c.verify(problem) for c in result.certificates)
    if act is torch.nn.Tanh:
        assert any("sign flip" in (c.symmetry or {}).get("description", "") for c in result.certificates) or \
            result.tried["symmetry"]["valid"] >= 2


def test_proof_for_a_cnn():
    ex = examples.load("cnn-digits")
    result = convexity.audit(ex.problem, ex.center, budget=80, progress=False)
    assert result.proven_nonconvex, result.summary()
    assert {"hessian", "jensen"} & {c.kind for c in result.certificates}
    # BatchNorm channels index fixed running statistics: the symmetry method says so instead of guessing
    assert result.tried["symmetry"]["skipped"]


def test_symmetry_certificate_for_a_trained_mlp_without_search():
    ex = examples.load("mlp-digits")
    result = convexity.audit(ex.problem, ex.center, methods=("symmetry",), progress=False)
    assert result.proven_nonconvex
    cert = result.certificates[0]
    assert cert.kind == "symmetry" and abs(cert.losses["a"] - cert.losses["b"]) <= cert.bound
    assert "jensen" not in result.tried  # no search was run
    assert cert.verify(ex.problem)


def test_hessian_certificate_and_gauss_newton_explanation():
    ex = examples.load("mlp-digits")
    result = convexity.audit(ex.problem, ex.center, methods=("hessian",), progress=False)
    assert result.lambda_min < 0 < result.lambda_max
    assert result.proven_nonconvex and result.certificates[0].kind == "hessian"
    why = result.why
    assert why["vHv"] < 0 and why["vGv"] >= -1e-10 and why["model_term"] < 0
    cert = result.certificates[0]
    report = cert.check(ex.problem)
    assert report.accepted and report.rayleigh < 0


def test_linear_models_have_no_model_curvature_term():
    ex = examples.load("logreg-bce")
    result = convexity.audit(ex.problem, ex.center, methods=("hessian",), progress=False)
    assert result.verdict == "no violation found"
    why = result.why
    assert abs(why["model_term"]) <= 1e-8 * max(1.0, abs(why["vGv"]))


# -- certificates: round trip and tampering ----------------------------------------------------------
@pytest.fixture(scope="module")
def seed_certificate():
    ex = examples.load("seed-relu")
    result = convexity.audit(ex.problem, ex.center, budget=80, progress=False)
    return ex, result.certificates[0]


def test_certificate_round_trip(tmp_path, seed_certificate):
    ex, cert = seed_certificate
    path = cert.save(tmp_path / "proof.npz")
    back = Certificate.load(path)
    assert back.verify(ex.problem) and back.kind == cert.kind and back.losses == cert.losses


@pytest.mark.parametrize("tamper", ["point", "loss", "t", "data"])
def test_tampered_certificates_fail(seed_certificate, tamper):
    ex, cert = seed_certificate
    bad = copy.deepcopy(cert)
    problem = ex.problem
    if tamper == "point":
        bad.a = {k: v + 0.25 for k, v in bad.a.items()}  # moves the point off any flat (dead-unit) region
    elif tamper == "loss":
        bad.losses["t"] = bad.losses["t"] * 1.01
    elif tamper == "t":
        bad.t = min(0.99, bad.t + 0.05)
    else:
        x = torch.tensor([[0.5], [1.0], [1.5], [2.5]])
        problem = lossatlas.Problem(ex.model, torch.nn.MSELoss(), (x, x))
    assert bad.verify(problem) is False
    if tamper in ("point", "loss"):
        assert any("does not match" in r for r in bad.check(problem).reasons)
    assert cert.verify(ex.problem) is True


def test_audit_never_mutates_the_model(cnn_data):
    model, loss_fn, x, y = cnn_data
    before = model_state(model)
    problem = lossatlas.Problem(model, loss_fn, (x, y))
    convexity.audit(problem, budget=40, progress=False)
    assert_model_unchanged(model, before)


def test_bad_arguments():
    ex = examples.load("seed-relu")
    with pytest.raises(lossatlas.InvalidArgumentError, match="'methods'"):
        convexity.audit(ex.problem, methods=("guess",))
    with pytest.raises(lossatlas.InvalidArgumentError, match="'budget'"):
        convexity.audit(ex.problem, budget=3)
    with pytest.raises(lossatlas.InvalidTypeError, match="'problem'"):
        convexity.audit(ex.model)
    with pytest.raises(lossatlas.StoreError, match="certificate"):
        Certificate.load(__file__)


# -- Jensen-gap arithmetic (property tests) ------------------------------------------------------------
vectors = st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=3).map(np.array)


@given(vectors, vectors, st.floats(0.0, 1.0), st.floats(0.01, 5.0))
def test_convex_quadratic_gap_never_exceeds_the_bound(a, b, t, c):
    A = np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]]) * c

    def f(x):
        return float(x @ A @ x + np.array([1.0, -2.0, 0.5]) @ x)
    x_t = (1 - t) * a + t * b
    gap = jensen_gap(f(a), f(b), f(x_t), t)
    assert gap <= rounding_bound(f(a), f(b), f(x_t), relative_error=1e-12)
    # exact value of the gap of a quadratic: −t(1−t)(b−a)ᵀA(b−a)
    exact = -t * (1 - t) * (b - a) @ A @ (b - a)
    assert abs(gap - exact) <= 1e-9 * (1 + abs(f(a)) + abs(f(b)) + abs(f(x_t)))


@given(vectors, vectors, st.floats(0.05, 0.95))
def test_strictly_concave_functions_violate(a, b, t):
    if np.linalg.norm(a - b) < 1e-3:
        return

    def f(x):
        return float(-(x @ x))
    x_t = (1 - t) * a + t * b
    gap = jensen_gap(f(a), f(b), f(x_t), t)
    assert gap > 0 and abs(gap - t * (1 - t) * (a - b) @ (a - b)) <= 1e-9 * (1 + abs(f(a)) + abs(f(b)))


@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.floats(0.0, 1.0))
def test_affine_functions_have_zero_gap_within_the_bound(fa, fb, t):
    ft = (1 - t) * fa + t * fb
    gap = jensen_gap(fa, fb, ft, t)
    assert abs(gap) <= rounding_bound(fa, fb, ft)


# -- compare -------------------------------------------------------------------------------------------
def test_compare_table_and_figure(tmp_path):
    c = convexity.compare("logreg-bce", "logreg-mse", "seed-relu", budget=40)
    rows = {r["name"]: r for r in c.rows()}
    assert rows["logreg-bce"]["verdict"] == "no violation found" and rows["logreg-bce"]["known_convex"] is True
    assert rows["logreg-mse"]["verdict"] == rows["seed-relu"]["verdict"] == "non-convex (proven)"
    fig = c.figure()
    path = lossatlas.plot.save(fig, tmp_path / "compare.png")
    assert path.stat().st_size > 10_000


def test_hessian_block_certificates_are_checked_on_their_block(classification, monkeypatch, tmp_path):
    """When the full eigenvector gives no certificate (kinks, in ReLU networks), a trailing-layer block of
    the Hessian is tried; its certificate is verified with the residual on the block and a zero
    eigenvector off it."""
    from lossatlas.convexity import _curvature

    model, loss_fn, x, y = classification
    problem = lossatlas.Problem(model, loss_fn, (x, y))
    along = _curvature._along
    calls = []

    def full_fails(p64, theta64, v, scale, *rest):  # pretend kinks hide the full eigenvector's curvature
        calls.append(1)
        return None if len(calls) == 1 else along(p64, theta64, v, scale, *rest)

    monkeypatch.setattr(_curvature, "_along", full_fails)
    result = convexity.audit(problem, methods=("hessian",), progress=False)
    assert result.proven_nonconvex, result.summary()
    cert = result.certificates[0]
    block = cert.eigen["params"]
    assert cert.kind == "hessian" and 0 < len(block) < len(problem.param_names)
    assert result.tried["hessian"]["blocks"][-1]["certificate"]
    assert all(float(cert.eigenvector[k].abs().max()) == 0 for k in cert.eigenvector if k not in block)
    report = cert.check(problem)
    assert report.accepted and report.rayleigh < 0 and report.residual <= abs(cert.eigen["value"])
    assert Certificate.load(cert.save(tmp_path / "block.npz")).verify(problem)
    off = copy.deepcopy(cert)
    outside = next(k for k in off.eigenvector if k not in block)
    off.eigenvector[outside] = off.eigenvector[outside] + 1e-3
    assert any("off the block" in r for r in off.check(problem).reasons)
    wrong = copy.deepcopy(cert)
    wrong.eigen["value"] = 0.3 * cert.eigen["value"]  # residual 0.7|λ| > |0.3λ|
    assert any("residual" in r for r in wrong.check(problem).reasons)


def test_verdict_is_a_str_enum_that_reads_as_its_text():
    import json

    from lossatlas.convexity import NOT_FOUND, PROVEN, Verdict

    assert PROVEN is Verdict.PROVEN and NOT_FOUND is Verdict.NOT_FOUND
    assert isinstance(PROVEN, str) and PROVEN == "non-convex (proven)" and Verdict("no violation found") is NOT_FOUND
    assert str(PROVEN) == f"{PROVEN}" == "non-convex (proven)" and repr(PROVEN) == "'non-convex (proven)'"
    assert json.loads(json.dumps({"verdict": NOT_FOUND})) == {"verdict": "no violation found"}
    assert {v.value for v in Verdict} == {"non-convex (proven)", "no violation found"}  # never "convex"
