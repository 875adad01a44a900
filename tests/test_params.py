import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lossatlas
from lossatlas import params as P


def rand_params(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(3, 4, generator=g, dtype=dtype), "b": torch.randn(5, generator=g, dtype=dtype)}


def test_params_of_detached_copies_and_trainable_only():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    net[1].bias.requires_grad_(False)
    p = lossatlas.params_of(net)
    assert list(p) == ["0.weight", "0.bias", "1.weight"]
    assert not p["0.weight"].requires_grad
    p["0.weight"].add_(1.0)
    assert not torch.equal(p["0.weight"], net[0].weight)
    assert "1.bias" in lossatlas.params_of(net, trainable_only=False)
    assert lossatlas.params_of(net, dtype=torch.float64)["0.weight"].dtype == torch.float64


@given(st.integers(0, 10_000), st.floats(-3, 3), st.floats(-3, 3))
def test_vector_arithmetic_matches_flat_vectors(seed, alpha, beta):
    a, b = rand_params(seed), rand_params(seed + 1)
    fa, fb = P.flatten(a), P.flatten(b)
    assert np.isclose(P.dot(a, b), float(fa @ fb), rtol=1e-12, atol=1e-12)
    assert np.isclose(P.norm(a), float(fa.norm()), rtol=1e-12)
    torch.testing.assert_close(P.flatten(P.axpy(alpha, a, b)), fb + alpha * fa)
    torch.testing.assert_close(P.flatten(P.lincomb(a, [a, b], [alpha, beta])), fa + alpha * fa + beta * fb)
    torch.testing.assert_close(P.flatten(P.sub(a, b)), fa - fb)
    torch.testing.assert_close(P.flatten(P.add(a, b)), fa + fb)
    torch.testing.assert_close(P.flatten(P.scale(a, alpha)), alpha * fa)
    back = P.unflatten(P.flatten(a), a)
    assert all(torch.equal(back[k], a[k]) for k in a)


def test_lincomb_does_not_modify_inputs_and_zero_coefficients_copy():
    a, b = rand_params(0), rand_params(1)
    a0 = P.clone(a)
    out = P.lincomb(a, [b], [0.0])
    out["a"].add_(1)
    assert torch.equal(a["a"], a0["a"])


@given(st.integers(0, 10_000), st.integers(2, 4))
def test_orthogonalise_gives_orthogonal_vectors(seed, n):
    vs = [rand_params(seed + i) for i in range(n)]
    out = P.orthogonalise(vs)
    for i in range(n):
        for j in range(i):
            assert abs(P.cosine(out[i], out[j])) < 1e-12
    # the first vector is unchanged
    assert all(torch.equal(out[0][k], vs[0][k]) for k in vs[0])


def test_fingerprint_is_exact():
    a = rand_params(0, torch.float32)
    b = P.clone(a)
    assert P.fingerprint(a) == P.fingerprint(b)
    b["b"][0] = torch.nextafter(b["b"][0], torch.tensor(10.0))
    assert P.fingerprint(a) != P.fingerprint(b)


def test_check_like_errors_are_specific():
    a = rand_params(0)
    with pytest.raises(lossatlas.ParameterMismatchError, match="missing 'b'"):
        P.check_like(a, {"a": a["a"]}, func="f", arg="x")
    with pytest.raises(lossatlas.ParameterMismatchError, match="shape"):
        P.check_like(a, {"a": a["a"].T, "b": a["b"]}, func="f", arg="x")
    with pytest.raises(lossatlas.ParameterMismatchError, match="dtype"):
        P.check_like(a, P.to(a, dtype=torch.float32), func="f", arg="x")
