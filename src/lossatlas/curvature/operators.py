"""Curvature matrices of a :class:`~lossatlas.Problem` at θ as linear operators.

* Hessian ``H = ∇²L(θ)`` of the dataset loss L(θ) = Σ_b n_b ℓ_b(θ) / N. Products are exact
  Hessian-vector products (double backward, Pearlmutter 1994) of the batch terms n_b ℓ_b / N, summed
  over every batch: the dataset average, never a sum of batch Hessians nor a subset of batches.
* Generalised Gauss–Newton ``G = Σ_b Jᵀ ∇²_f(n_b ℓ_b/N) J`` (Schraudolph 2002; Martens 2020) with J
  the Jacobian of the model output f with respect to θ. G is positive semi-definite when the loss
  is convex in the model output (MSE, cross-entropy, binary cross-entropy, Huber, Poisson NLL);
  it equals H wherever the model is linear in θ.

Both act on a subset of the trainable parameters (all, weights only, one layer, names), flattened in
the problem's parameter order, with the other parameters held at θ. BatchNorm uses the problem's
policy: stored statistics (``bn="eval"``), or statistics recomputed once at θ and then held fixed
(``bn="recalibrate"``). Parameters the loss does not depend on have zero rows and columns.

When the autograd graphs of all batches fit in memory (``retain="auto"``: at most
:data:`RETAIN_BYTES`), they are built once and every product is one backward pass through them.

Product methods (:data:`PRODUCT_METHODS`, chosen at the first product and kept in ``op.method``,
with the reason in ``op.method_notes``; results repeat it as ``product_method``/``notes``):

1. ``"double-backward"``: ``torch.autograd.grad`` twice (exact; the fastest on CPU). When chosen
   automatically and the loss graph holds a custom ``autograd.Function`` (the only operations whose
   backward may not itself be differentiable, e.g. a gradient computed in NumPy without
   ``@once_differentiable``, for which torch silently returns a partial Hessian), its first product is
   checked once: confirmed by an equal forward-over-reverse product, or else compared with finite
   differences of exact gradients (four gradients); off by more than 10× their error estimate plus
   5 %, products are taken by finite differences (4.), with a note. Graphs of torch's own operations
   are not checked: across ReLU / max-pool kinks finite differences measure a smoothed curvature
   (kinks crossed ∝ h, so their jump term does not shrink with h), while double backward gives the
   Hessian a.e., which is this library's Hessian.
2. ``"double-backward-math-sdpa"``: the same with ``scaled_dot_product_attention`` forced to its
   math kernel (``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``), tried when a fused kernel has
   no double backward (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` on CPU). Exact: the
   math kernel is composed of ordinary differentiable operations.
3. ``"forward-over-reverse"``: ``torch.func.jvp`` of ``torch.func.grad``, per batch (exact), for
   operations with a forward-mode rule but no double backward. Its first product is checked once
   (forward-mode rules can be wrong): confirmed by an equal reverse-over-forward product
   (``torch.func.grad`` of the ``jvp``), or else by finite differences as in 1.
4. ``"finite-difference"``: Richardson-extrapolated central differences of exact gradients,
   (4·D(h) − D(2h))/3 with D(h) = (∇L(θ + h·u) − ∇L(θ − h·u))/(2h) along the unit vector u and
   h = ε^(1/3)·max(1, ‖θ‖) (ε: the dtype's machine epsilon). Approximate: each product estimates its
   own error ‖D(h) − D(2h)‖/3 + 4ε‖∇L‖/h, and ``op.product_error`` keeps the largest (per unit
   vector), which widens the zero band and the error bars of the estimators. For models with no
   second-order rule at all (``nn.EmbeddingBag``); Hessian only.

A loss that has no gradient with respect to the model output (a 0–1 loss through ``argmax`` or a
comparison, a ``round``-ed loss whose gradient is identically zero) has no curvature to measure:
the first product raises :class:`~lossatlas.errors.DifferentiationError`, as it does when no
method works. Parameters the loss does not use at all are not an error (zero rows and columns).
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import params as P
from ..errors import DifferentiationError, InvalidArgumentError, bad_type, bad_value, current_function, public, renamed
from ..params.selection import ParamSelection, layers, select
from ..problem import Problem

__all__ = ["CurvatureOperator", "hessian_operator", "ggn_operator", "RETAIN_BYTES", "CONVEX_LOSSES",
           "PRODUCT_METHODS", "EXACT_METHODS"]

#: most bytes of autograd graphs kept between products (``retain="auto"``)
RETAIN_BYTES = 1 << 30
#: columns per vectorised product in :meth:`CurvatureOperator.mm`
BLOCK = 16
#: losses convex in the model output, for which the GGN is positive semi-definite
CONVEX_LOSSES = ("MSELoss", "mse_loss", "CrossEntropyLoss", "cross_entropy", "BCEWithLogitsLoss",
                 "binary_cross_entropy_with_logits", "BCELoss", "binary_cross_entropy", "HuberLoss", "huber_loss",
                 "SmoothL1Loss", "smooth_l1_loss", "PoissonNLLLoss", "poisson_nll_loss")
KINDS = ("hessian", "ggn")
#: how products are computed, in the order tried (see the module notes)
PRODUCT_METHODS = ("double-backward", "double-backward-math-sdpa", "forward-over-reverse", "finite-difference")
#: the methods whose products are exact up to rounding
EXACT_METHODS = PRODUCT_METHODS[:3]
_ATTENTION = re.compile(r"attention|scaled_dot_product|sdpa", re.IGNORECASE)
#: torch's messages for "this operation has no (higher-order / forward-mode) derivative"
_NO_DERIVATIVE = re.compile(r"derivative for .* is not implemented|derivative for .* not implemented|"
                            r"does not support it because it has not been implemented|forward ad|forward-mode|"
                            r"does not require grad and does not have a grad_fn|not implemented for|"
                            r"double backward|differentiab", re.IGNORECASE)
DTYPES = (torch.float32, torch.float64)


class CurvatureOperator:
    """A symmetric curvature matrix (``kind`` ``"hessian"`` or ``"ggn"``) at θ, acting on the
    flattened selected parameters (``names``, in the problem's order).

    ``op @ v`` (or :meth:`mv`) multiplies a 1-D tensor of length ``op.shape[0]``; ``op @ V`` with a
    2-D ``V`` multiplies every column (:meth:`mm`); :meth:`apply` takes and returns parameter dicts.
    ``products`` counts matrix-vector products so far. Build with :func:`hessian_operator` or
    :func:`ggn_operator`. ``method`` (one of :data:`PRODUCT_METHODS`, or None for automatic) fixes
    how products are computed; ``op.method`` tells which one is used (deciding it with one product
    if none was taken yet), ``op.exact`` whether its products are exact up to rounding and
    ``op.product_error`` the largest estimated error of a product with a unit vector (0 for the
    exact methods: their rounding is accounted for by the estimators from the dtype).
    """

    def __init__(self, problem: Problem, theta: Mapping[str, Tensor], names: tuple[str, ...], *, kind: str,
                 retain: bool | str = "auto", vectorize: bool | None = None, method: str | None = None):
        if method is not None and method not in PRODUCT_METHODS:
            raise bad_value("CurvatureOperator", "method", f"None (automatic) or one of {PRODUCT_METHODS}", method)
        if kind == "ggn" and method in ("forward-over-reverse", "finite-difference"):
            raise bad_value("CurvatureOperator", "method", "'double-backward' or 'double-backward-math-sdpa' for "
                            "the GGN", method)
        self.problem = problem
        self.kind = kind
        self.theta: P.Params = {k: v.detach() for k, v in theta.items()}
        self.names = tuple(names)
        self.sizes = {n: self.theta[n].numel() for n in self.names}
        n = sum(self.sizes.values())
        self.shape = (n, n)
        self.dtype = problem.dtype
        self.device = problem.device
        self.products = 0
        self.product_error = 0.0
        self.method_notes: list[str] = []
        #: custom autograd.Functions met in the loss graphs before the first product (``_opaque_functions``)
        self._opaque: set[str] = set()
        self._cut: set[str] = set()  # those of them whose backward is cut from the graph (``_watch``)
        self._method = method
        self._checked = False  # the first product of the method has been taken
        self._math_sdpa = method not in (None, "double-backward")
        self._leaves = [self.theta[k].clone().requires_grad_(True) for k in self.names]
        leaf_of = dict(zip(self.names, self._leaves))
        self._point = {k: leaf_of.get(k, v) for k, v in self.theta.items()}
        self._buffers = (problem.recalibrated_buffers(self.theta)
                         if problem.bn == "recalibrate" and problem.has_batchnorm else None)
        self._graphs: list[Any] | None = None
        self._retain_arg = retain
        self.retained = False
        if method in (None, "double-backward", "double-backward-math-sdpa"):
            try:
                with self._kernels():
                    self.retained = self._decide_retain(retain)
            except (RuntimeError, NotImplementedError) as exc:  # a first-order failure: nothing else can work
                if not _no_derivative(exc):
                    raise
                raise self._failure([("gradient", exc)]) from exc
        if vectorize is None:  # measured on a 2-core CPU: a loop of single products is as fast or faster
            vectorize = self.device.type != "cpu"
        self.vectorize = bool(vectorize) and kind == "hessian"
        self._vmapped = None

    # -- product method ----------------------------------------------------------------------------
    @property
    def method(self) -> str:
        """How products are computed (one of :data:`PRODUCT_METHODS`). Decided at the first product
        (reading this before any product takes one, not counted in ``products``)."""
        if self._method is None:
            gen = torch.Generator().manual_seed(12345)
            self._product(torch.randn(self.shape[0], generator=gen, dtype=torch.float64).to(self.dtype).to(
                self.device))
        return str(self._method)

    @property
    def exact(self) -> bool:
        """Whether products are exact up to rounding (every method but finite differences)."""
        return self.method in EXACT_METHODS

    def _kernels(self):
        """The attention-kernel context of graph building and products."""
        if not self._math_sdpa:
            return contextlib.nullcontext()
        return sdpa_kernel(SDPBackend.MATH)

    def _describe(self) -> str:
        model = type(self.problem.model).__name__ if getattr(self.problem, "model", None) is not None else "model"
        loss = "a closure" if self.problem.closure is not None else _loss_name(self.problem.loss_fn)
        return f"the {model} with loss {loss}"

    def _failure(self, tried: list[tuple[str, BaseException]]) -> DifferentiationError:
        what = "; ".join(f"{m}: {type(e).__name__}: {' '.join(str(e).split())[:160]}" for m, e in tried)
        kind = "Hessian" if self.kind == "hessian" else "GGN"
        return DifferentiationError(f"{kind} products of {self._describe()} cannot be computed: torch cannot "
                                    f"differentiate it as needed ({what})")

    def _candidates(self) -> list[str]:
        if self._method is not None:
            return [self._method]
        if self.kind == "ggn":
            return ["double-backward", "double-backward-math-sdpa"]
        return list(PRODUCT_METHODS)

    def _switch(self, method: str) -> None:
        """Prepare the state a method needs (graphs are rebuilt under the math attention kernel)."""
        self._graphs = None
        self.retained = False
        self._vmapped = None
        self._math_sdpa = method != "double-backward"
        if method == "double-backward-math-sdpa":
            with self._kernels():
                self.retained = self._decide_retain(self._retain_arg)

    # -- graphs ------------------------------------------------------------------------------------
    def _graph(self, batch: Any, n: int) -> tuple:
        with torch.enable_grad():
            if self.kind == "hessian":
                return self._hessian_graph(batch, n)
            return self._ggn_graph(batch, n)

    def _output_depends_on_leaves(self, batch: Any) -> bool:
        """Whether the model output of a batch depends on the selected parameters (one more forward,
        only run to tell a loss without gradient from parameters the loss does not use)."""
        seen: list[bool] = []

        def hook(module, args, output):
            flat = output if isinstance(output, (tuple, list)) else (output.values() if isinstance(output, Mapping)
                                                                     else (output,))
            seen.append(any(isinstance(t, Tensor) and t.requires_grad for t in flat))

        handle = self.problem.module.register_forward_hook(hook)
        try:
            with torch.enable_grad(), self.problem.bound(self._point, self._buffers):
                if self.problem.closure is not None:
                    self.problem.closure(self.problem.module, batch)
                else:
                    self.problem.module(batch[0])
        except Exception:  # noqa: BLE001 - a diagnosis only; the loss itself evaluated fine
            return False
        finally:
            handle.remove()
        return any(seen)

    def _hessian_graph(self, batch: Any, n: int) -> tuple:
        term = self.problem.batch_terms(self._point, batch, n, self._buffers, metrics=False)["loss"]
        if not term.requires_grad:
            return ("hessian", [], "no-grad" if self._output_depends_on_leaves(batch) else "unused")
        handles = []
        if not self._checked:  # before the first product only: one walk of the forward graph
            for name, node in _opaque_functions(term):
                self._opaque.add(name)
                handles.append(node.register_hook(functools.partial(self._watch, name)))
        try:
            grads = torch.autograd.grad(term, self._leaves, create_graph=True, allow_unused=True)
        finally:
            for handle in handles:
                handle.remove()
        pairs = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        status = "ok"
        if not pairs:
            present = [g for g in grads if g is not None]
            status = "zero-grad" if present and all(not bool(g.any()) for g in present) else "constant-grad"
        return ("hessian", pairs, status)

    def _watch(self, name: str, grad_inputs: tuple, grad_outputs: tuple) -> None:
        """Hook on a custom autograd.Function's node during ``create_graph=True``: a backward whose
        incoming gradient is in the graph but whose nonzero result is not (computed outside autograd)
        is not differentiable, and double backward through it gives a partial Hessian."""
        if not any(isinstance(g, Tensor) and g.requires_grad for g in grad_outputs):
            return
        if any(isinstance(g, Tensor) and not g.requires_grad and bool(g.detach().any()) for g in grad_inputs):
            self._cut.add(name)

    def _ggn_graph(self, batch: Any, n: int) -> tuple:
        problem = self.problem
        inputs, targets = batch
        with problem.bound(self._point, self._buffers) as module:
            outputs = module(inputs)
        if not isinstance(outputs, Tensor):
            raise InvalidArgumentError("ggn_operator(): the model must return a tensor (the GGN needs the model "
                                       f"output); received {type(outputs).__name__}")
        if not outputs.requires_grad:
            return ("ggn", None, "unused")
        out_leaf = outputs.detach().requires_grad_(True)
        term = problem.weighted_loss(problem.loss_fn(out_leaf, targets), n)
        if not term.requires_grad:
            return ("ggn", None, "no-grad")
        (g_out,) = torch.autograd.grad(term, out_leaf, create_graph=True)
        u = torch.zeros_like(outputs, requires_grad=True)
        jt_u = torch.autograd.grad(outputs, self._leaves, u, create_graph=True, allow_unused=True)
        pairs = [(i, g) for i, g in enumerate(jt_u) if g is not None and g.requires_grad]
        status = "zero-grad" if not g_out.requires_grad and not bool(g_out.any()) else "ok"
        return ("ggn", (outputs, out_leaf, g_out, u, pairs), status)

    def _check_statuses(self, statuses: list[str]) -> None:
        """Raise when the loss has no usable gradient: no batch connects the parameters to the loss
        although the model output depends on them, or every gradient is identically zero without a
        derivative of its own (a piecewise-constant loss)."""
        if any(s in ("ok", "constant-grad") for s in statuses):
            return
        if "no-grad" in statuses:
            reason = ("the loss has no gradient with respect to the model output (it is cut from the autograd "
                      "graph, e.g. a 0–1 loss through argmax or a comparison)")
        elif "zero-grad" in statuses:
            reason = ("the gradient of the loss is identically zero and has no derivative (a piecewise-constant "
                      "loss, e.g. one built with round/floor/sign or a step function)")
        else:
            return  # the selected parameters are unused: the matrix is zero
        raise DifferentiationError(f"{'Hessian' if self.kind == 'hessian' else 'GGN'} of {self._describe()}: "
                                   f"{reason}; there is no curvature to measure")

    def _decide_retain(self, retain: bool | str) -> bool:
        if retain is False:
            return False
        batches = list(self.problem.data) if self.problem.data.cached else None
        if retain is True:
            self._graphs = [self._graph(b, n) for b, n in (batches or self.problem.data)]
            return True
        if batches is None:
            return False
        saved: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            try:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. functorch wrappers)
                pass
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            first = self._graph(*batches[0])
        if sum(saved.values()) * len(batches) > RETAIN_BYTES:
            return False
        self._graphs = [first] + [self._graph(b, n) for b, n in batches[1:]]
        return True

    def _graphs_iter(self):
        if self._graphs is not None:
            yield from self._graphs
        else:
            for batch, n in self.problem.data:
                yield self._graph(batch, n)

    # -- products ----------------------------------------------------------------------------------
    def _split(self, v: Tensor) -> list[Tensor]:
        parts, start = [], 0
        for name, leaf in zip(self.names, self._leaves):
            size = self.sizes[name]
            parts.append(v[start:start + size].reshape(leaf.shape))
            start += size
        return parts

    def _backward(self, graph: tuple, parts: list[Tensor]) -> list[Tensor | None]:
        """One batch's contribution to the product with ``parts`` (already split and shaped)."""
        kind, data, _ = graph
        keep = self._graphs is not None
        if kind == "hessian":
            if not data:
                return [None] * len(self._leaves)
            return list(torch.autograd.grad([g for _, g in data], self._leaves, [parts[i] for i, _ in data],
                                            retain_graph=keep, allow_unused=True))
        if data is None or not data[4]:
            return [None] * len(self._leaves)
        outputs, out_leaf, g_out, u, pairs = data
        # J v as the derivative of the linear map u ↦ Jᵀu (two reverse passes, no forward mode needed)
        (jv,) = torch.autograd.grad([g for _, g in pairs], u, [parts[i] for i, _ in pairs], retain_graph=True)
        if not g_out.requires_grad:  # loss linear in the output: no curvature
            return [None] * len(self._leaves)
        (hjv,) = torch.autograd.grad(g_out, out_leaf, jv, retain_graph=True)
        return list(torch.autograd.grad(outputs, self._leaves, hjv, retain_graph=keep, allow_unused=True))

    def _flat(self, total: list[Tensor | None]) -> Tensor:
        return torch.cat([(t if t is not None else torch.zeros_like(leaf)).reshape(-1)
                          for t, leaf in zip(total, self._leaves)])

    def _double_backward(self, v: Tensor, check: bool) -> Tensor:
        parts = self._split(v)
        total: list[Tensor | None] = [None] * len(self._leaves)
        statuses = []
        with torch.enable_grad(), self._kernels():
            for graph in self._graphs_iter():
                statuses.append(graph[2])
                for i, g in enumerate(self._backward(graph, parts)):
                    if g is not None:
                        total[i] = g if total[i] is None else total[i] + g
        if check:
            self._check_statuses(statuses)
        return self._flat(total)

    def _functional_product(self, v: Tensor, compose) -> Tensor:
        """Σ over batches of ``compose(term, point, tangent)`` (a dict of products per parameter), where
        ``term`` is the batch's loss as a function of the selected parameters (torch.func transforms)."""
        problem, names, buffers = self.problem, self.names, self._buffers
        fixed = {k: t for k, t in self.theta.items() if k not in names}
        order = list(self.theta)
        point = {k: self.theta[k] for k in names}
        tangent = dict(zip(names, self._split(v)))
        total: list[Tensor | None] = [None] * len(names)
        with self._kernels():
            for batch, n in problem.data:
                def term(selected: dict[str, Tensor], batch=batch, n=n) -> Tensor:
                    params = {k: selected[k] if k in selected else fixed[k] for k in order}
                    return problem.batch_terms(params, batch, n, buffers, metrics=False)["loss"]

                out = compose(term, point, tangent)
                for i, k in enumerate(names):
                    total[i] = out[k] if total[i] is None else total[i] + out[k]
        return self._flat(total)

    def _forward_over_reverse(self, v: Tensor) -> Tensor:
        return self._functional_product(
            v, lambda term, point, tangent: torch.func.jvp(torch.func.grad(term), (point,), (tangent,))[1])

    def _agrees_reverse_over_forward(self, out: Tensor, v: Tensor) -> bool:
        """Whether a forward-over-reverse product equals ``torch.func.grad`` of the directional
        derivative ``jvp(L)(θ; v)`` (reverse-over-forward: other rules, the same exact Hessian a.e.) up to
        rounding. False when that fails."""
        def reverse_over_forward(term, point, tangent):
            return torch.func.grad(lambda p: torch.func.jvp(term, (p,), (tangent,))[1])(point)

        try:
            other = self._functional_product(v, reverse_over_forward)
        except Exception:  # noqa: BLE001 - any failure: fall back to the finite-difference check
            return False
        return self._agrees(out, other)

    def _gradient(self, flat: Tensor) -> Tensor:
        """∇L at θ + (flat on the selected parameters), exact first-order autograd, batch by batch."""
        leaves = [t.detach().requires_grad_(True) for t in self._split(flat)]
        point = dict(self.theta)
        for k, leaf in zip(self.names, leaves):
            point[k] = leaf
        total: list[Tensor | None] = [None] * len(leaves)
        with torch.enable_grad(), self._kernels():
            for batch, n in self.problem.data:
                term = self.problem.batch_terms(point, batch, n, self._buffers, metrics=False)["loss"]
                if not term.requires_grad:
                    continue
                for i, g in enumerate(torch.autograd.grad(term, leaves, allow_unused=True)):
                    if g is not None:
                        total[i] = g if total[i] is None else total[i] + g
        return torch.cat([(t if t is not None else torch.zeros_like(leaf)).reshape(-1).detach()
                          for t, leaf in zip(total, leaves)])

    def _finite_difference(self, v: Tensor) -> Tensor:
        size = float(torch.linalg.vector_norm(v))
        if size == 0.0 or not math.isfinite(size):
            return torch.zeros_like(v) if size == 0.0 else torch.full_like(v, float("nan"))
        u = v / size
        base = torch.cat([self.theta[k].reshape(-1) for k in self.names])
        eps = torch.finfo(self.dtype).eps
        h = eps ** (1.0 / 3.0) * max(1.0, float(torch.linalg.vector_norm(base.to(torch.float64))))
        g = {s: self._gradient(base + s * h * u).to(torch.float64) for s in (1, -1, 2, -2)}
        d1 = (g[1] - g[-1]) / (2 * h)
        d2 = (g[2] - g[-2]) / (4 * h)
        scale = max(float(torch.linalg.vector_norm(g[s])) for s in g)
        error = float(torch.linalg.vector_norm(d1 - d2)) / 3.0 + 4.0 * eps * scale / h
        if math.isfinite(error):
            self.product_error = max(self.product_error, error)
        return ((4.0 * d1 - d2) / 3.0 * size).to(self.dtype)

    def _confirmed(self, out: Tensor, v: Tensor) -> bool:
        """Whether a double-backward product equals the forward-over-reverse product of the same vector
        up to rounding: two exact methods agreeing (kinks do not matter to either). False when forward
        mode fails, as it does for custom autograd.Functions without a ``jvp``/``setup_context``."""
        try:
            other = self._forward_over_reverse(v)
        except Exception:  # noqa: BLE001 - any failure: fall back to the finite-difference check
            return False
        return self._agrees(out, other)

    def _agrees(self, a: Tensor, b: Tensor) -> bool:
        """Whether two products of the same vector agree up to rounding (1000 ε of their size)."""
        eps = torch.finfo(self.dtype).eps
        a, b = a.to(torch.float64), b.to(torch.float64)
        size = max(float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b)))
        return float(torch.linalg.vector_norm(a - b)) <= 1000 * eps * size

    def _run(self, method: str, v: Tensor, check: bool) -> Tensor:
        if method in ("double-backward", "double-backward-math-sdpa"):
            return self._double_backward(v, check)
        if method == "forward-over-reverse":
            return self._forward_over_reverse(v)
        return self._finite_difference(v)

    def _product(self, v: Tensor) -> Tensor:
        if self._method is not None:
            if self._checked:
                return self._run(self._method, v, check=False)
            try:  # a method given by the user: its first product says whether it works for this model
                out = self._run(self._method, v, check=True)
            except (RuntimeError, NotImplementedError) as exc:
                if isinstance(exc, DifferentiationError) or not (_no_derivative(exc) or
                                                                 self._method == "forward-over-reverse"):
                    raise
                raise self._failure([(self._method, exc)]) from exc
            self._checked = True
            return out
        tried: list[tuple[str, BaseException]] = []
        for method in self._candidates():
            if method == "double-backward-math-sdpa" and tried and not _ATTENTION.search(str(tried[-1][1])):
                continue  # only a fused attention kernel is helped by the math kernel
            if method != "double-backward":
                self._switch(method)
            try:
                out = self._run(method, v, check=True)
            except (RuntimeError, NotImplementedError) as exc:
                # forward mode is reached only after reverse mode built the graph: any failure is its own
                forward = method == "forward-over-reverse"
                if isinstance(exc, DifferentiationError) or not (_no_derivative(exc) or forward):
                    raise
                tried.append((method, exc))
                continue
            if method in ("double-backward", "double-backward-math-sdpa") and self.kind == "hessian" and \
                    self._opaque and (self._cut or not self._confirmed(out, v)):
                # a backward that is not itself differentiable (a custom autograd.Function computing its
                # gradient outside autograd, without @once_differentiable) gives a silently partial Hessian.
                # Only custom Functions can: torch's own operations (ReLU, max-pool included) have exact
                # second derivatives (a.e.), and finite differences across their kinks measure a smoothed
                # curvature instead, so the check runs only when the graph holds custom Functions.
                fd = self._finite_difference(v)
                gap, size = _gap(out, fd)
                if self._cut or gap > 10 * self.product_error * float(torch.linalg.vector_norm(v)) + 0.05 * size:
                    estimate = self.product_error * float(torch.linalg.vector_norm(v)) / size
                    why = (f"custom autograd.Function {', '.join(sorted(self._cut))[:60]}: its backward returns "
                           "gradients cut from the autograd graph (computed outside autograd), not differentiable"
                           if self._cut else
                           f"custom autograd.Function {', '.join(sorted(self._opaque))[:60]}: part of the model's "
                           "backward is not differentiable, e.g. computed outside autograd")
                    tried.append((method, RuntimeError(
                        f"its product disagreed with finite differences of exact gradients by {gap / size:.0%} "
                        f"({why}; error estimate of the differences: {estimate:.1e})")))
                    method, out = "finite-difference", fd
                else:
                    self.product_error = 0.0
            if method == "forward-over-reverse" and not self._agrees_reverse_over_forward(out, v):
                # forward-mode rules are not all right (F.layer_norm on torch 2.13): check against differences
                # (only when reverse-over-forward cannot confirm it: differences across kinks are no oracle)
                fd = self._finite_difference(v)
                slack = 10 * self.product_error * float(torch.linalg.vector_norm(v))
                if float(torch.linalg.vector_norm(out.to(torch.float64) - fd.to(torch.float64))) > slack + \
                        1000 * torch.finfo(self.dtype).eps * float(torch.linalg.vector_norm(out)):
                    tried.append((method, RuntimeError("its product disagreed with finite differences beyond their "
                                                       "error estimate (a wrong forward-mode rule)")))
                    method, out = "finite-difference", fd
                else:
                    self.product_error = 0.0
            self._method, self._checked = method, True
            if tried:
                reasons = "; ".join(f"{m} failed ({' '.join(str(e).split())[:120]})" for m, e in tried)
                exactness = ("exact" if method in EXACT_METHODS else
                             "approximate, each product with an error estimate (op.product_error)")
                self.method_notes.append(f"products by {method} ({exactness}): {reasons}")
            return out
        raise self._failure(tried)

    def _as_input(self, v: Any, ndim: tuple[int, ...], func: str) -> Tensor:
        if not isinstance(v, Tensor):
            raise bad_type(func, "v", "a tensor", v)
        if v.ndim not in ndim or v.shape[0] != self.shape[0]:
            want = "a 1-D tensor" if ndim == (1,) else "a 1-D or 2-D tensor"
            raise bad_value(func, "v", f"{want} with {self.shape[0]} rows", v)
        if not v.is_floating_point():
            raise bad_value(func, "v", "a floating-point tensor", v)
        return v.detach().to(dtype=self.dtype, device=self.device).contiguous()  # strided views slow autograd

    def mv(self, v: Tensor) -> Tensor:
        """The product ``A v`` for a 1-D tensor ``v`` (returned in the operator's dtype and device)."""
        v = self._as_input(v, (1,), "CurvatureOperator.mv")
        self.products += 1
        return self._product(v)

    def mm(self, vs: Tensor) -> Tensor:
        """``A V`` for the columns of a 2-D tensor ``V`` of shape (n, k). With ``vectorize`` (Hessian
        only) blocks of :data:`BLOCK` columns go through one ``torch.vmap``-ed forward-over-reverse
        product (larger matrix products, for GPUs); otherwise, or when the model cannot be vmapped,
        one product per column."""
        vs = self._as_input(vs, (2,), "CurvatureOperator.mm")
        k = vs.shape[1]
        self.products += k
        if self.vectorize and k > 1 and self.method in EXACT_METHODS:
            try:
                fn = self._vmapped or self._vectorised()
                with self._kernels():
                    out = torch.cat([fn(vs[:, s:s + BLOCK].T.contiguous()).T for s in range(0, k, BLOCK)], dim=1)
                if self._vmapped is None and not self._agrees(out[:, 0], self._product(vs[:, 0])):
                    # forward-mode rules can be wrong (F.layer_norm on torch 2.13): never trust them unchecked
                    self.method_notes.append("vectorised forward-over-reverse products disagreed with "
                                             f"{self.method} (a wrong forward-mode rule in torch): not used")
                    raise RuntimeError("vectorised products disagree")
                self._vmapped = fn
                return out
            except (RuntimeError, NotImplementedError, TypeError):
                self.vectorize = False  # an operation without a batching or forward-mode rule: loop instead
        return torch.stack([self._product(vs[:, j]) for j in range(k)], dim=1)

    def _vectorised(self):
        """``V ↦ (H V)`` for a (k, n) batch by ``vmap(jvp(grad(L)))`` (forward-over-reverse)."""
        problem, names, buffers = self.problem, self.names, self._buffers
        fixed = {k: v for k, v in self.theta.items() if k not in names}
        order = list(self.theta)
        batches = list(problem.data) if problem.data.cached else None

        def loss(selected: dict[str, Tensor]) -> Tensor:
            params = {k: selected[k] if k in selected else fixed[k] for k in order}
            total = None
            for batch, n in (batches if batches is not None else problem.data):
                term = problem.batch_terms(params, batch, n, buffers, metrics=False)["loss"]
                total = term if total is None else total + term
            return total

        gradient = torch.func.grad(loss)
        point = {k: self.theta[k] for k in names}

        def product(flat: Tensor) -> Tensor:
            tangent = P.unflatten(flat, point)
            out = torch.func.jvp(gradient, (point,), (tangent,))[1]
            return torch.cat([out[k].reshape(-1) for k in names])

        return torch.vmap(product, randomness="error")

    def __matmul__(self, v: Tensor) -> Tensor:
        if isinstance(v, Tensor) and v.ndim == 2:
            return self.mm(v)
        return self.mv(v)

    def apply(self, v: Mapping[str, Tensor]) -> P.Params:
        """``A v`` for a parameter dict ``v`` (entries of unselected parameters are ignored); returns a
        dict over the selected parameters."""
        return self.unflatten(self.mv(self.flatten(v)))

    # -- vectors -------------------------------------------------------------------------------------
    def flatten(self, p: Mapping[str, Tensor]) -> Tensor:
        """The selected parameters of dict ``p`` as one 1-D tensor (the operator's coordinates)."""
        if not isinstance(p, Mapping):
            raise bad_type("CurvatureOperator.flatten", "p", "a dict of parameter tensors", p)
        missing = [n for n in self.names if n not in p]
        if missing:
            raise bad_value("CurvatureOperator.flatten", "p", f"a dict holding {missing[:3]}", sorted(p)[:6])
        return torch.cat([p[n].detach().reshape(-1).to(dtype=self.dtype, device=self.device) for n in self.names])

    def unflatten(self, vector: Tensor) -> P.Params:
        """Split a 1-D tensor into a dict over the selected parameters."""
        return P.unflatten(vector, {n: self.theta[n] for n in self.names})

    def embed(self, vector: Tensor) -> P.Params:
        """A dict over *all* the problem's parameters: ``vector`` on the selected ones, zeros elsewhere."""
        part = self.unflatten(vector.to(dtype=self.dtype, device=self.device))
        return {k: part[k].clone() if k in part else torch.zeros_like(v) for k, v in self.theta.items()}

    def layer_slices(self) -> dict[str, list[tuple[int, int]]]:
        """Layer (owning module) → the (start, stop) slices of its parameters in the flat vector."""
        return layers(self.names, self.sizes)

    # -- conversions ---------------------------------------------------------------------------------
    def dense(self, *, max_size: int = 20_000, chunk: int = 64) -> Tensor:
        """The whole matrix, built from ``n`` products (symmetrised: (A + Aᵀ)/2). For checks on small
        models; refuses more than ``max_size`` rows."""
        n = self.shape[0]
        if n > max_size:
            raise bad_value("CurvatureOperator.dense", "max_size", f"at least the operator size {n} (the dense "
                            f"matrix needs {n * n * 8 / 2**30:.1f} GiB in float64)", max_size)
        out = torch.empty(n, n, dtype=self.dtype, device=self.device)
        eye = torch.eye(n, dtype=self.dtype, device=self.device)
        for s in range(0, n, chunk):
            out[:, s:s + chunk] = self.mm(eye[:, s:s + chunk])
        return (out + out.T) / 2

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` (float64 NumPy in and out), e.g. for ``eigsh``."""
        from scipy.sparse.linalg import LinearOperator

        def matvec(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
            return self.mv(t).to(torch.float64).cpu().numpy()

        def matmat(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
            return self.mm(t).to(torch.float64).cpu().numpy()

        return LinearOperator(self.shape, matvec=matvec, matmat=matmat, rmatvec=matvec, dtype=np.float64)

    def __repr__(self) -> str:
        method = self._method or "automatic (decided at the first product)"
        return (f"CurvatureOperator(kind={self.kind!r}, size={self.shape[0]}, parameters={len(self.names)}, "
                f"dtype={self.dtype}, device={self.device}, retained={self.retained}, products={self.products}, "
                f"method={method!r})")


def _gap(a: Tensor, b: Tensor) -> tuple[float, float]:
    """‖a − b‖ and max(‖a‖, ‖b‖) in float64 (the latter never 0)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    size = max(float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b)))
    return float(torch.linalg.vector_norm(a - b)), size if size > 0 else float("inf")


def _no_derivative(exc: BaseException) -> bool:
    """Whether a torch error says an operation has no derivative of the order/mode a method needs."""
    return isinstance(exc, NotImplementedError) or bool(_NO_DERIVATIVE.search(str(exc)))




def _opaque_functions(term: Tensor) -> list[tuple[str, Any]]:
    """(name, node) of the custom ``torch.autograd.Function`` s in the autograd graph of ``term``: the only
    operations whose backward may silently not be differentiable (torch's own have exact rules)."""
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()
    stack = [term.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.append((getattr(getattr(node, "_forward_cls", None), "__name__", type(node).__name__), node))
        stack.extend(nxt for nxt, _ in node.next_functions)
    return found


def _loss_name(loss: Any) -> str:
    fn = loss.func if isinstance(loss, functools.partial) else loss
    return type(fn).__name__ if isinstance(fn, torch.nn.Module) else getattr(fn, "__name__", type(fn).__name__)


def _prepare(problem: Any, theta: Mapping[str, Tensor] | None, params: ParamSelection, dtype: Any, retain: Any,
             func: str | None = None) -> tuple[Problem, P.Params, tuple[str, ...]]:
    func = func or current_function("curvature_operator", innermost=True)
    if not isinstance(problem, Problem):
        raise bad_type(func, "problem", "a lossatlas.Problem", problem)
    if dtype is not None and dtype not in DTYPES:
        raise bad_value(func, "dtype", "torch.float32, torch.float64 or None (the problem's dtype)", dtype)
    if retain not in (True, False, "auto"):
        raise bad_value(func, "retain", "True, False or 'auto'", retain)
    if theta is None:
        theta = problem.params()
    if not isinstance(theta, Mapping):
        raise bad_type(func, "center", "a dict of parameter tensors (or None for the problem's θ₀)", theta)
    if dtype is not None and dtype != problem.dtype:
        P.check_like(problem.params(), theta, func=func, arg="center", ref_arg="the problem's parameters",
                     check_dtype=False)
        problem = problem.with_dtype(dtype)
        theta = P.to(theta, dtype=dtype)
    problem.check_params(theta, func=func, arg="center")
    names = select(problem, params, func=func)
    return problem, dict(theta), names


@public("curvature.hessian_operator")
@renamed(theta="center")
def hessian_operator(problem: Problem, center: Mapping[str, Tensor] | None = None, *, params: ParamSelection = None,
                     dtype: torch.dtype | None = None, retain: bool | str = "auto",
                     vectorize: bool | None = None, method: str | None = None) -> CurvatureOperator:
    """The Hessian ∇²L(θ) of the problem's dataset loss as a :class:`CurvatureOperator`.

    ``center``: the point (default: the problem's θ₀). ``params``: which parameters (``None``/``"all"``,
    ``"weights"`` to leave out biases and normalisation layers, a layer or parameter name, a glob
    pattern, a list of those, or a callable ``(name, tensor) -> bool``); the others are held at θ.
    ``dtype``: ``torch.float32`` or ``torch.float64`` (default: the problem's). ``retain``: keep the
    autograd graphs between products (``"auto"``: when they fit in :data:`RETAIN_BYTES`).
    ``vectorize``: compute blocks of products (:meth:`CurvatureOperator.mm`, used by
    :func:`trace`) with ``torch.vmap`` (default: on GPUs; on CPUs a loop of single products was as fast).
    ``method``: how products are computed (:data:`PRODUCT_METHODS`; default: the first that works,
    see the module notes); the operator's ``method`` tells which one it uses.

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1), torch.nn.MSELoss(), (x, 3 * x))
    >>> H = lossatlas.curvature.hessian_operator(problem, dtype=torch.float64)
    >>> H.dense()  # 2·[[mean x², mean x], [mean x, 1]]
    tensor([[0.8571, 0.0000],
            [0.0000, 2.0000]], dtype=torch.float64)
    """
    return _make("hessian", problem, center, params=params, dtype=dtype, retain=retain, vectorize=vectorize,
                 func="hessian_operator", method=method)


@public("curvature.ggn_operator")
@renamed(theta="center")
def ggn_operator(problem: Problem, center: Mapping[str, Tensor] | None = None, *, params: ParamSelection = None,
                 dtype: torch.dtype | None = None, retain: bool | str = "auto",
                 convex_loss: bool = False) -> CurvatureOperator:
    """The generalised Gauss–Newton matrix G = Σ_b Jᵀ ∇²_f(n_b ℓ_b / N) J at θ (J: Jacobian of the
    model output) as a :class:`CurvatureOperator`; arguments as :func:`hessian_operator`.

    Needs ``(inputs, targets)`` batches and a loss that is convex in the model output, so that G is
    positive semi-definite: MSE, cross-entropy, (logit) binary cross-entropy, Huber/smooth L1,
    Poisson NLL. For another loss you know to be convex in the output, pass ``convex_loss=True``.

    >>> import torch, lossatlas
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> data = (torch.randn(16, 3), torch.randint(0, 2, (16,)))
    >>> G = lossatlas.curvature.ggn_operator(lossatlas.Problem(net, torch.nn.CrossEntropyLoss(), data),
    ...                                      dtype=torch.float64)
    >>> bool(torch.linalg.eigvalsh(G.dense()).min() > -1e-12)  # positive semi-definite
    True
    """
    return _make("ggn", problem, center, params=params, dtype=dtype, retain=retain, convex_loss=convex_loss,
                 func="ggn_operator")


def _make(kind: str, problem: Any, theta: Mapping[str, Tensor] | None, *, params: ParamSelection, dtype: Any,
          retain: Any, func: str | None = None, convex_loss: bool = False, vectorize: bool | None = None,
          method: str | None = None) -> CurvatureOperator:
    func = func or current_function("curvature_operator", innermost=True)
    if kind == "ggn" and isinstance(problem, Problem):
        if problem.closure is not None or problem.loss_fn is None:
            raise InvalidArgumentError(f"{func}(): argument 'problem' must have a loss(outputs, targets), not a "
                                       "closure (the GGN needs the model output); use the Hessian instead")
        if not isinstance(convex_loss, bool):
            raise bad_type(func, "convex_loss", "a bool", convex_loss)
        name = _loss_name(problem.loss_fn)
        if name not in CONVEX_LOSSES and not convex_loss:
            raise InvalidArgumentError(f"{func}(): the problem's loss must be convex in the model output for the "
                                       f"GGN to be positive semi-definite ({', '.join(CONVEX_LOSSES[::2])}); "
                                       f"received {name} (pass convex_loss=True if it is)")
    if vectorize is not None and not isinstance(vectorize, bool):
        raise bad_type(func, "vectorize", "True, False or None (automatic)", vectorize)
    if method is not None and method not in PRODUCT_METHODS:
        raise bad_value(func, "method", f"None (automatic) or one of {PRODUCT_METHODS}", method)
    problem, theta, names = _prepare(problem, theta, params, dtype, retain, func)
    return CurvatureOperator(problem, theta, names, kind=kind, retain=retain, vectorize=vectorize, method=method)


def as_operator(problem: Any, theta: Mapping[str, Tensor] | None, *, func: str | None = None, curvature: str = "hessian",
                params: ParamSelection = None, dtype: torch.dtype | None = None) -> CurvatureOperator:
    """An operator from the family arguments ``(problem, theta, curvature=, params=, dtype=)``, or the
    operator itself when ``problem`` already is one. Messages name ``func`` (default: the public
    function running)."""
    func = func or current_function("curvature_operator", innermost=True)
    if isinstance(problem, CurvatureOperator):
        for arg, value in (("center", theta), ("params", params), ("dtype", dtype)):
            if value is not None:
                raise bad_value(func, arg, "None when 'problem' is already a CurvatureOperator", value)
        return problem
    if curvature not in KINDS:
        raise bad_value(func, "curvature", f"one of {KINDS}", curvature)
    if not isinstance(problem, Problem):
        raise bad_type(func, "problem", "a lossatlas.Problem or a CurvatureOperator", problem)
    return _make(curvature, problem, theta, params=params, dtype=dtype, retain="auto", func=func)
