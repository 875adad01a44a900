"""The stored results a report is made of, one folder per target (``<report>_files/<target>/``).

Each step writes one file and is skipped when that file already holds the result of the same
settings on the same problem (a report is resumable): ``plane.zarr``, ``slice-x.zarr`` and
``slice-y.zarr`` (surface stores: ``lossatlas info``/``plot`` open them, and an interrupted one
resumes chunk by chunk), ``audit.json`` with ``certificate.npz`` (``lossatlas verify``),
``curvature.json`` (Hessian extremes, the Gauss–Newton split, trace ± stderr, the density) and
``provenance.json``. Every number the page shows is read back from these files.

Warnings that qualify a stored number (:data:`QUALIFYING`: a plane or slice of a BatchNorm network
evaluated with θ's stored statistics, :class:`~lossatlas.errors.BatchNormStatsWarning`) are recorded
while each result is computed, still shown as warnings, and kept in ``provenance.json`` under
``"warnings"`` (one list per stored result), so a page made again from reused results says so too.
"""

from __future__ import annotations

import json
import math
import platform
import re
import sys
import time
import warnings
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import convexity, curvature
from .. import params as P
from .._ncattrs import get as get_attr
from .._version import __version__
from ..curvature import ggn_operator, hessian_operator
from ..errors import BatchNormStatsWarning, LossAtlasError, ProvenanceMismatchError, StoreLockedError
from ..surface import open_surface, surface

#: the fast defaults (mlp-digits in about a minute on 2 cores); ``report(..., settings=...)`` overrides
DEFAULTS: dict[str, Any] = {
    "steps": 15, "span": 1.0, "slice_steps": 41, "seed": 0,
    "audit_budget": 40, "audit_certificates": 1, "audit_hessian_max_params": 1000,
    "eigen_tol": 1e-3, "trace_probes": 12, "density_iters": 20, "density_probes": 2,
    "chunk": None,  # grid points per chunk of the stores (None: about a second of work each)
}


#: warnings that qualify a stored number: recorded with the results and said on the page
QUALIFYING: tuple[type[Warning], ...] = (BatchNormStatsWarning,)


_SHOWN: dict[Any, Any] = {}  # the warning registry of re-emitted qualifying warnings (as a module's own)


def _module_of(filename: str) -> str | None:
    for name, mod in list(sys.modules.items()):
        if getattr(mod, "__file__", None) == filename:
            return name
    return None


@contextmanager
def _noting(notes: dict[str, list[dict[str, str]]], names: Collection[str]) -> Iterator[None]:
    """Record the :data:`QUALIFYING` warnings raised within under each of ``names`` (the stored results being
    computed; every one, whatever the filters say), then let each warning be shown as it would have been: the
    qualifying ones emitted again under the caller's filters, the others (which met those filters already)
    passed on as they are."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            for category in QUALIFYING:  # only these are recorded whatever the filters; the rest keep theirs
                warnings.simplefilter("always", category)
            yield
    finally:  # an interrupted computation's warnings are still shown
        for w in caught:
            if not issubclass(w.category, QUALIFYING):
                getattr(warnings, "_showwarnmsg", lambda m: warnings.showwarning(
                    m.message, m.category, m.filename, m.lineno, m.file, m.line))(w)
                continue
            entry = {"category": w.category.__name__, "message": " ".join(str(w.message).split())}
            for name in names:
                if entry not in notes.setdefault(name, []):
                    notes[name].append(entry)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, module=_module_of(w.filename),
                                   registry=_SHOWN, source=w.source)


def slug(name: str) -> str:
    """A folder name for a target: ``nets.py:make`` → ``nets.py-make``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "target"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def write_json(path: Path, value: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(value), indent=1))
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class TargetResult:
    """One target's stored results, as read back from its folder (what the sections draw)."""

    name: str
    folder: Path
    description: str = ""
    spec: str = ""                         # the TARGET as given (for command lines: lossatlas verify … TARGET)
    checkpoint: str = ""                   # the --checkpoint file giving θ ("" when none)
    plane: Any = None                      # xarray Dataset (open_surface of plane.zarr)
    slices: list[Any] = field(default_factory=list)
    audit: dict[str, Any] | None = None
    curvature: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)  # "plane.zarr: 120/225 points" for stores still running
    reused: list[str] = field(default_factory=list)
    notes: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # qualifying warnings per stored result

    def warnings(self, *names: str) -> list[dict[str, str]]:
        """The qualifying warnings recorded for the stored results ``names`` (each once), from provenance.json."""
        stored = self.provenance.get("warnings") or {}
        out: list[dict[str, str]] = []
        for name in names:
            for w in stored.get(name) or []:
                if w not in out:
                    out.append(w)
        return out

    def file(self, name: str) -> Path:
        return self.folder / name


def _key(problem, center, settings: Mapping[str, Any], what: str) -> dict[str, Any]:
    fp = problem.fingerprint()
    return {"what": what, "model": fp["model"], "data": fp["data"], "loss": fp["loss"],
            "center": P.fingerprint(center), "settings": dict(settings)}


def _cached(path: Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
    old = read_json(path)
    if old is not None and old.get("key") == _jsonable(key):
        return old
    return None


def _store(folder: Path, name: str, problem, center, dirs, steps: int, span: float, res: TargetResult,
           progress: bool, strategy: str | None = None, chunk: int | None = None):
    """A surface store, computed (or resumed); a store another process is still writing is read as it is."""
    path = folder / name
    existed = path.exists()
    args = dict(steps=steps, span=span, store=path, progress=progress, chunk=chunk,
                **({"strategy": strategy} if strategy else {}))
    try:
        surface(problem, center, dirs, **args)
    except StoreLockedError:
        if not existed:
            raise
    except ProvenanceMismatchError:  # the report's own store, made with other settings: replaced
        existed = False
        surface(problem, center, dirs, overwrite=True, **args)
    ds = open_surface(path)
    if existed:
        res.reused.append(name)
    if not ds.attrs.get("complete"):
        res.incomplete.append(f"{name}: {ds.attrs.get('points_done')}/{ds.attrs.get('points_total')} points")
    return ds


def compute(target, folder: Path, settings: Mapping[str, Any], *, spec: str = "", checkpoint: str | None = None,
            needs: Collection[str] = ("plane", "slices", "audit", "curvature"), progress: bool = False) -> TargetResult:
    """Compute (or reuse) the stored results ``needs`` of one resolved target (``lossatlas._targets.Target``;
    ``checkpoint``: the file its θ and buffers were loaded from, for the page's command lines)."""
    s = {**DEFAULTS, **settings}
    folder.mkdir(parents=True, exist_ok=True)
    problem, center = target.problem, target.center
    res = TargetResult(target.name, folder, target.description, spec or target.name, checkpoint or "")
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    dirs = target.default_directions(n=2, seed=s["seed"])
    times["directions"] = time.perf_counter() - t0

    if "plane" in needs:
        t0 = time.perf_counter()
        with _noting(res.notes, ["plane.zarr"]):
            res.plane = _store(folder, "plane.zarr", problem, center, dirs, s["steps"], s["span"], res, progress,
                               chunk=s["chunk"])
        times["plane"] = time.perf_counter() - t0
    if "slices" in needs:
        t0 = time.perf_counter()
        for i, axis in enumerate("xy"):
            with _noting(res.notes, [f"slice-{axis}.zarr"]):
                res.slices.append(_store(folder, f"slice-{axis}.zarr", problem, center, dirs.select(i),
                                         s["slice_steps"], s["span"], res, False, strategy="loop", chunk=s["chunk"]))
        times["slices"] = time.perf_counter() - t0

    n_params = sum(int(v.numel()) for v in center.values())
    if "audit" in needs:
        t0 = time.perf_counter()
        with _noting(res.notes, ["audit.json"]):
            res.audit = _audit(problem, center, folder, s, n_params, target.name, res, progress)
        times["audit"] = time.perf_counter() - t0
    if "curvature" in needs:
        t0 = time.perf_counter()
        with _noting(res.notes, ["curvature.json"]):
            res.curvature = _curvature(problem, center, folder, s, res, progress)
        times["curvature"] = time.perf_counter() - t0
    drawn = res.plane if res.plane is not None else (res.slices[0] if res.slices else None)
    d_attrs = drawn.attrs if drawn is not None else {"direction_kind": dirs.spec.get("kind"),
                                                    "direction_norm": dirs.spec.get("norm")}

    prov_path = folder / "provenance.json"
    old = read_json(prov_path) or {}
    fp = problem.fingerprint()
    prov = {
        "target": target.name, "description": target.description, "model": type(problem.model).__name__,
        "parameters": n_params, "samples": int(problem.n_samples), "dtype": str(problem.dtype).replace("torch.", ""),
        "device": str(problem.device), "fingerprints": {k: fp[k] for k in ("model", "data", "loss")},
        "center_fingerprint": P.fingerprint(center),
        "checkpoint": ({"file": checkpoint, **{k: v for k, v in target.info.get("checkpoint", {}).items()
                                               if k != "source"}} if checkpoint else None),
        "versions": {"lossatlas": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "seeds": {"directions": s["seed"], "audit": s["seed"], "curvature": s["seed"]},
        "directions": {"kind": d_attrs.get("direction_kind"), "norm": d_attrs.get("direction_norm"),
                       "labels": list(get_attr(d_attrs, "direction_labels") or [])},
        "settings": s, "threads": torch.get_num_threads(),
        # seconds of the run that computed each result (a reused result keeps the time it took then)
        "seconds": {**(old.get("seconds") or {}), **{k: v for k, v in times.items() if v > 0.5 or k not in
                                                      (old.get("seconds") or {})}},
        "made": old.get("made") or time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "updated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "reused": res.reused,
        "warnings": _warnings(old, res, problem, center),
    }
    write_json(prov_path, prov)
    res.provenance = read_json(prov_path) or {}
    return res


def _warnings(old: Mapping[str, Any], res: TargetResult, problem, center) -> dict[str, Any]:
    """The qualifying warnings of each stored result: those of this run where it was computed (or reused, which
    repeats the checks that warn), else those recorded when it was made if it is the same problem at the same θ."""
    fp = problem.fingerprint()
    same = (old.get("fingerprints") == {k: fp[k] for k in ("model", "data", "loss")}
            and old.get("center_fingerprint") == P.fingerprint(center))
    out = {k: v for k, v in (old.get("warnings") or {}).items() if same and k in res.reused and v}
    out.update({k: v for k, v in res.notes.items() if v})
    return out


def _audit(problem, center, folder: Path, s, n_params: int, name: str, res: TargetResult, progress: bool):
    methods = list(convexity.METHODS)
    if n_params > s["audit_hessian_max_params"]:
        methods.remove("hessian")  # its float64 Lanczos is the slow part; λ extremes come from curvature.json
    settings = {"budget": s["audit_budget"], "seed": s["seed"], "methods": methods,
                "max_certificates": s["audit_certificates"]}
    path = folder / "audit.json"
    key = _key(problem, center, settings, "audit")
    cached = _cached(path, key)
    if cached is not None and (not cached.get("certificate") or (folder / cached["certificate"]).exists()):
        res.reused.append("audit.json")
        return cached
    result = convexity.audit(problem, center, budget=s["audit_budget"], seed=s["seed"], methods=methods,
                             max_certificates=s["audit_certificates"], progress=progress, name=name)
    out = {"key": key, **result.to_dict(), "methods": methods, "summary": result.summary()}
    out.pop("tried", None)
    out["tried"] = {m: {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))}
                    for m, info in result.tried.items()}
    if result.certificates:
        best = result.certificates[0]
        best.save(folder / "certificate.npz")
        out["certificate"] = "certificate.npz"
        out["certificate_summary"] = best.summary()
        out["certificate_note"] = best.note
    else:
        (folder / "certificate.npz").unlink(missing_ok=True)
    write_json(path, out)
    return read_json(path)


def _curvature(problem, center, folder: Path, s, res: TargetResult, progress: bool):
    settings = {k: s[k] for k in ("eigen_tol", "trace_probes", "density_iters", "density_probes", "seed")}
    settings["format"] = 2  # 2: one operator for every estimate (the split of format 1 could use a fresh operator's
    #                          finite-difference product); results of format 1 are recomputed
    path = folder / "curvature.json"
    key = _key(problem, center, settings, "curvature")
    cached = _cached(path, key)
    if cached is not None:
        res.reused.append("curvature.json")
        return cached
    seconds = {}
    # one Hessian operator (and one GGN operator) for every estimate: its graph is built, and its first
    # product checked against finite differences of gradients, once instead of once per estimate
    t0 = time.perf_counter()
    hess = hessian_operator(problem, center)
    eig = curvature.eigenvalues(hess, k=1, which="both", tol=s["eigen_tol"], seed=s["seed"], certify=False,
                                progress=progress)
    seconds["eigen"] = time.perf_counter() - t0
    lam_max, lam_min = float(eig.values[0]), float(eig.values[-1])
    t0 = time.perf_counter()
    gauss = None
    try:
        gauss = ggn_operator(problem, center)
        ggn = curvature.eigenvalues(gauss, k=1, which="smallest", tol=s["eigen_tol"], seed=s["seed"], certify=False,
                                    progress=progress)
        ggn_min, ggn_conv, ggn_note = float(ggn.values[0]), bool(ggn.converged[0]), ""
    except Exception as exc:  # a loss without a GGN (custom closure): said so on the page
        gauss = None
        ggn_min, ggn_conv, ggn_note = None, False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    seconds["ggn"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    split = _split(hess, gauss, eig.vectors[-1], lam_min, ggn_note)
    seconds["split"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr = curvature.trace(hess, probes=s["trace_probes"], seed=s["seed"], progress=progress)
    seconds["trace"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dens = curvature.density(hess, iters=s["density_iters"], probes=s["density_probes"], seed=s["seed"], points=401,
                             progress=progress)
    seconds["density"] = time.perf_counter() - t0
    out = {
        "key": key,
        "eigen": {"lambda_max": lam_max, "lambda_min": lam_min, "converged_max": bool(eig.converged[0]),
                  "converged_min": bool(eig.converged[-1]), "residual_max": float(eig.residuals[0]),
                  "residual_min": float(eig.residuals[-1]), "products": int(eig.products), "tol": s["eigen_tol"]},
        "ggn": {"lambda_min": ggn_min, "converged": ggn_conv, "note": ggn_note},
        "split": {k: split.get(k) for k in ("available", "vHv", "vGv", "model_term", "lambda", "text")},
        "trace": {"value": float(tr.value), "stderr": float(tr.stderr), "probes": int(tr.samples),
                  "method": tr.method},
        "density": {"grid": dens.grid, "values": dens.values, "sigma": dens.sigma,
                    "negative_mass": float(dens.negative_mass.value),
                    "negative_mass_stderr": float(dens.negative_mass.stderr),
                    "negative_bounds": list(dens.negative_bounds), "iters": int(dens.iters),
                    "probes": int(np.asarray(dens.nodes).shape[0]), "lambda_min": float(dens.lambda_min),
                    "lambda_max": float(dens.lambda_max)},
        "seconds": seconds,
    }
    write_json(path, out)
    return read_json(path)


def _split(hess, gauss, v, lam: float, note: str = "") -> dict[str, Any]:
    """The Gauss–Newton split along v in the problem's dtype: vᵀHv = vᵀGv + vᵀ(Σ ∂ℓ/∂f ∇²f)v (one product with
    each operator; the audit's float64 version is :func:`lossatlas.convexity._curvature.explain`)."""
    if gauss is None:
        return {"available": False, "text": f"No Gauss–Newton split: {note or 'the loss has no Gauss–Newton matrix'}"}
    try:
        hv = hess.apply(v)
        gv = gauss.apply(v)
    except LossAtlasError as exc:
        return {"available": False, "text": f"No Gauss–Newton split: {exc}"}
    vv = P.dot(v, v)
    vhv, vgv = P.dot(v, hv) / vv, P.dot(v, gv) / vv
    return {"available": True, "vHv": vhv, "vGv": vgv, "model_term": vhv - vgv, "lambda": lam}
