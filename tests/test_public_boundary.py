"""Error context is set once, at the public boundary (issue 13): the function a message names is the
one the user called, never a helper's or an inner public function's name threaded by hand."""
import importlib
import inspect

import pytest
import torch

import lossatlas
from lossatlas import directions as D
from lossatlas.errors import InvalidArgumentError, LossAtlasError, bad_value, current_function, public

#: public API functions that are not entry points of a computation (parameter arithmetic, data loaders,
#: tiny pure helpers, registries): they raise with their own names and are called in hot loops
NOT_BOUNDARIES = {
    "lossatlas.params_of", "lossatlas.attrs", "lossatlas.params", "lossatlas.examples", "lossatlas.distributed", "lossatlas.testing",
    "lossatlas.directions.filter_layout", "lossatlas.directions.register", "lossatlas.convexity.jensen_gap",
    "lossatlas.convexity.rounding_bound", "lossatlas.metrics.sampled_hessian", "lossatlas.metrics.wilson_interval",
    "lossatlas.plot.path_coordinates", "lossatlas.studies.names", "lossatlas.studies.config_hash",
    "lossatlas.studies.markdown_table",
}
PACKAGES = ["lossatlas", "lossatlas.directions", "lossatlas.curvature", "lossatlas.convexity", "lossatlas.metrics",
            "lossatlas.sharpness", "lossatlas.plot", "lossatlas.trajectory", "lossatlas.studies", "lossatlas.curvature"]


def _public_functions():
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name, None)
            full = f"{pkg}.{name}"
            if inspect.isfunction(obj) and full not in NOT_BOUNDARIES and pkg not in NOT_BOUNDARIES:
                yield full, obj


@pytest.mark.parametrize("full, fn", list(_public_functions()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_public_function_is_a_boundary(full, fn):
    assert getattr(fn, "__lossatlas_public__", None), f"{full} is public but not marked with errors.public"


@public("outer")
def _outer(a, *, inner_arg=None):
    return _inner(a, b=inner_arg)


@public("inner")
def _inner(a, b=None):
    assert current_function() == "outer"  # the outermost public call names errors
    if a < 0:
        raise bad_value("inner", "a", "a number >= 0", a)
    if b is not None:
        raise bad_value("inner", "b", "None", b)
    return a


def test_an_inner_error_on_an_argument_of_the_outer_function_names_the_outer_function():
    with pytest.raises(InvalidArgumentError, match=r"^outer\(\): argument 'a' must be a number >= 0"):
        _outer(-1)


def test_an_inner_error_on_an_argument_the_user_did_not_pass_keeps_where_it_happened():
    with pytest.raises(InvalidArgumentError, match=r"^outer\(\): inner\(\): argument 'b' must be None"):
        _outer(1, inner_arg=3)


def test_called_directly_a_public_function_names_itself_and_the_context_is_reset():
    @public("alone")
    def alone(a):
        assert current_function() == "alone"
        raise bad_value("helper", "a", "a number >= 0", a)

    with pytest.raises(InvalidArgumentError, match=r"^alone\(\): argument 'a' must be a number >= 0"):
        alone(-1)
    assert current_function() is None


def _problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(8, 3)
    return lossatlas.Problem(net, torch.nn.MSELoss(), (x, x.sum(1, keepdim=True)))


def test_interpolate_with_a_bad_strategy_names_interpolate_not_surface():
    """The issue's example: interpolate(strategy="fast") raised "surface(): argument 'strategy'"."""
    pr = _problem()
    a = pr.params()
    b = {k: v + 0.1 for k, v in a.items()}
    with pytest.raises(InvalidArgumentError, match=r"^interpolate\(\): argument 'strategy'"):
        lossatlas.interpolate(pr, a, b, strategy="fast")


def test_a_public_function_used_by_another_is_named_by_the_caller():
    pr = _problem()
    with pytest.raises(LossAtlasError, match=r"^sharpness\.filter_width\(\): "):
        lossatlas.sharpness.filter_width(pr, delta=-1)
    with pytest.raises(LossAtlasError, match=r"^directions\.random\(\): argument 'seed'"):
        D.random(pr, seed=-1)
