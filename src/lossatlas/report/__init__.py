"""``report``: one self-contained offline HTML page that answers *is my model's loss convex, and what
does it look like?* for one or several targets, side by side on shared scales.

The page is made of registered sections (:data:`SECTIONS`, in page order; add one with
:func:`section`, saying which stored results it ``needs``: only those are computed): the convexity
audit's verdict and certificate, the Gauss–Newton explanation of why, 1-D slices, a 2-D plane
(contours, and a 3-D view with θ marked: a static picture, replaced by a rotatable one where
JavaScript runs), the Hessian's extremes, trace and density, and provenance. Every number is read
from the stored results in a folder beside the page (``report_files/<target>/``: zarr stores,
``audit.json`` with ``certificate.npz``, ``curvature.json``, ``provenance.json``); running the
report again reuses them. A target's θ may come from a checkpoint (``checkpoints=``, the CLI's
``--checkpoint``), loaded with its buffers (BatchNorm statistics) as every command loads it.
Where a plane or slice of a BatchNorm network was evaluated with θ's stored statistics
(:class:`~lossatlas.errors.BatchNormStatsWarning`), the warning is kept in ``provenance.json`` and
the section says so in a note, with the command giving the recalibrated view (``--bn recalibrate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._targets import Target, problem_from_checkpoint, resolve
from ..errors import bad_type, bad_value, public
from ._compute import DEFAULTS, TargetResult, compute, slug
from ._page import RESULTS, SECTIONS, Page, Section, assemble, section
from . import _sections  # noqa: F401,E402  (registers the built-in sections)

__all__ = ["report", "SECTIONS", "RESULTS", "Section", "section", "DEFAULTS", "TargetResult"]


@public("report")
def report(targets: str | Sequence[str | Any], out: str | Path = "report.html", *,
           sections: Sequence[str] | None = None, settings: Mapping[str, Any] | None = None,
           title: str | None = None, progress: bool = False,
           checkpoints: Sequence[str | Path | None] | None = None) -> Path:
    """Write the report page ``out`` for ``targets`` and return its path.

    ``targets``: built-in example names, ``path/to/file.py:function`` strings (as the CLI takes) or
    ``lossatlas._targets.Target`` objects. The results go to ``<out stem>_files/<target>/`` and are reused
    when the page is made again with the same settings. ``sections``: names from :data:`SECTIONS`
    (default: all, in registry order). ``settings``: overrides of :data:`DEFAULTS` (grid steps and
    span, audit budget, Lanczos tolerance, probes, seed). ``checkpoints``: one entry per target, a
    ``state_dict`` file giving its θ (or ``None``), loaded as ``lossatlas … --checkpoint`` loads it: the whole
    state strictly (BatchNorm running statistics included), its trainable entries as the centre.
    """
    func = "report"

    if isinstance(targets, (str, Target)):
        targets = [targets]
    if not isinstance(targets, (list, tuple)) or not targets:
        raise bad_type(func, "targets", "a target name or a non-empty list of them", targets)
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise bad_value(func, "out", "a path ending in .html", str(out))
    names = list(SECTIONS) if sections is None else list(sections)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise bad_value(func, "sections", f"a non-empty list of {list(SECTIONS)}", sections)
    settings = dict(settings or {})
    bad = [k for k in settings if k not in DEFAULTS]
    if bad:
        raise bad_value(func, "settings", f"keys among {sorted(DEFAULTS)}", bad)
    if checkpoints is None:
        checkpoints = [None] * len(targets)
    if isinstance(checkpoints, (str, Path)) or not isinstance(checkpoints, (list, tuple)):
        raise bad_type(func, "checkpoints", "a list with one checkpoint path (or None) per target", checkpoints)
    if len(checkpoints) != len(targets):
        raise bad_value(func, "checkpoints", f"one entry per target ({len(targets)} targets)",
                        f"{len(checkpoints)} entries")
    resolved = []
    for i, (tgt, ckpt) in enumerate(zip(targets, checkpoints)):  # validate every target before heavy work
        if ckpt is not None and not isinstance(ckpt, (str, Path)):
            raise bad_type(func, f"checkpoints[{i}]", "a path to a state_dict file or None", ckpt)
        if isinstance(tgt, Target):
            spec = tgt.name
            if ckpt is not None:  # the loader of every command's --checkpoint (buffers and BN statistics kept)
                problem, center, info = problem_from_checkpoint(Path(ckpt), tgt.problem)
                tgt = Target(f"{tgt.name} @ {Path(ckpt).name}", problem, center, tgt.description,
                             example=tgt.example, info={**tgt.info, "checkpoint": info})
        elif isinstance(tgt, str):
            spec = tgt
            tgt = resolve(tgt, checkpoint=None if ckpt is None else Path(ckpt))
        else:
            raise bad_type(func, f"targets[{i}]", "an example name or path/to/file.py:function", tgt)
        resolved.append((tgt, spec, None if ckpt is None else str(ckpt)))
    slugs = [slug(t.name) for t, _, _ in resolved]
    if len(set(slugs)) != len(slugs):
        raise bad_value(func, "targets", "distinct targets", [t.name for t, _, _ in resolved])
    files = out.with_name(out.stem + "_files")
    needs = {n for name in names for n in SECTIONS[name].needs}
    results = [compute(t, files / slug(t.name), settings, spec=spec, checkpoint=ckpt, needs=needs, progress=progress)
               for t, spec, ckpt in resolved]
    page = Page(results, files.name)
    text = assemble(page, title or "lossatlas report: " + ", ".join(r.name for r in results),
                    [SECTIONS[n] for n in names])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
