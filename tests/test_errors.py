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


def test_renamed_keeps_the_old_keyword_for_a_release():
    import warnings

    import pytest

    from lossatlas.errors import InvalidArgumentError, bad_value, public, renamed

    @public("toy")
    @renamed(theta="center")
    def toy(problem, center=None, *, k=1):
        if center == "bad":
            raise bad_value("toy", "center", "good", center)
        return problem, center, k

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert toy(1, 2, k=3) == (1, 2, 3) and toy(1, center=2) == (1, 2, 1)  # the new name: no warning
    with pytest.warns(DeprecationWarning, match=r"toy\(\): argument 'theta' is now called 'center'") as rec:
        assert toy(1, theta=2) == (1, 2, 1)
    assert rec[0].filename == __file__  # points at the caller
    with pytest.raises(InvalidArgumentError, match="old name of 'center'"):
        toy(1, theta=2, center=2)
    with pytest.raises(InvalidArgumentError, match=r"toy\(\): argument 'center' \(formerly 'theta'\) must be good"):
        toy(1, "bad")
    with pytest.raises(TypeError):
        renamed(theta="centre")(toy.__wrapped__.__wrapped__)  # the new name must be a parameter


def test_public_functions_take_center_and_the_old_theta_keyword_warns():
    import inspect

    import pytest
    import torch

    import lossatlas
    import lossatlas.testing
    from lossatlas import curvature as C

    for fn in (lossatlas.convexity.audit, C.trace, C.density, C.eigenvalues, C.hessian_operator, C.ggn_operator,
               C.per_layer, C.inverse_product, C.influence, C.diagonal, lossatlas.directions.hessian,
               lossatlas.sharpness.lambda_max, lossatlas.testing.exact_hessian):
        params = inspect.signature(fn).parameters
        assert "center" in params and "theta" not in params, fn.__name__
    torch.manual_seed(0)
    pr = lossatlas.Problem(torch.nn.Linear(3, 2), torch.nn.CrossEntropyLoss(), (torch.randn(16, 3), torch.randint(0, 2, (16,))))
    new = C.hessian_operator(pr, pr.params()).dense()
    with pytest.warns(DeprecationWarning, match="'theta' is now called 'center'"):
        old = C.hessian_operator(pr, theta=pr.params()).dense()
    assert torch.equal(new, old)


def test_checkers_without_a_name_name_the_public_function_running():
    import pytest

    from lossatlas.errors import InvalidArgumentError, InvalidTypeError, bad_type, bad_value, check_seed, public

    @public("outer")
    def outer(x, *, z=None):
        return inner(x, z)

    @public("inner")
    def inner(x, y):
        if y is not None:
            raise bad_value("y", "None", y)  # no name passed: the running function's, "inner"
        raise bad_type("x", "a thing", x)

    with pytest.raises(InvalidTypeError, match=r"^outer\(\): argument 'x' must be a thing"):
        outer(1)  # x is outer's argument
    with pytest.raises(InvalidArgumentError, match=r"^outer\(\): inner\(\): argument 'y' must be None"):
        outer(1, z=2)  # y is not outer's argument: where it happened is kept
    assert str(bad_value("f", "a", "b", 1)).startswith("f(): argument 'a'")  # the explicit form is kept
    assert str(bad_value("a", "b", 1)).startswith("lossatlas(): argument 'a'")  # outside any public function
    assert check_seed(3) == check_seed("f", 3) == 3
    with pytest.raises(TypeError):
        bad_value("a", "b")
