"""Gaussian draws regenerated slice by slice, with the bits of the whole draw.

On the CPU, ``torch.randn`` of a contiguous tensor of at least 16 elements fills it with uniforms in
order and turns them into normals 16 at a time, so consecutive draws of multiples of 16 elements
from one generator state are the slices of one draw of their total size. :func:`slices_exact` checks
this (and the position-independence of the elementwise kernels that follow) at run time, once;
callers keep their whole-tensor path where it fails.
"""

from __future__ import annotations

import functools
import math

import torch

from . import _points

ALIGN = 16  # values the CPU normal kernel makes at a time
F64 = torch.float64


@functools.cache
def slices_exact() -> bool:
    """Whether this torch's CPU ``randn`` (float64), ``_foreach_add_`` with ``alpha``, ``add_`` of a
    float32 tensor and the float64 → float32 cast give the same bits on consecutive slices (multiples
    of 16 elements, uneven sizes) as on the whole tensor."""
    n = ALIGN * 6007
    cuts = [0, ALIGN * 5, ALIGN * 2053, ALIGN * 4100, n]
    pairs = list(zip(cuts, cuts[1:]))
    g = torch.Generator().manual_seed(20261202)
    state = g.get_state()
    whole = torch.randn(n, generator=g, dtype=F64)
    g.set_state(state)
    parts = torch.cat([torch.randn(b - a, generator=g, dtype=F64) for a, b in pairs])
    u = torch.randn(n, generator=g, dtype=F64)
    f = torch.randn(n, generator=g, dtype=torch.float32)
    c = -0.37139067635410367
    w = whole.clone()
    torch._foreach_add_([w], [u], alpha=c)
    w.add_(f)
    sliced = parts.clone()
    cast = torch.empty(n, dtype=torch.float32)
    for a, b in pairs:
        torch._foreach_add_([sliced[a:b]], [u[a:b]], alpha=c)
        sliced[a:b].add_(f[a:b])
        cast[a:b].copy_(sliced[a:b])
    return bool(torch.equal(whole, parts) and torch.equal(w, sliced) and torch.equal(cast, w.float()))


def row_bounds(shape: torch.Size) -> list[tuple[int, int]] | None:
    """(start, stop) element ranges of a C-order tensor of ``shape``: whole rows (along dim 0), each
    a multiple of 16 elements and about ``_points.CHUNK`` of them; None where the tensor is not sliced
    (its size not a multiple of 16, or one slice would hold it)."""
    numel = math.prod(shape)
    if not shape or numel % ALIGN or numel == 0:
        return None
    cols = numel // shape[0]
    step = ALIGN // math.gcd(cols, ALIGN)
    rows = max(step, _points.CHUNK // cols // step * step)
    if rows >= shape[0]:
        return None
    return [(r * cols, min(r + rows, shape[0]) * cols) for r in range(0, shape[0], rows)]
