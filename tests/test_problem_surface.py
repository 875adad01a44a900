"""Problem's public surface for other modules (issue 13): module, has_batchnorm, batchnorm_modules,
replace(...) — no module reaches into Problem's private attributes any more."""
import ast
import pathlib

import pytest
import torch

import lossatlas
from lossatlas.errors import InvalidArgumentError

SRC = pathlib.Path(lossatlas.__file__).parent
PRIVATE = {"_bn_modules", "_module", "_loss_dtype_arg", "_center"}


def _bn_problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
    return lossatlas.Problem(net, torch.nn.CrossEntropyLoss(), (x, y))


def test_batchnorm_is_reported():
    pr = _bn_problem()
    assert pr.has_batchnorm and len(pr.batchnorm_modules) == 1
    assert pr.batchnorm_modules[0] in list(pr.module.modules())
    plain = lossatlas.Problem(torch.nn.Linear(3, 2), torch.nn.CrossEntropyLoss(), (torch.randn(8, 3), torch.zeros(8).long()))
    assert not plain.has_batchnorm and plain.batchnorm_modules == ()


def test_replace_makes_variants_and_leaves_the_problem_alone():
    pr = _bn_problem()
    before = pr.loss(pr.params())
    rec = pr.replace(bn="recalibrate")
    assert rec.bn == "recalibrate" and pr.bn == "eval" and rec.module is pr.module
    assert pr.replace() is pr and pr.replace(bn="eval") is pr
    p64 = pr.replace(dtype=torch.float64, loss_dtype=torch.float64)
    assert p64.dtype == torch.float64 and p64.loss_dtype == torch.float64 and pr.dtype == torch.float32
    assert abs(p64.loss(p64.params()) - before) < 1e-5
    assert pr.loss(pr.params()) == before
    assert rec.loss(rec.params()) == rec.loss(rec.params())  # evaluates (recalibrated statistics)
    with pytest.raises(InvalidArgumentError, match="bn"):
        pr.replace(bn="train")
    with pytest.raises(InvalidArgumentError, match="loss_dtype"):
        pr.replace(loss_dtype=torch.int64)


def test_no_module_reads_problem_private_attributes():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "problem.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE and not (
                    isinstance(node.value, ast.Name) and node.value.id == "self"):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} .{node.attr}")
    assert not offenders, offenders


def test_replace_data_is_a_view_on_other_batches():
    torch.manual_seed(0)
    x, y = torch.randn(30, 3), torch.randint(0, 2, (30,))
    pr = lossatlas.Problem(torch.nn.Linear(3, 2), torch.nn.CrossEntropyLoss(), (x, y), batch_size=10)
    batches = list(pr.data)

    class Source:  # the batch-source interface: (batch, n) pairs, first(), n_samples
        def __init__(self, items):
            self.items, self.n_samples = items, sum(n for _, n in items)

        def __iter__(self):
            return iter(self.items)

        def first(self):
            return self.items[0]

    one = pr.replace(data=Source(batches[:1]))
    assert one.n_samples == 10 and pr.n_samples == 30 and one.module is pr.module and one.data is not pr.data
    (xb, yb), _ = batches[0]
    expected = float(torch.nn.functional.cross_entropy(torch.nn.functional.linear(xb, pr.params()["weight"],
                                                                                   pr.params()["bias"]), yb))
    assert abs(one.loss(one.params()) - expected) < 1e-6
    shards = [pr.replace(data=Source(batches[i::2]), n_samples=pr.n_samples) for i in (0, 1)]
    assert abs(sum(s.loss(s.params()) for s in shards) - pr.loss(pr.params())) < 1e-6  # weights n_b / full N
    with pytest.raises(lossatlas.errors.InvalidTypeError, match="data"):
        pr.replace(data=(x, y))
    with pytest.raises(InvalidArgumentError, match="n_samples"):
        pr.replace(n_samples=5)


def test_params_without_a_copy_are_the_problems_own_tensors():
    pr = _bn_problem()
    own, copied = pr.params(copy=False), pr.params()
    assert own.keys() == copied.keys()
    assert all(torch.equal(own[k], copied[k]) for k in own)
    assert all(own[k].data_ptr() == pr.params(copy=False)[k].data_ptr() for k in own)  # no copy
    assert all(own[k].data_ptr() != copied[k].data_ptr() for k in own)
    with pytest.raises(lossatlas.errors.InvalidTypeError, match=r"Problem.params\(\): argument 'copy'"):
        pr.params(copy="no")
