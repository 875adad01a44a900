"""The fold's discovery passes take θ as copy-on-write autograd leaves (issue 17, memory), and a Problem
binds θ₀'s own tensors copy-on-write: the same tables, bit for bit, as leaves made by ``clone()`` on every
model family; the user's tensors and θ₀ never written; a model that writes into its own parameters in
forward gets the naive loop's values (under ``no_grad``) or a plane without the fold (under autograd,
which refuses in-place writes to leaves), never a torch error from the fold."""

import importlib

import numpy as np
import pytest
import torch
from _fold_tables import assert_same_tables
from _zoo import FAMILIES, Case, grid_coefficients, reference
from torch import nn

import lossatlas
from lossatlas import params as P
from lossatlas._linear_fold import LinearFold
from lossatlas.errors import EvaluationError
from lossatlas.params._cow import lazy_clone

fold_mod = importlib.import_module("lossatlas._linear_fold")
cow_mod = importlib.import_module("lossatlas.params._cow")


def _fold(problem, d, *, clone: bool, grad: bool, monkeypatch):
    with monkeypatch.context() as m:
        if clone:  # the fallback path: no copy-on-write in this torch
            m.delattr(torch, "_lazy_clone")
        if grad:  # eligibility from the whole-batch pass with autograd (_grad_flags)
            m.setattr(fold_mod, "_slice_flags", lambda *a: None)
        return LinearFold(problem, problem.params(copy=False), d.vectors)


@pytest.mark.parametrize("grad", [False, True], ids=["sample", "grad"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_tables_equal_the_clone_leaves_on_every_family(name, grad, monkeypatch):
    case = FAMILIES[name]()
    before = P.fingerprint(P.params_of(case.model))
    pr = case.problem("equal", torch.float32)
    theta0 = P.fingerprint(pr.params(copy=False))
    d = lossatlas.directions.random(pr, n=2, seed=0)
    old = _fold(pr, d, clone=True, grad=grad, monkeypatch=monkeypatch)
    new = _fold(pr, d, clone=False, grad=grad, monkeypatch=monkeypatch)
    assert new.discovery == old.discovery
    assert_same_tables(new, old, inputs=True)
    assert P.fingerprint(pr.params(copy=False)) == theta0
    assert P.fingerprint(P.params_of(case.model)) == before


def test_leaves_share_memory_until_written():
    t = torch.randn(300, 200)
    keep = t.clone()
    leaf = lazy_clone(t).requires_grad_(True)
    assert leaf.is_leaf and leaf.requires_grad and torch._C._is_cow_tensor(leaf)
    with torch.no_grad():
        leaf.mul_(2.0)  # the write copies first
    assert torch.equal(t, keep) and torch.equal(leaf.detach(), 2 * keep)


@pytest.mark.parametrize("broken", ["missing", "raises"])
def test_fallback_is_a_clone(broken, monkeypatch):
    if broken == "missing":
        monkeypatch.delattr(torch, "_lazy_clone")
    else:
        def refuse(t):
            raise RuntimeError("no copy-on-write here")
        monkeypatch.setattr(torch, "_lazy_clone", refuse)
    t = torch.randn(5, 3).t()
    c = lazy_clone(t)
    assert torch.equal(c, t) and c.stride() == t.stride() and c.data_ptr() != t.data_ptr()


class NoGradWriter(nn.Module):
    """Halves a weight in place at every forward, under no_grad (a "self-normalising" model)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        with torch.no_grad():
            self.b.weight.mul_(0.5)
        return self.b(torch.tanh(self.a(x)))


class DataWriter(NoGradWriter):
    def forward(self, x):
        self.b.weight.data.mul_(0.5)  # through .data: invisible to version counters
        return self.b(torch.tanh(self.a(x)))


class GradWriter(NoGradWriter):
    def forward(self, x):
        self.b.weight.add_(0.0)  # in place with autograd on: refused by autograd for a leaf
        return self.b(torch.tanh(self.a(x)))


def _writer_case(cls):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(24, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (24,), generator=g)
    return Case(cls.__name__, cls().double(), (x, y), loss=nn.CrossEntropyLoss())


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("cls", [NoGradWriter, DataWriter, GradWriter])
def test_models_writing_their_parameters(cls, strategy):
    case = _writer_case(cls)
    user = P.clone(P.params_of(case.model))
    pr = case.problem("equal", torch.float64)
    theta0 = P.clone(pr.params(copy=False))
    assert all(torch.equal(theta0[k], user[k]) for k in user)  # the construction probe wrote nothing into θ₀
    d = lossatlas.directions.random(pr, n=2, seed=0)
    if cls is DataWriter and strategy == "vmap":  # torch refuses .data under vmap: a library error says so
        with pytest.raises(EvaluationError, match="data"):
            lossatlas.surface(pr, None, d, steps=3, span=1.0, progress=False, metrics=False, strategy=strategy)
        return
    ds = lossatlas.surface(pr, None, d, steps=3, span=1.0, progress=False, metrics=False, strategy=strategy)
    want = reference(case, [8, 8, 8], theta0, d.vectors, grid_coefficients(ds))
    np.testing.assert_allclose(ds.loss.values.reshape(-1), want, rtol=1e-12, atol=0)
    assert all(torch.equal(pr.params(copy=False)[k], theta0[k]) for k in theta0)  # θ₀ did not drift
    assert all(torch.equal(P.params_of(case.model)[k], user[k]) for k in user)
    if cls is GradWriter:  # its autograd pass raises: nothing folded, no torch error
        assert LinearFold(pr, pr.params(copy=False), d.vectors).active_layers == []
    else:
        assert LinearFold(pr, pr.params(copy=False), d.vectors).active_layers == ["a"]


def test_problem_evaluations_at_theta0_do_not_drift():
    case = _writer_case(NoGradWriter)
    pr = case.problem("one", torch.float64)
    first = pr.loss(pr.params(copy=False))
    assert [pr.loss(pr.params(copy=False)) for _ in range(3)] == [first] * 3
    assert pr.loss(pr.params()) == first  # a copy of θ₀ gives the same value
