"""Figure of per-block curvature (:func:`lossatlas.curvature.per_layer`): bars with error bars.

matplotlib is imported inside the function; it returns a ``matplotlib.figure.Figure``.
"""

from __future__ import annotations

from ._checks import figure as _released_figure, subplots as _released_subplots  # noqa: F401

from typing import Any

import numpy as np

from lossatlas.errors import bad_type
from ..errors import public
from lossatlas.curvature.per_layer import LayerCurvature

__all__ = ["per_layer"]


@public("plot.per_layer")
def per_layer(result: Any, *, title: str | None = None, log: bool = False):
    """Two bar charts over the blocks of a :class:`~lossatlas.curvature.LayerCurvature`: tr H_bb with
    ±1 standard error, and λmax(H_bb) with its error bound (unconverged blocks hatched). ``log``: a
    symmetric-log value axis (blocks whose curvature differs by orders of magnitude).

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import torch, lossatlas
    >>> from lossatlas.plot.per_layer import per_layer as plot_per_layer
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    >>> x = torch.randn(16, 2)
    >>> r = lossatlas.curvature.per_layer(lossatlas.Problem(net, torch.nn.MSELoss(), (x, x[:, :1])), progress=False)
    >>> [ax.get_ylabel() for ax in plot_per_layer(r).axes]
    ['trace of H_bb (± 1 s.e.)', 'λmax of H_bb (± error)']
    """
    import matplotlib.pyplot as plt

    if not isinstance(result, LayerCurvature):
        raise bad_type("plot.per_layer", "result", "a lossatlas.curvature.LayerCurvature", result)
    names = result.names
    pos = np.arange(len(names))
    trace = np.array([b.trace.value for b in result])
    stderr = np.array([b.trace.stderr for b in result])
    lmax = np.array([b.lambda_max for b in result])
    err = np.array([b.lambda_max_error if np.isfinite(b.lambda_max_error) else 0.0 for b in result])
    width = max(5.0, 0.55 * len(names) + 2.0)
    fig, axes = _released_subplots(2, 1, figsize=(width, 5.6), sharex=True)
    axes[0].bar(pos, trace, yerr=stderr, color="C0", capsize=3, ecolor="0.2")
    axes[0].set_ylabel("trace of H_bb (± 1 s.e.)")
    bars = axes[1].bar(pos, lmax, yerr=err, color="C1", capsize=3, ecolor="0.2")
    for bar, block in zip(bars, result):
        if not block.converged:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
    axes[1].set_ylabel("λmax of H_bb (± error)")
    for ax in axes:
        ax.axhline(0.0, color="0.5", lw=0.6)
        if log:
            ax.set_yscale("symlog", linthresh=max(1e-12, 1e-3 * float(np.nanmax(np.abs(np.r_[trace, lmax, 1e-12])))))
    axes[1].set_xticks(pos)
    axes[1].set_xticklabels(names, rotation=45 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center",
                            fontsize=8)
    kind = "GGN" if result.kind == "ggn" else "Hessian"
    method = f"{result.trace_method} trace, {result.probes} probes; products: {result.product_method}"
    fig.suptitle((title + "\n" if title else "") + f"per-block {kind} curvature ({method})", fontsize=9)
    fig.tight_layout()
    return fig
