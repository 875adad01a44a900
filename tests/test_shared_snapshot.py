"""A Problem's snapshot θ₀ shares the user's parameter memory copy-on-write (issue 17, memory): no copy
while neither side writes; a write on either side, however made, leaves the other side's values alone."""

import torch
from torch import nn

import lossatlas
from lossatlas import params as P


def _setup(dtype=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    model.eval()
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    return model, lossatlas.Problem(model, nn.CrossEntropyLoss(), (x, y), dtype=dtype)


def test_snapshot_shares_until_written():
    model, pr = _setup()
    assert all(torch._C._is_cow_tensor(t) for t in pr.params(copy=False).values())
    assert all(torch._C._is_cow_tensor(t) for t in model.parameters())  # the user's side of the sharing
    assert all(torch._C._is_cow_tensor(b) for b in pr.module.buffers() if b.is_floating_point())
    assert P.fingerprint(pr.params(copy=False)) == P.fingerprint(P.params_of(model))
    # fingerprinting reads without a copy: still shared
    assert all(torch._C._is_cow_tensor(t) for t in pr.params(copy=False).values())


def test_user_writes_leave_the_snapshot_alone():
    model, pr = _setup()
    theta0, loss0 = pr.params(), pr.loss(pr.params(copy=False))
    buffers0 = {k: v.clone() for k, v in pr.module.named_buffers()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    nn.CrossEntropyLoss()(model(torch.randn(32, 6)), torch.randint(0, 3, (32,))).backward()
    opt.step()  # in-place parameter updates; BatchNorm statistics updated in place by the train-mode forward
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    model[3].bias.data.fill_(7.0)
    assert not torch.equal(model[0].weight, theta0["0.weight"])
    assert all(torch.equal(pr.params(copy=False)[k], theta0[k]) for k in theta0)
    assert all(torch.equal(v, buffers0[k]) for k, v in pr.module.named_buffers())
    assert pr.loss(pr.params(copy=False)) == loss0


def test_problem_writes_leave_the_user_alone():
    model, pr = _setup()
    user = {k: v.detach().clone() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    rec = pr.replace(bn="recalibrate")
    d = lossatlas.directions.random(rec, n=2, seed=0)
    lossatlas.surface(rec, None, d, steps=3, progress=False)
    with torch.no_grad():  # even a write into the private module itself
        for t in pr.module.parameters():
            t.add_(1.0)
    assert all(torch.equal(v, user[k]) for k, v in [*model.named_parameters(), *model.named_buffers()])


def test_converted_snapshots_are_copies():
    model, pr = _setup(dtype=torch.float64)
    assert not any(torch._C._is_cow_tensor(t) for t in model.parameters())  # nothing shared with the user
    assert all(torch.equal(pr.params(copy=False)[k], v.double()) for k, v in P.params_of(model).items())
