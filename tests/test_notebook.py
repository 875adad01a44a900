"""Results in a notebook: short reprs, each figure shown once, no progress noise (executed by nbclient)."""
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

SRC = str(Path(__file__).resolve().parents[1] / "src")

CELLS = [
    "import warnings; warnings.simplefilter('default')\n"
    "import torch, lossatlas\n"
    "ex = lossatlas.examples.load('seed-relu')",
    # a surface with the default progress=True: no bar, no ipywidgets warning in a notebook
    "d = ex.default_directions(n=2, seed=0)\n"
    "ds = lossatlas.surface(ex.problem, ex.center, d, steps=7, span=0.5)",
    "a = lossatlas.convexity.audit(ex.problem, ex.center, budget=40, progress=False, name='seed-relu')\na",
    "a.certificates[0]",
    "lossatlas.curvature.eigenvalues(ex.problem, ex.center, k=2, progress=False)",
    "lossatlas.curvature.density(ex.problem, ex.center, iters=10, probes=2, progress=False)",
    "%matplotlib inline\nlossatlas.plot.contour(ds)",
]


def _run(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    env.pop("LOSSATLAS_PROGRESS", None)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    from jupyter_client.kernelspec import NoSuchKernel

    old = os.environ.copy()
    os.environ.update(env)
    try:
        client.execute()
    except NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel installed")
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


def test_notebook_reprs_figures_and_progress(tmp_path):
    nb = _run(tmp_path)
    outs = [c.outputs for c in nb.cells]
    # no progress bar or ipywidgets warning from the default surface
    for o in outs[1]:
        text = o.get("text", "") + str(o.get("data", {}))
        assert "ipywidgets" not in text and "points/s" not in text, text
    for i, name in ((2, "Audit"), (3, "Certificate"), (4, "Eigen"), (5, "Density")):
        results = [o for o in outs[i] if o.output_type == "execute_result"]
        assert len(results) == 1, outs[i]
        data = results[0]["data"]
        assert "text/html" in data and name.lower() in data["text/html"].lower()
        assert len(data["text/plain"]) < 700 and len(data["text/html"]) < 3000, (name, len(data["text/plain"]))
        assert "tensor(" not in data["text/plain"] and "tensor(" not in data["text/html"]
    # the figure: displayed exactly once
    images = [o for o in outs[6] if "image/png" in o.get("data", {})]
    assert len(images) == 1, [o.get("output_type") for o in outs[6]]
    assert all("ipywidgets" not in str(o) for cell in outs for o in cell)
