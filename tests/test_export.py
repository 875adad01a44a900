"""Exports other tools open: netCDF (xarray), VTK (.vts XML, .vtu via meshio), CSV; round trips."""
import csv
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

import lossatlas
from lossatlas import export as E
from lossatlas._ncattrs import JSON_KEYS, LIST_KEYS, netcdf_safe
from lossatlas.cli import app

runner = CliRunner()


def _problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    x = torch.randn(32, 2)
    return lossatlas.Problem(net, torch.nn.MSELoss(), (x, x.sum(1, keepdim=True)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exports")
    p = _problem()
    d2 = lossatlas.directions.random(p, n=2, seed=0)
    d1 = lossatlas.directions.random(p, n=1, seed=1)
    out = {
        "plane": lossatlas.surface(p, None, d2, steps=(5, 4), span=1.0, progress=False),
        "stored": lossatlas.surface(p, None, d2, steps=5, span=0.5, progress=False, store=tmp / "s.zarr"),
        "line": lossatlas.surface(p, None, d1, steps=7, span=1.0, progress=False),
    }
    a = p.params()
    b = {k: v + 0.1 for k, v in a.items()}
    out["interpolation"] = lossatlas.interpolate(p, a, b, steps=5, progress=False)
    out["curve"] = lossatlas.Curve("bezier", [a, {k: (x + y) / 2 + 0.05 for (k, x), y in zip(a.items(), b.values())}, b]
                                   ).evaluate(5, problem=p)
    out["ratio"] = lossatlas.curvature.ratio_map(p, None, d2, steps=3, span=0.5, progress=False)
    return out


def test_attrs_are_netcdf_safe_and_decode():
    attrs = netcdf_safe({"labels": ["a", "b"], "n": [1, 2], "flag": True, "none": None, "nested": {"a": [1]},
                         "empty": [], "s": "x"})
    assert attrs["n"] == [1, 2] and attrs["flag"] == 1 and attrs["s"] == "x"
    assert isinstance(attrs["labels"], str) and set(attrs[JSON_KEYS].split(",")) == {"labels", "none", "nested",
                                                                                        "empty"}
    back = lossatlas.attrs(attrs)
    assert back["labels"] == ["a", "b"] and back["none"] is None and back["nested"] == {"a": [1]} and back["empty"] == []
    assert netcdf_safe(attrs) == attrs  # idempotent
    # netCDF reads a one-element array attribute back as a scalar: decoded as the list it was
    one = netcdf_safe({"rank_points": [49], "n": 3})
    assert one[LIST_KEYS] == "rank_points"
    read_back = {**one, "rank_points": np.int64(49)}
    assert lossatlas.attrs(read_back) == {"rank_points": [49], "n": 3} == lossatlas.attrs(netcdf_safe(read_back))


@pytest.mark.parametrize("engine", ["scipy", "netcdf4"])
def test_to_netcdf_of_every_result_works_as_is(results, tmp_path, engine):
    if engine == "netcdf4":
        pytest.importorskip("netCDF4")
    for name, ds in results.items():
        path = tmp_path / f"{name}.nc"
        ds.to_netcdf(path, engine=engine)  # as is: no clean-up by the user
        back = xr.open_dataset(path, engine=engine)
        for v in ds.data_vars:
            np.testing.assert_array_equal(back[v].values, ds[v].values)
        assert lossatlas.attrs(back) == lossatlas.attrs(ds), name  # every attribute (one-element lists too)
        back.close()


def test_reopened_store_keeps_lists_readable(results):
    ds = results["stored"]
    assert isinstance(ds.attrs["direction_labels"], str)  # JSON, listed in lossatlas_json_attrs
    labels = lossatlas.attrs(ds)["direction_labels"]
    assert len(labels) == 2 and all("random direction" in s for s in labels)
    assert isinstance(lossatlas.attrs(ds)["chunk_shape"], list)  # numbers stay numeric arrays


def test_vts_round_trip(results, tmp_path):
    ds = results["plane"]
    path = E.export(ds, tmp_path / "p.vts")
    root = ET.parse(path).getroot()
    assert root.get("type") == "StructuredGrid"
    piece = root.find("StructuredGrid/Piece")
    assert piece.get("Extent") == "0 4 0 3 0 0"
    pts = np.array(piece.find("Points/DataArray").text.split(), dtype=float).reshape(-1, 3)
    arrays = {a.get("Name"): np.array(a.text.split(), dtype=float) for a in piece.find("PointData")}
    assert set(arrays) == set(ds.data_vars)
    # VTK order: x fastest
    loss = arrays["loss"].reshape(4, 5).T
    np.testing.assert_array_equal(loss, ds.loss.values)
    np.testing.assert_array_equal(pts[:5, 0], ds.x.values)
    np.testing.assert_array_equal(pts[::5, 1], ds.y.values)
    try:
        import vtk  # noqa: F401
    except ImportError:
        return
    from vtk.util.numpy_support import vtk_to_numpy  # pragma: no cover - only where VTK is installed

    reader = vtk.vtkXMLStructuredGridReader()
    reader.SetFileName(str(path))
    reader.Update()
    got = vtk_to_numpy(reader.GetOutput().GetPointData().GetArray("loss"))
    np.testing.assert_array_equal(got.reshape(4, 5).T, ds.loss.values)


def test_vtu_round_trip_with_meshio(results, tmp_path):
    meshio = pytest.importorskip("meshio")
    for name in ("plane", "line"):
        ds = results[name]
        path = E.export(ds, tmp_path / f"{name}.vtu")
        mesh = meshio.read(path)
        assert set(mesh.point_data) == set(ds.data_vars)
        np.testing.assert_array_equal(mesh.point_data["loss"], ds.loss.values.ravel(order="F"))
        assert mesh.cells[0].type == ("quad" if name == "plane" else "line")


def test_csv_round_trip(results, tmp_path):
    pd = pytest.importorskip("pandas")
    ds = results["plane"]
    path = E.export(ds, tmp_path / "p.csv")
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == ds.loss.size and list(rows[0])[:2] == ["x", "y"]
    frame = pd.read_csv(path)
    for _, row in frame.iterrows():
        assert float(ds.loss.sel(x=row["x"], y=row["y"])) == row["loss"]


def test_export_refuses_what_it_cannot_write(results, tmp_path):
    with pytest.raises(lossatlas.InvalidArgumentError, match="suffix|ending"):
        E.export(results["plane"], tmp_path / "p.txt")
    with pytest.raises(lossatlas.InvalidArgumentError, match="format"):
        E.export(results["plane"], tmp_path / "p.nc", format="vtk9")


def test_cli_export_surface(results, tmp_path):
    store = results["stored"].attrs["store"]
    for fmt, suffix in (("netcdf", ".nc"), ("vts", ".vts"), ("csv", ".csv")):
        out = tmp_path / f"s{suffix}"
        r = runner.invoke(app, ["export-surface", store, "--format", fmt, "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert out.exists() and "wrote" in r.output
    back = xr.open_dataset(tmp_path / "s.nc")
    np.testing.assert_array_equal(back.loss.values, results["stored"].loss.values)
    back.close()
    r = runner.invoke(app, ["export-surface", store, "--format", "png", "--out", str(tmp_path / "x.png")])
    assert r.exit_code != 0 and "--format" in str(r.exception)
