"""Which parameters an operator acts on (a name, a layer, a glob pattern, ``"weights"`` …), and how
they group into layers."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from ..errors import bad_type, bad_value, current_function
from ._layout import filter_layout

__all__ = ["ParamSelection", "select", "layer_of", "layers"]

ParamSelection = str | Sequence[str] | Callable[[str, Tensor], bool] | None

_EXPECTED = ("None or 'all', 'weights' (biases and normalisation-layer parameters left out), a layer or "
             "parameter name, a glob pattern, a list of those, or a callable (name, tensor) -> bool")


def select(problem: Any, params: ParamSelection, *, func: str | None = None) -> tuple[str, ...]:
    """The names of the problem's trainable parameters picked by ``params``, in the problem's order.

    A string names a parameter (``"net.0.weight"``), a layer (every parameter under the module
    ``"net.0"``) or a glob pattern (``"*.weight"``). Messages name ``func`` (default: the public
    function running).
    """
    func = func or current_function("select", innermost=True)
    names = list(problem.param_names)
    if params is None or params == "all":
        return tuple(names)
    theta = problem.params()
    if params == "weights":
        layout = filter_layout(problem.model, theta)
        chosen = [n for n in names if layout[n] not in ("vector", "norm")]
    elif isinstance(params, str):
        chosen = [n for n in names if _matches(n, params)]
    elif callable(params):
        chosen = [n for n in names if params(n, theta[n])]
    elif isinstance(params, (list, tuple, set, frozenset)) and params and all(isinstance(p, str) for p in params):
        chosen = [n for n in names if any(_matches(n, p) for p in params)]
    else:
        raise bad_type(func, "params", _EXPECTED, params)
    if not chosen:
        shown = ", ".join(names[:6]) + (", …" if len(names) > 6 else "")
        raise bad_value(func, "params", f"a selection matching at least one trainable parameter ({shown})", params)
    return tuple(chosen)


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def layer_of(name: str) -> str:
    """The module owning a parameter (``"net.0.weight"`` → ``"net.0"``); a parameter registered on
    the root module is its own layer."""
    head, dot, _ = name.rpartition(".")
    return head if dot else name


def layers(names: Sequence[str], sizes: Mapping[str, int]) -> dict[str, list[tuple[int, int]]]:
    """Layer name → list of (start, stop) slices of the flattened vector, in order of appearance."""
    out: dict[str, list[tuple[int, int]]] = {}
    start = 0
    for n in names:
        out.setdefault(layer_of(n), []).append((start, start + sizes[n]))
        start += sizes[n]
    return out
