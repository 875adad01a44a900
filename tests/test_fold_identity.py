"""The first-layer fold recognises an input by what it is (batch, call, memory or values), never by a
memory address alone: inputs created inside ``forward`` over several batches stay exact (issue 12, 1)."""

import numpy as np
import pytest
import torch

import lossatlas
from lossatlas.evaluator import PointEvaluator
from lossatlas.testing import assert_close, naive_loss, naive_surface

F64 = torch.float64


class CatFeatures(torch.nn.Module):
    """Preprocessing inside forward: the first trainable layer reads a fresh tensor at every call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.out = torch.nn.Linear(10, 6), torch.nn.Linear(6, 3)

    def forward(self, x):
        h = torch.cat([x, x * x], dim=1)
        return self.out(torch.tanh(self.lin(h)))


class FrozenEmbedding(torch.nn.Module):
    """A frozen pre-trained embedding feeding a trainable Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.emb = torch.nn.Embedding(20, 8)
        self.emb.weight.requires_grad_(False)
        self.lin = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.lin(self.emb(x))


class ScratchBuffer(torch.nn.Module):
    """Writes its features into one persistent scratch tensor: the same address, shape and strides at
    every batch (the extreme case of a freed block reused by the next batch)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.lin, self.out = torch.nn.Linear(10, 6), torch.nn.Linear(6, 3)
        self.scratch = None

    def forward(self, x):
        if self.scratch is None or self.scratch.shape[0] != x.shape[0] or self.scratch.dtype != x.dtype:
            self.scratch = torch.empty(x.shape[0], 10, dtype=x.dtype)
        torch.cat([x, x * x], dim=1, out=self.scratch)
        return self.out(torch.tanh(self.lin(self.scratch)))


class ArgmaxGate(torch.nn.Module):
    """The folded layer's input depends on θ without requiring grad (argmax → frozen embedding)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.gate = torch.nn.Linear(5, 4)
        self.emb = torch.nn.Embedding(4, 6)
        self.emb.weight.requires_grad_(False)
        self.lin = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.lin(self.emb(self.gate(x).argmax(dim=1)))


def _data(model_cls, n=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    if model_cls is FrozenEmbedding:
        x = torch.randint(0, 20, (n,), generator=g)
    else:
        x = torch.randn(n, 5, generator=g, dtype=F64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _surface_vs_naive(model_cls, strategy, batch_size=30, steps=5):
    model = model_cls().double()
    x, y = _data(model_cls)
    loss = torch.nn.CrossEntropyLoss()
    pr = lossatlas.Problem(model, loss, (x, y), batch_size=batch_size)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    with PointEvaluator(pr, pr.params(), d.vectors, strategy=strategy) as ev:
        active = ev.fold.active_layers
    ds = lossatlas.surface(pr, None, d, steps=steps, span=0.8, strategy=strategy, progress=False)
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    ref = naive_surface(model_cls().double(), loss, batches, pr.params(), d.vectors, [ds.x.values, ds.y.values], F64)
    return ds.loss.values, ref, active


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("model_cls", [CatFeatures, FrozenEmbedding, ScratchBuffer, ArgmaxGate])
def test_inputs_made_inside_forward_stay_exact_over_several_batches(model_cls, strategy):
    values, ref, _ = _surface_vs_naive(model_cls, strategy)
    assert_close(values, ref, F64, what=f"{model_cls.__name__} {strategy}")


@pytest.mark.parametrize("model_cls", [CatFeatures, FrozenEmbedding])
def test_inputs_made_inside_forward_are_still_folded(model_cls):
    """Recognised by their values, such inputs keep the fold (its saving), exactly."""
    model = model_cls().double()
    x, y = _data(model_cls)
    pr = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=30)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop") as ev:
        assert ev.fold.active_layers == ["lin"]
        table = next(iter(ev.fold.tables.values()))
        assert sorted(table) == [(0, 0), (1, 0), (2, 0)]
        assert all(e.copy is not None for e in table.values())  # checked by value, not by address
        hits = []
        matches = type(next(iter(table.values()))).matches

        def spy(entry, t):
            hits.append(matches(entry, t))
            return hits[-1]
        type(next(iter(table.values()))).matches = spy
        try:
            ev(np.array([[0.3, -0.2], [0.0, 0.5]]))
        finally:
            type(next(iter(table.values()))).matches = matches
    assert hits == [True] * 6


def test_cached_batch_inputs_are_recognised_by_memory_without_copies(classification):
    """The common first layer (fed the cached batch) keeps no copy and no value check."""
    model, loss_fn, x, y = classification
    pr = lossatlas.Problem(model, loss_fn, (x, y), batch_size=20)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop") as ev:
        table = ev.fold.tables[id(pr._module.net[0])]
        assert sorted(table) == [(0, 0), (1, 0), (2, 0)]
        assert all(e.copy is None and e.ref is not None for e in table.values())


def test_modified_cached_batch_is_not_folded(classification):
    """Memory of the cached batch written in place after the tables were made: detected (version)."""
    model, loss_fn, x, y = classification
    pr = lossatlas.Problem(model, loss_fn, (x, y), batch_size=20)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    c = np.array([[0.4, -0.3]])
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop") as ev:
        batch, _ = pr.data._mat.batches[1], None
        batch[0].mul_(2.0)  # as a model that modifies its input in place would
        folded = ev(c)["loss"]
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop", exact_linear=False) as ev:
        direct = ev(c)["loss"]
    assert_close(folded, direct, torch.float32)


def test_freshly_allocated_inputs_reusing_freed_addresses():
    """A forward allocating a fresh tensor of the same size per batch: the allocator hands the freed
    block to the next batch, so an address-keyed table returned another batch's products."""
    seen = []

    class Fresh(CatFeatures):
        def forward(self, x):
            h = torch.empty(x.shape[0], 10, dtype=x.dtype)
            seen.append(h.data_ptr())
            torch.cat([x, x * x], dim=1, out=h)
            return self.out(torch.tanh(self.lin(h)))

    x, y = _data(CatFeatures, n=120)
    model = Fresh().double()
    pr = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=30)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    c = np.array([[0.5, 0.25], [-0.5, 0.75], [0.0, 0.0]])
    for strategy in ("loop", "vmap"):
        seen.clear()
        with PointEvaluator(pr, pr.params(), d.vectors, strategy=strategy) as ev:
            got = ev(c)["loss"]
        batches = [(x[i:i + 30], y[i:i + 30]) for i in range(0, 120, 30)]
        for k, (a, b) in enumerate(c):
            p = {n: pr.params()[n] + a * d.vectors[0][n] + b * d.vectors[1][n] for n in pr.params()}
            assert_close(got[k], naive_loss(CatFeatures().double(), torch.nn.CrossEntropyLoss(), batches, p, F64),
                         F64, what=f"{strategy} point {k}")
    assert len(set(seen)) < len(seen)  # addresses were indeed reused


def test_folds_closed_in_any_order_restore_the_module(classification):
    model, loss_fn, x, y = classification
    pr = lossatlas.Problem(model, loss_fn, (x, y), dtype=F64)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    e = lossatlas.directions.random(pr, n=2, seed=1)
    layer = pr._module.net[0]
    before = layer.__dict__.get("forward")
    c = np.array([[0.3, 0.7], [-0.2, 0.1]])
    first = PointEvaluator(pr, pr.params(), d.vectors, strategy="loop")
    second = PointEvaluator(pr, pr.params(), e.vectors, strategy="loop")
    a1, b1 = first(c)["loss"], second(c)["loss"]
    first.close()
    b2 = second(c)["loss"]  # still its own tables after the other one closed
    second.close()
    assert layer.__dict__.get("forward") is before
    for vecs, got in ((d.vectors, a1), (e.vectors, b1), (e.vectors, b2)):
        with PointEvaluator(pr, pr.params(), vecs, strategy="loop", exact_linear=False) as ev:
            assert_close(got, ev(c)["loss"], F64)


def test_problem_loss_while_an_evaluator_is_open_is_not_folded(classification):
    model, loss_fn, x, y = classification
    pr = lossatlas.Problem(model, loss_fn, (x, y), dtype=F64, batch_size=20)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    theta = pr.params()
    expected = pr.loss(theta)
    with PointEvaluator(pr, theta, d.vectors, strategy="loop") as ev:
        ev(np.array([[0.9, -0.9]]))
        ev.fold.coefficients = (0.9, -0.9)  # even with stale coefficients left behind
        assert pr.loss(theta) == expected


def test_per_batch_terms_with_inputs_made_inside_forward():
    """The data-parallel path (per-batch terms) announces batches like the problem's own loop."""
    x, y = _data(CatFeatures)
    model = CatFeatures().double()
    pr = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=30)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    c = np.array([[0.5, -0.25], [-0.75, 0.5]])
    for strategy in ("loop", "vmap"):
        with PointEvaluator(pr, pr.params(), d.vectors, strategy=strategy, per_batch=True) as ev:
            assert ev.fold.active_layers == ["lin"]
            terms = ev.terms(c)
        with PointEvaluator(pr, pr.params(), d.vectors, strategy=strategy, per_batch=True,
                            exact_linear=False) as ev:
            direct = ev.terms(c)
        assert_close(terms.numpy(), direct.numpy(), F64, what=strategy)


def test_recalibrated_batchnorm_after_a_folded_layer_over_several_batches(cnn_data):
    model, loss_fn, x, y = cnn_data
    pr = lossatlas.Problem(model, loss_fn, (x.double(), y), dtype=F64, batch_size=16, bn="recalibrate")
    d = lossatlas.directions.random(pr, n=2, seed=1)
    a = lossatlas.surface(pr, None, d, steps=3, progress=False, strategy="loop")
    b = lossatlas.surface(pr, None, d, steps=3, progress=False, strategy="loop", exact_linear=False)
    assert_close(a.loss.values, b.loss.values, F64)
