"""CLI habits: --version, --threads, flags in errors, --dims up to 4, axes: whole layers, plot --at,
"nothing was saved", tables that wrap, compare with file targets, plot of a ratio map."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import lossatlas
from lossatlas.cli import app, main

runner = CliRunner()
SRC = str(Path(__file__).resolve().parents[1] / "src")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def run_main(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_version(capsys):
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and f"lossatlas {lossatlas.__version__}" in out


def test_threads_anywhere_and_from_env(tmp_path, capsys, keep_threads, monkeypatch):
    store = tmp_path / "s.zarr"
    code, out, err = run_main(capsys, "surface", "seed-relu", "--directions", "example", "--steps", "3", "--store",
                              store, "--no-progress", "--threads", "1")
    assert code == 0, err
    assert json.loads(lossatlas.open_surface(store).attrs["provenance"])["threads"] == 1  # recorded
    monkeypatch.setenv("LOSSATLAS_THREADS", "2")
    store2 = tmp_path / "s2.zarr"
    code, _, err = run_main(capsys, "surface", "seed-relu", "--directions", "example", "--steps", "3", "--store",
                            store2, "--no-progress")
    assert code == 0, err
    assert json.loads(lossatlas.open_surface(store2).attrs["provenance"])["threads"] == 2
    monkeypatch.setenv("LOSSATLAS_THREADS", "many")
    code, _, err = run_main(capsys, "examples")
    assert code == 2 and "LOSSATLAS_THREADS" in err
    monkeypatch.delenv("LOSSATLAS_THREADS")
    code, _, err = run_main(capsys, "examples", "--threads", "0")
    assert code == 2 and "--threads" in err


def test_errors_name_cli_flags(tmp_path, capsys):
    store = tmp_path / "s.zarr"
    args = ["surface", "seed-relu", "--directions", "example", "--store", store, "--no-progress"]
    assert run_main(capsys, *args, "--steps", "3")[0] == 0
    code, _, err = run_main(capsys, *args, "--steps", "5")
    assert code == 2 and "--overwrite" in err and "overwrite=True" not in err and "--store" in err, err
    code, _, err = run_main(capsys, "surface", "seed-relu", "--steps", "3", "--ignore", "biasbn")  # nothing to move
    assert code == 2 and "--ignore" in err and "argument 'ignore'" not in err


def test_dims_3_and_4(tmp_path):
    store = tmp_path / "v.zarr"
    r = invoke("surface", "mlp-digits", "--dims", "3", "--steps", "3", "--span", "0.2", "--store", store,
               "--no-progress")
    assert r.exit_code == 0, r.output
    assert lossatlas.open_surface(store).loss.dims == ("x", "y", "z")
    r = invoke("surface", "mlp-digits", "--dims", "4", "--steps", "2", "--span", "0,0.2", "--no-progress")
    assert r.exit_code == 0, r.output
    r = invoke("surface", "mlp-digits", "--dims", "5")
    assert r.exit_code != 0 and "--dims" in str(r.exception)
    r = invoke("plot", store, "--out", tmp_path / "v.png")
    assert r.exit_code != 0 and "--at" in str(r.exception)
    r = invoke("plot", store, "--at", "z=0", "--out", tmp_path / "v.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "v.png").stat().st_size > 2000


def test_axes_whole_layer(tmp_path):
    store = tmp_path / "l.zarr"
    r = invoke("surface", "mlp-digits", "--dims", "2", "--directions", "axes:0.weight,2.bias[3]", "--steps", "3",
               "--span", "0.5", "--store", store, "--no-progress")
    assert r.exit_code == 0, r.output
    _, dirs = lossatlas.open_directions(store)
    center = lossatlas.examples.load("mlp-digits").center
    d = dirs.vectors[0]
    assert torch.allclose(d["0.weight"], center["0.weight"] / center["0.weight"].norm())
    assert all(float(v.abs().sum()) == 0 for k, v in d.items() if k != "0.weight")
    assert float(dirs.vectors[1]["2.bias"][3]) == 1.0
    assert "whole tensor" in lossatlas.attrs(lossatlas.open_surface(store))["direction_labels"][0]


def test_plot_slice_of_a_plane_and_name_in_title(tmp_path):
    store = tmp_path / "p.zarr"
    r = invoke("surface", "mlp-digits", "--steps", "5", "--span", "0.5", "--store", store, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "nothing was saved" not in r.output
    assert lossatlas.open_surface(store).attrs["name"] == "mlp-digits"  # plots drawn later are titled by it
    r = invoke("plot", store, "--kind", "line", "--at", "y=0.1")
    assert r.exit_code == 0, r.output
    assert "nearest grid value" in r.output and (tmp_path / "p-y0-line.png").exists()
    r = invoke("plot", store, "--at", "q=0")
    assert r.exit_code != 0 and "--at" in str(r.exception)


def test_surface_without_store_says_nothing_was_saved():
    r = invoke("surface", "seed-relu", "--directions", "example", "--steps", "3", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "nothing was saved" in r.output and "--store" in r.output


def test_tables_wrap_in_a_pipe_at_60_columns():
    env = dict(os.environ, COLUMNS="60", PYTHONPATH=SRC)
    out = subprocess.run([sys.executable, "-m", "lossatlas", "examples"], capture_output=True, text=True, env=env,
                         timeout=120).stdout
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 60
    for name in lossatlas.examples.names():
        assert name in out


def test_compare_accepts_file_targets(tmp_path):
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        import torch, lossatlas
        def make():
            torch.manual_seed(0)
            x = torch.randn(40, 3)
            return lossatlas.Problem(torch.nn.Linear(3, 1), torch.nn.MSELoss(), (x, x.sum(1, keepdim=True)))
    """))
    r = invoke("compare", f"{tmp_path / 'mine.py'}:make", "logreg-mse", "--budget", "40", "--methods", "jensen",
               "--no-progress")
    assert r.exit_code == 0, r.output
    assert "make" in r.output and "logreg-mse" in r.output


def test_plot_of_a_ratio_map_draws_the_ratio(tmp_path):
    store = tmp_path / "ratio.zarr"
    r = invoke("ratio-map", "seed-relu", "--steps", "3", "--span", "0.5", "--store", store, "--no-progress")
    assert r.exit_code == 0, r.output
    r = invoke("plot", store)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ratio-ratio.png").exists()
