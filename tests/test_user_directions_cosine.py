"""Issue 14: directions given by the user report the cosine actually measured between them (it was
reported as 0.0, a claim of orthogonality nobody checked), and collinear ones are refused."""
import math

import pytest
import torch

import lossatlas
from lossatlas import directions as D
from lossatlas.errors import LossAtlasError


def _problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(16, 3)
    return lossatlas.Problem(net, torch.nn.MSELoss(), (x, x.sum(1, keepdim=True)))


def _cos(a, b):
    dot = sum(float((a[k] * b[k]).sum()) for k in a)
    na = math.sqrt(sum(float((a[k] ** 2).sum()) for k in a))
    nb = math.sqrt(sum(float((b[k] ** 2).sum()) for k in b))
    return dot / (na * nb)


@pytest.mark.parametrize("mix", [0.0, 0.3, 0.9])
def test_user_directions_report_their_measured_cosine(mix):
    problem = _problem()
    a, b = D.random(problem, n=2, seed=1)
    c = {k: mix * a[k] + (1 - mix) * b[k] for k in a}  # cosine with a grows with mix
    ds = lossatlas.surface(problem, None, [a, c], steps=3, progress=False)
    assert ds.attrs["max_abs_cosine"] == pytest.approx(abs(_cos(a, c)), rel=1e-5, abs=1e-7)  # float32 dot products
    if mix > 0:
        assert ds.attrs["max_abs_cosine"] > 0.05  # never the unchecked 0.0 of before


def test_collinear_user_directions_are_refused_naming_them():
    problem = _problem()
    (a,) = D.random(problem, n=1, seed=1)
    with pytest.raises(LossAtlasError, match="directions"):
        lossatlas.surface(problem, None, [a, {k: -3 * v for k, v in a.items()}], steps=3, progress=False)
