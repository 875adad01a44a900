"""PCA directions of a training trajectory (Li et al. 2018): the principal directions of the
checkpoints' θ_i − θ_final, computed out of core from their Gram matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import params as P
from ..errors import InvalidArgumentError, bad_type, bad_value, public
from ..params._layout import filter_layout, ignored
from ..problem import Problem
from ..trajectory import Trajectory, _as_trajectory, _flat
from ._base import Directions
from ._registry import DirectionKind, register

__all__ = ["pca"]


def _target_layout(traj: Trajectory, like: Any) -> tuple[list[str], torch.dtype | None, Any, Any]:
    """(names, dtype, device, reference params) the directions must match."""
    if like is None:
        names = traj.param_names
        if names is None:
            first = traj.load(0)
            names = [k for k, v in first.items() if v.is_floating_point()]
        return list(names), None, None, None
    if isinstance(like, Problem):
        ref = like.params()
    elif isinstance(like, nn.Module):
        ref = P.params_of(like)
    elif isinstance(like, Mapping):
        ref = dict(like)
    else:
        raise bad_type("like", "a Problem, a module or a parameter dict (or None)", like)
    first = next(iter(ref.values()))
    return list(ref), first.dtype, first.device, ref


@public("directions.pca")
def pca(trajectory: Trajectory | str | Path | Sequence[Mapping[str, Tensor]], *, n: int = 2, like: Any = None,
        ignore: Any = None, max_bytes: int = 2**30) -> Directions:
    """The first ``n`` principal directions of θ_i − θ_final (Li et al. 2018), as :class:`Directions`.

    Computed like scikit-learn's ``PCA`` on the checkpoint matrix (rows centred on their mean,
    unit-norm components, sign fixed so each component's largest-magnitude entry is positive), from
    the n×n Gram matrix accumulated ``max_bytes`` at a time, so the whole matrix never needs to fit
    in memory. ``spec`` records ``explained_variance_ratio`` (λ_k / Σλ), ``explained_variance``
    (λ_k / (n − 1)), ``singular_values``, the steps used and a fingerprint of θ_final, the centre
    at which the plane is meant to be drawn (``trajectory.final()``).

    ``like``: a Problem, module or parameter dict whose names, dtype and device the directions get
    (default: the recorded parameters, in the checkpoints' dtype). ``ignore``: as in
    :func:`lossatlas.directions.random` (``"biasbn"``, a callable or name patterns) — ignored
    parameters get a zero direction; default ``None`` uses every parameter.
    """
    traj = _as_trajectory(trajectory)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad_value("n", "an integer >= 1", n)
    if len(traj) < 2:
        raise bad_value("trajectory", "at least 2 checkpoints", traj)
    if n > len(traj) - 1:
        raise bad_value("n", f"at most {len(traj) - 1} (the number of checkpoints minus one)", n)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise bad_value("max_bytes", "a positive integer (bytes)", max_bytes)
    names, dtype, device, ref = _target_layout(traj, like)
    final = traj.final(names, device=device)
    if ref is not None:
        P.check_like(ref, final, arg="trajectory", ref_arg="like", check_dtype=False)
    layout = filter_layout(like if isinstance(like, nn.Module) else getattr(like, "model", None), final)
    skip = ignored(ignore, layout, final) if ignore is not None else set()
    moving = [k for k in names if k not in skip]
    if not moving:
        raise InvalidArgumentError(f"directions.pca(): argument 'ignore' leaves no parameter to move; received {ignore!r}")
    final_flat = _flat(final, moving)
    gram = _gram(traj, moving, final_flat, max_bytes)
    m = len(traj)
    centre = np.eye(m) - np.full((m, m), 1.0 / m)
    gc = centre @ gram @ centre
    gc = (gc + gc.T) / 2
    evals, evecs = np.linalg.eigh(gc)
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
    if evals[n - 1] <= 1e-14 * max(evals[0], 1e-300):
        raise InvalidArgumentError(f"directions.pca(): argument 'trajectory' spans fewer than {n} dimension"
                                   f"{'s' if n > 1 else ''} (the checkpoints barely move); received {m} checkpoints")
    weights = evecs[:, :n] / np.sqrt(evals[:n])
    comps = _combine(traj, moving, final_flat, torch.from_numpy(weights.copy()), max_bytes)
    for k in range(n):
        if comps[k][int(torch.argmax(comps[k].abs()))] < 0:
            comps[k] = -comps[k]
    ratio = evals / evals.sum()
    template = {k: final[k] for k in names}
    vectors = []
    for k in range(n):
        moved = P.unflatten(comps[k], {name: final[name] for name in moving})
        vec = {name: (moved[name] if name in moved else torch.zeros_like(template[name], dtype=torch.float64))
               for name in names}
        vectors.append(P.to(vec, dtype=dtype or next(iter(final.values())).dtype, device=device))
    spec = {
        "kind": "pca",
        "n": n,
        "norm": "unit",
        "ignore": ignore if (ignore is None or isinstance(ignore, str)) else repr(ignore),
        "ignored": sorted(skip),
        "explained_variance_ratio": [float(r) for r in ratio[:n]],
        "explained_variance": [float(e / (m - 1)) for e in evals[:n]],
        "singular_values": [float(np.sqrt(e)) for e in evals[:n]],
        "n_checkpoints": m,
        "steps": [int(s) for s in traj.steps],
        "center": "final",
        "center_fingerprint": P.fingerprint(P.to(final, dtype=dtype, device=device)),
        "source": traj.source,
        "labels": [f"PC{k + 1} ({100 * ratio[k]:.1f}% of variance)" for k in range(n)],
    }
    return Directions(vectors, spec)


def _blocks(m: int, p: int, max_bytes: int) -> list[range]:
    size = max(1, min(m, max_bytes // max(1, 2 * 8 * p)))
    return [range(s, min(m, s + size)) for s in range(0, m, size)]


def _rows(traj: Trajectory, block: range, names: Sequence[str], final_flat: Tensor) -> Tensor:
    return torch.stack([_flat(traj.load(i, names), names) - final_flat for i in block])


def _gram(traj: Trajectory, names: Sequence[str], final_flat: Tensor, max_bytes: int) -> np.ndarray:
    """G[i, j] = ⟨θ_i − θ_n, θ_j − θ_n⟩ in float64, two blocks of checkpoints in memory at a time."""
    m = len(traj)
    gram = np.zeros((m, m))
    blocks = _blocks(m, final_flat.numel(), max_bytes)
    for bi, rows_i in enumerate(blocks):
        xi = _rows(traj, rows_i, names, final_flat)
        gram[rows_i.start:rows_i.stop, rows_i.start:rows_i.stop] = (xi @ xi.T).numpy()
        for rows_j in blocks[bi + 1:]:
            xj = _rows(traj, rows_j, names, final_flat)
            g = (xi @ xj.T).numpy()
            gram[rows_i.start:rows_i.stop, rows_j.start:rows_j.stop] = g
            gram[rows_j.start:rows_j.stop, rows_i.start:rows_i.stop] = g.T
    return gram


def _combine(traj: Trajectory, names: Sequence[str], final_flat: Tensor, weights: Tensor,
             max_bytes: int) -> list[Tensor]:
    """Σ_i weights[i, k] (θ_i − θ_n) for every k (= Mᵀ W, streamed)."""
    out = torch.zeros(weights.shape[1], final_flat.numel(), dtype=torch.float64)
    for block in _blocks(len(traj), final_flat.numel(), max_bytes):
        out += weights[block.start:block.stop].T @ _rows(traj, block, names, final_flat)
    return list(out)


register(DirectionKind("pca", "PCA directions", pca, needs="trajectory"))
