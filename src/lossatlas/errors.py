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
]

F = TypeVar("F", bound=Callable[..., Any])
_BOUNDARY: contextvars.ContextVar[str | None] = contextvars.ContextVar("lossatlas_public_function", default=None)
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

        entry.__lossatlas_public__ = name  # type: ignore[attr-defined]
        return entry  # type: ignore[return-value]

    return decorate


def current_function(default: str | None = None) -> str | None:
    """The public function the user called (see :func:`public`), or ``default`` outside one."""
    return _BOUNDARY.get() or default


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


def bad_value(func: str, arg: str, expected: str, received: Any) -> InvalidArgumentError:
    """``InvalidArgumentError`` with the standard one-line message."""
    return InvalidArgumentError(f"{func}(): argument '{arg}' must be {expected}; received {describe(received)}")


def bad_type(func: str, arg: str, expected: str, received: Any) -> InvalidTypeError:
    """``InvalidTypeError`` with the standard one-line message."""
    return InvalidTypeError(f"{func}(): argument '{arg}' must be {expected}; received {describe(received)}")


#: seeds are integers in [0, 2**63): what numpy's SeedSequence and torch's manual_seed both take
MAX_SEED = 2**63 - 1


def check_seed(func: str, seed: Any, arg: str = "seed") -> int:
    """``seed`` as an ``int`` in [0, 2**63), or the standard error naming ``arg`` (bools refused).
    Every public ``seed=`` goes through this one check."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise bad_type(func, arg, "a non-negative integer (< 2**63)", seed)
    if not 0 <= int(seed) <= MAX_SEED:
        raise bad_value(func, arg, "a non-negative integer (< 2**63)", seed)
    return int(seed)


class BatchNormStatsWarning(UserWarning):
    """BatchNorm layers are evaluated with the running statistics stored with the model
    (``bn="eval"``) at points those statistics do not describe: between two networks, or away from θ
    along directions that move weights feeding a BatchNorm layer. The loss there can be far off
    (a barrier of 0.0 between two BN networks where recalibrated statistics give 1.085); pass
    ``bn="recalibrate"`` (CLI: ``--bn recalibrate``) to recompute them at every point."""
