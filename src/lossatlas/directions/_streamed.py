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
                 skip: set[str], draw_whole: Callable[[Tensor, torch.Generator, str], Tensor]):
        self.theta, self.n, self.draw_whole = theta, len(seeds), draw_whole
        self.tensors = {k: _Tensor(t, layout[k], k in skip) for k, t in theta.items()}
        self.ops: list[list[tuple[float, int]]] = [[] for _ in seeds]  # per direction: (alpha, u index)
        for seed in seeds:
            gen = torch.Generator().manual_seed(seed)
            for k, t in theta.items():
                info = self.tensors[k]
                info.states.append(gen.get_state())
                if info.kind == "whole":
                    draw_whole(t, gen, info.rule)  # advances gen exactly as the in-memory draw does
                    info.factors.append(None)
                    continue
                nt = torch.linalg.vector_norm(filters(t.double().cpu(), info.rule), dim=1, keepdim=True) \
                    if info.kind == "rows" else None
                draw = torch.randn(t.shape, generator=gen, dtype=F64)
                if nt is None:
                    info.factors.append(None)
                else:  # _filter_draw's factor, from the whole draw
                    nd = torch.linalg.vector_norm(filters(draw, info.rule), dim=1, keepdim=True)
                    info.factors.append(torch.where(nd > 0, nt / torch.where(nd > 0, nd, torch.ones_like(nd)),
                                                    torch.zeros_like(nd)))
                del draw

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

    def _whole(self, k: str, upto: int, fill: Callable[[list[Tensor], Tensor], None]) -> Tensor:
        """A float64 tensor of tensor k's shape, filled slice by slice by ``fill(ws, out_slice)``."""
        buf = torch.empty(self.tensors[k].shape, dtype=F64)
        flat = buf.view(-1)
        for a, b, ws in self.slices(k, upto):
            fill(ws, flat[a:b])
        return buf

    def dot(self, i: int, j: int) -> float:
        """:func:`lossatlas.params.dot` of directions i and j as they are now (the same bits)."""
        total = None
        for k in self.theta:
            buf = self._whole(k, max(i, j), lambda ws, out: torch.mul(ws[i], ws[j], out=out))
            part = torch.sum(buf)
            del buf
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

    def statistics(self, deviation: bool) -> tuple[list[list[float]], float]:
        """(P.cosine of every pair, _filter_deviation or 0.0), the same bits as on whole vectors."""
        n = self.n
        norms: list[list[Tensor]] = [[] for _ in range(n)]
        dots: dict[tuple[int, int], Tensor] = {}
        rel: list[list[float]] = [[] for _ in range(n)]
        for k, t in self.theta.items():
            info = self.tensors[k]
            nt = filter_norms(t.double().cpu(), info.rule) if deviation and info.kind != "zero" else None
            for a in range(n):
                buf = self._whole(k, a, lambda ws, out, a=a: out.copy_(ws[a]))
                norms[a].append(torch._foreach_norm([buf])[0])
                if nt is not None:
                    nd = filter_norms(buf, info.rule)
                    mask = nt > 0
                    if mask.any():
                        rel[a].append(float(((nd[mask] - nt[mask]).abs() / nt[mask]).max()))
                buf.mul_(buf)
                _add(dots, (a, a), torch.sum(buf))
                del buf
                for b in range(a + 1, n):
                    buf = self._whole(k, b, lambda ws, out, a=a, b=b: torch.mul(ws[a], ws[b], out=out))
                    _add(dots, (a, b), torch.sum(buf))
                    del buf
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


def _add(totals: dict, key, part: Tensor) -> None:
    totals[key] = part if key not in totals else totals[key] + part


def draw(theta: Mapping[str, Tensor], seeds: Sequence[int], layout: Mapping[str, str], skip: set[str],
         orthogonal: bool, draw_whole) -> tuple[list[dict[str, Tensor]], list[list[float]], float]:
    """(directions in θ's dtype, cosines, filter-norm deviation) of filter-normalised random directions:
    the bits of the in-memory path of :func:`lossatlas.directions.random`."""
    s = Streamed(theta, seeds, layout, skip, draw_whole)
    ortho = orthogonal and s.n > 1
    if ortho:
        s.orthogonalise()
    cos, deviation = s.statistics(ortho)
    return s.results(), cos, deviation
