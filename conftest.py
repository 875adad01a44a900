"""Repository-wide pytest configuration (applies to tests/ and to the doctests under src/)."""
import os
import tempfile

# One thread per process by default (before numpy, torch or any subprocess starts): the test problems
# are small, so a second thread mostly adds synchronisation, and on a busy 2-core machine every
# parallel region can wait for a descheduled thread — a float64 Hessian-vector product took 100 ms
# with two threads instead of 0.5 ms with one while another process used the other core, which made
# the suite 4× slower. The full suite takes about as long either way on an idle machine (142 s vs 150 s).
# LOSSATLAS_TEST_THREADS=2 runs it with two threads.
_THREADS = os.environ.get("LOSSATLAS_TEST_THREADS", "1")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = _THREADS

import matplotlib  # noqa: E402

matplotlib.use("Agg")

# Trained example weights are cached per test session (not in the user's ~/.cache), unless the caller
# points LOSSATLAS_CACHE somewhere on purpose (e.g. to reuse a warm cache across runs).
os.environ.setdefault("LOSSATLAS_CACHE", os.path.join(tempfile.gettempdir(), "lossatlas-test-cache"))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    """Close every matplotlib figure a test leaves open (keeps memory flat across the suite)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
