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

**Which input is which.** A table entry belongs to one call of one layer: call ``j`` of the layer
while batch ``b`` of ``problem.data`` is evaluated (the problem announces the batch index in its
evaluation loops). Before an entry is used, the tensor the layer receives is checked to be the very
input the products were computed from, by what it is, never by a memory address alone:

* an input that is a view of the cached batch itself (the common first layer) must read the same
  memory (same address, shape, strides and dtype; the entry holds a reference to that memory, so
  it cannot be freed and reused) and that memory must be unmodified since (its version counter);
* any other input (created inside ``forward``: a frozen embedding's output, ``torch.cat([x, x*x])``)
  must equal, bit for bit, a private copy of the input the products were computed from (on the
  CPU, where that check is a memory comparison; on other devices it would cost a host
  synchronisation at every use, so such inputs are not folded there).

When the check fails (another batch, a tensor that depends on θ through a non-differentiable path,
anything unexpected), the layer runs for real: the fold never guesses.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
import types
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ._fast_paths import RELU_FORWARD, has_forward_hooks
from .data import map_tensors, tensors_in
from .params._cow import lazy_clone

_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _plain(x: Any) -> bool:
    """A real floating tensor that is not a functorch (vmap/grad) wrapper: one that can be compared."""
    try:
        return (isinstance(x, Tensor) and x.is_floating_point()
                and not torch._C._functorch.is_functorch_wrapped_tensor(x))
    except Exception:
        return False


def _version(t: Tensor) -> int | None:
    try:
        return t._version
    except Exception:  # inference tensors have no version counter
        return None


def _bitwise_equal(a: Tensor, b: Tensor) -> bool:
    """Same shape, dtype and bits (NaN payloads and signed zeros included). On the CPU a memory
    comparison through numpy (≈ 30 µs for 1797×128 float32, a twentieth of the GEMM it saves;
    ``torch.equal`` takes 6× longer there)."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    it = _INT_OF_SIZE.get(a.element_size())
    if it is None:  # pragma: no cover - no floating dtype of another size
        return bool(torch.equal(a, b))
    ai, bi = a.detach().view(it), b.detach().view(it)
    if a.device.type == "cpu" and ai.is_contiguous() and bi.is_contiguous():
        an, bn = ai.reshape(-1).numpy(), bi.reshape(-1).numpy()
        if an.nbytes % 8 == 0:
            an, bn = an.view(np.int64), bn.view(np.int64)
        return bool(np.array_equal(an, bn))
    return bool(torch.equal(ai, bi))


class _Entry:
    """The products of one layer call (batch b, call j) and what identifies its input."""

    __slots__ = ("products", "ref", "ptr", "shape", "stride", "dtype", "device", "version", "copy", "scratch")

    @staticmethod
    def of_batch(x: Tensor, batch_storages: set[int]) -> bool:
        """Whether ``x`` reads the memory of the cached batch (else it was made inside forward)."""
        return _version(x) is not None and x.untyped_storage().data_ptr() in batch_storages

    def __init__(self, x: Tensor, products: Tensor, batch_storages: set[int]):
        self.products = products
        self.shape, self.stride, self.dtype, self.device = x.shape, x.stride(), x.dtype, x.device
        self.ptr = x.data_ptr()
        self.version = _version(x)
        self.scratch = _Scratch()
        if self.of_batch(x, batch_storages):
            # a view of the cached batch: held here, so its memory cannot be freed and reused
            self.ref, self.copy = x, None
        else:
            # made inside forward (or not versioned): recognised by its values only
            self.ref, self.copy = None, x.clone()

    @property
    def nbytes(self) -> int:
        extra = self.copy.numel() * self.copy.element_size() if self.copy is not None else 0
        return self.products.numel() * self.products.element_size() + extra

    def matches(self, x: Any) -> bool:
        """Whether ``x`` is, provably, the input the products were computed from."""
        if not _plain(x) or x.dtype != self.dtype or x.shape != self.shape or x.device != self.device:
            return False
        if self.copy is None:
            return (x.data_ptr() == self.ptr and x.stride() == self.stride
                    and _version(self.ref) == self.version)
        return _bitwise_equal(x, self.copy)


class LinearFold:
    """Precomputed outputs of eligible affine layers for one set of directions.

    ``with fold:`` installs the problem's fold dispatchers on the eligible layers of the private
    module (shared by every fold of the problem, reference counted, so folds may be closed in any
    order); the fold is only *used* inside ``with fold.armed():`` (which holds the problem's lock),
    while ``coefficients`` are set and the problem announces a batch. Everywhere else the layers
    run as usual."""

    def __init__(self, problem, center: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]],
                 *, max_bytes: int | None = None):
        self.problem = problem
        self.k = len(directions)
        self.tables: dict[int, dict[tuple[int, int], _Entry]] = {}
        self.modules: dict[int, tuple[str, nn.Module]] = {}
        self.coefficients: Any = None
        self._installed: list[nn.Module] = []
        # seconds of the no-grad forward passes at θ over every batch (a batch whose inputs were predicted
        # without running it counts as the first batch's time per sample; None unless the tables were
        # made): a point's cost, for sizing chunks without timing an extra point
        self.forward_seconds: float | None = None
        self._first_calls: dict[int, list[Any]] | None = None
        self._first_outputs: dict[int, list[Any]] | None = None  # the layers' outputs in that pass
        self._leaves: dict[int, list[int]] | None = None
        self.discovery: str | None = None  # how eligibility was decided: "sample" or "grad" (see _eligible)
        self._first_seconds = 0.0
        if not problem.data.cached:
            return
        budget = max_bytes if max_bytes is not None else problem.data.budget // 2
        with problem._guard.lock:  # forward hooks on the shared private module: no other thread may run it
            candidates = self._eligible(center)
            if candidates:
                self._precompute(candidates, center, directions, budget)
            self._first_calls = self._first_outputs = self._leaves = None

    @property
    def active_layers(self) -> list[str]:
        return [name for name, _ in self.modules.values()]

    # -- discovery ----------------------------------------------------------------------------
    def _affine_layers(self) -> dict[int, tuple[str, nn.Module]]:
        """Affine layers of exact built-in type, without forward hooks, with a θ-entry among their
        parameters (the others frozen)."""
        problem = self.problem
        found: dict[int, tuple[str, nn.Module]] = {}
        names = set(problem.param_names)
        for mname, m in problem.module.named_modules():
            if type(m) not in _AFFINE or has_forward_hooks(m):
                continue
            pnames = [f"{mname}.{p}" if mname else p for p, _ in m.named_parameters(recurse=False)]
            if any(n in names for n in pnames):
                found[id(m)] = (mname, m)
        return found

    def _eligible(self, center) -> dict[int, tuple[str, nn.Module]]:
        """The affine layers (:meth:`_affine_layers`) whose inputs, on the first batch, are floating
        tensors that do not require grad when all of θ does (so they do not depend on θ through
        autograd) and are the same values on a second pass (so they are deterministic).

        Which inputs would require grad is read from a forward with autograd over the batch's first
        sample (:func:`_slice_flags`); where that forward fails or disagrees with the batch's (calls,
        trailing shapes, dtypes), from a forward with autograd over the whole batch, as before. The
        no-grad pass at θ (whose inputs and duration :meth:`_precompute` reuses) gives the values: an
        input that reads the cached batch's own memory, unmodified during the pass, is the same on any
        pass; any other input is compared bit for bit with a second no-grad pass that stops after the
        last such input.
        Whether a later input is the one a table was computed from is checked at every use
        (:meth:`_Entry.matches`), so this is a filter, not a proof."""
        found = self._affine_layers()
        if not found:
            return {}
        batch, n = self.problem.data.first()
        flags = _slice_flags(self.problem, found, center, batch)
        ok = None
        if flags is not None:
            # only layers whose every input is independent of θ on the first sample are looked at for real
            keep = {i: found[i] for i in found if flags[i] and all(f is not None for f in flags[i])}
            if not keep:
                self.discovery = "sample"
                return {}
            raw, copies, of_batch, outs = self._no_grad_pass(keep, center, batch, n, outputs=True)
            if all(len(flags[i]) == len(raw[i]) and all(x is not None and (x.dim(), x.shape[1:], x.dtype) == f
                                                         for f, x in zip(flags[i], raw[i])) for i in keep):
                ok = self._repeatable(keep, list(keep), center, batch, n, copies, of_batch)
                self.discovery = "sample"
        if ok is None:  # the one-sample pass failed or disagrees with the batch: a pass with autograd, as before
            raw, copies, of_batch, outs = self._no_grad_pass(found, center, batch, n)
            reference = {i: [c if c is not None else x for c, x in zip(copies[i], raw[i])] for i in found}
            flags = self._grad_flags(found, center, batch, n, reference)
            ok = [i for i in found if flags[i] and all(flags[i])]
            self.discovery = "grad"
        self._first_calls = {i: raw[i] for i in ok}
        self._first_outputs = {i: outs[i] for i in ok}
        self._leaves = _leaf_positions(batch, self._first_calls)
        return {i: found[i] for i in ok}

    def _no_grad_pass(self, found, center, batch, n, outputs: bool = False):
        """The first batch at θ without autograd: per layer call, the input itself (None unless plain),
        a private copy of it unless it reads the cached batch, and whether it does; timed. ``outputs``:
        also a copy of the output (the θ product of that input, see :meth:`_products`;
        asked only where every layer of ``found`` is expected to fold: the outputs are kept until the
        tables are made)."""
        storages = _storages(batch)
        versions = [_version(t) for t in _batch_tensors(batch)]
        raw: dict[int, list[Any]] = {i: [] for i in found}
        copies: dict[int, list[Any]] = {i: [] for i in found}
        of_batch: dict[int, list[bool]] = {i: [] for i in found}
        outs: dict[int, list[Any]] = {i: [] for i in found}

        def post(i, mod, args, kwargs, out):
            # a private copy made as the layer returns (before any other forward hook): later writes
            # into the output that no version counter sees (``.data``, a numpy view) cannot reach it
            outs[i].append(out.detach().clone() if _plain(out) and not out.requires_grad else None)

        def pre(i, mod, args, kwargs):
            x = _single_input(args, kwargs)
            ok = _plain(x) and not x.requires_grad
            mine = ok and _Entry.of_batch(x, storages)
            raw[i].append(x if ok else None)  # the tensor itself, as _precompute captures it
            copies[i].append(x.detach().clone() if ok and not mine else None)
            of_batch[i].append(mine)
        hooks = _pre_hooks(found, pre)
        if outputs:
            hooks += [m.register_forward_hook(functools.partial(post, i), with_kwargs=True, prepend=True)
                      for i, (_, m) in found.items()]
        try:
            t = time.perf_counter()
            with torch.no_grad():
                self.problem.batch_terms(center, batch, n, metrics=False)
            self._first_seconds = time.perf_counter() - t
        finally:
            for h in hooks:
                h.remove()
        if versions != [_version(t) for t in _batch_tensors(batch)]:
            # the forward wrote into the batch: its inputs that read the batch are never folded (their
            # use-time check would fail anyway)
            raw = {i: [None if mine else x for x, mine in zip(raw[i], of_batch[i])] for i in raw}
        return raw, copies, of_batch, outs

    def _grad_flags(self, found, center, batch, n, reference) -> dict[int, list[bool]]:
        """Per layer call: whether its input, in a real forward with autograd on every θ entry, is plain,
        does not require grad and equals, bit for bit, the no-grad pass's input (``reference``). No
        layer qualifies when that forward raises (e.g. a model writing into its parameters in place,
        which autograd refuses for leaves): the plane then runs every layer for real, without autograd."""
        seen: dict[int, list[Any]] = {i: [] for i in found}

        def pre(i, mod, args, kwargs):
            x = _single_input(args, kwargs)
            seen[i].append(x.detach().clone() if _plain(x) and not x.requires_grad else None)
        hooks = _pre_hooks(found, pre)
        try:
            leaves = _autograd_leaves(center)
            with torch.enable_grad():
                self.problem.batch_terms(leaves, batch, n, metrics=False)
        except Exception:
            return {i: [] for i in found}
        finally:
            for h in hooks:
                h.remove()
        return {i: [a is not None and b is not None and _bitwise_equal(a, b.detach())
                    for a, b in zip(calls, reference[i])] if len(calls) == len(reference[i]) else []
                for i, calls in seen.items()}

    def _repeatable(self, found, ok, center, batch, n, copies, of_batch) -> list[int]:
        """The layers of ``ok`` whose every input is the same on a second no-grad pass: inputs of the
        cached batch without one; any other input compared bit for bit with a second pass that stops
        right after the last of them (its remaining layers never run)."""
        want = {(i, j) for i in ok for j, mine in enumerate(of_batch[i]) if not mine}
        if not want:
            return ok
        seen: dict[tuple[int, int], Any] = {}
        count: dict[int, int] = {}

        def pre(i, mod, args, kwargs):
            j = count[i] = count.get(i, -1) + 1
            if (i, j) in want:
                x = _single_input(args, kwargs)
                seen[i, j] = x.detach().clone() if _plain(x) and not x.requires_grad else None
                if len(seen) == len(want):
                    raise _Stop
        hooks = _pre_hooks({i: found[i] for i in ok}, pre)
        try:
            with torch.no_grad():
                self.problem.batch_terms(center, batch, n, metrics=False)
        except _Stop:
            pass
        finally:
            for h in hooks:
                h.remove()
        same = {key: seen.get(key) is not None and _bitwise_equal(seen[key], copies[key[0]][key[1]]) for key in want}
        return [i for i in ok if all(same.get((i, j), True) for j in range(len(of_batch[i])))]

    def _precompute(self, candidates, center, directions, budget: int) -> None:
        problem = self.problem
        low = problem.dtype in (torch.bfloat16, torch.float16)
        tables: dict[int, dict[tuple[int, int], _Entry]] = {i: {} for i in candidates}
        calls: dict[int, list[Tensor]] = {i: [] for i in candidates}
        capturing = [False]

        def pre(i, mod, args, kwargs):
            if capturing[0]:
                calls[i].append(_single_input(args, kwargs))
        hooks = _pre_hooks(candidates, pre)
        used = 0
        seconds = 0.0
        n0 = problem.data.first()[1]
        try:
            with torch.no_grad():
                for b, (batch, n) in enumerate(problem.data):
                    for v in calls.values():
                        v.clear()
                    reused = b == 0 and self._first_calls is not None
                    if reused:
                        # the first batch's no-grad pass at θ already ran in _eligible (the same call,
                        # so the same inputs)
                        for i in candidates:
                            calls[i].extend(self._first_calls[i])
                        seconds += self._first_seconds
                    elif b > 0 and self._leaves is not None:
                        # every input on the first batch was one of its tensors itself: the same
                        # tensor of this batch is expected (checked by memory at every use)
                        tensors = _batch_tensors(batch)
                        for i in candidates:
                            calls[i].extend(tensors[k] for k in self._leaves[i])
                        seconds += self._first_seconds * n / n0  # an estimate, for sizing chunks
                    else:
                        capturing[0] = True
                        t = time.perf_counter()
                        try:
                            problem.batch_terms(center, batch, n, metrics=False)
                        finally:
                            capturing[0] = False  # the products below call the layers again
                        seconds += time.perf_counter() - t
                    storages = _storages(batch)
                    for i, (mname, m) in candidates.items():
                        for j, x in enumerate(calls[i]):
                            if not _plain(x) or x.requires_grad:
                                continue
                            if x.device.type != "cpu" and not _Entry.of_batch(x, storages):
                                continue  # a value check off the CPU would cost a host sync per use: no fold
                            first = self._first_output(i, j) if reused and not low else None
                            entry = _Entry(x, self._products(m, mname, x, center, directions, low, first), storages)
                            used += entry.nbytes
                            if used > budget:
                                return
                            tables[i][(b, j)] = entry
        finally:
            for h in hooks:
                h.remove()
        self.forward_seconds = seconds
        for i, table in tables.items():
            if table:
                self.tables[i] = table
                self.modules[i] = candidates[i]

    def _first_output(self, i: int, j: int) -> Tensor | None:
        """A copy of layer ``i``'s output at call ``j`` of the first batch's no-grad pass at θ, taken as
        the layer returned: the θ product of that call's input, computed by the same call on the same
        tensors (so the same bits), or None. Released here (asked once)."""
        outs = (self._first_outputs or {}).get(i)
        seen = outs[j] if outs is not None and j < len(outs) else None
        if seen is not None:
            outs[j] = None
        return seen

    @staticmethod
    def _products(m: nn.Module, mname: str, x: Tensor, center, directions, low: bool,
                  first: Tensor | None = None) -> Tensor:
        """A(x; W₀, b₀), A(x; D₁, B₁), …: the layer at θ and at each direction (no bias term missing:
        a bias that is not a θ-entry belongs to the θ product only). ``first``: A(x; W₀, b₀) already
        computed (by the layer's own call at θ on ``x``)."""
        prefix = f"{mname}." if mname else ""
        stack = []
        for vec in (center, *directions):
            if vec is center and first is not None:
                stack.append(first)
                continue
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
        return torch.stack(stack)

    # -- use ------------------------------------------------------------------------------------
    def _lookup(self, mod: nn.Module, x: Any, guard, relu: bool = False) -> Tensor | None:
        """The folded output of ``mod`` on ``x`` (with ``relu``: relu of it, the last sum and the
        ReLU in one pass), or None when it must run for real."""
        c = self.coefficients
        b = guard.batch
        table = self.tables.get(id(mod))
        if c is None or b is None or table is None:
            return None
        j = guard.calls.get(id(mod), 0)
        guard.calls[id(mod)] = j + 1
        entry = table.get((b, j))
        if entry is None or not entry.matches(x):
            return None
        if relu and entry.products.dtype == x.dtype and not isinstance(c, Tensor) and len(c) > 0:
            return entry.scratch.combine(entry.products, c, relu=True)
        out = self._combine(entry.products, c, entry.scratch).to(x.dtype)
        return torch.relu_(out) if relu else out

    def __enter__(self) -> LinearFold:
        guard = self.problem._guard
        with guard.lock:
            for _, m in self.modules.values():
                _install(guard, m)
                self._installed.append(m)
        return self

    def __exit__(self, *exc) -> None:
        guard = self.problem._guard
        with guard.lock:
            while self._installed:
                _uninstall(guard, self._installed.pop())
            if guard.fold is self:
                guard.fold = None
        self.coefficients = None

    @contextlib.contextmanager
    def armed(self):
        """Use this fold for evaluations inside the block (the problem's lock is held throughout;
        ``coefficients`` are cleared on exit)."""
        guard = self.problem._guard
        with guard.lock:
            previous = guard.fold
            guard.fold = self
            try:
                yield self
            finally:
                guard.fold = previous
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

    def combine(self, entry: Tensor, c: Sequence[float], relu: bool = False) -> Tensor:
        """entry₀ + c₁entry₁ + … (see :meth:`LinearFold._combine`); with ``relu``, relu of it, the last
        sum and the ReLU in one pass (``torch._add_relu_``: max(a + b, 0) per element, the same
        values as the sum followed by ``relu_``)."""
        # each product is written into the buffer that the sum then updates in place (out = cⱼeⱼ;
        # out += partial): the same bits as partial + cⱼeⱼ (addition commutes exactly), one buffer and
        # one stream of memory traffic fewer per pass
        if self.out is None:
            self.out, self.first = torch.empty_like(entry[0]), torch.empty_like(entry[0])
        out = self.out
        last = _add_relu_ if relu else Tensor.add_
        if len(c) == 1:
            torch.mul(entry[1], c[0], out=out)
            return last(out, entry[0])
        key = float(c[0]).hex()  # exact, and tells -0.0 from 0.0
        if key != self.first_key:
            torch.mul(entry[1], c[0], out=self.first)
            self.first.add_(entry[0])
            self.first_key = key
        torch.mul(entry[2], c[1], out=out)
        if len(c) == 2:
            return last(out, self.first)
        out.add_(self.first)
        if self.product is None:
            self.product = torch.empty_like(entry[0])
        for j in range(2, len(c)):
            torch.mul(entry[j + 1], c[j], out=self.product)
            (last if j == len(c) - 1 else Tensor.add_)(out, self.product)
        return out


def _add_relu_(a: Tensor, b: Tensor) -> Tensor:
    """a ← relu(a + b) in one pass where ATen has the fused kernel, else the two steps."""
    if _ADD_RELU is not None:
        return _ADD_RELU(a, b)
    return torch.relu_(a.add_(b))


_ADD_RELU = getattr(torch, "_add_relu_", None)


def _batch_tensors(batch: Any) -> list[Tensor]:
    return tensors_in(batch)


def _storages(batch: Any) -> set[int]:
    """Addresses of the memory of the batch's tensors (to tell an input that reads it)."""
    out = set()
    for t in _batch_tensors(batch):
        try:
            out.add(t.untyped_storage().data_ptr())
        except Exception:  # pragma: no cover - tensors without storage
            pass
    return out


def _pre_hooks(found: Mapping[int, tuple[str, nn.Module]], pre) -> list[Any]:
    """``pre(i, module, args, kwargs)`` as a forward pre-hook on each layer ``i`` of ``found``; the handles."""
    return [m.register_forward_pre_hook(functools.partial(pre, i), with_kwargs=True) for i, (_, m) in found.items()]


def _single_input(args, kwargs) -> Any:
    return args[0] if len(args) == 1 and not kwargs else None


def _autograd_leaves(center: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """θ as autograd leaves for a discovery forward: copy-on-write clones (:func:`lazy_clone`: no copy
    unless written, so a plane of a large model does not hold a second model here; a model updating its
    parameters under ``no_grad`` copies first and θ stays as it was)."""
    return {k: lazy_clone(v).requires_grad_(True) for k, v in center.items()}


class _Stop(Exception):
    """Ends a discovery forward pass once every input it was run for has been seen."""


def _leaf_positions(batch: Any, calls: Mapping[int, list[Any]]) -> dict[int, list[int]] | None:
    """Per layer call, the position (in :func:`tensors_in` order) of the batch tensor that the call's
    input *is* (same memory, shape, strides and dtype), or None unless every input of every layer is
    one: then the inputs on another batch are predicted as its tensors at the same positions, without
    running it (a wrong prediction only costs the layer running for real: see :meth:`_Entry.matches`)."""
    tensors = _batch_tensors(batch)
    out = {}
    for i, xs in calls.items():
        out[i] = []
        for x in xs:
            k = next((k for k, t in enumerate(tensors) if x is not None and t.data_ptr() == x.data_ptr()
                      and t.shape == x.shape and t.stride() == x.stride() and t.dtype == x.dtype), None)
            if k is None:
                return None
            out[i].append(k)
    return out


def _first_sample(batch: Any) -> Any:
    return map_tensors(batch, lambda t: t[:1] if t.dim() > 0 else t)


def _slice_flags(problem, found, center, batch) -> dict[int, list[Any]] | None:
    """Per call of each layer of ``found``: (ndim, trailing shape, dtype) of an input that is plain and
    does not require grad when every θ entry does, else None; from a forward with autograd over the
    first sample of the first batch only (autograd's dependencies do not depend on the batch size;
    the arithmetic of one sample costs next to nothing). None when that forward raises (a model that
    needs more than one sample). Attributes the pass writes into the private module (a cache sized for
    one sample) are restored."""
    flags: dict[int, list[Any]] = {i: [] for i in found}

    def pre(i, mod, args, kwargs):
        x = _single_input(args, kwargs)
        flags[i].append((x.dim(), x.shape[1:], x.dtype) if _plain(x) and not x.requires_grad else None)
    with _attributes_restored(problem.module):
        hooks = _pre_hooks(found, pre)
        try:
            leaves = _autograd_leaves(center)
            with warnings.catch_warnings(), torch.enable_grad():
                warnings.simplefilter("ignore")
                problem.batch_terms(leaves, _first_sample(batch), 1, metrics=False)
        except Exception:
            return None
        finally:
            for h in hooks:
                h.remove()
    return flags


@contextlib.contextmanager
def _attributes_restored(module: nn.Module):
    """Every submodule's attributes (and the contents of its dict and list attributes) as they were."""
    saved = [(m, dict(m.__dict__), {k: dict(v) for k, v in m.__dict__.items() if isinstance(v, dict)},
              {k: list(v) for k, v in m.__dict__.items() if isinstance(v, list)}) for m in module.modules()]
    try:
        yield
    finally:
        for m, attrs, dicts, lists in saved:
            for k in [k for k in m.__dict__ if k not in attrs]:
                del m.__dict__[k]
            m.__dict__.update(attrs)
            for k, v in dicts.items():
                attrs[k].clear()
                attrs[k].update(v)
            for k, v in lists.items():
                attrs[k][:] = v


def _install(guard, m: nn.Module) -> None:
    """Put the problem's fold dispatcher on ``m`` (once; counted)."""
    slot = guard.patches.get(id(m))
    if slot is not None:
        slot[2] += 1
        return
    own = m.__dict__.get("forward")

    def own_forward(mod, x, *args, **kwargs):
        # the layer's own forward, found through the module itself (a deep copy of the module,
        # which carries this method along, never calls back into the original module)
        slot = guard.patches.get(id(mod))
        if slot is not None and slot[0] is mod and slot[1] is not None:
            return slot[1](x, *args, **kwargs)
        return type(mod).forward(mod, x, *args, **kwargs)

    def forward(mod, x, *args, **kwargs):
        fold = guard.fold
        if fold is not None and not args and not kwargs:
            out = fold._lookup(mod, x, guard)
            if out is not None:
                return out
        return own_forward(mod, x, *args, **kwargs)

    def forward_relu(mod, x):
        """relu(mod(x)), for a container that would apply an exact ReLU in place to the layer's fresh
        output (lossatlas._fast_paths): folded, the ReLU joins the last pass of the combination."""
        fold = guard.fold
        if fold is not None:
            out = fold._lookup(mod, x, guard, relu=True)
            if out is not None:
                return out
        return torch.relu_(own_forward(mod, x))  # a fresh output of the layer's own forward

    m.forward = types.MethodType(forward, m)
    # a plain function, not a bound method: a deep copy of the module shares it, and for the copy
    # (another id, no table) it computes relu of the copy's own forward
    m.__dict__[RELU_FORWARD] = forward_relu
    guard.patches[id(m)] = [m, own, 1]


def _uninstall(guard, m: nn.Module) -> None:
    slot = guard.patches.get(id(m))
    if slot is None:
        return
    slot[2] -= 1
    if slot[2] > 0:
        return
    del guard.patches[id(m)]
    m.__dict__.pop(RELU_FORWARD, None)
    own = slot[1]
    if own is None:
        m.__dict__.pop("forward", None)  # back to the class's forward
    else:
        m.forward = own


@contextlib.contextmanager
def dispatchers_removed(guard):
    """The private module without fold dispatchers for the block (e.g. to deep-copy it)."""
    with guard.lock:
        saved = [(m, own, m.__dict__.get("forward"), m.__dict__.get(RELU_FORWARD))
                 for m, own, _ in guard.patches.values()]
        for m, own, _, _ in saved:
            m.__dict__.pop(RELU_FORWARD, None)
            if own is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = own
        try:
            yield
        finally:
            for m, _, current, relu_forward in saved:
                m.forward = current
                if relu_forward is not None:
                    m.__dict__[RELU_FORWARD] = relu_forward
