"""The float64 reference's precision watch (a TorchDispatchMode) does not import torch._dynamo, and
flags low-precision operations the same way before and after dynamo is imported."""
import subprocess
import sys
import textwrap

import pytest
import torch

from lossatlas.convexity._reference import _Watch

AUDIT_WITHOUT_DYNAMO = textwrap.dedent("""
    import sys, torch
    import lossatlas
    from lossatlas import convexity
    torch.manual_seed(0)  # no training here: torch.optim's first step imports torch._dynamo by itself
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    x = torch.randn(64, 3)
    problem = lossatlas.Problem(model, torch.nn.MSELoss(), (x, x[:, :1] ** 2))
    result = convexity.audit(problem, budget=60, progress=False)
    assert result.certificates and all(c.verify(problem) for c in result.certificates), result.summary()
    print("dynamo" if "torch._dynamo" in sys.modules else "no dynamo")
""")


@pytest.mark.slow
def test_a_verified_audit_never_imports_dynamo():
    out = subprocess.run([sys.executable, "-c", AUDIT_WITHOUT_DYNAMO], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "no dynamo", out.stderr[-2000:]


def _flagged(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_the_watch_flags_float32_with_and_without_dynamo_imported():
    code = textwrap.dedent("""
        import sys, torch
        from lossatlas.convexity._reference import _Watch
        {pre}
        w = _Watch(None)
        x = torch.ones(3, dtype=torch.float64)
        w.taint([x])
        with w:
            y = (x * 2).float() + 1
        print(sorted(w.low), w.tainted(y), "torch._dynamo" in sys.modules)
    """)
    assert _flagged(code.format(pre="")) == "['float32'] True False"
    assert _flagged(code.format(pre="import torch._dynamo")) == "['float32'] True True"


def test_perturbation_runs_are_seeded_the_same_either_way():
    x = torch.linspace(0.5, 1.5, 7, dtype=torch.float64)
    runs = []
    for _ in range(2):
        w = _Watch(3)
        with w:
            runs.append((x * x).sum())
    assert torch.equal(runs[0], runs[1]) and runs[0] != (x * x).sum()
