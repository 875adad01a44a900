"""Training trajectories: a recorder for any training loop, PCA directions, exact projections.

Li et al., "Visualizing the Loss Landscape of Neural Nets" (2018, arXiv:1712.09913, §7): the
optimiser's path is drawn on the plane spanned by the first two principal components of

    M = [θ₀ − θ_n; θ₁ − θ_n; …; θ_n − θ_n]      (one row per checkpoint),

computed as scikit-learn's ``PCA`` does (rows centred on their mean, components of unit norm), with
the explained-variance ratios λ_k / Σλ. The surface is centred at θ_n and every checkpoint is placed
at the coordinates c minimising ‖(θ_i − θ_n) − D c‖ (least squares in the plane's basis D): the
exact in-plane component, also for directions that are not orthonormal — not a normalised dot
product, which draws the path off the plane's coordinates.

Checkpoints live on disk (one ``torch.save`` file each, plus an append-only index), so recording
and PCA need memory for a few checkpoints at a time, not for the whole run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from . import params as P
from ._ncattrs import make_safe
from .errors import InvalidArgumentError, ParameterMismatchError, StoreError, bad_type, bad_value, current_function, public
from .grid import DIM_NAMES
from .problem import Problem

__all__ = ["TrajectoryRecorder", "Trajectory", "pca", "project", "project_points", "load_state"]

FORMAT = "lossatlas-trajectory/1"
INDEX = "index.jsonl"
META = "meta.json"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


class TrajectoryRecorder:
    """Write checkpoints of a training run to a directory, from any training loop.

    ``rec.record(model, step=..., loss=...)`` saves the model's ``state_dict`` (parameters and,
    with ``buffers=True``, buffers such as BatchNorm statistics) to ``path/ckpt-NNNNNN.pt`` and
    appends one line (step, file, any scalars given as keywords) to ``path/index.jsonl``. Nothing
    is kept in memory between calls. Files are written to a temporary name and renamed, so a crash
    never leaves a torn checkpoint. ``every=k`` records only steps that are multiples of k (the step
    defaults to the number of ``record`` calls so far). An existing recording is refused unless
    ``resume=True`` (append to it) or ``overwrite=True`` (start afresh). ``dtype`` converts
    floating tensors before writing (e.g. ``torch.float16`` to halve the disk use).

    >>> import tempfile, torch, lossatlas
    >>> net = torch.nn.Linear(3, 2)
    >>> with lossatlas.TrajectoryRecorder(tempfile.mkdtemp() + "/run") as rec:
    ...     for step in range(3):
    ...         _ = rec.record(net, step=step, loss=1.0 / (step + 1))
    >>> traj = rec.trajectory()
    >>> len(traj), traj.steps.tolist(), traj.scalars["loss"].round(2).tolist()
    (3, [0, 1, 2], [1.0, 0.5, 0.33])
    """

    def __init__(self, path: str | Path, *, every: int = 1, buffers: bool = True, dtype: torch.dtype | None = None,
                 resume: bool = False, overwrite: bool = False):
        func = "TrajectoryRecorder"
        if not isinstance(path, (str, Path)):
            raise bad_type(func, "path", "a directory path (str or pathlib.Path)", path)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise bad_value(func, "every", "an integer >= 1", every)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise bad_value(func, "dtype", "a floating torch.dtype or None", dtype)
        if resume and overwrite:
            raise bad_value(func, "resume", "False when overwrite=True (choose one)", resume)
        self.path = Path(path)
        self.every = every
        self.buffers = bool(buffers)
        self.dtype = dtype
        self._calls = 0
        self._count = 0
        self._last_step: int | None = None
        self._meta: dict[str, Any] | None = None
        exists = (self.path / META).exists()
        if exists and overwrite:
            shutil.rmtree(self.path)
            exists = False
        if exists and not resume:
            raise StoreError(f"{func}(): argument 'path' holds a recording already ({str(self.path)!r}); pass "
                             "resume=True to append to it or overwrite=True to replace it")
        if not exists and self.path.exists() and any(self.path.iterdir()):
            raise StoreError(f"{func}(): argument 'path' must be a new or empty directory (or a recording); "
                             f"received {str(self.path)!r}, which holds other files")
        self.path.mkdir(parents=True, exist_ok=True)
        if exists:
            self._meta = _read_meta(self.path, func)
            entries = _read_index(self.path, func)
            self._count = len(entries)
            self._calls = self._count
            self._last_step = entries[-1]["step"] if entries else None

    def __enter__(self) -> TrajectoryRecorder:
        """``with TrajectoryRecorder(...) as rec:`` scopes a recording; nothing is held open between
        calls (each ``record`` writes and closes its files), so leaving the block has nothing to close."""
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __len__(self) -> int:
        return self._count

    @public("TrajectoryRecorder.record")
    def record(self, model: nn.Module | Mapping[str, Tensor], step: int | None = None, **scalars: float) -> bool:
        """Save a checkpoint of ``model`` (a module or a dict of tensors) at ``step``; return whether
        this step was recorded (see ``every``). Steps must increase."""
        if step is None:
            step = self._calls
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise bad_value("step", "an integer >= 0", step)
        step = int(step)
        self._calls += 1
        if step % self.every:
            return False
        if self._last_step is not None and step <= self._last_step:
            raise bad_value("step", f"larger than the last recorded step {self._last_step}", step)
        state, params = _state_of(model, self.buffers)
        values = {}
        for k, v in scalars.items():
            try:
                values[k] = float(v.detach()) if isinstance(v, Tensor) else float(v)
            except (TypeError, ValueError):
                raise bad_type(k, "a number (scalars are stored in the index)", v) from None
        self._check_meta(state, params)
        name = f"ckpt-{self._count:06d}.pt"
        target = self.path / name
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        torch.save({k: _compact(v, self.dtype) for k, v in state.items()}, tmp)
        os.replace(tmp, target)
        with open(self.path / INDEX, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "file": name, **values}) + "\n")
            f.flush()
        self._count += 1
        self._last_step = step
        return True

    def _check_meta(self, state: Mapping[str, Tensor], params: Sequence[str]) -> None:
        """Write the recording's layout at the first checkpoint; refuse a later one that differs (the
        message names the public function running)."""
        layout = {k: [list(v.shape), str(v.dtype if self.dtype is None or not v.is_floating_point() else self.dtype)]
                  for k, v in state.items()}
        if self._meta is None:
            self._meta = {"format": FORMAT, "params": list(params), "layout": layout,
                          "dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in state.items()}}
            (self.path / META).write_text(json.dumps(self._meta))
            return
        if self._meta["layout"] != layout:
            known = self._meta["layout"]
            diff = sorted(set(known) ^ set(layout)) or [k for k in layout if known[k] != layout[k]]
            func = current_function("TrajectoryRecorder.record", innermost=True)
            raise ParameterMismatchError(f"{func}(): argument 'model' must have the entries, shapes and dtypes of "
                                         f"the recording's first checkpoint; they differ at {diff[:4]}")

    def trajectory(self) -> Trajectory:
        """The recording so far, as a :class:`Trajectory`."""
        return Trajectory.open(self.path)


def _state_of(model: Any, buffers: bool) -> tuple[dict[str, Tensor], list[str]]:
    if isinstance(model, nn.Module):
        params = [k for k, v in model.named_parameters() if v.requires_grad]
        if not params:
            raise bad_value("model", "a module with trainable parameters", model)
        if buffers:  # the full state_dict: frozen parameters and persistent buffers too
            state = {k: v.detach() for k, v in model.state_dict(keep_vars=True).items()}
        else:
            state = {k: v.detach() for k, v in model.named_parameters()}
        return state, params
    if isinstance(model, Mapping) and model and all(isinstance(v, Tensor) for v in model.values()):
        return {k: v.detach() for k, v in model.items()}, [k for k, v in model.items() if v.is_floating_point()]
    raise bad_type("model", "an nn.Module or a non-empty dict of tensors", model)


def _compact(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    """A CPU tensor owning exactly its bytes (torch.save writes whole storages of views)."""
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    t = t.cpu()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or not t.is_contiguous():
        t = t.clone()
    return t


def _json_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _read_meta(path: Path, func: str) -> dict[str, Any]:
    """A recording's ``meta.json``, or a StoreError naming it (unreadable, not JSON, not an object)."""
    file = path / META
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{func}(): argument 'path' must be a readable TrajectoryRecorder recording; received "
                         f"{str(path)!r}, whose {META} cannot be read ({_json_error(exc)})") from exc
    if not isinstance(meta, dict):
        raise StoreError(f"{func}(): argument 'path' must be a readable TrajectoryRecorder recording; received "
                         f"{str(path)!r}, whose {META} holds a {type(meta).__name__}, not an object")
    return meta


def _read_index(path: Path, func: str = "Trajectory.open") -> list[dict[str, Any]]:
    """The entries of a recording's index whose checkpoint file exists. A last line cut short by a
    crash (and anything after it) is ignored; an entry that is not an object with an integer
    ``step`` and a ``file`` name is a StoreError naming the index and the line."""
    entries = []
    index = path / INDEX
    if not index.exists():
        return entries
    try:
        text = index.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{func}(): argument 'path' must be a readable TrajectoryRecorder recording; received "
                         f"{str(path)!r}, whose index {INDEX} cannot be read ({_json_error(exc)})") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash: everything after it is ignored
            break
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                and isinstance(entry.get("step"), int) and not isinstance(entry.get("step"), bool)):
            raise StoreError(f"{func}(): argument 'path' must be a readable TrajectoryRecorder recording; received "
                             f"{str(path)!r}, whose index {INDEX} line {number} is not an entry with an integer "
                             f"'step' and a 'file' name: {' '.join(line.split())[:80]}")
        if (path / entry["file"]).exists():
            entries.append(entry)
    return entries


def _index_problem(index: Path) -> str:
    """Why an index file found beside no checkpoint can not be used (for the error message)."""
    try:
        text = index.read_text(encoding="utf-8")
        if index.suffix == ".jsonl":
            for line in text.splitlines():
                json.loads(line)
        else:
            json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"cannot be read ({_json_error(exc)})"
    return f"has no {META} beside it (not a complete TrajectoryRecorder recording)"


def _natural_key(path: Path) -> tuple:
    numbers = re.findall(r"\d+", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)


class Trajectory:
    """Checkpoints θ₀ … θ_n of a run, read lazily (one at a time) from disk or held in memory.

    Open a recording (``TrajectoryRecorder`` directory) or any directory of ``state_dict`` files
    (``*.pt``, ``*.pth``, ``*.ckpt``; ordered by the last number in the file name) with
    :meth:`open`; wrap parameter dicts in memory with :meth:`from_params`. ``steps`` are the
    training steps, ``scalars`` any values recorded beside them (e.g. the training loss).
    """

    def __init__(self, items: Sequence[Path | Mapping[str, Tensor]], steps: Sequence[int], *,
                 scalars: Mapping[str, Sequence[float]] | None = None, param_names: Sequence[str] | None = None,
                 source: str = "memory", dtypes: Mapping[str, str] | None = None):
        if not items:
            raise bad_value("Trajectory", "items", "at least one checkpoint", items)
        self._items = list(items)
        self.steps = np.asarray(list(steps), dtype=np.int64)
        self.scalars = {k: np.asarray(v, dtype=np.float64) for k, v in (scalars or {}).items()}
        self.param_names = list(param_names) if param_names is not None else None
        self.source = source
        # the model's own dtypes when the recorder stored a compact copy (TrajectoryRecorder(dtype=...))
        self._dtypes = {k: getattr(torch, v) for k, v in (dtypes or {}).items() if isinstance(getattr(torch, v, None),
                                                                                           torch.dtype)}

    @classmethod
    @public("Trajectory.open")
    def open(cls, path: str | Path) -> Trajectory:
        """Read a recording or a directory of checkpoint files."""
        func = "Trajectory.open"
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"{func}(): argument 'path' must be a directory of checkpoints; received {str(path)!r}")
        if (path / META).exists():
            meta = _read_meta(path, func)
            entries = _read_index(path, func)
            if not entries:
                raise StoreError(f"{func}(): the recording {str(path)!r} holds no checkpoint yet")
            keys = sorted({k for e in entries for k in e if k not in ("step", "file")})
            scalars = {k: [e.get(k, np.nan) for e in entries] for k in keys}
            return cls([path / e["file"] for e in entries], [e["step"] for e in entries], scalars=scalars,
                       param_names=meta.get("params"), source=str(path), dtypes=meta.get("dtypes"))
        files = sorted((f for f in path.iterdir() if f.suffix in CHECKPOINT_SUFFIXES and f.is_file()),
                       key=_natural_key)
        if not files:
            index = next((path / n for n in (INDEX, "index.json") if (path / n).is_file()), None)
            if index is not None:
                raise StoreError(f"{func}(): argument 'path' must hold checkpoint files or a TrajectoryRecorder "
                                 f"recording; received {str(path)!r}, with no checkpoint file and an index "
                                 f"{index.name!r} that {_index_problem(index)}")
            raise StoreError(f"{func}(): argument 'path' must hold checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)})"
                             f" or a TrajectoryRecorder recording; received {str(path)!r} with none")
        steps = [_natural_key(f)[0] for f in files]
        if len(set(steps)) != len(steps) or min(steps) < 0:
            steps = list(range(len(files)))
        return cls(files, steps, source=str(path))

    @classmethod
    def from_params(cls, checkpoints: Sequence[Mapping[str, Tensor]], steps: Sequence[int] | None = None) -> Trajectory:
        """A trajectory of parameter dicts held in memory."""
        if isinstance(checkpoints, Mapping) or not isinstance(checkpoints, Sequence) or not checkpoints:
            raise bad_type("Trajectory.from_params", "checkpoints", "a non-empty list of parameter dicts", checkpoints)
        for i, c in enumerate(checkpoints):
            P.check_like(checkpoints[0], c, func="Trajectory.from_params", arg=f"checkpoints[{i}]",
                         ref_arg="checkpoints[0]")
        steps = list(range(len(checkpoints))) if steps is None else list(steps)
        if len(steps) != len(checkpoints):
            raise bad_value("Trajectory.from_params", "steps", f"{len(checkpoints)} steps (one per checkpoint)", steps)
        return cls([dict(c) for c in checkpoints], steps, param_names=list(checkpoints[0]))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Trajectory({len(self)} checkpoints, steps {int(self.steps[0])}…{int(self.steps[-1])}, {self.source})"

    def load(self, i: int, names: Sequence[str] | None = None, *, dtype: torch.dtype | None = None,
             device: torch.device | str | None = None) -> dict[str, Tensor]:
        """Checkpoint ``i`` (negative counts from the end), restricted to ``names`` if given, in the
        recorded model's dtypes (also when the recorder stored a compact ``dtype=`` copy) unless
        ``dtype`` is given."""
        item = self._items[i]
        state = load_state(item) if isinstance(item, Path) else item
        if dtype is None and self._dtypes:  # a compact copy (TrajectoryRecorder(dtype=...)) in the model's dtypes
            state = {k: v.to(self._dtypes[k]) if k in self._dtypes and v.dtype != self._dtypes[k] else v
                     for k, v in state.items()}
        if names is not None:
            missing = [n for n in names if n not in state]
            if missing:
                raise ParameterMismatchError(f"Trajectory.load(): checkpoint {i} lacks the entries {missing[:4]} "
                                             "(is it from another model?)")
            state = {n: state[n] for n in names}
        return P.to(state, dtype=dtype, device=device)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for i in range(len(self)):
            yield self.load(i)

    def final(self, names: Sequence[str] | None = None, *, like: Any = None, **kw: Any) -> dict[str, Tensor]:
        """The last checkpoint's parameters θ_n (the centre of Li et al.'s PCA plane), ready to be
        a centre: ``lossatlas.surface(problem, traj.final(), d)``.

        ``names`` default to the recorded trainable parameters (a :class:`TrajectoryRecorder`
        recording, or :meth:`from_params`; a plain directory of ``state_dict`` files gives every
        entry, so pass ``like``). ``like``: a Problem (or parameter dict) whose names, dtype and
        device the result gets. ``dtype=``/``device=`` as in :meth:`load`.

        Buffers are not parameters: a recording made with ``buffers=True`` (the default) also
        holds the BatchNorm running statistics (and frozen parameters) of each checkpoint, and a
        problem evaluates with *its model's* buffers. To evaluate θ_n as the trained model did,
        use the problem built from the last checkpoint's whole state, :meth:`problem`::

            lossatlas.surface(traj.problem(problem), traj.final(like=problem), d)
        """
        return self._params(-1, names, like, kw)

    def _params(self, i: int, names, like, kw) -> dict[str, Tensor]:
        if like is not None:
            ref = like.params() if hasattr(like, "param_names") and hasattr(like, "params") else dict(like)
            if names is None:
                names = list(ref)
            first = next(iter(ref.values()))
            kw = {"dtype": first.dtype, "device": first.device, **kw}
        elif names is None:
            names = self.param_names
        return self.load(i, names, **kw)

    def state(self, i: int = -1) -> dict[str, Tensor]:
        """Checkpoint ``i``'s whole recorded state (parameters and, if recorded, buffers), as saved."""
        return self.load(i)

    def buffers(self, i: int = -1) -> dict[str, Tensor]:
        """The entries of checkpoint ``i`` that are not recorded trainable parameters (BatchNorm
        statistics, frozen parameters); empty for a recording made with ``buffers=False``. Needs
        the recorded parameter names (a recording or :meth:`from_params`)."""
        if self.param_names is None:
            raise bad_value("Trajectory.buffers", "self", "a recording with known parameter names "
                            "(TrajectoryRecorder or Trajectory.from_params)", self.source)
        names = set(self.param_names)
        return {k: v for k, v in self.load(i).items() if k not in names}

    def problem(self, problem: Any, i: int = -1) -> Any:
        """``problem`` evaluated with checkpoint ``i``'s whole state (buffers such as BatchNorm
        running statistics and frozen parameters included): :meth:`Problem.with_state
        <lossatlas.Problem.with_state>` of :meth:`state`. The checkpoint must hold the model's
        whole ``state_dict`` (record with ``buffers=True``, the default); missing or unexpected
        entries are an error naming them."""
        if not isinstance(problem, Problem):
            raise bad_type("Trajectory.problem", "problem", "a lossatlas.Problem", problem)
        return problem.with_state(self.state(i), func="Trajectory.problem", arg=f"checkpoint {i}")

    def project(self, directions: Any,
                center: Mapping[str, Tensor] | None = None,
                **kw: Any) -> xr.Dataset:
        """See :func:`project`."""
        return project(self, directions, center, **kw)


@public("load_state")
def load_state(path: str | Path, *, func: str = "load_state", arg: str = "path") -> dict[str, Tensor]:
    """The ``state_dict`` in a checkpoint file (or under its ``"state_dict"``/``"model"`` key), on the CPU.

    A file that is missing, is a directory, is not a ``torch.save`` checkpoint (garbage, JSON, text) or
    holds no dict of tensors raises :class:`~lossatlas.StoreError` naming ``arg`` and the path (one line)."""
    if not isinstance(path, (str, Path)):
        raise bad_type(func, arg, "a checkpoint file path (str or pathlib.Path)", path)
    path = Path(path)
    where = f"{func}(): argument '{arg}' must be a torch.save checkpoint file holding a state_dict; received {str(path)!r}"
    if not path.exists():
        raise StoreError(f"{where}, which does not exist")
    if not path.is_file():
        raise StoreError(f"{where}, which is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StoreError(f"{where}, which torch.load cannot read ({_why_unreadable(path, exc)})") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        what = ("an empty dict" if isinstance(state, dict) and not state else
                "a dict with entries that are not tensors" if isinstance(state, dict) else f"a {type(state).__name__}")
        raise StoreError(f"{where}, which holds {what}")
    return state


def _why_unreadable(path: Path, exc: BaseException) -> str:
    """A one-line reason a checkpoint could not be loaded (torch's own message spans many lines)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save's zip archive, or a legacy pickle
        if "weights only load failed" in str(exc).lower():
            return ("it holds objects other than tensors and plain containers, e.g. a whole pickled model: "
                    "save model.state_dict() instead")
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    if head.lstrip()[:1] in (b"{", b"["):
        return "it looks like JSON, not a torch.save checkpoint"
    return "it is neither a torch.save zip archive nor a pickle"


def _as_trajectory(trajectory: Any) -> Trajectory:
    """A :class:`Trajectory` from what ``project``-like functions accept (messages name the public
    function running)."""
    if isinstance(trajectory, Trajectory):
        return trajectory
    if isinstance(trajectory, TrajectoryRecorder):
        return trajectory.trajectory()
    if isinstance(trajectory, (str, Path)):
        return Trajectory.open(trajectory)
    if isinstance(trajectory, Sequence) and trajectory and all(isinstance(c, Mapping) for c in trajectory):
        return Trajectory.from_params(trajectory)
    raise bad_type("trajectory", "a Trajectory, a recording directory or a list of parameter dicts", trajectory)


def _flat(params: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    return torch.cat([params[n].detach().reshape(-1).to("cpu", torch.float64) for n in names])


@public("project_points")
def project_points(points: Iterator[Mapping[str, Tensor]], directions: Sequence[Mapping[str, Tensor]],
                   center: Mapping[str, Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares coordinates c_i = argmin ‖(θ_i − center) − D c‖ for each point, with the
    residual ‖(θ_i − center) − D c_i‖ and the distance ‖θ_i − center‖ (float64; via a QR of D)."""
    names = list(center)
    basis = torch.stack([_flat(d, names) for d in directions], dim=1)
    q, r = torch.linalg.qr(basis)
    if torch.abs(torch.diagonal(r)).min() <= 1e-12 * torch.abs(torch.diagonal(r)).max():
        raise InvalidArgumentError("project(): argument 'directions' must be linearly independent; received "
                                   "directions that span fewer dimensions than their number")
    c0 = _flat(center, names)
    coords, residuals, distances = [], [], []
    for point in points:
        m = _flat(point, names) - c0
        qm = q.T @ m
        coords.append(torch.linalg.solve_triangular(r, qm[:, None], upper=True)[:, 0].numpy() + 0.0)  # no -0.0
        residuals.append(float(torch.linalg.vector_norm(m - q @ qm)))
        distances.append(float(torch.linalg.vector_norm(m)))
    return np.array(coords).reshape(-1, len(directions)), np.array(residuals), np.array(distances)


@public("project")
def project(trajectory: Trajectory | str | Path | Sequence[Mapping[str, Tensor]],
            directions: Any, center: Mapping[str, Tensor] | None = None,
            ) -> xr.Dataset:
    """Every checkpoint's coordinates in the plane (or space) ``center + Σ c_k d_k``.

    Returns an ``xarray.Dataset`` along ``step`` with ``x``, ``y`` (… one variable per direction,
    named like the surface's dims, in units of the directions: the point (x_i, y_i) of a surface
    over the same centre and directions is the checkpoint's exact in-plane component), ``residual``
    (distance from the checkpoint to the plane), ``relative_residual`` (residual / ‖θ_i −
    center‖), ``distance`` (‖θ_i − center‖) and any recorded scalars (e.g. the training ``loss``).
    ``center`` defaults to the last checkpoint. Reusing one plane for several runs (same
    ``directions`` and ``center``) puts different optimisers on the same map.

    >>> import torch, lossatlas
    >>> pts = [{"w": torch.tensor([float(i), 2.0 * i, 1.0 + i % 2])} for i in range(4)]
    >>> d = lossatlas.directions.Directions([{"w": torch.tensor([1.0, 2.0, 0.0])}])
    >>> ds = project(pts, d, center=pts[0])
    >>> ds.x.values.round(6).tolist(), ds.residual.values.round(6).tolist()
    ([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 0.0, 1.0])
    """
    traj = _as_trajectory(trajectory)
    typed = _is_directions(directions)
    vectors = directions.vectors if typed else list(directions)
    if not vectors or len(vectors) > len(DIM_NAMES) or not all(isinstance(v, Mapping) for v in vectors):
        raise bad_type("directions", f"a Directions object or 1 to {len(DIM_NAMES)} parameter dicts", directions)
    names = list(vectors[0])
    if center is None:
        center = traj.final(names, device=next(iter(vectors[0].values())).device)
    P.check_like(vectors[0], center, arg="center", ref_arg="directions", check_dtype=False)
    for i, v in enumerate(vectors[1:], start=1):
        P.check_like(vectors[0], v, arg=f"directions[{i}]", ref_arg="directions[0]", check_dtype=False)
    points = (traj.load(i, names) for i in range(len(traj)))
    coords, residual, distance = project_points(points, vectors, center)
    data = {DIM_NAMES[k]: ("step", coords[:, k]) for k in range(len(vectors))}
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(distance > 0, residual / np.where(distance > 0, distance, 1.0), 0.0)
    data.update(residual=("step", residual), relative_residual=("step", rel), distance=("step", distance))
    for k, v in traj.scalars.items():
        if k not in data:
            data[k] = ("step", v)
    spec = directions.spec if typed else {}
    ds = xr.Dataset(data, coords={"step": traj.steps})
    labels = (directions.labels if typed
              else [f"direction {i + 1}" for i in range(len(vectors))])
    for k, lab in enumerate(labels):
        ds[DIM_NAMES[k]].attrs["long_name"] = lab
    ds.attrs.update({
        "kind": "trajectory_projection",
        "n_checkpoints": len(traj),
        "center_fingerprint": P.fingerprint(center),
        "directions_fingerprint": P.fingerprint((f"{i}:{k}", t) for i, v in enumerate(vectors) for k, t in v.items()),
        "direction_labels": list(labels),
        "source": traj.source,
        "max_relative_residual": float(rel.max()) if len(rel) else 0.0,
    })
    if "explained_variance_ratio" in spec:
        ds.attrs["explained_variance_ratio"] = list(spec["explained_variance_ratio"])
    return make_safe(ds)


def _is_directions(obj: Any) -> bool:
    """A :class:`~lossatlas.Directions` (vectors + spec + labels), recognised without importing
    :mod:`lossatlas.directions`, which builds PCA directions on top of this module."""
    return all(hasattr(obj, a) for a in ("vectors", "spec", "labels", "fingerprint"))
