"""The equivalent fast formulations used on lossatlas' private objects (lossatlas._fast_paths), the
fold's reused partial sums, and the automatic strategy choice's early stop."""

import time

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lossatlas
from lossatlas._fast_paths import FEW_CLASSES, fast_cross_entropy, patch_private_module
from lossatlas.evaluator import PointEvaluator
from lossatlas.testing import assert_close, assert_within, cross_entropy_rounding_bound


@given(n=st.integers(1, 40), c=st.integers(2, FEW_CLASSES), reduction=st.sampled_from(["mean", "sum", "none"]),
       weighted=st.booleans(), ignored=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**16))
def test_fast_cross_entropy_equals_torch(n, c, reduction, weighted, ignored, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=dtype) * 3
    y = torch.randint(0, c, (n,), generator=g)
    if ignored:
        y[0] = -7
    weight = torch.rand(c, generator=g, dtype=dtype) + 0.1 if weighted else None
    loss = torch.nn.CrossEntropyLoss(weight=weight, reduction=reduction, ignore_index=-7 if ignored else -100)
    fast = fast_cross_entropy(loss)
    got, want = fast(z, y), loss(z, y)
    assert got.shape == want.shape and got.dtype == want.dtype
    if reduction == "mean" and ignored and n == 1:  # 0/0 in both
        assert torch.isnan(got) and torch.isnan(want)
        return
    # both against the float64 evaluation, within the derived rounding bound of each dtype: a small
    # per-sample loss (ℓ ≈ 0.006) carries an absolute error of a few u, far above 1e-6 relative, in
    # torch's own kernel as in the fast one (the float64 reference's own error is the second term)
    exact = torch.nn.CrossEntropyLoss(weight=None if weight is None else weight.double(), reduction=reduction,
                                      ignore_index=loss.ignore_index)(z.double(), y)
    bound = (cross_entropy_rounding_bound(z, y, weight, reduction, loss.ignore_index)
             + cross_entropy_rounding_bound(z.double(), y, weight, reduction, loss.ignore_index))
    assert_within(want.numpy(), exact.numpy(), bound, what="torch's own loss")  # the bound holds for torch
    assert_within(got.numpy(), exact.numpy(), bound, what="fast loss")


def test_fast_cross_entropy_keeps_gradients():
    z = torch.randn(30, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (30,))
    g_fast, = torch.autograd.grad(fast_cross_entropy(torch.nn.functional.cross_entropy)(z, y), z)
    g_ref, = torch.autograd.grad(torch.nn.functional.cross_entropy(z, y), z)
    assert_close(g_fast.numpy(), g_ref.numpy(), torch.float64)


def test_fast_cross_entropy_only_where_it_is_the_same_function():
    assert fast_cross_entropy(torch.nn.MSELoss()) is None
    assert fast_cross_entropy(torch.nn.CrossEntropyLoss(label_smoothing=0.1)) is None

    class Custom(torch.nn.CrossEntropyLoss):  # a subclass may change forward: not recognised
        pass
    assert fast_cross_entropy(Custom()) is None
    fast = fast_cross_entropy(torch.nn.CrossEntropyLoss())
    probs = torch.softmax(torch.randn(8, 4), 1)  # probability targets and many classes: the loss itself
    z = torch.randn(8, 4)
    assert torch.equal(fast(z, probs), torch.nn.CrossEntropyLoss()(z, probs))
    wide, y = torch.randn(8, FEW_CLASSES + 1), torch.randint(0, FEW_CLASSES + 1, (8,))
    assert torch.equal(fast(wide, y), torch.nn.CrossEntropyLoss()(wide, y))


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                               torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_patched_module_computes_the_same_function(dtype):
    net = _mlp().to(dtype)
    ref = _mlp().to(dtype)
    assert patch_private_module(net) == ["", "5"]
    x = torch.randn(50, 6, dtype=dtype)
    with torch.no_grad():
        assert_close(net(x).numpy(), ref(x).numpy(), dtype)
    # with autograd the ReLUs stay out of place; gradients agree
    g = torch.autograd.grad(net(x).square().sum(), list(net.parameters()))
    g_ref = torch.autograd.grad(ref(x).square().sum(), list(ref.parameters()))
    for a, b in zip(g, g_ref):
        assert_close(a.numpy(), b.numpy(), dtype)


def test_in_place_relu_never_overwrites_a_tensor_someone_else_holds():
    relu = torch.nn.ReLU()
    body = torch.nn.Sequential(torch.nn.Identity(), relu)  # Identity returns its input: not fresh

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.seq = torch.nn.Sequential(self.lin, relu)

        def forward(self, x):
            h = self.lin(x)
            return h + relu(h)  # the shared ReLU instance called outside the container

    patch_private_module(body)
    x = torch.randn(5, 4)
    before = x.clone()
    with torch.no_grad():
        body(x)
    assert torch.equal(x, before)
    res = Residual()
    patch_private_module(res)
    with torch.no_grad():
        h = res.lin(x)
        assert torch.equal(res(x), h + torch.relu(h))


def test_problem_patches_only_its_private_copy():
    net = _mlp()
    problem = lossatlas.Problem(net, torch.nn.CrossEntropyLoss(), (torch.randn(20, 6), torch.randint(0, 4, (20,))))
    assert all("forward" not in m.__dict__ for m in net.modules())
    assert "forward" in problem._module.__dict__


def test_fold_partial_sums_do_not_depend_on_point_order(classification):
    model, loss_fn, x, y = classification
    pr = lossatlas.Problem(model, loss_fn, (x, y))
    d = lossatlas.directions.random(pr, n=3, seed=0)
    rows = np.array([[a, b, c] for a in (-0.5, 0.0, -0.0, 0.5) for b in (-1.0, 0.25) for c in (0.0, 0.75)])
    order = np.random.default_rng(0).permutation(len(rows))
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop") as ev:
        assert ev.fold.active_layers
        grouped = ev(rows)["loss"]
        shuffled = np.empty_like(grouped)
        shuffled[order] = ev(rows[order])["loss"]
        one_by_one = np.array([ev(r[None])["loss"][0] for r in rows])
    np.testing.assert_array_equal(grouped, shuffled)
    np.testing.assert_array_equal(grouped, one_by_one)


@pytest.mark.parametrize("vmap_cost, full_probe", [(2e-3, False), (1e-5, True)])
def test_auto_choice_stops_timing_vmap_when_its_marginal_cost_is_high(classification, monkeypatch, vmap_cost,
                                                                      full_probe):
    """vmap is timed on 2 + 8 points first; the full 64-point probe only when it looks competitive."""
    model, loss_fn, x, y = classification
    pr = lossatlas.Problem(model, loss_fn, (x, y))
    d = lossatlas.directions.random(pr, n=2, seed=0)
    sizes = []
    clock = {"now": 0.0}  # a virtual clock: the choice must not depend on how loaded the machine is

    def fake(per_point, overhead):
        def run(self, c):
            sizes.append((self.strategy, len(c)))
            clock["now"] += overhead + per_point * len(c)
            return torch.zeros(len(c), len(self.names), dtype=torch.float64)
        return run
    import lossatlas.evaluator as E

    monkeypatch.setattr(E.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(E.time, "thread_time", lambda: clock["now"])
    monkeypatch.setattr(PointEvaluator, "_run_loop", fake(5e-4, 0.0))
    monkeypatch.setattr(PointEvaluator, "_run_vmap", fake(vmap_cost, 2e-3))
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="auto", vmap_batch=64) as ev:
        vmapped = [n for s, n in sizes if s == "vmap"]
        assert vmapped == ([2, 8, 64] if full_probe else [2, 8])
        assert ev.strategy == ("vmap" if full_probe else "loop")


@pytest.mark.parametrize("threads", [1, 2])
def test_auto_choice_does_not_count_time_the_machine_gave_to_others(classification, monkeypatch, threads):
    """A stall while vmap is timed (another process took the core: wall time passes, this thread's CPU
    time does not) must not flip the choice on one thread; with several threads the wall clock is used."""
    import time as _time

    import lossatlas.evaluator as E

    model, loss_fn, x, y = classification
    pr = lossatlas.Problem(model, loss_fn, (x, y))
    d = lossatlas.directions.random(pr, n=2, seed=0)
    wall, cpu = {"now": 0.0}, {"now": 0.0}

    def fake(per_point, stall):
        def run(self, c):
            cpu["now"] += per_point * len(c)
            wall["now"] += per_point * len(c) + (stall if len(c) >= 8 else 0.0)
            return torch.zeros(len(c), len(self.names), dtype=torch.float64)
        return run
    monkeypatch.setattr(E.time, "perf_counter", lambda: wall["now"])
    monkeypatch.setattr(E.time, "thread_time", lambda: cpu["now"])
    monkeypatch.setattr(PointEvaluator, "_run_loop", fake(5e-4, 0.0))
    monkeypatch.setattr(PointEvaluator, "_run_vmap", fake(1e-5, 0.05))  # 50× faster, but one 50 ms stall
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert E.choice_clock() is (_time.thread_time if threads == 1 else _time.perf_counter)
        with PointEvaluator(pr, pr.params(), d.vectors, strategy="auto", vmap_batch=64) as ev:
            assert ev.strategy == ("vmap" if threads == 1 else "loop")
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("transposed", [False, True])
def test_accuracy_takes_the_first_maximum_like_argmax(transposed):
    from lossatlas.problem import _auto_accuracy

    z = torch.randint(0, 3, (200, 10)).float()  # many ties
    z[5, :] = float("nan")
    z[7, 3] = float("nan")
    if transposed:
        z = z.t().contiguous().t()
    y = torch.randint(0, 10, (200,))
    acc = _auto_accuracy(torch.nn.CrossEntropyLoss(), z, y)
    assert float(acc(z, y)) == float((z.argmax(dim=1) == y).float().mean())


class _InPlaceAfterFirstLayer(torch.nn.Module):
    """A user model that modifies the first layer's output in place (the folded layer's output)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc1, self.fc2 = torch.nn.Linear(5, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc1(x)
        h.relu_()
        return self.fc2(h)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_in_place_user_ops_on_the_folded_layer_keep_every_point_exact(strategy):
    from lossatlas.testing import naive_surface

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g)
    model = _InPlaceAfterFirstLayer().double()
    pr = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), (x, y))
    d = lossatlas.directions.random(pr, n=2, seed=0)
    ds = lossatlas.surface(pr, None, d, steps=5, span=0.8, strategy=strategy, progress=False)
    ref = naive_surface(model, torch.nn.CrossEntropyLoss(), [(x, y)], pr.params(), d.vectors,
                        [ds.x.values, ds.y.values], torch.float64)
    assert_close(ds.loss.values, ref, torch.float64)
