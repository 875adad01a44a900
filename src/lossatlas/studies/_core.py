"""The machinery every study shares: a registry, training with a resumable cache keyed by the
config's hash, the metrics of one trained model, and the table (CSV + JSON) of a family.

A *member* of a study is a JSON-able dict ``{"name", "model", "data", "loss", "train"}``; its cache
key is the SHA-256 of its canonical JSON (sorted keys), so the same config finds the same files on
any machine and any run, and a changed config trains afresh. The metrics of a member are cached the
same way under the hash of the member *and* the metrics config.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from .. import convexity, curvature, directions, metrics, sharpness
from ..errors import bad_value, public
from ..examples import TRAINING_THREADS
from ..problem import Problem
from ..runner import pinned_threads
from ..surface import surface
from ..trajectory import TrajectoryRecorder
from ._figures import family_figures
from ._models import build_model, load_data

__all__ = ["Study", "REGISTRY", "register", "config_hash", "run_study", "StudyResult", "COLUMNS"]

SIZES = ("tiny", "quick", "full")


def config_hash(obj: Any) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of ``obj`` (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Study:
    """A registered study: ``members(config)`` lists the models to train, ``extra(context)`` (optional)
    adds study-specific figures and columns; ``configs`` holds the ``tiny``/``quick``/``full`` sizes."""

    name: str
    description: str
    question: str
    configs: Mapping[str, Mapping[str, Any]]
    members: Callable[[Mapping[str, Any]], list[dict[str, Any]]]
    extra: Callable[..., dict[str, Any]] | None = None
    reference: str = "Li, Xu, Taylor, Studer & Goldstein 2018 (arXiv:1712.09913)"

    def config(self, size: str = "quick") -> dict[str, Any]:
        if size not in self.configs:
            raise bad_value("Study.config", "size", f"one of {tuple(self.configs)}", size)
        return json.loads(json.dumps(self.configs[size]))


REGISTRY: dict[str, Study] = {}


def register(study: Study) -> Study:
    REGISTRY[study.name] = study
    return study


@dataclass
class StudyResult:
    """What :func:`run_study` wrote: the table rows, the folder, what was trained and what was read
    from the cache, the shared colour scale and the seconds taken."""

    name: str
    out: Path
    rows: list[dict[str, Any]]
    trained: list[str]
    cached: list[str]
    metrics_cached: list[str]
    seconds: float
    scales: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"StudyResult({self.name}: {len(self.rows)} models, {len(self.trained)} trained, "
                f"{len(self.cached)} from cache, {self.seconds:.1f} s, {self.out})")


# ----------------------------------------------------------------------------------------------- training

LOSSES = {"ce": torch.nn.CrossEntropyLoss, "bce": torch.nn.BCEWithLogitsLoss, "mse": torch.nn.MSELoss}


def _shapes(train) -> tuple[int, int]:
    x, y = train
    n_in = int(np.prod(x.shape[1:]))
    n_out = int(y.max().item()) + 1 if y.dtype == torch.long else int(y.shape[1])
    return n_in, n_out


def _data(member: Mapping[str, Any], cache: dict) -> tuple:
    key = config_hash(member["data"])
    if key not in cache:
        cache[key] = load_data(member["data"])
    return cache[key]


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(o: Any):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def training_threads(spec: Mapping[str, Any]) -> int:
    """The intra-op threads a member trains on: its ``train`` spec's ``threads``, else
    :data:`lossatlas.examples.TRAINING_THREADS` (1). Trained weights depend on the count (CPU
    reductions split by thread), so it is part of the member's cache key."""
    threads = spec.get("threads", TRAINING_THREADS)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise bad_value("studies", "train.threads", "an integer >= 1", threads)
    return threads


def train(member: Mapping[str, Any], train_data, *, record: Path | None = None) -> tuple[torch.nn.Module, dict]:
    """Train one member with minibatch SGD (momentum 0.9) or Adam from its ``train`` spec
    (``epochs``, ``lr``, ``batch_size``, ``weight_decay``, ``optimizer``, ``seed``, ``threads``: see
    :func:`training_threads`); with ``record``, checkpoints every ``record_every`` steps go there
    (:class:`lossatlas.TrajectoryRecorder`)."""
    with pinned_threads(training_threads(member["train"])):
        return _train(member, train_data, record=record)


def _train(member: Mapping[str, Any], train_data, *, record: Path | None) -> tuple[torch.nn.Module, dict]:
    spec = member["train"]
    x, y = train_data
    n_in, n_out = _shapes(train_data)
    model = build_model(member["model"], n_in, n_out)
    loss_fn = LOSSES[member["loss"]]()
    seed = int(spec.get("seed", 0))
    g = torch.Generator().manual_seed(seed)
    lr = float(spec.get("lr", 0.1))
    wd = float(spec.get("weight_decay", 0.0))
    if spec.get("optimizer", "sgd") == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=float(spec.get("momentum", 0.9)), weight_decay=wd)
    bs = min(int(spec.get("batch_size", 128)), len(x))
    rec = TrajectoryRecorder(record, overwrite=True) if record is not None else None
    every = int(spec.get("record_every", 1))
    step = 0
    t0 = time.perf_counter()
    losses = []
    model.train()
    if rec is not None:
        rec.record(model, step=0)
    for _ in range(int(spec.get("epochs", 10))):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - bs + 1, bs):
            idx = perm[i:i + bs]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            step += 1
            losses.append(float(loss.detach()))
            if rec is not None and step % every == 0:
                rec.record(model, step=step, loss=float(loss.detach()))
    model.eval()
    return model, {"steps": step, "seconds": time.perf_counter() - t0,
                   "final_batch_loss": losses[-1] if losses else None}


def trained_model(member: Mapping[str, Any], root: Path, data_cache: dict,
                  log: list) -> tuple[torch.nn.Module, dict, bool]:
    """The trained model of ``member``: read from ``root/models/<hash>.pt`` when there, else trained
    and written there (atomically, after any trajectory). Returns ``(model, info, from_cache)``."""
    key = config_hash({**{k: member[k] for k in ("model", "data", "loss")},
                       "train": {**member["train"], "threads": training_threads(member["train"])}})
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    path = models / f"{key}.pt"
    train_data = _data(member, data_cache)[0]
    n_in, n_out = _shapes(train_data)
    if path.exists():
        blob = torch.load(path, weights_only=False)
        model = build_model(member["model"], n_in, n_out)
        model.load_state_dict(blob["state"])
        model.eval()
        return model, blob["info"], True
    record = models / f"{key}-trajectory" if member["train"].get("record_every") else None
    model, info = train(member, train_data, record=record)
    info = {**info, "key": key, "trajectory": str(record.name) if record else None}
    _atomic_save({"state": model.state_dict(), "info": info, "member": dict(member)}, path)
    log.append(member["name"])
    return model, info, False


# ------------------------------------------------------------------------------------------------ metrics

def _full_loss(model: torch.nn.Module, data, loss: str) -> float:
    """The loss over the whole of ``data`` (one forward pass, eval mode)."""
    x, y = data
    with torch.no_grad():
        return float(LOSSES[loss]()(model(x), y))


def _accuracy(model: torch.nn.Module, data, loss: str) -> float:
    x, y = data
    with torch.no_grad():
        out = model(x)
    if loss == "ce":
        return float((out.argmax(1) == y).float().mean())
    threshold = 0.0 if loss == "bce" else 0.5
    return float(((out > threshold).float() == y).float().mean())


def _problem(model, member, data, n: int | None):
    x, y = data
    if n is not None and n < len(x):
        x, y = x[:n], y[:n]
    return Problem(model, LOSSES[member["loss"]](), (x, y), metrics=None)


def _metric_n(data, n: int | None) -> int:
    """How many training samples the metrics use: ``n`` (at most all of them), or all when ``None``."""
    return len(data[0]) if n is None else min(int(n), len(data[0]))


def _f(v: Any) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v


def member_metrics(model, member: Mapping[str, Any], data, mcfg: Mapping[str, Any]) -> dict[str, Any]:
    """Every metric of one trained model (see :data:`COLUMNS`) and its plane, as JSON-able values."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = time.perf_counter() - t0 - sum(timings.values())

    train_data, test_data = data[0], data[1]
    problem = _problem(model, member, train_data, mcfg.get("metric_n"))
    seed = int(mcfg.get("seed", 0))
    theta = problem.params()
    row: dict[str, Any] = {"model": member["name"], "params": int(sum(v.numel() for v in theta.values()))}
    row["train_acc"] = _accuracy(model, train_data, member["loss"])
    row["test_acc"] = _accuracy(model, test_data, member["loss"])
    row["train_loss"] = _full_loss(model, train_data, member["loss"])   # the whole training set, like train_acc
    row["metric_loss"] = _f(problem.loss(theta))   # on the metric_n samples every landscape metric uses
    row["metric_n"] = int(_metric_n(train_data, mcfg.get("metric_n")))
    d = directions.random(problem, n=2, seed=seed)
    steps, span = int(mcfg["steps"]), float(mcfg.get("span", 1.0))
    ds = surface(problem, None, d, steps=steps, span=span, progress=False, metrics=False)
    lap("surface")
    nc = metrics.nonconvexity_fraction(ds)
    row.update(nonconvexity=nc.fraction, nonconvexity_half=nc.fraction_half,
               negative_curvature=nc.negative_fraction)
    lm = metrics.local_minima(ds, problem, center=theta, directions=d, max_minima=int(mcfg.get("max_minima", 5)),
                              seed=seed)
    lap("minima")
    counts = lm.counts
    row.update(minima=lm.count, minima_half=lm.count_half, minima_checked=min(lm.count, int(mcfg.get("max_minima", 5))),
               minima_real=counts.get("minimum", 0), minima_saddle=counts.get("saddle", 0),
               minima_not_critical=counts.get("not critical", 0), minima_unresolved=counts.get("unresolved", 0))
    eig = curvature.eigenvalues(problem, k=1, which="both", dtype=torch.float64, progress=False, seed=seed,
                                max_products=int(mcfg.get("lanczos_products", 300)), certify=False)
    lap("eigenvalues")
    lmax, lmin = float(eig.values[0]), float(eig.values[-1])
    row.update(lambda_max=lmax, lambda_min=lmin, ratio=abs(lmin) / lmax if lmax > 0 else math.nan,
               eig_converged=bool(np.all(eig.converged)))
    tr = sharpness.trace(problem, probes=int(mcfg.get("trace_probes", 30)), seed=seed)
    lap("trace")
    row.update(trace=tr.value, trace_err=tr.error)
    ss = int(mcfg.get("sharp_steps", 10))
    row["sam"] = sharpness.sam_sharpness(problem, rho=float(mcfg.get("rho", 0.05)), iters=ss, seed=seed).value
    row["asam"] = sharpness.adaptive_sharpness(problem, rho=float(mcfg.get("asam_rho", 0.5)), iters=ss, seed=seed).value
    row["eps_sharpness"] = sharpness.epsilon_sharpness(problem, epsilon=float(mcfg.get("epsilon", 1e-3)), iters=ss,
                                                       seed=seed).value
    fw = sharpness.filter_width(problem, delta=float(mcfg.get("width_delta", 0.1)), span=span,
                                steps=int(mcfg.get("width_steps", 21)), seed=seed)
    lap("sharpness")
    row.update(filter_width=fw.value, filter_width_err=fw.error)
    # far points for the Jensen search: near a small θ the audit's own radii may all see a convex-looking
    # loss (sigmoid + MSE saturates only far away); every certificate is still verified in float64
    g = torch.Generator().manual_seed(seed)
    far = [{k: v + r * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in theta.items()}
           for r in mcfg.get("audit_far", (1.0, 3.0, 10.0)) for _ in range(2)]
    au = convexity.audit(problem, budget=int(mcfg.get("audit_budget", 100)), seed=seed, progress=False,
                         name=member["name"], checkpoints=far or None)
    lap("audit")
    row["verdict"] = au.verdict
    row["certificates"] = ",".join(sorted({c.kind for c in au.certificates}))
    row["metric_seconds"] = time.perf_counter() - t0
    row["timings"] = {k: round(v, 3) for k, v in timings.items()}
    plane = {"x": ds["x"].values.tolist(), "y": ds["y"].values.tolist(), "loss": ds["loss"].values.tolist()}
    return {"row": row, "plane": plane}


COLUMNS = ["model", "params", "train_acc", "test_acc", "train_loss", "metric_loss", "metric_n", "verdict",
           "certificates", "nonconvexity", "nonconvexity_half", "negative_curvature", "minima", "minima_half",
           "minima_checked", "minima_real", "minima_saddle", "minima_not_critical", "minima_unresolved", "lambda_max",
           "lambda_min", "ratio", "eig_converged", "trace", "trace_err", "sam", "asam", "eps_sharpness",
           "filter_width", "filter_width_err", "train_seconds", "metric_seconds", "cached"]


def plane_dataset(plane: Mapping[str, Any]) -> xr.Dataset:
    return xr.Dataset({"loss": (("x", "y"), np.asarray(plane["loss"], dtype=float))},
                      coords={"x": np.asarray(plane["x"]), "y": np.asarray(plane["y"])})


# -------------------------------------------------------------------------------------------------- runner

def _write_table(rows: list[dict[str, Any]], out: Path, meta: Mapping[str, Any]) -> None:
    cols = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    _atomic_json({**meta, "columns": cols, "rows": rows}, out / "table.json")


@public("studies.run_study")
def run_study(name: str, out: str | Path, *, size: str = "quick", config: Mapping[str, Any] | None = None,
              figures: bool = True, log: Callable[[str], None] | None = None) -> StudyResult:
    """Run study ``name`` at ``size`` (``"tiny"``, ``"quick"`` or ``"full"``; ``config`` overrides the
    size's config entirely) into the folder ``out``: trains every member not yet cached under
    ``out/models``, computes the metrics not yet cached under ``out/metrics``, writes ``table.csv``,
    ``table.json``, the figures (shared colour and axis scales across the family) and
    ``summary.md``. Rerunning with the same config trains and measures nothing again."""
    if name not in REGISTRY:
        raise bad_value("run_study", "name", f"one of {sorted(REGISTRY)}", name)
    study = REGISTRY[name]
    cfg = dict(config) if config is not None else study.config(size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda s: None)
    t0 = time.perf_counter()
    c0 = time.process_time()
    members = study.members(cfg)
    mcfg = cfg["metrics"]
    data_cache: dict = {}
    trained: list[str] = []
    cached: list[str] = []
    metrics_cached: list[str] = []
    rows, planes, models, notes = [], {}, {}, []
    (out / "metrics").mkdir(exist_ok=True)
    for m in members:
        data = _data(m, data_cache)
        if data[3] and data[3] not in notes:
            notes.append(data[3])
        model, info, hit = trained_model(m, out, data_cache, trained)
        if hit:
            cached.append(m["name"])
        models[m["name"]] = (model, info, data)
        mkey = config_hash({"member": m, "metrics": mcfg})
        mpath = out / "metrics" / f"{mkey}.json"
        if mpath.exists():
            res = json.loads(mpath.read_text())
            metrics_cached.append(m["name"])
        else:
            say(f"{name}: measuring {m['name']}")
            res = member_metrics(model, m, data, mcfg)
            _atomic_json(res, mpath)
        row = {**res["row"], "train_seconds": info.get("seconds"), "cached": hit, "data": data[2],
               "key": info.get("key"),
               **m.get("columns", {})}
        rows.append(row)
        planes[m["name"]] = plane_dataset(res["plane"])
    context = {"study": study, "config": cfg, "members": members, "models": models, "rows": rows, "planes": planes,
               "out": out, "data_cache": data_cache, "log": say}
    extra_figs: list[str] = []
    if study.extra is not None:
        extra = study.extra(context) or {}
        extra_figs = list(extra.get("figures", []))
        notes += list(extra.get("notes", []))
    scales: dict[str, Any] = {}
    figs: list[str] = []
    if figures:
        scales, figs = family_figures(study, rows, planes, out, cfg)
    figs += extra_figs
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    fresh = {"seconds": seconds, "cpu_seconds": cpu}  # of the last run that trained or measured something
    if not trained and len(metrics_cached) == len(members) and (out / "table.json").exists():
        try:
            fresh = json.loads((out / "table.json").read_text()).get("fresh_run", fresh)
        except (OSError, ValueError):
            pass
    meta = {"study": name, "size": size if config is None else "custom", "description": study.description,
            "config": cfg, "config_hash": config_hash(cfg), "seconds": seconds, "trained": trained, "cached": cached,
            "cpu_seconds": cpu, "fresh_run": fresh,
            "compute_seconds": sum((r.get("train_seconds") or 0.0) + (r.get("metric_seconds") or 0.0)
                                   for r in rows), "metrics_cached": metrics_cached, "scales": scales,
            "figures": figs, "notes": notes,
            "threads": torch.get_num_threads()}
    _write_table(rows, out, meta)
    _summary(study, rows, out, meta)
    return StudyResult(name, out, rows, trained, cached, metrics_cached, seconds, scales, figs, notes)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3g}"
    return str(v)


SUMMARY_COLUMNS = ["model", "train_acc", "test_acc", "verdict", "nonconvexity", "minima", "minima_real",
                   "minima_saddle", "minima_not_critical", "minima_unresolved", "lambda_max", "lambda_min", "ratio",
                   "trace", "sam", "asam", "filter_width"]


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """The rows as a Markdown table of ``columns`` (default: the main metrics)."""
    cols = columns or SUMMARY_COLUMNS
    cols = [c for c in cols if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def _summary(study: Study, rows, out: Path, meta) -> None:
    extra = [c for c in rows[0] if c not in COLUMNS and c not in ("data", "key", "timings")] if rows else []
    text = [f"# Study `{study.name}`", "", study.description, "", f"Question: {study.question}", "",
            markdown_table(rows, SUMMARY_COLUMNS + extra), "",
            f"Data: {rows[0]['data'] if rows else '-'}. Config hash {meta['config_hash']}; {meta['seconds']:.1f} s "
            f"({len(meta['trained'])} trained, {len(meta['cached'])} from cache).", ""]
    text += [f"Note: {n}" for n in meta["notes"]]
    text += ["", "Figures: " + ", ".join(meta["figures"]), "", f"Reference: {study.reference}", ""]
    (out / "summary.md").write_text("\n".join(text))
