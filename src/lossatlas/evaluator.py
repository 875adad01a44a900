"""Evaluating a problem at many points θ + Σᵢ aᵢdᵢ: strategies and their automatic choice.

* ``"loop"``: one point after another; each point's parameters are formed afresh as
  θ + Σ aᵢdᵢ, never by accumulating steps: on one flat vector for models up to 16 MiB, slice by
  slice into the bound tensors above (the point and 1 MiB of scratch; ``params/_points.py``).
* ``"vmap"``: ``torch.vmap`` over a batch of points (fast for tiny models or small batches, and on
  GPUs; slower than the loop on CPU for large batches, see DESIGN.md).
* ``"auto"``: times both on the problem and keeps the faster (vmap only when clearly faster; always
  ``"loop"`` with ``bn="recalibrate"``, where BatchNorm runs in train mode and cannot be vmapped, and
  for models too large for more than one vmapped point, see :meth:`PointEvaluator._default_vmap_batch`).

Both use :class:`~lossatlas._linear_fold.LinearFold` when ``exact_linear=True``.
Results are float64 numpy arrays per metric; there is one host transfer per call (a chunk of
points), none per point. Problems in a 16-bit dtype (``torch.bfloat16``/``float16``) form each
point in float32 and round it once; their loss is computed from float32 outputs (see
:class:`~lossatlas.Problem`) and accumulated over batches in float64.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ._linear_fold import LinearFold
from .errors import EvaluationError, LossAtlasError, bad_value
from .params import _points

STRATEGIES = ("auto", "loop", "vmap")
VMAP_MEMORY = 512 * 2**20  # bytes of activations and parameter copies a vmapped batch of points may use
VMAP_PARAM_MEMORY = 64 * 2**20  # bytes of parameter copies a vmapped batch may hold beyond one model's
VMAP_MARGIN = 0.9  # "auto" keeps vmap only when it is at least 10 % faster per point: ties go to the loop
VMAP_PROBE_STEP = 8  # points of the first vmap timing in the automatic choice (the full probe only if promising)


LOW_PRECISION = (torch.bfloat16, torch.float16)


def point_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which grid points θ + Σ aᵢdᵢ are formed: float32 for 16-bit problems (one
    rounding to the problem's dtype at the end, coordinates never rounded to 8 bits), else the
    problem's own dtype."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def sum_batches(terms: Tensor) -> Tensor:
    """Σ over the last axis, left to right: ((t₁ + t₂) + t₃) + …, the order in which
    :meth:`Problem.evaluate_tensors` accumulates batches (so results are bit-identical)."""
    if terms.shape[-1] == 0:
        return torch.zeros(terms.shape[:-1], dtype=terms.dtype, device=terms.device)
    total = terms[..., 0]
    for b in range(1, terms.shape[-1]):
        total = total + terms[..., b]
    return total


# below this many points "auto" means "loop": timing both costs more than the work (the first vmapped
# call alone, ~0.1 s on a CPU, was 40 % of an 11×11 plane of the digits MLP: docs/benchmarks.md)
AUTO_MIN_POINTS = 256


def probe_free_strategy(strategy: str, points: int) -> str:
    """``"loop"`` instead of ``"auto"`` for fewer than ``AUTO_MIN_POINTS`` points: the automatic
    choice times up to 74 vmapped points (and vmap's first call), more work than a short path or a
    small grid saves."""
    return "loop" if strategy == "auto" and points < AUTO_MIN_POINTS else strategy


def choice_clock():
    """The clock of the automatic choice: this thread's CPU time when torch runs on one thread (the
    work itself: on a loaded machine a wall-clock timing also counts the time slices other processes
    took, and one stall in the few milliseconds of a probe flipped a 401×401 grid of a tiny net to the
    loop, 37 s instead of 0.1 s), else the wall clock (threads' CPU time would count their spinning)."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


class PointEvaluator:
    """Callable mapping an (m, n) array of coefficients to ``{metric: (m,) float64 array}``.

    ``per_batch=True`` keeps the per-batch terms n_b·value_b/N apart (see :meth:`terms`; used by
    data-parallel evaluation). Results stay on the problem's device until one host transfer per call.
    """

    def __init__(self, problem, center: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]], *,
                 strategy: str = "auto", vmap_batch: int | None = None, exact_linear: bool = True,
                 metrics: bool = True, per_batch: bool = False):
        if strategy not in STRATEGIES:
            raise bad_value("surface", "strategy", f"one of {STRATEGIES}", strategy)
        self.problem = problem
        self.center = dict(center)
        self.directions = [dict(d) for d in directions]
        self.metrics = metrics
        self.per_batch = per_batch
        self.names = list(problem.metric_names) if metrics else ["loss"]
        self.point_dtype = point_dtype(problem.dtype)
        self._vmap_inputs: tuple[list[Tensor], list[list[Tensor]]] | None = None
        self._points = None  # the loop's point former (params/_points.py), kept across chunks
        if problem.bn == "recalibrate" and problem.has_batchnorm and per_batch:
            raise bad_value("surface", "parallel", "'grid' with bn='recalibrate' (recalibrating BatchNorm needs "
                            "every batch at every point)", "data")
        self.fold = LinearFold(problem, self.center, self.directions) if exact_linear else None
        self._stack = contextlib.ExitStack()
        if self.fold is not None:
            self._stack.enter_context(self.fold)
        if problem.bn == "recalibrate" and problem.has_batchnorm and strategy == "vmap":
            raise bad_value("surface", "strategy", "'loop' or 'auto' with bn='recalibrate' (train-mode "
                            "BatchNorm cannot be vmapped)", strategy)
        # the vmap batch is measured (one forward pass) only where vmap may run; None for the loop
        self.vmap_batch = vmap_batch or (self._default_vmap_batch() if strategy != "loop" else None)
        self.strategy = strategy if strategy != "auto" else self._choose()
        self.seconds_per_point: float | None = getattr(self, "_measured", None)

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        self._points = None
        self._stack.close()

    def __enter__(self) -> PointEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- evaluation ------------------------------------------------------------------------------
    def __call__(self, coefficients: np.ndarray) -> dict[str, np.ndarray]:
        out = self._evaluate(coefficients)
        if self.per_batch:
            out = sum_batches(out)
        host = out.cpu().numpy()  # the one device-to-host transfer of the call
        return {k: host[:, j] for j, k in enumerate(self.names)}

    def terms(self, coefficients: np.ndarray) -> Tensor:
        """(m, metrics, batches) float64 per-batch terms on the device (``per_batch=True`` only)."""
        if not self.per_batch:
            raise bad_value("PointEvaluator.terms", "per_batch", "True (set at construction)", self.per_batch)
        return self._evaluate(coefficients)

    def _evaluate(self, coefficients: np.ndarray) -> Tensor:
        coefficients = np.asarray(coefficients, dtype=np.float64).reshape(-1, len(self.directions))
        # the problem's lock for the whole call: parameters bound and the fold armed on a private
        # module that other threads may share (they wait; values are never mixed)
        armed = self.fold.armed() if self.fold is not None else contextlib.nullcontext()
        try:
            with torch.no_grad(), self.problem._guard.lock, armed:
                if self.strategy == "vmap":
                    return self._run_vmap(coefficients)
                return self._run_loop(coefficients)
        except LossAtlasError:
            raise
        except Exception as exc:
            raise EvaluationError(f"surface(): evaluating the model failed with {type(exc).__name__}: {exc}") from exc

    def _values(self, params: Mapping[str, Tensor]) -> Tensor:
        """(metrics,) dataset means, or (metrics, batches) terms with ``per_batch``; float64 on device."""
        problem = self.problem
        if not self.per_batch:
            values = problem.evaluate_tensors(params, metrics=self.metrics)
            return torch.stack([values[k] for k in self.names])
        with problem.bound(params):
            return self._values_bound()

    def _values_bound(self) -> Tensor:
        """:meth:`_values` for parameters already bound into the problem's module."""
        problem = self.problem
        if not self.per_batch:
            values = problem.evaluate_bound(metrics=self.metrics)
            return torch.stack([values[k] for k in self.names])
        rows = []
        guard = problem._guard
        with guard.lock:
            try:
                for b, (batch, n) in enumerate(problem.data):
                    guard.batch = b  # announced to the linear fold, as in Problem.evaluate_bound
                    guard.calls.clear()
                    terms = problem._terms_bound(batch, n, self.metrics)
                    rows.append(torch.stack([terms[k].to(torch.float64) for k in self.names]))
            finally:
                guard.batch = None
                guard.calls.clear()
        return torch.stack(rows, dim=-1)

    def _run_loop(self, coefficients: np.ndarray) -> Tensor:
        problem = self.problem
        keys = list(self.center)
        recalibrate = problem.bn == "recalibrate" and problem.has_batchnorm
        # one set of parameter tensors, bound once; each point overwrites them with θ + Σ aᵢdᵢ computed
        # from θ afresh as ((θ + a₁d₁) + a₂d₂) + … with separately rounded products, like params.lincomb and
        # the vmap strategy (no fused multiply-add, so no dependence on threads): never accumulated steps.
        # Small models: on one flat vector (a few calls a point); big ones: slice by slice into the bound
        # tensors (the point and one slice of scratch beyond θ and the directions); the same bits
        if self._points is None:  # made on the loop's first call, reused by every later chunk
            self._points = _points.former([self.center[k] for k in keys],
                                          [[d[k] for k in keys] for d in self.directions],
                                          problem.dtype, self.point_dtype)
        points = self._points
        params = dict(zip(keys, points.bound))
        rows = []
        with contextlib.ExitStack() as stack:
            if not recalibrate:
                stack.enter_context(problem.bound(params))
            for c in coefficients:
                c = tuple(float(v) for v in c)  # host numbers: no device sync
                points.form(c)
                if self.fold is not None:
                    self.fold.coefficients = c
                rows.append(self._values(params) if recalibrate else self._values_bound())
        if self.fold is not None:
            self.fold.coefficients = None
        return torch.stack(rows)

    def _point_fn(self):
        dtype, fold = self.problem.dtype, self.fold
        keys = list(self.center)
        low = self.point_dtype != dtype
        if self._vmap_inputs is None:  # θ and the directions in the point dtype (float32 copies for
            # 16-bit problems), made on vmap's first call: the loop never needs them
            self._vmap_inputs = ([self.center[k].to(self.point_dtype) for k in keys],
                                 [[d[k].to(self.point_dtype) for k in keys] for d in self.directions])
        centers, dirs = self._vmap_inputs

        def point(c: Tensor):
            # ((θ + c₀d₀) + c₁d₁) + …, products rounded separately (the loop's arithmetic); the batch of
            # points is formed once and updated in place, one tensor's product at a time: B·|θ| plus
            # one tensor's B products, never a second batch of parameter copies
            vals = [t + c[0] * d0 for t, d0 in zip(centers, dirs[0])]
            for j in range(1, len(dirs)):
                for v, dj in zip(vals, dirs[j]):
                    v.add_(c[j] * dj)
            if low:
                vals = [v.to(dtype) for v in vals]
            if fold is not None:
                fold.coefficients = c
            return self._values(dict(zip(keys, vals)))
        return torch.vmap(point, randomness="error")

    def _run_vmap(self, coefficients: np.ndarray) -> Tensor:
        problem = self.problem
        self._points = None  # the loop's buffers ((n + 4)·|θ| for small models) are not vmap's
        fn = self._point_fn()
        outs = []
        for s in range(0, len(coefficients), self.vmap_batch):
            c = torch.as_tensor(coefficients[s:s + self.vmap_batch], dtype=self.point_dtype, device=problem.device)
            outs.append(fn(c))
        if self.fold is not None:
            self.fold.coefficients = None
        return torch.cat(outs)

    # -- automatic choice ------------------------------------------------------------------------
    def _activation_bytes(self) -> int:
        """Bytes of module outputs in one forward pass over the largest batch (a per-point estimate)."""
        problem = self.problem
        total = [0]
        hooks = []

        def hook(mod, args, out):
            if isinstance(out, Tensor):
                total[0] += out.numel() * out.element_size()
        with problem._guard.lock:  # hooks on the shared private module
            for m in problem.module.modules():
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
        """Points per vmapped call B: B·(activations + parameters) ≤ ``VMAP_MEMORY`` and the B parameter
        copies B·|θ| ≤ max(|θ|, ``VMAP_PARAM_MEMORY``) — a model of more than 64 MiB gets B = 1 (its
        points are never materialised side by side: memory stays within a few model sizes)."""
        params = sum(v.numel() for v in self.center.values()) * torch.empty((), dtype=self.point_dtype).element_size()
        params = max(params, sum(v.numel() * v.element_size() for v in self.center.values()), 1)
        by_params = max(params, VMAP_PARAM_MEMORY) // params
        if by_params <= 1:
            return 1  # no forward pass needed to know it
        per_point = self._activation_bytes() + params
        return int(max(1, min(16384, VMAP_MEMORY // per_point, by_params)))

    def _choose(self) -> str:
        """Time a few points with each strategy; keep the faster per point (vmap only when faster by more
        than ``1 − VMAP_MARGIN``: it costs B parameter copies, and a tie within the timing noise of a
        shared machine should not decide for it). vmap is timed on 2 and
        then 8 points first; only when its marginal cost per point is competitive is it timed on the
        full probe (up to 64 points, enough for its per-call overhead to amortise)."""
        if self.problem.bn == "recalibrate" and self.problem.has_batchnorm:
            return "loop"
        if self.vmap_batch < 2:  # one point per vmapped call: vmap's overhead without its batching
            return "loop"
        n = len(self.directions)
        clock = choice_clock()
        rng = np.random.default_rng(0)
        probe = rng.uniform(-1, 1, size=(max(2, min(self.vmap_batch, 64)), n))
        self.strategy = "loop"
        self(probe[:1])  # warm-up
        t = clock()
        loop_pts = max(1, min(3, len(probe)))
        self(probe[:loop_pts])
        loop = (clock() - t) / loop_pts
        self.strategy = "vmap"
        try:
            t = clock()
            self(probe[:2])  # warm-up / does the model vmap at all?
            two = clock() - t
            small = min(len(probe), 2 + VMAP_PROBE_STEP)
            elapsed = 0.0
            if small > 2:
                t = clock()
                self(probe[2:small])
                elapsed = clock() - t
            # the marginal cost of a vmapped point (the per-call overhead cancels): when it already
            # exceeds the loop's cost per point by half, more vmapped points will not win; stop there
            marginal = (elapsed - two) / max(1, small - 4)
            if small == len(probe):
                vm = elapsed / (small - 2) if small > 2 else two / 2
            elif marginal > 1.5 * loop:
                vm = float("inf")
            else:
                t = clock()
                self(probe)
                vm = (clock() - t) / len(probe)
        except EvaluationError:
            vm = float("inf")
        chosen = "vmap" if vm < VMAP_MARGIN * loop else "loop"
        self._measured = vm if chosen == "vmap" else loop
        return chosen
