"""Device-ready evaluation: no host round-trip per point (one transfer per chunk, whatever its size),
mixed precision (bfloat16 forward, float32 loss, float64 batch sums) with a bounded error, thread-
count-independent point formation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import lossatlas
from lossatlas import params as P
from lossatlas.evaluator import PointEvaluator
from lossatlas.grid import Grid
from lossatlas.runner import pinned_threads, run_chunks

HOST = {torch.Tensor.cpu, torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__bool__,
        torch.Tensor.tolist, torch.Tensor.numpy}


class HostTransfers(TorchFunctionMode):
    """Counts calls that move a tensor's values to the host (each one a device sync on a GPU)."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _problem(classification, dtype=torch.float32, **kw):
    model, loss_fn, x, y = classification
    problem = lossatlas.Problem(model, loss_fn, (x, y), dtype=dtype, batch_size=20, **kw)
    return problem, lossatlas.directions.random(problem, n=2, seed=0)


@pytest.mark.parametrize("strategy,parallel", [("loop", False), ("vmap", False), ("loop", True)])
def test_host_transfers_are_per_chunk_not_per_point(classification, strategy, parallel):
    problem, d = _problem(classification)
    grid = Grid.make(2, 6, 1.0)
    for points in (2, 12):
        layout = grid.chunks(grid.chunk_shape_for(points))
        cls = lossatlas.distributed.DataParallelEvaluator if parallel else PointEvaluator
        with cls(problem, problem.params(), d.vectors, strategy=strategy) as evaluator, pinned_threads(1):
            counter = HostTransfers()
            with counter:
                run_chunks(layout, evaluator, evaluator.names, store=None, progress=False, description="t")
        assert len(counter.calls) == 2 * layout.n_chunks, counter.calls  # .cpu() + .numpy() once per chunk


def test_bfloat16_forward_with_float32_loss(classification, tmp_path):
    ref_problem, d64 = _problem(classification, torch.float64)
    problem, d = _problem(classification, torch.bfloat16)
    assert problem.loss_dtype == torch.float32 and "loss_dtype=torch.float32" in problem.fingerprint()["settings"]
    assert lossatlas.Problem(*classification[:2], classification[2:], dtype=torch.bfloat16,
                             loss_dtype=torch.float64).loss_dtype == torch.float64
    with pytest.raises(lossatlas.InvalidArgumentError, match="loss_dtype"):
        lossatlas.Problem(*classification[:2], classification[2:], loss_dtype=torch.int32)
    d_low = d64.to(dtype=torch.bfloat16)
    ref = lossatlas.surface(ref_problem, None, d64, steps=5, progress=False, strategy="loop")
    for strategy in ("loop", "vmap"):
        low = lossatlas.surface(problem, None, d_low, steps=5, progress=False, strategy=strategy)
        rel = np.abs(low.loss.values - ref.loss.values) / np.abs(ref.loss.values)
        assert rel.max() < 2e-2, rel.max()  # bf16 weights and data: 8-bit mantissas
        # the loss was computed in float32, not rounded to bfloat16 (3 significant digits)
        as_bf16 = torch.tensor(low.loss.values).bfloat16().double().numpy()
        assert np.mean(low.loss.values != as_bf16) > 0.9
    # a bf16 surface can be stored and reopened, directions included
    stored = lossatlas.surface(problem, None, d_low, steps=3, progress=False, strategy="loop", store=tmp_path / "b.zarr")
    _, dirs = lossatlas.open_directions(tmp_path / "b.zarr")
    assert dirs.fingerprint() == d_low.fingerprint() and dirs[0]["net.0.weight"].dtype == torch.bfloat16
    assert stored.attrs["complete"] == 1


def test_point_formation_has_no_fused_multiply_add():
    """θ + a·d is rounded like the separate operations, so threads and vmap cannot change it."""
    g = torch.Generator().manual_seed(0)
    theta = {"w": torch.randn(100_003, generator=g)}
    d = [{"w": torch.randn(100_003, generator=g)}, {"w": torch.randn(100_003, generator=g)}]
    got = P.lincomb(theta, d, (0.3711, -1.25))["w"]
    expected = (theta["w"] + 0.3711 * d[0]["w"]) + (-1.25) * d[1]["w"]
    assert torch.equal(got, expected)
    batched = torch.vmap(lambda c: (theta["w"] + c[0] * d[0]["w"]) + c[1] * d[1]["w"])(
        torch.tensor([[0.3711, -1.25]]))
    assert torch.equal(batched[0], got)


def test_dot_is_summed_left_to_right_with_one_transfer():
    g = torch.Generator().manual_seed(1)
    a = {k: torch.randn(n, generator=g) for k, n in (("x", 1000), ("y", 7), ("z", 300))}
    b = {k: torch.randn(v.shape, generator=g) for k, v in a.items()}
    counter = HostTransfers()
    with counter:
        value = P.dot(a, b)
    expected = 0.0
    for k in a:
        expected += float(torch.sum(a[k].double() * b[k].double()))
    assert value == expected and counter.calls == ["__float__"]


def test_bfloat16_closure_sees_float32_outputs(classification):
    model, loss_fn, x, y = classification
    seen = []

    def closure(call, batch):
        out = call(batch["x"])
        seen.append(out.dtype)
        return loss_fn(out, batch["y"])

    problem = lossatlas.Problem(model, None, {"x": x, "y": y}, closure=closure, dtype=torch.bfloat16)
    value = problem.evaluate_tensors(problem.params())["loss"]
    assert seen and set(seen) == {torch.float32} and value.dtype == torch.float64
