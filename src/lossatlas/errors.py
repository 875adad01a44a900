"""The library's exceptions: one root, subclasses that also inherit the matching builtin.

Every message names the function, the argument, what was expected and what was received, e.g.
``surface(): argument 'steps' must be an integer >= 1; received 0``.

The function a message names is the public one the user called, set once by :func:`public` at the
boundary (a context variable), never threaded by hand: an error raised by ``surface()`` while
``interpolate()`` runs it reads ``interpolate(): argument 'strategy' …`` when ``strategy`` is an
argument of ``interpolate``, and ``interpolate(): surface(): argument 'chunk' …`` when it is not
(einops adds its context the same way, once, where the user's call entered the library).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import numbers
import re
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = [
    "LossAtlasError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "ParameterMismatchError",
    "DataError",
    "LossFunctionError",
    "EvaluationError",
    "DifferentiationError",
    "StoreError",
    "ProvenanceMismatchError",
    "StoreLockedError",
    "DistributedError",
    "MissingDependencyError",
    "StoreRepairWarning",
    "public",
    "current_function",
    "renamed",
]

F = TypeVar("F", bound=Callable[..., Any])
_BOUNDARY: contextvars.ContextVar[str | None] = contextvars.ContextVar("lossatlas_public_function", default=None)
#: the public function running now (the innermost public call): the name a checker's message starts with
_RUNNING: contextvars.ContextVar[str | None] = contextvars.ContextVar("lossatlas_running_function", default=None)
_PREFIX = re.compile(r"^([A-Za-z_][\w.]*)\(\): ")
_ARGUMENT = re.compile(r"argument '([A-Za-z_]\w*)'")


def public(name: str) -> Callable[[F], F]:
    """Mark ``fn`` as a public entry point called ``name`` (e.g. ``"surface"``, ``"curvature.trace"``).

    While it runs, :func:`current_function` is ``name`` (the outermost public call wins: a public
    function used by another is not a boundary), and a :class:`LossAtlasError` leaving it names
    ``name()``: a message ``inner(): argument 'a' …`` becomes ``name(): argument 'a' …`` when ``a`` is
    an argument of ``fn``, else ``name(): inner(): argument 'a' …``. One context variable read per
    call; nothing else changes.
    """
    def decorate(fn: F) -> F:
        try:
            arguments = set(inspect.signature(fn).parameters)
        except (TypeError, ValueError):  # pragma: no cover - builtins
            arguments = set()

        @functools.wraps(fn)
        def entry(*args: Any, **kwargs: Any) -> Any:
            running = _RUNNING.set(name)
            try:
                if _BOUNDARY.get() is not None:
                    return fn(*args, **kwargs)
                token = _BOUNDARY.set(name)
                try:
                    return fn(*args, **kwargs)
                except LossAtlasError as exc:
                    _name_the_boundary(exc, name, arguments)
                    raise
                finally:
                    _BOUNDARY.reset(token)
            finally:
                _RUNNING.reset(running)

        entry.__lossatlas_public__ = name  # type: ignore[attr-defined]
        return entry  # type: ignore[return-value]

    return decorate


def current_function(default: str | None = None, *, innermost: bool = False) -> str | None:
    """The public function the user called (see :func:`public`), or ``default`` outside one.

    ``innermost=True``: the public function running now (the user's, or one it called), the name the
    checkers (:func:`bad_value`, :func:`bad_type`, :func:`check_seed`) put in a message when they are
    not given one; :func:`public` then names the user's function as above. Code under a public
    function therefore never passes its name down (``func=``) for messages."""
    return (_RUNNING if innermost else _BOUNDARY).get() or default


def with_name(args: tuple[Any, ...], n: int, what: str) -> tuple[str, tuple[Any, ...]]:
    """``(func, rest)`` from a checker's positional ``args``: ``n`` of them without the function's name
    (the public function running names the message), or the name first and ``n`` after (the explicit
    form, kept for callers that pass one)."""
    if len(args) == n:
        return current_function("lossatlas", innermost=True), args
    if len(args) == n + 1 and isinstance(args[0], str):
        return args[0], args[1:]
    raise TypeError(f"{what}() takes {n} positional arguments, or the function's name and {n}")


def renamed(**names: str) -> Callable[[F], F]:
    """Keep the old keyword of a renamed argument working for one release: ``@renamed(theta="center")``
    passes ``theta=x`` on as ``center=x`` with a :class:`DeprecationWarning` naming both (both at once is
    an :class:`InvalidArgumentError`), and an error naming argument ``'center'`` says ``(formerly
    'theta')``. Put it under :func:`public`. The one helper for renamed arguments."""
    def decorate(fn: F) -> F:
        parameters = inspect.signature(fn).parameters
        for old, new in names.items():
            if new not in parameters or old in parameters:
                raise TypeError(f"renamed(): {fn.__qualname__} must take '{new}' and not '{old}'")
        who = getattr(fn, "__name__", "function")

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            for old, new in names.items():
                if old in kwargs:
                    name = current_function(who)
                    if new in kwargs:
                        raise InvalidArgumentError(f"{name}(): argument '{old}' is the old name of '{new}'; "
                                                   f"pass only '{new}'")
                    warnings.warn(f"{name}(): argument '{old}' is now called '{new}'; '{old}=' will stop working "
                                  "in the next release", DeprecationWarning, stacklevel=3)
                    kwargs[new] = kwargs.pop(old)
            try:
                return fn(*args, **kwargs)
            except LossAtlasError as exc:
                if exc.args and isinstance(exc.args[0], str):
                    text = exc.args[0]
                    for old, new in names.items():
                        mark = f"argument '{new}'"
                        if mark in text and f"(formerly '{old}')" not in text:
                            text = text.replace(mark, f"{mark} (formerly '{old}')", 1)
                    exc.args = (text,) + tuple(exc.args[1:])
                raise

        call.__lossatlas_renamed__ = dict(names)  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return decorate


def _name_the_boundary(exc: LossAtlasError, name: str, arguments: set[str]) -> None:
    if not exc.args or not isinstance(exc.args[0], str):
        return
    text = exc.args[0]
    match = _PREFIX.match(text)
    if match is None or match.group(1) == name:
        return
    arg = _ARGUMENT.search(text, match.end())
    own = arg is not None and arg.start() == match.end() and arg.group(1) in arguments
    text = f"{name}(): " + (text[match.end():] if own else text)
    exc.args = (text,) + tuple(exc.args[1:])


class LossAtlasError(Exception):
    """Root of every error raised on purpose by lossatlas."""


class InvalidArgumentError(LossAtlasError, ValueError):
    """An argument has the right type but a value outside what is accepted."""


class InvalidTypeError(LossAtlasError, TypeError):
    """An argument has a type that is not accepted."""


class ParameterMismatchError(LossAtlasError, ValueError):
    """Parameter dicts (centre, directions, models) do not describe the same parameters,
    or differ in shape, dtype or device."""


class DataError(LossAtlasError, ValueError):
    """The data cannot be used: empty, inconsistent sizes, unsupported batch layout."""


class LossFunctionError(LossAtlasError, ValueError):
    """The loss (or closure) does not return what is needed: a real scalar tensor."""


class EvaluationError(LossAtlasError, RuntimeError):
    """The model failed while being evaluated (the original error is chained)."""


class DifferentiationError(EvaluationError):
    """The model or loss cannot be differentiated as a method needs (e.g. torch has no double
    backward for a fused kernel, or the loss has no gradient); the method is skipped or falls back."""


class StoreError(LossAtlasError, OSError):
    """A store cannot be created, opened or written."""


class ProvenanceMismatchError(StoreError, ValueError):
    """An existing store was made by a different computation than the one requested."""


class StoreLockedError(StoreError):
    """Another live process is writing the store."""


class DistributedError(LossAtlasError, RuntimeError):
    """Ranks of a torch.distributed job disagree (different problems or settings), or another rank
    failed while this one was waiting for it."""


class StoreRepairWarning(UserWarning):
    """A store left half-written by an interrupted run was repaired before being resumed (leftover
    temporary files removed, unreadable chunks marked for recomputation)."""


class MissingDependencyError(LossAtlasError, ImportError):
    """An optional dependency is needed for this feature and is not installed."""


def describe(value: Any) -> str:
    """A short, readable description of a received value for error messages."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype}, device {value.device}"
    if isinstance(value, torch.nn.Module):
        return f"a {type(value).__name__} module"
    text = " ".join(repr(value).split())
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def bad_value(*args: Any) -> InvalidArgumentError:
    """``InvalidArgumentError`` with the standard one-line message: ``bad_value(arg, expected, received)``
    (named after the public function running, :func:`current_function`) or ``bad_value(func, arg,
    expected, received)``."""
    func, (arg, expected, received) = with_name(args, 3, "bad_value")
    return InvalidArgumentError(f"{func}(): argument '{arg}' must be {expected}; received {describe(received)}")


def bad_type(*args: Any) -> InvalidTypeError:
    """``InvalidTypeError`` with the standard one-line message (the call forms of :func:`bad_value`)."""
    func, (arg, expected, received) = with_name(args, 3, "bad_type")
    return InvalidTypeError(f"{func}(): argument '{arg}' must be {expected}; received {describe(received)}")


#: seeds are integers in [0, 2**63): what numpy's SeedSequence and torch's manual_seed both take
MAX_SEED = 2**63 - 1


def check_seed(*args: Any, arg: str = "seed") -> int:
    """``seed`` as an ``int`` in [0, 2**63), or the standard error naming ``arg`` (bools refused):
    ``check_seed(seed)`` or ``check_seed(func, seed)``. Every public ``seed=`` goes through this one check."""
    func, (seed,) = with_name(args, 1, "check_seed")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise bad_type(func, arg, "a non-negative integer (< 2**63)", seed)
    if not 0 <= int(seed) <= MAX_SEED:
        raise bad_value(func, arg, "a non-negative integer (< 2**63)", seed)
    return int(seed)


class DataWriteWarning(UserWarning):
    """The model (or loss, or a metric) wrote into the batch it was given, e.g. an in-place
    normalisation of its inputs or a ``.data`` write. The cached batches are kept as they were given:
    every evaluation then hands the model private copies of them (one copy of the data per evaluation),
    so every point is evaluated on the same data instead of data drifting from call to call."""


class BatchNormStatsWarning(UserWarning):
    """BatchNorm layers are evaluated with the running statistics stored with the model
    (``bn="eval"``) at points those statistics do not describe: between two networks, or away from θ
    along directions that move weights feeding a BatchNorm layer. The loss there can be far off
    (a barrier of 0.0 between two BN networks where recalibrated statistics give 1.085); pass
    ``bn="recalibrate"`` (CLI: ``--bn recalibrate``) to recompute them at every point."""
