"""Exact algebra for affine layers whose input does not depend on the parameters.

For a layer y = A(x; W, b) that is linear in (W, b) jointly (Linear, ConvNd, ConvTransposeNd) and
whose input x does not depend on θ (typically the first layer applied to the data), every point
θ + Σᵢ aᵢdᵢ of a surface gives

    A(x; W + Σ aᵢ Dᵢ, b + Σ aᵢ Bᵢ) = A(x; W, b) + Σᵢ aᵢ A(x; Dᵢ, Bᵢ),

so the n + 1 products are computed once per batch and each point costs an axpy instead of a GEMM.
This is a re-association of exact arithmetic: values agree with direct evaluation to rounding.

The combination is computed elementwise with separately rounded products and sums (no GEMM with a
tiny inner dimension, no fused multiply-add), so it does not depend on the number of threads and
the loop and ``vmap`` strategies give the same bits. For 16-bit problems the tables are kept in
float32 and each combination is rounded once to the layer's dtype (a GEMM with float32
accumulation, as on tensor cores).
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ._fast_paths import has_forward_hooks

_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _key(x: Any) -> tuple | None:
    try:
        if not isinstance(x, Tensor) or torch._C._functorch.is_functorch_wrapped_tensor(x):
            return None
        return (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)
    except Exception:
        return None


class LinearFold:
    """Precomputed outputs of eligible affine layers; patches the problem's private module while
    active (``with fold:``) and falls back to the real layer for any input it has not seen."""

    def __init__(self, problem, center: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]],
                 *, max_bytes: int | None = None):
        self.problem = problem
        self.k = len(directions)
        self.tables: dict[int, dict[tuple, Tensor]] = {}
        self.modules: dict[int, tuple[str, nn.Module]] = {}
        self.coefficients: Any = None
        self._patched: list[tuple[nn.Module, Any]] = []
        self._buffers: dict[tuple, _Scratch] = {}  # per table entry: reused output and product buffers
        if not problem.data.cached:
            return
        budget = max_bytes if max_bytes is not None else problem.data.budget // 2
        candidates = self._eligible(center)
        if not candidates:
            return
        self._precompute(candidates, center, directions, budget)

    @property
    def active_layers(self) -> list[str]:
        return [name for name, _ in self.modules.values()]

    # -- discovery ----------------------------------------------------------------------------
    def _eligible(self, center) -> dict[int, tuple[str, nn.Module]]:
        """Affine layers of exact built-in type whose parameters are θ-entries or frozen and whose
        input, on the first batch, does not require grad when all of θ does (so it is θ-independent)
        and is the same tensor at every call."""
        problem = self.problem
        found: dict[int, tuple[str, nn.Module]] = {}
        names = set(problem.param_names)
        for mname, m in problem._module.named_modules():
            if type(m) not in _AFFINE:
                continue
            pnames = [f"{mname}.{p}" if mname else p for p, _ in m.named_parameters(recurse=False)]
            if not any(n in names for n in pnames):
                continue
            if has_forward_hooks(m):
                continue
            found[id(m)] = (mname, m)
        if not found:
            return {}
        seen: dict[int, list[tuple[bool, tuple | None]]] = {i: [] for i in found}
        hooks = []
        for i, (_, m) in found.items():
            def pre(mod, args, i=i):
                x = args[0] if args else None
                seen[i].append((bool(isinstance(x, Tensor) and x.requires_grad), _key(x)))
            hooks.append(m.register_forward_pre_hook(pre))
        try:
            batch, n = problem.data.first()
            leaves = {k: v.detach().clone().requires_grad_(True) for k, v in center.items()}
            with torch.enable_grad():
                problem.batch_terms(leaves, batch, n, metrics=False)
            first = {i: list(v) for i, v in seen.items()}
            for v in seen.values():
                v.clear()
            with torch.no_grad():
                problem.batch_terms(center, batch, n, metrics=False)
        finally:
            for h in hooks:
                h.remove()
        ok = {}
        for i, calls in first.items():
            again = seen[i]
            if calls and len(calls) == len(again) and not any(rg for rg, _ in calls) and all(
                    a[1] is not None and a[1] == b[1] for a, b in zip(calls, again)):
                ok[i] = found[i]
        return ok

    def _precompute(self, candidates, center, directions, budget: int) -> None:
        problem = self.problem
        captured: dict[int, list[Tensor]] = {i: [] for i in candidates}
        hooks = []
        for i, (_, m) in candidates.items():
            def pre(mod, args, i=i):
                captured[i].append(args[0])
            hooks.append(m.register_forward_pre_hook(pre))
        try:
            with torch.no_grad():
                for batch, n in problem.data:
                    problem.batch_terms(center, batch, n, metrics=False)
        finally:
            for h in hooks:
                h.remove()
        used = 0
        low = problem.dtype in (torch.bfloat16, torch.float16)
        with torch.no_grad():
            for i, (mname, m) in candidates.items():
                table: dict[tuple, Tensor] = {}
                prefix = f"{mname}." if mname else ""
                for x in captured[i]:
                    key = _key(x)
                    if key is None or key in table:
                        continue
                    stack = []
                    for vec in (center, *directions):
                        local = {}
                        for pname, p in m.named_parameters(recurse=False):
                            full = prefix + pname
                            if vec is center:
                                local[pname] = center[full] if full in center else p
                            else:
                                local[pname] = vec[full] if full in vec else torch.zeros_like(p)
                        if low:
                            local = {k: v.float() for k, v in local.items()}
                            stack.append(functional_call(m, local, (x.float(),)))
                        else:
                            stack.append(functional_call(m, local, (x,)))
                    out = torch.stack(stack)
                    used += out.numel() * out.element_size()
                    if used > budget:
                        self.tables.clear()
                        self.modules.clear()
                        return
                    table[key] = out
                if table:
                    self.tables[i] = table
                    self.modules[i] = (mname, m)

    # -- use ------------------------------------------------------------------------------------
    def __enter__(self) -> LinearFold:
        for i, (_, m) in self.modules.items():
            original = m.forward
            table = self.tables[i]
            fold = self

            def forward(mod, x, *args, _original=original, _table=table, **kwargs):
                c = fold.coefficients
                if c is not None and not args and not kwargs:
                    key = _key(x)
                    entry = _table.get(key)
                    if entry is not None:
                        scratch = fold._buffers.get(key)
                        if scratch is None:
                            scratch = fold._buffers[key] = _Scratch()
                        return fold._combine(entry, c, scratch).to(x.dtype)
                return _original(x, *args, **kwargs)

            own = m.__dict__.get("forward")
            m.forward = types.MethodType(forward, m)
            self._patched.append((m, own))
        return self

    def __exit__(self, *exc) -> None:
        for m, own in self._patched:
            if own is None:
                del m.forward  # back to the class's forward
            else:
                m.forward = own
        self._patched.clear()
        self.coefficients = None

    @staticmethod
    def _combine(entry: Tensor, c: Any, scratch: _Scratch | None = None) -> Tensor:
        """entry₀ + c₁·entry₁ + … evaluated as ((e₀ + c₁e₁) + c₂e₂) + …, products rounded apart.

        With host coefficients (the loop strategy) and a ``scratch``, the result and the products are
        written into reused buffers: no allocation per point (fresh large tensors cost page faults
        that made this memory-bound step as slow as the GEMM it replaces), and the first partial sum
        e₀ + c₁e₁ is kept while c₁ repeats (a grid row: half the passes; the same bits). The returned
        tensor is overwritten by the next call with the same scratch."""
        if isinstance(c, Tensor):
            c = c.to(entry.dtype)
        elif scratch is not None and len(c) > 0:
            return scratch.combine(entry, c)
        if len(c) == 0:
            return entry[0].clone()  # never the table itself: the model may modify its input in place
        out = entry[0]
        for j in range(len(c)):
            out = out + c[j] * entry[j + 1]
        return out


class _Scratch:
    """Reused buffers of :meth:`LinearFold._combine` for one table entry."""

    def __init__(self):
        self.out = self.product = self.first = None
        self.first_key: str | None = None

    def combine(self, entry: Tensor, c: Sequence[float]) -> Tensor:
        if self.out is None:
            self.out, self.product, self.first = (torch.empty_like(entry[0]) for _ in range(3))
        out, product = self.out, self.product
        if len(c) == 1:
            torch.mul(entry[1], c[0], out=product)
            return torch.add(entry[0], product, out=out)
        key = float(c[0]).hex()  # exact, and tells -0.0 from 0.0
        if key != self.first_key:
            torch.mul(entry[1], c[0], out=product)
            torch.add(entry[0], product, out=self.first)
            self.first_key = key
        torch.mul(entry[2], c[1], out=product)
        torch.add(self.first, product, out=out)
        for j in range(2, len(c)):
            torch.mul(entry[j + 1], c[j], out=product)
            out.add_(product)
        return out
