"""The fold's discovery pass with autograd over one sample (issue 17): the same layers, tables and values
as the pass over the whole first batch it replaces, on every model family; that pass still runs where the
one-sample pass fails or disagrees, and inputs made inside forward are still judged by their values."""

import importlib

import numpy as np
import pytest
import torch
from _fold_tables import assert_same_tables, bits
from _zoo import FAMILIES
from test_fold_identity import ArgmaxGate, CatFeatures, FrozenEmbedding, ScratchBuffer, _data

import lossatlas
from lossatlas._linear_fold import LinearFold
from lossatlas.evaluator import PointEvaluator

fold_mod = importlib.import_module("lossatlas._linear_fold")


def _by_grad(monkeypatch, problem, d):
    """The fold as before: eligibility from a real forward with autograd."""
    with monkeypatch.context() as m:
        m.setattr(fold_mod, "_slice_flags", lambda *a: None)
        return LinearFold(problem, problem.params(), d.vectors)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_one_sample_discovery_equals_the_batch_pass_on_every_family(name, monkeypatch):
    case = FAMILIES[name]()
    pr = case.problem("equal", torch.float64)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    old = _by_grad(monkeypatch, pr, d)
    assert old.discovery == "grad"
    new = LinearFold(pr, pr.params(), d.vectors)
    assert_same_tables(new, old)


class Pairs(torch.nn.Module):
    """Mixes consecutive samples in pairs: cannot run on one sample."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.lin, self.out = torch.nn.Linear(5, 6), torch.nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.lin(x)).reshape(-1, 2, 6).mean(1).repeat_interleave(2, 0)
        return self.out(h)


class DataDependent(torch.nn.Module):
    """Control flow on a value (a host read)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.lin, self.out = torch.nn.Linear(5, 6), torch.nn.Linear(6, 3)

    def forward(self, x):
        h = self.lin(x)
        if float(h.abs().max()) > 1e9:  # never true; still needs the values
            h = h * 0
        return self.out(torch.tanh(h))


class NoisyInput(torch.nn.Module):
    """The first layer's input is drawn anew at every call: not deterministic, never folded."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.lin, self.out = torch.nn.Linear(5, 6), torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(x + 1e-3 * torch.randn_like(x))))


class CachesOnForward(torch.nn.Module):
    """Keeps a tensor made in forward, sized by the batch, as an attribute (a cache): the one-sample
    pass must not leave its own there."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.lin, self.out = torch.nn.Linear(5, 6), torch.nn.Linear(6, 3)
        self.cache = None
        self.seen = []

    def forward(self, x):
        if self.cache is None or self.cache.shape[0] != x.shape[0]:
            self.cache = torch.ones(x.shape[0], 1, dtype=x.dtype)
        self.seen.append(x.shape[0])
        return self.out(torch.tanh(self.lin(x * self.cache)))


def _problem(cls):
    model = cls().double()
    x, y = _data(cls) if cls in (CatFeatures, FrozenEmbedding, ScratchBuffer, ArgmaxGate) else _data(CatFeatures)
    return lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=30)


@pytest.mark.parametrize("cls, active, discovery", [
    (CatFeatures, ["lin"], "sample"),          # an input made inside forward: compared on a second pass
    (FrozenEmbedding, ["lin"], "sample"),      # a frozen embedding's output: the same
    (ArgmaxGate, ["gate", "lin"], "sample"),   # depends on θ without requiring grad: use-time checks
    (ScratchBuffer, ["lin"], "sample"),      # a persistent tensor rewritten at every call
    (DataDependent, ["lin"], "sample"),
    (Pairs, ["lin"], "grad"),                # the one-sample pass fails: the batch pass with autograd runs
    (NoisyInput, [], "sample"),                # not deterministic: not folded
    (CachesOnForward, ["lin"], "sample"),    # its one-sample cache is dropped after the pass
])
def test_judged_as_before(cls, active, discovery, monkeypatch):
    pr = _problem(cls)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    old = _by_grad(monkeypatch, pr, d)
    new = LinearFold(pr, pr.params(), d.vectors)
    if discovery is not None:
        assert new.discovery == discovery
    assert new.active_layers == active
    if cls is not NoisyInput:
        assert_same_tables(new, old)


def test_one_sample_pass_restores_the_private_module():
    pr = _problem(CachesOnForward)
    m = pr.module
    layers = LinearFold(pr, pr.params(), [])._affine_layers()
    before = {k: (v.device, v.data_ptr()) for k, v in [*m.named_parameters(), *m.named_buffers()]}
    seen = list(m.seen)
    cache = m.cache
    flags = fold_mod._slice_flags(pr, layers, pr.params(), pr.data.first()[0])
    assert flags is not None and all(flags.values())
    assert {k: (v.device, v.data_ptr()) for k, v in [*m.named_parameters(), *m.named_buffers()]} == before
    assert m.cache is cache and m.seen == seen  # attributes forward wrote are restored
    assert not m._forward_pre_hooks


@pytest.mark.parametrize("cls, passes", [(None, 1), (CachesOnForward, 3 + 1)])
def test_one_sample_pass_replaces_the_batch_pass(cls, passes):
    """Where the one-sample pass succeeds, no batch runs with autograd: the first batch runs once without
    (the pass whose inputs the tables reuse); where a layer's input was made inside forward, a second
    pass stops after it and every other batch runs once; where every input is a batch tensor itself
    (the MLP), the other batches' inputs are predicted without running them."""
    if cls is None:
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        mlp = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
        data = (torch.randn(50, 5, generator=g), torch.randint(0, 3, (50,), generator=g))
        pr = lossatlas.Problem(mlp, torch.nn.CrossEntropyLoss(), data, batch_size=20)
    else:
        pr = _problem(cls)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    real = []
    hook = pr.module.register_forward_pre_hook(lambda mod, args: real.append(torch.is_grad_enabled())
                                               if args[0].shape[0] > 1 else None)  # not the one-sample pass
    try:
        fold = LinearFold(pr, pr.params(), d.vectors)
    finally:
        hook.remove()
    assert fold.discovery == "sample" and fold.active_layers
    assert real == [False] * passes


def _values(pr, d, exact_linear, points):
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop", exact_linear=exact_linear) as ev:
        return ev(points)["loss"], (ev.fold.active_layers if ev.fold else None)


class FlipsShortBatches(torch.nn.Module):
    """Feeds its first layer the batch itself, except on a short batch (a flipped copy): the inputs
    predicted from the first batch are wrong there, and the layer must run for real."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.lin, self.out = torch.nn.Linear(5, 6), torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(x if x.shape[0] == 30 else x.flip(0) * 1.5)))


def test_predicted_inputs_equal_the_passes_they_replace(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (80,), generator=g)
    for model in (FlipsShortBatches().double(), torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(),
                                                                    torch.nn.Linear(4, 3)).double()):
        pr = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=30)  # 30, 30, 20
        d = lossatlas.directions.random(pr, n=2, seed=0)
        new = LinearFold(pr, pr.params(), d.vectors)
        assert new._leaves is None and new.forward_seconds > 0
        with monkeypatch.context() as m:
            m.setattr(fold_mod, "_leaf_positions", lambda *a: None)
            old = LinearFold(pr, pr.params(), d.vectors)
        assert old.active_layers == new.active_layers
        for i, table in new.tables.items():
            for key, e in table.items():  # a wrong prediction holds the batch, the real pass a copy
                o = old.tables[i].get(key)
                if o is not None and (e.copy is None) == (o.copy is None):
                    assert bits(e.products) == bits(o.products)
        points = np.array([[0.0, 0.0], [0.4, -0.3], [-0.7, 0.2]])
        folded, active = _values(pr, d, True, points)
        plain, _ = _values(pr, d, False, points)
        assert active == ["lin" if isinstance(model, FlipsShortBatches) else "0"]
        np.testing.assert_allclose(folded, plain, rtol=1e-13, atol=0)


class ClampsItsInput(torch.nn.Module):
    """Writes into the batch it is given (an idempotent clamp): the batch's memory changes under the
    fold's feet, so the layer reading it is not folded (its use-time check would fail anyway)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(8)
        self.lin, self.out = torch.nn.Linear(5, 6), torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(x.clamp_(-5.0, 5.0))))


def test_a_forward_writing_into_the_batch_is_not_folded():
    pr = _problem(ClampsItsInput)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    points = np.array([[0.0, 0.0], [0.4, -0.3]])
    folded, active = _values(pr, d, True, points)
    plain, _ = _values(pr, d, False, points)
    assert active == []
    np.testing.assert_allclose(folded, plain, rtol=1e-13, atol=0)
