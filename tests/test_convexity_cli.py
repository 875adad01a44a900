"""`lossatlas hessian` and `lossatlas audit` agree or explain (issue 12, defect 8); the audit prints its
verdict once."""
import json

from typer.testing import CliRunner

from lossatlas.cli import app

# A bilinear model a·b·x (non-convex: λmin < 0 at θ) whose loss carries a constant 1e10, so rounding of
# the loss (~1e10·eps·1e7 ≈ 30) swamps every Jensen gap the curvature can produce before higher-order
# terms take over: the eigenvalue is evidence, never a certificate.
TARGET = '''
import torch, lossatlas
from torch import nn

class Bilinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(-0.2, dtype=torch.float64))

    def forward(self, x):
        return self.a * self.b * x

def offset_mse(out, y):
    return ((out - y) ** 2).mean() + 1e10

def make():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 1, generator=g, dtype=torch.float64)
    y = 0.05 * x + 0.01 * torch.randn(50, 1, generator=g, dtype=torch.float64)
    return lossatlas.Problem(Bilinear(), offset_mse, (x, y), metrics=None)
'''


def flat(text):
    return " ".join(text.split())


def test_hessian_evidence_and_audit_explanation_agree(tmp_path):
    path = tmp_path / "target.py"
    path.write_text(TARGET)
    target = f"{path}:make"
    runner = CliRunner()
    h = runner.invoke(app, ["hessian", target, "--k", "1", "--no-progress", "--trace-probes", "4",
                            "--density-iters", "2", "--density-probes", "2"])
    assert h.exit_code == 0, h.output
    text = flat(h.output)
    assert "negative eigenvalue λ = -0.2381 ±" in text and "(converged)" in text and "not a proof" in text
    assert "lossatlas audit" in text
    out = tmp_path / "audit.json"
    a = runner.invoke(app, ["audit", target, "--methods", "hessian", "--no-progress", "--json", str(out)])
    assert a.exit_code == 0, a.output
    text = flat(a.output)
    assert text.count("no violation found") == 1  # the verdict, once
    assert "λ = -0.2381 (converged" in text and "did not become a certificate" in text
    assert "never exceeded the rounding bound" in text and "evidence, not a proof" in text
    report = json.loads(out.read_text())
    assert report["verdict"] == "no violation found"
    assert report["not_certified"].startswith("The most negative Hessian eigenvalue λ = -0.2381 (converged")
    assert abs(report["lambda_min"] - (-0.2381)) < 1e-4
    steps = report["tried"]["hessian"]["scan"]
    assert steps and all(s["gap"] <= s["floor"] for s in steps)  # the numbers behind the sentence


def test_audit_prints_its_verdict_once():
    r = CliRunner().invoke(app, ["audit", "seed-relu", "--budget", "60", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert flat(r.output).count("non-convex (proven)") == 1, r.output


def test_an_eigenvalue_within_its_residual_is_not_called_evidence():
    from lossatlas.convexity._curvature import _why_not

    scan = [{"h": h, "gap": -1e-20, "floor": 1e-9} for h in (1e-4, 1e-2, 1.0)]
    text = _why_not(-1e-12, True, 1e-9, 1e-9, scan, [], "The most negative Hessian eigenvalue")
    assert "indistinguishable from zero" in text and "evidence, not a proof" not in text
    # beyond its residual but inside the products' zero band: still no evidence
    text = _why_not(-1e-6, True, 1e-9, 1e-5, scan, [], "The most negative Hessian eigenvalue")
    assert "indistinguishable from zero" in text and "evidence, not a proof" not in text
    text = _why_not(-1e-3, True, 1e-9, 1e-9, scan, [], "The most negative Hessian eigenvalue")
    assert "evidence, not a proof" in text and "h ≳" in text


def test_hessian_calls_an_eigenvalue_inside_the_zero_band_indistinguishable_from_zero():
    # seed-relu in float32: λmin ≈ −2e-7 with residual 1.5e-7, far inside τ ≈ 1e-4 (float32 products)
    r = CliRunner().invoke(app, ["hessian", "seed-relu", "--no-progress"])
    assert r.exit_code == 0, r.output
    text = flat(r.output)
    assert "indistinguishable from 0" in text and "negative eigenvalue λ" not in text
    assert "zero band τ =" in text and "± error" in text and "converged, extremal" in text
