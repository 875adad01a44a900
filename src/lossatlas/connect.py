"""Mode connectivity: low-loss curves between two solutions (Garipov et al., NeurIPS 2018).

A curve φ_w(t), t ∈ [0, 1], has fixed endpoints φ(0) = a, φ(1) = b and trainable bends w:

* ``"bezier"`` with k bends θ₁…θ_k: φ(t) = Σ_{i=0}^{k+1} C(k+1, i) tⁱ (1 − t)^{k+1−i} θ_i with
  θ₀ = a, θ_{k+1} = b (k = 1: the quadratic (1 − t)²a + 2t(1 − t)θ + t²b);
* ``"polychain"``: the broken line a → θ₁ → … → θ_k → b, with the knots at t = i/(k + 1).

The bends minimise E_{t∼U[0,1]} L(φ(t)) by stochastic gradient (one t drawn per step, seeded),
starting from the straight line (bends evenly spaced on the segment a → b, where both curves *are*
the line). Draxler et al. (ICML 2018) found such paths independently.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from . import params as P
from ._bn_honesty import warn_if_stale
from ._ncattrs import make_safe
from ._repr import table, text
from .data import map_tensors
from .directions import plane
from .errors import InvalidArgumentError, StoreError, bad_type, bad_value, check_seed, public, renamed
from .evaluator import PointEvaluator, probe_free_strategy
from .grid import DIM_NAMES, Grid
from .grid_job import GridJob, run_grid
from .paths import _as_params, path_metrics, with_bn
from .problem import Problem
from .progress import progress_bar
from .trajectory import project_points

__all__ = ["connect", "Curve", "CURVES"]

CURVES = ("bezier", "polychain")


def coefficients(kind: str, bends: int, t: np.ndarray) -> np.ndarray:
    """(m, bends + 2) weights of θ₀ … θ_{k+1} at each t (rows sum to 1).

    >>> coefficients("bezier", 1, np.array([0.0, 0.5, 1.0])).tolist()
    [[1.0, 0.0, 0.0], [0.25, 0.5, 0.25], [0.0, 0.0, 1.0]]
    >>> coefficients("polychain", 1, np.array([0.25, 0.75])).tolist()
    [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]
    """
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    k = bends + 1
    if kind == "bezier":
        i = np.arange(k + 1)
        binom = np.array([math.comb(k, j) for j in i], dtype=np.float64)
        return binom * t[:, None] ** i * (1.0 - t[:, None]) ** (k - i)
    seg = np.minimum((t * k).astype(np.int64), k - 1)
    u = t * k - seg
    out = np.zeros((len(t), k + 1))
    out[np.arange(len(t)), seg] = 1.0 - u
    out[np.arange(len(t)), seg + 1] += u
    return out


def _torch_coefficients(kind: str, bends: int, t: Tensor) -> list[Tensor]:
    k = bends + 1
    if kind == "bezier":
        return [math.comb(k, j) * t**j * (1 - t) ** (k - j) for j in range(k + 1)]
    seg = min(int(float(t) * k), k - 1)
    u = t * k - seg
    return [(1 - u) if j == seg else u if j == seg + 1 else torch.zeros_like(t) for j in range(k + 1)]


@dataclass
class Curve:
    """A trained curve between ``points[0]`` = a and ``points[-1]`` = b through its ``bends``.

    ``info`` records how it was trained (seed, lr, steps, batch size, seconds) and ``history``
    the sampled training loss of every step.
    """

    kind: str
    points: list[dict[str, Tensor]]
    problem: Problem | None = None
    info: dict[str, Any] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)

    @property
    def bends(self) -> list[dict[str, Tensor]]:
        return self.points[1:-1]

    def _rows(self) -> list[tuple[str, str]]:
        n = sum(int(v.numel()) for v in self.points[0].values()) if self.points else 0
        rows = [("kind", self.kind), ("bends", str(len(self.bends))), ("parameters", f"{n:,}")]
        if self.points:
            rows.append(("‖b − a‖", f"{P.norm(P.sub(self.points[-1], self.points[0])):.4g}"))
        for k in ("steps", "lr", "seed", "seconds"):
            if k in self.info:
                v = self.info[k]
                rows.append((k, f"{v:.3g}" if isinstance(v, float) else str(v)))
        if self.history:
            rows.append(("training loss", f"{self.history[0]:.4g} → {self.history[-1]:.4g} ({len(self.history)} steps)"))
        return rows

    def __repr__(self) -> str:
        rows = dict(self._rows())
        return text("Curve", [("kind", repr(self.kind)), ("bends", rows["bends"]), ("parameters", rows["parameters"])],
                    [", ".join(f"{k} {v}" for k, v in self._rows()[3:])] if len(self._rows()) > 3 else [])

    def _repr_html_(self) -> str:
        return table(f"{self.kind} curve", self._rows(), ".evaluate(steps) gives the loss along it.")

    def coefficients(self, t: Sequence[float] | np.ndarray) -> np.ndarray:
        """(m, len(points)) weights of the control points at each t."""
        return coefficients(self.kind, len(self.bends), np.asarray(t, dtype=np.float64))

    def point(self, t: float) -> dict[str, Tensor]:
        """φ(t) = Σ_i c_i(t) θ_i."""
        if not isinstance(t, (int, float, np.floating)) or isinstance(t, bool) or not 0.0 <= float(t) <= 1.0:
            raise bad_value("Curve.point", "t", "a number in [0, 1]", t)
        c = self.coefficients([float(t)])[0]
        zero = P.zeros_like(self.points[0])
        return P.lincomb(zero, self.points, c)

    @public("Curve.evaluate")
    def evaluate(self, steps: int = 61, *, bn: str | None = None, strategy: str = "auto", metrics: bool = True,
                 progress: bool = False, tol: float | None = None, problem: Problem | None = None) -> xr.Dataset:
        """Loss (and metrics) at ``steps`` evenly spaced t ∈ [0, 1] along the curve.

        ``bn``: ``None`` recalibrates BatchNorm statistics at every t when the model has BatchNorm
        (a point of the curve has no stored statistics; Garipov et al. do the same) and otherwise
        keeps the problem's setting; ``"eval"``/``"recalibrate"`` force one. ``attrs`` hold the path
        metrics of :func:`lossatlas.paths.path_metrics` (``max_loss``, ``barrier`` above the
        endpoints, ``barrier_linear``, ``mli`` …), the curve's ``length`` (sum of the chords
        between the evaluated points) and ``distance`` = ‖b − a‖.
        """
        func = "Curve.evaluate"
        problem = problem or self.problem
        if not isinstance(problem, Problem):
            raise bad_type("problem", "a lossatlas.Problem (the curve was loaded without one)", problem)
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
            raise bad_value("steps", "an integer >= 2", steps)
        if bn not in (None, "eval", "recalibrate"):
            raise bad_value("bn", "None, 'eval' or 'recalibrate'", bn)
        for i, p in enumerate(self.points):
            problem.check_params(p, arg=f"points[{i}]")
        if bn is None:
            bn = "recalibrate" if problem.has_batchnorm else problem.bn
        evaluated = with_bn(problem, bn)

        warn_if_stale(evaluated, func, [P.sub(p, self.points[0]) for p in self.points[1:]], "the curve")
        t = np.linspace(0.0, 1.0, int(steps))
        coeffs = self.coefficients(t)
        ds = run_grid(self._job(evaluated, t, strategy, metrics, func), progress=progress).rename({"x": "t"})
        ds.attrs.update(path_metrics(t, ds["loss"].values, dtype=problem.dtype, tol=tol,
                                     accuracy=ds["accuracy"].values if "accuracy" in ds else None))
        ds.attrs.update(kind="curve", curve=self.kind, bends=len(self.bends), bn=bn, length=self._length(coeffs),
                        distance=P.norm(P.sub(self.points[-1], self.points[0])))

        return make_safe(ds)

    def _job(self, problem: Problem, t: np.ndarray, strategy: str, metrics: bool, func: str) -> GridJob:
        """The points φ(t) of the curve as a grid job over t (chunks of 8 points; strategy and vmap
        batch decided on rank 0)."""
        zero = P.zeros_like(self.points[0])
        curve = self

        class _AlongCurve:  # t -> the weights of the control points -> the problem's values
            def __init__(self, strategy_: str, vmap_batch: int | None):
                self.inner = PointEvaluator(problem, zero, curve.points, strategy=strategy_, vmap_batch=vmap_batch,
                                            metrics=metrics)
                self.strategy, self.vmap_batch = self.inner.strategy, self.inner.vmap_batch

            def __call__(self, coefficients: np.ndarray) -> dict[str, np.ndarray]:
                return self.inner(curve.coefficients(np.asarray(coefficients)[:, 0]))

            def close(self) -> None:
                self.inner.close()

        def plan(req: dict[str, Any]) -> tuple[dict[str, Any], Any]:
            ev = _AlongCurve(probe_free_strategy(strategy, len(t)), None)
            return {"chunk_shape": [8], "strategy": ev.strategy, "vmap_batch": ev.vmap_batch}, ev

        fp = problem.fingerprint()
        provenance = {"kind": "curve", "curve": self.kind, "model": fp["model"], "data": fp["data"],
                      "loss": fp["loss"], "settings": fp["settings"], "metrics": bool(metrics),
                      "points": [P.fingerprint(p) for p in self.points], "t": [float(v) for v in t]}
        return GridJob(
            kind="curve", func=func, grid=Grid((np.asarray(t, dtype=np.float64),)),
            variables=tuple(problem.metric_names) if metrics else ("loss",), provenance=provenance,
            requested={"chunk_shape": None, "strategy": None, "vmap_batch": None}, plan=plan,
            evaluator=lambda s: _AlongCurve(s["strategy"], s["vmap_batch"]),
            attrs=lambda s: {"kind": "curve", "strategy": s["strategy"]}, labels=(f"t along the {self.kind} curve",),
            description=f"curve ({self.kind})")

    def _length(self, coeffs: np.ndarray) -> float:
        total = 0.0
        for i in range(1, len(coeffs)):
            total += P.norm(P.lincomb(P.zeros_like(self.points[0]), self.points, coeffs[i] - coeffs[i - 1]))
        return total

    def plane(self, *, orthogonal: bool = True):
        """Directions of the plane through a, b and the (middle) bend, centred at a (see
        :func:`lossatlas.directions.plane`); the curve lies in it exactly when it has one bend."""
        return plane(self.points[0], self.points[-1], self.bends[len(self.bends) // 2], orthogonal=orthogonal)

    def project(self, directions: Any = None, center: Mapping[str, Tensor] | None = None, *,
                steps: int = 61) -> xr.Dataset:
        """The curve's points at ``steps`` values of t in the coordinates of ``directions`` around
        ``center`` (default: :meth:`plane` around a), as a Dataset along ``t`` with ``x``, ``y``,
        ``residual`` (exact least squares, see :func:`lossatlas.trajectory.project_points`)."""
        dirs = directions if directions is not None else self.plane()
        vectors = list(dirs)
        center = self.points[0] if center is None else center
        t = np.linspace(0.0, 1.0, int(steps))
        zero = P.zeros_like(self.points[0])
        pts = (P.lincomb(zero, self.points, c) for c in self.coefficients(t))
        coords, residual, distance = project_points(pts, vectors, center)
        data = {DIM_NAMES[k]: ("t", coords[:, k]) for k in range(len(vectors))}
        data.update(residual=("t", residual), distance=("t", distance))
        return xr.Dataset(data, coords={"t": t}, attrs={"kind": "curve_projection", "curve": self.kind})

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the curve (kind, control points, info, history) to one ``torch.save`` file."""
        path = Path(path)
        torch.save({"format": "lossatlas-curve/1", "kind": self.kind,
                    "points": [{k: v.detach().cpu() for k, v in p.items()} for p in self.points],
                    "info": self.info, "history": list(self.history)}, path)
        return path

    @classmethod
    def load(cls, path: str | Path, problem: Problem | None = None) -> Curve:
        """Read a curve written by :meth:`save` (points moved to ``problem``'s dtype and device)."""
        try:
            blob = torch.load(Path(path), map_location="cpu", weights_only=True)
            kind, points = blob["kind"], blob["points"]
        except Exception as exc:
            raise StoreError(f"Curve.load(): argument 'path' must be a curve written by Curve.save; received "
                             f"{str(path)!r} ({exc})") from exc
        if problem is not None:
            points = [P.to(p, dtype=problem.dtype, device=problem.device) for p in points]
        return cls(kind, points, problem, dict(blob.get("info", {})), list(blob.get("history", [])))


@public("connect")
@renamed(steps="iters")
def connect(problem: Problem, a: Mapping[str, Tensor] | nn.Module, b: Mapping[str, Tensor] | nn.Module, *,
            curve: str = "bezier", bends: int = 1, iters: int = 600, lr: float = 0.01, batch_size: int | None = None,
            seed: int = 0, weight_decay: float = 0.0, progress: bool = True) -> Curve:
    """Train a curve from ``a`` to ``b`` whose loss stays low (Garipov et al. 2018).

    Minimises E_{t∼U[0,1]} L(φ(t)) over the bends with Adam (learning rate ``lr``, cosine decay to
    0 over ``iters`` steps), drawing one t per step from a generator seeded with ``seed`` — the
    same seed gives the same curve. Each step uses one batch of the problem's data (all of it when
    the problem holds one batch) or, with ``batch_size``, a random subset of that size. The bends
    start on the straight line. BatchNorm layers run on batch statistics while training (their
    stored statistics belong to a, not to φ(t)); evaluate with ``Curve.evaluate`` (BatchNorm
    recalibrated at every t).

    >>> import torch, lossatlas
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x = torch.randn(64, 2)
    >>> y = (x[:, 0] * x[:, 1] > 0).long()
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    >>> problem = lossatlas.Problem(net, torch.nn.CrossEntropyLoss(), (x, y))
    >>> a = problem.params()
    >>> b = {k: -v for k, v in a.items()}
    >>> c = lossatlas.connect(problem, a, b, iters=50, progress=False)
    >>> len(c.bends), c.evaluate(11).attrs["max_loss"] > 0
    (1, True)
    """
    if not isinstance(problem, Problem):
        raise bad_type("problem", "a lossatlas.Problem", problem)
    a = _as_params(problem, a, "a")
    b = _as_params(problem, b, "b")
    if curve not in CURVES:
        raise bad_value("curve", f"one of {CURVES}", curve)
    for arg, v in (("bends", bends), ("iters", iters)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise bad_value(arg, "an integer >= 1", v)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
        raise bad_value("lr", "a positive finite number", lr)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise bad_value("batch_size", "a positive integer or None", batch_size)
    seed = check_seed(seed)
    if P.norm(P.sub(b, a)) == 0:
        raise InvalidArgumentError(f"connect(): arguments 'a' and 'b' must differ; received identical parameters")

    k = int(bends)
    init = [P.axpy(j / (k + 1), P.sub(b, a), a) for j in range(1, k + 1)]
    t0 = time.perf_counter()
    leaves, history = _train_bends(problem, a, b, init, curve=curve, iters=int(iters), lr=float(lr),
                                   weight_decay=float(weight_decay), batch_size=batch_size, seed=int(seed),
                                   progress=progress)
    seconds = time.perf_counter() - t0
    points = [a, *({n: v.detach() for n, v in p.items()} for p in leaves), b]
    info = {"curve": curve, "bends": k, "steps": int(iters), "lr": float(lr), "batch_size": batch_size,
            "seed": int(seed), "weight_decay": float(weight_decay), "seconds": seconds,
            "objective": "E_t~U[0,1] L(phi(t)) (Garipov et al. 2018)"}
    return Curve(curve, points, problem, info, history)


def _train_bends(problem: Problem, a, b, init, *, curve: str, iters: int, lr: float, weight_decay: float,
                 batch_size: int | None, seed: int, progress: bool) -> tuple[list[dict[str, Tensor]], list[float]]:
    """Adam with a cosine schedule on the bends (starting at ``init``) of the curve a → b, one
    t ~ U[0, 1] and one batch per step (the objective E_t L(φ(t)); BatchNorm in train mode under the
    problem's lock): (the trained bends as leaves, the loss of every step)."""
    k = len(init)
    leaves = [{n: v.detach().clone().requires_grad_(True) for n, v in p.items()} for p in init]
    opt = torch.optim.Adam([v for p in leaves for v in p.values()], lr=float(lr), weight_decay=float(weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / iters)))
    gen = torch.Generator().manual_seed(int(seed))
    history: list[float] = []
    batches = list(problem.data)
    bn_buffers = _bn_buffer_names(problem)
    lock = problem._guard.lock  # BatchNorm of the shared private module in train mode: no other thread meanwhile
    lock.acquire()
    try:
        for m in problem.batchnorm_modules:
            m.train()
        with progress_bar(int(iters), f"connect ({curve}, {k} bend{'s' if k > 1 else ''})", enabled=progress,
                          unit="steps") as advance:
            for s in range(int(iters)):
                t = torch.rand((), generator=gen, dtype=torch.float64)
                batch, n = batches[s % len(batches)]
                if batch_size is not None and batch_size < n:
                    idx = torch.randperm(n, generator=gen)[:batch_size].to(problem.device)
                    batch, n = map_tensors(batch, lambda x, idx=idx: x[idx]), batch_size
                coeffs = [float(c) for c in _torch_coefficients(curve, k, t)]
                phi = _combine([a, *leaves, b], coeffs)
                buffers = {name: v.clone() for name, v in bn_buffers.items()} or None
                loss = problem.batch_loss(phi, batch, n, buffers)
                if not loss.requires_grad:  # t drawn exactly at an endpoint: nothing to train
                    advance(1)
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                history.append(float(loss.detach()))
                advance(1)
    finally:
        for m in problem.batchnorm_modules:
            m.eval()
        lock.release()
    return leaves, history


def _combine(points: Sequence[Mapping[str, Tensor]], coeffs: Sequence[float]) -> dict[str, Tensor]:
    """Σ_i c_i θ_i, differentiable in the trainable points (zero weights skipped)."""
    out: dict[str, Tensor] = {}
    for p, c in zip(points, coeffs):
        if c == 0.0:
            continue
        for name, v in p.items():
            out[name] = v * c if name not in out else out[name] + v * c
    return out


def _bn_buffer_names(problem: Problem) -> dict[str, Tensor]:
    """The private module's BatchNorm buffers (cloned at every training step so that train-mode
    BatchNorm's in-place updates never reach the stored statistics)."""
    if not problem.has_batchnorm:
        return {}
    ids = {id(m) for m in problem.batchnorm_modules}
    out = {}
    for mname, m in problem.module.named_modules():
        if id(m) in ids:
            for bname, buf in m.named_buffers(recurse=False):
                out[f"{mname}.{bname}" if mname else bname] = buf
    return out
