"""Grid points θ + Σᵢ aᵢdᵢ formed into reusable parameter tensors, two memory layouts, one arithmetic.

Both compute ((θ + a₁d₁) + a₂d₂) + … elementwise with separately rounded products (``mul`` into a
scratch, then ``add``; never ``add(alpha=)``, which fuses a multiply-add on CPU), skipping zero
coefficients, so both give the bits of :func:`lossatlas.params.lincomb` whatever the thread count.

* :class:`FlatPoints` flattens θ and every direction once and forms a point with a few calls on one
  flat vector (what a small model needs: the digits MLP's point formation took 0.04 ms this way and
  0.4 ms slice by slice, of a ~1–4 ms point), keeping θ + a₁d₁ while a₁ repeats (a grid row).
  Memory beyond θ and the directions: (n + 4)·|θ| for n directions (θ and the directions
  flattened, the point, a product buffer, the row cache).
* :class:`TensorPoints` reads θ and the directions where they are and forms the point tensor by
  tensor, in slices of at most ``CHUNK`` elements, into the bound tensors: memory beyond them is the
  point (|θ|) and one slice of scratch (two for 16-bit problems, whose points are formed in float32
  and rounded once). What a big model needs (issue 17: a plane within 2 × model + data).

:func:`former` picks the layout by the model's size (``FLAT_MAX_BYTES``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

CHUNK = 1 << 18  # elements per slice of TensorPoints: the fastest of 2¹²…2²⁰ and whole tensors measured
FLAT_MAX_BYTES = 16 << 20  # FlatPoints up to this many bytes of parameters (docs/benchmarks.md)
# bytes: offsets of the bound views into FlatPoints' buffer are multiples of this, the alignment of
# torch's CPU allocator. Not for speed (a resnet-skip and a digits-MLP forward took the same time with
# unaligned views, aligned ones and separate tensors, within 2.5 %) but for bits: with unaligned
# views the float32 losses of two zoo families (partially-frozen-first-layer, embedding; small
# tensors, the linear fold on) were 1 ulp away from TensorPoints' (separate tensors): vectorised
# kernels peel by alignment. Aligned, the loop's values do not depend on the model's size.
ALIGN = 64


def former(center: Sequence[Tensor], directions: Sequence[Sequence[Tensor]], dtype: torch.dtype,
           point_dtype: torch.dtype):
    """A :class:`FlatPoints` for models of at most ``FLAT_MAX_BYTES``, else a :class:`TensorPoints`.
    ``center``/``directions``: tensors in the problem's ``dtype``; points are formed in ``point_dtype``
    and bound in ``dtype``."""
    size = sum(t.numel() for t in center) * torch.empty((), dtype=point_dtype).element_size()
    cls = FlatPoints if size <= FLAT_MAX_BYTES else TensorPoints
    return cls(center, directions, dtype, point_dtype)


def _aligned(n: int, element_size: int) -> int:
    step = max(1, ALIGN // element_size)
    return -(-n // step) * step


class FlatPoints:
    """θ and the directions flattened once (bound views at ``ALIGN``-byte offsets); see the module."""

    def __init__(self, center: Sequence[Tensor], directions: Sequence[Sequence[Tensor]], dtype: torch.dtype,
                 point_dtype: torch.dtype):
        esize = torch.empty((), dtype=point_dtype).element_size()
        offsets, start = [], 0
        for t in center:
            offsets.append(start)
            start = _aligned(start + t.numel(), esize)
        device = center[0].device if center else None

        def flat(tensors: Sequence[Tensor]) -> Tensor:  # padding stays zero: a point's padding is zero too
            out = torch.zeros(start, dtype=point_dtype, device=device)
            for t, o in zip(tensors, offsets):
                out[o:o + t.numel()].copy_(t.reshape(-1))  # exact: bf16/fp16 → float32 widening
            return out
        self.base = flat(center)
        self.dirs = [flat(d) for d in directions]
        self.flat, self.product, self.first = (torch.empty_like(self.base) for _ in range(3))
        self.first_key: str | None = None
        self.work = [self.flat[o:o + t.numel()].view(t.shape) for t, o in zip(center, offsets)]
        self.low = point_dtype != dtype
        self.bound = [torch.empty_like(t) for t in center] if self.low else self.work

    def form(self, c: tuple[float, ...]) -> None:
        """Write the point with coefficients ``c`` (host floats) into :attr:`bound`."""
        if not c:
            self.flat.copy_(self.base)
        else:
            key = c[0].hex()  # exact, and tells -0.0 from 0.0
            if key != self.first_key:
                if c[0] != 0.0:
                    torch.mul(self.dirs[0], c[0], out=self.product)  # the product rounded, then added
                    torch.add(self.base, self.product, out=self.first)
                else:
                    self.first.copy_(self.base)
                self.first_key = key
            pending = [(a, d) for a, d in zip(c[1:], self.dirs[1:]) if a != 0.0]
            if not pending:
                self.flat.copy_(self.first)
            for j, (a, d) in enumerate(pending):
                torch.mul(d, a, out=self.product)
                if j == 0:
                    torch.add(self.first, self.product, out=self.flat)
                else:
                    self.flat.add_(self.product)
        if self.low:
            torch._foreach_copy_(self.bound, self.work)  # one rounding to the problem's dtype


def slices(t: Tensor) -> list[Tensor]:
    """``t`` as slices of at most ``CHUNK`` elements in C order (a non-contiguous ``t``: itself)."""
    if not t.is_contiguous():
        return [t]
    v = t.view(-1)
    return [v[s:s + CHUNK] for s in range(0, v.numel(), CHUNK)] or [v]


class TensorPoints:
    """The point formed slice by slice into the bound tensors; see the module."""

    def __init__(self, center: Sequence[Tensor], directions: Sequence[Sequence[Tensor]], dtype: torch.dtype,
                 point_dtype: torch.dtype):
        self.low = point_dtype != dtype
        # bound tensors: contiguous like FlatPoints' views, or the centre's layout for 16-bit problems
        self.bound = [torch.empty_like(t) if self.low else torch.empty(t.shape, dtype=dtype, device=t.device)
                      for t in center]
        self.pieces = []  # (θ slice, [dᵢ slices], bound slice)
        for k, t in enumerate(center):
            same = t.is_contiguous() and all(d[k].is_contiguous() for d in directions)
            cut = slices if same else (lambda x: [x])
            dirs = list(zip(*(cut(d[k]) for d in directions))) or [()] * len(cut(t))
            self.pieces.extend(zip(cut(t), (list(ds) for ds in dirs), cut(self.bound[k])))
        # a direction in another dtype (a 16-bit problem's, formed in float32) is converted before its
        # product, as the flat layout's copies are: the product is then rounded in the point's dtype
        self.widen = [d[0].dtype != point_dtype if d else False for d in directions]
        largest = max((tp.numel() for tp, _, _ in self.pieces), default=0)
        device = center[0].device if center else None
        self.product = torch.empty(largest, dtype=point_dtype, device=device)
        self.sum = torch.empty(largest, dtype=point_dtype, device=device) if self.low else None

    def form(self, c: tuple[float, ...]) -> None:
        """Write the point with coefficients ``c`` (host floats) into :attr:`bound`."""
        terms = [(j, a) for j, a in enumerate(c) if a != 0.0]
        for theta, dirs, out in self.pieces:
            n = theta.numel()
            work = self.sum[:n].view(theta.shape) if self.low else out
            product = self.product[:n].view(theta.shape)
            if not terms:
                work.copy_(theta)
            for i, (j, a) in enumerate(terms):
                if self.widen[j]:  # converted (a 16-bit one widened exactly), then multiplied
                    product.copy_(dirs[j])
                    product.mul_(a)
                else:
                    torch.mul(dirs[j], a, out=product)
                if i == 0:
                    torch.add(theta, product, out=work)  # a 16-bit θ promoted exactly to float32
                else:
                    work.add_(product)
            if self.low:
                out.copy_(work)  # one rounding to the problem's dtype
