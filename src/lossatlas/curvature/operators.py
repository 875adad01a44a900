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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import params as P
from ..errors import InvalidArgumentError, bad_type, bad_value
from ..problem import Problem
from ._select import ParamSelection, select

__all__ = ["CurvatureOperator", "hessian_operator", "ggn_operator", "RETAIN_BYTES", "CONVEX_LOSSES"]

#: most bytes of autograd graphs kept between products (``retain="auto"``)
RETAIN_BYTES = 1 << 30
#: columns per vectorised product in :meth:`CurvatureOperator.mm`
BLOCK = 16
#: losses convex in the model output, for which the GGN is positive semi-definite
CONVEX_LOSSES = ("MSELoss", "mse_loss", "CrossEntropyLoss", "cross_entropy", "BCEWithLogitsLoss",
                 "binary_cross_entropy_with_logits", "BCELoss", "binary_cross_entropy", "HuberLoss", "huber_loss",
                 "SmoothL1Loss", "smooth_l1_loss", "PoissonNLLLoss", "poisson_nll_loss")
KINDS = ("hessian", "ggn")
DTYPES = (torch.float32, torch.float64)


class CurvatureOperator:
    """A symmetric curvature matrix (``kind`` ``"hessian"`` or ``"ggn"``) at θ, acting on the
    flattened selected parameters (``names``, in the problem's order).

    ``op @ v`` (or :meth:`mv`) multiplies a 1-D tensor of length ``op.shape[0]``; ``op @ V`` with a
    2-D ``V`` multiplies every column (:meth:`mm`); :meth:`apply` takes and returns parameter dicts.
    ``products`` counts matrix-vector products so far. Build with :func:`hessian_operator` or
    :func:`ggn_operator`.
    """

    def __init__(self, problem: Problem, theta: Mapping[str, Tensor], names: tuple[str, ...], *, kind: str,
                 retain: bool | str = "auto", vectorize: bool | None = None):
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
        self._leaves = [self.theta[k].clone().requires_grad_(True) for k in self.names]
        leaf_of = dict(zip(self.names, self._leaves))
        self._point = {k: leaf_of.get(k, v) for k, v in self.theta.items()}
        self._buffers = (problem.recalibrated_buffers(self.theta)
                         if problem.bn == "recalibrate" and problem._bn_modules else None)
        self._graphs: list[Any] | None = None
        self.retained = self._decide_retain(retain)
        if vectorize is None:  # measured on a 2-core CPU: a loop of single products is as fast or faster
            vectorize = self.device.type != "cpu"
        self.vectorize = bool(vectorize) and kind == "hessian"
        self._vmapped = None

    # -- graphs ------------------------------------------------------------------------------------
    def _graph(self, batch: Any, n: int) -> tuple:
        with torch.enable_grad():
            if self.kind == "hessian":
                return self._hessian_graph(batch, n)
            return self._ggn_graph(batch, n)

    def _hessian_graph(self, batch: Any, n: int) -> tuple:
        term = self.problem.batch_terms(self._point, batch, n, self._buffers, metrics=False)["loss"]
        if not term.requires_grad:
            return ("hessian", [])
        grads = torch.autograd.grad(term, self._leaves, create_graph=True, allow_unused=True)
        pairs = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        return ("hessian", pairs)

    def _ggn_graph(self, batch: Any, n: int) -> tuple:
        problem = self.problem
        inputs, targets = batch
        with problem.bound(self._point, self._buffers) as module:
            outputs = module(inputs)
        if not isinstance(outputs, Tensor):
            raise InvalidArgumentError("ggn_operator(): the model must return a tensor (the GGN needs the model "
                                       f"output); received {type(outputs).__name__}")
        if not outputs.requires_grad:
            return ("ggn", None)
        out_leaf = outputs.detach().requires_grad_(True)
        term = _weighted(problem, problem.loss_fn(out_leaf, targets), n)
        (g_out,) = torch.autograd.grad(term, out_leaf, create_graph=True)
        u = torch.zeros_like(outputs, requires_grad=True)
        jt_u = torch.autograd.grad(outputs, self._leaves, u, create_graph=True, allow_unused=True)
        pairs = [(i, g) for i, g in enumerate(jt_u) if g is not None and g.requires_grad]
        return ("ggn", (outputs, out_leaf, g_out, u, pairs))

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
        kind, data = graph
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

    def _product(self, v: Tensor) -> Tensor:
        parts = self._split(v)
        total: list[Tensor | None] = [None] * len(self._leaves)
        with torch.enable_grad():
            for graph in self._graphs_iter():
                for i, g in enumerate(self._backward(graph, parts)):
                    if g is not None:
                        total[i] = g if total[i] is None else total[i] + g
        return torch.cat([(t if t is not None else torch.zeros_like(leaf)).reshape(-1)
                          for t, leaf in zip(total, self._leaves)])

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
        if self.vectorize and k > 1:
            try:
                fn = self._vmapped or self._vectorised()
                self._vmapped = fn
                return torch.cat([fn(vs[:, s:s + BLOCK].T.contiguous()).T for s in range(0, k, BLOCK)], dim=1)
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
        from ._select import layers

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
        return (f"CurvatureOperator(kind={self.kind!r}, size={self.shape[0]}, parameters={len(self.names)}, "
                f"dtype={self.dtype}, device={self.device}, retained={self.retained}, products={self.products})")


def _weighted(problem: Problem, raw: Tensor, n: int) -> Tensor:
    """A batch's loss as its share n_b ℓ_b / N of the dataset mean (as ``Problem.batch_terms``)."""
    if problem.reduction == "sum":
        return raw / problem.n_samples
    if problem.reduction == "none":
        return raw.mean() * (n / problem.n_samples)
    return raw * (n / problem.n_samples)


def _loss_name(loss: Any) -> str:
    import functools

    fn = loss.func if isinstance(loss, functools.partial) else loss
    return type(fn).__name__ if isinstance(fn, torch.nn.Module) else getattr(fn, "__name__", type(fn).__name__)


def _prepare(problem: Any, theta: Mapping[str, Tensor] | None, params: ParamSelection, dtype: Any, retain: Any,
             func: str) -> tuple[Problem, P.Params, tuple[str, ...]]:
    if not isinstance(problem, Problem):
        raise bad_type(func, "problem", "a lossatlas.Problem", problem)
    if dtype is not None and dtype not in DTYPES:
        raise bad_value(func, "dtype", "torch.float32, torch.float64 or None (the problem's dtype)", dtype)
    if retain not in (True, False, "auto"):
        raise bad_value(func, "retain", "True, False or 'auto'", retain)
    if theta is None:
        theta = problem.params()
    if not isinstance(theta, Mapping):
        raise bad_type(func, "theta", "a dict of parameter tensors (or None for the problem's θ₀)", theta)
    if dtype is not None and dtype != problem.dtype:
        P.check_like(problem.params(), theta, func=func, arg="theta", ref_arg="the problem's parameters",
                     check_dtype=False)
        problem = problem.with_dtype(dtype)
        theta = P.to(theta, dtype=dtype)
    problem.check_params(theta, func=func, arg="theta")
    names = select(problem, params, func=func)
    return problem, dict(theta), names


def hessian_operator(problem: Problem, theta: Mapping[str, Tensor] | None = None, *, params: ParamSelection = None,
                     dtype: torch.dtype | None = None, retain: bool | str = "auto",
                     vectorize: bool | None = None) -> CurvatureOperator:
    """The Hessian ∇²L(θ) of the problem's dataset loss as a :class:`CurvatureOperator`.

    ``theta``: the point (default: the problem's θ₀). ``params``: which parameters (``None``/``"all"``,
    ``"weights"`` to leave out biases and normalisation layers, a layer or parameter name, a glob
    pattern, a list of those, or a callable ``(name, tensor) -> bool``); the others are held at θ.
    ``dtype``: ``torch.float32`` or ``torch.float64`` (default: the problem's). ``retain``: keep the
    autograd graphs between products (``"auto"``: when they fit in :data:`RETAIN_BYTES`).
    ``vectorize``: compute blocks of products (:meth:`CurvatureOperator.mm`, used by
    :func:`trace`) with ``torch.vmap`` (default: on GPUs; on CPUs a loop of single products was as fast).

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1), torch.nn.MSELoss(), (x, 3 * x))
    >>> H = lossatlas.curvature.hessian_operator(problem, dtype=torch.float64)
    >>> H.dense()  # 2·[[mean x², mean x], [mean x, 1]]
    tensor([[0.8571, 0.0000],
            [0.0000, 2.0000]], dtype=torch.float64)
    """
    return _make("hessian", problem, theta, params=params, dtype=dtype, retain=retain, vectorize=vectorize,
                 func="hessian_operator")


def ggn_operator(problem: Problem, theta: Mapping[str, Tensor] | None = None, *, params: ParamSelection = None,
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
    return _make("ggn", problem, theta, params=params, dtype=dtype, retain=retain, convex_loss=convex_loss,
                 func="ggn_operator")


def _make(kind: str, problem: Any, theta: Mapping[str, Tensor] | None, *, params: ParamSelection, dtype: Any,
          retain: Any, func: str, convex_loss: bool = False, vectorize: bool | None = None) -> CurvatureOperator:
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
    problem, theta, names = _prepare(problem, theta, params, dtype, retain, func)
    return CurvatureOperator(problem, theta, names, kind=kind, retain=retain, vectorize=vectorize)


def as_operator(problem: Any, theta: Mapping[str, Tensor] | None, *, func: str, curvature: str = "hessian",
                params: ParamSelection = None, dtype: torch.dtype | None = None) -> CurvatureOperator:
    """An operator from the family arguments ``(problem, theta, curvature=, params=, dtype=)``, or the
    operator itself when ``problem`` already is one."""
    if isinstance(problem, CurvatureOperator):
        for arg, value in (("theta", theta), ("params", params), ("dtype", dtype)):
            if value is not None:
                raise bad_value(func, arg, "None when 'problem' is already a CurvatureOperator", value)
        return problem
    if curvature not in KINDS:
        raise bad_value(func, "curvature", f"one of {KINDS}", curvature)
    if not isinstance(problem, Problem):
        raise bad_type(func, "problem", "a lossatlas.Problem or a CurvatureOperator", problem)
    return _make(curvature, problem, theta, params=params, dtype=dtype, retain="auto", func=func)
