"""Lanczos at extreme scales: the residual norm never overflows or underflows to a wrong basis vector
(a loss scaled by 1e300 gave β = inf and NaN residual estimates), and ‖w‖ keeps the plain norm's bits
wherever that one is representable."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lossatlas.curvature.lanczos import breakdown_tolerance, extreme_pairs, robust_norm


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=300), st.integers(min_value=0, max_value=2**31 - 1),
       st.floats(min_value=-300, max_value=300))
def test_robust_norm_is_the_plain_norm_where_that_is_representable(n, seed, log_scale):
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 10.0 ** log_scale
    plain = float(torch.linalg.vector_norm(w))
    exact = float(np.sqrt(np.sum((w.numpy() / np.abs(w.numpy()).max()) ** 2))) * float(np.abs(w.numpy()).max())
    got = robust_norm(w)
    if np.isfinite(plain) and plain > 2.0 ** -450:
        assert got == plain  # the same bits
    assert got == pytest.approx(exact, rel=1e-13)


def test_robust_norm_at_the_edges():
    for scale in (1e300, 1e-300, 1e-320):
        assert robust_norm(torch.tensor([3.0, 4.0], dtype=torch.float64) * scale) == pytest.approx(5 * scale, rel=1e-6)
    assert robust_norm(torch.zeros(4, dtype=torch.float64)) == 0.0
    assert robust_norm(torch.tensor([1.0, float("inf")], dtype=torch.float64)) == float("inf")


@pytest.mark.parametrize("scale", [1e-300, 1.0, 1e300])
def test_extreme_pairs_of_a_scaled_operator(scale):
    d = torch.linspace(-1.0, 2.0, 40, dtype=torch.float64) * scale
    v0 = torch.randn(40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warning on the way
        out = extreme_pairs(lambda v: d * v, v0, priority=lambda theta: np.argsort(-np.abs(theta)), k=1, tol=1e-10,
                            max_products=200, basis=40, breakdown=breakdown_tolerance(torch.float64))
    assert out.finite
    assert np.all(np.isfinite(out.estimates))
    assert float(out.values[0]) == pytest.approx(2.0 * scale, rel=1e-9)
