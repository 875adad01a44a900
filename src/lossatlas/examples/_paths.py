"""Examples for paths between models: two ``mlp-digits`` networks from different seeds, and a
recorded training trajectory of ``mlp-digits`` (both deterministic and cached on disk)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from ..errors import bad_type, bad_value, check_seed
from ..trajectory import Trajectory, TrajectoryRecorder
from . import _builtin, _data, _models
from ._registry import Example, cache_dir, cache_digest

__all__ = ["mlp_digits_pair", "mlp_digits_trajectory"]

#: how ``mlp-digits`` is trained (see ``_builtin.mlp_digits``); the trajectory replays exactly this
MLP_DIGITS_TRAINING = {"steps": 300, "lr": 3e-3, "batch": 256}


def mlp_digits_pair(seeds: tuple[int, int] = (0, 1), *, dtype: torch.dtype | None = None,
                    device: str | torch.device | None = None, cache: bool = True) -> tuple[Example, Example]:
    """Two ``mlp-digits`` examples trained identically from different initialisation seeds.

    Their problems hold the same data and loss; interpolate between ``first.center`` and
    ``second.center`` with ``first.problem``.

    >>> a, b = mlp_digits_pair()
    >>> a.info["seed"], b.info["seed"], sorted(a.center) == sorted(b.center)
    (0, 1, True)
    """
    if not (isinstance(seeds, (tuple, list)) and len(seeds) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise bad_value("examples.mlp_digits_pair", "seeds", "a pair of integer seeds", seeds)
    if seeds[0] == seeds[1]:
        raise bad_value("examples.mlp_digits_pair", "seeds", "two different seeds", seeds)
    return tuple(_builtin.mlp_digits(dtype=dtype, device=device, cache=cache, seed=s) for s in seeds)  # type: ignore


def mlp_digits_trajectory(path: str | Path | None = None, *, seed: int = 0, every: int = 10,
                          cache: bool = True) -> Trajectory:
    """The training run of ``mlp-digits`` (seed ``seed``), recorded every ``every`` optimiser steps
    with a :class:`~lossatlas.TrajectoryRecorder`, starting from the initialisation (step 0).

    The run is the one that trains the ``mlp-digits`` example, so its last checkpoint equals that
    example's centre. Each checkpoint's ``loss`` (full-data training loss) is recorded beside it.
    ``path=None`` keeps the recording in the example cache (keyed by every setting, reused when
    present); a ``path`` records there (a new or empty directory).

    >>> traj = mlp_digits_trajectory()
    >>> len(traj), int(traj.steps[-1]), bool(traj.scalars["loss"][0] > traj.scalars["loss"][-1])
    (31, 300, True)
    """
    func = "examples.mlp_digits_trajectory"
    seed = check_seed(func, seed)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise bad_value(func, "every", "an integer >= 1", every)
    if path is not None:
        _record(Path(path), seed, every)
        return Trajectory.open(path)
    digest = cache_digest({"name": "trajectory-mlp-digits", "seed": seed, "every": every, **MLP_DIGITS_TRAINING})
    target = cache_dir() / f"trajectory-mlp-digits-{digest}"
    if cache and target.exists():
        return Trajectory.open(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _record(tmp, seed, every)
    if not cache:
        return Trajectory.open(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return Trajectory.open(target)


def _record(path: Path, seed: int, every: int) -> None:
    x, y = _data.digits()
    torch.manual_seed(seed)
    model = _models.mlp([64, 128, 128, 10])
    loss_fn = nn.CrossEntropyLoss()
    rec = TrajectoryRecorder(path, every=every)

    def record(step: int, m: nn.Module) -> None:
        if step % every == 0:
            with torch.no_grad():
                rec.record(m, step=step, loss=float(loss_fn(m(x), y)))

    record(0, model)
    _builtin.fit(model, loss_fn, x, y, seed=seed, callback=record, **MLP_DIGITS_TRAINING)
