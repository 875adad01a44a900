"""Repository-wide pytest configuration (applies to tests/ and to the doctests under src/)."""
import os
import tempfile

import matplotlib

matplotlib.use("Agg")

# Trained example weights are cached per test session (not in the user's ~/.cache), unless the caller
# points LOSSATLAS_CACHE somewhere on purpose (e.g. to reuse a warm cache across runs).
os.environ.setdefault("LOSSATLAS_CACHE", os.path.join(tempfile.gettempdir(), "lossatlas-test-cache"))
