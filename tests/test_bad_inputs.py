"""The bad-input catalogue (issue 14): one table of API cases and one of CLI cases.

Adding a case is one line. An API case asserts the library's own exception type (a subclass of
``LossAtlasError``), a one-line message, and that the message names the argument. A CLI case asserts
exit status 2, no traceback, one line of output, and that the line names the option.
"""
import json
import math
import os
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import lossatlas
from lossatlas import curvature as C
from lossatlas import convexity as X
from lossatlas import directions as D
from lossatlas import plot
from lossatlas.errors import (DataError, EvaluationError, InvalidArgumentError, InvalidTypeError, LossAtlasError,
                              LossFunctionError, ParameterMismatchError, StoreError)

E = LossAtlasError  # "any error of ours" where the precise subclass is not the point
G = torch.Generator().manual_seed(0)
X_ = torch.randn(24, 3, generator=G)
Y_ = torch.randint(0, 2, (24,), generator=G)
T_ = torch.randn(24, 1, generator=G)


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


CE = torch.nn.CrossEntropyLoss()
_CACHE = {}


def pr():
    if "pr" not in _CACHE:
        _CACHE["pr"] = lossatlas.Problem(net(), CE, (X_, Y_))
    return _CACHE["pr"]


def dirs():
    return D.random(pr(), n=2, seed=0)


def tiny_surface():
    if "ds" not in _CACHE:
        _CACHE["ds"] = lossatlas.surface(pr(), None, dirs(), steps=3, progress=False)
    return _CACHE["ds"]


def tiny_line():
    if "line" not in _CACHE:
        _CACHE["line"] = lossatlas.surface(pr(), None, D.random(pr(), n=1, seed=0), steps=3, progress=False)
    return _CACHE["line"]


class Endless(IterableDataset):
    def __iter__(self):
        while True:
            yield X_[:4], Y_[:4]


def later_bad_labels():
    y = Y_.clone()
    y[-1] = 7  # only 2 classes: the last batch is wrong
    return lossatlas.Problem(net(), CE, DataLoader(TensorDataset(X_, y), batch_size=8))


def meta_model():
    with torch.device("meta"):
        return torch.nn.Linear(3, 2)


def write(tmp, name, content, mode="w"):
    path = os.path.join(tmp, name)
    with open(path, mode) as f:
        f.write(content)
    return path


def tmpdir():
    import tempfile
    return tempfile.mkdtemp(prefix="lossatlas-bad-")


def bad_cert(content):
    return lambda: X.Certificate.load(write(tmpdir(), "cert.json", content))


def bad_store_attrs():
    d = tmpdir()
    os.makedirs(os.path.join(d, "s.zarr"))
    write(os.path.join(d, "s.zarr"), "zarr.json", "{not json")
    return lossatlas.open_surface(os.path.join(d, "s.zarr"))


def saved(obj):
    path = os.path.join(tmpdir(), "x.pt")
    torch.save(obj, path)
    return path


def recording(meta, index):
    d = tmpdir()
    write(d, "meta.json", meta)
    write(d, "index.jsonl", index)
    write(d, "ckpt-000000.pt", "")
    return d


def dir_named(name):
    path = os.path.join(tmpdir(), name)
    os.makedirs(path)
    return path


def bad_traj_index():
    d = tmpdir()
    write(d, "index.json", "{broken")
    return lossatlas.Trajectory.open(d) if hasattr(lossatlas.Trajectory, "open") else D.pca(d)


API_CASES = [
    # --- Problem: model, loss, data, device, dtype, metrics ---
    ("problem-model-str", lambda: lossatlas.Problem("net", CE, (X_, Y_)), InvalidTypeError, "model"),
    ("problem-model-none", lambda: lossatlas.Problem(None, CE, (X_, Y_)), InvalidTypeError, "model"),
    ("problem-loss-int", lambda: lossatlas.Problem(net(), 3, (X_, Y_)), InvalidTypeError, "loss"),
    ("problem-loss-none", lambda: lossatlas.Problem(net(), None, (X_, Y_)), InvalidArgumentError, "loss"),
    ("problem-closure-int", lambda: lossatlas.Problem(net(), None, (X_, Y_), closure=5), InvalidTypeError, "closure"),
    ("problem-bn", lambda: lossatlas.Problem(net(), CE, (X_, Y_), bn="train"), InvalidArgumentError, "bn"),
    ("problem-device-garbage", lambda: lossatlas.Problem(net(), CE, (X_, Y_), device="gpu0"), InvalidArgumentError, "device"),
    ("problem-device-int-neg", lambda: lossatlas.Problem(net(), CE, (X_, Y_), device=-1), InvalidArgumentError, "device"),
    ("problem-device-list", lambda: lossatlas.Problem(net(), CE, (X_, Y_), device=["cpu"]), E, "device"),
    ("problem-device-meta", lambda: lossatlas.Problem(net(), CE, (X_, Y_), device="meta"), InvalidArgumentError, "device"),
    ("problem-model-meta", lambda: lossatlas.Problem(meta_model(), CE, (X_, Y_)), InvalidArgumentError, "model"),
    ("problem-data-meta", lambda: lossatlas.Problem(net(), CE, (X_.to("meta"), Y_.to("meta"))), DataError, "data"),
    ("problem-dtype-int", lambda: lossatlas.Problem(net(), CE, (X_, Y_), dtype=torch.int64), InvalidArgumentError, "dtype"),
    ("problem-dtype-str", lambda: lossatlas.Problem(net(), CE, (X_, Y_), dtype="float32"), InvalidArgumentError, "dtype"),
    ("problem-loss-dtype", lambda: lossatlas.Problem(net(), CE, (X_, Y_), loss_dtype="x"), InvalidArgumentError, "loss_dtype"),
    ("problem-batch-size-0", lambda: lossatlas.Problem(net(), CE, (X_, Y_), batch_size=0), E, "batch_size"),
    ("problem-batch-size-neg", lambda: lossatlas.Problem(net(), CE, (X_, Y_), batch_size=-4), E, "batch_size"),
    ("problem-batch-size-float", lambda: lossatlas.Problem(net(), CE, (X_, Y_), batch_size=2.5), E, "batch_size"),
    ("problem-batch-size-bool", lambda: lossatlas.Problem(net(), CE, (X_, Y_), batch_size=True), E, "batch_size"),
    ("problem-max-cache-neg", lambda: lossatlas.Problem(net(), CE, (X_, Y_), max_cache_bytes=-1), E, "max_cache_bytes"),
    ("problem-max-cache-str", lambda: lossatlas.Problem(net(), CE, (X_, Y_), max_cache_bytes="1G"), E, "max_cache_bytes"),
    ("problem-data-str", lambda: lossatlas.Problem(net(), CE, "data.csv"), InvalidTypeError, "data"),
    ("problem-data-none", lambda: lossatlas.Problem(net(), CE, None), E, "data"),
    ("problem-data-int", lambda: lossatlas.Problem(net(), CE, 42), E, "data"),
    ("problem-data-empty", lambda: lossatlas.Problem(net(), CE, (X_[:0], Y_[:0])), DataError, "data"),
    ("problem-data-sizes", lambda: lossatlas.Problem(net(), CE, (X_, Y_[:5])), DataError, "data"),
    ("problem-data-triple", lambda: lossatlas.Problem(net(), CE, (X_, Y_, Y_)), E, "data"),
    ("problem-data-sparse", lambda: lossatlas.Problem(net(), CE, (X_.to_sparse(), Y_)), DataError, "data"),
    ("problem-data-sparse-csr", lambda: lossatlas.Problem(net(), CE, (X_.to_sparse_csr(), Y_)), DataError, "data"),
    ("problem-data-sparse-loader", lambda: lossatlas.Problem(net(), CE, [(X_.to_sparse(), Y_)]), DataError, "data"),
    ("problem-data-infinite", lambda: lossatlas.Problem(net(), CE, Endless()), DataError, "data"),
    ("problem-data-infinite-loader", lambda: lossatlas.Problem(net(), CE, DataLoader(Endless(), batch_size=None)),
     DataError, "data"),
    ("problem-data-empty-list", lambda: lossatlas.Problem(net(), CE, []), DataError, "data"),
    ("problem-data-empty-loader", lambda: lossatlas.Problem(net(), CE, DataLoader(TensorDataset(X_[:0], Y_[:0]))),
     DataError, "data"),
    ("problem-labels-out-of-range", lambda: lossatlas.Problem(net(), CE, (X_, Y_ + 5)), E, "data"),
    ("problem-labels-negative", lambda: lossatlas.Problem(net(), CE, (X_, Y_ - 3)), E, "data"),
    ("problem-labels-later-batch", later_bad_labels, DataError, "batch"),
    ("problem-labels-float", lambda: lossatlas.Problem(net(), CE, (X_, Y_.float())), DataError, "data"),
    ("problem-labels-later-batch-negative", lambda: lossatlas.Problem(net(), CE, [(X_[:12], Y_[:12]), (X_[12:], Y_[12:] - 4)]), DataError, "batch"),
    ("problem-labels-later-batch-float", lambda: lossatlas.Problem(net(), CE, [(X_[:12], Y_[:12]), (X_[12:], Y_[12:].double())]), DataError, "batch"),
    ("problem-labels-streamed-later-batch", lambda: lossatlas.Problem(net(), CE, [(X_[:12], Y_[:12]), (X_[12:], Y_[12:] + 2)], max_cache_bytes=0), DataError, "batch"),
    ("problem-labels-streamed-later-batch-float", lambda: lossatlas.Problem(net(), CE, [(X_[:12], Y_[:12]), (X_[12:], Y_[12:].float())], max_cache_bytes=0), DataError, "batch"),
    ("problem-labels-ignore-index-ok-but-negative", lambda: lossatlas.Problem(net(), CE, (X_, torch.where(Y_ > 0, -100, -1))), DataError, "data"),
    ("problem-labels-nll-out-of-range", lambda: lossatlas.Problem(net(), torch.nn.NLLLoss(), (X_, Y_ + 2)), DataError, "data"),
    ("problem-labels-float-for-ce", lambda: lossatlas.Problem(net(), CE, (X_, torch.rand(24, 7))), E, "loss"),
    ("problem-inputs-wrong-width", lambda: lossatlas.Problem(net(), CE, (torch.randn(24, 5), Y_)), EvaluationError, "first batch"),
    ("problem-inputs-int", lambda: lossatlas.Problem(net(), CE, (torch.ones(24, 3, dtype=torch.long), Y_)), E, "Problem"),
    ("problem-loss-vector", lambda: lossatlas.Problem(net(), lambda o, t: o.sum(1), (X_, Y_)), LossFunctionError, "loss"),
    ("problem-loss-float", lambda: lossatlas.Problem(net(), lambda o, t: 1.0, (X_, Y_)), LossFunctionError, "loss"),
    ("problem-loss-int-tensor", lambda: lossatlas.Problem(net(), lambda o, t: torch.tensor(1), (X_, Y_)), LossFunctionError, "loss"),
    ("problem-loss-raises", lambda: lossatlas.Problem(net(), lambda o, t: 1 / 0, (X_, Y_)), EvaluationError, "loss"),
    ("problem-closure-vector", lambda: lossatlas.Problem(net(), None, (X_, Y_), closure=lambda m, b: m(b[0])), LossFunctionError, "closure"),
    ("problem-metrics-int", lambda: lossatlas.Problem(net(), CE, (X_, Y_), metrics=3), InvalidTypeError, "metrics"),
    ("problem-metrics-loss-name", lambda: lossatlas.Problem(net(), CE, (X_, Y_), metrics={"loss": lambda o, t: o.sum()}), InvalidArgumentError, "metrics"),
    ("problem-metrics-unknown", lambda: lossatlas.Problem(net(), CE, (X_, Y_), metrics=["f1"]), InvalidArgumentError, "metrics"),
    ("problem-metric-vector", lambda: lossatlas.Problem(net(), CE, (X_, Y_), metrics={"m": lambda o, t: o.sum(1)}), E, "metrics"),
    ("problem-metric-string", lambda: lossatlas.Problem(net(), CE, (X_, Y_), metrics={"m": lambda o, t: "x"}), E, "metrics"),
    ("problem-metric-raises", lambda: lossatlas.Problem(net(), CE, (X_, Y_), metrics={"m": lambda o, t: 1 / 0}), E, "metrics"),
    ("problem-metric-two-elements", lambda: lossatlas.Problem(net(), CE, (X_, Y_), metrics={"m": lambda o, t: o.sum(0)}), EvaluationError, "'m'"),
    ("problem-metric-none", lambda: lossatlas.Problem(net(), CE, (X_, Y_), metrics=[lambda o, t: None]), EvaluationError, "metrics"),
    ("problem-metric-complex", lambda: lossatlas.Problem(net(), CE, (X_, Y_), metrics={"m": lambda o, t: o.sum().to(torch.complex64)}), EvaluationError, "'m'"),
    ("problem-metric-raises-later-batch", lambda: lossatlas.Problem(net(), CE, [(X_[:12], Y_[:12]), (X_[12:20], Y_[12:20])], metrics={"m": lambda o, t: o.sum() * (1 / (len(t) - 8))}).evaluate(pr().params()), EvaluationError, "'m'"),
    ("problem-accuracy-regression", lambda: lossatlas.Problem(net(), torch.nn.MSELoss(), (X_, torch.randn(24, 2)), metrics=["accuracy"]), InvalidArgumentError, "metrics"),
    ("problem-frozen-model", lambda: lossatlas.Problem(net().requires_grad_(False), CE, (X_, Y_)), InvalidArgumentError, "model"),
    ("problem-loss-params-missing", lambda: pr().loss({"0.weight": torch.zeros(4, 3)}), ParameterMismatchError, "params"),
    ("problem-loss-params-str", lambda: pr().loss("theta"), E, "params"),
    ("problem-loss-params-shape", lambda: pr().loss({k: torch.zeros(1) for k in pr().param_names}), ParameterMismatchError, "params"),
    # --- directions ---
    ("random-n-0", lambda: D.random(pr(), n=0), InvalidArgumentError, "n"),
    ("random-n-neg", lambda: D.random(pr(), n=-2), E, "n"),
    ("random-n-float", lambda: D.random(pr(), n=2.0), E, "n"),
    ("random-n-bool", lambda: D.random(pr(), n=True), E, "n"),
    ("random-n-too-many", lambda: D.random(pr(), n=100, ignore=None), InvalidArgumentError, "n"),
    ("random-norm", lambda: D.random(pr(), norm="filterwise"), InvalidArgumentError, "norm"),
    ("random-ignore", lambda: D.random(pr(), ignore="everything"), E, "ignore"),
    ("random-seed-neg", lambda: D.random(pr(), seed=-1), E, "seed"),
    ("random-seed-str", lambda: D.random(pr(), seed="x"), E, "seed"),
    ("random-seed-float", lambda: D.random(pr(), seed=1.5), E, "seed"),
    ("random-seed-bool", lambda: D.random(pr(), seed=True), E, "seed"),
    ("random-seed-huge", lambda: D.random(pr(), seed=2**70), E, "seed"),
    ("random-seed-numpy-neg", lambda: D.random(pr(), seed=np.int64(-5)), E, "seed"),
    ("random-orthogonal-str", lambda: D.random(pr(), orthogonal="yes"), E, "orthogonal"),
    ("random-source-str", lambda: D.random("model"), E, "params"),
    ("random-nonfloat", lambda: D.random({"w": torch.ones(3, dtype=torch.long)}), InvalidArgumentError, "params"),
    ("random-empty-params", lambda: D.random({}), E, "params"),
    ("between-module", lambda: D.between(net(), net()), InvalidTypeError, "a"),
    ("between-mismatch", lambda: D.between({"w": torch.zeros(3)}, {"v": torch.zeros(3)}), ParameterMismatchError, "b"),
    ("between-same", lambda: D.between(pr().params(), pr().params()), E, "b"),
    ("between-nan", lambda: D.between({"w": torch.zeros(2)}, {"w": torch.tensor([1.0, float("nan")])}), E, "b"),
    ("plane-same-c", lambda: D.plane({"w": torch.zeros(2)}, {"w": torch.ones(2)}, {"w": torch.zeros(2)}), E, "c"),
    ("plane-collinear-orthogonal", lambda: D.plane({"w": torch.zeros(2)}, {"w": torch.ones(2)}, {"w": -3 * torch.ones(2)}, orthogonal=True), E, "c"),
    ("plane-collinear", lambda: D.plane({"w": torch.zeros(2)}, {"w": torch.ones(2)}, {"w": 2 * torch.ones(2)}), E, "c"),
    ("axes-unknown-name", lambda: D.axes(pr().params(), ["nope"]), E, "names"),
    ("axes-empty", lambda: D.axes(pr().params(), []), E, "names"),
    ("axes-str", lambda: D.axes(pr().params(), "0.weight"), E, "names"),
    ("directions-collinear", lambda: lossatlas.surface(pr(), None, [dirs()[0], dirs()[0]], steps=3, progress=False), E, "directions"),
    ("directions-collinear-scaled", lambda: lossatlas.surface(pr(), None, [dirs()[0], {k: 2 * v for k, v in dirs()[0].items()}], steps=3, progress=False), E, "directions"),
    ("directions-zero", lambda: lossatlas.surface(pr(), None, [{k: 0 * v for k, v in dirs()[0].items()}], steps=3, progress=False), E, "directions"),
    ("directions-nan", lambda: lossatlas.surface(pr(), None, [{k: v * float("nan") for k, v in dirs()[0].items()}], steps=3, progress=False), E, "directions"),
    ("directions-str", lambda: lossatlas.surface(pr(), None, "random", steps=3, progress=False), E, "directions"),
    ("directions-empty", lambda: lossatlas.surface(pr(), None, [], steps=3, progress=False), E, "directions"),
    ("directions-five", lambda: lossatlas.surface(pr(), None, D.random(pr(), n=5, ignore=None), steps=2, progress=False), E, "directions"),
    ("hessian-dirs-n-0", lambda: D.hessian(pr(), n=0), E, "n"),
    ("hessian-dirs-which", lambda: D.hessian(pr(), which="middle"), E, "which"),
    ("hessian-dirs-seed", lambda: D.hessian(pr(), seed=-1), E, "seed"),
    ("pca-missing-dir", lambda: D.pca("/nonexistent/traj"), E, "trajectory"),
    ("pca-one-checkpoint", lambda: D.pca([pr().params()]), E, "trajectory"),
    ("pca-n-0", lambda: D.pca([pr().params(), dirs()[0]], n=0), E, "n"),
    # --- surface ---
    ("surface-problem-module", lambda: lossatlas.surface(net(), None, dirs()), InvalidTypeError, "problem"),
    ("surface-steps-0", lambda: lossatlas.surface(pr(), None, dirs(), steps=0, progress=False), InvalidArgumentError, "steps"),
    ("surface-steps-neg", lambda: lossatlas.surface(pr(), None, dirs(), steps=-3, progress=False), E, "steps"),
    ("surface-steps-float", lambda: lossatlas.surface(pr(), None, dirs(), steps=3.5, progress=False), E, "steps"),
    ("surface-steps-str", lambda: lossatlas.surface(pr(), None, dirs(), steps="9", progress=False), E, "steps"),
    ("surface-steps-wrong-len", lambda: lossatlas.surface(pr(), None, dirs(), steps=[3, 3, 3], progress=False), E, "steps"),
    ("surface-span-nan", lambda: lossatlas.surface(pr(), None, dirs(), steps=3, span=float("nan"), progress=False), E, "span"),
    ("surface-span-inf", lambda: lossatlas.surface(pr(), None, dirs(), steps=3, span=math.inf, progress=False), E, "span"),
    ("surface-span-zero", lambda: lossatlas.surface(pr(), None, dirs(), steps=3, span=0.0, progress=False), E, "span"),
    ("surface-span-reversed", lambda: lossatlas.surface(pr(), None, dirs(), steps=3, span=(1.0, -1.0), progress=False), E, "span"),
    ("surface-span-str", lambda: lossatlas.surface(pr(), None, dirs(), steps=3, span="1", progress=False), E, "span"),
    ("surface-strategy", lambda: lossatlas.surface(pr(), None, dirs(), strategy="gpu", progress=False), InvalidArgumentError, "strategy"),
    ("surface-parallel", lambda: lossatlas.surface(pr(), None, dirs(), parallel="model", progress=False), E, "parallel"),
    ("surface-chunk-neg", lambda: lossatlas.surface(pr(), None, dirs(), chunk=-3, progress=False), InvalidArgumentError, "chunk"),
    ("surface-chunk-0", lambda: lossatlas.surface(pr(), None, dirs(), chunk=0, progress=False), E, "chunk"),
    ("surface-center-str", lambda: lossatlas.surface(pr(), "theta", dirs(), steps=3, progress=False), E, "center"),
    ("surface-center-mismatch", lambda: lossatlas.surface(pr(), {"w": torch.zeros(2)}, dirs(), steps=3, progress=False), ParameterMismatchError, "center"),
    ("surface-dtype-mismatch", lambda: lossatlas.surface(pr(), None, dirs().to(dtype=torch.float64), steps=3, progress=False), ParameterMismatchError, "dtype"),
    ("surface-device-mismatch", lambda: lossatlas.surface(pr(), None, dirs().to(device="meta"), steps=3, progress=False), ParameterMismatchError, "device"),
    ("surface-huge-grid", lambda: lossatlas.surface(pr(), None, dirs(), steps=20000, progress=False), InvalidArgumentError, "steps"),
    ("surface-huge-grid-3d", lambda: lossatlas.surface(pr(), None, D.random(pr(), n=3, ignore=None), steps=1000, progress=False), InvalidArgumentError, "steps"),
    ("surface-allow-large-str", lambda: lossatlas.surface(pr(), None, dirs(), steps=3, allow_large="yes", progress=False), E, "allow_large"),
    ("surface-store-is-file", lambda: lossatlas.surface(pr(), None, dirs(), steps=3, progress=False, store=write(tmpdir(), "f.txt", "x")), StoreError, "store"),
    ("surface-store-int", lambda: lossatlas.surface(pr(), None, dirs(), steps=3, progress=False, store=5), E, "store"),
    ("surface-overwrite-str", lambda: lossatlas.surface(pr(), None, dirs(), steps=3, progress=False, overwrite="no"), E, "overwrite"),
    ("surface-progress-str", lambda: lossatlas.surface(pr(), None, dirs(), steps=3, progress="no"), E, "progress"),
    ("open-surface-missing", lambda: lossatlas.open_surface("/nonexistent/store.zarr"), StoreError, "path"),
    ("open-surface-file", lambda: lossatlas.open_surface(write(tmpdir(), "x.zarr", "not a store")), StoreError, "path"),
    ("open-surface-empty-dir", lambda: lossatlas.open_surface(tmpdir()), StoreError, "path"),
    ("open-surface-bad-json", bad_store_attrs, StoreError, "path"),
    ("open-directions-missing", lambda: lossatlas.open_directions("/nonexistent/store.zarr"), StoreError, "path"),
    ("open-surface-int", lambda: lossatlas.open_surface(3), E, "path"),
    # --- curvature ---
    ("eigen-k-0", lambda: C.eigenvalues(pr(), k=0, progress=False), InvalidArgumentError, "k"),
    ("eigen-k-too-big", lambda: C.eigenvalues(pr(), k=10**6, progress=False), E, "k"),
    ("eigen-which", lambda: C.eigenvalues(pr(), which="middle", progress=False), E, "which"),
    ("eigen-tol-0", lambda: C.eigenvalues(pr(), tol=0, progress=False), E, "tol"),
    ("eigen-tol-2", lambda: C.eigenvalues(pr(), tol=2.0, progress=False), E, "tol"),
    ("eigen-seed-neg", lambda: C.eigenvalues(pr(), seed=-1, progress=False), E, "seed"),
    ("eigen-seed-str", lambda: C.eigenvalues(pr(), seed="x", progress=False), E, "seed"),
    ("eigen-curvature", lambda: C.eigenvalues(pr(), curvature="fisher", progress=False), E, "curvature"),
    ("eigen-max-products-0", lambda: C.eigenvalues(pr(), max_products=0, progress=False), E, "max_products"),
    ("eigen-dtype", lambda: C.eigenvalues(pr(), dtype="float64", progress=False), E, "dtype"),
    ("eigen-params-unknown", lambda: C.eigenvalues(pr(), params=["nope*"], progress=False), E, "params"),
    ("eigen-problem-module", lambda: C.eigenvalues(net(), progress=False), E, "problem"),
    ("trace-method", lambda: C.trace(pr(), method="exact-ish", progress=False), E, "method"),
    ("trace-probes-0", lambda: C.trace(pr(), probes=0, progress=False), E, "probes"),
    ("trace-seed-neg", lambda: C.trace(pr(), seed=-1, progress=False), E, "seed"),
    ("density-iters-0", lambda: C.density(pr(), iters=0, progress=False), E, "iters"),
    ("density-sigma-neg", lambda: C.density(pr(), sigma=-1.0, progress=False), E, "sigma"),
    ("density-points-0", lambda: C.density(pr(), points=0, progress=False), E, "points"),
    ("density-seed-str", lambda: C.density(pr(), seed="x", progress=False), E, "seed"),
    ("ratio-steps-0", lambda: C.ratio_map(pr(), None, dirs(), steps=0, progress=False), E, "steps"),
    ("ratio-seed-neg", lambda: C.ratio_map(pr(), None, dirs(), steps=3, seed=-1, progress=False), E, "seed"),
    ("ratio-huge-grid", lambda: C.ratio_map(pr(), None, dirs(), steps=20000, progress=False), E, "steps"),
    # --- convexity ---
    ("audit-budget-0", lambda: X.audit(pr(), budget=0, progress=False), E, "budget"),
    ("audit-budget-str", lambda: X.audit(pr(), budget="lots", progress=False), E, "budget"),
    ("audit-seed-neg", lambda: X.audit(pr(), seed=-1, progress=False), E, "seed"),
    ("audit-seed-str", lambda: X.audit(pr(), seed="x", progress=False), E, "seed"),
    ("audit-methods-unknown", lambda: X.audit(pr(), methods=["magic"], progress=False), E, "methods"),
    ("audit-methods-empty", lambda: X.audit(pr(), methods=[], progress=False), E, "methods"),
    ("audit-methods-str", lambda: X.audit(pr(), methods="jensen,magic", progress=False), E, "methods"),
    ("audit-max-cert-neg", lambda: X.audit(pr(), max_certificates=-1, progress=False), E, "max_certificates"),
    ("audit-max-cert-float", lambda: X.audit(pr(), max_certificates=1.5, progress=False), E, "max_certificates"),
    ("audit-checkpoints-empty", lambda: X.audit(pr(), checkpoints=[], progress=False), E, "checkpoints"),
    ("audit-checkpoints-mismatch", lambda: X.audit(pr(), checkpoints=[{"w": torch.zeros(2)}], progress=False), E, "checkpoints"),
    ("audit-problem-module", lambda: X.audit(net(), progress=False), E, "problem"),
    ("audit-theta-mismatch", lambda: X.audit(pr(), {"w": torch.zeros(2)}, progress=False), E, "theta"),
    ("cert-load-missing", lambda: X.Certificate.load("/nonexistent/cert.json"), StoreError, "path"),
    ("cert-load-not-json", bad_cert("{this is not json"), StoreError, "path"),
    ("cert-load-empty-obj", bad_cert("{}"), StoreError, "path"),
    ("cert-load-list", bad_cert("[1, 2, 3]"), StoreError, "path"),
    ("cert-load-binary", lambda: X.Certificate.load(write(tmpdir(), "c.json", b"\x28\xb5\x2f\xfd\x00garbage", "wb")), StoreError, "path"),
    ("cert-load-dir", lambda: X.Certificate.load(tmpdir()), StoreError, "path"),
    ("verify-not-cert", lambda: X.verify({"kind": "jensen"}, pr()), E, "certificate"),
    # --- paths ---
    ("interpolate-steps-0", lambda: lossatlas.interpolate(pr(), pr().params(), dirs()[0], steps=0, progress=False), E, "steps"),
    ("interpolate-extend", lambda: lossatlas.interpolate(pr(), pr().params(), dirs()[0], extend=(1.0, 0.0), progress=False), E, "extend"),
    ("interpolate-b-mismatch", lambda: lossatlas.interpolate(pr(), pr().params(), {"w": torch.zeros(1)}, progress=False), E, "b"),
    ("interpolate-a-str", lambda: lossatlas.interpolate(pr(), "a.pt", pr().params(), progress=False), E, "a"),
    ("connect-bends-0", lambda: lossatlas.connect(pr(), pr().params(), dirs()[0], bends=0, progress=False), E, "bends"),
    ("connect-curve", lambda: lossatlas.connect(pr(), pr().params(), dirs()[0], curve="spline", progress=False), E, "curve"),
    ("connect-lr-neg", lambda: lossatlas.connect(pr(), pr().params(), dirs()[0], lr=-1.0, progress=False), E, "lr"),
    ("connect-seed-neg", lambda: lossatlas.connect(pr(), pr().params(), dirs()[0], seed=-1, progress=False), E, "seed"),
    ("connect-seed-str", lambda: lossatlas.connect(pr(), pr().params(), dirs()[0], seed="x", progress=False), E, "seed"),
    ("align-seed-neg", lambda: lossatlas.align(pr().params(), pr().params(), net(), seed=-1), E, "seed"),
    # --- trajectory ---
    ("recorder-path-int", lambda: lossatlas.TrajectoryRecorder(5), InvalidTypeError, "path"),
    ("recorder-every-0", lambda: lossatlas.TrajectoryRecorder(tmpdir(), every=0), InvalidArgumentError, "every"),
    ("trajectory-empty", lambda: lossatlas.Trajectory([], []), InvalidArgumentError, "items"),
    ("trajectory-bad-index", bad_traj_index, StoreError, "index"),
    ("load-state-missing", lambda: __import__("lossatlas.trajectory").trajectory.load_state("/nonexistent/x.pt"), StoreError, "path"),
    ("load-state-garbage", lambda: __import__("lossatlas.trajectory").trajectory.load_state(write(tmpdir(), "x.pt", b"garbage", "wb")), StoreError, "path"),
    ("load-state-dir", lambda: __import__("lossatlas.trajectory").trajectory.load_state(tmpdir()), StoreError, "path"),
    ("load-state-empty-file", lambda: __import__("lossatlas.trajectory").trajectory.load_state(write(tmpdir(), "x.pt", "")), StoreError, "path"),
    ("load-state-list", lambda: __import__("lossatlas.trajectory").trajectory.load_state(saved([1, 2])), StoreError, "path"),
    ("load-state-whole-model", lambda: __import__("lossatlas.trajectory").trajectory.load_state(saved(net())), StoreError, "path"),
    ("trajectory-bad-meta", lambda: lossatlas.Trajectory.open(recording("{broken", "")), StoreError, "meta"),
    ("trajectory-index-no-file-key", lambda: lossatlas.Trajectory.open(recording("{}", '{"step": 0}\n')), StoreError, "index"),
    ("load-state-json", lambda: __import__("lossatlas.trajectory").trajectory.load_state(write(tmpdir(), "x.pt", "{}")), StoreError, "path"),
    # --- plots ---
    ("plot-contour-levels-0", lambda: plot.contour(tiny_surface(), levels=0), E, "levels"),
    ("plot-contour-levels-neg", lambda: plot.contour(tiny_surface(), levels=-5), E, "levels"),
    ("plot-contour-vmin-gt-vmax", lambda: plot.contour(tiny_surface(), vmin=5, vmax=1), E, "vmin"),
    ("plot-heatmap-vmin-gt-vmax", lambda: plot.heatmap(tiny_surface(), vmin=5, vmax=1), E, "vmin"),
    ("plot-surface3d-vmin-gt-vmax", lambda: plot.surface3d(tiny_surface(), vmin=5, vmax=1), E, "vmin"),
    ("plot-line-vmin-gt-vmax", lambda: plot.line(tiny_line(), vmin=5, vmax=1), E, "vmin"),
    ("plot-contour-vmin-nan", lambda: plot.contour(tiny_surface(), vmin=float("nan")), E, "vmin"),
    ("plot-contour-levels-float", lambda: plot.contour(tiny_surface(), levels=2.5), E, "levels"),
    ("plot-contour-levels-bool", lambda: plot.contour(tiny_surface(), levels=True), E, "levels"),
    ("plot-contour-levels-decreasing", lambda: plot.contour(tiny_surface(), levels=[3.0, 2.0, 1.0]), E, "levels"),
    ("plot-contour-levels-nan", lambda: plot.contour(tiny_surface(), levels=[0.1, float("nan")]), E, "levels"),
    ("plot-contour-vmax-nan", lambda: plot.contour(tiny_surface(), vmax=float("nan")), E, "vmax"),
    ("plot-heatmap-vmax-inf", lambda: plot.heatmap(tiny_surface(), vmax=math.inf), E, "vmax"),
    ("plot-line-vmin-eq-vmax", lambda: plot.line(tiny_line(), vmin=1.0, vmax=1.0), E, "vmin"),
    ("plot-surface3d-vmin-str", lambda: plot.surface3d(tiny_surface(), vmin="0"), E, "vmin"),
    ("plot-path-levels-0", lambda: plot.path_on_plane(tiny_surface(), levels=0), E, "levels"),
    ("plot-ratio-contours-neg", lambda: plot.ratio_map(tiny_surface(), variable="loss", loss_contours=-2), E, "loss_contours"),
    ("plot-contour-variable", lambda: plot.contour(tiny_surface(), "nope"), E, "variable"),
    ("plot-contour-1d", lambda: plot.contour(tiny_line()), E, "ds"),
    ("plot-contour-not-ds", lambda: plot.contour("store.zarr"), E, "ds"),
    ("plot-line-2d", lambda: plot.line(tiny_surface()), E, "ds"),
    ("plot-lines-2d", lambda: plot.lines([tiny_line(), tiny_surface()]), E, "datasets[1]"),
    ("plot-lines-labels", lambda: plot.lines([tiny_line()], labels=["a", "b"]), E, "labels"),
    ("plot-save-missing-dir", lambda: plot.save(__import__("matplotlib.figure").figure.Figure(), "/proc/nonexistent/dir/x.png"), StoreError, "path"),
    ("plot-save-is-dir", lambda: plot.save(__import__("matplotlib.figure").figure.Figure(), dir_named("x.png")), StoreError, "path"),
    ("plot-save-html-missing-dir", lambda: plot.save_html(None, "/proc/nonexistent/dir/x.html"), StoreError, "path"),
    ("plot-save-suffix", lambda: plot.save(__import__("matplotlib.figure").figure.Figure(), os.path.join(tmpdir(), "x.nope")), E, "path"),
    # --- store paths (issue 14: I/O) ---
    ("surface-store-parent-is-file", lambda: lossatlas.surface(pr(), None, dirs(), steps=3, progress=False, store=os.path.join(write(tmpdir(), "f.txt", "x"), "s.zarr")), StoreError, "store"),
    ("surface-store-parent-unmakeable", lambda: lossatlas.surface(pr(), None, dirs(), steps=3, progress=False, store="/proc/lossatlas-no/s.zarr"), StoreError, "store"),
    ("surface-store-foreign-dir", lambda: lossatlas.surface(pr(), None, dirs(), steps=3, progress=False, store=os.path.dirname(write(tmpdir(), "other.txt", "x"))), StoreError, "store"),
    ("surface-overwrite-foreign-dir", lambda: lossatlas.surface(pr(), None, dirs(), steps=3, progress=False, overwrite=True, store=os.path.dirname(write(tmpdir(), "other.txt", "x"))), StoreError, "store"),
    ("open-surface-under-a-file", lambda: lossatlas.open_surface(os.path.join(write(tmpdir(), "f.txt", "x"), "s.zarr")), StoreError, "path"),
    ("open-surface-float", lambda: lossatlas.open_surface(3.5), InvalidTypeError, "path"),
    ("open-surface-none", lambda: lossatlas.open_surface(None), InvalidTypeError, "path"),
    ("open-surface-foreign-dir", lambda: lossatlas.open_surface(os.path.dirname(write(tmpdir(), "other.txt", "x"))), StoreError, "path"),
]


#: cases still open (issue 14): strict xfail, so fixing one makes its entry here fail until removed
KNOWN_GAPS = set()
KNOWN_CLI_GAPS = set()


def _params(cases, gaps):
    return [pytest.param(c, id=c[0], marks=pytest.mark.xfail(strict=True, reason="open: issue 14"))
            if c[0] in gaps else pytest.param(c, id=c[0]) for c in cases]


@pytest.mark.parametrize("case", _params(API_CASES, KNOWN_GAPS))
def test_api_bad_input(case):
    _, call, exc, arg = case
    with pytest.raises(LossAtlasError) as info:
        call()
    assert isinstance(info.value, exc), f"{type(info.value).__name__}: {info.value}"
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert arg.lower() in msg.lower(), f"{arg!r} not in {msg!r}"


def test_api_table_is_large_and_unique():
    ids = [c[0] for c in API_CASES]
    assert len(ids) >= 100 and len(set(ids)) == len(ids)
    assert len(CLI_CASES) >= 40 and len({c[0] for c in CLI_CASES}) == len(CLI_CASES)


# ---------------------------------------------------------------------------------------------
TARGET_FILES = {
    "raises.py": "def make():\n    raise RuntimeError('boom')\n",
    "syntax.py": "def make(:\n    pass\n",
    "importerr.py": "import no_such_module_lossatlas\n\ndef make():\n    pass\n",
    "topraise.py": "raise ValueError('at import')\n",
    "wrongtype.py": "def make():\n    return 42\n",
    "notcallable.py": "make = 3\n",
    "noargs.py": "def make(x):\n    return x\n",
    "kwonly.py": "def make(*, x):\n    return x\n",
    "exits.py": "import sys\nsys.exit(3)\n",
    "factoryexits.py": "def make():\n    raise SystemExit('bye')\n",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-bad")
    for name, src in TARGET_FILES.items():
        (d / name).write_text(src)
    (d / "notes.txt").write_text("not a checkpoint")
    torch.save(net(), d / "whole_model.pt")
    torch.save({"weights": [1, 2, 3]}, d / "nondict.pt")
    torch.save({"foo": torch.zeros(2)}, d / "wrongkeys.pt")
    (d / "garbage.pt").write_bytes(b"\x00\x01garbage")
    (d / "cert.json").write_text("{not json")
    (d / "cert_empty.json").write_text("{}")
    (d / "notastore.zarr").mkdir()
    (d / "afile").write_text("x")
    (d / "adir.png").mkdir()
    (d / "adir.pt").mkdir()
    (d / "emptytraj").mkdir()
    (d / "badtraj").mkdir()
    (d / "badtraj" / "index.json").write_text("{broken")
    return d


CLI_CASES = [
    # typer usage errors (wrong types, unknown options, missing arguments)
    ("surface-steps-not-int", ["surface", "seed-relu", "--steps", "many"], "steps"),
    ("surface-seed-not-int", ["surface", "seed-relu", "--seed", "x"], "seed"),
    ("surface-dims-not-int", ["surface", "seed-relu", "--dims", "two"], "dims"),
    ("surface-unknown-option", ["surface", "seed-relu", "--stepz", "3"], "stepz"),
    ("surface-missing-target", ["surface"], "TARGET"),
    ("plot-vmin-not-float", ["plot", "{d}/notastore.zarr", "--vmin", "low"], "vmin"),
    ("plot-levels-not-int", ["plot", "{d}/notastore.zarr", "--levels", "x"], "levels"),
    ("hessian-k-not-int", ["hessian", "seed-relu", "--k", "x"], "k"),
    ("unknown-command", ["surfacee", "seed-relu"], "surfacee"),
    # bad values
    ("surface-steps-0", ["surface", "seed-relu", "--steps", "0", "--no-progress"], "steps"),
    ("surface-steps-neg", ["surface", "seed-relu", "--steps", "-3", "--no-progress"], "steps"),
    ("surface-dims-5", ["surface", "seed-relu", "--dims", "5"], "dims"),
    ("surface-seed-neg", ["surface", "seed-relu", "--seed", "-1", "--no-progress"], "seed"),
    ("surface-span-garbage", ["surface", "seed-relu", "--span", "wide", "--steps", "3"], "span"),
    ("surface-span-nan", ["surface", "seed-relu", "--span", "nan", "--steps", "3", "--no-progress"], "span"),
    ("surface-span-three", ["surface", "seed-relu", "--span", "1,2,3", "--steps", "3"], "span"),
    ("surface-directions", ["surface", "seed-relu", "--directions", "sideways", "--steps", "3"], "directions"),
    ("surface-axes-count", ["surface", "seed-relu", "--directions", "axes:w0", "--steps", "3"], "directions"),
    ("surface-axes-unknown", ["surface", "seed-relu", "--dims", "1", "--directions", "axes:nope", "--steps", "3"], "names"),
    ("surface-norm", ["surface", "seed-relu", "--norm", "weird", "--steps", "3"], "norm"),
    ("surface-ignore", ["surface", "seed-relu", "--ignore", "weird", "--steps", "3"], "ignore"),
    ("surface-strategy", ["surface", "seed-relu", "--strategy", "gpu", "--steps", "3", "--no-progress"], "strategy"),
    ("surface-parallel", ["surface", "seed-relu", "--parallel", "model", "--steps", "3", "--no-progress"], "parallel"),
    ("surface-dtype", ["surface", "seed-relu", "--dtype", "int8", "--steps", "3"], "dtype"),
    ("surface-device", ["surface", "seed-relu", "--device", "gpu0", "--steps", "3"], "device"),
    ("surface-device-meta", ["surface", "seed-relu", "--device", "meta", "--steps", "3"], "device"),
    ("surface-huge-grid", ["surface", "seed-relu", "--steps", "20000", "--no-progress"], "steps"),
    ("surface-unknown-target", ["surface", "no-such-example", "--steps", "3"], "TARGET"),
    ("surface-target-missing-file", ["surface", "{d}/missing.py:make", "--steps", "3"], "TARGET"),
    ("surface-target-raises", ["surface", "{d}/raises.py:make", "--steps", "3"], "TARGET"),
    ("surface-target-syntax", ["surface", "{d}/syntax.py:make", "--steps", "3"], "SyntaxError"),
    ("surface-target-import", ["surface", "{d}/importerr.py:make", "--steps", "3"], "no_such_module_lossatlas"),
    ("surface-target-top-raise", ["surface", "{d}/topraise.py:make", "--steps", "3"], "TARGET"),
    ("surface-target-wrong-type", ["surface", "{d}/wrongtype.py:make", "--steps", "3"], "TARGET"),
    ("surface-target-not-callable", ["surface", "{d}/notcallable.py:make", "--steps", "3"], "TARGET"),
    ("surface-target-needs-args", ["surface", "{d}/noargs.py:make", "--steps", "3"], "TARGET"),
    ("surface-target-no-function", ["surface", "{d}/raises.py:nope", "--steps", "3"], "TARGET"),
    ("surface-checkpoint-missing", ["surface", "seed-relu", "--checkpoint", "{d}/none.pt", "--steps", "3"], "checkpoint"),
    ("surface-checkpoint-text", ["surface", "seed-relu", "--checkpoint", "{d}/notes.txt", "--steps", "3"], "checkpoint"),
    ("surface-checkpoint-garbage", ["surface", "seed-relu", "--checkpoint", "{d}/garbage.pt", "--steps", "3"], "checkpoint"),
    ("surface-checkpoint-whole-model", ["surface", "seed-relu", "--checkpoint", "{d}/whole_model.pt", "--steps", "3"], "checkpoint"),
    ("surface-checkpoint-nondict", ["surface", "seed-relu", "--checkpoint", "{d}/nondict.pt", "--steps", "3"], "checkpoint"),
    ("surface-checkpoint-wrong-keys", ["surface", "seed-relu", "--checkpoint", "{d}/wrongkeys.pt", "--steps", "3"], "checkpoint"),
    ("surface-checkpoint-dir", ["surface", "seed-relu", "--checkpoint", "{d}", "--steps", "3"], "checkpoint"),
    ("surface-store-is-file", ["surface", "seed-relu", "--steps", "3", "--no-progress", "--store", "{d}/afile"], "store"),
    ("plot-missing-store", ["plot", "{d}/missing.zarr"], "store"),
    ("plot-not-a-store", ["plot", "{d}/notastore.zarr"], "store"),
    ("plot-levels-0", ["plot", "{store}", "--levels", "0", "--out", "{d}/p.png"], "levels"),
    ("plot-vmin-gt-vmax", ["plot", "{store}", "--vmin", "5", "--vmax", "1", "--out", "{d}/p.png"], "vmin"),
    ("plot-kind", ["plot", "{store}", "--kind", "pie", "--out", "{d}/p.png"], "kind"),
    ("plot-var", ["plot", "{store}", "--var", "nope", "--out", "{d}/p.png"], "var"),
    ("plot-out-suffix", ["plot", "{store}", "--out", "{d}/p.nope"], "out"),
    ("plot-out-unwritable", ["plot", "{store}", "--out", "/proc/lossatlas/p.png"], "out"),
    ("hessian-k-0", ["hessian", "seed-relu", "--k", "0"], "k"),
    ("hessian-k-neg", ["hessian", "seed-relu", "--k", "-2"], "k"),
    ("hessian-seed-neg", ["hessian", "seed-relu", "--seed", "-1"], "seed"),
    ("ratio-steps-0", ["ratio-map", "seed-relu", "--steps", "0"], "steps"),
    ("audit-budget-0", ["audit", "seed-relu", "--budget", "0"], "budget"),
    ("audit-seed-neg", ["audit", "seed-relu", "--seed", "-1"], "seed"),
    ("audit-methods", ["audit", "seed-relu", "--methods", "magic"], "methods"),
    ("verify-bad-json", ["verify", "{d}/cert.json", "seed-relu"], "cert.json"),
    ("verify-empty-cert", ["verify", "{d}/cert_empty.json", "seed-relu"], "cert_empty.json"),
    ("verify-missing-cert", ["verify", "{d}/nope.json", "seed-relu"], "nope.json"),
    ("export-unknown", ["export", "no-such", "{d}/x.pt"], "NAME"),
    ("export-unwritable", ["export", "seed-relu", "/proc/lossatlas/x.pt"], "x.pt"),
    ("demo-out-unwritable", ["demo", "--out", "/proc/lossatlas-demo"], "out"),
    ("demo-out-is-file", ["demo", "--out", "{d}/afile"], "out"),
    ("trajectory-missing", ["trajectory", "seed-relu", "{d}/nodir"], "trajectory"),
    ("trajectory-empty", ["trajectory", "seed-relu", "{d}/emptytraj"], "trajectory"),
    ("trajectory-bad-index", ["trajectory", "seed-relu", "{d}/badtraj"], "index"),
    # variants: the same checks on every command (options first, one output-path helper, one TARGET loader)
    ("surface-span-inf", ["surface", "seed-relu", "--span", "inf", "--steps", "3"], "span"),
    ("surface-span-zero", ["surface", "seed-relu", "--span", "0", "--steps", "3"], "span"),
    ("surface-span-reversed", ["surface", "seed-relu", "--span", "1,-1", "--steps", "3"], "span"),
    ("surface-store-unwritable", ["surface", "seed-relu", "--steps", "3", "--store", "/proc/lossatlas/s.zarr"], "store"),
    ("surface-plot-suffix", ["surface", "seed-relu", "--steps", "3", "--plot", "{d}/f.nope"], "plot"),
    ("surface-plot-unwritable", ["surface", "seed-relu", "--steps", "3", "--plot", "/proc/lossatlas/f.png"], "plot"),
    ("surface-plot-parent-is-file", ["surface", "seed-relu", "--steps", "3", "--plot", "{d}/afile/f.png"], "plot"),
    ("surface-target-kwonly", ["surface", "{d}/kwonly.py:make", "--steps", "3"], "TARGET"),
    ("surface-target-exits", ["surface", "{d}/exits.py:make", "--steps", "3"], "SystemExit"),
    ("surface-target-factory-exits", ["surface", "{d}/factoryexits.py:make", "--steps", "3"], "TARGET"),
    ("hessian-target-raises", ["hessian", "{d}/raises.py:make"], "RuntimeError"),
    ("plot-levels-neg", ["plot", "{store}", "--levels", "-5", "--out", "{d}/p.png"], "levels"),
    ("plot-vmin-nan", ["plot", "{store}", "--vmin", "nan", "--out", "{d}/p.png"], "vmin"),
    ("plot-vmin-eq-vmax", ["plot", "{store}", "--vmin", "1", "--vmax", "1", "--out", "{d}/p.png"], "vmin"),
    ("plot-out-is-dir", ["plot", "{store}", "--out", "{d}/adir.png"], "out"),
    ("plot-out-parent-is-file", ["plot", "{store}", "--out", "{d}/afile/p.png"], "out"),
    ("plot-html-suffix", ["plot", "{store}", "--kind", "html", "--out", "{d}/p.png"], "out"),
    ("hessian-tol-0", ["hessian", "seed-relu", "--tol", "0"], "tol"),
    ("hessian-trace-probes-0", ["hessian", "seed-relu", "--trace-probes", "0"], "trace-probes"),
    ("hessian-density-iters-0", ["hessian", "seed-relu", "--density-iters", "0"], "density-iters"),
    ("hessian-density-plot-suffix", ["hessian", "seed-relu", "--density-plot", "{d}/x.nope"], "density-plot"),
    ("ratio-span-0", ["ratio-map", "seed-relu", "--span", "0"], "span"),
    ("ratio-max-products-0", ["ratio-map", "seed-relu", "--max-products", "0"], "max-products"),
    ("ratio-out-unwritable", ["ratio-map", "seed-relu", "--out", "/proc/lossatlas/r.png"], "out"),
    ("ratio-huge-grid", ["ratio-map", "seed-relu", "--steps", "5000", "--no-progress"], "allow-large"),
    ("ratio-store-is-file", ["ratio-map", "seed-relu", "--store", "{d}/afile"], "store"),
    ("audit-json-unwritable", ["audit", "seed-relu", "--json", "/proc/lossatlas/a.json"], "json"),
    ("audit-certificate-is-dir", ["audit", "seed-relu", "--save-certificate", "{d}"], "save-certificate"),
    ("compare-budget-0", ["compare", "seed-relu", "--budget", "0"], "budget"),
    ("compare-out-suffix", ["compare", "seed-relu", "--out", "{d}/c.nope"], "out"),
    ("export-every-0", ["export", "mlp-digits", "{d}/rec", "--trajectory", "--every", "0"], "every"),
    ("export-out-suffix", ["export", "seed-relu", "{d}/x.nope"], "OUT"),
    ("export-out-is-dir", ["export", "seed-relu", "{d}/adir.pt"], "OUT"),
    ("export-trajectory-out-is-file", ["export", "mlp-digits", "{d}/afile", "--trajectory"], "OUT"),
    ("demo-out-parent-is-file", ["demo", "--out", "{d}/afile/demo"], "out"),
    ("trajectory-no-checkpoints", ["trajectory", "seed-relu"], "checkpoints"),
    ("trajectory-two-checkpoints", ["trajectory", "seed-relu", "{d}/emptytraj", "--checkpoints", "{d}/badtraj"], "checkpoints"),
    ("trajectory-option-missing", ["trajectory", "seed-relu", "--checkpoints", "{d}/nodir"], "trajectory"),
    ("trajectory-steps-0", ["trajectory", "seed-relu", "{d}/emptytraj", "--steps", "0"], "steps"),
    ("trajectory-margin-neg", ["trajectory", "seed-relu", "{d}/emptytraj", "--margin", "-1"], "margin"),
    ("trajectory-bn", ["trajectory", "seed-relu", "{d}/emptytraj", "--bn", "weird"], "bn"),
    ("trajectory-out-is-file", ["trajectory", "seed-relu", "{d}/emptytraj", "--out", "{d}/afile"], "out"),
    ("interpolate-steps-1", ["interpolate", "seed-relu", "{d}/a.pt", "{d}/b.pt", "--steps", "1"], "steps"),
    ("interpolate-from-positive", ["interpolate", "seed-relu", "{d}/a.pt", "{d}/b.pt", "--from", "0.5"], "from"),
    ("interpolate-to-nan", ["interpolate", "seed-relu", "{d}/a.pt", "{d}/b.pt", "--to", "nan"], "to"),
    ("interpolate-out-is-file", ["interpolate", "seed-relu", "{d}/a.pt", "{d}/b.pt", "--out", "{d}/afile"], "out"),
    ("connect-bends-0", ["connect", "seed-relu", "{d}/a.pt", "{d}/b.pt", "--bends", "0"], "bends"),
    ("connect-train-steps-0", ["connect", "seed-relu", "{d}/a.pt", "{d}/b.pt", "--train-steps", "0"], "train-steps"),
    ("connect-batch-size-neg", ["connect", "seed-relu", "{d}/a.pt", "{d}/b.pt", "--batch-size", "-1"], "batch-size"),
    ("connect-out-unwritable", ["connect", "seed-relu", "{d}/a.pt", "{d}/b.pt", "--out", "/proc/lossatlas/c"], "out"),
    ("surface-store-parent-is-file", ["surface", "seed-relu", "--steps", "3", "--ignore", "none", "--no-progress", "--store", "{d}/afile/s.zarr"], "store"),
    ("surface-store-parent-unmakeable", ["surface", "seed-relu", "--steps", "3", "--ignore", "none", "--no-progress", "--store", "/proc/lossatlas-no/s.zarr"], "store"),
    ("surface-store-foreign-dir", ["surface", "seed-relu", "--steps", "3", "--ignore", "none", "--no-progress", "--store", "{d}/notastore.zarr/.."], "store"),
    ("info-store-is-file", ["info", "{d}/afile"], "afile"),
    ("info-store-under-a-file", ["info", "{d}/afile/s.zarr"], "s.zarr"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-store") / "s.zarr"
    lossatlas.surface(pr(), None, dirs(), steps=3, progress=False, store=path)
    return path


@pytest.mark.parametrize("case", _params(CLI_CASES, KNOWN_CLI_GAPS))
def test_cli_bad_input(case, files, store, capsys):
    from lossatlas.cli import main

    _, args, option = case
    args = [a.format(d=files, store=store) for a in args]
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    text = (out.out + out.err).strip()
    assert info.value.code == 2, text
    assert "Traceback" not in text, text
    assert len(text.splitlines()) == 1, text
    assert option.lower() in text.lower(), f"{option!r} not in {text!r}"
