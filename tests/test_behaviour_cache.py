"""The behaviour fingerprint's fast path (``lossatlas._behaviour``): probe draws cached by what they are
(seed, probes, dtype, device, parameter shapes; never by identity), never written by their use, at most
``DRAW_CACHE_SIZE`` entries; one evaluation pass per point. The entries are the bits of the scheme
before the fast path (kept below as the oracle: draws made per probe in place, a second forward pass
for the outputs' digest) on many model families, cached or not."""

import json
import math

import pytest
import torch
from torch import nn

import lossatlas
from lossatlas import _behaviour as B
from lossatlas._linear_fold import dispatchers_removed

from _zoo import FAMILIES

NAMES = ["mlp-tanh", "mlp-bce-logits", "mse-sum-reduction", "cnn-bn-eval", "cnn-bn-recalibrate", "frozen-features",
         "tied-weights", "transformer-encoder", "embedding", "dict-batch-closure", "physics-no-targets",
         "closure-with-metrics", "dict-output-two-heads", "unused-parameter", "gru", "label-smoothing-dropout"]


@pytest.fixture(autouse=True)
def _empty_cache():
    B._DRAW_CACHE.clear()
    B._WEIGHTS.clear()
    yield
    B._DRAW_CACHE.clear()
    B._WEIGHTS.clear()


# -- the oracle: the scheme as it was before the cache and the one-pass evaluation ---------------------
def _oracle_points(problem):
    center = problem.params(copy=False)
    gen = torch.Generator(device="cpu").manual_seed(B.SEED)
    yield center
    for eps in B.PROBES:
        point = {}
        for name in problem.param_names:
            t = center[name]
            scale = float(t.detach().to("cpu", torch.float64).norm()) or 1.0
            r = torch.randn(tuple(t.shape), generator=gen, dtype=torch.float64)
            r.mul_(eps * scale / (float(r.norm()) or 1.0))
            r.add_(t.detach().to("cpu"))
            point[name] = r.to(device=t.device, dtype=t.dtype)
        yield point


def _oracle_digest(outputs):
    leaves = [t for t in lossatlas.data.tensors_in(outputs) if t.is_floating_point()] if outputs is not None else []
    if not leaves:
        return None
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in leaves])
    n = flat.numel()
    sub = flat[:: max(1, -(-n // B.MIX_MAX))]
    w = torch.sin(torch.arange(sub.numel(), dtype=torch.float64) * 0.7548776662466927 + 0.5)
    return {"n": int(n), "sum": B._number(flat.sum()), "abs": B._number(flat.abs().sum()),
            "norm": B._number(flat.norm()), "mix": B._number((w * sub).sum()),
            "head": [B._number(v) for v in flat[:B.HEAD].tolist()]}


def _oracle(problem):
    guard = problem._guard
    with torch.no_grad(), guard.lock, dispatchers_removed(guard):
        for batch, k, sliced in B._fixed_batch(problem):
            view = problem.replace(data=B._OneBatch(batch, k))
            try:
                records = []
                for point in _oracle_points(problem):
                    buffers = view._recalibrated_buffers(point) if view.bn == "recalibrate" and view.has_batchnorm \
                        else None
                    with view.bound(point, buffers):
                        terms = view.evaluate_bound(metrics=True)
                        outputs, raw, _ = view._forward_bound(batch)  # the second pass
                    seen = [t.dtype for t in lossatlas.data.tensors_in((outputs, raw)) if t.is_floating_point()]
                    records.append({"loss": B._number(terms["loss"]),
                                    "metrics": {k: B._number(v) for k, v in sorted(terms.items()) if k != "loss"},
                                    "outputs": _oracle_digest(outputs),
                                    "_rtol": max([B.RTOL.get(dt, B.RTOL[torch.bfloat16]) for dt in seen],
                                                 default=0.0)})
            except Exception:
                continue
            return B._entry(problem, k, sliced, records)
    raise AssertionError("the oracle found no batch that evaluates")


def _bytes(entry) -> str:
    return json.dumps(entry, sort_keys=True)


# -- bits ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_entries_are_the_oracles_bits_cached_or_not(name, dtype, monkeypatch):
    problem = FAMILIES[name]().problem("equal", dtype)
    want = _bytes(_oracle(problem))
    assert _bytes(problem.behaviour_fingerprint()) == want  # filling the cache
    assert len(B._DRAW_CACHE) == 1
    assert _bytes(problem.behaviour_fingerprint()) == want  # from the cache
    B._DRAW_CACHE.clear()
    monkeypatch.setattr(B, "DRAW_CACHE_ELEMENTS", 0)  # the uncached path (big models)
    assert _bytes(problem.behaviour_fingerprint()) == want
    assert not B._DRAW_CACHE


def test_a_metric_writing_into_the_outputs_does_not_change_the_digest():
    """The digest is taken after the loss and before the metrics, what the second pass saw."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))

    def scribble(out, tgt):
        out.mul_(3.0)  # (a metric that should not do this)
        return out.sum()
    problem = lossatlas.Problem(model, nn.CrossEntropyLoss(), (x, y), metrics={"scribble": scribble})
    assert _bytes(problem.behaviour_fingerprint()) == _bytes(_oracle(problem))


def test_one_forward_pass_per_point_and_no_hook_left():
    problem = FAMILIES["mlp-tanh"]().problem("one", torch.float32)
    calls = []
    handle = problem.module.register_forward_hook(lambda *a: calls.append(1))
    try:
        problem.behaviour_fingerprint()
    finally:
        handle.remove()
    assert len(calls) == 1 + len(B.PROBES)
    assert not problem.module._forward_hooks and not problem.module._forward_pre_hooks


# -- the cache's key, bound and read-only use ------------------------------------------------------
def _mlp(*widths, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    x, y = torch.randn(24, widths[0]), torch.randint(0, widths[-1], (24,))
    return lossatlas.Problem(model, nn.CrossEntropyLoss(), (x, y))


def test_the_key_is_what_the_draws_are_not_which_problem():
    a, b = _mlp(5, 7, 3, seed=0), _mlp(5, 7, 3, seed=1)  # other objects and values, the same shapes
    a.behaviour_fingerprint()
    (key, draws), = B._DRAW_CACHE.items()
    assert key == (B.SEED, B.PROBES, torch.float64, "cpu", ((7, 5), (7,), (3, 7), (3,)))
    b.behaviour_fingerprint()
    assert len(B._DRAW_CACHE) == 1 and B._DRAW_CACHE[key] is draws  # a hit
    _mlp(5, 8, 3).behaviour_fingerprint()  # another shape: a miss
    assert len(B._DRAW_CACHE) == 2


def test_a_changed_seed_or_probe_list_misses(monkeypatch):
    p = _mlp(5, 7, 3)
    want = _bytes(p.behaviour_fingerprint())
    monkeypatch.setattr(B, "SEED", B.SEED + 1)
    other = _bytes(p.behaviour_fingerprint())
    assert len(B._DRAW_CACHE) == 2 and other != want
    monkeypatch.setattr(B, "PROBES", (0.05, 0.3))
    p.behaviour_fingerprint()
    assert len(B._DRAW_CACHE) == 3


def test_cached_draws_are_not_written_by_their_use():
    p = _mlp(5, 7, 3)
    for _ in range(3):
        p.behaviour_fingerprint()
    (key, draws), = B._DRAW_CACHE.items()
    gen = torch.Generator().manual_seed(B.SEED)
    for row in draws:
        for (r, rn), shape in zip(row, key[-1]):
            fresh = torch.randn(shape, generator=gen, dtype=torch.float64)
            assert torch.equal(r, fresh) and rn == (float(fresh.norm()) or 1.0)


def test_at_most_four_entries_least_recently_used_dropped():
    problems = [_mlp(5, w, 3) for w in (2, 3, 4, 5, 6)]
    for p in problems[:4]:
        p.behaviour_fingerprint()
    problems[0].behaviour_fingerprint()  # the oldest used again: now the most recent
    problems[4].behaviour_fingerprint()
    assert len(B._DRAW_CACHE) == B.DRAW_CACHE_SIZE == 4
    hidden = {k[-1][0][0] for k in B._DRAW_CACHE}
    assert hidden == {2, 4, 5, 6}  # width 3 (least recently used) dropped


def test_big_models_are_not_cached(monkeypatch):
    p = _mlp(5, 7, 3)
    elements = sum(t.numel() for t in p.params(copy=False).values())
    monkeypatch.setattr(B, "DRAW_CACHE_ELEMENTS", elements - 1)
    p.behaviour_fingerprint()
    assert not B._DRAW_CACHE
    monkeypatch.setattr(B, "DRAW_CACHE_ELEMENTS", elements)
    p.behaviour_fingerprint()
    assert len(B._DRAW_CACHE) == 1


def test_the_weighted_sums_weights_are_kept_per_length_and_bounded():
    for n in (1, 5, 17, 160, 33, 4):
        w = B._weights(n, torch.device("cpu"))
        assert torch.equal(w, torch.sin(torch.arange(n, dtype=torch.float64) * 0.7548776662466927 + 0.5))
    assert len(B._WEIGHTS) == B.DRAW_CACHE_SIZE
    assert B._weights(4, torch.device("cpu")) is B._WEIGHTS[(4, "cpu")]
    B._weights(B.WEIGHTS_CACHE_LENGTH + 1, torch.device("cpu"))
    assert (B.WEIGHTS_CACHE_LENGTH + 1, "cpu") not in B._WEIGHTS


def test_digest_of_non_finite_outputs():
    d = B._digest(torch.tensor([[1.0, math.inf], [math.nan, -2.0]]))
    assert d == _oracle_digest(torch.tensor([[1.0, math.inf], [math.nan, -2.0]]))
    assert d["head"][1] == "inf" and d["sum"] == "nan"


def test_a_big_models_draws_are_made_and_freed_one_at_a_time(monkeypatch):
    """Uncached (big models, streamed): each probe tensor's float64 draw is freed before the next is
    made (one float64 tensor of θ's size class in memory at a time, not a probe's worth); each is drawn
    twice, for its norm and then regenerated from its generator state into the point."""
    import weakref

    p = _mlp(6, 9, 7, 3)
    monkeypatch.setattr(B, "DRAW_CACHE_ELEMENTS", 0)
    want = _bytes(_oracle(p))
    alive, worst = [], [0]
    real = torch.randn

    def tracked(*args, **kwargs):
        worst[0] = max(worst[0], sum(r() is not None for r in alive))
        out = real(*args, **kwargs)
        alive.append(weakref.ref(out))
        return out
    monkeypatch.setattr(torch, "randn", tracked)
    assert _bytes(p.behaviour_fingerprint()) == want
    assert len(alive) == 2 * len(B.PROBES) * 6 and worst[0] == 0
