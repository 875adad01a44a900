import numpy as np
import pytest
import torch

import lossatlas
from lossatlas import directions as D
from lossatlas import params as P
from lossatlas.params._layout import filters as _filters


class Zoo(torch.nn.Module):
    """One layer of every kind whose filter layout matters."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 6)
        self.lin = torch.nn.Linear(6, 5)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.convt = torch.nn.ConvTranspose2d(4, 6, 3)          # weight (in=4, out=6, 3, 3): filters on dim 1
        self.convt_g = torch.nn.ConvTranspose2d(4, 6, 3, groups=2)  # weight (4, 3, 3, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.ln = torch.nn.LayerNorm([2, 3])                      # a 2-D norm-layer weight: still bias-like

    def forward(self, x):  # pragma: no cover - only parameters matter here
        return x


def filters(t, rule):
    return _filters(t, rule)


@pytest.fixture
def zoo():
    torch.manual_seed(0)
    m = Zoo()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    return m


def test_layout_rules(zoo):
    layout = D.filter_layout(zoo, dict(zoo.named_parameters()))
    assert layout["emb.weight"] == "dim0"
    assert layout["lin.weight"] == "dim0"
    assert layout["conv.weight"] == "dim0"
    assert layout["convt.weight"] == "convT:1"
    assert layout["convt_g.weight"] == "convT:2"
    assert layout["lin.bias"] == "vector"
    assert layout["bn.weight"] == "norm" and layout["ln.weight"] == "norm"


def test_filter_normalisation_invariants(zoo):
    theta = lossatlas.params_of(zoo)
    d = D.random(zoo, n=1, seed=3, ignore=None)[0]
    layout = d and D.filter_layout(zoo, theta)
    for name, rule in layout.items():
        ft, fd = filters(theta[name], rule), filters(d[name], rule)
        torch.testing.assert_close(fd.norm(dim=1), ft.norm(dim=1), rtol=1e-5, atol=1e-6, msg=name)
    # ConvTranspose: filter j (output channel) = weight[:, j]; check it explicitly
    w, dw = theta["convt.weight"], d["convt.weight"]
    for j in range(w.shape[1]):
        assert torch.isclose(dw[:, j].norm(), w[:, j].norm(), rtol=1e-5)
    # grouped ConvTranspose: output channel (g, j) = weight[g*2:(g+1)*2, j]
    w, dw = theta["convt_g.weight"], d["convt_g.weight"]
    for g in range(2):
        for j in range(3):
            assert torch.isclose(dw[2 * g:2 * g + 2, j].norm(), w[2 * g:2 * g + 2, j].norm(), rtol=1e-5)
    # Embedding: one row per token
    assert torch.allclose(d["emb.weight"].norm(dim=1), theta["emb.weight"].norm(dim=1), rtol=1e-5)
    # ignore=None: bias and BN params get a Gaussian direction scaled like one filter, never a copy of θ
    for name in ("lin.bias", "bn.weight", "bn.bias", "ln.weight"):
        assert torch.isclose(d[name].norm(), theta[name].norm(), rtol=1e-5)
        assert P.cosine({name: d[name]}, {name: theta[name]}) < 0.99


def test_biasbn_ignored_and_buffers_never_move(zoo):
    d = D.random(zoo, n=2, seed=0)
    for name in ("lin.bias", "conv.bias", "bn.weight", "bn.bias", "ln.weight", "ln.bias"):
        assert d[0][name].abs().sum() == 0 and d[1][name].abs().sum() == 0
    assert set(d[0]) == {n for n, _ in zoo.named_parameters()}  # buffers are not part of a direction
    assert "bn.running_mean" not in d[0]


def test_gaussian_not_uniform_and_sign_balanced(zoo):
    d = D.random(zoo, n=1, seed=0, norm=None)[0]
    w = d["lin.weight"]
    assert (w < 0).any() and (w > 0).any()


def test_layer_and_model_norms(zoo):
    theta = lossatlas.params_of(zoo)
    d = D.random(zoo, n=1, seed=1, norm="layer")[0]
    for name in ("lin.weight", "conv.weight", "convt.weight", "emb.weight"):
        assert np.isclose(float(d[name].norm()), float(theta[name].norm()), rtol=1e-5)
    d = D.random(zoo, n=1, seed=1, norm="model")[0]
    moving = [k for k in theta if d[k].abs().sum() > 0]
    assert np.isclose(P.norm({k: d[k] for k in moving}), P.norm({k: theta[k] for k in moving}), rtol=1e-5)


def test_orthogonality_and_report(zoo):
    d = D.random(zoo, n=3, seed=5)
    for i in range(3):
        for j in range(i):
            assert abs(P.cosine(d[i], d[j])) < 1e-6
    assert d.spec["max_abs_cosine"] < 1e-6
    assert d.spec["filter_norm_deviation"] >= 0
    nd = D.random(zoo, n=2, seed=5, orthogonal=False)
    assert nd.spec["max_abs_cosine"] > 0


def test_same_seed_same_bytes_and_per_direction_seeds(zoo):
    a = D.random(zoo, n=2, seed=7)
    b = D.random(zoo, n=2, seed=7)
    assert a.fingerprint() == b.fingerprint()
    c = D.random(zoo, n=2, seed=8)
    assert a.fingerprint() != c.fingerprint()
    assert len(set(a.spec["seeds"])) == 2
    # direction 1 does not depend on how many directions are drawn (no orthogonalisation)
    one = D.random(zoo, n=1, seed=7, orthogonal=False)
    two = D.random(zoo, n=2, seed=7, orthogonal=False)
    assert P.fingerprint(one[0]) == P.fingerprint(two[0])


def test_float64_directions_round_to_float32_ones(zoo):
    p32 = lossatlas.params_of(zoo)
    p64 = lossatlas.params_of(zoo, dtype=torch.float64)
    d32 = D.random(p32, n=1, seed=0, model=zoo)[0]
    d64 = D.random(p64, n=1, seed=0, model=zoo)[0]
    for k in d32:
        torch.testing.assert_close(d64[k].float(), d32[k], rtol=1e-6, atol=1e-7)


def test_save_load_round_trip(tmp_path, zoo):
    d = D.random(zoo, n=2, seed=1)
    d.save(tmp_path / "dirs")
    back = lossatlas.Directions.load(tmp_path / "dirs")
    assert back.fingerprint() == d.fingerprint()
    assert back.spec["seed"] == 1 and back.labels == d.labels


def test_between_and_plane():
    a = {"w": torch.zeros(3, dtype=torch.float64)}
    b = {"w": torch.tensor([1.0, 0, 0], dtype=torch.float64)}
    c = {"w": torch.tensor([1.0, 1.0, 0], dtype=torch.float64)}
    d = D.between(a, b)
    assert torch.equal(d[0]["w"], b["w"])
    pl = D.plane(a, b, c)
    assert torch.equal(pl[1]["w"], c["w"])
    po = D.plane(a, b, c, orthogonal=True)
    assert abs(P.dot(po[0], po[1])) < 1e-15
    t, s = po.spec["anchors"]["c"]
    rebuilt = P.lincomb(a, po.vectors, [t, s])
    torch.testing.assert_close(rebuilt["w"], c["w"])


def test_registry_contract(zoo):
    """Every registered factory: Directions out, deterministic, shapes like θ."""
    theta = lossatlas.params_of(zoo)
    other = P.axpy(0.1, theta, theta)
    third = P.axpy(0.3, D.random(zoo, n=1, seed=2)[0], P.axpy(-0.2, theta, theta))  # off the line θ → other
    calls = {"random": lambda: D.random(zoo, n=2, seed=0), "between": lambda: D.between(theta, other),
             "plane": lambda: D.plane(theta, other, third),
             "axes": lambda: D.axes(theta, ["lin.weight[1, 2]", "lin.bias[0]"]),
             "pca": lambda: D.pca([theta, other, third, P.axpy(0.3, D.random(zoo, n=1, seed=1)[0], theta)], n=2)}
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    small = lossatlas.Problem(net, torch.nn.MSELoss(), (x, x[:, :1] * x[:, 1:2]))
    calls["hessian"] = lambda: D.hessian(small, n=2, seed=0)
    references = {"hessian": small.params()}
    assert set(calls) == set(D.REGISTRY)
    for kind, call in calls.items():
        a, b = call(), call()
        assert isinstance(a, lossatlas.Directions) and a.spec["kind"] == kind
        assert a.fingerprint() == b.fingerprint()
        for v in a:
            P.check_like(references.get(kind, theta), v, func="test", arg=kind)
