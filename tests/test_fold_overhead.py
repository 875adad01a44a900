"""The fold's setup reuses its eligibility pass and sizes chunks from its own timing (issue 17):
the same tables, bit for bit, as a fold that reruns the first batch, and no extra point timed."""

import importlib

import numpy as np
import pytest
import torch
from _fold_tables import assert_same_tables, bits
from _zoo import FAMILIES
from test_fold_identity import CatFeatures, FrozenEmbedding, _data

import lossatlas
from lossatlas._linear_fold import LinearFold
from lossatlas.evaluator import PointEvaluator

ev_mod = importlib.import_module("lossatlas.evaluator")
surface_mod = importlib.import_module("lossatlas.surface")  # the module, not the function


class _RerunFold(LinearFold):
    """The previous behaviour: _precompute runs the first batch again."""

    def _eligible(self, center):
        ok = super()._eligible(center)
        self._first_calls = None
        return ok


_AUTO_CHUNK = surface_mod._auto_chunk


def _timed_chunk(evaluator, grid, world=1):
    """_auto_chunk as before issue 17: one point timed."""
    fold, evaluator.fold = evaluator.fold, None
    try:
        return _AUTO_CHUNK(evaluator, grid, world)
    finally:
        evaluator.fold = fold


def _problems():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 5, generator=g), torch.randint(0, 3, (50,), generator=g)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    out = [lossatlas.Problem(mlp, torch.nn.CrossEntropyLoss(), (x, y), batch_size=20)]
    for cls in (CatFeatures, FrozenEmbedding):
        out.append(lossatlas.Problem(cls().double(), torch.nn.CrossEntropyLoss(), _data(cls), batch_size=30))
    return out


@pytest.mark.parametrize("k", [0, 1, 2])
def test_tables_are_bit_identical_to_a_rerun_of_the_first_batch(k):
    pr = _problems()[k]
    d = lossatlas.directions.random(pr, n=2, seed=0)
    new, old = LinearFold(pr, pr.params(), d.vectors), _RerunFold(pr, pr.params(), d.vectors)
    assert new.active_layers
    assert_same_tables(new, old, inputs=True)
    assert new.forward_seconds is not None and new.forward_seconds > 0
    assert new._first_calls is None  # nothing held after construction


def test_surface_values_unchanged_and_no_extra_point(monkeypatch):
    pr = _problems()[0]
    d = lossatlas.directions.random(pr, n=2, seed=0)
    calls = []
    real = PointEvaluator.__call__

    def counting(self, c):
        calls.append(np.asarray(c).shape[0])
        return real(self, c)
    monkeypatch.setattr(PointEvaluator, "__call__", counting)
    ds = lossatlas.surface(pr, None, d, steps=3, span=0.5, strategy="loop", progress=False)
    assert sum(calls) == 9  # the grid's points only: no point timed to size the chunks
    monkeypatch.setattr(ev_mod, "LinearFold", _RerunFold)  # and the chunks sized as before
    monkeypatch.setattr(surface_mod, "_auto_chunk", _timed_chunk)
    ref = lossatlas.surface(pr, None, d, steps=3, span=0.5, strategy="loop", progress=False)
    assert bits(torch.from_numpy(np.ascontiguousarray(ds.loss.values))) == \
        bits(torch.from_numpy(np.ascontiguousarray(ref.loss.values)))


def test_auto_chunk_times_a_point_without_a_fold(monkeypatch):
    pr = _problems()[0]
    d = lossatlas.directions.random(pr, n=2, seed=0)
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop", exact_linear=False) as ev:
        calls = []
        real = PointEvaluator.__call__
        monkeypatch.setattr(PointEvaluator, "__call__", lambda self, c: calls.append(1) or real(self, c))
        grid = surface_mod.Grid.make(2, 5, 1.0)
        assert surface_mod._auto_chunk(ev, grid) >= 1
        assert calls == [1]


class _ComputedFold(LinearFold):
    """Every θ product computed by its own call of the layer (before the eligibility pass's outputs
    were reused for it)."""

    def _first_output(self, i, j):
        return None


def _counting_first(monkeypatch):
    used = []
    real = LinearFold._first_output

    def counting(self, i, j):
        out = real(self, i, j)
        used.append(out is not None)
        return out
    monkeypatch.setattr(LinearFold, "_first_output", counting)
    return used


@pytest.mark.parametrize("batching", ["one", "equal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_theta_products_from_the_eligibility_pass_are_the_computed_ones(name, dtype, batching, monkeypatch):
    """The first batch's θ products are the outputs of the eligibility pass's own layer calls: the same
    tables, bit for bit, as computing them again, on every family."""
    pr = FAMILIES[name]().problem(batching, dtype)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    old = _ComputedFold(pr, pr.params(), d.vectors)
    used = _counting_first(monkeypatch)
    new = LinearFold(pr, pr.params(), d.vectors)
    assert_same_tables(new, old, inputs=True)
    assert new._first_outputs is None  # nothing held after construction
    if dtype == torch.bfloat16:
        assert not used  # 16-bit problems' products are float32, not the layer's output
    if name in ("mlp-tanh", "cnn-bn-eval", "conv1d-sequence") and dtype != torch.bfloat16:
        assert used and all(used)  # reused where nothing writes into the layer's output


def test_an_output_written_in_place_after_the_layer_gives_the_same_tables(monkeypatch):
    """The eligibility pass keeps a copy of each output taken as the layer returned, so a later write
    into the output (an in-place ReLU) does not reach the θ product."""
    pr = FAMILIES["mlp-inplace-relu"]().problem("one", torch.float64)  # nn.ReLU(inplace=True) after the layer
    d = lossatlas.directions.random(pr, n=2, seed=0)
    old = _ComputedFold(pr, pr.params(), d.vectors)
    used = _counting_first(monkeypatch)
    new = LinearFold(pr, pr.params(), d.vectors)
    assert new.active_layers and used and all(used)
    assert_same_tables(new, old, inputs=True)


class _DataClamp(torch.nn.Module):
    """Writes into its input through ``.data``: no version counter sees it."""

    def forward(self, t):
        t.data.clamp_(min=0.1)
        return t


@pytest.mark.parametrize("after", ["data-write", "hook-returns", "hook-in-place"])
def test_writes_into_the_layer_output_no_version_counter_sees_leave_the_fold_exact(after):
    """A `.data` write into the first layer's output (its version counter unchanged) once made the
    reused θ product the clamped one: the folded plane was 0.06 off the unfolded one."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    first = torch.nn.Linear(5, 16)
    if after == "hook-returns":
        first.register_forward_hook(lambda mod, inp, out: out * 2.0)
    elif after == "hook-in-place":
        def doubled(mod, inp, out):
            out.mul_(2.0)
        first.register_forward_hook(doubled)
    mid = [_DataClamp()] if after == "data-write" else []
    model = torch.nn.Sequential(first, *mid, torch.nn.ReLU(), torch.nn.Linear(16, 3))
    pr = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), (x, y))
    d = lossatlas.directions.random(pr, n=2, seed=0)
    folded, plain = (lossatlas.surface(pr, pr.params(), d, steps=3, exact_linear=e, progress=False)["loss"].values
                     for e in (True, False))
    np.testing.assert_allclose(folded, plain, rtol=1e-5)
