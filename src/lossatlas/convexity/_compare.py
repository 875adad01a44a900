"""``compare``: convex baselines beside non-convex models, audited the same way."""

from __future__ import annotations

from ..plot._checks import figure as _released_figure, subplots as _released_subplots  # noqa: F401

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import examples
from .. import directions as D
from ..errors import bad_type, public
from ..problem import Problem
from ..surface import surface
from ._audit import Audit, audit

DEFAULT = ("linreg-mse", "logreg-bce", "softmax-ce", "logreg-mse", "seed-relu", "mlp-digits")


@dataclass
class Comparison:
    """Audits of several problems, with the 1-D slice drawn for each (for :meth:`figure`)."""

    audits: list[Audit]
    slices: list[Any]
    known: list[bool | None]

    def rows(self) -> list[dict[str, Any]]:
        """One row per problem: verdict, certificates, best Jensen gap, λmin, λmax, λmin/λmax, time."""
        out = []
        for a, known in zip(self.audits, self.known):
            ratio = (a.lambda_min / a.lambda_max) if a.lambda_min is not None and a.lambda_max else None
            out.append({"name": a.name, "verdict": a.verdict, "certificates": len(a.certificates),
                        "kinds": sorted({c.kind for c in a.certificates}), "best_jensen_gap": a.best_jensen_gap,
                        "lambda_min": a.lambda_min, "lambda_max": a.lambda_max, "ratio": ratio,
                        "seconds": a.seconds, "known_convex": known})
        return out

    def figure(self):
        """Histograms of relative Jensen gaps, λmin/λmax per model, and a random 1-D slice of each."""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import SymmetricalLogLocator

        n = len(self.audits)
        fig = _released_figure(figsize=(4.2 * max(n, 3), 9))
        grid = fig.add_gridspec(3, n)
        ax_h = fig.add_subplot(grid[0, : max(1, n // 2)])
        ax_l = fig.add_subplot(grid[0, max(1, n // 2):])
        colours = plt.get_cmap("tab10")
        for i, a in enumerate(self.audits):
            if a.jensen_gaps is not None and len(a.jensen_gaps):
                g = a.jensen_gaps[np.isfinite(a.jensen_gaps)]
                ax_h.hist(np.sign(g) * np.log10(1 + np.abs(g) * 1e12), bins=40, alpha=0.5, color=colours(i),
                          label=a.name)
        ax_h.axvline(0, color="k", lw=0.8)
        ticks = [-1e-2, -1e-6, -1e-10, 0.0, 1e-10, 1e-6, 1e-2]
        ax_h.set_xticks([np.sign(v) * np.log10(1 + abs(v) * 1e12) for v in ticks],
                        ["−1e-2", "−1e-6", "−1e-10", "0", "1e-10", "1e-6", "1e-2"])
        ax_h.set_xlabel("relative Jensen gap of each sampled segment, log scale each side (> 0: a candidate in the "
                        "search's precision; only float64-verified candidates are proofs)", fontsize=8)
        ax_h.set_ylabel("segments")
        ax_h.legend(fontsize=7)
        ratios = np.array([(a.lambda_min / a.lambda_max) if a.lambda_min is not None and a.lambda_max else np.nan
                           for a in self.audits])
        ax_l.bar(range(n), ratios, color=[("tab:red" if a.proven_nonconvex else "tab:blue") for a in self.audits])
        finite = np.abs(ratios[np.isfinite(ratios) & (ratios != 0)])
        linthresh = float(max(finite.min(), 1e-12)) if finite.size else 1e-12
        ax_l.set_yscale("symlog", linthresh=linthresh)
        ax_l.yaxis.set_major_locator(SymmetricalLogLocator(linthresh=linthresh, base=1000))
        for i, r in enumerate(ratios):
            if np.isfinite(r):
                ax_l.annotate(f"{r:.2g}", (i, r), ha="center", va="bottom" if r >= 0 else "top", fontsize=8)
        ax_l.axhline(0, color="k", lw=0.8)
        ax_l.set_xticks(range(n), [a.name for a in self.audits], rotation=20, fontsize=8)
        ax_l.set_ylabel("λmin / λmax at θ (symlog)")
        ax_l.set_title("red: proven non-convex, blue: no violation found", fontsize=9)
        for i, (a, s) in enumerate(zip(self.audits, self.slices)):
            ax = fig.add_subplot(grid[1:, i])
            if s is not None:
                ax.plot(s.x.values, s.loss.values, color=colours(i))
                ax.axvline(0, color="red", ls=":", lw=1)
                ax.set_xlabel(s.x.attrs.get("long_name", "x"), fontsize=8)
            ax.set_title(f"{a.name}\n{a.verdict}", fontsize=9)
        fig.tight_layout()
        return fig


@public("compare")
def compare(*targets: Any, budget: int = 300, seed: int = 0, methods=("jensen", "hessian", "symmetry"),
            slice_steps: int = 61, progress: bool = False) -> Comparison:
    """Audit each target the same way: example names, :class:`~lossatlas.examples.Example` objects or
    ``(name, problem, theta)`` triples. With no targets: the convex baselines (``linreg-mse``,
    ``logreg-bce``, ``softmax-ce``) and the non-convex ``logreg-mse``, ``seed-relu``, ``mlp-digits``.

    >>> c = compare("logreg-bce", "logreg-mse", budget=200, methods=("jensen",))
    >>> [r["verdict"] for r in c.rows()]
    ['no violation found', 'non-convex (proven)']
    """
    items = []
    for t in targets or DEFAULT:
        if isinstance(t, str):
            ex = examples.load(t)
            items.append((t, ex.problem, ex.center, ex.convex))
        elif isinstance(t, examples.Example):
            items.append((t.name, t.problem, t.center, t.convex))
        elif isinstance(t, tuple) and len(t) == 3:
            if not isinstance(t[1], Problem):
                raise bad_type("compare", "targets", "(name, lossatlas.Problem, theta or None) triples", t[1])
            items.append((str(t[0]), t[1], t[2] if t[2] is not None else t[1].params(), None))
        else:
            raise bad_type("compare", "targets", "example names, Examples or (name, problem, theta) triples", t)
    audits, slices, known = [], [], []
    for name, problem, theta, convex in items:
        audits.append(audit(problem, theta, budget=budget, seed=seed, methods=methods, progress=progress, name=name))
        scalars_only = all(v.dim() <= 1 for v in theta.values())  # e.g. seed-relu: no filters to keep fixed
        d = D.random(theta, n=1, seed=seed, model=problem.model, ignore=None if scalars_only else "biasbn")
        slices.append(surface(problem, theta, d, steps=slice_steps, span=2.0, progress=False, metrics=False))
        known.append(convex)
    return Comparison(audits, slices, known)
