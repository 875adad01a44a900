"""More curvature matrices behind the :class:`~lossatlas.curvature.CurvatureOperator` interface.

* **Empirical Fisher** ``EF = (1/N) Σᵢ gᵢ gᵢᵀ`` with gᵢ = ∇ℓ(f(xᵢ; θ), yᵢ) the gradient of sample i's
  loss at its true label (:func:`ef_operator`).
* **Fisher** ``F = (1/N) Σᵢ E_{y∼p(y|f(xᵢ))}[∇ℓ(fᵢ, y) ∇ℓ(fᵢ, y)ᵀ]``, the expectation under the model's
  own predictive distribution, estimated with ``mc_samples`` labels per sample drawn from it with a
  seed (:func:`fisher_operator`). For the losses that are negative log-likelihoods (cross-entropy:
  categorical; logit BCE: Bernoulli; MSE: Gaussian of variance D/2 per output for a mean over D
  outputs, 1/2 for a sum; a loss averaged over a sample's D outputs is 1/D times its likelihood's
  negative log, and its outer products are scaled by D) its expectation is the GGN; :meth:`FisherOperator.mv_stderr` gives the
  Monte-Carlo standard error of a product over the draws.
* **Diagonal** of any of these matrices (:func:`diagonal`): exact from unit-vector products for
  small models, else the Hutchinson-style estimator diag ≈ mean of z ⊙ (A z) over Rademacher z
  (Bekas, Kokiopoulou & Saad 2007) with a per-entry standard error.
* **KFAC / EKFAC** of the GGN/Fisher for ``nn.Linear``/``nn.Conv2d`` layers (:func:`kfac_operator`),
  from curvlinops-for-pytorch.

Both Fisher kinds share the GGN's data loop and batch weighting (each batch's term is n_b ℓ_b / N;
see :mod:`lossatlas.curvature.operators`): a product is J v (two reverse passes through the
retained graph), a per-sample contraction with the output gradients rᵢ = ∂(n_b ℓ_b/N)/∂fᵢ, and one
Jᵀ pass — ``EF v = N Σᵢ Jᵢᵀ rᵢ (rᵢᵀ Jᵢ v)``, no per-sample gradients stored. This needs a loss that
is a sum of per-sample terms (every torch loss with mean/sum reduction is).

Engines (measured by ``benchmarks/bench_curvature_matrices.py``; table in docs/benchmarks.md):

* EF/Fisher products: ours. curvlinops' ``EFLinearOperator``/``FisherMCLinearOperator`` agree with
  ours to rounding but were 10–25× slower per product (they rerun the forward pass of every batch
  per product; ours keep the graphs), take a ``nn.Module`` and a list of batches instead of a Problem
  (parameter selection, BatchNorm policy, float64 variants), and give no Monte-Carlo error.
* Diagonal: ours, because it carries a per-entry standard error (curvlinops' ``hutchinson_diag``
  returns none) and works on every operator here; curvlinops' was ~2× faster on the benchmark
  (multi-vector products amortise the forward pass).
* KFAC/EKFAC: curvlinops' (Linear and Conv2d, exact Kronecker factors, its Kronecker inverse),
  wrapped to our parameter order and batch weighting with weights and biases in one factor
  (``separate_weight_and_bias=False``: with separate factors KFAC is not exact even for one layer).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import params as P
from ..errors import InvalidArgumentError, bad_type, bad_value, public, renamed
from ..problem import Problem
from . import _common as C
from ..params.selection import ParamSelection
from .operators import CurvatureOperator, _loss_name, _make, _prepare, as_operator

__all__ = ["ef_operator", "fisher_operator", "diagonal", "kfac_operator", "FisherOperator", "Diagonal",
           "KFACOperator", "curvature_operator", "FISHER_LOSSES"]

#: losses whose Fisher can be sampled (the predictive distribution each is the likelihood of)
FISHER_LOSSES = {"CrossEntropyLoss": "categorical", "cross_entropy": "categorical",
                 "BCEWithLogitsLoss": "bernoulli", "binary_cross_entropy_with_logits": "bernoulli",
                 "MSELoss": "gaussian", "mse_loss": "gaussian"}
#: the curvature kinds :func:`curvature_operator` builds
ALL_KINDS = ("hessian", "ggn", "ef", "fisher")


class FisherOperator(CurvatureOperator):
    """The empirical Fisher (``kind="ef"``) or the sampled Fisher (``kind="fisher"``) as a
    :class:`CurvatureOperator` (same products, ``dense``, ``to_scipy`` …). Build with
    :func:`ef_operator` or :func:`fisher_operator`.

    ``mc_samples`` labels per sample are drawn once, at construction, from the model's predictive
    distribution at θ with generator streams of ``seed`` (one per batch): the operator is a fixed
    positive semi-definite matrix, the same bytes for the same seed. ``labels`` keeps the draws
    (one tensor (mc_samples, *targets shape) per batch, for checks).
    """

    def __init__(self, problem: Problem, theta: Mapping[str, Tensor], names: tuple[str, ...], *, kind: str,
                 mc_samples: int = 1, seed: int = 0, retain: bool | str = "auto"):
        self.mc_samples = int(mc_samples)
        self.seed = int(seed)
        self.distribution = FISHER_LOSSES.get(_loss_name(problem.loss_fn), "")
        self.labels: list[Tensor] = []
        self._next = 0
        super().__init__(problem, theta, names, kind=kind, retain=retain, vectorize=False, method="double-backward")

    def _candidates(self) -> list[str]:
        return ["double-backward"]

    def _decide_retain(self, retain):
        self._next = 0
        return super()._decide_retain(retain)

    def _graphs_iter(self):
        self._next = 0
        yield from super()._graphs_iter()

    def _graph(self, batch: Any, n: int) -> tuple:
        index, self._next = self._next, self._next + 1
        with torch.enable_grad():
            return self._outer_graph(batch, n, index)

    def _sample(self, outputs: Tensor, index: int) -> Tensor:
        """``mc_samples`` label draws (M, *labels shape) from the predictive distribution at ``outputs``."""
        if index < len(self.labels):
            return self.labels[index]
        gen = C.generator(self.seed, index)
        f = outputs.detach().to(torch.float64).cpu()
        m = self.mc_samples
        if self.distribution == "categorical":
            probs = torch.softmax(f, dim=1)
            moved = probs.movedim(1, -1).reshape(-1, probs.shape[1])
            draws = torch.multinomial(moved, m, replacement=True, generator=gen)  # (rows, M)
            labels = draws.T.reshape(m, *probs.movedim(1, -1).shape[:-1]).to(torch.long)
        elif self.distribution == "bernoulli":
            p = torch.sigmoid(f)
            labels = (torch.rand((m, *f.shape), generator=gen, dtype=torch.float64) < p).to(torch.float64)
        else:  # gaussian: ℓᵢ = c‖fᵢ − y‖² has ∇²ℓᵢ = 2c I, the likelihood N(f, I/(2c))
            per = f[0].numel() if f.ndim > 1 else 1
            c = 1.0 / per if self.problem.reduction != "sum" else 1.0
            labels = f + math.sqrt(1.0 / (2.0 * c)) * torch.randn((m, *f.shape), generator=gen, dtype=torch.float64)
        labels = labels.to(self.device)
        if labels.is_floating_point():
            labels = labels.to(self.dtype)
        self.labels.append(labels)
        return labels

    def _likelihood_scale(self, outputs: Tensor) -> float:
        """1/c for a loss that is c × the negative log-likelihood per sample: a mean over the D
        outputs of a sample (logit BCE) or over its positions (cross-entropy on (n, C, …)) has
        c = 1/D, and E[∇ℓ∇ℓᵀ] = c²·F_NLL while the GGN is c·F_NLL. (MSE: in the Gaussian's variance.)"""
        if self.problem.reduction == "sum" or self.distribution == "gaussian":
            return 1.0
        per = outputs[0].numel() if outputs.ndim > 1 else 1
        if self.distribution == "categorical":
            per //= outputs.shape[1]
        return float(per)

    def _outer_graph(self, batch: Any, n: int, index: int) -> tuple:
        problem = self.problem
        inputs, targets = batch
        with problem.bound(self._point, self._buffers) as module:
            outputs = module(inputs)
        if not isinstance(outputs, Tensor):
            raise InvalidArgumentError(f"{self.kind}_operator(): the model must return a tensor (the Fisher needs "
                                       f"the model output); received {type(outputs).__name__}")
        if not outputs.requires_grad:
            return ("outer", None, "unused")
        out_leaf = outputs.detach().requires_grad_(True)
        draws = [targets] if self.kind == "ef" else list(self._sample(outputs, index))
        rows = []
        for y in draws:
            term = problem.weighted_loss(problem.loss_fn(out_leaf, y), n)
            if not term.requires_grad:
                return ("outer", None, "no-grad")
            rows.append(torch.autograd.grad(term, out_leaf)[0].detach())
        r = torch.stack(rows)  # (M, *outputs.shape): ∂(n_b ℓ_b / N)/∂f per draw
        if self.kind == "fisher":
            r = r * math.sqrt(self._likelihood_scale(outputs))
        u = torch.zeros_like(outputs, requires_grad=True)
        jt_u = torch.autograd.grad(outputs, self._leaves, u, create_graph=True, allow_unused=True)
        pairs = [(i, g) for i, g in enumerate(jt_u) if g is not None and g.requires_grad]
        status = "ok" if bool(r.any()) or pairs else "zero-grad"
        return ("outer", (outputs, u, pairs, r), status)

    def _weights(self, data: tuple, parts: list[Tensor]) -> Tensor | None:
        """(M, *outputs.shape): N · rₘ · ⟨rₘ, J v⟩ per sample, for each draw."""
        outputs, u, pairs, r = data
        (jv,) = torch.autograd.grad([g for _, g in pairs], u, [parts[i] for i, _ in pairs], retain_graph=True)
        dims = tuple(range(2, r.ndim))
        c = (r * jv).sum(dim=dims, keepdim=True) if dims else r * jv  # per draw and sample
        return self.problem.n_samples * c * r

    def _backward(self, graph: tuple, parts: list[Tensor]) -> list[Tensor | None]:
        kind, data, _ = graph
        if data is None or not data[2]:
            return [None] * len(self._leaves)
        w = self._weights(data, parts).mean(dim=0)
        return list(torch.autograd.grad(data[0], self._leaves, w, retain_graph=self._graphs is not None,
                                        allow_unused=True))

    def mv_stderr(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """``(F v, stderr)``: the product and its Monte-Carlo standard error per entry, the standard
        deviation over the ``mc_samples`` draws of the single-draw products divided by √mc_samples
        (NaN for one draw; zeros for the empirical Fisher, which is not sampled)."""
        v = self._as_input(v, (1,), "FisherOperator.mv_stderr")
        self.products += 1
        parts = self._split(v)
        m = 1 if self.kind == "ef" else self.mc_samples
        totals: list[list[Tensor | None]] = [[None] * len(self._leaves) for _ in range(m)]
        with torch.enable_grad():
            for graph in self._graphs_iter():
                _, data, _ = graph
                if data is None or not data[2]:
                    continue
                w = self._weights(data, parts)
                for j in range(m):
                    keep = self._graphs is not None or j < m - 1
                    gs = torch.autograd.grad(data[0], self._leaves, w[j], retain_graph=keep, allow_unused=True)
                    for i, g in enumerate(gs):
                        if g is not None:
                            totals[j][i] = g if totals[j][i] is None else totals[j][i] + g
        each = torch.stack([self._flat(t) for t in totals])
        if self.kind == "ef":
            return each[0], torch.zeros_like(each[0])
        if m < 2:
            return each[0], torch.full_like(each[0], float("nan"))
        return each.mean(0), each.std(0, unbiased=True) / math.sqrt(m)

    def __repr__(self) -> str:
        extra = f", mc_samples={self.mc_samples}, seed={self.seed}" if self.kind == "fisher" else ""
        return (f"FisherOperator(kind={self.kind!r}, size={self.shape[0]}, parameters={len(self.names)}, "
                f"dtype={self.dtype}, retained={self.retained}, products={self.products}{extra})")


def _check_outputs_loss(problem: Any, func: str) -> None:
    if isinstance(problem, Problem) and (problem.closure is not None or problem.loss_fn is None):
        raise InvalidArgumentError(f"{func}(): argument 'problem' must have a loss(outputs, targets), not a "
                                   "closure (the Fisher needs the model output); use the Hessian instead")


@public("curvature.ef_operator")
@renamed(theta="center")
def ef_operator(problem: Problem, center: Mapping[str, Tensor] | None = None, *, params: ParamSelection = None,
                dtype: torch.dtype | None = None, retain: bool | str = "auto") -> FisherOperator:
    """The empirical Fisher EF = (1/N) Σᵢ ∇ℓᵢ ∇ℓᵢᵀ (gradients of each sample's loss at its label) as
    a :class:`FisherOperator`; arguments as :func:`~lossatlas.curvature.hessian_operator`. Needs
    ``(inputs, targets)`` batches and a loss that sums per-sample terms.

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 4).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1, bias=False), torch.nn.MSELoss(), (x, 0 * x))
    >>> EF = lossatlas.curvature.ef_operator(problem, {"weight": torch.ones(1, 1)}, dtype=torch.float64)
    >>> EF.dense()  # mean of (2·w·x²)² over x = ±1, ±1/3: (4 + 4/81)/2
    tensor([[2.0247]], dtype=torch.float64)
    """
    _check_outputs_loss(problem, "ef_operator")
    problem, center, names = _prepare(problem, center, params, dtype, retain, "ef_operator")
    return FisherOperator(problem, center, names, kind="ef", retain=retain)


@public("curvature.fisher_operator")
@renamed(theta="center")
def fisher_operator(problem: Problem, center: Mapping[str, Tensor] | None = None, *, params: ParamSelection = None,
                    dtype: torch.dtype | None = None, retain: bool | str = "auto", mc_samples: int = 1,
                    seed: int = 0) -> FisherOperator:
    """The Fisher information F = (1/N) Σᵢ E_{y∼p(·|fᵢ)}[∇ℓ(fᵢ, y) ∇ℓ(fᵢ, y)ᵀ], with ``mc_samples``
    labels per sample drawn (with ``seed``) from the model's predictive distribution: categorical
    for cross-entropy, Bernoulli for logit BCE, Gaussian for MSE (see the module notes). Its
    expectation is the GGN; :meth:`FisherOperator.mv_stderr` gives the sampling error of a product.

    >>> import torch, lossatlas
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> problem = lossatlas.Problem(torch.nn.Linear(3, 4), torch.nn.CrossEntropyLoss(),
    ...                             (torch.randn(64, 3), torch.randint(0, 4, (64,))))
    >>> F = lossatlas.curvature.fisher_operator(problem, dtype=torch.float64, mc_samples=200, seed=1)
    >>> G = lossatlas.curvature.ggn_operator(problem, dtype=torch.float64).dense()
    >>> bool((F.dense() - G).abs().max() < 0.1 * G.abs().max())  # E[F] = G
    True
    """
    _check_outputs_loss(problem, "fisher_operator")
    if isinstance(problem, Problem):
        name = _loss_name(problem.loss_fn)
        if name not in FISHER_LOSSES:
            raise InvalidArgumentError(f"fisher_operator(): the problem's loss must be a negative log-likelihood "
                                       f"whose predictive distribution can be sampled ({', '.join(FISHER_LOSSES)}); "
                                       f"received {name}")
        fn = problem.loss_fn
        keywords = getattr(fn, "keywords", {}) or {}
        odd = [k for k in ("weight", "pos_weight") if getattr(fn, k, keywords.get(k)) is not None]
        if float(getattr(fn, "label_smoothing", keywords.get("label_smoothing", 0.0)) or 0.0) != 0.0:
            odd.append("label_smoothing")
        if odd:
            raise InvalidArgumentError(f"fisher_operator(): the problem's loss must be a plain likelihood; received "
                                       f"{name} with {', '.join(odd)} (its Fisher is not the GGN of this loss)")
    mc_samples = C.check_int("fisher_operator", "mc_samples", mc_samples)
    seed = C.check_seed("fisher_operator", seed)
    problem, center, names = _prepare(problem, center, params, dtype, retain, "fisher_operator")
    return FisherOperator(problem, center, names, kind="fisher", retain=retain, mc_samples=mc_samples, seed=seed)


@public("curvature.curvature_operator")
@renamed(theta="center")
def curvature_operator(problem: Any, center: Mapping[str, Tensor] | None = None, *, curvature: str = "hessian",
                       params: ParamSelection = None, dtype: torch.dtype | None = None,
                       func: str = "curvature_operator", **options) -> CurvatureOperator:
    """The operator of ``curvature`` (``"hessian"``, ``"ggn"``, ``"ef"``, ``"fisher"``) — or the
    operator itself when ``problem`` already is one (any :class:`CurvatureOperator`, including
    :class:`KFACOperator`)."""
    if isinstance(problem, (CurvatureOperator, KFACOperator)) or curvature in ("hessian", "ggn"):
        return as_operator(problem, center, func=func, curvature=curvature, params=params, dtype=dtype) \
            if not isinstance(problem, KFACOperator) else problem
    if curvature == "ef":
        return ef_operator(problem, center, params=params, dtype=dtype)
    if curvature == "fisher":
        return fisher_operator(problem, center, params=params, dtype=dtype, **options)
    raise bad_value(func, "curvature", f"one of {ALL_KINDS}", curvature)


# -- diagonal ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Diagonal:
    """The diagonal of a curvature matrix over the flattened selected parameters (``names``, in the
    problem's order): ``values`` ± ``stderr`` per entry (zeros for ``method="exact"``).

    ``samples``: Rademacher probes of the Hutchinson estimator (0 for exact); ``products``:
    matrix-vector products taken. :meth:`as_params` splits a vector into a parameter dict.
    """

    values: np.ndarray
    stderr: np.ndarray
    method: str
    samples: int
    products: int
    kind: str
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    seed: int = 0

    def as_params(self, which: str = "values") -> dict[str, np.ndarray]:
        """``values`` (or ``"stderr"``) as a dict of arrays shaped like the parameters."""
        flat = getattr(self, which)
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = int(np.prod(shape)) if shape else 1
            out[name] = flat[start:start + size].reshape(shape)
            start += size
        return out

    def __repr__(self) -> str:
        err = float(np.max(self.stderr)) if len(self.stderr) else 0.0
        return (f"Diagonal(kind={self.kind!r}, method={self.method!r}, size={len(self.values)}, "
                f"sum={float(self.values.sum()):.6g}, max_stderr={err:.2g}, samples={self.samples}, "
                f"products={self.products})")


#: :func:`diagonal` with ``method="auto"`` is exact up to this many parameters
EXACT_DIAGONAL = 2048


@public("curvature.diagonal")
@renamed(theta="center")
def diagonal(problem: Any, center: Mapping[str, Tensor] | None = None, *, curvature: str = "hessian",
             params: ParamSelection = None, dtype: torch.dtype | None = None, method: str = "auto",
             samples: int = 100, seed: int = 0, chunk: int = 64) -> Diagonal:
    """The diagonal of the Hessian (or ``curvature="ggn"``/``"ef"``/``"fisher"``, or of a given operator).

    ``method="exact"``: one product per coordinate (eᵢᵀ A eᵢ; exact up to rounding). ``"hutchinson"``:
    diag(A) = E[z ⊙ A z] for Rademacher z, averaged over ``samples`` probes (seeded), with the per-entry
    standard error std(z ⊙ A z)/√samples; an entry's error is ≈ (Σ_{j≠i} A_ij²)^{1/2}/√samples.
    ``"auto"``: exact up to :data:`EXACT_DIAGONAL` parameters, else Hutchinson.

    >>> import torch, lossatlas
    >>> x = torch.linspace(-1, 1, 8).reshape(-1, 1)
    >>> problem = lossatlas.Problem(torch.nn.Linear(1, 1), torch.nn.MSELoss(), (x, 3 * x))
    >>> lossatlas.curvature.diagonal(problem, dtype=torch.float64).values.round(4).tolist()
    [0.8571, 2.0]
    """
    func = "diagonal"
    if method not in ("auto", "exact", "hutchinson"):
        raise bad_value(func, "method", "'auto', 'exact' or 'hutchinson'", method)
    samples = C.check_int(func, "samples", samples, minimum=2)
    chunk = C.check_int(func, "chunk", chunk)
    seed = C.check_seed(func, seed)
    op = curvature_operator(problem, center, curvature=curvature, params=params, dtype=dtype, func=func)
    n = op.shape[0]
    if method == "auto":
        method = "exact" if n <= EXACT_DIAGONAL else "hutchinson"
    before = op.products
    if method == "exact":
        eye = torch.eye(n, dtype=op.dtype, device=op.device)
        values = torch.cat([(op.mm(eye[:, s:s + chunk]) * eye[:, s:s + chunk]).sum(0) for s in range(0, n, chunk)])
        vals = values.to(torch.float64).cpu().numpy()
        err = np.zeros(n)
        used = 0
    else:
        acc = np.zeros(n)
        acc2 = np.zeros(n)
        for s in range(0, samples, chunk):
            k = min(chunk, samples - s)
            z = C.rademacher(n, k, seed, stream=s // chunk, device=op.device).to(op.dtype)
            terms = (z * op.mm(z)).to(torch.float64).cpu().numpy()
            acc += terms.sum(1)
            acc2 += (terms * terms).sum(1)
        vals = acc / samples
        err = np.sqrt(np.maximum(acc2 / samples - vals * vals, 0.0) * samples / (samples - 1) / samples)
        used = samples
    shapes = tuple(tuple(op.theta[k].shape) for k in op.names)
    kind = getattr(op, "kind", "operator")
    return Diagonal(values=vals, stderr=err, method=method, samples=used, products=op.products - before, kind=kind,
                    names=op.names, shapes=shapes, seed=seed)


# -- KFAC ----------------------------------------------------------------------------------------------
class KFACOperator:
    """KFAC (or EKFAC) of the GGN/Fisher at θ: a block-diagonal matrix, one Kronecker product per
    ``nn.Linear``/``nn.Conv2d`` layer, from curvlinops-for-pytorch (``op.engine``). Same vector
    interface as :class:`CurvatureOperator` (``op @ v``, :meth:`mv`, :meth:`mm`, :meth:`dense`,
    ``shape``, ``names``, ``products``), flattened in the problem's parameter order. :meth:`solve`
    applies the damped inverse (K + λI)⁻¹ exactly through eigendecompositions of the factors.
    """

    def __init__(self, problem: Problem, theta: Mapping[str, Tensor], names: tuple[str, ...], *,
                 fisher_type: str, mc_samples: int, seed: int, ekfac: bool):
        import curvlinops

        self.problem = problem
        self.theta = {k: v.detach() for k, v in theta.items()}
        self.names = names
        self.kind = "ekfac" if ekfac else "kfac"
        self.fisher_type = fisher_type
        self.dtype, self.device = problem.dtype, problem.device
        self.engine = "curvlinops " + _version("curvlinops-for-pytorch")
        self.products = 0
        module = _module_at(problem, self.theta)
        named = dict(module.named_parameters())
        self._params = [named[k] for k in names]
        self.sizes = {k: self.theta[k].numel() for k in names}
        n = sum(self.sizes.values())
        self.shape = (n, n)
        supported = set()
        for mod in module.modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                supported.update(id(p) for p in mod.parameters(recurse=False))
        missing = [k for k in names if id(named[k]) not in supported]
        if missing:
            raise InvalidArgumentError(f"kfac_operator(): argument 'params' must select parameters of nn.Linear or "
                                       f"nn.Conv2d layers only (KFAC has no factors for others); received "
                                       f"{missing[:3]}")
        data = [(b[0], b[1]) for b, _ in problem.data]
        loss = problem.loss_fn
        cls = curvlinops.EKFACLinearOperator if ekfac else curvlinops.KFACLinearOperator
        self._op = cls(module, loss, self._params, data, check_deterministic=False, fisher_type=fisher_type,
                       mc_samples=mc_samples, seed=seed, num_data=problem.n_samples,
                       separate_weight_and_bias=False)
        self._scale = 1.0 if problem.reduction != "sum" else 1.0 / problem.n_samples

    def mv(self, v: Tensor) -> Tensor:
        """``K v`` for a 1-D tensor."""
        self.products += 1
        v = v.detach().to(dtype=self.dtype, device=self.device)
        return (self._op @ v) * self._scale

    def mm(self, vs: Tensor) -> Tensor:
        """``K V`` for the columns of a 2-D tensor."""
        self.products += vs.shape[1]
        return (self._op @ vs.detach().to(dtype=self.dtype, device=self.device)) * self._scale

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.mm(v) if v.ndim == 2 else self.mv(v)

    def dense(self) -> Tensor:
        """The whole (symmetric) matrix, for checks on small models."""
        d = self.mm(torch.eye(self.shape[0], dtype=self.dtype, device=self.device))
        return (d + d.T) / 2

    def solve(self, v: Tensor, damping: float) -> Tensor:
        """``(K + λI)⁻¹ v`` (exact damping through the eigendecompositions of the Kronecker factors)."""
        import curvlinops

        if not (isinstance(damping, (int, float)) and damping > 0):
            raise bad_value("KFACOperator.solve", "damping", "a number > 0", damping)
        key = float(damping) / self._scale
        inv = getattr(self, "_inverses", {}).get(key)
        if inv is None:
            inv = curvlinops.KFACInverseLinearOperator(self._op, damping=key, use_exact_damping=True)
            self._inverses = {**getattr(self, "_inverses", {}), key: inv}
        return (inv @ v.detach().to(dtype=self.dtype, device=self.device)) / self._scale

    def __repr__(self) -> str:
        return (f"KFACOperator(kind={self.kind!r}, fisher_type={self.fisher_type!r}, size={self.shape[0]}, "
                f"parameters={len(self.names)}, dtype={self.dtype}, engine={self.engine!r})")


def _module_at(problem: Problem, theta: Mapping[str, Tensor]) -> torch.nn.Module:
    """A private copy of the problem's (eval-mode) model holding θ as its parameters."""
    module = copy.deepcopy(problem.module).eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in theta:
                p.copy_(theta[name])
    for name, p in module.named_parameters():
        p.requires_grad_(name in theta)
    return module


@public("curvature.kfac_operator")
@renamed(theta="center")
def kfac_operator(problem: Problem, center: Mapping[str, Tensor] | None = None, *, params: ParamSelection = None,
                  dtype: torch.dtype | None = None, fisher_type: str = "type-2", mc_samples: int = 1, seed: int = 0,
                  ekfac: bool = False) -> KFACOperator:
    """KFAC (Martens & Grosse 2015; ``ekfac=True``: EKFAC, George et al. 2018) of the GGN/Fisher at θ for
    the ``nn.Linear``/``nn.Conv2d`` layers, as a :class:`KFACOperator` (curvlinops engine; install
    ``curvlinops-for-pytorch``). ``fisher_type``: ``"type-2"`` (exact output-Hessian square roots:
    KFAC of the GGN), ``"mc"`` (``mc_samples`` sampled labels, ``seed``: of the Fisher) or
    ``"empirical"`` (of the empirical Fisher). ``params`` selects layers (default: all, which must then
    all be Linear/Conv2d parameters). Exact for a single Linear layer under MSE.
    """
    func = "kfac_operator"
    if fisher_type not in ("type-2", "mc", "empirical"):
        raise bad_value(func, "fisher_type", "'type-2', 'mc' or 'empirical'", fisher_type)
    if not isinstance(ekfac, bool):
        raise bad_type(func, "ekfac", "a bool", ekfac)
    _check_outputs_loss(problem, func)
    if isinstance(problem, Problem) and _loss_name(problem.loss_fn) not in ("CrossEntropyLoss", "MSELoss",
                                                                             "BCEWithLogitsLoss"):
        raise InvalidArgumentError(f"{func}(): the problem's loss must be an nn.CrossEntropyLoss, nn.MSELoss or "
                                   f"nn.BCEWithLogitsLoss module; received {_loss_name(problem.loss_fn)}")
    mc_samples = C.check_int(func, "mc_samples", mc_samples)
    seed = C.check_seed(func, seed)
    try:
        import curvlinops  # noqa: F401
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("kfac_operator() needs curvlinops: pip install curvlinops-for-pytorch") from exc
    problem, center, names = _prepare(problem, center, params, dtype, "auto", func)
    return KFACOperator(problem, center, names, fisher_type=fisher_type, mc_samples=mc_samples, seed=seed,
                        ekfac=ekfac)


_ = (_make, P)  # re-exported helpers used by siblings


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:  # pragma: no cover
        return "?"
