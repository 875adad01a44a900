"""Results in a notebook: short reprs, each figure shown once, no progress noise (executed by nbclient)."""
import json
import os
import re
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
    "ds",
    "ds.lossatlas",
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
    # a Dataset: xarray's own repr, its 29 attrs collapsed (HTML) or cut at 12 rows (text), never a tensor;
    # ds.lossatlas: the few lines about it
    (shown,) = [o for o in outs[7] if o.output_type == "execute_result"]
    plain, page = shown["data"]["text/plain"], shown["data"]["text/html"]
    assert len(plain) < 1200 and len(plain.splitlines()) <= 24 and "tensor(" not in plain, plain
    attrs_box = re.search(r"<input id='section-[^']+' class='xr-section-summary-in' type='checkbox'[^>]*>"
                          r"<label[^>]*>Attributes: <span>\((\d+)\)", page)
    assert attrs_box and int(attrs_box.group(1)) > 10 and "checked" not in attrs_box.group(0), page[-3000:]
    (short,) = [o for o in outs[8] if o.output_type == "execute_result"]
    assert len(short["data"]["text/plain"]) < 600 and len(short["data"]["text/plain"].splitlines()) <= 10
    assert len(short["data"]["text/html"]) < 2000 and "lossatlas surface" in short["data"]["text/html"]


def test_dataset_summary_is_short_and_attrs_decode_everything(tmp_path):
    """``ds.lossatlas`` of an in-memory, a stored and a netCDF-reopened result: a few lines; nothing lost."""
    import xarray as xr

    import lossatlas

    ex = lossatlas.examples.load("seed-relu")
    d = ex.default_directions(n=2, seed=0)
    mem = lossatlas.surface(ex.problem, ex.center, d, steps=5, span=0.5, progress=False)
    lossatlas.surface(ex.problem, ex.center, d, steps=5, span=0.5, progress=False, store=tmp_path / "p.zarr")
    stored = lossatlas.open_surface(tmp_path / "p.zarr")
    mem.to_netcdf(tmp_path / "p.nc")
    with xr.open_dataset(tmp_path / "p.nc") as nc:
        nc_attrs, nc_text = nc.lossatlas.attrs, repr(nc.lossatlas)
    for ds, where in ((mem, "in memory"), (stored, str(tmp_path / "p.zarr"))):
        text, page = repr(ds.lossatlas), ds.lossatlas._repr_html_()
        assert text.startswith("lossatlas surface") and len(text) < 600 and len(text.splitlines()) <= 10, text
        assert len(page) < 2000 and "tensor(" not in text + page
        assert f"store: {where}" in text and "points: 25/25 points" in text
        assert ds.lossatlas.attrs == lossatlas.attrs(ds)  # every attribute, decoded
        assert ds.lossatlas.provenance == json.loads(ds.attrs["provenance"])
    assert nc_attrs == lossatlas.attrs(mem) and "store: in memory" in nc_text
    assert lossatlas.attrs(mem)["direction_labels"] == ["w0", "w1"]
