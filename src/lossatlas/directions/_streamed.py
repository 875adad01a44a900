"""Filter-normalised random directions of a large model, never holding a float64 direction whole.

:func:`lossatlas.directions.random` draws every direction in float64 and keeps all of them for
Gram–Schmidt and the cosines: 2n models of float64 (8 × the model for two float32 directions). For a
model of at least ``STREAM_MIN_BYTES`` in float64 this module gives the same bits while holding only
the results, one float64 tensor (for the whole-tensor sums) and slices of ``CHUNK`` elements:

* each direction's tensor is *regenerated* when needed from the generator state saved before its
  draw, slice by slice (whole rows, multiples of 16 elements: CPU ``randn`` fills 16 values at a time
  from the uniforms in order, so consecutive slices of a draw are the draw's slices), and rescaled by
  the per-filter factors taken once from the whole draw;
* Gram–Schmidt is kept as its list of updates ``w ← w − c·u`` (the same elementwise ``_foreach_add_``
  per slice); each coefficient needs a dot product, i.e. one pass regenerating the slices;
* dot products and norms are taken per tensor on a whole-tensor buffer filled slice by slice, as
  :func:`lossatlas.params.dot` / :func:`~lossatlas.params.norm` take them on whole tensors.

Slicing is exact only where torch's kernels are position-independent:
:func:`lossatlas.params._draws.slices_exact` checks that at run time (once), and :func:`wanted` keeps
the in-memory path where it fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from ..params._draws import F64, row_bounds, slices_exact
from ..params._layout import filter_norms, filters

STREAM_MIN_BYTES = 64 * 2**20  # θ in float64 at least this big: directions.random streams


def wanted(theta: Mapping[str, Tensor], norm: str | None) -> bool:
    """Whether ``directions.random`` streams: filter normalisation, θ on the CPU, ≥ STREAM_MIN_BYTES
    of float64, and slicing proven exact in this process."""
    return (norm == "filter" and all(t.device.type == "cpu" for t in theta.values())
            and 8 * sum(t.numel() for t in theta.values()) >= STREAM_MIN_BYTES and slices_exact())


class _Tensor:
    """One parameter tensor of every direction: how its slices are regenerated."""

    def __init__(self, t: Tensor, rule: str, skipped: bool):
        self.shape, self.numel, self.rule = t.shape, t.numel(), rule
        bounds = row_bounds(t.shape)
        # "zero" (ignored), "rows" (filters along dim 0, sliced by whole rows) or "whole" (drawn whole)
        self.kind = "zero" if skipped else "rows" if rule == "dim0" and bounds is not None else "whole"
        self.bounds = bounds if bounds is not None and self.kind != "whole" else [(0, self.numel)]
        self.cols = self.numel // t.shape[0] if self.kind == "rows" else self.numel
        self.states: list[Tensor] = []   # per direction: the generator state before this tensor's draw
        self.factors: list[Tensor | None] = []  # per direction ("rows"): the per-filter rescaling factors


class Streamed:
    """Directions d₁…dₙ held as generator states, per-filter factors and Gram–Schmidt updates."""

    def __init__(self, theta: Mapping[str, Tensor], seeds: Sequence[int], layout: Mapping[str, str],
                 skip: set[str], draw_whole: Callable[[Tensor, torch.Generator, str], Tensor],
                 orthogonal: bool = True):
        self.theta, self.n, self.draw_whole = theta, len(seeds), draw_whole
        self.ortho = orthogonal and self.n > 1
        self.tensors = {k: _Tensor(t, layout[k], k in skip) for k, t in theta.items()}
        self.ops: list[list[tuple[float, int]]] = [[] for _ in seeds]  # per direction: (alpha, u index)
        # (direction, tensor) -> _stats of a tensor already final when drawn (the first direction, or every
        # one without Gram–Schmidt), and tensor -> ⟨d₂, d₁⟩ of the raw draws (Gram–Schmidt's first
        # coefficient), taken on the whole draws made here: no pass regenerates them for these
        self.cached: dict[tuple[int, str], tuple[Tensor, float | None, Tensor]] = {}
        self.raw_dot: dict[str, Tensor] = {}
        gens = [torch.Generator().manual_seed(seed) for seed in seeds]
        for k, t in theta.items():  # tensor by tensor, each direction from its own generator: the same draws
            info = self.tensors[k]
            nt = self.theta_norms(k) if self.ortho else None
            first = None
            for i, gen in enumerate(gens):
                info.states.append(gen.get_state())
                draw = self._draw(t, gen, info)
                if not self.ortho:
                    self.cached[i, k] = _stats(draw, None, info.rule)
                elif i == 0:
                    first = draw  # kept for ⟨d₂, d₁⟩
                elif i == 1:
                    self.raw_dot[k] = torch.sum(draw.mul_(first))  # P.dot's product d₂·d₁, summed whole
                    self.cached[0, k] = _stats(first, nt, info.rule)
                    first = None
                del draw

    def _draw(self, t: Tensor, gen: torch.Generator, info: _Tensor) -> Tensor:
        """One direction's whole normalised draw of ``t`` (the in-memory path's), recording its factor."""
        if info.kind == "whole":
            info.factors.append(None)
            return self.draw_whole(t, gen, info.rule)
        tn = torch.linalg.vector_norm(filters(t.double().cpu(), info.rule), dim=1, keepdim=True) \
            if info.kind == "rows" else None
        draw = torch.randn(t.shape, generator=gen, dtype=F64)
        if tn is None:  # ignored: zero
            info.factors.append(None)
            return draw.zero_()
        fd = filters(draw, info.rule)  # _filter_draw's factor and rescaling, on the whole draw
        nd = torch.linalg.vector_norm(fd, dim=1, keepdim=True)
        factor = torch.where(nd > 0, tn / torch.where(nd > 0, nd, torch.ones_like(nd)), torch.zeros_like(nd))
        info.factors.append(factor)
        fd.mul_(factor)
        return draw

    def theta_norms(self, k: str) -> Tensor | None:
        """θ_k's filter norms, as _filter_deviation takes them (None for an ignored tensor)."""
        info = self.tensors[k]
        return None if info.kind == "zero" else filter_norms(self.theta[k].double().cpu(), info.rule)

    # -- slices ---------------------------------------------------------------------------------
    def _raw(self, i: int, k: str) -> Iterator[Tensor]:
        """Direction i's normalised draw of tensor k (before Gram–Schmidt), flat, slice by slice."""
        info = self.tensors[k]
        gen = torch.Generator()
        gen.set_state(info.states[i])
        if info.kind == "whole":
            yield self.draw_whole(self.theta[k], gen, info.rule).reshape(-1)
            return
        for a, b in info.bounds:
            if info.kind == "zero":
                yield torch.zeros(b - a, dtype=F64)
                continue
            draw = torch.randn(b - a, generator=gen, dtype=F64)
            r = a // info.cols
            draw.view(-1, info.cols).mul_(info.factors[i][r:r + (b - a) // info.cols])
            yield draw

    def slices(self, k: str, upto: int) -> Iterator[tuple[int, int, list[Tensor]]]:
        """(start, stop, [w₀…w_upto]) per slice of tensor k: every direction after its updates so far."""
        raws = [self._raw(i, k) for i in range(upto + 1)]
        for a, b in self.tensors[k].bounds:
            ws: list[Tensor] = []
            for i, raw in enumerate(raws):
                w = next(raw)
                for alpha, m in self.ops[i]:
                    torch._foreach_add_([w], [ws[m]], alpha=alpha)
                ws.append(w)
            yield a, b, ws

    def _wholes(self, k: str, upto: int, fills: Sequence[Callable[[list[Tensor], Tensor], None]]) -> list[Tensor]:
        """Float64 tensors of tensor k's shape, each filled slice by slice by its ``fill(ws, out_slice)``
        from one regeneration."""
        bufs = [torch.empty(self.tensors[k].shape, dtype=F64) for _ in fills]
        flats = [b.view(-1) for b in bufs]
        for a, b, ws in self.slices(k, upto):
            for fill, flat in zip(fills, flats):
                fill(ws, flat[a:b])
        return bufs

    def dot(self, i: int, j: int) -> float:
        """:func:`lossatlas.params.dot` of directions i and j as they are now (the same bits)."""
        total = None
        for k in self.theta:
            if i == j and (i, k) in self.cached:
                part = self.cached[i, k][2]
            elif (i, j) == (1, 0) and not self.ops[1] and k in self.raw_dot:
                part = self.raw_dot[k]
            else:
                part = torch.sum(self._wholes(k, max(i, j), [_product(i, j)])[0])
            total = part if total is None else total + part
        return float(total) if total is not None else 0.0

    # -- the pipeline -----------------------------------------------------------------------------
    def orthogonalise(self) -> None:
        """lossatlas.directions._random._orthogonalise_ (modified Gram–Schmidt, twice), as updates."""
        uu: dict[int, float] = {}
        for i in range(self.n):
            for _ in range(2):
                for m in range(i):
                    if m not in uu:
                        uu[m] = self.dot(m, m)
                    if uu[m] > 0:
                        c = self.dot(i, m) / uu[m]
                        self.ops[i].append((-c, m))

    def statistics(self) -> tuple[list[list[float]], float]:
        """(P.cosine of every pair, _filter_deviation or 0.0), the same bits as on whole vectors."""
        n = self.n
        norms: list[list[Tensor]] = [[] for _ in range(n)]
        dots: dict[tuple[int, int], Tensor] = {}
        rel: list[list[float]] = [[] for _ in range(n)]
        for k in self.theta:
            nt = self.theta_norms(k) if self.ortho else None
            for b in range(n):
                c = self.cached.get((b, k))
                # one regeneration: direction b itself unless cached, and its product with direction 0
                fills = ([] if c is not None else [lambda ws, out, b=b: out.copy_(ws[b])]) + (
                    [_product(0, b)] if b > 0 else [])
                bufs = self._wholes(k, b, fills) if fills else []
                if c is None:
                    c = _stats(bufs.pop(0), nt, self.tensors[k].rule)
                norm, r, square = c
                norms[b].append(norm)
                if r is not None:
                    rel[b].append(r)
                _add(dots, (b, b), square)
                if b > 0:
                    _add(dots, (0, b), torch.sum(bufs.pop()))
                del bufs
                for a in range(1, b):
                    _add(dots, (a, b), torch.sum(self._wholes(k, b, [_product(a, b)])[0]))
        nrm = [float(torch.linalg.vector_norm(torch.stack(v))) for v in norms]
        cos = [[0.0 if nrm[a] == 0.0 or nrm[b] == 0.0 else float(dots[min(a, b), max(a, b)]) / (nrm[a] * nrm[b])
                for b in range(n)] for a in range(n)]
        worst = 0.0
        for values in rel:  # in _filter_deviation's order: direction by direction, tensor by tensor
            for v in values:
                worst = max(worst, v)
        return cos, worst

    def results(self) -> list[dict[str, Tensor]]:
        """Every direction in θ's dtype, formed slice by slice (nothing float64 kept whole)."""
        out: list[dict[str, Tensor]] = [{} for _ in range(self.n)]
        for k, t in self.theta.items():
            for a in range(self.n):
                out[a][k] = torch.empty(t.shape, dtype=t.dtype)
            for s, e, ws in self.slices(k, self.n - 1):
                for a in range(self.n):
                    out[a][k].view(-1)[s:e].copy_(ws[a])
        return out


def _product(i: int, j: int) -> Callable[[list[Tensor], Tensor], None]:
    return lambda ws, out: torch.mul(ws[i], ws[j], out=out)


def _stats(buf: Tensor, nt: Tensor | None, rule: str) -> tuple[Tensor, float | None, Tensor]:
    """Of one whole float64 tensor of a final direction: its norm (as params.norm takes it per tensor),
    the largest relative change of a filter norm against θ's ``nt`` (None without ``nt`` or where every
    θ filter is zero) and its dot product with itself; ``buf`` is squared in place."""
    norm = torch._foreach_norm([buf])[0]
    rel = None
    if nt is not None:
        nd = filter_norms(buf, rule)
        mask = nt > 0
        if mask.any():
            rel = float(((nd[mask] - nt[mask]).abs() / nt[mask]).max())
    buf.mul_(buf)
    return norm, rel, torch.sum(buf)


def _add(totals: dict, key, part: Tensor) -> None:
    totals[key] = part if key not in totals else totals[key] + part


def draw(theta: Mapping[str, Tensor], seeds: Sequence[int], layout: Mapping[str, str], skip: set[str],
         orthogonal: bool, draw_whole) -> tuple[list[dict[str, Tensor]], list[list[float]], float]:
    """(directions in θ's dtype, cosines, filter-norm deviation) of filter-normalised random directions:
    the bits of the in-memory path of :func:`lossatlas.directions.random`."""
    s = Streamed(theta, seeds, layout, skip, draw_whole, orthogonal)
    if s.ortho:
        s.orthogonalise()
    cos, deviation = s.statistics()
    return s.results(), cos, deviation
