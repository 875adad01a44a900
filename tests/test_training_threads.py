"""Trained weights do not depend on the caller's thread count: built-in examples and study members
train on a pinned count (``examples.TRAINING_THREADS``), which is part of every cache key."""

import os

import pytest
import torch

from lossatlas import examples
from lossatlas.errors import LossAtlasError
from lossatlas.examples import _builtin, _registry
from lossatlas.studies import _core
from lossatlas.studies._sizes import member

multicore = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to run 2 threads")


def _under(threads, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _cnn_center(threads):
    def build():
        out = examples.load("cnn-digits", cache=False).center
        assert torch.get_num_threads() == threads  # the caller's count is restored
        return {k: v.clone() for k, v in out.items()}
    return _under(threads, build)


@multicore
def test_example_weights_are_the_same_bits_whatever_the_callers_threads():
    # cnn-digits was 0.07 apart (max |Δw|) between 1 and 2 threads before training was pinned
    one, two = _cnn_center(1), _cnn_center(2)
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)


@multicore
def test_unpinned_training_does_depend_on_threads():
    """The premise: without the pin the same training gives other bits (else the pin is moot). Kernels
    differ between machines: where they do not split this training by thread, say so, do not fail."""
    def weights(threads):
        def run():
            torch.manual_seed(0)
            model = examples.SmallCNN()
            x, y = examples.digits(images=True)
            _builtin._fit(model, torch.nn.CrossEntropyLoss(), x, y, steps=40, lr=3e-3, batch=256, seed=0,
                          weight_decay=0.0, callback=None)
            return torch.cat([p.detach().flatten() for p in model.parameters()])
        return _under(threads, run)
    if torch.equal(weights(1), weights(2)):
        pytest.skip("this machine's kernels give the same bits on 1 and 2 threads for this training")


def test_training_threads_are_in_the_example_cache_key(monkeypatch, tmp_path):
    monkeypatch.setenv("LOSSATLAS_CACHE", str(tmp_path))
    examples.load("seed-relu")
    first = {p.name for p in (tmp_path / "examples").iterdir()}
    monkeypatch.setattr(_registry, "TRAINING_THREADS", 2)
    examples.load("seed-relu")
    files = {p.name for p in (tmp_path / "examples").iterdir()}
    assert len(first) == 1 and len(files) == 2  # trained again under another count, never reused


def _tiny_member(**train):
    return member("depth 2", {"kind": "mlp", "hidden": [8], "activation": "relu", "seed": 0},
                  {"name": "digits", "n_train": 200, "n_test": 100}, "ce",
                  {"epochs": 2, "lr": 0.05, "batch_size": 50, **train})


@multicore
def test_study_members_train_on_the_pinned_count(tmp_path):
    m = _tiny_member()
    data = _core.load_data(m["data"])[0]
    seen = []

    def state(threads):
        def run():
            model, _ = _core.train(m, data)
            seen.append(torch.get_num_threads())
            return torch.cat([p.detach().flatten() for p in model.parameters()])
        return _under(threads, run)
    assert torch.equal(state(1), state(2))
    assert seen == [1, 2]


def test_study_threads_are_in_the_cache_key_and_checked(tmp_path):
    log: list = []
    _, _, cached = _core.trained_model(_tiny_member(), tmp_path, {}, log)
    assert not cached
    _, _, cached = _core.trained_model(_tiny_member(threads=1), tmp_path, {}, log)
    assert cached  # the default count, spelled out: the same key
    _, _, cached = _core.trained_model(_tiny_member(threads=2), tmp_path, {}, log)
    assert not cached
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(LossAtlasError, match="train.threads"):
            _core.training_threads({"threads": bad})
