"""Resolving a command's TARGET into a problem and a centre.

TARGET is one of:

* a built-in example name (``lossatlas examples`` lists them), e.g. ``mlp-digits``;
* ``path/to/file.py:function`` where ``function()`` returns a :class:`~lossatlas.Problem`, a pair
  ``(problem, center)`` or an :class:`~lossatlas.examples.Example`;
* either of those plus ``--checkpoint FILE``: the model's whole ``state_dict`` (or a dict holding
  one under ``"state_dict"``/``"model"``), loaded strictly into a copy of the model: its trainable
  entries become the centre, its frozen parameters and buffers (BatchNorm running statistics) are
  what the problem evaluates with. Missing or unexpected entries are an error naming them.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import examples
from . import directions as D
from . import params as P
from .errors import InvalidArgumentError
from .examples import Example
from .problem import Problem
from .trajectory import load_state

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Target:
    """What a command works on: the problem, the centre θ and where they came from."""

    name: str
    problem: Problem
    center: P.Params
    description: str = ""
    example: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    def default_directions(self, n: int = 2, *, seed: int = 0):
        if self.example is not None:
            return self.example.default_directions(n=n, seed=seed)
        return D.random(self.problem, n=n, seed=seed)


def parse_dtype(dtype: str | None) -> torch.dtype | None:
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"--dtype must be one of {sorted(DTYPES)}; received {dtype!r}")
    return DTYPES[dtype]


def resolve(target: str, *, checkpoint: Path | None = None, dtype: str | None = None,
            device: str | None = None) -> Target:
    """Turn TARGET (+ optional checkpoint) into a :class:`Target`."""
    torch_dtype = parse_dtype(dtype)
    if ":" in target and target.split(":", 1)[0].endswith(".py"):
        resolved = _from_file(target, torch_dtype, device)
    elif target in examples.names():
        ex = examples.load(target, dtype=torch_dtype, device=device)
        resolved = Target(target, ex.problem, ex.center, ex.description, example=ex)
    else:
        raise InvalidArgumentError(
            f"TARGET must be an example name ({', '.join(examples.names())}) or path/to/file.py:function; "
            f"received {target!r}")
    if checkpoint is not None:
        resolved.problem, resolved.center, resolved.info["checkpoint"] = problem_from_checkpoint(
            checkpoint, resolved.problem)
        resolved.name += f" @ {Path(checkpoint).name}"
    return resolved


def _from_file(target: str, dtype: torch.dtype | None, device: str | None) -> Target:
    path_text, func_name = target.rsplit(":", 1)
    path = Path(path_text)
    if not path.exists():
        raise InvalidArgumentError(f"TARGET file {str(path)!r} does not exist (expected path/to/file.py:function)")
    module_name = f"_lossatlas_target_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InvalidArgumentError(f"TARGET file {str(path)!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's file, not lossatlas: one line naming TARGET and the error
        sys.modules.pop(module_name, None)
        raise InvalidArgumentError(f"TARGET {target!r}: importing {str(path)!r} failed with "
                                   f"{_exception_line(exc)}") from exc
    finally:
        sys.path.pop(0)
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise InvalidArgumentError(f"TARGET {target!r}: {str(path)!r} has no function {func_name!r}")
    try:
        inspect.signature(fn).bind()
    except TypeError:
        raise InvalidArgumentError(f"TARGET {target!r}: {func_name}() must be callable without arguments; its "
                                   f"signature is {func_name}{inspect.signature(fn)}") from None
    except ValueError:  # no signature (a builtin): let the call decide
        pass
    try:
        out = fn()
    except (Exception, SystemExit) as exc:
        raise InvalidArgumentError(f"TARGET {target!r}: {func_name}() raised {_exception_line(exc)}") from exc
    if isinstance(out, Example):
        problem, center, desc, ex = out.problem, out.center, out.description, out
    elif isinstance(out, Problem):
        problem, center, desc, ex = out, out.params(), "", None
    elif isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Problem):
        problem, center, desc, ex = out[0], dict(out[1]), "", None
    else:
        raise InvalidArgumentError(f"TARGET {target!r} must return a Problem, (Problem, center) or an Example; "
                                   f"received {type(out).__name__}")
    if dtype is not None and dtype != problem.dtype:
        problem = problem.with_dtype(dtype)
        center = P.to(center, dtype=dtype)
    if device is not None and torch.device(device) != problem.device:
        raise InvalidArgumentError(f"--device {device!r}: build the Problem on that device in {str(path)!r} "
                                   f"(it is on {problem.device})")
    problem.check_params(center, func=func_name, arg="center")
    return Target(f"{path.name}:{func_name}", problem, center, desc, example=ex)


def _exception_line(exc: BaseException) -> str:
    """``SyntaxError: invalid syntax (t.py, line 1)``: the exception's type and message on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_checkpoint(path: Path, option: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise InvalidArgumentError(f"{option} {str(path)!r} does not exist")
    return load_state(path, arg=option)


def describe_state(problem: Problem, state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """What a full state_dict held, by kind of entry (for the one-line summary of a command)."""
    flags = {n: p.requires_grad for n, p in problem.model.named_parameters(remove_duplicate=False)}  # tied too
    n_train = sum(1 for k in state if flags.get(k) is True)
    n_frozen = sum(1 for k in state if flags.get(k) is False)
    n_buffers = len(state) - n_train - n_frozen
    return {"source": source, "entries": len(state), "trainable": n_train, "frozen": n_frozen,
            "buffers": n_buffers}


def checkpoint_note(info: Mapping[str, Any]) -> str:
    """``checkpoint sd.pt: model loaded with all 42 entries (30 trainable, 12 buffers); the checkpoint
    alone, loaded by plain torch: loss 0.267``."""
    parts = [f"{info['trainable']} trainable"]
    if info["frozen"]:
        parts.append(f"{info['frozen']} frozen")
    parts.append(f"{info['buffers']} buffer{'s' if info['buffers'] != 1 else ''}")
    text = f"checkpoint {info['source']}: model loaded with all {info['entries']} entries ({', '.join(parts)})"
    if info.get("plain_loss") is not None:
        text += (f"; the checkpoint alone (load_state_dict into the model, eval mode, plain forward): "
                 f"loss {info['plain_loss']:.6g}")
    return text


def centre_line(tgt) -> str:
    """``centre: loss 0.267, accuracy 0.93 (checkpoint sd.pt: model loaded with all 42 entries …)``:
    the centre's values from a problem built from the checkpoint alone."""
    values = tgt.problem.evaluate(tgt.center)
    text = f"centre: loss {values['loss']:.6g}"
    if "accuracy" in values:
        text += f", accuracy {values['accuracy']:.4f}"
    text = f"{text} ({checkpoint_note(tgt.info['checkpoint'])})"
    plain = tgt.info["checkpoint"].get("plain_loss")
    if plain is not None and not abs(plain - values["loss"]) <= 1e-4 * max(abs(plain), 1e-12) + 1e-7:
        text += (f"\n[bold red]warning[/bold red]: the centre's loss {values['loss']:.6g} differs from the checkpoint's "
                 f"own {plain:.6g}; please report this")
    return text


def plain_loss(problem: Problem, state: Mapping[str, torch.Tensor]) -> float:
    """The dataset loss Σ_b n_b·ℓ_b / N of ``state`` loaded by plain torch (``load_state_dict`` into a
    copy of the model in the problem's dtype, eval mode, its own forward — no lossatlas evaluation
    path): the independent number a checkpoint's centre is printed next to."""
    model = copy.deepcopy(problem.model)
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point() and t.dtype != problem.dtype:
            t.data = t.data.to(problem.dtype)
    with torch.no_grad():
        model.load_state_dict(dict(state), strict=True)
        model.to(problem.device).eval()
        total = 0.0
        for batch, n in problem.data:
            if problem.closure is not None:
                raw = problem.closure(model, batch)
                raw = raw["loss"] if isinstance(raw, Mapping) else raw
            else:
                out = model(batch[0])
                if problem.loss_dtype != problem.dtype and out.is_floating_point():
                    out = out.to(problem.loss_dtype)
                raw = problem.loss_fn(out, batch[1])
            raw = raw.double()
            if problem.reduction == "sum":
                total += float(raw) / problem.n_samples
            else:
                total += float(raw.mean()) * n / problem.n_samples
    return total


def problem_from_checkpoint(path: Path, problem: Problem, *, option: str = "--checkpoint",
                            state: Mapping[str, torch.Tensor] | None = None,
                            ) -> tuple[Problem, P.Params, dict[str, Any]]:
    """(problem with the checkpoint's whole state loaded, its trainable parameters, summary)."""
    if state is None:
        state = _read_checkpoint(path, option)
    loaded = problem.with_state(state, func=option, arg=Path(path).name)
    center = loaded.params()
    loaded.check_params(center, func=option, arg="state_dict")
    info = describe_state(problem, state, Path(path).name)
    try:
        info["plain_loss"] = plain_loss(problem, state)
    except Exception:  # a model that only runs inside lossatlas' closure layout: nothing to compare with
        info["plain_loss"] = None
    return loaded, center, info


def _center_from_checkpoint(path: Path, problem: Problem, option: str = "checkpoint") -> P.Params:
    """The trainable parameters of a checkpoint: an end point of a path between two models, which
    lives in θ (buffers of A and B cannot both hold along the path: BatchNorm statistics are the
    problem's, or recalibrated with ``--bn recalibrate``). Entries the model does not have are
    refused, naming them, and so are missing trainable parameters."""
    state = _read_checkpoint(path, option)
    known = problem.model.state_dict()
    unexpected = [k for k in state if k not in known]
    missing = [n for n in problem.param_names if n not in state]
    if missing or unexpected:
        parts = ([f"lacks the model's parameters {P._names(missing)}"] if missing else []) + (
            [f"has entries the model does not have: {P._names(unexpected)}"] if unexpected else [])
        raise InvalidArgumentError(f"{option} {str(path)!r} must be a state_dict of the model; it "
                                   f"{' and '.join(parts)}")
    center = {n: state[n].to(dtype=problem.dtype, device=problem.device) for n in problem.param_names}
    problem.check_params(center, func=option, arg=Path(path).name)
    return center
