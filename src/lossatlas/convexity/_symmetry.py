"""Symmetry certificates: θ' = g·θ computes the same function, so f(θ') = f(θ); if the midpoint
(θ + θ')/2 has a higher loss, Jensen's inequality fails and the loss is not convex — no search needed.

Symmetries used:

* **hidden-unit permutations** (any element-wise activation): swapping units i, j of a hidden
  layer (rows of the producing weight and bias, columns of the consuming weight); the midpoint
  replaces both units by their average, which a trained network rarely tolerates;
* **sign flips** for odd activations (tanh): unit i's incoming and outgoing weights times −1;
* **positive rescaling** for positively homogeneous activations (ReLU, leaky ReLU): incoming × α,
  outgoing × 1/α.

Which axes belong to a hidden layer comes from the model's structure (``torch.fx`` tracing, see
:mod:`lossatlas._permspec`); every candidate transform is then checked numerically (the model's
outputs on the data must agree to float64 rounding), so an activation that does not have the
symmetry is never used. Hidden layers whose channels also index fixed buffers (BatchNorm running
statistics, which are not parameters) are skipped: permuting the parameters alone would change the
function. Models made of scalar parameters only (like the seed net) are searched exhaustively for
rescalings. A model whose structure is not supported gets a clear note instead of a certificate.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import params as P
from .._permspec import permutation_spec
from ..errors import InvalidArgumentError
from ._certificate import Certificate, make_certificate
from ._recipe import Recipe, rebuild

def _outputs(p64, params: Mapping[str, Tensor]) -> list[Tensor]:
    """Model outputs on every batch (float64) — the function, not just the loss."""
    outs = []
    with torch.no_grad(), p64.bound(params):
        for batch, _ in p64.data:
            if p64.closure is not None:
                return [torch.as_tensor(float(p64.evaluate_bound(metrics=False)["loss"]))]
            outs.append(p64.module(batch[0]).detach().clone())
    return outs


def _same_function(p64, a: Mapping[str, Tensor], b: Mapping[str, Tensor], reference: list[Tensor]) -> bool:
    other = _outputs(p64, b)
    for x, y in zip(reference, other):
        scale = float(x.abs().max()) + 1e-300
        if not torch.allclose(x, y, rtol=1e-9, atol=1e-12 * scale):
            return False
    return True


def _producer_axes(model: nn.Module, name: str, t: Tensor) -> int | None:
    """The axis of a parameter that indexes the units its layer *produces* (None if unknown)."""
    owner_name, _, attr = name.rpartition(".")
    try:
        owner = model.get_submodule(owner_name)
    except AttributeError:
        return None
    if attr == "bias":
        return 0
    if isinstance(owner, nn.modules.conv._ConvTransposeNd):
        return 1 if owner.groups == 1 else None
    if isinstance(owner, (nn.Linear, nn.modules.conv._ConvNd)):
        return 0
    return None


def _network_candidates(model: nn.Module, theta: Mapping[str, Tensor], rng: np.random.Generator
                        ) -> tuple[list[tuple[str, Recipe]], list[str]]:
    spec = permutation_spec(model)
    buffer_names = {n for n, _ in model.named_buffers()}
    candidates: list[tuple[str, Recipe]] = []
    skipped: list[str] = []
    for group, size in spec.groups.items():
        members = spec.members(group)
        if size < 1 or not members:
            continue
        if any(name in buffer_names for name, _, _ in members):
            skipped.append(f"{group} (its units also index fixed buffers such as BatchNorm running statistics)")
            continue
        if any(name not in theta for name, _, _ in members):
            skipped.append(f"{group} (a frozen parameter depends on its units)")
            continue
        # unit vectors: everything each unit touches, to pick the most different pairs
        units = torch.cat([ax.units_first(theta[name].detach().double(), axis) for name, axis, ax in members], dim=1)
        if size >= 2:
            dist = torch.cdist(units, units)
            dist.fill_diagonal_(-1)
            flat = torch.argsort(dist.reshape(-1), descending=True)[: 6].tolist()
            pairs = []
            for f in flat:
                i, j = divmod(f, size)
                if i < j and (i, j) not in pairs:
                    pairs.append((i, j))
            for i, j in pairs[:3]:
                perm = torch.arange(size)
                perm[i], perm[j] = j, i
                recipe = [{"op": "index", "name": name, "axis": axis, "index": ax.index(perm).tolist()}
                          for name, axis, ax in members]
                candidates.append((f"swap of units {i} and {j} of hidden layer {group!r}", recipe))
            perm = torch.as_tensor(rng.permutation(size))
            recipe = [{"op": "index", "name": name, "axis": axis, "index": ax.index(perm).tolist()}
                      for name, axis, ax in members]
            candidates.append((f"random permutation of the units of hidden layer {group!r}", recipe))
        # sign flip / rescaling of the unit with the largest incoming norm
        unit = int(torch.argmax(units.norm(dim=1)))
        one = torch.zeros(size, dtype=torch.bool)
        one[unit] = True
        for label, f_in, f_out in (("sign flip", -1.0, -1.0), ("rescaling ×2", 2.0, 0.5)):
            recipe = []
            for name, axis, ax in members:
                producer = _producer_axes(model, name, theta[name]) == axis
                idx = torch.nonzero(_expand(one, ax)).reshape(-1).tolist()
                recipe.append({"op": "scale", "name": name, "axis": axis, "index": idx,
                               "factor": f_in if producer else f_out})
            candidates.append((f"{label} of unit {unit} of hidden layer {group!r}", recipe))
    return candidates, skipped


def _expand(mask: Tensor, ax) -> Tensor:
    """A unit mask laid out along an axis with ``repeat``/``layout`` (flattened channels)."""
    if ax.layout == "outer":
        return mask.repeat(ax.repeat)
    return mask.repeat_interleave(ax.repeat)


def _scalar_candidates(theta: Mapping[str, Tensor]) -> list[tuple[str, Recipe]]:
    """For small all-scalar models: every split of the parameters into (× α, × 1/α, unchanged)."""
    names = list(theta)
    out = []
    for alpha in (2.0, -1.0):
        for assign in itertools.product((0, 1, 2), repeat=len(names)):
            if 1 not in assign:
                continue
            recipe = []
            for name, a in zip(names, assign):
                if a:
                    recipe.append({"op": "scale", "name": name, "axis": 0, "index": [0],
                                   "factor": alpha if a == 1 else 1.0 / alpha})
            up = [n for n, a in zip(names, assign) if a == 1]
            down = [n for n, a in zip(names, assign) if a == 2]
            label = (f"rescaling ({', '.join(up)}) × {alpha:g}" + (f", ({', '.join(down)}) × {1 / alpha:g}"
                                                                   if down else ""))
            out.append((label, recipe))
    return out


def symmetry_certificates(problem, p64, theta: Mapping[str, Tensor], *, seed: int = 0, limit: int = 3,
                          evaluator=None) -> tuple[list[Certificate], dict[str, Any]]:
    """Certificates from symmetries of the network at θ (no search), with what was tried."""
    rng = np.random.default_rng(seed)
    theta64 = P.to(theta, dtype=torch.float64, device=p64.device)
    info: dict[str, Any] = {"tried": 0, "valid": 0, "skipped": []}
    try:
        candidates, skipped = _network_candidates(problem.model, theta64, rng)
        info["skipped"] = skipped
    except InvalidArgumentError as exc:
        candidates = []
        info["unsupported"] = ("the model's structure is not supported for symmetry arguments: "
                               + str(exc).replace("align(): ", "").replace("argument 'model' must be", "it must be"))
    if not candidates and all(v.ndim == 0 for v in theta64.values()) and len(theta64) <= 8:
        candidates = _scalar_candidates(theta64)
        info.pop("unsupported", None)
        info["scalar_search"] = True
    if not candidates and "unsupported" not in info:
        info["unsupported"] = ("no hidden layer whose units can be permuted, flipped or rescaled without also "
                               "moving fixed buffers: " + "; ".join(info["skipped"]) if info["skipped"] else
                               "the model has no hidden layer with a symmetry lossatlas can use")
    reference = _outputs(p64, theta64) if candidates else []
    valid = []
    for label, recipe in candidates:
        twin = rebuild(theta64, recipe)
        if twin is None or all(torch.equal(twin[k], theta64[k]) for k in theta64):
            continue
        info["tried"] += 1
        if not _same_function(p64, theta64, twin, reference):
            continue
        info["valid"] += 1
        # f(θ') = f(θ) (same function): rank by the loss at the midpoint, certify the best
        mid = P.lincomb(theta64, [P.sub(twin, theta64)], [0.5])
        valid.append((p64.loss(mid), label, recipe, twin))
    valid.sort(key=lambda item: item[0], reverse=True)
    found: list[Certificate] = []
    for _, label, recipe, twin in valid:
        if len(found) >= limit:
            break
        kind = label.split(" of ")[0]
        cert = make_certificate(p64, "symmetry", theta64, twin, 0.5,
                                symmetry={"kind": kind, "description": label, "rebuild": recipe},
                                note=f"θ' = {label} of θ computes the same function; the midpoint is worse",
                                reference=evaluator)
        if cert is not None:
            found.append(cert)
    info["certificates"] = len(found)
    info["symmetries"] = [label for _, label, _, _ in valid]
    return found, info
