"""Contract tests over the audit-method and curvature-estimator registries: every registered method
and estimator is deterministic under a seed and names its public function in its errors; a method or
estimator registered by a test appears in the CLI's accepted values and runs there."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lossatlas
from lossatlas import curvature as C
from lossatlas.cli import app
from lossatlas.convexity import METHODS
from lossatlas.convexity._methods import REGISTRY as AUDIT_METHODS
from lossatlas.convexity._methods import AuditMethod, register, unregister
from lossatlas.curvature import _registry as CR
from lossatlas.curvature._registry import CurvatureEstimator

F64 = torch.float64


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    x = torch.randn(12, 2, generator=gen)
    return lossatlas.Problem(net, torch.nn.MSELoss(), (x, x[:, :1] * x[:, 1:2]))


def _stable(result) -> str:
    """An audit as JSON without its timings (everything else must repeat exactly under a seed)."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k != "seconds"}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v
    return json.dumps(strip(result.to_dict()), sort_keys=True, default=float)


# -- audit methods -------------------------------------------------------------------------------------
# method -> a call with a bad argument (the error must name audit())
AUDIT_CASES = {
    "jensen": lambda pb: lossatlas.convexity.audit(pb, methods=("jensen",), budget=5, progress=False),
    "hessian": lambda pb: lossatlas.convexity.audit(pb, methods=("hessian",), seed=-1, progress=False),
    "symmetry": lambda pb: lossatlas.convexity.audit(pb, methods=("symmetry",), max_certificates=0, progress=False),
}


def test_every_registered_audit_method_has_a_contract_case():
    assert set(AUDIT_CASES) == set(AUDIT_METHODS)
    assert METHODS == tuple(AUDIT_METHODS) == ("jensen", "hessian", "symmetry")
    for name, method in AUDIT_METHODS.items():
        assert method.name == name and method.label and method.description and method.needs and method.proves
        assert method.func == "audit" and callable(method.run)


@pytest.mark.parametrize("name", sorted(AUDIT_CASES))
def test_audit_method_deterministic_under_a_seed(problem, name):
    a = lossatlas.convexity.audit(problem, methods=(name,), budget=40, seed=3, progress=False)
    b = lossatlas.convexity.audit(problem, methods=(name,), budget=40, seed=3, progress=False)
    assert name in a.tried or name in a.skipped
    assert _stable(a) == _stable(b)


@pytest.mark.parametrize("name", sorted(AUDIT_CASES))
def test_audit_method_errors_name_the_public_function(problem, name):
    with pytest.raises(lossatlas.LossAtlasError) as info:
        AUDIT_CASES[name](problem)
    assert str(info.value).startswith("audit()"), str(info.value)


def test_registering_an_audit_method_twice_is_refused():
    with pytest.raises(lossatlas.LossAtlasError, match="already registered"):
        register(AUDIT_METHODS["jensen"])


def _toy_run(ctx):
    """Records the loss at θ and one seeded draw: a method that proves nothing."""
    draw = float(torch.rand((), generator=torch.Generator().manual_seed(ctx.seed)))
    ctx.tried["toy"] = {"f_theta": ctx.f_theta, "draw": draw, "after": sorted(ctx.tried)}


@pytest.fixture
def toy_method():
    method = register(AuditMethod("toy", "toy method", "records f(θ) and one draw", _toy_run,
                                  proves="nothing", needs="the loss", order=50))
    yield method
    unregister("toy")


def test_an_audit_method_registered_in_a_test_runs_in_the_library_and_the_cli(toy_method, problem, tmp_path):
    a = lossatlas.convexity.audit(problem, methods=("toy", "symmetry"), budget=40, seed=1, progress=False)
    assert a.tried["toy"]["after"] == ["symmetry"]  # run in the records' order, not the caller's
    assert _stable(a) == _stable(lossatlas.convexity.audit(problem, methods=("symmetry", "toy"), budget=40, seed=1,
                                                           progress=False))
    runner = CliRunner()
    bad = runner.invoke(app, ["audit", "seed-relu", "--methods", "sideways", "--no-progress"])
    assert bad.exit_code != 0 and "toy" in f"{bad.output} {bad.exception}"
    ok = runner.invoke(app, ["audit", "seed-relu", "--methods", "toy", "--seed", "1", "--no-progress", "--json",
                             str(tmp_path / "a.json")])
    assert ok.exit_code == 0, ok.output
    tried = json.loads((tmp_path / "a.json").read_text())["tried"]
    assert set(tried) == {"toy"} and tried["toy"]["draw"] == a.tried["toy"]["draw"]


def test_the_cli_help_describes_every_builtin_method():
    out = CliRunner().invoke(app, ["audit", "--help"], env={"COLUMNS": "400"}).output
    for method in AUDIT_METHODS.values():
        assert method.name in out


# -- curvature estimators ------------------------------------------------------------------------------
# name -> (make(problem, seed) -> array, a call with a bad argument)
CURVATURE_CASES = {
    "hessian": (lambda pb, s: C.hessian_operator(pb, dtype=F64).dense().numpy(),
                lambda pb: C.hessian_operator(pb, params="nope")),
    "ggn": (lambda pb, s: C.ggn_operator(pb, dtype=F64).dense().numpy(), lambda pb: C.ggn_operator(pb, dtype="x")),
    "ef": (lambda pb, s: C.ef_operator(pb, dtype=F64).dense().numpy(), lambda pb: C.ef_operator(pb, params="nope")),
    "fisher": (lambda pb, s: C.fisher_operator(pb, dtype=F64, mc_samples=2, seed=s).dense().numpy(),
               lambda pb: C.fisher_operator(pb, mc_samples=0)),
    "kfac": (lambda pb, s: C.kfac_operator(pb, dtype=F64, fisher_type="mc", seed=s).dense().numpy(),
             lambda pb: C.kfac_operator(pb, fisher_type="sideways")),
    "eigenvalues": (lambda pb, s: C.eigenvalues(pb, k=1, which="both", seed=s, dtype=F64, progress=False).values,
                    lambda pb: C.eigenvalues(pb, k=0, progress=False)),
    "trace": (lambda pb, s: np.array([C.trace(pb, probes=6, seed=s, dtype=F64, progress=False).value]),
              lambda pb: C.trace(pb, probes=0, progress=False)),
    "density": (lambda pb, s: C.density(pb, iters=5, probes=2, seed=s, dtype=F64, progress=False).nodes,
                lambda pb: C.density(pb, iters=0, progress=False)),
    "per_layer": (lambda pb, s: np.array([b.trace.value for b in C.per_layer(pb, probes=3, seed=s, dtype=F64,
                                                                             progress=False)]),
                  lambda pb: C.per_layer(pb, probes=0, progress=False)),
}


def test_every_registered_estimator_has_a_contract_case():
    assert set(CURVATURE_CASES) == set(CR.REGISTRY)
    for name, record in CR.REGISTRY.items():
        assert record.name == name and record.label and record.description and record.kind in CR.KINDS
        assert record.function is getattr(C, record.function.__name__)
        assert record.func == f"curvature.{record.function.__name__}"
        assert all(m in CR.REGISTRY and CR.REGISTRY[m].kind == "matrix" for m in record.matrices)
    assert [r.name for r in CR.cli_matrices()] == ["hessian", "ggn", "ef", "fisher"]


@pytest.mark.parametrize("name", sorted(CURVATURE_CASES))
def test_estimator_deterministic_under_a_seed(problem, name):
    make = CURVATURE_CASES[name][0]
    a, b = make(problem, 3), make(problem, 3)
    assert a.size and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(CURVATURE_CASES))
def test_estimator_errors_name_the_public_function(problem, name):
    with pytest.raises(lossatlas.LossAtlasError) as info:
        CURVATURE_CASES[name][1](problem)
    assert str(info.value).startswith(f"{CR.REGISTRY[name].func}()"), str(info.value)


@pytest.mark.parametrize("name", ["hessian", "ggn", "ef", "fisher"])
def test_cli_matrix_record_gives_the_library_operator(problem, name):
    op = CR.REGISTRY[name].cli(problem, None, params=None, seed=0)
    v = torch.ones(op.shape[0], dtype=op.dtype)
    direct = CR.REGISTRY[name].function(problem, None)
    torch.testing.assert_close(op.mv(v), direct.mv(v))


def test_registering_an_estimator_twice_is_refused():
    with pytest.raises(lossatlas.LossAtlasError, match="already registered"):
        CR.register(CR.REGISTRY["trace"])


def _toy_operator(problem, theta=None, *, params=None):
    """The Hessian under another name: a matrix of its own."""
    return C.hessian_operator(problem, theta, params=params)


def _toy_diagonal_sum(op, *, seed=0, progress=True):
    return f"{float(op.mm(torch.eye(op.shape[0], dtype=op.dtype)).diagonal().sum()):.6g}"


@pytest.fixture
def toy_estimators():
    matrix = CR.register(CurvatureEstimator("toy", "toy Hessian", _toy_operator, kind="matrix",
                                            description="the Hessian, renamed",
                                            cli=lambda problem, theta, *, params=None, seed=0: _toy_operator(
                                                problem, theta, params=params)))
    quantity = CR.register(CurvatureEstimator("toy_trace", "toy exact trace", _toy_diagonal_sum,
                                              description="Σ eᵢᵀ H eᵢ", matrices=("toy", "hessian"),
                                              report=_toy_diagonal_sum))
    yield matrix, quantity
    CR.unregister("toy")
    CR.unregister("toy_trace")


def test_an_estimator_registered_in_a_test_appears_in_the_cli_and_runs(toy_estimators):
    assert toy_estimators[0] in CR.cli_matrices()
    runner = CliRunner()
    bad = runner.invoke(app, ["hessian", "seed-relu", "--matrix", "sideways", "--no-progress"])
    assert bad.exit_code != 0 and "toy" in f"{bad.output} {bad.exception}"
    args = ["--no-progress", "--trace-probes", "9", "--density-probes", "2", "--density-iters", "10"]
    ok = runner.invoke(app, ["hessian", "seed-relu", "--matrix", "toy", *args], env={"COLUMNS": "200"})
    assert ok.exit_code == 0, ok.output
    assert "toy Hessian of seed-relu" in ok.output and "toy exact trace: " in ok.output
    ggn = runner.invoke(app, ["hessian", "seed-relu", "--matrix", "ggn", *args], env={"COLUMNS": "200"})
    assert ggn.exit_code == 0 and "GGN of seed-relu" in ggn.output and "toy exact trace" not in ggn.output
    refused = runner.invoke(app, ["hessian", "seed-relu", "--matrix", "toy", "--per-layer", "--no-progress"])
    assert refused.exit_code != 0 and "--per-layer needs --matrix hessian or ggn" in f"{refused.output} {refused.exception}"
