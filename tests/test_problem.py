import functools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lossatlas
from lossatlas.testing import assert_close, naive_loss


def test_tensors_dataset_loader_iterable_and_closure_agree(classification):
    model, loss_fn, x, y = classification
    ref = lossatlas.Problem(model, loss_fn, (x, y))
    theta = ref.params()
    expected = ref.loss(theta)
    forms = {
        "dataset": lossatlas.Problem(model, loss_fn, TensorDataset(x, y), batch_size=7),
        "loader": lossatlas.Problem(model, loss_fn, DataLoader(TensorDataset(x, y), batch_size=13)),
        "list of batches": lossatlas.Problem(model, loss_fn, [(x[:25], y[:25]), (x[25:], y[25:])]),
        "generator": lossatlas.Problem(model, loss_fn, ((x[i:i + 9], y[i:i + 9]) for i in range(0, 60, 9))),
        "dict closure": lossatlas.Problem(model, None, [{"inp": x[:31], "lab": y[:31]}, {"inp": x[31:], "lab": y[31:]}],
                                          closure=lambda call, b: loss_fn(call(b["inp"]), b["lab"])),
    }
    for name, pr in forms.items():
        assert pr.n_samples == 60, name
        assert_close(pr.loss(theta), expected, torch.float32, what=name, factor=5)
    assert forms["dataset"].data.n_batches == 9


def test_exact_weighted_mean_matches_reference(classification):
    model, loss_fn, x, y = classification
    batches = [(x[:7], y[:7]), (x[7:50], y[7:50]), (x[50:], y[50:])]
    pr = lossatlas.Problem(model, loss_fn, batches, dtype=torch.float64)
    ref = naive_loss(model, loss_fn, batches, pr.params(), torch.float64)
    assert_close(pr.loss(pr.params()), ref, torch.float64)
    whole = naive_loss(model, loss_fn, [(x, y)], pr.params(), torch.float64)
    assert_close(pr.loss(pr.params()), whole, torch.float64)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_sum_and_none_reductions(classification, reduction):
    model, _, x, y = classification
    mean = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=16, dtype=torch.float64)
    other = lossatlas.Problem(model, torch.nn.CrossEntropyLoss(reduction=reduction), (x, y), batch_size=16,
                              dtype=torch.float64)
    assert_close(other.loss(other.params()), mean.loss(mean.params()), torch.float64)
    fn = functools.partial(torch.nn.functional.mse_loss, reduction="sum")
    targets = torch.randn(60, 3)
    s = lossatlas.Problem(model, fn, (x, targets), batch_size=16, dtype=torch.float64)
    m = lossatlas.Problem(model, torch.nn.MSELoss(), (x, targets), dtype=torch.float64)
    # sum over a sample's 3 outputs, mean over samples = 3 × element mean
    assert_close(s.loss(s.params()), 3 * m.loss(m.params()), torch.float64)


def test_float64_end_to_end(classification):
    model, loss_fn, x, y = classification
    pr = lossatlas.Problem(model, loss_fn, (x, y), dtype=torch.float64)
    theta = pr.params()
    assert theta["net.0.weight"].dtype == torch.float64
    g = pr.grad(theta)
    assert g["net.0.weight"].dtype == torch.float64
    # gradient against finite differences along a random direction
    d = {k: torch.randn_like(v) for k, v in theta.items()}
    eps = 1e-6
    fd = (pr.loss({k: theta[k] + eps * d[k] for k in theta}) - pr.loss({k: theta[k] - eps * d[k] for k in theta})) / (2 * eps)
    analytic = sum(float((g[k] * d[k]).sum()) for k in theta)
    assert abs(fd - analytic) < 1e-7 * max(1, abs(analytic))


def test_grad_matches_autograd_on_full_batch(classification):
    model, loss_fn, x, y = classification
    pr = lossatlas.Problem(model, loss_fn, (x, y), batch_size=11)
    g = pr.grad(pr.params())
    ref_model = __import__("copy").deepcopy(model)
    ref_model.zero_grad()
    loss_fn(ref_model(x), y).backward()
    for k, p in ref_model.named_parameters():
        torch.testing.assert_close(g[k], p.grad, rtol=1e-5, atol=1e-6)


def test_accuracy_auto_detection(classification):
    model, loss_fn, x, y = classification
    pr = lossatlas.Problem(model, loss_fn, (x, y))
    acc = pr.evaluate(pr.params())["accuracy"]
    with torch.no_grad():
        assert np.isclose(acc, float((model.eval()(x).argmax(1) == y).float().mean()))
    model.train()
    reg = lossatlas.Problem(model, torch.nn.MSELoss(), (x, torch.randn(60, 3)))
    assert reg.metric_names == ("loss",)
    bin_model = torch.nn.Linear(5, 1)
    t = (x[:, 0] > 0).float().unsqueeze(1)
    bce = lossatlas.Problem(bin_model, torch.nn.BCEWithLogitsLoss(), (x, t))
    assert bce.metric_names == ("loss", "accuracy")


def test_custom_metrics_and_closure_metrics(classification):
    model, loss_fn, x, y = classification

    def top2(out, tgt):
        return (out.topk(2, dim=1).indices == tgt[:, None]).any(1).float().mean()

    pr = lossatlas.Problem(model, loss_fn, (x, y), metrics=["accuracy", top2])
    values = pr.evaluate(pr.params())
    assert set(values) == {"loss", "accuracy", "top2"} and values["top2"] >= values["accuracy"]
    pc = lossatlas.Problem(model, None, (x, y), closure=lambda call, b: {"loss": loss_fn(call(b[0]), b[1]),
                                                                        "mean_logit": call(b[0]).mean()})
    assert set(pc.evaluate(pc.params())) == {"loss", "mean_logit"}


def test_eval_mode_without_changing_the_flag(cnn_data):
    model, loss_fn, x, y = cnn_data
    assert model.training
    pr = lossatlas.Problem(model, loss_fn, (x, y))
    v1 = pr.loss(pr.params())
    v2 = pr.loss(pr.params())
    assert v1 == v2  # dropout off, running statistics used
    assert model.training and model.drop.training
    with torch.no_grad():
        expected = float(loss_fn(__import__("copy").deepcopy(model).eval()(x), y))
    assert_close(v1, expected, torch.float32, factor=5)


def test_bn_recalibrate_uses_data_statistics(cnn_data):
    model, loss_fn, x, y = cnn_data
    pr = lossatlas.Problem(model, loss_fn, (x, y), bn="recalibrate", dtype=torch.float64)
    theta = pr.params()
    bufs = pr.recalibrated_buffers(theta)
    with torch.no_grad():
        h = torch.nn.functional.conv2d(x.double(), theta["conv.weight"], theta["conv.bias"], padding=1)
    torch.testing.assert_close(bufs["bn.running_mean"], h.mean((0, 2, 3)))
    torch.testing.assert_close(bufs["bn.running_var"], h.var((0, 2, 3), unbiased=True))
    # the problem's private model is back in eval mode and its stored buffers are untouched
    assert not pr._module.bn.training
    torch.testing.assert_close(pr._module.bn.running_mean, model.bn.running_mean.double())
    assert np.isfinite(pr.loss(theta))


def test_unused_and_frozen_parameters(classification):
    model, loss_fn, x, y = classification
    model.unused = torch.nn.Parameter(torch.ones(3))
    model.net[0].bias.requires_grad_(False)
    pr = lossatlas.Problem(model, loss_fn, (x, y))
    assert "unused" in pr.param_names and "net.0.bias" not in pr.param_names
    g = pr.grad(pr.params())
    assert torch.equal(g["unused"], torch.zeros(3))


def test_tied_parameters_follow_the_point():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3, bias=False)
            self.b = torch.nn.Linear(3, 3, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    torch.manual_seed(0)
    m = Tied()
    x = torch.randn(10, 3)
    pr = lossatlas.Problem(m, torch.nn.MSELoss(), (x, x), dtype=torch.float64)
    assert pr.param_names == ("a.weight",)
    w = pr.params()
    w2 = {"a.weight": w["a.weight"] * 2}
    with torch.no_grad():
        W = w2["a.weight"]
        expected = float(torch.nn.functional.mse_loss(torch.tanh(x.double() @ W.T) @ W.T, x.double()))
    assert_close(pr.loss(w2), expected, torch.float64)


def test_data_larger_than_the_cache_budget_is_streamed(classification):
    model, loss_fn, x, y = classification
    from torch.utils.data import DataLoader, TensorDataset

    cached = lossatlas.Problem(model, loss_fn, DataLoader(TensorDataset(x, y), batch_size=16), dtype=torch.float64)
    streamed = lossatlas.Problem(model, loss_fn, DataLoader(TensorDataset(x, y), batch_size=16), dtype=torch.float64,
                                 max_cache_bytes=100)
    assert cached.data.cached and not streamed.data.cached
    assert streamed.n_samples == 60 and streamed.data.n_batches == 4
    theta = cached.params()
    assert_close(streamed.loss(theta), cached.loss(theta), torch.float64)
    d = lossatlas.directions.random(cached, n=1, seed=0)
    a = lossatlas.surface(cached, None, d, steps=5, progress=False)
    b = lossatlas.surface(streamed, None, d, steps=5, progress=False)
    assert_close(b.loss.values, a.loss.values, torch.float64)
    with pytest.raises(lossatlas.DataError, match="one-shot iterator"):
        lossatlas.Problem(model, loss_fn, ((x[i:i + 10], y[i:i + 10]) for i in range(0, 60, 10)), max_cache_bytes=100)
