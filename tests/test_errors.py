"""Bad input gets a one-line error of lossatlas's own type naming the argument, expected vs received."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lossatlas
from lossatlas import directions as D


@pytest.fixture
def ok(classification):
    model, loss_fn, x, y = classification
    pr = lossatlas.Problem(model, loss_fn, (x, y))
    return pr, D.random(pr, n=2, seed=0), model, loss_fn, x, y


def check(exc_info, *words):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


CASES = {
    "model not a module": (lambda o: lossatlas.Problem("net", o[3], (o[4], o[5])), lossatlas.InvalidTypeError,
                           ["'model'", "nn.Module", "received"]),
    "loss not callable": (lambda o: lossatlas.Problem(o[2], 3, (o[4], o[5])), lossatlas.InvalidTypeError, ["'loss'"]),
    "empty data": (lambda o: lossatlas.Problem(o[2], o[3], (o[4][:0], o[5][:0])), lossatlas.DataError,
                   ["'data'", "at least one sample"]),
    "mismatched data sizes": (lambda o: lossatlas.Problem(o[2], o[3], (o[4], o[5][:10])), lossatlas.DataError,
                              ["same number of samples"]),
    "data of wrong type": (lambda o: lossatlas.Problem(o[2], o[3], "data.csv"), lossatlas.InvalidTypeError,
                           ["'data'"]),
    "no trainable parameters": (lambda o: lossatlas.Problem(o[2].requires_grad_(False), o[3], (o[4], o[5])),
                                lossatlas.InvalidArgumentError, ["'model'", "trainable"]),
    "loss not scalar": (lambda o: lossatlas.Problem(o[2], lambda out, t: out.sum(1), (o[4], o[5])),
                        lossatlas.LossFunctionError, ["'loss'", "scalar", "shape (60,)"]),
    "loss returns float": (lambda o: lossatlas.Problem(o[2], lambda out, t: 1.0, (o[4], o[5])),
                           lossatlas.LossFunctionError, ["'loss'", "float"]),
    "bad bn mode": (lambda o: lossatlas.Problem(o[2], o[3], (o[4], o[5]), bn="train"), lossatlas.InvalidArgumentError,
                    ["'bn'", "'recalibrate'", "'train'"]),
    "batch_size 0": (lambda o: lossatlas.Problem(o[2], o[3], (o[4], o[5]), batch_size=0),
                     lossatlas.InvalidArgumentError, ["'batch_size'", "positive"]),
    "batch_size with loader": (lambda o: lossatlas.Problem(o[2], o[3], DataLoader(TensorDataset(o[4], o[5])),
                                                           batch_size=4), lossatlas.InvalidArgumentError,
                               ["'batch_size'", "DataLoader"]),
    "integer dtype": (lambda o: lossatlas.Problem(o[2], o[3], (o[4], o[5]), dtype=torch.int32),
                      lossatlas.InvalidArgumentError, ["'dtype'", "floating"]),
    "model crashes on data": (lambda o: lossatlas.Problem(o[2], o[3], (o[4][:, :3], o[5])),
                              lossatlas.EvaluationError, ["first batch", "RuntimeError"]),
    "steps < 1": (lambda o: lossatlas.surface(o[0], None, o[1], steps=0), lossatlas.InvalidArgumentError,
                  ["'steps'", ">= 1", "received 0"]),
    "span <= 0": (lambda o: lossatlas.surface(o[0], None, o[1], span=-1.0), lossatlas.InvalidArgumentError,
                  ["'span'", "positive"]),
    "reversed range": (lambda o: lossatlas.surface(o[0], None, o[1], span=(1.0, -1.0)),
                       lossatlas.InvalidArgumentError, ["'span'", "lo < hi"]),
    "too many directions": (lambda o: lossatlas.surface(o[0], None, D.random(o[0], n=5)),
                            lossatlas.InvalidArgumentError, ["'directions'", "between 1 and 4"]),
    "directions from another model": (
        lambda o: lossatlas.surface(o[0], None, D.random(torch.nn.Linear(5, 3), n=2)),
        lossatlas.ParameterMismatchError, ["'directions[0]'", "another model"]),
    "dtype mismatch": (lambda o: lossatlas.surface(o[0], None, o[1].to(dtype=torch.float64)),
                       lossatlas.ParameterMismatchError, ["dtype", "float32", "float64"]),
    "device mismatch": (lambda o: lossatlas.surface(o[0], None, o[1].to(device="meta")),
                        lossatlas.ParameterMismatchError, ["device", "cpu", "meta"]),
    "non-float params": (lambda o: D.random({"w": torch.ones(3, dtype=torch.long)}), lossatlas.InvalidArgumentError,
                         ["'params['w']'", "floating"]),
    "unknown strategy": (lambda o: lossatlas.surface(o[0], None, o[1], strategy="gpu"), lossatlas.InvalidArgumentError,
                         ["'strategy'", "'gpu'"]),
    "bad chunk": (lambda o: lossatlas.surface(o[0], None, o[1], chunk=-3), lossatlas.InvalidArgumentError,
                  ["'chunk'"]),
    "unknown norm": (lambda o: D.random(o[0], norm="filterwise"), lossatlas.InvalidArgumentError,
                     ["'norm'", "'filterwise'"]),
    "n = 0 directions": (lambda o: D.random(o[0], n=0), lossatlas.InvalidArgumentError, ["'n'", ">= 1"]),
    "model passed to between": (lambda o: D.between(o[2], o[2]), lossatlas.InvalidTypeError,
                                ["'a'", "params_of"]),
    "problem.loss with wrong params": (lambda o: o[0].loss({"net.0.weight": torch.zeros(7, 5)}),
                                       lossatlas.ParameterMismatchError, ["missing"]),
    "not a store": (lambda o: lossatlas.open_surface("/nonexistent/store.zarr"), lossatlas.StoreError,
                    ["'path'", "does not exist"]),
    "problem not a Problem": (lambda o: lossatlas.surface(o[2], None, o[1]), lossatlas.InvalidTypeError,
                              ["'problem'", "lossatlas.Problem"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, ok):
    call, exc, words = CASES[name]
    with pytest.raises(exc) as info:
        call(ok)
    check(info, *words)
    assert isinstance(info.value, lossatlas.LossAtlasError)


def test_store_of_another_model_is_refused(tmp_path, ok):
    pr, d, model, loss_fn, x, y = ok
    lossatlas.surface(pr, None, d, steps=3, progress=False, store=tmp_path / "s")
    other_model = type(model)(hidden=7)
    other = lossatlas.Problem(other_model, loss_fn, (x, y))
    with pytest.raises(lossatlas.ProvenanceMismatchError) as info:
        lossatlas.surface(other, None, D.random(other, n=2, seed=0), steps=3, progress=False, store=tmp_path / "s")
    check(info, "'store'", "center", "overwrite=True")


def test_errors_subclass_builtins():
    assert issubclass(lossatlas.InvalidArgumentError, ValueError)
    assert issubclass(lossatlas.InvalidTypeError, TypeError)
    assert issubclass(lossatlas.ParameterMismatchError, ValueError)
    assert issubclass(lossatlas.StoreError, OSError)
