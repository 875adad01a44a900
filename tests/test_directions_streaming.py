"""directions.random and check_independent work one tensor at a time (issue 17, memory); the bits
must equal the whole-model float64 pipeline they replace: every draw in float64, θ in float64,
normalisation, P.orthogonalise, then a cast to the model's dtype (the oracle below)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

import lossatlas
from lossatlas import params as P
from lossatlas.params import _points
from lossatlas.directions import check_independent
from lossatlas.directions._base import _dot64, _norm64
from lossatlas.directions._random import _seeds
from lossatlas.params._layout import filter_layout, ignored, rescale_filters


def _oracle(model, *, n, norm, ignore, orthogonal, seed):
    """The previous implementation of directions.random (whole-model float64 copies)."""
    theta = {k: v.detach() for k, v in P.params_of(model).items()}
    layout = filter_layout(model, theta)
    skip = ignored(ignore, layout, theta)
    theta64 = {k: v.double().cpu() for k, v in theta.items()}
    vectors = []
    for s in _seeds(seed, n):
        gen = torch.Generator().manual_seed(s)
        d = {}
        for k, t in theta.items():
            draw = torch.randn(t.shape, generator=gen, dtype=torch.float64)
            d[k] = torch.zeros_like(draw) if k in skip else draw
        if norm == "filter":
            d = {k: v if k in skip else rescale_filters(v, theta64[k], layout[k]) for k, v in d.items()}
        elif norm == "layer":
            out = {}
            for k, v in d.items():
                nv = float(torch.linalg.vector_norm(v))
                out[k] = v if (k in skip or nv == 0) else v * (float(torch.linalg.vector_norm(theta64[k])) / nv)
            d = out
        elif norm == "model":
            moving = {k: v for k, v in d.items() if k not in skip}
            nd, nt = P.norm(moving), P.norm({k: theta64[k] for k in moving})
            d = {k: (v * (nt / nd) if nd > 0 else v) for k, v in d.items()}
        vectors.append(d)
    if orthogonal and n > 1:
        vectors = P.orthogonalise(vectors)
    cos = [[P.cosine(a, b) for b in vectors] for a in vectors]
    return [{k: v.to(theta[k].dtype) for k, v in d.items()} for d in vectors], cos


def _models():
    torch.manual_seed(0)
    yield nn.Sequential(nn.Linear(7, 33), nn.ReLU(), nn.Linear(33, 5))
    yield nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, groups=2))
    yield nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.LayerNorm(6), nn.Linear(6, 2))
    yield nn.Sequential(nn.Linear(9, 17), nn.Linear(17, 4)).double()


@pytest.mark.parametrize("norm,ignore,orthogonal", list(itertools.product(["filter", "layer", "model", None],
                                                                          ["biasbn", None], [True, False])))
def test_random_bit_identical_to_whole_model_pipeline(norm, ignore, orthogonal):
    for model in _models():
        for seed, n in [(0, 2), (7, 3), (12345, 1)]:
            got = lossatlas.directions.random(model, n=n, norm=norm, ignore=ignore, orthogonal=orthogonal,
                                              seed=seed, model=model)
            want, cos = _oracle(model, n=n, norm=norm, ignore=ignore, orthogonal=orthogonal, seed=seed)
            for g, w in zip(got.vectors, want):
                assert list(g) == list(w)
                assert all(g[k].dtype == w[k].dtype and torch.equal(g[k], w[k]) for k in w)
            assert got.spec["cosines"] == cos


def test_random_from_problem_leaves_theta0_untouched():
    net = nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 2))
    problem = lossatlas.Problem(net, nn.CrossEntropyLoss(), (torch.randn(8, 5), torch.randint(0, 2, (8,))))
    before = problem.params()
    d = lossatlas.directions.random(problem, n=2, seed=3)
    assert P.fingerprint(problem.params()) == P.fingerprint(before)
    assert all(d[0][k].data_ptr() != problem._center[k].data_ptr() for k in before)
    want, _ = _oracle(problem.model, n=2, norm="filter", ignore="biasbn", orthogonal=True, seed=3)
    assert all(torch.equal(d[0][k], want[0][k]) for k in want[0])


def _gram_oracle(dirs):
    norms = [P.norm(d) for d in dirs]
    gram = np.array([[P.dot(a, b) / (norms[i] * norms[j]) for j, b in enumerate(dirs)] for i, a in enumerate(dirs)])
    return float(max(abs(gram[i, j]) for i in range(len(dirs)) for j in range(len(dirs)) if i != j))


def test_streamed_dot_and_norm_are_params_dot_and_norm():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(6, 5, generator=g).t(), "b": torch.randn(4, generator=g), "c": torch.randn(3, 3, generator=g)}
    b = {"w": torch.randn(5, 6, generator=g, dtype=torch.float64), "b": torch.randn(4, generator=g).half(),
         "c": torch.randn(3, 3, generator=g, dtype=torch.float64)}
    for x, y in [(a, b), (b, a), (a, a), (b, b)]:
        assert _dot64(x, y) == P.dot(x, y)
        assert _norm64(x) == P.norm(x)
    base = lossatlas.directions.random(nn.Linear(40, 30), n=3, seed=1)
    for dtype in (torch.float32, torch.float64, torch.float16):
        d = base.to(dtype=dtype)
        assert check_independent(d, "f") == _gram_oracle(d.vectors)


def test_streamed_dot_of_large_tensors(monkeypatch):
    import lossatlas.directions._base as base

    monkeypatch.setattr(_points, "CHUNK", 7)  # several slices, a ragged last one
    g = torch.Generator().manual_seed(2)
    a = {"w": torch.randn(9, 11, generator=g), "b": torch.randn(5, generator=g, dtype=torch.float64),
         "c": torch.randn(4, 6, generator=g, dtype=torch.float64)}
    b = {"w": torch.randn(9, 11, generator=g, dtype=torch.float64), "b": torch.randn(5, generator=g),
         "c": torch.randn(4, 6, generator=g, dtype=torch.float64)}
    for x, y in [(a, b), (b, a), (a, a)]:
        assert base._dot64(x, y) == P.dot(x, y)
    d = lossatlas.directions.random(nn.Linear(30, 20), n=2, seed=4)
    assert check_independent(d, "f") == _gram_oracle(d.vectors)


def _gram_oracle_or_error(dirs):
    """The oracle's worst |cos|, or "dependent" where its full Gram matrix is singular."""
    n = len(dirs)
    norms = [P.norm(d) for d in dirs]
    gram = np.array([[P.dot(a, b) / (norms[i] * norms[j]) for j, b in enumerate(dirs)] for i, a in enumerate(dirs)])
    if n > 1 and not float(np.linalg.eigvalsh((gram + gram.T) / 2)[0]) > 1e-10:
        return "dependent"
    return _gram_oracle(dirs)



@given(n=st.integers(2, 4), seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([torch.float32, torch.float64]),
       mix=st.floats(0.0, 1.0), chunk=st.sampled_from([5, 1 << 18]))
def test_each_pair_once_gives_the_full_grams_bits(n, seed, dtype, mix, chunk):
    """check_independent computes each pair's product once (a·b and b·a have the same bits): its largest
    |cos| and its verdict are those of the full Gram matrix, for nearly dependent directions too."""
    old, _points.CHUNK = _points.CHUNK, chunk
    try:
        g = torch.Generator().manual_seed(seed)
        shapes = [(7, 3), (3,), (2, 2, 2)]
        vecs = [{f"t{k}": torch.randn(s, generator=g, dtype=dtype) for k, s in enumerate(shapes)} for _ in range(n)]
        vecs[-1] = {k: (1 - mix) * v + mix * vecs[0][k] for k, v in vecs[-1].items()}  # towards the first
        d = lossatlas.Directions(vecs, {"kind": "custom"})
        want = _gram_oracle_or_error(vecs)
        if want == "dependent":
            with pytest.raises(lossatlas.InvalidArgumentError):
                check_independent(d, "f")
        else:
            assert check_independent(d, "f") == want
    finally:
        _points.CHUNK = old
