"""Behaviour fingerprints (issue 14): a half-done store resumed with another computation — one that
structural fingerprints (repr/qualname, shapes) cannot tell apart — is refused, naming what differs;
the same computation (a fresh problem, another process, thread count or strategy) is accepted."""

import copy
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossatlas
from lossatlas import _behaviour as B
from lossatlas.params import _points
from lossatlas import runner

CE = nn.CrossEntropyLoss()


class ActNet(nn.Module):
    """The activation is a plain function attribute: invisible to repr and to the state dict."""

    def __init__(self, act=torch.relu, shift=0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 12), nn.Linear(12, 3)
        self.act = act
        self.register_buffer("shift", torch.full((12,), float(shift)))

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x) + self.shift))


def data(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def model(act=torch.relu, shift=0.0, seed=0):
    torch.manual_seed(seed)
    return ActNet(act, shift)


def half_done(path, problem, monkeypatch, **kw):
    """A store interrupted after its first chunk; returns the surface computed without a store."""
    d = lossatlas.directions.random(problem, n=2, seed=0)
    args = dict(steps=5, progress=False, chunk=5, strategy="loop", **kw)
    full = lossatlas.surface(problem, None, d, **args)
    original = runner.GridStore.write_chunk
    calls = {"n": 0}

    def flaky(self, chunk, values):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, chunk, values)

    monkeypatch.setattr(runner.GridStore, "write_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        lossatlas.surface(problem, None, d, store=path, **args)
    monkeypatch.setattr(runner.GridStore, "write_chunk", original)
    assert lossatlas.open_surface(path).attrs["complete"] == 0
    return d, full


def resume(path, problem, d, **kw):
    return lossatlas.surface(problem, None, d, steps=5, progress=False, store=path, **kw)


def _closure(scale=1.0):
    def closure(call, batch):
        out = call(batch["x"])
        return {"loss": scale * F.cross_entropy(out, batch["y"]), "mean_out": out.mean()}
    return closure


def _scaled_closure(call, batch):
    out = call(batch["x"])
    return {"loss": F.cross_entropy(out, batch["y"]) * 1.001, "mean_out": out.mean()}


# each case: (stored problem, resumed problem, what the message must name); the resumed problem is
# structurally identical where the old fingerprints could see nothing (lambdas, function attributes)
def _cases():
    x, y = data()
    dict_batches = [{"x": x[i:i + 20], "y": y[i:i + 20]} for i in range(0, 60, 20)]
    lam = lambda o, t: CE(o, t)  # noqa: E731
    return {
        "lambda_5x": (lambda: lossatlas.Problem(model(), lam, (x, y)),
                      lambda: lossatlas.Problem(model(), (lambda o, t: 5 * CE(o, t)), (x, y)),
                      r"the loss at the centre differs: [\d.]+ stored vs [\d.]+ now — a different loss function"),
        "lambda_1e-3": (lambda: lossatlas.Problem(model(), (lambda o, t: CE(o, t)), (x, y)),
                        lambda: lossatlas.Problem(model(), (lambda o, t: (1 + 1e-3) * CE(o, t)), (x, y)),
                        "the loss at the centre differs"),
        "label_smoothing": (lambda: lossatlas.Problem(model(), nn.CrossEntropyLoss(), (x, y)),
                            lambda: lossatlas.Problem(model(), nn.CrossEntropyLoss(label_smoothing=0.9), (x, y)),
                            "the loss at the centre differs"),
        "reduction_in_lambda": (lambda: lossatlas.Problem(model(), (lambda o, t: F.cross_entropy(o, t)), (x, y)),
                                lambda: lossatlas.Problem(model(), (lambda o, t: F.cross_entropy(o, t, reduction="sum")),
                                                          (x, y)),
                                "the loss at the centre differs"),
        "reduction_of_module": (lambda: lossatlas.Problem(model(), nn.MSELoss(), (x, F.one_hot(y, 3).float())),
                                lambda: lossatlas.Problem(model(), nn.MSELoss(reduction="sum"),
                                                          (x, F.one_hot(y, 3).float())),
                                "reduction=mean, requested reduction=sum"),
        "activation_in_custom_class": (lambda: lossatlas.Problem(model(torch.relu), CE, (x, y)),
                                       lambda: lossatlas.Problem(model(torch.tanh), CE, (x, y)),
                                       "the model outputs differ at the centre"),
        "activation_leaky": (lambda: lossatlas.Problem(model(torch.relu), CE, (x, y)),
                             lambda: lossatlas.Problem(model(lambda h: F.leaky_relu(h, 0.01)), CE, (x, y)),
                             "the model outputs differ"),
        "frozen_buffer": (lambda: lossatlas.Problem(model(shift=0.0), CE, (x, y)),
                          lambda: lossatlas.Problem(model(shift=0.25), CE, (x, y)),
                          "the model outputs differ at the centre"),
        "metric": (lambda: lossatlas.Problem(model(), CE, (x, y), metrics={"m": lambda o, t: o.mean()}),
                   lambda: lossatlas.Problem(model(), CE, (x, y), metrics={"m": lambda o, t: o.abs().mean()}),
                   "the metric 'm' at the centre differs: .* a different metric function"),
        "closure_scaled": (lambda: lossatlas.Problem(model(), None, dict_batches, closure=_closure()),
                           lambda: lossatlas.Problem(model(), None, dict_batches, closure=_closure(2.0)),
                           "the closure's loss at the centre differs"),
        "closure_1e-3": (lambda: lossatlas.Problem(model(), None, dict_batches, closure=_closure()),
                         lambda: lossatlas.Problem(model(), None, dict_batches, closure=_scaled_closure),
                         "the closure's loss at the centre differs"),
        "closure_no_targets_model": (
            lambda: lossatlas.Problem(model(torch.relu), None, [{"x": x[:30]}, {"x": x[30:]}],
                                      closure=lambda call, b: call(b["x"]).pow(2).mean()),
            lambda: lossatlas.Problem(model(torch.tanh), None, [{"x": x[:30]}, {"x": x[30:]}],
                                      closure=lambda call, b: call(b["x"]).pow(2).mean()),
            "the closure's loss at the centre differs"),
        "bn_recalibrate_activation": (
            lambda: lossatlas.Problem(_bn_net(torch.relu), CE, (x, y), bn="recalibrate"),
            lambda: lossatlas.Problem(_bn_net(torch.tanh), CE, (x, y), bn="recalibrate"),
            "the model outputs differ"),
        "bf16_lambda_5x": (lambda: lossatlas.Problem(model(), (lambda o, t: CE(o, t)), (x, y), dtype=torch.bfloat16),
                           lambda: lossatlas.Problem(model(), (lambda o, t: 5 * CE(o, t)), (x, y),
                                                     dtype=torch.bfloat16),
                           "the loss at the centre differs"),
    }


class BNNet(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc1, self.bn, self.fc2, self.act = nn.Linear(5, 12), nn.BatchNorm1d(12), nn.Linear(12, 3), act

    def forward(self, x):
        return self.fc2(self.act(self.bn(self.fc1(x))))


def _bn_net(act):
    torch.manual_seed(3)
    return BNNet(act)


CASES = _cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_with_another_computation_is_refused(tmp_path, monkeypatch, case):
    make_stored, make_other, message = CASES[case]
    stored, other = make_stored(), make_other()
    path = tmp_path / "s.zarr"
    d, _ = half_done(path, stored, monkeypatch)
    with pytest.raises(lossatlas.ProvenanceMismatchError, match=message):
        resume(path, other, d)
    # the store was not touched: the right problem still resumes it, to the values computed without a store
    done = resume(path, make_stored(), d)
    assert done.attrs["complete"] == 1


def test_structural_fingerprints_alone_cannot_see_these_changes():
    """Why behaviour is needed: the old fingerprints are equal for these pairs."""
    for case in ("lambda_5x", "lambda_1e-3", "activation_in_custom_class", "metric", "closure_scaled"):
        a, b, _ = CASES[case]
        fa, fb = a().fingerprint(), b().fingerprint()
        assert {k: fa[k] for k in ("model", "data", "settings")} == {k: fb[k] for k in ("model", "data", "settings")}
        assert B.compare(a().behaviour_fingerprint(), b().behaviour_fingerprint()), case


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fresh_problem_same_computation_resumes_to_the_same_values(tmp_path, monkeypatch, dtype):
    x, y = data()
    path = tmp_path / "s.zarr"
    d, full = half_done(path, lossatlas.Problem(model(), (lambda o, t: CE(o, t)), (x, y), dtype=dtype), monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note either: the behaviour matched
        done = resume(path, lossatlas.Problem(model(), (lambda o, t: CE(o, t)), (x, y), dtype=dtype), d)
    np.testing.assert_array_equal(done.loss.values, full.loss.values)


def test_other_thread_count_and_other_strategy_are_accepted(tmp_path, monkeypatch):
    x, y = data(400)
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(5, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 3))
    problem = lossatlas.Problem(net, CE, (x, y))
    path = tmp_path / "s.zarr"
    d, full = half_done(path, problem, monkeypatch)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2 if threads == 1 else 1)
        entry = lossatlas.Problem(net, CE, (x, y)).behaviour_fingerprint()
        done = resume(path, lossatlas.Problem(net, CE, (x, y)), d)
    finally:
        torch.set_num_threads(threads)
    assert B.compare(problem.behaviour_fingerprint(), entry) == []
    assert done.attrs["complete"] == 1
    # a store made with the vmap strategy is resumed by a default call (the strategy is pinned, and the
    # behaviour entry does not depend on it)
    path2 = tmp_path / "v.zarr"
    lossatlas.surface(problem, None, d, steps=3, progress=False, store=path2, strategy="vmap", chunk=3)
    again = lossatlas.surface(lossatlas.Problem(net, CE, (x, y)), None, d, steps=3, progress=False, store=path2)
    assert again.attrs["complete"] == 1 and json.loads(again.attrs["provenance"])["strategy"] == "vmap"


def test_float32_rounding_noise_is_inside_the_tolerance():
    x, y = data()
    problem = lossatlas.Problem(model(), CE, (x, y))
    entry = problem.behaviour_fingerprint()
    noisy = copy.deepcopy(entry)
    for p in noisy["points"]:
        p["loss"] *= 1 + 1e-6
        for k in ("sum", "mix"):
            p["outputs"][k] += 1e-6 * p["outputs"]["abs"]
        p["outputs"]["head"] = [v * (1 + 1e-6) for v in p["outputs"]["head"]]
    assert B.compare(entry, noisy) == []
    scaled = copy.deepcopy(entry)
    for p in scaled["points"]:
        p["loss"] *= 1 + 1e-3
    assert "the loss at the centre differs" in B.compare(entry, scaled)[0]


def test_resume_in_a_new_process_is_accepted(tmp_path, monkeypatch):
    x, y = data()
    path = tmp_path / "s.zarr"
    d, full = half_done(path, lossatlas.Problem(model(torch.tanh), CE, (x, y)), monkeypatch)
    d.save(tmp_path / "dirs")
    script = tmp_path / "resume.py"
    script.write_text(textwrap.dedent(f"""
        import sys, json
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import torch, lossatlas
        from test_behaviour_fingerprint import model, data, CE
        x, y = data()
        d = lossatlas.Directions.load({str(tmp_path / 'dirs')!r})
        ds = lossatlas.surface(lossatlas.Problem(model(torch.tanh), CE, (x, y)), None, d, steps=5,
                               progress=False, store={str(path)!r})
        print(json.dumps(ds.loss.values.tolist()))
    """))
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    np.testing.assert_array_equal(np.array(json.loads(out.stdout.strip().splitlines()[-1])), full.loss.values)


def test_old_store_without_behaviour_is_accepted_with_a_note(tmp_path, monkeypatch):
    S = sys.modules["lossatlas.surface"]  # the module (lossatlas.surface is the function)

    x, y = data()
    problem = lossatlas.Problem(model(), CE, (x, y))
    original = S._provenance

    def old_provenance(*args, **kw):  # what lossatlas wrote before behaviour fingerprints
        prov = original(*args, **kw)
        prov.pop("behaviour")
        return prov

    monkeypatch.setattr(S, "_provenance", old_provenance)
    path = tmp_path / "s.zarr"
    d, full = half_done(path, problem, monkeypatch)
    monkeypatch.setattr(S, "_provenance", original)
    assert "behaviour" not in json.loads(lossatlas.open_surface(path).attrs["provenance"])
    with pytest.warns(UserWarning, match="predates behaviour fingerprints"):
        done = resume(path, problem, d)
    np.testing.assert_array_equal(done.loss.values, full.loss.values)


def test_store_with_another_behaviour_scheme_is_accepted_with_a_note(tmp_path, monkeypatch):
    x, y = data()
    problem = lossatlas.Problem(model(), CE, (x, y))
    monkeypatch.setattr(B, "VERSION", 99)
    path = tmp_path / "s.zarr"
    d, full = half_done(path, problem, monkeypatch)
    monkeypatch.setattr(B, "VERSION", 1)
    with pytest.warns(UserWarning, match="could not be compared by behaviour .it holds a behaviour fingerprint of another scheme"):
        done = resume(path, problem, d)
    np.testing.assert_array_equal(done.loss.values, full.loss.values)


def test_behaviour_entry_is_json_numbers_and_cheap_and_mutates_nothing():
    x, y = data()
    user = model()
    state = {k: v.clone() for k, v in user.state_dict().items()}
    problem = lossatlas.Problem(user, CE, (x, y), metrics={"m": lambda o, t: o.mean()})
    before = {k: v.clone() for k, v in problem._module.state_dict().items()}
    entry = problem.fingerprint(behaviour=True)["behaviour"]
    assert json.loads(json.dumps(entry, allow_nan=False)) == entry
    assert entry["samples"] == 16 and entry["sliced"] and len(entry["points"]) == 4
    assert set(entry["points"][0]["metrics"]) == {"m"}
    assert all(torch.equal(v, state[k]) for k, v in user.state_dict().items()) and user.training
    assert all(torch.equal(v, before[k]) for k, v in problem._module.state_dict().items())
    assert not problem._module.training
    assert problem.behaviour_fingerprint() == entry  # deterministic


def test_non_finite_values_are_stored_as_strings_and_compared():
    x, y = data()
    problem = lossatlas.Problem(model(), (lambda o, t: CE(o, t) / 0.0), (x, y))
    entry = problem.behaviour_fingerprint()
    json.dumps(entry, allow_nan=False)
    assert entry["points"][0]["loss"] == "inf"
    assert B.compare(entry, problem.behaviour_fingerprint()) == []
    finite = lossatlas.Problem(model(), (lambda o, t: CE(o, t)), (x, y)).behaviour_fingerprint()
    assert B.compare(entry, finite)


def test_bn_recalibrate_same_computation_is_accepted(tmp_path, monkeypatch):
    x, y = data()
    problem = lossatlas.Problem(_bn_net(torch.relu), CE, (x, y), bn="recalibrate")
    path = tmp_path / "s.zarr"
    d, full = half_done(path, problem, monkeypatch)
    done = resume(path, lossatlas.Problem(_bn_net(torch.relu), CE, (x, y), bn="recalibrate"), d)
    np.testing.assert_array_equal(done.loss.values, full.loss.values)
    bn = problem._module.bn
    assert not bn.training and bn.momentum == 0.1


def test_closure_that_cannot_take_a_sliced_batch_uses_the_whole_first_batch():
    x, y = data()

    def closure(call, batch):
        if batch["x"].shape[0] != 30:  # e.g. a fixed collocation set
            raise RuntimeError("30 points expected")
        return call(batch["x"]).pow(2).mean()

    problem = lossatlas.Problem(model(), None, [{"x": x[:30]}, {"x": x[30:]}], closure=closure)
    entry = problem.behaviour_fingerprint()
    assert entry["samples"] == 30 and not entry["sliced"]


class _FakeRanks:
    """A stand-in distributed context whose other rank computed ``other``."""

    active, world, rank, is_main = True, 2, 0, True

    def __init__(self, other):
        self.other = other

    def gather(self, obj):
        return [obj, self.other]


def test_ranks_agree_with_tolerance_and_share_rank_0s_entry():
    x, y = data()
    entry = lossatlas.Problem(model(), CE, (x, y)).behaviour_fingerprint()
    noisy = copy.deepcopy(entry)
    noisy["points"][1]["loss"] *= 1 + 1e-7
    assert B.agree(entry, func="surface", context=_FakeRanks(noisy)) == entry
    other = lossatlas.Problem(model(), (lambda o, t: 5 * CE(o, t)), (x, y)).behaviour_fingerprint()
    with pytest.raises(lossatlas.DistributedError, match="rank 1 has a different computation than rank 0 .differs in: behaviour — the loss"):
        B.agree(entry, func="surface", context=_FakeRanks(other))


def test_behaviour_is_the_same_while_the_linear_fold_is_installed():
    from lossatlas.evaluator import PointEvaluator

    x, y = data()
    problem = lossatlas.Problem(model(), CE, (x, y))
    before = problem.behaviour_fingerprint()
    d = lossatlas.directions.random(problem, n=2, seed=0)
    ev = PointEvaluator(problem, problem.params(), d.vectors, strategy="loop", exact_linear=True)
    try:
        value = ev(np.array([[0.3, 0.2]]))
        assert problem._guard.patches  # the fold's dispatchers are in the private module
        assert problem.behaviour_fingerprint() == before
        np.testing.assert_array_equal(ev(np.array([[0.3, 0.2]]))["loss"], value["loss"])
    finally:
        ev.close()


def test_ratio_map_store_resumed_with_another_loss_is_refused(tmp_path):
    x, y = data()
    problem = lossatlas.Problem(model(torch.tanh), (lambda o, t: CE(o, t)), (x, y))
    d = lossatlas.directions.random(problem, n=2, seed=0)
    path = tmp_path / "r.zarr"
    lossatlas.curvature.ratio_map(problem, None, d, steps=3, progress=False, store=path)
    other = lossatlas.Problem(model(torch.tanh), (lambda o, t: 5 * CE(o, t)), (x, y))
    with pytest.raises(lossatlas.ProvenanceMismatchError, match="the loss at the centre differs"):
        lossatlas.curvature.ratio_map(other, None, d, steps=3, progress=False, store=path)


def test_tolerance_follows_the_precision_actually_computed():
    x, y = data()
    f64 = lossatlas.Problem(model(), CE, (x, y), dtype=torch.float64)
    assert f64.behaviour_fingerprint()["rtol"] == B.RTOL[torch.float64]
    # a float64 problem whose loss computes in float32 rounds like float32
    mixed = lossatlas.Problem(model(), (lambda o, t: CE(o.float(), t)), (x, y), dtype=torch.float64)
    assert mixed.behaviour_fingerprint()["rtol"] == B.RTOL[torch.float32]
    bf16 = lossatlas.Problem(model(), CE, (x, y), dtype=torch.bfloat16)
    assert bf16.behaviour_fingerprint()["rtol"] == B.RTOL[torch.bfloat16]


def test_evaluation_that_raises_at_a_probe_on_one_side_only_is_a_difference():
    x, y = data()

    problem = lossatlas.Problem(model(), CE, (x, y))
    with torch.no_grad():
        limit = 1.01 * float(problem.model_call(problem.params())(x).abs().max())

    def fragile(o, t):  # fine at θ₀ (the problem's own probe), raises far from it
        if o.abs().max() > limit:
            raise RuntimeError("diverged")
        return CE(o, t)

    raising = lossatlas.Problem(model(), fragile, (x, y)).behaviour_fingerprint()
    assert raising["points"] is None and "diverged" in raising["error"]
    fine = lossatlas.Problem(model(), (lambda o, t: CE(o, t)), (x, y)).behaviour_fingerprint()
    assert B.comparable(fine, raising)
    assert "the evaluation at the fixed points raised now (RuntimeError: diverged)" in B.compare(fine, raising)[0]
    assert not B.comparable(raising, raising)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_probe_points_added_slice_by_slice_keep_the_whole_tensor_bits(dtype, monkeypatch):
    """θ promoted to float64 a slice at a time (no float64 copy of the largest tensor) gives the
    probe points of the whole-tensor formula r·(ε‖θ‖/‖r‖) + θ."""
    torch.manual_seed(0)
    problem = lossatlas.Problem(nn.Sequential(nn.Linear(5, 23), nn.ReLU(), nn.Linear(23, 3)), CE, data(), dtype=dtype)
    monkeypatch.setattr(_points, "CHUNK", 7)  # ragged slices
    got = list(B._probe_points(problem))
    center = problem.params(copy=False)
    gen = torch.Generator().manual_seed(B.SEED)
    for eps, point in zip(B.PROBES, got[1:]):
        for name in problem.param_names:
            t = center[name]
            scale = float(t.double().norm()) or 1.0
            r = torch.randn(tuple(t.shape), generator=gen, dtype=torch.float64)
            want = (r.mul_(eps * scale / (float(r.norm()) or 1.0)).add_(t)).to(dtype)
            assert torch.equal(point[name], want), (dtype, eps, name)
