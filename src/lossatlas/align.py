"""Permutation alignment of two networks: weight matching (Ainsworth et al., "Git Re-Basin", ICLR 2023).

Reordering the hidden units of a network (with every tensor indexed by them) leaves its function
unchanged, so two independently trained networks can sit in "different" basins only because their
units are listed in different orders (Entezari et al., ICLR 2022). Weight matching finds, for each
permutation group P_ℓ, the reordering of ``b``'s units that maximises

    Σ_ℓ ⟨W_ℓ^a, P_ℓ W_ℓ^b P_{ℓ−1}ᵀ⟩,

by coordinate ascent: each step fixes every other group and solves a linear assignment problem
(``scipy.optimize.linear_sum_assignment``) for one group, in a seeded random order, until no group
improves. Each step raises the objective, hence lowers ‖a − P(b)‖ (P(b) has the norm of b); with one
permutation group the optimum is exact, with several coordinate ascent may stop at a local optimum
(as in the paper). Which axes share a group is read from the model's graph (:mod:`lossatlas._permspec`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from . import params as P
from ._permspec import PermutationSpec, permutation_spec
from .errors import EvaluationError, ParameterMismatchError, bad_type, bad_value, check_seed, public
from .problem import Problem

__all__ = ["align", "Alignment", "permute"]


@dataclass
class Alignment:
    """The result of :func:`align`.

    ``params``: ``b`` with its units reordered to match ``a`` (same keys, dtypes and devices as
    ``b``; buffers such as BatchNorm running statistics are permuted too when ``b`` holds them).
    ``permutations``: for each group (named after the layer whose outputs it reorders) the index
    tensor p with new unit i = old unit p[i]. ``objective_before``/``objective_after``:
    Σ⟨a, b⟩ over matched weights; ``distance_before``/``distance_after``: ‖a − b‖ over the
    parameters. ``max_output_difference``: the largest |f_b(x) − f_{b aligned}(x)| found by the
    function check (``None`` when no input was available to check).
    """

    params: dict[str, Tensor]
    permutations: dict[str, Tensor]
    spec: PermutationSpec
    iterations: int
    converged: bool
    objective_before: float
    objective_after: float
    distance_before: float
    distance_after: float
    max_output_difference: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def apply(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Apply the same permutation to another dict of ``b``'s tensors (e.g. its full state_dict)."""
        return permute(state, self.spec, self.permutations)


def permute(state: Mapping[str, Tensor], spec: PermutationSpec,
            permutations: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with every axis listed in ``spec`` reordered by its group's permutation."""
    out = {}
    for name, t in state.items():
        for axis, ax in enumerate(spec.axes.get(name, ())):
            if ax is not None and ax.group in permutations:
                t = t.index_select(axis, ax.index(permutations[ax.group].to(t.device)))
        out[name] = t if t is not state[name] else t.clone()
    return out


@public("align")
def align(a: Mapping[str, Tensor] | nn.Module, b: Mapping[str, Tensor] | nn.Module, model: nn.Module | Any, *,
          max_iter: int = 100, seed: int = 0, check: bool = True, example: Any = None) -> Alignment:
    """Reorder the hidden units of ``b`` to best match ``a`` (weight matching, Git Re-Basin).

    ``a``, ``b``: parameter dicts (``problem.params()``), full ``state_dict``s, or modules of the
    same architecture. ``model``: the architecture (an ``nn.Module``, e.g. the model ``a`` came
    from) or a :class:`~lossatlas.Problem` (its data then serves for the function check).
    Supported: MLPs and CNNs built from Linear/Conv layers, BatchNorm/LayerNorm, element-wise
    activations, pooling, flatten and residual additions; anything else raises
    :class:`~lossatlas.InvalidArgumentError` naming the unsupported part.

    ``check=True`` runs the model on a batch (the problem's first batch, ``example`` — an input
    tensor — or random inputs for a Linear-first model) with ``b`` and with the aligned ``b``
    and raises :class:`~lossatlas.EvaluationError` if the outputs differ beyond rounding.

    >>> import torch, lossatlas
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> a = lossatlas.params_of(net)
    >>> perm = torch.randperm(16)
    >>> b = {"0.weight": a["0.weight"][perm], "0.bias": a["0.bias"][perm], "2.weight": a["2.weight"][:, perm],
    ...      "2.bias": a["2.bias"]}
    >>> result = align(a, b, net)
    >>> result.distance_before > 0, result.distance_after
    (True, 0.0)
    """
    problem = model if isinstance(model, Problem) else None
    module = problem.model if problem is not None else model
    if not isinstance(module, nn.Module):
        raise bad_type("model", "an nn.Module or a lossatlas.Problem", model)
    a, b = _check_states(a, b, module)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise bad_value("max_iter", "an integer >= 1", max_iter)
    seed = check_seed(seed)

    spec = permutation_spec(module)
    param_names = {n for n, _ in module.named_parameters()}
    weights = [k for k in a if k in param_names and any(ax is not None for ax in spec.axes.get(k, ()))]
    wa = {k: a[k].detach().to("cpu", torch.float64) for k in weights}
    wb = {k: b[k].detach().to("cpu", torch.float64) for k in weights}
    before = _objective(wa, wb, spec, {g: torch.arange(n) for g, n in spec.groups.items()})
    perms, iterations, converged = _weight_matching(wa, wb, spec, np.random.default_rng(int(seed)), max_iter)
    after = _objective(wa, wb, spec, perms)
    aligned = permute(b, spec, perms)
    param_keys = [k for k in a if k in param_names]
    dist_before = P.norm({k: a[k].double() - b[k].double() for k in param_keys})
    dist_after = P.norm({k: a[k].double() - aligned[k].double() for k in param_keys})
    result = Alignment(aligned, perms, spec, iterations, converged, before, after, dist_before, dist_after,
                       info={"method": "weight matching (Ainsworth et al. 2023)", "seed": int(seed),
                             "groups": dict(spec.groups)})
    if check:
        result.max_output_difference = _check_function(module, problem, example, b, spec, perms)
    return result


def _check_states(a: Any, b: Any, module: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``a`` and ``b`` as state dicts of ``module``: the same entries, each of the model's shape."""
    a = _as_state(a, "a")
    b = _as_state(b, "b")
    P.check_like(a, b, arg="b", ref_arg="a", check_dtype=False)
    known = module.state_dict()
    unknown = [k for k in a if k not in known]
    if unknown:
        raise ParameterMismatchError(f"align(): arguments 'a' and 'b' must hold entries of the model's state_dict; "
                                     f"received unknown names {unknown[:4]} (are they from another model?)")
    for k, t in a.items():
        if tuple(t.shape) != tuple(known[k].shape):
            raise ParameterMismatchError(f"align(): argument 'a[{k!r}]' must have the model's shape "
                                         f"{tuple(known[k].shape)}; received {tuple(t.shape)}")
    return a, b


def _weight_matching(wa, wb, spec, rng: np.random.Generator, max_iter: int):
    """Coordinate ascent of Σ ⟨W_a, P W_b Pᵀ⟩ over one permutation group at a time (a linear
    assignment each, groups in random order), from the identity: (perms, iterations, converged)."""
    perms = {g: torch.arange(n) for g, n in spec.groups.items()}
    names = sorted(spec.groups)
    converged, iterations = not names, 0
    for iterations in range(1, max_iter + 1):
        improved = False
        for g in rng.permutation(names) if names else []:
            cost = _cost(str(g), wa, wb, spec, perms)
            if cost is None:
                continue
            old = float(cost[torch.arange(len(cost)), perms[str(g)]].sum())
            rows, cols = _assign(cost.numpy())
            new = float(cost.numpy()[rows, cols].sum())
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[str(g)] = torch.as_tensor(cols, dtype=torch.long)
                improved = True
        if not improved:
            converged = True
            break
    return perms, iterations, converged


def _as_state(x: Any, arg: str) -> dict[str, Tensor]:
    if isinstance(x, nn.Module):
        return {k: v.detach() for k, v in x.state_dict().items()}
    if not isinstance(x, Mapping) or not x:
        raise bad_type(arg, "a non-empty dict of tensors (parameters or a state_dict) or an nn.Module", x)
    for k, v in x.items():
        if not isinstance(v, Tensor):
            raise bad_type(f"{arg}[{k!r}]", "a tensor", v)
    return dict(x)


def _assign(cost: np.ndarray):
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(cost, maximize=True)


def _permuted_except(name: str, t: Tensor, spec: PermutationSpec, perms: Mapping[str, Tensor],
                     skip: str) -> Tensor:
    for axis, ax in enumerate(spec.axes[name]):
        if ax is not None and ax.group != skip:
            t = t.index_select(axis, ax.index(perms[ax.group]))
    return t


def _cost(group: str, wa, wb, spec: PermutationSpec, perms) -> Tensor | None:
    """C[i, j] = Σ over weights of ⟨unit i of a, unit j of b (other axes already permuted)⟩."""
    total = None
    for name, axis, ax in spec.members(group):
        if name not in wa:
            continue
        ua = ax.units_first(wa[name], axis)
        ub = ax.units_first(_permuted_except(name, wb[name], spec, perms, group), axis)
        c = ua @ ub.T
        total = c if total is None else total + c
    return total


def _objective(wa, wb, spec: PermutationSpec, perms) -> float:
    pb = permute(wb, spec, perms)
    return sum(float((wa[k] * pb[k]).sum()) for k in wa)


def _check_function(module: nn.Module, problem, example: Any, b: Mapping[str, Tensor], spec: PermutationSpec,
                    perms: Mapping[str, Tensor]) -> float | None:
    """Largest |f_b(x) − f_aligned(x)| on a batch; raise if beyond rounding (a structure we misread)."""
    inputs = _example_inputs(module, problem, example)
    if inputs is None:
        return None
    net = copy.deepcopy(module).to("cpu").eval()
    dtype = next(iter(b.values())).dtype
    state = {k: v.detach() for k, v in net.state_dict().items()}
    state.update({k: v.detach().cpu() for k, v in b.items()})
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    net = net.to(dtype)
    inputs = inputs.to(dtype) if inputs.is_floating_point() else inputs
    with torch.no_grad():
        ref = functional_call(net, state, (inputs,))
        out = functional_call(net, permute(state, spec, perms), (inputs,))
    if not isinstance(ref, Tensor):
        return None
    diff = float((ref - out).abs().max())
    scale = float(ref.abs().max()) + 1.0
    tol = 1e3 * torch.finfo(dtype).eps * scale
    if not diff <= tol:
        raise EvaluationError(f"align(): the permutation inferred for argument 'model' changes its outputs (max "
                              f"difference {diff:.3g}); this model's structure is not supported by weight matching")
    return diff


def _example_inputs(module: nn.Module, problem, example: Any) -> Tensor | None:
    if example is not None:
        if not isinstance(example, Tensor):
            raise bad_type("align", "example", "an input tensor for the model", example)
        return example.detach().cpu()
    if problem is not None and problem.closure is None:
        batch, _ = problem.data.first()
        x = batch[0]
        return x[:256].detach().cpu() if isinstance(x, Tensor) else None
    first = next((m for m in module.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))), None)
    if isinstance(first, nn.Linear):
        g = torch.Generator().manual_seed(0)
        return torch.randn(16, first.in_features, generator=g)
    return None
