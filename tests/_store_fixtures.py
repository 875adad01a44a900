"""Fixtures and checks shared by the store fault tests (test_faults_store.py, test_store_integrity.py):
a finished small store, the reference values it must hold, and a resume that expects a repair."""
import numpy as np
import pytest

import _dist_problem
import lossatlas
from lossatlas.runner import pinned_threads


@pytest.fixture(autouse=True)
def one_thread():
    with pinned_threads(1):  # a tiny model: one thread is quicker on a busy machine
        yield


@pytest.fixture(scope="module")
def reference():
    return _dist_problem.run(None)


@pytest.fixture
def finished(tmp_path):
    path = tmp_path / "s.zarr"
    _dist_problem.run(path)
    return path


def resume(path):
    """Resume a store that needs repair: (dataset, the repair warnings' text)."""
    with pytest.warns(lossatlas.StoreRepairWarning) as caught:
        ds = _dist_problem.run(path)
    return ds, " ".join(str(w.message) for w in caught)


def same(ds, reference):
    """Bit-identical loss and accuracy."""
    for name in ("loss", "accuracy"):
        np.testing.assert_array_equal(ds[name].values, reference[name].values)
