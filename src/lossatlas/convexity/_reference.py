"""The plain float64 reference evaluation behind every certificate, and its *measured* rounding error.

A certificate's three losses are recomputed here, not by the problem's own evaluation path:

* **plain path** — a float64 deep copy of the problem's private model with lossatlas' faster
  formulations removed (no fold, no transposed GEMM, no in-place ReLU, no fused cross-entropy),
  evaluated by ``torch.func.functional_call`` batch by batch with the user's own loss (or closure);
  the dataset mean Σ n_b·ℓ_b / N is summed exactly (``math.fsum``). Its values are compared with the
  problem's own evaluation and with a second plain run (determinism);
* **precision audit** — every torch operation of the computation is watched (a
  ``TorchDispatchMode``): an operation that *produces* a floating tensor below float64 (a closure
  computing in float32, a ``.float()`` inside the model, an accumulator made in float32) makes the
  triple unusable, and so does a loss that is not a float64 tensor or is not finite;
* **measured rounding error (Monte Carlo arithmetic)** — the computation is re-run
  :data:`MCA_RUNS` times with every float64 operation's inputs and outputs perturbed at random by a
  relative 2^-(53 − :data:`AMPLIFY_BITS`) (and an absolute 2^(−1074 + :data:`AMPLIFY_BITS`), for
  subnormal values): rounding errors magnified 2^AMPLIFY_BITS times, at every operation, wherever
  they occur. The spread of the results measures how far rounding can move *this* computation's
  value, cancellation included (a variance written as mean(z²) − mean(z)² of data with mean 1e4
  moves by ~1e8·eps, not eps·|f|). Perturbing inputs as well as outputs models the backward error
  of compound operations (a matrix product whose terms cancel moves as much as its terms do).

The rounding bound of a Jensen gap J = f_t − (1−t)·f_a − t·f_b is then

    bound = floor + SAFETY·mca + SAFETY·2^AMPLIFY_BITS·(path + repeat)

with ``floor`` = :func:`~lossatlas.convexity.rounding_bound` (3·1e-9·max|f| + 3·eps·max|f|, plus
:data:`ABSOLUTE_FLOOR` for losses near the subnormal range), ``mca`` = (1−t)·s_a + t·s_b + s_t the
largest perturbed-run deviations of the three losses (already magnified 2^AMPLIFY_BITS times),
``path`` the disagreement between the problem's evaluation and the plain path, ``repeat`` that
between two plain runs. So a gap must beat roughly 10⁴ times the measured error of its own
computation and never less than the fixed floor. This is a measurement, not interval arithmetic:
it assumes the loss is a deterministic function computed by torch operations (not numpy or Python
floats inside a closure), whose rounding errors behave like those of random rounding.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils import _pytree as pytree

from .. import _fast_paths
from .. import params as P
from ._jensen import jensen_gap, rounding_bound

#: perturbed (Monte Carlo arithmetic) re-runs of each triple
MCA_RUNS = 4
#: perturbations are 2^AMPLIFY_BITS times the float64 unit roundoff
AMPLIFY_BITS = 10
#: the gap must beat SAFETY × the (magnified) measured spread
SAFETY = 10.0
#: no gap below this is ever accepted: near the subnormal range rounding is absolute, not relative
ABSOLUTE_FLOOR = 2.0 ** -1022 * 2.0 ** 40
#: the problem's own evaluation and the plain path must agree to this relative precision
PATH_AGREEMENT = 1e-7

_U = 2.0 ** (-53 + AMPLIFY_BITS)
_ETA = 2.0 ** (-1074 + AMPLIFY_BITS)

# Operations that compute nothing (copies, selections, shape changes, exact maps, comparisons):
# their result is exact, so they are not perturbed (unknown operations are perturbed: conservative).
_EXACT = {
    "clone", "copy", "copy_", "_to_copy", "detach", "lift_fresh", "lift_fresh_copy", "lift", "alias",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like", "new_zeros",
    "ones", "ones_like", "new_ones", "full", "full_like", "new_full", "fill", "fill_", "zero_", "scalar_tensor",
    "cat", "stack", "index", "index_select", "gather", "take", "embedding", "where", "masked_fill", "masked_fill_",
    "masked_select", "relu", "relu_", "threshold", "threshold_", "neg", "abs", "max", "min", "amax", "amin",
    "maximum", "minimum", "clamp", "clamp_min", "clamp_max", "sign", "max_pool1d", "max_pool2d",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "constant_pad_nd", "flip", "roll", "repeat", "sort",
    "topk", "_local_scalar_dense", "eq", "ne", "lt", "le", "gt", "ge", "isnan", "isinf", "isfinite", "logical_not",
    "logical_and", "logical_or", "argmax", "argmin", "equal", "expand_copy", "permute_copy", "t_copy",
    "transpose_copy", "view_copy", "unsqueeze_copy", "squeeze_copy", "slice_copy", "select_copy", "split_copy",
    "unfold_copy", "_unsafe_view", "contiguous", "unbind", "split", "split_with_sizes", "chunk", "narrow",
    "select_scatter", "slice_scatter", "resize_", "set_",
    "nonzero", "one_hot", "tril", "triu", "diag_embed", "diagonal_copy", "reflection_pad1d", "reflection_pad2d",
    "replication_pad1d", "replication_pad2d", "hardtanh", "hardtanh_", "_unsafe_index", "heaviside", "floor",
    "ceil", "trunc", "round", "frac_", "bitwise_and", "bitwise_or", "logical_xor", "masked_scatter",
}
# operations that may produce a low-precision tensor without computing in low precision (constants)
_CREATION = {"lift_fresh", "lift_fresh_copy", "lift", "scalar_tensor", "empty", "zeros", "ones", "full", "arange",
             "linspace", "logspace", "eye", "rand", "randn", "randint", "randperm", "normal", "tensor"}


def _base_name(func) -> str:
    name = getattr(func, "__name__", str(func))
    return name.split(".")[0]


class _Watch(torch.utils._python_dispatch.TorchDispatchMode):
    """Records operations that produce floating tensors below float64; optionally perturbs every
    inexact float64 operation's inputs and outputs (Monte Carlo arithmetic)."""

    def __init__(self, seed: int | None):
        super().__init__()
        self.low: dict[str, str] = {}
        self.left_torch = ""
        self.seed = seed
        self._gens: dict[torch.device, torch.Generator] = {}
        self._taint: dict[int, tuple[weakref.ref, bool]] = {}

    # data flow from the parameters: which tensors were computed from them by watched operations, and
    # which of those continuously (through floating tensors only: not through a comparison or argmax)
    def taint(self, tensors, continuous: bool = True) -> None:
        for t in tensors:
            if isinstance(t, Tensor):
                self._taint[id(t)] = (weakref.ref(t), continuous and t.is_floating_point())

    def tainted(self, t: Any, *, continuous: bool = False) -> bool:
        entry = self._taint.get(id(t)) if isinstance(t, Tensor) else None
        return entry is not None and entry[0]() is t and (entry[1] or not continuous)

    def _gen(self, device: torch.device) -> torch.Generator:
        g = self._gens.get(device)
        if g is None:
            g = torch.Generator(device=device)
            g.manual_seed(int(self.seed) * 7919 + 17 + len(self._gens))
            self._gens[device] = g
        return g

    def _noise(self, t: Tensor) -> Tensor:
        r = torch.rand(t.shape, dtype=t.dtype, device=t.device, generator=self._gen(t.device)).mul_(2.0)
        r = r.sub_(1.0 + 1.0j) if t.is_complex() else r.sub_(1.0)  # complex: real and imaginary parts
        return r.mul_(t.abs().mul_(_U).add_(_ETA))

    def _perturbable(self, t: Any) -> bool:
        return (isinstance(t, Tensor) and t.dtype in (torch.float64, torch.complex128) and t.layout == torch.strided
                and t.numel() > 0 and not t.requires_grad)

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in torch._dynamo.disable at class creation, which
        # imports torch._dynamo at the first dispatch (3–12 s, the slowest step of a first audit).
        # Nothing can be compiling while torch._dynamo is not imported, so the wrapper is applied
        # lazily in __torch_dispatch__ below, only once it is (same behaviour, no import of our own).
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "torch._dynamo" in sys.modules:
            return _dynamo_disabled_watch()(self, func, types, args, kwargs)
        return self._watch(func, types, args, kwargs)

    def _watch(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _base_name(func)
        schema = getattr(func, "_schema", None)
        mutable = bool(schema is not None and schema.is_mutable)
        view = bool(schema is not None and not mutable and any(r.alias_info is not None for r in schema.returns))
        perturb = self.seed is not None and not view and name not in _EXACT
        inputs = pytree.tree_leaves((args, kwargs))
        from_params = any(self.tainted(t) for t in inputs)
        smooth = from_params and any(self.tainted(t, continuous=True) for t in inputs)
        if smooth and name == "_local_scalar_dense":
            self.left_torch = self.left_torch or "a parameter-dependent float tensor was converted to a Python number"
        if perturb and not mutable:
            args, kwargs = pytree.tree_map(lambda t: t + self._noise(t) if self._perturbable(t) else t, (args, kwargs))
        out = func(*args, **kwargs)
        flat = pytree.tree_leaves(out)
        if from_params:
            self.taint(flat, smooth)
            if mutable:
                self.taint(_written(schema, args, kwargs), smooth)
        if name not in _CREATION:
            for t in flat:
                if isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex()) and \
                        t.dtype not in (torch.float64, torch.complex128):
                    self.low.setdefault(str(t.dtype).replace("torch.", ""), getattr(func, "__name__", name))
        if perturb:
            if mutable:
                for t in flat:
                    if self._perturbable(t):
                        t.add_(self._noise(t))
            else:
                out = pytree.tree_map(lambda t: t + self._noise(t) if self._perturbable(t) else t, out)
        return out


@functools.cache
def _dynamo_disabled_watch():
    """``_Watch._watch`` with dynamo disabled inside it (what torch's TorchDispatchMode does eagerly)."""
    return torch._disable_dynamo(_Watch._watch, recursive=True)


def _written(schema, args, kwargs) -> list[Tensor]:
    """The arguments an in-place / out= operation writes to."""
    out = []
    for i, arg in enumerate(schema.arguments):
        info = arg.alias_info
        if info is None or not info.is_write:
            continue
        value = args[i] if i < len(args) else kwargs.get(arg.name)
        out += [t for t in pytree.tree_leaves(value) if isinstance(t, Tensor)]
    return out


def float64_problem(problem):
    """The problem evaluated in float64 throughout: its float64 variant, with the loss computed in float64
    too (a mixed-precision problem's ``loss_dtype=float32`` is a speed setting, not part of the function)."""
    return problem.replace(dtype=torch.float64, loss_dtype=torch.float64)


def _plain_module(module: nn.Module) -> nn.Module:
    """A float64 deep copy of the problem's private module without lossatlas' faster forwards."""
    ours = {_fast_paths._few_outputs_forward, _fast_paths._sequential_forward}
    m = copy.deepcopy(module)
    for sub in m.modules():
        fwd = sub.__dict__.get("forward")
        func = getattr(fwd, "__func__", None)
        if fwd is not None and (func in ours or getattr(func, "__module__", "").startswith("lossatlas.")):
            del sub.__dict__["forward"]
    for t in list(m.parameters()) + list(m.buffers()):
        if t.is_floating_point() and t.dtype != torch.float64:
            t.data = t.data.to(torch.float64)
    return m.eval()


@dataclass
class Evaluation:
    """Losses of a triple by the plain path, with the measurements behind its rounding bound."""

    losses: dict[str, float]
    gap: float
    bound: float
    floor: float
    error_estimate: float
    measured: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


class Reference:
    """Plain, watched float64 evaluation of a float64 problem's loss (see the module notes)."""

    def __init__(self, p64, snapshot: nn.Module | None = None):
        """``p64``: the float64 problem (its data, loss, closure, settings, and its own evaluation path
        to compare with); ``snapshot``: the module to copy (default ``p64``'s private one) — pass the
        original problem's private module, the model as it was when the problem was made."""
        self.p64 = p64
        self.module = _plain_module(snapshot if snapshot is not None else p64.module)

    # one evaluation -------------------------------------------------------------------------------
    def _value(self, params: Mapping[str, Tensor], watch: _Watch) -> tuple[float, list[str]]:
        p64 = self.p64
        problems: list[str] = []
        with torch.no_grad():
            watch.taint(params.values())
            buffers = None
            if p64.bn == "recalibrate" and p64.has_batchnorm:
                with watch:
                    buffers = p64.recalibrated_buffers(params)
            state = {**dict(params), **(buffers or {})}
            terms = []
            for batch, n in p64.data:
                with watch:
                    if p64.closure is not None:
                        def call(*a, **k):
                            return functional_call(self.module, state, a, k)
                        out = p64.closure(call, batch)
                        raw = out["loss"] if isinstance(out, Mapping) else out
                    else:
                        inputs, targets = batch
                        raw = p64.loss_fn(functional_call(self.module, state, (inputs,)), targets)
                    if not isinstance(raw, Tensor):
                        problems.append(f"the loss returned {type(raw).__name__}, not a tensor")
                        return math.nan, problems
                    value = raw.double().mean() if p64.reduction == "none" else raw
                if raw.dtype != torch.float64:
                    problems.append(f"the loss returned a {str(raw.dtype).replace('torch.', '')} tensor, "
                                    "below the problem's float64")
                if not watch.tainted(value):
                    problems.append("the loss does not depend on the parameters through torch operations that "
                                    "lossatlas can watch (computed in numpy or Python floats?): its rounding is "
                                    "not measured")
                scale = (1.0 / p64.n_samples) if p64.reduction == "sum" else n / p64.n_samples
                terms.append(float(value) * scale)
        if watch.left_torch:
            problems.append(f"the computation leaves torch ({watch.left_torch}): its rounding is not measured")
        if not all(math.isfinite(v) for v in terms):
            return math.nan, problems
        return math.fsum(terms), problems

    def losses(self, points: Mapping[str, Mapping[str, Tensor]], *, seed: int | None = None
               ) -> tuple[dict[str, float], list[str]]:
        """Plain-path losses of named points (``seed``: a Monte Carlo arithmetic run) and the
        precision problems seen."""
        watch = _Watch(seed)
        out, problems = {}, []
        for key, params in points.items():
            value, probs = self._value(params, watch)
            out[key] = value
            problems += probs
        if watch.low:
            ops = ", ".join(f"{op} → {dt}" for dt, op in sorted(watch.low.items()))
            problems.append(f"part of the computation runs below float64 ({ops}): rounding at that precision "
                            "is not measured, so no certificate is issued")
        return out, list(dict.fromkeys(problems))

    @staticmethod
    def _jitter(points, a, b, t: float, seed: int):
        """The runs' x_t moved by the (magnified) rounding of forming (1−t)·a + t·b: up to
        2^-(53−AMPLIFY_BITS)·(|a| + t·|b − a|) per element, relative to the endpoints, not to x_t."""
        g = torch.Generator().manual_seed(1_000_003 + seed)
        moved = {}
        for k, v in points["t"].items():
            r = torch.rand(v.shape, generator=g, dtype=v.dtype).to(v.device).mul_(2.0).sub_(1.0)
            size = (a[k].abs() + t * (b[k] - a[k]).abs()).mul_(_U)
            moved[k] = v + r * size
        return {**points, "t": moved}

    # a triple ------------------------------------------------------------------------------------
    def triple(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor], t: float, *, seed: int = 0) -> Evaluation:
        """Evaluate the Jensen triple (a, b, t) and everything its rounding bound is made of."""
        x_t = P.lincomb(a, [P.sub(b, a)], [t])
        points = {"a": a, "b": b, "t": x_t}
        reasons: list[str] = []
        try:
            ref, problems = self.losses(points)
            again, _ = self.losses(points)
            runs = [self.losses(self._jitter(points, a, b, t, seed * MCA_RUNS + i), seed=seed * MCA_RUNS + i)[0]
                    for i in range(MCA_RUNS)]
        except Exception as exc:  # an operation the watched plain path cannot run: no certificate
            nan = {k: math.nan for k in points}
            text = " ".join(str(exc).split())[:300]
            return Evaluation(nan, math.nan, math.nan, math.nan, math.nan, {},
                              [f"the plain float64 reference evaluation failed ({type(exc).__name__}: {text})"])
        reasons += problems
        fast = {}
        for k, p in points.items():
            try:
                with torch.no_grad():
                    fast[k] = float(self.p64.evaluate_tensors(p, metrics=False)["loss"])
            except Exception as exc:  # the plain path is the reference; a failing fast path is a finding
                reasons.append(f"the problem's own evaluation failed at {k}: {exc}")
                fast[k] = math.nan
        weights = {"a": 1.0 - t, "b": t, "t": 1.0}
        finite = all(math.isfinite(v) for d in [ref, again, *runs] for v in d.values())
        gap = jensen_gap(ref["a"], ref["b"], ref["t"], t)
        floor = rounding_bound(ref["a"], ref["b"], ref["t"]) + ABSOLUTE_FLOOR
        spreads = {k: max((abs(r[k] - ref[k]) for r in runs), default=0.0) for k in points}
        path = {k: abs(fast[k] - ref[k]) for k in points}
        repeat = {k: abs(again[k] - ref[k]) for k in points}
        mca = sum(weights[k] * spreads[k] for k in points)
        observed = sum(weights[k] * max(path[k], repeat[k]) for k in points)
        amplify = 2.0 ** AMPLIFY_BITS
        estimate = max(mca / amplify, observed)
        bound = floor + SAFETY * mca + SAFETY * amplify * observed
        measured = {"mca_spread": spreads, "mca_runs": MCA_RUNS, "amplify_bits": AMPLIFY_BITS,
                    "path_discrepancy": path, "repeat_discrepancy": repeat, "problem_losses": fast}
        if not finite:
            bad = sorted({k for d in [ref, again, *runs] for k, v in d.items() if not math.isfinite(v)})
            reasons.append(f"the loss is not finite at {', '.join('f(' + k + ')' for k in bad)} (NaN/Inf points "
                           "never count as violations)")
            bound = estimate = math.nan
        else:
            scale = max(abs(v) for v in ref.values())
            worst = max(path.values())
            # beyond what rounding explains: more than 1e-7 relative and more than the measured spread
            allowed = {k: PATH_AGREEMENT * scale + SAFETY * spreads[k] + ABSOLUTE_FLOOR for k in points}
            if not all(math.isfinite(v) for v in fast.values()) or any(path[k] > allowed[k] for k in points):
                reasons.append(f"the problem's own evaluation and the plain float64 reference disagree by "
                               f"{worst:.3e} (relative {worst / max(scale, 1e-300):.1e}), more than rounding explains")
        return Evaluation(ref, gap, bound, floor, estimate, measured, reasons)
