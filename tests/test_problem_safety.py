"""No silent wrong answers from a Problem (issue 12): threads sharing one problem, variants derived
from the snapshot (not the live model), data that changes between iterations."""

import copy
import threading

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lossatlas
from lossatlas.errors import DataError
from lossatlas.evaluator import PointEvaluator
from lossatlas.testing import assert_close, naive_loss

F64 = torch.float64


def _mlp(d_in=8, hidden=32, d_out=4, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                               torch.nn.ReLU(), torch.nn.Linear(hidden, d_out))


def _digits_like(n=400, d_in=8, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g), torch.randint(0, classes, (n,), generator=g)


def _run_threads(targets):
    errors, threads = [], []
    barrier = threading.Barrier(len(targets))

    def wrap(fn):
        def run():
            try:
                barrier.wait()
                fn()
            except BaseException as exc:  # reported below
                errors.append(exc)
        return run
    for fn in targets:
        threads.append(threading.Thread(target=wrap(fn)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


# -- defect 5: one Problem shared between threads ----------------------------------------------------
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_two_threads_computing_surfaces_on_one_problem_get_the_right_values(strategy):
    x, y = _digits_like()
    pr = lossatlas.Problem(_mlp(), torch.nn.CrossEntropyLoss(), (x, y), batch_size=100)
    dirs = [lossatlas.directions.random(pr, n=2, seed=s) for s in (0, 1)]
    kw = dict(steps=9, span=0.8, strategy=strategy, progress=False, chunk=9)
    expected = [lossatlas.surface(pr, None, d, **kw).loss.values for d in dirs]
    got = [None, None]

    def job(i):
        def run():
            got[i] = lossatlas.surface(pr, None, dirs[i], **kw).loss.values
        return run
    _run_threads([job(0), job(1)])
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


def test_problem_loss_and_surface_and_grad_in_threads():
    x, y = _digits_like()
    pr = lossatlas.Problem(_mlp(), torch.nn.CrossEntropyLoss(), (x, y), batch_size=100)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    theta = pr.params()
    shifted = {k: v + 0.3 * d.vectors[0][k] for k, v in theta.items()}
    want_surface = lossatlas.surface(pr, None, d, steps=7, progress=False, strategy="loop").loss.values
    want_loss, want_grad = pr.loss(shifted), pr.grad(shifted)
    out = {}

    def surf():
        out["surface"] = lossatlas.surface(pr, None, d, steps=7, progress=False, strategy="loop").loss.values

    def losses():
        out["loss"] = [pr.loss(shifted) for _ in range(20)]

    def grads():
        out["grad"] = [pr.grad(shifted) for _ in range(5)]
    _run_threads([surf, losses, grads])
    np.testing.assert_array_equal(out["surface"], want_surface)
    assert out["loss"] == [want_loss] * 20
    for g in out["grad"]:
        for k in g:
            assert torch.equal(g[k], want_grad[k])


def test_recalibrated_batchnorm_in_threads(cnn_data):
    model, loss_fn, x, y = cnn_data
    pr = lossatlas.Problem(model, loss_fn, (x, y), bn="recalibrate", batch_size=10)
    theta = pr.params()
    want = pr.loss(theta)
    out = []

    def job():
        out.extend(pr.loss(theta) for _ in range(5))
    _run_threads([job, job])
    assert out == [want] * 10


def test_deep_copied_problem_has_its_own_lock():
    x, y = _digits_like(n=50)
    pr = lossatlas.Problem(_mlp(), torch.nn.CrossEntropyLoss(), (x, y))
    other = copy.deepcopy(pr)
    assert other._guard is not pr._guard and other._guard.lock is not pr._guard.lock
    assert other.loss(other.params()) == pr.loss(pr.params())
    view = copy.copy(pr)  # a shallow view shares the module, hence the lock
    assert view._guard is pr._guard


# -- defect 4: variants come from the snapshot, not from the live model ------------------------------
class _WithBuffer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(5, 3)
        self.frozen = torch.nn.Linear(5, 5)
        self.frozen.requires_grad_(False)
        self.register_buffer("shift", torch.randn(5))

    def forward(self, x):
        return self.lin(torch.tanh(self.frozen(x) + self.shift))


@pytest.mark.parametrize("change", ["buffer", "frozen weight", "trainable weight", "submodule"])
def test_with_dtype_evaluates_the_function_of_construction_time(change):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)
    model = _WithBuffer()
    reference = copy.deepcopy(model)
    pr = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), (x, y))
    theta64 = lossatlas.params.to(pr.params(), dtype=F64)
    with torch.no_grad():
        if change == "buffer":
            model.shift.add_(1.0)
        elif change == "frozen weight":
            model.frozen.weight.mul_(3.0)
        elif change == "trainable weight":
            model.lin.weight.zero_()
        else:
            model.frozen = torch.nn.Identity()
    expected = naive_loss(reference, torch.nn.CrossEntropyLoss(), [(x, y)], theta64, F64)
    p64 = pr.with_dtype(F64)
    assert_close(p64.loss(theta64), expected, F64)
    assert_close(pr.loss(pr.params()), naive_loss(reference, torch.nn.CrossEntropyLoss(), [(x, y)], pr.params(),
                                                  torch.float32), torch.float32)
    # and so does a variant of a variant
    assert_close(p64.with_dtype(torch.float32).with_dtype(F64).loss(theta64), expected, F64)
    assert p64.fingerprint()["model"] == pr.with_dtype(F64).fingerprint()["model"]


def test_float64_variant_of_a_bfloat16_problem_keeps_the_original_buffers():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)
    model = _WithBuffer()
    with torch.no_grad():
        model.shift.copy_(torch.tensor([1.0 + 2 ** -12, 0.3, -0.7, 1e-3, 2.0]))  # not bfloat16 numbers
    reference = copy.deepcopy(model)
    pr = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), (x, y), dtype=torch.bfloat16)
    with torch.no_grad():
        model.shift.zero_()
    theta64 = lossatlas.params.to(pr.params(), dtype=F64)
    p64 = pr.with_dtype(F64)
    assert torch.equal(p64._module.shift, reference.shift.to(F64))
    assert_close(p64.loss(theta64), naive_loss(reference, torch.nn.CrossEntropyLoss(), [(x, y)], theta64, F64), F64)
    # float32 variant of the bfloat16 problem: the float32 originals again (exactly)
    assert torch.equal(pr.with_dtype(torch.float32)._module.shift, reference.shift)


def test_with_dtype_while_an_evaluator_is_open():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 5, generator=g), torch.randint(0, 3, (60,), generator=g)
    model = _WithBuffer()
    pr = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=20)
    d = lossatlas.directions.random(pr, n=2, seed=0)
    theta64 = lossatlas.params.to(pr.params(), dtype=F64)
    expected = naive_loss(model, torch.nn.CrossEntropyLoss(), [(x, y)], theta64, F64)
    with PointEvaluator(pr, pr.params(), d.vectors, strategy="loop") as ev:
        ev(np.array([[0.2, 0.1]]))
        p64 = pr.with_dtype(F64)
        assert pr._module.lin.__dict__["forward"].__func__.__qualname__.startswith("_install")  # fold in place
        for m in p64._module.modules():  # the variant carries no fold dispatcher of the original
            f = m.__dict__.get("forward")
            assert f is None or not f.__func__.__qualname__.startswith("_install")
        assert_close(p64.loss(theta64), expected, F64)
    assert_close(p64.loss(theta64), expected, F64)


# -- defect 6: data that changes between iterations ---------------------------------------------------
class _Batches:
    """A re-iterable of batches whose later passes can differ from the first."""

    def __init__(self, passes):
        self.passes = passes
        self.count = 0

    def __iter__(self):
        batches = self.passes[min(self.count, len(self.passes) - 1)]
        self.count += 1
        return iter(batches)


def _split(x, y, sizes):
    out, i = [], 0
    for s in sizes:
        out.append((x[i:i + s], y[i:i + s]))
        i += s
    return out


def test_empty_batches_are_skipped_exactly(classification):
    model, loss_fn, x, y = classification
    batches = _split(x, y, [0, 20, 0, 25, 15])
    for data in (batches, DataLoader(batches, batch_size=None)):
        pr = lossatlas.Problem(model, loss_fn, data, dtype=F64)
        assert pr.data.sizes == [20, 25, 15] and pr.n_samples == 60
        value = pr.loss(pr.params())
        assert np.isfinite(value)
        assert_close(value, naive_loss(model, loss_fn, [(x, y)], pr.params(), F64), F64)
        assert np.isfinite(pr.evaluate(pr.params())["accuracy"])
    # streamed (too big to cache) as well
    pr = lossatlas.Problem(model, loss_fn, batches, dtype=F64, max_cache_bytes=0)
    assert not pr.data.cached
    assert_close(pr.loss(pr.params()), naive_loss(model, loss_fn, [(x, y)], pr.params(), F64), F64)


@pytest.mark.parametrize("later", ["fewer batches", "more batches", "other sizes", "empty batch appears"])
def test_streamed_data_that_changes_between_iterations_raises(classification, later):
    model, loss_fn, x, y = classification
    first = _split(x, y, [20, 20, 20])
    other = {"fewer batches": _split(x, y, [20, 20]),
             "more batches": _split(x, y, [20, 20, 20]) + [(x[:5], y[:5])],
             "other sizes": _split(x, y, [20, 25, 15]),
             "empty batch appears": _split(x, y, [20, 0, 20, 20])}[later]
    data = _Batches([first, first, first, other])
    pr = lossatlas.Problem(model, loss_fn, data, max_cache_bytes=0, metrics=None)
    assert not pr.data.cached
    d = lossatlas.directions.random(pr, n=2, seed=0)  # reads the data once more
    if later == "empty batch appears":  # an empty batch is skipped exactly: still the same samples
        assert_close(pr.loss(pr.params()), naive_loss(model, loss_fn, first, pr.params(), torch.float32),
                     torch.float32)
        return
    with pytest.raises(DataError, match="changed"):
        pr.loss(pr.params())
    with pytest.raises(DataError, match="changed"):
        lossatlas.surface(pr, None, d, steps=3, progress=False)


def test_count_pass_that_disagrees_with_the_first_pass_raises(classification):
    model, loss_fn, x, y = classification
    data = _Batches([_split(x, y, [30, 30]), _split(x, y, [30, 30]), _split(x, y, [20, 20, 20])])
    with pytest.raises(DataError, match="changed"):
        lossatlas.Problem(model, loss_fn, data, max_cache_bytes=1000)


def test_cached_data_is_a_snapshot_of_the_user_tensors(classification):
    model, loss_fn, x, y = classification
    x = x.clone()
    pr = lossatlas.Problem(model, loss_fn, (x, y))
    before = pr.loss(pr.params())
    fingerprint = pr.data.fingerprint()
    x.mul_(3.0)  # the user normalises their tensor in place afterwards
    assert pr.loss(pr.params()) == before
    assert pr.with_dtype(F64).data.fingerprint() != fingerprint  # recast (other dtype) ...
    theta64 = lossatlas.params.to(pr.params(), dtype=F64)
    assert_close(pr.with_dtype(F64).loss(theta64), before, torch.float32)  # ... of the same data


def test_recast_from_a_source_that_changed_raises(classification):
    """float64 data cached in float32: the float64 variant re-reads the source (no precision lost)
    and must find the very same data there."""
    model, loss_fn, x, y = classification
    x64 = x.to(F64) + 1e-9  # not float32 numbers
    pr = lossatlas.Problem(model, loss_fn, (x64, y))
    theta64 = lossatlas.params.to(pr.params(), dtype=F64)
    exact = naive_loss(model, loss_fn, [(x64, y)], theta64, F64)
    assert_close(pr.with_dtype(F64).loss(theta64), exact, F64)
    x64[3, 2] += 1e-12  # below float32 resolution: the float32 cache cannot tell
    with pytest.raises(DataError, match="changed"):
        pr.with_dtype(F64)


def test_recast_of_a_shuffled_loader_raises_instead_of_mixing_samples(classification):
    model, loss_fn, x, y = classification
    loader = DataLoader(TensorDataset(x.to(F64), y), batch_size=16, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    pr = lossatlas.Problem(model, loss_fn, loader)
    with pytest.raises(DataError, match="changed"):
        pr.with_dtype(F64)


def test_float32_variant_of_a_float64_problem_comes_back_exactly(classification):
    model, loss_fn, x, y = classification
    x64 = x.to(F64) + 1e-9
    pr = lossatlas.Problem(model, loss_fn, (x64, y), dtype=F64)
    back = pr.with_dtype(torch.float32).with_dtype(F64)
    assert back.data.fingerprint() == pr.data.fingerprint()
    theta = pr.params()
    assert back.loss(theta) == pr.loss(theta)


def test_grad_of_a_loss_without_gradient_is_a_differentiation_error():
    x, y = torch.randn(12, 3), torch.randn(12, 1)

    def zero_one(out, target):
        return (torch.sign(out) != torch.sign(target)).to(out.dtype).mean()

    problem = lossatlas.Problem(torch.nn.Linear(3, 1), zero_one, (x, y), metrics=None)
    with pytest.raises(lossatlas.DifferentiationError, match=r"Problem.grad\(\).*no gradient.*zero_one"):
        problem.grad(problem.params())
    plain = lossatlas.Problem(torch.nn.Linear(3, 1), torch.nn.MSELoss(), (x, y))
    with torch.no_grad():  # a caller's no_grad block does not turn the gradient off
        g = plain.grad(plain.params())
    assert float(sum(v.abs().sum() for v in g.values())) > 0


@pytest.mark.parametrize("alias", ["numpy view", "from_numpy", "shared memory"])
def test_writes_the_library_cannot_see_leave_theta0_alone(alias):
    """θ₀ is a snapshot of the model at construction: writes to the user's parameters through memory
    torch does not track (a numpy view made before, a tensor made from a numpy array, shared memory
    written by another process) never reach it. (A copy-on-write snapshot sharing the user's memory
    failed the numpy-view case: the loss at θ₀ moved 0.598 -> 0.574.)"""
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    if alias == "from_numpy":
        raw = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
        model[0].weight = torch.nn.Parameter(torch.from_numpy(raw))
    elif alias == "shared memory":
        model.share_memory()
    raw = model[0].weight.detach().numpy() if alias != "from_numpy" else raw
    problem = lossatlas.Problem(model, torch.nn.MSELoss(), (x, y))
    before = problem.loss(problem.params())
    raw[:] = 0.0  # (the other process's write lands in the same pages)
    assert float(model[0].weight.detach().abs().sum()) == 0.0
    assert problem.loss(problem.params()) == before


class _HalvesItsInput(torch.nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, t):
        if self.how == "data":
            t.data.mul_(0.5)  # no version counter sees it
        else:
            with torch.no_grad():
                t.mul_(0.5)
        return t


@pytest.mark.parametrize("how", ["data", "no_grad"])
def test_a_model_writing_into_its_inputs_is_evaluated_on_the_data_as_given(how):
    """Such a model halved the Problem's cached batch at every evaluation: the loss at θ₀ drifted from
    call to call (1.1401, 1.1414, 1.1421; a fresh model on fresh data: 1.1441) and the folded plane
    differed from the unfolded one. Now the first evaluation finds the write, restores the batch and
    every later one gets private copies."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    model = torch.nn.Sequential(_HalvesItsInput(how), torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        want = float(torch.nn.CrossEntropyLoss()(copy.deepcopy(model)(x.clone()), y))
    with pytest.warns(lossatlas.DataWriteWarning, match="wrote into the batch"):
        problem = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), (x, y))
    assert [problem.loss(problem.params()) for _ in range(3)] == pytest.approx([want] * 3, rel=1e-6)
    d = lossatlas.directions.random(problem, n=2, seed=0)
    folded, plain = (lossatlas.surface(problem, problem.params(), d, steps=3, exact_linear=e, progress=False)
                     ["loss"].values for e in (True, False))
    np.testing.assert_allclose(folded, plain, rtol=1e-6)
    for (a, b), value in zip([(a, b) for a in (-1.0, 0.0, 1.0) for b in (-1.0, 0.0, 1.0)], folded.ravel()):
        point = {k: problem.params()[k] + a * d.vectors[0][k] + b * d.vectors[1][k] for k in problem.params()}
        fresh = [(x.clone(), y)]  # the model halves what it is given: fresh data for every point
        assert value == pytest.approx(naive_loss(model, torch.nn.CrossEntropyLoss(), fresh, point, torch.float32),
                                      rel=1e-5)


def test_a_model_that_leaves_its_inputs_alone_gets_the_cached_batches_themselves(classification):
    import warnings as w

    with w.catch_warnings():
        w.simplefilter("error", lossatlas.DataWriteWarning)
        model, loss_fn, x, y = classification
        problem = lossatlas.Problem(model, loss_fn, (x, y))
    assert not problem.data.copy_batches
    (first, _), (again, _) = next(iter(problem.data)), next(iter(problem.data))
    assert first[0] is again[0]  # no copy per evaluation


def test_batches_are_compared_bit_for_bit():
    from lossatlas.problem import _same_tensors

    nan = (torch.tensor([1.0, float("nan")]), torch.tensor([1, 2]))
    assert _same_tensors(nan, tuple(t.clone() for t in nan))  # a NaN equals itself
    assert not _same_tensors((torch.tensor(0.0),), (torch.tensor(-0.0),))  # a sign flip is a write
    sparse = torch.sparse_coo_tensor([[0, 1]], [1.0, 2.0], (3,))
    assert _same_tensors((sparse,), (sparse.clone(),)) and not _same_tensors((sparse,), (sparse * 2,))
    assert _same_tensors({"z": torch.tensor(1 + 2j)}, {"z": torch.tensor(1 + 2j)})
    assert not _same_tensors((torch.ones(2),), (torch.ones(2), torch.ones(1)))
