"""Contract tests over the direction-kind registry: every registered kind is deterministic under a
seed, saves and loads to the same bytes, gives the same surface in memory and in a store, and names
its public function in its errors; a kind registered by a test appears in the CLI and the plots."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lossatlas
from lossatlas import directions as D
from lossatlas import params as P
from lossatlas.cli import app
from lossatlas.cli.surface_cmd import _accepted_directions
from lossatlas.directions._base import _jsonable
from lossatlas.directions._registry import DirectionKind, cli_kinds, describe, register, unregister
from lossatlas.plot.surface import _title


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(16, 3, generator=gen)
    return lossatlas.Problem(net, torch.nn.MSELoss(), (x, x[:, :1] * x[:, 1:2]))


def _points(problem):
    theta = problem.params()
    other = P.axpy(0.1, theta, theta)
    third = P.axpy(0.3, D.random(problem, n=1, seed=2)[0], P.axpy(-0.2, theta, theta))
    fourth = P.axpy(0.3, D.random(problem, n=1, seed=1)[0], theta)
    return theta, other, third, fourth


# kind -> (make(problem, seed) -> (Directions, centre), a call with a bad argument)
CASES = {
    "random": (lambda pb, seed: (D.random(pb, n=2, seed=seed), None), lambda pb: D.random(pb, n=0)),
    "between": (lambda pb, seed: (D.between(_points(pb)[0], _points(pb)[1]), None),
                lambda pb: D.between({}, {})),
    "plane": (lambda pb, seed: (D.plane(*_points(pb)[:3]), None), lambda pb: D.plane({}, {}, {})),
    "axes": (lambda pb, seed: (D.axes(pb.params(), ["0.weight[1, 2]", "2.bias[0]"]), None),
             lambda pb: D.axes(pb.params(), ["nope"])),
    "pca": (lambda pb, seed: (D.pca(list(_points(pb)), n=2, like=pb), _points(pb)[-1]),
            lambda pb: D.pca(list(_points(pb)), n=0)),
    "hessian": (lambda pb, seed: (D.hessian(pb, n=2, seed=seed), None), lambda pb: D.hessian(pb, n=0)),
}


def test_every_registered_kind_has_a_contract_case():
    assert set(CASES) == set(D.REGISTRY)
    for name, kind in D.REGISTRY.items():
        assert kind.name == name and kind.factory is getattr(D, name)
        assert kind.describe("filter") and kind.func == f"directions.{name}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic_under_a_seed(problem, name):
    make = CASES[name][0]
    a, _ = make(problem, 3)
    b, _ = make(problem, 3)
    assert a.spec["kind"] == name
    assert a.fingerprint() == b.fingerprint()
    assert json.dumps(_jsonable(a.spec), sort_keys=True) == json.dumps(_jsonable(b.spec), sort_keys=True)
    for v in a:
        P.check_like(problem.params(), v, func="test", arg=name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_equals_loaded(problem, name, tmp_path):
    d, _ = CASES[name][0](problem, 0)
    back = lossatlas.Directions.load(d.save(tmp_path / f"{name}.zarr"))
    assert back.fingerprint() == d.fingerprint()
    assert back.labels == d.labels
    assert back.spec == json.loads(json.dumps(_jsonable(d.spec)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_surface_in_memory_equals_stored(problem, name, tmp_path):
    d, center = CASES[name][0](problem, 0)
    kw = dict(steps=3, span=0.5, progress=False)
    memory = lossatlas.surface(problem, center, d, **kw)
    stored = lossatlas.surface(problem, center, d, store=tmp_path / "s.zarr", **kw)
    np.testing.assert_array_equal(memory["loss"].values, stored["loss"].values)
    assert memory.attrs["direction_kind"] == stored.attrs["direction_kind"] == name
    reopened = lossatlas.open_surface(tmp_path / "s.zarr")
    np.testing.assert_array_equal(reopened["loss"].values, memory["loss"].values)


@pytest.mark.parametrize("name", sorted(CASES))
def test_errors_name_the_public_function(problem, name):
    with pytest.raises(lossatlas.LossAtlasError) as info:
        CASES[name][1](problem)
    assert str(info.value).startswith(f"{D.REGISTRY[name].func}()"), str(info.value)


def test_registering_twice_is_refused():
    with pytest.raises(lossatlas.LossAtlasError, match="already registered"):
        register(D.REGISTRY["random"])


def _toy(params, n=1, *, seed=0):
    """Unit axes of the first ``n`` parameters, as a kind of its own."""
    base = D.axes(params, list(params)[:n])
    return lossatlas.Directions(base.vectors, {**base.spec, "kind": "toy", "seed": seed,
                                               "labels": [f"toy {i + 1}" for i in range(n)]})


@pytest.fixture
def toy_kind():
    kind = register(DirectionKind("toy", "toy directions", _toy, needs="params", cli_usage="toy",
                                  cli=lambda target, *, dims, norm, ignore, seed, arg: _toy(target.center, dims,
                                                                                            seed=seed)))
    yield kind
    unregister("toy")


def test_a_kind_registered_in_a_test_appears_in_the_cli_and_plots(toy_kind, tmp_path):
    assert toy_kind in cli_kinds()
    runner = CliRunner()
    bad = runner.invoke(app, ["surface", "seed-relu", "--directions", "sideways", "--steps", "3", "--no-progress"])
    assert bad.exit_code != 0 and "toy" in f"{bad.output} {bad.exception}"
    ok = runner.invoke(app, ["surface", "seed-relu", "--dims", "1", "--directions", "toy", "--steps", "3",
                             "--no-progress", "--store", str(tmp_path / "toy.zarr")])
    assert ok.exit_code == 0, ok.output
    ds = lossatlas.open_surface(tmp_path / "toy.zarr")
    assert ds.attrs["direction_kind"] == "toy"
    assert describe("toy", ds.attrs) == "toy directions"
    assert "(toy directions)" in _title(ds, "loss", None)


def test_the_cli_accepts_exactly_the_registered_cli_kinds():
    assert _accepted_directions() == ["random", "axes:NAME[,NAME]", "hessian", "example"]
    assert describe("random", {"direction_norm": "None"}) == "unnormalised random directions"
    assert describe("random", {"direction_norm": "layer"}) == "layer-normalised random directions"
