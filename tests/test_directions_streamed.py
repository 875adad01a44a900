"""Large-model directions and probe points regenerated slice by slice (issue 17, memory): the bits of the
in-memory path (``directions._random._in_memory``, the whole-tensor probe formula) over many shapes, dtypes,
seeds, normalisations and ignore rules; slices made small (``_points.CHUNK``) and the size threshold set to
zero so that small models stream."""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

import lossatlas
from lossatlas import _behaviour as B
from lossatlas.directions import _streamed
from lossatlas.params import _draws, _points

rnd = importlib.import_module("lossatlas.directions._random")


def _both(model, monkeypatch, chunk=64, **kw):
    """(in-memory, streamed) directions of ``model`` with slices of ``chunk`` elements."""
    with monkeypatch.context() as m:
        m.setattr(_points, "CHUNK", chunk)
        m.setattr(_streamed, "STREAM_MIN_BYTES", 1 << 62)
        old = lossatlas.directions.random(model, model=model, **kw)
        m.setattr(_streamed, "STREAM_MIN_BYTES", 0)
        calls = []
        real = _streamed.draw
        m.setattr(_streamed, "draw", lambda *a: calls.append(1) or real(*a))
        new = lossatlas.directions.random(model, model=model, **kw)
    assert calls == ([1] if kw.get("norm", "filter") == "filter" else [])
    return old, new


def _assert_same(old, new):
    assert len(old) == len(new)
    for a, b in zip(old.vectors, new.vectors):
        assert list(a) == list(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].is_contiguous()
            assert torch.equal(a[k], b[k]), k
    assert old.spec == new.spec  # cosines, filter-norm deviation, seeds, labels


def _models():
    torch.manual_seed(0)
    yield nn.Sequential(nn.Linear(7, 48), nn.ReLU(), nn.Linear(48, 16))           # 7 columns: 16-row slices
    yield nn.Sequential(nn.Linear(32, 24), nn.Linear(24, 5))                        # 5×24 not a multiple of 16
    yield nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3, groups=2))
    yield nn.Sequential(nn.ConvTranspose2d(4, 16, 3, groups=2), nn.LayerNorm(16), nn.Linear(16, 32))
    yield nn.Sequential(nn.Embedding(40, 8), nn.Linear(8, 48))
    yield nn.Sequential(nn.Linear(9, 32), nn.Linear(32, 48)).double()
    yield nn.Sequential(nn.Linear(9, 32), nn.Linear(32, 48)).bfloat16()
    yield nn.Sequential(nn.Linear(16, 64, bias=False), nn.Linear(64, 16)).half()
    yield nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3)).to(memory_format=torch.channels_last)


@pytest.mark.parametrize("ignore", ["biasbn", None, ["*.bias", "0.*"]])
@pytest.mark.parametrize("n, orthogonal", [(2, True), (3, True), (1, True), (3, False)])
def test_streamed_equals_in_memory(n, orthogonal, ignore, monkeypatch):
    for model in _models():
        for seed in (0, 12345):
            _assert_same(*_both(model, monkeypatch, n=n, orthogonal=orthogonal, ignore=ignore, seed=seed))


@pytest.mark.parametrize("norm", ["layer", "model", None])
def test_other_normalisations_stay_in_memory(norm, monkeypatch):
    model = next(_models())
    _assert_same(*_both(model, monkeypatch, n=2, norm=norm, seed=1))


def test_streaming_really_slices(monkeypatch):
    """Every kind of tensor is met: sliced by rows, drawn whole, ignored."""
    model = nn.Sequential(nn.Linear(7, 48), nn.ConvTranspose1d(48, 16, 1), nn.Linear(1, 3))
    theta = {k: v.detach() for k, v in model.named_parameters()}
    layout = rnd.filter_layout(model, theta)
    skip = rnd.ignored("biasbn", layout, theta)
    monkeypatch.setattr(_points, "CHUNK", 64)
    s = _streamed.Streamed(theta, [1, 2], layout, skip, rnd._filter_draw)
    kinds = {k: s.tensors[k].kind for k in theta}
    assert kinds == {"0.weight": "rows", "0.bias": "zero", "1.weight": "whole", "1.bias": "zero",
                     "2.weight": "whole", "2.bias": "zero"}
    assert len(s.tensors["0.weight"].bounds) == 3  # 48 rows of 7: 16 rows (112 values) per slice


@given(rows=st.integers(1, 40), cols=st.integers(1, 40), out=st.integers(1, 9), chunk=st.integers(16, 300),
       seed=st.integers(0, 2**31), n=st.integers(1, 3), dtype=st.sampled_from([torch.float32, torch.float64]),
       bias=st.booleans())
def test_streamed_equals_in_memory_any_shape(rows, cols, out, chunk, seed, n, dtype, bias):
    model = nn.Sequential(nn.Linear(cols, rows, bias=bias), nn.Linear(rows, out)).to(dtype)
    with pytest.MonkeyPatch.context() as mp:
        _assert_same(*_both(model, mp, chunk=chunk, n=min(n, rows * cols), seed=seed))


def test_row_bounds():
    assert _draws.row_bounds(torch.Size([3])) is None                   # a multiple of 16 needed
    assert _draws.row_bounds(torch.Size([48, 7]), ) is None                # one slice holds it (CHUNK = 2^18)
    assert _draws.row_bounds(torch.Size([])) is None
    for shape in [(48, 7), (100, 16), (33, 48), (64, 3, 3, 3), (2, 4096)]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_points, "CHUNK", 100)
            b = _draws.row_bounds(torch.Size(shape))
        numel = torch.Size(shape).numel()
        cols = numel // shape[0]
        assert b[0][0] == 0 and b[-1][1] == numel and all(x[1] == y[0] for x, y in zip(b, b[1:]))
        assert all((e - s) % 16 == 0 and s % cols == 0 for s, e in b)


def test_randn_slices_are_the_whole_draw():
    assert _draws.slices_exact()
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    whole = torch.randn(48, 7, generator=g, dtype=torch.float64).view(-1)
    g.set_state(state)
    assert torch.equal(whole, torch.cat([torch.randn(e - s, generator=g, dtype=torch.float64)
                                         for s, e in [(0, 112), (112, 224), (224, 336)]]))


def test_falls_back_where_slicing_is_not_exact(monkeypatch):
    monkeypatch.setattr(_draws, "slices_exact", lambda: False)
    monkeypatch.setattr(_streamed, "slices_exact", lambda: False)
    monkeypatch.setattr(_streamed, "STREAM_MIN_BYTES", 0)
    theta = {"w": torch.zeros(4, 4)}
    assert not _streamed.wanted(theta, "filter")
    monkeypatch.setattr(_streamed, "slices_exact", lambda: True)
    assert _streamed.wanted(theta, "filter") and not _streamed.wanted(theta, "layer")
    assert not _streamed.wanted({"w": torch.zeros(4, 4, device="meta")}, "filter")


def _whole_probe_points(problem):
    """The probe points by the whole-tensor formula (the oracle)."""
    center = problem.params(copy=False)
    gen = torch.Generator().manual_seed(B.SEED)
    for eps in B.PROBES:
        point = {}
        for name in problem.param_names:
            t = center[name]
            scale = float(t.double().norm()) or 1.0
            r = torch.randn(tuple(t.shape), generator=gen, dtype=torch.float64)
            point[name] = (r.mul_(eps * scale / (float(r.norm()) or 1.0)).add_(t)).to(t.dtype)
        yield point


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_probe_points_sliced_keep_the_whole_tensor_bits(dtype, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 48), nn.ReLU(), nn.Linear(48, 5), nn.Linear(5, 32))
    x, y = torch.randn(10, 7), torch.randint(0, 32, (10,))
    problem = lossatlas.Problem(model, nn.CrossEntropyLoss(), (x, y), dtype=dtype)
    monkeypatch.setattr(_points, "CHUNK", 64)
    assert _draws.row_bounds(problem.params()["0.weight"].shape) is not None  # really sliced
    got = list(B._probe_points(problem))[1:]
    for a, b in zip(got, _whole_probe_points(problem), strict=True):
        for k in b:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_large_model_streams_with_default_slices():
    """A model over the threshold, default CHUNK: the streamed path runs and equals the in-memory one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 2048), nn.Linear(2048, 2048), nn.Linear(2048, 2048), nn.Linear(2048, 16))
    theta = {k: v.detach() for k, v in model.named_parameters()}
    assert _streamed.wanted(theta, "filter")
    with pytest.MonkeyPatch.context() as mp:
        _assert_same(*_both(model, mp, chunk=_points.CHUNK, n=2, seed=0))
