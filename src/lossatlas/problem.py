"""``Problem``: a model, a loss and data, evaluated at arbitrary parameter values.

The dataset loss is the exact sample mean

    L(θ) = Σ_b n_b · ℓ_b(θ) / N,

where ℓ_b is the loss of batch b (a per-sample mean), n_b its number of samples and N = Σ n_b.
Evaluation goes through ``torch.func.functional_call`` on a private copy of the model that is
always in eval mode: the user's module is never written to, moved, or switched to another mode.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import numbers
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from . import params as P
from .params._cow import lazy_clone
from ._behaviour import behaviour
from ._fast_paths import fast_cross_entropy, patch_private_module
from ._linear_fold import _bitwise_equal, dispatchers_removed
from .data import BatchSource, map_tensors, tensors_in
from .errors import (public, DataError, DataWriteWarning, DifferentiationError, EvaluationError, InvalidArgumentError,
                     LossAtlasError, LossFunctionError, ParameterMismatchError, bad_type, bad_value, current_function,
                     describe)

__all__ = ["Problem"]

_BN_MODES = ("eval", "recalibrate")
_LOW_PRECISION = (torch.bfloat16, torch.float16)
MetricFn = Callable[[Tensor, Any], Tensor]


def _loss_reduction(loss: Any) -> str:
    """The reduction of a torch loss module or a ``functools.partial`` of a functional loss."""
    if isinstance(loss, functools.partial):
        return str(loss.keywords.get("reduction", "mean"))
    return str(getattr(loss, "reduction", "mean"))


class _Guard:
    """What a Problem shares with the shallow copies that evaluate the same private module.

    * ``lock``: a re-entrant lock held while the private module is in use (parameters bound into
      it, BatchNorm switched to train mode for recalibration, hooks or fold dispatchers installed):
      a Problem may be shared between threads; their evaluations are serialised, never interleaved.
    * ``batch``/``calls``: the index of the batch that an evaluation loop is running and the calls
      made so far per layer (how the linear fold finds the products of an input).
    * ``fold``/``patches``: the fold in use and the installed fold dispatchers (``_linear_fold``).

    A deep copy (of a Problem, or of its module) gets a fresh guard: it evaluates its own module.
    """

    __slots__ = ("lock", "batch", "calls", "fold", "patches")

    def __init__(self):
        self.lock = threading.RLock()
        self.batch: int | None = None
        self.calls: dict[int, int] = {}
        self.fold: Any = None
        self.patches: dict[int, list] = {}

    def __deepcopy__(self, memo) -> _Guard:
        return _Guard()

    def __reduce__(self):
        return (_Guard, ())


class Problem:
    """A model, a loss and data: ``loss(θ)``, ``evaluate(θ)``, ``grad(θ)`` at any parameters θ.

    Parameters
    ----------
    model
        Any ``nn.Module``. It is deep-copied (onto ``device``/``dtype``) and the copy is evaluated
        in eval mode (dropout off, BatchNorm running statistics); the original is never modified.
        The copy is a snapshot: changing the model afterwards (weights, buffers, submodules)
        changes neither this problem nor the variants :meth:`with_dtype` derives from it.
    loss
        ``loss(outputs, targets) -> scalar tensor``, e.g. ``nn.CrossEntropyLoss()``. The batch value
        is read as a per-sample mean. Losses with ``reduction="sum"`` contribute ``ℓ_b / N`` (so the
        problem's loss is the mean over samples of the per-sample summed loss); ``reduction="none"``
        outputs are averaged like ``"mean"``. May be ``None`` when ``closure`` is given.
    data
        ``(inputs, targets)`` tensors, a ``Dataset``, a ``DataLoader`` or a re-iterable of batches.
        Batches are moved to ``device`` once and cached (as private copies) when they fit in
        ``max_cache_bytes``, else streamed at each evaluation, each pass checked against the batch
        sizes counted at construction (:class:`~lossatlas.DataError` when they differ). Batches
        with no sample are skipped (they hold no term of the mean).
    closure
        ``closure(model_call, batch) -> loss`` for batches that are not ``(inputs, targets)`` pairs;
        ``model_call(*args, **kwargs)`` runs the model at the point being evaluated. The closure may
        return a dict with a ``"loss"`` entry and further metrics (each a per-sample batch mean).
        The number of samples of a batch is the leading dimension of its first tensor.
    device, dtype
        Where and in which floating precision to evaluate (default: those of the model's first
        parameter). ``torch.float64`` is supported end to end. ``torch.bfloat16`` (or ``float16``)
        is mixed precision: the model runs in 16 bits and its outputs are cast to ``loss_dtype``
        before the loss, so the loss is computed and averaged over samples in float32 and summed
        over batches in float64 (measured on the mlp-digits example: see the README).
    loss_dtype
        Precision of the loss computation (default: ``float32`` for 16-bit ``dtype``, else ``dtype``);
        e.g. ``torch.float64`` for a 16-bit forward with a float64 loss.
    batch_size
        Batch size for tensors and Datasets (default: all samples, at most 8192 per batch).
    bn
        ``"eval"`` (stored running statistics) or ``"recalibrate"`` (recompute BatchNorm statistics
        from the data at every point, as a sample-weighted average of per-batch statistics).
    metrics
        ``"auto"`` (accuracy for classification targets), ``None``, or a dict/list of metrics:
        the string ``"accuracy"`` or callables ``fn(outputs, targets) -> scalar`` (batch means).

    A problem may be shared between threads: evaluations hold a per-problem re-entrant lock while
    they use the private model, so they are serialised (correct values, no speed-up).

    Example
    -------
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> problem = Problem(model, torch.nn.CrossEntropyLoss(), (x, y))
    >>> sorted(problem.evaluate(problem.params()))
    ['accuracy', 'loss']
    """

    @public("Problem")
    def __init__(
        self,
        model: nn.Module,
        loss: Callable[..., Tensor] | None,
        data: Any,
        *,
        closure: Callable[..., Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int | None = None,
        bn: str = "eval",
        metrics: Any = "auto",
        max_cache_bytes: int | None = None,
        loss_dtype: torch.dtype | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise bad_type("Problem", "model", "a torch.nn.Module", model)
        if closure is None and loss is None:
            raise bad_value("Problem", "loss", "a callable loss(outputs, targets) (or pass closure=)", loss)
        if loss is not None and not callable(loss):
            raise bad_type("Problem", "loss", "a callable loss(outputs, targets)", loss)
        if closure is not None and not callable(closure):
            raise bad_type("Problem", "closure", "a callable closure(model_call, batch) or None", closure)
        if bn not in _BN_MODES:
            raise bad_value("Problem", "bn", f"one of {_BN_MODES}", bn)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise InvalidArgumentError(
                "Problem(): argument 'model' must have at least one trainable parameter "
                "(requires_grad=True); received a model with none")
        for n, p in trainable:
            if not p.is_floating_point():
                raise bad_value("Problem", f"model parameter {n!r}", "a floating-point tensor", p)
        first = trainable[0][1]
        for n, t in [*trainable, *model.named_buffers()]:
            if t.device.type == "meta":
                raise bad_value("Problem", "model", "a model whose parameters and buffers hold values (not on "
                                "the 'meta' device; load or materialise its weights first)",
                                f"{n!r} on the meta device")
        self.device = _as_device(device) if device is not None else first.device
        if dtype is None:
            dtype = first.dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise bad_value("Problem", "dtype", "a floating torch.dtype (e.g. torch.float32, torch.float64)", dtype)
        self.dtype = dtype
        if loss_dtype is not None and (not isinstance(loss_dtype, torch.dtype) or not loss_dtype.is_floating_point):
            raise bad_value("Problem", "loss_dtype", "a floating torch.dtype or None", loss_dtype)
        self._loss_dtype_arg = loss_dtype
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise bad_value("Problem", "device", "an available device (CUDA is not available here)", str(device))

        self.model = model  # the user's module: never written, and never read again after construction
        self._guard = _Guard()
        self.loss_fn = loss
        self._loss_call = fast_cross_entropy(loss) or loss  # same values, a faster CPU layout
        self.closure = closure
        self.bn = bn
        self.reduction = _loss_reduction(loss) if loss is not None else "mean"
        self.param_names: tuple[str, ...] = tuple(n for n, _ in trainable)

        # the snapshot: the private copy (and, where its dtype cannot hold them exactly, the original
        # values of frozen parameters and buffers) is all that is ever evaluated or re-derived
        self._module = self._private_copy(model)
        self._originals = _inexact_originals(model, self.dtype, self.param_names)
        self._center = _center_of(self._module, self.param_names)
        self._param_slots = _slots(self._module, self.param_names, buffers=False)
        kind = _class_index_loss(loss) if closure is None else None
        summarise = functools.partial(_batch_label_summary, ignore_index=kind[1]) if kind is not None else None
        self.data = BatchSource(data, device=self.device, dtype=self.dtype, batch_size=batch_size,
                                max_cache_bytes=max_cache_bytes, summarise=summarise)
        self.n_samples = self.data.n_samples
        self._bn_modules = _bn_modules(self._module)
        self._metric_fns: dict[str, MetricFn] = {}
        self._probe(metrics)

    # ------------------------------------------------------------------------------------------
    def _private_copy(self, model: nn.Module) -> nn.Module:
        try:
            module = copy.deepcopy(model)
        except Exception as exc:  # pragma: no cover - exotic modules
            raise EvaluationError(f"Problem(): argument 'model' could not be copied ({exc}); lossatlas "
                                  "evaluates a private copy so that your model is never modified") from exc
        module.to(device=self.device)
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point() and t.dtype != self.dtype:
                t.data = t.data.to(self.dtype)
        module.eval()
        patch_private_module(module)  # the private copy only: same values, faster layouts and in-place ReLU
        for p in module.parameters():
            p.requires_grad_(False)
        return module

    def _probe(self, metrics: Any) -> None:
        """Evaluate the first batch at θ₀: checks the loss and decides the metrics, before heavy work."""
        batch, n = self.data.first()
        given = map_tensors(batch, torch.clone) if self.data.cached else None
        if self.closure is None:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise bad_value("Problem", "data", "batches of (inputs, targets) pairs, or pass closure= for "
                                "other batch layouts", batch)
        labels: list[_LabelCheck | None] = [None]

        def before_loss(outputs: Any, targets: Any) -> None:  # class labels checked before the loss sees them
            labels[0] = _LabelCheck.of(self.loss_fn, outputs, targets)
            if labels[0] is not None:
                labels[0](targets, 0)
        with torch.no_grad():
            try:
                with self.bound(self._center):
                    outputs, raw_loss, extra = self._forward_bound(batch, before_loss)
            except (LossFunctionError, InvalidArgumentError, DataError):
                raise
            except Exception as exc:
                raise EvaluationError(f"Problem(): the model or loss raised {type(exc).__name__} on the first "
                                      f"batch: {_one_line(exc)}") from exc
        self._check_loss_value(raw_loss)
        self._check_labels(labels[0])
        self._metric_fns = self._resolve_metrics(metrics, outputs, batch)
        with torch.no_grad():  # each metric once on the first batch: a bad one fails here, by name
            for name, fn in self._metric_fns.items():
                _metric_value(name, fn, outputs, batch[1])
        self.metric_names: tuple[str, ...] = ("loss", *self._metric_fns, *sorted(extra))
        if given is not None and not _same_tensors(batch, given):
            self._keep_batches_as_given(batch, given)

    def _keep_batches_as_given(self, batch: Any, given: Any) -> None:
        """The first evaluation wrote into the cached first batch (compared by value, so writes no
        version counter sees count too): restore it and hand the model copies from now on."""
        for t, g in zip(tensors_in(batch), tensors_in(given)):
            t.copy_(g)
        self.data.copy_batches = True
        warnings.warn(DataWriteWarning(
            "Problem(): the model, loss or a metric wrote into the batch it was given (e.g. an in-place "
            "operation on its inputs or a .data write); every evaluation now gets private copies of the "
            "cached batches (one copy of the data per evaluation), so every point sees the same data"),
            stacklevel=4)

    def _check_labels(self, check: _LabelCheck | None) -> None:
        """Class labels of every batch checked against the model's number of classes: once per cached
        batch (here, at construction: no cost per evaluation); for streamed data from the summaries
        the counting pass recorded (no extra pass), then at every pass, each batch before it is moved.
        A label out of range would otherwise be an IndexError in the loss on the CPU, and on CUDA a
        device-side assert that leaves the process unable to use the GPU."""
        self.data.check_batch = None
        if check is None:
            return
        if self.data.cached:
            for b, (batch, _) in enumerate(self.data):
                if b:
                    check(batch[1], b)
        else:  # as summarised by the pass that counted the batches, and each batch at every later pass
            for b, summary in enumerate(self.data.summaries or ()):
                check.check(summary, b)
            self.data.check_batch = check.batch

    def _check_loss_value(self, value: Any) -> None:
        who = "closure" if self.closure is not None else "loss"
        if not isinstance(value, Tensor):
            raise LossFunctionError(f"Problem(): argument '{who}' must return a scalar tensor; received "
                                    f"{type(value).__name__}")
        if value.ndim != 0 and self.reduction != "none":
            raise LossFunctionError(f"Problem(): argument '{who}' must return a scalar tensor (a batch mean); "
                                    f"received a tensor of shape {tuple(value.shape)} (use reduction='mean')")
        if not value.is_floating_point():
            raise LossFunctionError(f"Problem(): argument '{who}' must return a floating-point tensor; "
                                    f"received dtype {value.dtype}")

    def _resolve_metrics(self, metrics: Any, outputs: Any, batch: Any) -> dict[str, MetricFn]:
        if metrics is None:
            return {}
        if metrics == "auto":
            if self.closure is not None:
                return {}
            fn = _auto_accuracy(self.loss_fn, outputs, batch[1])
            return {"accuracy": fn} if fn is not None else {}
        items: list[tuple[str, Any]]
        if isinstance(metrics, Mapping):
            items = list(metrics.items())
        elif isinstance(metrics, (list, tuple)):
            items = [(m if isinstance(m, str) else getattr(m, "__name__", f"metric{i}"), m)
                     for i, m in enumerate(metrics)]
        else:
            raise bad_type("Problem", "metrics", "'auto', None, a list or a dict of metrics", metrics)
        out: dict[str, MetricFn] = {}
        for name, m in items:
            if name == "loss":
                raise bad_value("Problem", "metrics", "names other than 'loss'", name)
            if m == "accuracy":
                if self.closure is not None:
                    raise bad_value("Problem", "metrics", "callables when closure= is used (return extra "
                                    "metrics from the closure instead)", m)
                fn = _auto_accuracy(self.loss_fn, outputs, batch[1])
                if fn is None:
                    raise bad_value("Problem", "metrics", "'accuracy' only for classification outputs and "
                                    "targets", m)
                out[name] = fn
            elif callable(m):
                out[name] = m
            else:
                raise bad_value("Problem", "metrics", "'accuracy' or callables fn(outputs, targets)", m)
        return out

    # ------------------------------------------------------------------------------------------
    def params(self, *, copy: bool = True) -> P.Params:
        """θ₀: a copy of the model's trainable parameters (as given) in the problem's dtype/device.

        ``copy=False``: the problem's own tensors, for reading only (no parameter-sized copy; what a
        plane of a big model needs) — write to them and every later evaluation changes.
        """
        if not isinstance(copy, bool):
            raise bad_type("Problem.params", "copy", "a bool", copy)
        return P.clone(self._center) if copy else dict(self._center)

    def check_params(self, params: Mapping[str, Tensor], *, func: str | None = None, arg: str = "params") -> None:
        """Raise a clear error unless ``params`` has exactly the problem's trainable parameters (messages
        name ``func``, default: the public function running, else ``Problem.loss``)."""
        func = func or current_function("Problem.loss", innermost=True)
        P.check_like(self._center, params, func=func, arg=arg, ref_arg="the problem's parameters")

    @contextlib.contextmanager
    def bound(self, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor] | None = None):
        """Place ``params`` (and ``buffers``) into the private model for the duration of the block:
        the same effect as ``torch.func.functional_call`` (tied parameters included) without its
        per-call bookkeeping. Originals are restored on every exit path. The problem's lock is held
        for the block: another thread using the problem waits (values are never mixed). θ₀'s own
        tensors are bound as copy-on-write clones (no copy unless written): a model that writes into
        its parameters in forward (under ``no_grad``, or through ``.data``) cannot change θ₀."""
        with self._guard.lock:
            saved = []
            center = self._center
            try:
                for name, t in params.items():
                    if t is center.get(name):
                        t = lazy_clone(t)
                    for owner, attr in self._param_slots[name]:
                        saved.append((owner._parameters, attr, owner._parameters[attr]))
                        owner._parameters[attr] = t
                if buffers:
                    slots = self._buffer_slots()
                    for name, t in buffers.items():
                        for owner, attr in slots[name]:
                            saved.append((owner._buffers, attr, owner._buffers[attr]))
                            owner._buffers[attr] = t
                yield self._module
            finally:
                for table, attr, original in reversed(saved):
                    table[attr] = original

    def _buffer_slots(self):
        if not hasattr(self, "_buffer_slot_cache"):
            names = [n for n, _ in self._module.named_buffers()]
            self._buffer_slot_cache = _slots(self._module, names, buffers=True)
        return self._buffer_slot_cache

    def model_call(self, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor] | None = None):
        """``f(*args, **kwargs)`` running the (private, eval-mode) model at ``params``."""
        def call(*args, **kwargs):
            with self.bound(params, buffers):
                return self._module(*args, **kwargs)
        return call

    @property
    def loss_dtype(self) -> torch.dtype:
        """The dtype of model outputs fed to the loss (float32 for 16-bit problems unless set)."""
        if self._loss_dtype_arg is not None:
            return self._loss_dtype_arg
        return torch.float32 if self.dtype in _LOW_PRECISION else self.dtype

    def _upcast(self, outputs: Any) -> Any:
        target = self.loss_dtype
        return map_tensors(outputs, lambda t: t.to(target) if t.is_floating_point() and t.dtype != target else t)

    def _upcasting_call(self, *args, **kwargs):
        """The private model's call with its outputs cast to ``loss_dtype`` (16-bit closures)."""
        return self._upcast(self._module(*args, **kwargs))

    def _forward_bound(self, batch, before_loss=None):
        """(outputs, raw loss value, extra closure metrics) for one batch, parameters already bound;
        ``before_loss(outputs, targets)`` (the construction probe) runs between the model and the loss."""
        if self.closure is not None:
            module = self._module if self.loss_dtype == self.dtype else self._upcasting_call
            out = self.closure(module, batch)
            if isinstance(out, Mapping):
                if "loss" not in out:
                    raise LossFunctionError("Problem(): argument 'closure' returned a dict without a 'loss' "
                                            f"entry; received keys {sorted(out)}")
                extra = {k: v for k, v in out.items() if k != "loss"}
                return None, out["loss"], extra
            return None, out, {}
        inputs, targets = batch
        outputs = self._module(inputs)
        if self.loss_dtype != self.dtype:
            outputs = self._upcast(outputs)
        if before_loss is not None:
            before_loss(outputs, targets)
        return outputs, self._loss_call(outputs, targets), {}

    def _forward_batch(self, params, batch, buffers=None):
        with self.bound(params, buffers):
            return self._forward_bound(batch)

    def weighted_loss(self, raw: Tensor, n: int) -> Tensor:
        """A batch's loss as the loss function returned it (reduced by its ``reduction``) turned into
        its share n_b ℓ_b / N of the dataset mean: the one place batches are weighted."""
        if self.reduction == "sum":
            return raw / self.n_samples
        weight = n / self.n_samples
        if self.reduction == "none":
            return raw.mean() * weight
        return raw * weight if weight != 1.0 else raw

    def _terms_bound(self, batch: Any, n: int, metrics: bool, seen=None) -> dict[str, Tensor]:
        outputs, raw, extra = self._forward_bound(batch)
        if seen is not None:  # shown the model outputs and raw loss before the metrics run
            seen(outputs, raw)
        weight = n / self.n_samples
        terms = {"loss": self.weighted_loss(raw, n)}
        if metrics:
            for name, fn in self._metric_fns.items():
                value = _metric_value(name, fn, outputs, batch[1])
                terms[name] = value * weight if weight != 1.0 else value
            for name, v in extra.items():
                terms[name] = torch.as_tensor(v) * weight
        return terms

    def batch_terms(self, params: Mapping[str, Tensor], batch: Any, n: int,
                    buffers: Mapping[str, Tensor] | None = None, *, metrics: bool = True) -> dict[str, Tensor]:
        """Per-batch contributions ``{name: n_b·value_b / N}`` (0-d tensors, differentiable) whose sum
        over batches is the dataset mean of the loss and of each metric."""
        with self.bound(params, buffers):
            return self._terms_bound(batch, n, metrics)

    def batch_loss(self, params: Mapping[str, Tensor], batch: Any, n: int,
                   buffers: Mapping[str, Tensor] | None = None) -> Tensor:
        """ℓ_b(θ), the mean loss over one batch of ``n`` samples (a differentiable 0-d tensor): the
        batch's share of :meth:`batch_terms` rescaled by N / n_b (for stochastic steps over batches)."""
        return self.batch_terms(params, batch, n, buffers, metrics=False)["loss"] * (self.n_samples / n)

    def evaluate_tensors(self, params: Mapping[str, Tensor], *, metrics: bool = True) -> dict[str, Tensor]:
        """Dataset means as float64 0-d tensors on the device (no host sync; ``vmap``-compatible
        for ``bn="eval"``). Internal fast path: ``params`` are not validated."""
        buffers = self.recalibrated_buffers(params) if self.bn == "recalibrate" and self._bn_modules else None
        with self.bound(params, buffers):
            return self.evaluate_bound(metrics=metrics)

    def evaluate_bound(self, *, metrics: bool = True, seen=None) -> dict[str, Tensor]:
        """Like :meth:`evaluate_tensors` for parameters already placed with :meth:`bound` (lets a
        caller bind reusable buffers once and update them in place between evaluations).
        ``seen(outputs, raw_loss)``, if given, is called for every batch after its loss, before its
        metrics (the behaviour fingerprint digests the outputs of this pass instead of a second one)."""
        totals: dict[str, Tensor] = {}
        guard = self._guard
        with guard.lock:
            try:
                for b, (batch, n) in enumerate(self.data):
                    guard.batch = b  # announced to the linear fold (see _linear_fold)
                    guard.calls.clear()
                    for k, v in self._terms_bound(batch, n, metrics, seen).items():
                        v = v.to(torch.float64)
                        totals[k] = v if k not in totals else totals[k] + v
            finally:
                guard.batch = None
                guard.calls.clear()
        return totals

    def loss(self, params: Mapping[str, Tensor]) -> float:
        """L(θ) = Σ_b n_b ℓ_b(θ) / N as a Python float."""
        self.check_params(params, func="Problem.loss")
        with torch.no_grad():
            return float(self.evaluate_tensors(params, metrics=False)["loss"])

    def evaluate(self, params: Mapping[str, Tensor]) -> dict[str, float]:
        """``{"loss": L(θ), "accuracy": …, <metrics>: …}`` as Python floats."""
        self.check_params(params, func="Problem.evaluate")
        with torch.no_grad():
            return {k: float(v) for k, v in self.evaluate_tensors(params).items()}

    def grad(self, params: Mapping[str, Tensor]) -> P.Params:
        """∇L(θ), accumulated batch by batch (each weighted by n_b/N), in the problem's dtype."""
        self.check_params(params, func="Problem.grad")
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        grads = [torch.zeros_like(v) for v in leaves.values()]
        buffers = None
        if self.bn == "recalibrate" and self._bn_modules:
            buffers = self.recalibrated_buffers(params)
        for b, (batch, n) in enumerate(self.data):
            with torch.enable_grad():
                term = self.batch_terms(leaves, batch, n, buffers, metrics=False)["loss"]
                if not term.requires_grad:
                    raise DifferentiationError(
                        f"Problem.grad(): the {'closure' if self.closure is not None else 'loss'} must depend "
                        f"differentiably on the parameters; its value on batch {b} carries no gradient (a 0–1 loss, "
                        "a value computed outside torch or detached); received "
                        f"{_describe_callable(self.closure if self.closure is not None else self.loss_fn)}")
                try:
                    gs = torch.autograd.grad(term, list(leaves.values()), allow_unused=True)
                except RuntimeError as exc:
                    raise DifferentiationError(f"Problem.grad(): torch cannot differentiate the model or loss "
                                               f"({exc})") from exc
            for acc, g in zip(grads, gs):
                if g is not None:
                    acc.add_(g)
        return dict(zip(leaves.keys(), grads))

    # ------------------------------------------------------------------------------------------
    def recalibrated_buffers(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """BatchNorm running statistics recomputed at ``params`` from the whole data set: the
        sample-weighted mean of per-batch statistics (exact when the data is a single batch)."""
        with self._guard.lock:  # BatchNorm layers of the shared module go to train mode meanwhile
            return self._recalibrated_buffers(params)

    def _recalibrated_buffers(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        names = {m: n for n, m in self._module.named_modules()}
        buffers: dict[str, Tensor] = {}
        for m in self._bn_modules:
            prefix = names[m] + "." if names[m] else ""
            buffers[prefix + "running_mean"] = torch.zeros_like(m.running_mean)
            buffers[prefix + "running_var"] = torch.ones_like(m.running_var)
            buffers[prefix + "num_batches_tracked"] = torch.zeros_like(m.num_batches_tracked)
        saved = [(m, m.momentum) for m in self._bn_modules]
        seen = 0
        try:
            for m in self._bn_modules:
                m.train()
            with torch.no_grad():
                detached = {k: v.detach() for k, v in params.items()}
                for batch, n in self.data:
                    for m in self._bn_modules:
                        m.momentum = n / (seen + n)
                    self._forward_batch(detached, batch, buffers)
                    seen += n
        finally:
            for m, mom in saved:
                m.momentum = mom
                m.eval()
        return buffers

    # ------------------------------------------------------------------------------------------
    def fingerprint(self, *, behaviour: bool = False) -> dict[str, Any]:
        """Fingerprints that identify the computation: model structure and fixed tensors (frozen
        parameters, buffers), the data, the loss and the evaluation settings (strings).

        These structural fingerprints cannot see what a ``lambda``, ``label_smoothing`` or an
        activation held as a plain function computes: with ``behaviour=True`` the result also holds
        ``"behaviour"``, :meth:`behaviour_fingerprint` (what stores record and check on resume)."""
        if behaviour:
            return {**self.fingerprint(), "behaviour": self.behaviour_fingerprint()}
        h = hashlib.sha256()
        h.update(repr(self._module).encode())
        for n, p in self._module.named_parameters():
            h.update(f"{n}|{tuple(p.shape)}|{n in self.param_names}".encode())
        fixed = [(n, p) for n, p in self._module.named_parameters() if n not in self.param_names]
        fixed += list(self._module.named_buffers())
        h.update(P.fingerprint(fixed).encode())
        loss_desc = _describe_callable(self.loss_fn) + "|" + _describe_callable(self.closure)
        return {
            "model": h.hexdigest(),
            "data": self.data.fingerprint(),
            "loss": loss_desc,
            "settings": f"dtype={self.dtype}|bn={self.bn}|metrics={','.join(self.metric_names)}"
                        f"|reduction={self.reduction}|n={self.n_samples}"
                        + (f"|loss_dtype={self.loss_dtype}" if self.loss_dtype != self.dtype else ""),
        }

    def behaviour_fingerprint(self) -> dict[str, Any]:
        """What the problem computes, as JSON-able numbers: the loss, every metric and a digest of the
        model outputs (for a closure: its loss and metrics) at θ₀ and three fixed probe points
        θ₀ + ε·r (r Gaussian from a fixed seed, scaled per tensor to the tensor's norm; ε = 0.05, 0.3,
        1.5), evaluated by this problem's own code on a fixed batch (the first 16 samples of the first
        batch). A handful of forward passes; nothing is modified. Compare two with
        ``lossatlas._behaviour.compare`` (a tolerance scaled to the precision: the last bits of float32
        sums depend on the evaluation order and thread count)."""
        return behaviour(self)

    # -- the public surface other modules use (never the private attributes) ---------------------
    @property
    def module(self) -> nn.Module:
        """The problem's private copy of the model: what it evaluates. Read it (its structure, its
        submodules); never modify it — :meth:`replace`, :meth:`with_dtype` and :meth:`with_state`
        make variants."""
        return self._module

    @property
    def batchnorm_modules(self) -> tuple[nn.Module, ...]:
        """The batch-normalisation layers of :attr:`module` (whose running statistics ``bn`` governs)."""
        return tuple(self._bn_modules)

    @property
    def has_batchnorm(self) -> bool:
        """Whether the model has batch-normalisation layers (``bn="recalibrate"`` changes anything)."""
        return bool(self._bn_modules)

    def replace(self, *, bn: str | None = None, loss_dtype: torch.dtype | None = None,
                dtype: torch.dtype | None = None, data: Any = None, n_samples: int | None = None) -> Problem:
        """The same problem with another BatchNorm policy (``"eval"`` / ``"recalibrate"``), loss
        precision, evaluation dtype or batch source; ``None`` keeps the setting. Model snapshot, data
        and loss are shared (nothing is copied for ``bn``, ``loss_dtype`` or ``data``); ``dtype`` is
        :meth:`with_dtype`. Returns ``self`` when nothing changes.

        ``data`` is a batch source over data already on the problem's device and dtype: iterating it
        yields ``(batch, n)`` pairs and ``first()`` returns the first (e.g. one fixed batch, or some of
        this problem's batches); it is used as given, not checked again (for new user data, build a new
        :class:`Problem`). Batches are then weighted n_b / ``n_samples`` (default: the source's own
        ``n_samples``; give the full N for a shard of the batches, whose ranks' sums add up)."""
        func = "Problem.replace"
        if data is None and n_samples is not None:
            raise bad_value(func, "n_samples", "None unless data= is given", n_samples)
        if data is not None:
            if not (callable(getattr(data, "first", None)) and hasattr(data, "__iter__")):
                raise bad_type(func, "data", "a batch source (iterable of (batch, n) pairs with first())", data)
            n_samples = getattr(data, "n_samples", None) if n_samples is None else n_samples
            if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
                raise bad_value(func, "n_samples", "a positive integer (or a source that has n_samples)", n_samples)
        new = self if dtype is None or dtype == self.dtype else self.with_dtype(dtype)
        if bn is not None and bn != new.bn:
            if bn not in _BN_MODES:
                raise bad_value(func, "bn", f"one of {_BN_MODES}", bn)
            new = copy.copy(new)
            new.bn = bn
        if loss_dtype is not None and loss_dtype != new.loss_dtype:
            if not isinstance(loss_dtype, torch.dtype) or not loss_dtype.is_floating_point:
                raise bad_value(func, "loss_dtype", "a floating torch.dtype or None", loss_dtype)
            new = copy.copy(new) if new is self else new
            new._loss_dtype_arg = loss_dtype
        if data is not None:
            new = copy.copy(new) if new is self else new
            new.data, new.n_samples = data, int(n_samples)
        return new

    def with_dtype(self, dtype: torch.dtype) -> Problem:
        """The same problem evaluated in another dtype (e.g. ``torch.float64`` for verification).

        Derived from the snapshot taken at construction, never from the live user model: changing
        the model afterwards (a weight, a BatchNorm buffer, a submodule) changes neither this problem
        nor its variants. Frozen parameters and buffers keep their original values where the new
        dtype holds them (a float64 variant of a bfloat16 problem made from a float32 model uses the
        float32 values, not their bfloat16 roundings: the problem keeps the originals that its own
        dtype rounded); the trainable parameters θ₀ are this problem's θ₀, cast. The data is
        rebuilt as :meth:`BatchSource.recast` describes."""
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise bad_value("Problem.with_dtype", "dtype", "a floating torch.dtype (e.g. torch.float64)", dtype)
        new = copy.copy(self)
        new._guard = _Guard()
        new.dtype = dtype
        new._module, new._originals = self._variant_module(dtype)
        new.data = self.data.recast(dtype)
        new._center = _center_of(new._module, new.param_names)  # θ₀ cast, as P.to(self._center, dtype)
        new._param_slots = _slots(new._module, new.param_names, buffers=False)
        new._bn_modules = _bn_modules(new._module)
        new.__dict__.pop("_buffer_slot_cache", None)
        return new

    def with_state(self, state: Mapping[str, Tensor], *, func: str = "Problem.with_state",
                   arg: str = "state") -> Problem:
        """The same problem (loss, data, settings) for the model whose *whole* ``state_dict`` is
        ``state``: trainable and frozen parameters and buffers (BatchNorm running statistics), e.g.
        a checkpoint written by ``torch.save(model.state_dict())``. ``state`` must hold exactly the
        model's entries (missing or unexpected keys, and shape mismatches, are errors naming them).
        It is loaded (``load_state_dict(strict=True)``) into a copy of the snapshot this problem took
        at construction, never into the live model: neither your model nor this problem changes, and
        entries a state_dict does not hold (non-persistent buffers) come from the snapshot.
        ``params()`` of the result is the state's trainable parameters, the natural centre."""
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
            raise bad_type(func, arg, "a state_dict (a dict of tensors)", state)
        module, _ = self._variant_module(self.dtype)  # a copy of the snapshot, never the user's module
        expected = module.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            parts = ([f"lacks the model's entries {P._names(missing)}"] if missing else []) + (
                [f"has entries the model does not have: {P._names(unexpected)}"] if unexpected else [])
            hint = ""
            if unexpected and all(k.startswith("module.") for k in state) and all(
                    k.removeprefix("module.") in expected for k in state):
                hint = " (saved from a DataParallel/DDP wrapper? remove the 'module.' prefix of its keys)"
            raise ParameterMismatchError(f"{func}(): argument '{arg}' must hold exactly the model's state_dict "
                                         f"({len(expected)} entries); it {' and '.join(parts)}{hint}")
        P.check_shapes(expected, state, func=func, arg=arg, like="the model's")
        with torch.no_grad():
            module.load_state_dict(dict(state), strict=True)  # cast to the problem's dtype, as at construction
        new = copy.copy(self)
        new.model = copy.deepcopy(self.model)  # what `model` reports: the loaded state (evaluation uses `module`)
        with torch.no_grad():
            new.model.load_state_dict(dict(state), strict=True)
        new._guard = _Guard()
        new._module = module
        new._originals = {k: v.detach().to("cpu", copy=True) for k, v in state.items()
                          if k in expected and v.is_floating_point() and k not in self.param_names
                          and not _exact_cast(v.dtype, self.dtype)}
        new._center = _center_of(new._module, new.param_names)  # the state's values, cast as loaded
        new._param_slots = _slots(new._module, new.param_names, buffers=False)
        new._bn_modules = _bn_modules(new._module)
        new.__dict__.pop("_buffer_slot_cache", None)
        return new

    def _variant_module(self, dtype: torch.dtype) -> tuple[nn.Module, dict[str, Tensor]]:
        """A deep copy of the private module in ``dtype`` (frozen parameters and buffers from the
        originals where kept) and the originals the variant needs to keep in turn."""
        with self._guard.lock, dispatchers_removed(self._guard):
            module = copy.deepcopy(self._module)
        originals: dict[str, Tensor] = {}
        tensors = dict(module.named_parameters())
        tensors.update(module.named_buffers())
        for name, t in tensors.items():
            if not t.is_floating_point():
                continue
            kept = self._originals.get(name)
            src = kept if kept is not None else t.detach()
            if not _exact_cast(src.dtype, dtype) and name not in self.param_names:
                originals[name] = kept if kept is not None else t.detach().to("cpu", copy=True)
            if kept is not None or t.dtype != dtype:
                t.data = src.to(device=self.device, dtype=dtype)
        return module, originals

    def __repr__(self) -> str:
        n_params = sum(v.numel() for v in self._center.values())
        return (f"Problem(model={type(self.model).__name__}, params={n_params}, samples={self.n_samples}, "
                f"batches={self.data.n_batches}, dtype={self.dtype}, device={self.device}, bn={self.bn!r}, "
                f"metrics={self.metric_names})")


def _same_tensors(a: Any, b: Any) -> bool:
    """Every tensor of ``a`` equal to the one of ``b`` bit for bit (NaNs included; sparse ones densified)."""
    ta, tb = tensors_in(a), tensors_in(b)
    return len(ta) == len(tb) and all(_bitwise_equal(_strided(x), _strided(y)) for x, y in zip(ta, tb))


def _strided(t: Tensor) -> Tensor:
    return t if t.layout == torch.strided else t.to_dense()


def _as_device(device: Any) -> torch.device:
    """``device=`` as a ``torch.device``, or an error naming it (never torch's own RuntimeError)."""
    expected = "a device such as 'cpu', 'cuda', 'cuda:1' or a torch.device"
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise bad_type("Problem", "device", expected, device)
    try:
        out = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise bad_value("Problem", "device", expected, device) from None
    if out.type == "meta":
        raise bad_value("Problem", "device", "a device that holds values (not 'meta')", device)
    if out.type not in ("cpu", "cuda", "mps", "xpu"):
        raise bad_value("Problem", "device", expected, device)
    if out.type == "cuda" and out.index is not None and torch.cuda.is_available() \
            and out.index >= torch.cuda.device_count():
        raise bad_value("Problem", "device", f"an existing CUDA device (this machine has "
                        f"{torch.cuda.device_count()})", device)
    return out


def _center_of(module: nn.Module, names) -> dict[str, Tensor]:
    """θ₀: the private module's own trainable parameter tensors (detached), not a copy. The private
    module's trainable slots only ever hold θ₀ between evaluations (points are bound in with
    :meth:`Problem.bound`, never written into it), so θ₀ needs no memory of its own — one model's
    worth less for a large model. Same values as ``P.params_of(model, dtype=, device=)``: one
    rounding of the user's values to the problem's dtype."""
    table = dict(module.named_parameters())
    return {n: table[n].detach() for n in names}


def _slots(module: nn.Module, names, *, buffers: bool) -> dict[str, list[tuple[nn.Module, str]]]:
    """For each parameter (or buffer) name, every (owner module, attribute) holding that tensor,
    tied aliases included."""
    table = dict(module.named_buffers(remove_duplicate=False) if buffers
                 else module.named_parameters(remove_duplicate=False))
    by_id: dict[int, list[tuple[nn.Module, str]]] = {}
    for full, tensor in table.items():
        prefix, _, attr = full.rpartition(".")
        by_id.setdefault(id(tensor), []).append((module.get_submodule(prefix), attr))
    return {name: by_id[id(table[name])] for name in names}


_EXACT_CASTS = {torch.float16: (torch.float32, torch.float64), torch.bfloat16: (torch.float32, torch.float64),
                torch.float32: (torch.float64,)}


def _exact_cast(src: torch.dtype, dst: torch.dtype) -> bool:
    """Whether every value of ``src`` is exactly representable in ``dst``."""
    return src == dst or dst in _EXACT_CASTS.get(src, ())


def _inexact_originals(model: nn.Module, dtype: torch.dtype, trainable) -> dict[str, Tensor]:
    """CPU copies of the frozen parameters and floating buffers that ``dtype`` cannot hold exactly
    (empty when the problem's dtype is the model's or wider: the private copy is then the snapshot)."""
    names = set(trainable)
    out: dict[str, Tensor] = {}
    items = [(n, p) for n, p in model.named_parameters() if n not in names] + list(model.named_buffers())
    for name, t in items:
        if t.is_floating_point() and not _exact_cast(t.dtype, dtype):
            out[name] = t.detach().to("cpu", copy=True)
    return out


def _bn_modules(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _describe_callable(fn: Any) -> str:
    if fn is None:
        return "none"
    if isinstance(fn, nn.Module):
        return repr(fn)
    if isinstance(fn, functools.partial):
        return f"partial({_describe_callable(fn.func)}, {sorted(fn.keywords.items())})"
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _auto_accuracy(loss: Any, outputs: Any, targets: Any) -> MetricFn | None:
    """An accuracy metric when outputs/targets look like classification, else None."""
    if not isinstance(outputs, Tensor) or not isinstance(targets, Tensor):
        return None
    if not targets.is_floating_point() and not targets.is_complex() and targets.dtype != torch.bool:
        if outputs.ndim == targets.ndim + 1 and outputs.ndim >= 2 and outputs.shape[1] > 1:
            def accuracy(out: Tensor, tgt: Tensor) -> Tensor:
                # max(dim).indices is argmax (first maximum, NaN counts as maximal) with a kernel that
                # stays fast when the class axis is strided, as after a few-output Linear (7x here)
                return (out.max(dim=1).indices == tgt).to(out.dtype).mean()
            return accuracy
        return None
    name = type(loss).__name__ if not isinstance(loss, functools.partial) else getattr(loss.func, "__name__", "")
    name = name or getattr(loss, "__name__", "")
    if targets.is_floating_point() and outputs.numel() == targets.numel():
        if name in ("BCEWithLogitsLoss", "binary_cross_entropy_with_logits"):
            def accuracy_logits(out: Tensor, tgt: Tensor) -> Tensor:
                return ((out.reshape(tgt.shape) > 0) == (tgt > 0.5)).to(out.dtype).mean()
            return accuracy_logits
        if name in ("BCELoss", "binary_cross_entropy"):
            def accuracy_probs(out: Tensor, tgt: Tensor) -> Tensor:
                return ((out.reshape(tgt.shape) > 0.5) == (tgt > 0.5)).to(out.dtype).mean()
            return accuracy_probs
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _metric_value(name: str, fn: MetricFn, outputs: Any, targets: Any) -> Tensor:
    """``fn(outputs, targets)`` as a real 0-d tensor, or an :class:`EvaluationError` naming the metric
    (it raised, or returned something other than a real scalar: a vector, a string, a complex)."""
    try:
        value = fn(outputs, targets)
    except LossAtlasError:
        raise
    except Exception as exc:
        raise EvaluationError(f"Problem(): argument 'metrics' entry {name!r} raised {type(exc).__name__}: "
                              f"{_one_line(exc)}") from exc
    if isinstance(value, Tensor):
        if value.ndim == 0 and not value.is_complex():
            return value
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        device = outputs.device if isinstance(outputs, Tensor) else None
        return torch.tensor(float(value), dtype=torch.float64, device=device)
    raise EvaluationError(f"Problem(): argument 'metrics' entry {name!r} must return a real scalar (a 0-d tensor "
                          f"or a number, the batch mean); received {describe(value)}")


#: losses whose integer targets are class indices into dim 1 of the outputs (``ignore_index`` skipped)
_CLASS_INDEX_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)
_CLASS_INDEX_FUNCTIONS = (torch.nn.functional.cross_entropy, torch.nn.functional.nll_loss)


def _class_index_loss(loss: Any) -> tuple[str, int] | None:
    """(name, ignore_index) of a loss whose integer targets index classes, else None."""
    fn = loss.func if isinstance(loss, functools.partial) else loss
    if isinstance(fn, _CLASS_INDEX_LOSSES):
        ignore, name = int(fn.ignore_index), type(fn).__name__
    elif any(fn is f for f in _CLASS_INDEX_FUNCTIONS):
        ignore, name = -100, fn.__name__
    else:
        return None
    if isinstance(loss, functools.partial):
        ignore = int(loss.keywords.get("ignore_index", ignore))
    return name, ignore


def _label_summary(targets: Any, ignore_index: int) -> tuple | None:
    """(dtype, ndim, smallest, largest label other than ``ignore_index``) of a batch's targets: one
    ``aminmax`` (and, only when some label equals ``ignore_index``, one mask); None if not a tensor."""
    if not isinstance(targets, Tensor):
        return None
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool or targets.numel() == 0:
        return targets.dtype, targets.ndim, None, None
    lo, hi = (int(v) for v in torch.aminmax(targets))
    if lo <= ignore_index <= hi and bool((targets == ignore_index).any()):
        kept = targets[targets != ignore_index]
        if kept.numel() == 0:
            return targets.dtype, targets.ndim, None, None
        lo, hi = (int(v) for v in torch.aminmax(kept))
    return targets.dtype, targets.ndim, lo, hi


def _batch_label_summary(batch: Any, ignore_index: int) -> tuple | None:
    """:func:`_label_summary` of an (inputs, targets) batch (what streamed data records per batch)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return _label_summary(batch[1], ignore_index)
    return None


class _LabelCheck:
    """Class-index targets of a cross-entropy/NLL loss: integers in [0, classes) or ``ignore_index``.

    Built from the first batch's outputs; checks a batch's targets with one ``aminmax`` (one host
    synchronisation on a GPU; streamed batches are summarised on the host before they are moved)."""

    __slots__ = ("classes", "ignore_index", "ndim", "loss")

    def __init__(self, classes: int, ignore_index: int, ndim: int, loss: str):
        self.classes, self.ignore_index, self.ndim, self.loss = classes, ignore_index, ndim, loss

    @classmethod
    def of(cls, loss: Any, outputs: Any, targets: Any) -> _LabelCheck | None:
        kind = _class_index_loss(loss)
        if kind is None or not isinstance(outputs, Tensor) or not isinstance(targets, Tensor) or outputs.ndim == 0:
            return None
        if targets.ndim != outputs.ndim - 1:
            return None  # class probabilities (same shape as the outputs), or a layout torch will refuse
        classes = int(outputs.shape[1] if outputs.ndim >= 2 else outputs.shape[0])
        return cls(classes, kind[1], outputs.ndim - 1, kind[0])

    def batch(self, batch: Any, b: int) -> None:
        """The check on a whole (inputs, targets) batch (streamed data)."""
        self.check(_batch_label_summary(batch, self.ignore_index), b)

    def __call__(self, targets: Any, b: int) -> None:
        self.check(_label_summary(targets, self.ignore_index), b)

    def check(self, summary: tuple | None, b: int) -> None:
        """Raise :class:`DataError` naming batch ``b`` unless its :func:`_label_summary` is valid."""
        if summary is None:
            return
        dtype, ndim, lo, hi = summary
        if ndim != self.ndim:
            return
        where = f"Problem(): argument 'data' batch {b}"
        need = f"{self.loss} needs integer class labels 0 <= y < {self.classes} (the model has {self.classes} outputs)"
        if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
            raise DataError(f"{where} holds class labels of dtype {dtype}: {need}; received {dtype} labels")
        if lo is None or (lo >= 0 and hi < self.classes):
            return
        ignore = f" or {self.ignore_index} (ignore_index)" if not 0 <= self.ignore_index < self.classes else ""
        raise DataError(f"{where} holds class label {lo if lo < 0 else hi} out of range: {need}{ignore}; "
                        f"received labels in [{lo}, {hi}]")
