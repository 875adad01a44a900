"""Repository-wide pytest configuration (applies to tests/ and to the doctests under src/)."""
import os
import tempfile

import matplotlib

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
