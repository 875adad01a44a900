"""Evaluating a problem at many points θ + Σᵢ aᵢdᵢ: strategies and their automatic choice.

* ``"loop"``: one point after another; each point's parameters are formed afresh as
  θ + Σ aᵢdᵢ (fused ``_foreach`` kernels), never by accumulating steps.
* ``"vmap"``: ``torch.vmap`` over a batch of points (fast for tiny models or small batches, and on
  GPUs; slower than the loop on CPU for large batches, see DESIGN.md).
* ``"auto"``: times both on the problem and keeps the faster (always ``"loop"`` with
  ``bn="recalibrate"``, where BatchNorm runs in train mode and cannot be vmapped).

Both use :class:`~lossatlas._linear_fold.LinearFold` when ``exact_linear=True``.
Results are float64 numpy arrays per metric; there is one host transfer per batch of points.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from . import params as P
from ._linear_fold import LinearFold
from .errors import EvaluationError, bad_value

STRATEGIES = ("auto", "loop", "vmap")
VMAP_MEMORY = 512 * 2**20  # bytes of activations a vmapped batch of points may use


class PointEvaluator:
    """Callable mapping an (m, n) array of coefficients to ``{metric: (m,) float64 array}``."""

    def __init__(self, problem, center: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]], *,
                 strategy: str = "auto", vmap_batch: int | None = None, exact_linear: bool = True,
                 metrics: bool = True):
        if strategy not in STRATEGIES:
            raise bad_value("surface", "strategy", f"one of {STRATEGIES}", strategy)
        self.problem = problem
        self.center = dict(center)
        self.directions = [dict(d) for d in directions]
        self.metrics = metrics
        self.names = list(problem.metric_names) if metrics else ["loss"]
        self.fold = LinearFold(problem, self.center, self.directions) if exact_linear else None
        self._stack = contextlib.ExitStack()
        if self.fold is not None:
            self._stack.enter_context(self.fold)
        if problem.bn == "recalibrate" and problem._bn_modules and strategy == "vmap":
            raise bad_value("surface", "strategy", "'loop' or 'auto' with bn='recalibrate' (train-mode "
                            "BatchNorm cannot be vmapped)", strategy)
        self.vmap_batch = vmap_batch or self._default_vmap_batch()
        self.strategy = strategy if strategy != "auto" else self._choose()
        self.seconds_per_point: float | None = getattr(self, "_measured", None)

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> PointEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- evaluation ------------------------------------------------------------------------------
    def __call__(self, coefficients: np.ndarray) -> dict[str, np.ndarray]:
        coefficients = np.asarray(coefficients, dtype=np.float64).reshape(-1, len(self.directions))
        try:
            with torch.no_grad():
                if self.strategy == "vmap":
                    return self._run_vmap(coefficients)
                return self._run_loop(coefficients)
        except EvaluationError:
            raise
        except Exception as exc:
            raise EvaluationError(f"surface(): evaluating the model failed with {type(exc).__name__}: {exc}") from exc

    def _run_loop(self, coefficients: np.ndarray) -> dict[str, np.ndarray]:
        problem = self.problem
        m = len(coefficients)
        out = torch.empty((len(self.names), m), dtype=torch.float64, device=problem.device)
        keys = list(self.center)
        base = [self.center[k] for k in keys]
        dirs = [[d[k] for k in keys] for d in self.directions]
        recalibrate = problem.bn == "recalibrate" and bool(problem._bn_modules)
        # one set of parameter buffers, bound once; each point overwrites them with θ + Σ aᵢdᵢ
        # computed from θ afresh (copy, then axpy per direction): never accumulated steps
        buf = [t.clone() for t in base]
        params = dict(zip(keys, buf))
        with contextlib.ExitStack() as stack:
            if not recalibrate:
                stack.enter_context(problem.bound(params))
            for i, c in enumerate(coefficients):
                c = tuple(float(v) for v in c)
                torch._foreach_copy_(buf, base)
                for a, d in zip(c, dirs):
                    if a != 0.0:
                        torch._foreach_add_(buf, d, alpha=a)
                if self.fold is not None:
                    self.fold.coefficients = c
                values = problem.evaluate_tensors(params, metrics=self.metrics) if recalibrate else \
                    problem.evaluate_bound(metrics=self.metrics)
                for j, k in enumerate(self.names):
                    out[j, i] = values[k]
        if self.fold is not None:
            self.fold.coefficients = None
        host = out.cpu().numpy()
        return {k: host[j] for j, k in enumerate(self.names)}

    def _point_fn(self):
        problem, names, fold = self.problem, self.names, self.fold
        keys = list(self.center)
        centers = [self.center[k] for k in keys]
        dirs = [[d[k] for k in keys] for d in self.directions]

        def point(c: Tensor):
            vals = [t.clone() for t in centers]
            for j, d in enumerate(dirs):
                vals = [v + c[j] * dj for v, dj in zip(vals, d)]
            if fold is not None:
                fold.coefficients = c
            values = problem.evaluate_tensors(dict(zip(keys, vals)), metrics=self.metrics)
            return torch.stack([values[k] for k in names])
        return torch.vmap(point, randomness="error")

    def _run_vmap(self, coefficients: np.ndarray) -> dict[str, np.ndarray]:
        problem = self.problem
        fn = self._point_fn()
        outs = []
        for s in range(0, len(coefficients), self.vmap_batch):
            c = torch.as_tensor(coefficients[s:s + self.vmap_batch], dtype=problem.dtype, device=problem.device)
            outs.append(fn(c))
        if self.fold is not None:
            self.fold.coefficients = None
        host = torch.cat(outs).cpu().numpy()
        return {k: host[:, j] for j, k in enumerate(self.names)}

    # -- automatic choice ------------------------------------------------------------------------
    def _activation_bytes(self) -> int:
        """Bytes of module outputs in one forward pass over the largest batch (a per-point estimate)."""
        problem = self.problem
        total = [0]
        hooks = []

        def hook(mod, args, out):
            if isinstance(out, Tensor):
                total[0] += out.numel() * out.element_size()
        for m in problem._module.modules():
            if not list(m.children()):
                hooks.append(m.register_forward_hook(hook))
        try:
            with torch.no_grad():
                batch, n = problem.data.first()
                problem.batch_terms(self.center, batch, n, metrics=self.metrics)
        finally:
            for h in hooks:
                h.remove()
        return max(total[0], 1)

    def _default_vmap_batch(self) -> int:
        per_point = self._activation_bytes() + sum(v.numel() * v.element_size() for v in self.center.values())
        return int(max(1, min(16384, VMAP_MEMORY // per_point)))

    def _choose(self) -> str:
        """Time a few points with each strategy; keep the faster per point."""
        if self.problem.bn == "recalibrate" and self.problem._bn_modules:
            return "loop"
        n = len(self.directions)
        rng = np.random.default_rng(0)
        probe = rng.uniform(-1, 1, size=(max(2, min(self.vmap_batch, 64)), n))
        self.strategy = "loop"
        self(probe[:1])  # warm-up
        t = time.perf_counter()
        loop_pts = max(1, min(3, len(probe)))
        self(probe[:loop_pts])
        loop = (time.perf_counter() - t) / loop_pts
        self.strategy = "vmap"
        try:
            self(probe[:2])  # warm-up / does the model vmap at all?
            t = time.perf_counter()
            self(probe)
            vm = (time.perf_counter() - t) / len(probe)
        except EvaluationError:
            vm = float("inf")
        self._measured = min(loop, vm)
        return "vmap" if vm < loop else "loop"
