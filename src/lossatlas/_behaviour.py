"""Behaviour fingerprints: what a problem *computes*, not what it looks like.

Structural fingerprints (a hash of the model's ``repr``, parameter shapes and fixed tensors, the
loss's ``repr``/qualname) cannot see a ``lambda`` that scales the loss, ``label_smoothing``, or an
activation stored as a plain function inside a custom class. A store resumed with such another
computation would mix its values with the old ones. So the provenance also holds a *behaviour*
entry: the problem evaluated, with its own evaluation code (loss, metrics, reduction, BatchNorm
policy, closure, mixed precision), on a fixed small batch at a few fixed points:

* the batch: the first ``N_SAMPLES`` samples of the first batch (tensors whose leading dimension is
  the batch's sample count are sliced; the whole first batch when slicing fails);
* the points: θ₀ and θ₀ + εₖ·rₖ for ``PROBES`` εₖ, rₖ Gaussian from a fixed seed, scaled per tensor
  to ‖θ₀‖ of that tensor (to unit norm where it is zero), so each probe moves every tensor by εₖ of
  its own size (the farthest far enough that a different activation shows);
* per point: the loss, every metric, and a digest of the model outputs (count, sum, Σ|x|, ‖x‖, a
  fixed weighted sum, the first values) — for closures the closure's loss and metrics.

Values are stored as float64 numbers (non-finite ones as strings). :func:`compare` checks a stored
entry against a fresh one with a tolerance scaled to the evaluation precision (evaluation order and
thread count change the last bits of float32 sums) and returns sentences naming what differs:
model outputs, the loss, or a metric. Nothing of the problem is mutated: evaluations run on the
problem's private module under its lock, with the linear fold's dispatchers removed.

Cost (a fixed part of every plane): one forward pass per point (the outputs are digested from the
evaluation's own pass, after the loss and before the metrics), the probes' draws of models up to
``DRAW_CACHE_ELEMENTS`` parameter elements cached by what they are (seed, probes, parameter shapes),
never by which problem asked.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from . import distributed as D
from ._linear_fold import dispatchers_removed
from .data import map_tensors, tensors_in
from .errors import DistributedError
from .params._draws import row_bounds, slices_exact
from .params._points import slices

__all__ = ["VERSION", "behaviour", "compare", "comparable", "agree", "tolerance"]

VERSION = 1
N_SAMPLES = 16
SEED = 1_407_2026
PROBES = (0.05, 0.3, 1.5)  # relative size of each probe step (per tensor), after the centre
HEAD = 4  # first output values recorded
MIX_MAX = 1 << 20  # at most this many output values enter the weighted sum (a fixed strided subset)
DRAW_CACHE_ELEMENTS = 1 << 18  # models up to this many parameter elements keep their probes' draws
DRAW_CACHE_SIZE = 4  # entries of the draw cache (and of the weighted sum's weights), least recent dropped
WEIGHTS_CACHE_LENGTH = 1 << 16  # the weighted sum's weights are kept for outputs up to this length

_DRAW_LOCK = threading.Lock()
_DRAW_CACHE: OrderedDict[tuple, tuple[tuple[tuple[Tensor, float], ...], ...]] = OrderedDict()
_WEIGHTS: OrderedDict[tuple, Tensor] = OrderedDict()

#: relative tolerance per evaluation precision (the lowest of the model's and the loss's dtype)
RTOL = {torch.float64: 1e-7, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def tolerance(problem) -> float:
    """The relative tolerance used to compare behaviour entries of ``problem``."""
    return max(RTOL.get(problem.dtype, 3e-2), RTOL.get(problem.loss_dtype, 3e-2))


class _OneBatch:
    """A data source of one (fixed) batch, for a shallow view of a problem."""

    def __init__(self, batch: Any, n: int):
        self.batch, self.n = batch, n
        self.n_samples, self.n_batches, self.cached, self.sizes = n, 1, True, [n]

    def __iter__(self):
        yield self.batch, self.n

    def first(self):
        return self.batch, self.n


def _number(v: Any) -> float | str:
    x = float(v)
    return x if math.isfinite(x) else repr(x)  # 'nan', 'inf', '-inf': JSON without NaN literals


def _probe_points(problem) -> Iterator[dict[str, Tensor]]:
    """θ₀, then the probe points one at a time (each made when it is evaluated: one point's memory at
    a time, not ``len(PROBES)`` copies of θ; each tensor formed base + r·k in float64, k = ε‖θ_t‖/‖r‖,
    ‖θ_t‖ computed once for all probes). Models of at most ``DRAW_CACHE_ELEMENTS`` parameter elements
    read r from :func:`_cached_draws`; bigger ones stream each probe (:func:`_streamed_points`)."""
    center = problem.params(copy=False)
    names = problem.param_names
    yield center
    # ‖θ‖ per tensor once for all probes (float64, θ's entries promoted exactly)
    scales = [float(center[n].detach().to("cpu", torch.float64).norm()) or 1.0 for n in names]
    shapes = tuple(tuple(center[n].shape) for n in names)
    if sum(math.prod(s) for s in shapes) > DRAW_CACHE_ELEMENTS:
        yield from _streamed_points(center, names, scales)
        return
    for eps, draws in zip(PROBES, _cached_draws(shapes)):
        point = {}
        for name, scale, (r, rn) in zip(names, scales, draws):
            t = center[name]
            # out of place (the cache's draws are never written), added slice by slice: a whole-tensor
            # add_ would promote θ in one float64 temporary of its size
            q = torch.mul(r, eps * scale / rn)
            _add_promoted(q, t.detach().to("cpu"))
            point[name] = q.to(device=t.device, dtype=t.dtype)
            del q
        yield point


def _streamed_points(center: Mapping[str, Tensor], names, scales) -> Iterator[dict[str, Tensor]]:
    """The probe points of a big model with the same bits, never a float64 tensor of θ's largest size
    alive while a point is made. Each probe takes two passes over the tensors: the first draws r whole,
    one tensor at a time, for its norm (saving the generator state before it); the second regenerates
    r from that state, slice by slice where :func:`lossatlas.params._draws.slices_exact` allows it
    (CPU tensors sliced by :func:`~lossatlas.params._draws.row_bounds`), into the point's tensor."""
    gen = torch.Generator(device="cpu").manual_seed(SEED)
    for eps in PROBES:
        plan = []
        for name, scale in zip(names, scales):
            state = gen.get_state()
            r = torch.randn(tuple(center[name].shape), generator=gen, dtype=torch.float64)
            plan.append((name, state, eps * scale / (float(r.norm()) or 1.0)))
            del r
        yield {name: _probe_tensor(center[name], state, k) for name, state, k in plan}


def _probe_tensor(t: Tensor, state: Tensor, k: float) -> Tensor:
    """θ_t + r·k in float64, rounded to t's dtype, r the draw made from generator ``state``."""
    gen = torch.Generator(device="cpu")
    gen.set_state(state)
    bounds = row_bounds(t.shape) if t.device.type == "cpu" and t.is_contiguous() and slices_exact() else None
    if bounds is None:
        r = torch.randn(tuple(t.shape), generator=gen, dtype=torch.float64)
        r.mul_(k)
        _add_promoted(r, t.detach().to("cpu"))
        return r.to(device=t.device, dtype=t.dtype)
    out = torch.empty(t.shape, dtype=t.dtype)
    src, dst = t.detach().view(-1), out.view(-1)
    for a, b in bounds:
        r = torch.randn(b - a, generator=gen, dtype=torch.float64)
        r.mul_(k)
        r.add_(src[a:b])
        dst[a:b].copy_(r)
    return out


def _cached_draws(shapes: tuple[tuple[int, ...], ...]) -> tuple[tuple[tuple[Tensor, float], ...], ...]:
    """Per probe, the Gaussian draws r of every tensor (float64, CPU, from ``SEED`` in this order) with
    their norms ‖r‖ (1 where zero), from a cache keyed by what they are (seed, probes, dtype, device,
    shapes; ``DRAW_CACHE_SIZE`` entries, least recently used dropped). Read only: never written."""
    def make():
        gen = torch.Generator(device="cpu").manual_seed(SEED)
        made = []
        for _ in PROBES:
            row = []
            for shape in shapes:
                r = torch.randn(shape, generator=gen, dtype=torch.float64)
                row.append((r, float(r.norm()) or 1.0))
            made.append(tuple(row))
        return tuple(made)
    return _cached(_DRAW_CACHE, (SEED, PROBES, torch.float64, "cpu", shapes), make)


def _cached(cache: OrderedDict, key: tuple, make, keep: bool = True) -> Any:
    """``cache[key]``, made by ``make()`` on a miss and kept if ``keep`` (``DRAW_CACHE_SIZE`` entries,
    least recently used dropped; under ``_DRAW_LOCK``, made outside it)."""
    with _DRAW_LOCK:
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return hit
    value = make()
    if keep:
        with _DRAW_LOCK:
            cache[key] = value
            while len(cache) > DRAW_CACHE_SIZE:
                cache.popitem(last=False)
    return value


def _add_promoted(r: Tensor, t: Tensor) -> None:
    """``r += t`` (``r`` float64, ``t`` any float dtype) without a float64 copy of the whole ``t``: in the
    point formation's slices (:func:`lossatlas.params._points.slices`); elementwise, so the same bits."""
    if not (r.is_contiguous() and t.is_contiguous()):
        r.add_(t)
        return
    for a, b in zip(slices(r), slices(t)):
        a.add_(b)


def _digest(outputs: Any) -> dict[str, Any] | None:
    leaves = [t for t in tensors_in(outputs) if t.is_floating_point()] if outputs is not None else []
    if not leaves:
        return None
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in leaves])
    n = flat.numel()
    sub = flat[:: max(1, -(-n // MIX_MAX))]
    w = _weights(sub.numel(), sub.device)
    # the four sums and the first values in one host transfer
    values = torch.cat([torch.stack([flat.sum(), flat.abs().sum(), flat.norm(), (w * sub).sum()]),
                        flat[:HEAD]]).tolist()
    return {"n": int(n), "sum": _number(values[0]), "abs": _number(values[1]), "norm": _number(values[2]),
            "mix": _number(values[3]), "head": [_number(v) for v in values[4:]]}


def _weights(n: int, device: torch.device) -> Tensor:
    """The weighted sum's fixed weights sin(0.7548776662466927·i + 0.5), i < ``n`` (float64; read only:
    kept per length and device for lengths up to ``WEIGHTS_CACHE_LENGTH``)."""
    return _cached(_WEIGHTS, (n, str(device)),
                   lambda: torch.sin(torch.arange(n, device=device, dtype=torch.float64) * 0.7548776662466927 + 0.5),
                   keep=n <= WEIGHTS_CACHE_LENGTH)


def _fixed_batch(problem) -> list[tuple[Any, int, bool]]:
    batch, n = problem.data.first()
    k = min(int(n), N_SAMPLES)
    if k == n:
        return [(batch, n, False)]
    sliced = map_tensors(batch, lambda t: t[:k] if t.ndim >= 1 and t.shape[0] == n else t)
    return [(sliced, k, True), (batch, n, False)]


def behaviour(problem) -> dict[str, Any]:
    """The behaviour entry of ``problem`` (JSON-able): see the module docstring."""
    guard = problem._guard
    error: Exception | None = None
    with torch.no_grad(), guard.lock, dispatchers_removed(guard):
        for batch, k, sliced in _fixed_batch(problem):
            view = problem.replace(data=_OneBatch(batch, k))  # same module, lock and settings; one batch
            try:
                records = []
                for point in _probe_points(problem):
                    records.append(_evaluate(view, batch, point))
                    del point  # the next point is made with this one freed
            except Exception as exc:  # e.g. a closure that cannot take a sliced batch: use the whole one
                error = exc
                continue
            return _entry(problem, k, sliced, records)
    # the whole first batch failed too at a probe point (the problem's own probe at θ₀ did not): an entry
    # that records why, which compare() cannot use (the caller notes it)
    return _entry(problem, 0, False, None, error=f"{type(error).__name__}: {error}"[:200])


def _entry(problem, k: int, sliced: bool, records, error: str | None = None) -> dict[str, Any]:
    rtol = tolerance(problem)
    for r in records or ():
        rtol = max(rtol, r.pop("_rtol"))
    out = {"version": VERSION, "samples": int(k), "sliced": bool(sliced), "seed": SEED,
           "probes": [0.0, *PROBES], "rtol": rtol, "points": records}
    if error is not None:
        out["error"] = error
    return out


def comparable(stored: Any, now: Any) -> bool:
    """Whether two behaviour entries were made by the same scheme and both hold values."""
    if not isinstance(stored, Mapping) or not isinstance(now, Mapping):
        return False
    if any(stored.get(k) != now.get(k) for k in ("version", "probes", "seed")):
        return False
    # values on at least one side: a side whose evaluation raised differs from one that gave values
    return isinstance(stored.get("points"), list) or isinstance(now.get("points"), list)


def _evaluate(view, batch: Any, point: Mapping[str, Tensor]) -> dict[str, Any]:
    buffers = view._recalibrated_buffers(point) if view.bn == "recalibrate" and view.has_batchnorm else None
    seen: dict[str, Any] = {}

    def record(outputs: Any, raw: Any) -> None:  # the digest of the evaluation's own outputs, taken after
        # the loss (as a second pass's would be) and before the metrics run
        seen["outputs"], seen["_rtol"] = _digest(outputs), _precision(outputs, raw)
    with view.bound(point, buffers):
        terms = view.evaluate_bound(metrics=True, seen=record)
        if not seen:  # no batch reported its outputs: a second pass over the fixed batch
            outputs, raw, _ = view._forward_bound(batch)
            record(outputs, raw)
    out: dict[str, Any] = {"loss": _number(terms["loss"])}
    out["metrics"] = {k: _number(v) for k, v in sorted(terms.items()) if k != "loss"}
    out["outputs"], out["_rtol"] = seen["outputs"], seen["_rtol"]
    return out


def _precision(outputs: Any, raw: Any) -> float:
    """The tolerance of the precision actually met: a float64 problem whose loss or closure computes in
    float32 rounds like float32 (thread count and evaluation order then change more than float64's
    last bits)."""
    seen = [t.dtype for t in tensors_in((outputs, raw)) if t.is_floating_point()]
    return max([RTOL.get(dt, RTOL[torch.bfloat16]) for dt in seen], default=0.0)


# -- comparing ----------------------------------------------------------------------------------------
def _where(i: int) -> str:
    return "at the centre" if i == 0 else f"at probe {i}"


def _fmt(v: Any) -> str:
    return v if isinstance(v, str) else f"{v:.7g}"


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return abs(a - b) <= tol


def compare(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Sentences naming what differs between two behaviour entries (empty: the same computation)."""
    if not comparable(stored, now):
        return []  # another fingerprint scheme, or no values: not comparable (the caller notes it)
    if not isinstance(stored.get("points"), list) or not isinstance(now.get("points"), list):
        raised, fine = (now, "now") if not isinstance(now.get("points"), list) else (stored, "when stored")
        return [f"the evaluation at the fixed points raised {'now' if fine == 'now' else 'when stored'} "
                f"({raised.get('error')}) and gave values {'when stored' if fine == 'now' else 'now'}"]
    if stored.get("samples") != now.get("samples"):
        return [f"the fixed batch has {now.get('samples')} samples now, {stored.get('samples')} when stored "
                "— different data?"]
    rtol = max(float(stored.get("rtol", 0.0)), float(now.get("rtol", 0.0)))
    sp, np_ = stored.get("points", []), now.get("points", [])
    out_diff: list[str] = []
    loss_diff: list[str] = []
    metric_diff: list[str] = []
    losses = [abs(p["loss"]) for p in sp if not isinstance(p["loss"], str)]
    scale = max(losses, default=0.0)
    for i, (a, b) in enumerate(zip(sp, np_)):
        da, db = a.get("outputs"), b.get("outputs")
        if (da is None) != (db is None):
            out_diff.append(f"the model outputs {_where(i)} are {'absent' if db is None else 'present'} now and "
                            f"were {'absent' if da is None else 'present'} when stored")
        elif da is not None and not out_diff:
            why = _outputs_differ(da, db, rtol)
            if why:
                out_diff.append(f"the model outputs differ {_where(i)} ({why}) — a different model (an activation, "
                                "a buffer, a layer)?")
        la, lb = a["loss"], b["loss"]
        if not loss_diff and not _close(la, lb, rtol * (max(_mag(la), _mag(lb)) + scale)):
            what = "closure's loss" if da is None and db is None else "loss"
            loss_diff.append(f"the {what} {_where(i)} differs: {_fmt(la)} stored vs {_fmt(lb)} now — "
                             f"a different {'closure' if what != 'loss' else 'loss function'}?")
        ma, mb = a.get("metrics", {}), b.get("metrics", {})
        if sorted(ma) != sorted(mb):
            if not metric_diff:
                metric_diff.append(f"the metrics are {sorted(mb)} now, {sorted(ma)} when stored")
            continue
        for name in sorted(ma):
            va, vb = ma[name], mb[name]
            if not metric_diff and not _close(va, vb, rtol * (max(_mag(va), _mag(vb)) + 1.0)):
                metric_diff.append(f"the metric {name!r} {_where(i)} differs: {_fmt(va)} stored vs {_fmt(vb)} now "
                                   "— a different metric function?")
    if out_diff:  # the loss and metrics differ as a consequence: say so, without guessing at the loss
        return out_diff + [d.split(" — ")[0].replace(" differs:", " differs too:") for d in loss_diff]
    return loss_diff + metric_diff


def _mag(v: Any) -> float:
    return 0.0 if isinstance(v, str) else abs(v)


def _outputs_differ(a: Mapping[str, Any], b: Mapping[str, Any], rtol: float) -> str:
    if a.get("n") != b.get("n"):
        return f"{b.get('n')} values now, {a.get('n')} stored"
    size = max(_mag(a["abs"]), _mag(b["abs"]))
    per = size / max(1, int(a["n"]))
    checks = [("Σ|x|", a["abs"], b["abs"], rtol * size), ("‖x‖", a["norm"], b["norm"],
              rtol * max(_mag(a["norm"]), _mag(b["norm"]))),
              ("sum", a["sum"], b["sum"], rtol * size), ("weighted sum", a["mix"], b["mix"], rtol * size)]
    checks += [(f"value {j}", x, y, rtol * (max(_mag(x), _mag(y)) + per))
               for j, (x, y) in enumerate(zip(a.get("head", []), b.get("head", [])))]
    for label, x, y, tol in checks:
        if not _close(x, y, tol):
            return f"{label} {_fmt(x)} stored vs {_fmt(y)} now"
    return ""


def agree(entry: Mapping[str, Any], *, func: str, context=None) -> dict[str, Any]:
    """Rank 0's ``entry`` on every rank, after checking (with the tolerance) that every rank computed
    the same behaviour: the provenance must be bit-identical across ranks, the evaluation need not be.
    A single process returns ``entry``."""
    ctx = context or D.context()
    if not ctx.active:
        return dict(entry)
    every = ctx.gather(dict(entry))
    for r, other in enumerate(every):
        diffs = compare(every[0], other) if r else []
        if diffs:
            raise DistributedError(
                f"{func}(): rank {r} has a different computation than rank 0 (differs in: behaviour — {diffs[0]}); "
                "every rank must build the same problem (seed the model's initialisation, load the same checkpoint "
                "and data, pass the same loss, metrics and arguments)")
    return dict(every[0])


def describe_missing(func: str, path: str) -> str:
    return (f"{func}(): the store at {path!r} predates behaviour fingerprints (it was made by an older lossatlas): "
            "resumed after checking its structural fingerprints only (model structure and fixed tensors, data, "
            "the loss's description, settings); a loss or model that differs only in behaviour (a lambda, "
            "label_smoothing, an activation held as a function) cannot be detected for it")


def describe_incomparable(func: str, path: str, stored: Any = None, now: Any = None) -> str:
    if isinstance(stored, Mapping) and isinstance(now, Mapping) and stored.get("version") == now.get("version") \
            and stored.get("error") and now.get("error"):
        why = f"the evaluation at its fixed points raises ({now.get('error')})"
    else:
        why = "it holds a behaviour fingerprint of another scheme"
    return (f"{func}(): the store at {path!r} could not be compared by behaviour ({why}): resumed after "
            "checking its structural fingerprints only")
