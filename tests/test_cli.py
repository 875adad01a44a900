"""The CLI through typer's runner, and once as a real subprocess (the demo)."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import lossatlas
from lossatlas.cli import app, main

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(args))
    return result


def test_examples_lists_the_registry():
    r = invoke("examples")
    assert r.exit_code == 0
    for name in lossatlas.examples.names():
        assert name in r.output


def test_surface_plot_info_round_trip(tmp_path):
    store = tmp_path / "plane.zarr"
    r = invoke("surface", "mlp-digits", "--steps", "5", "--span", "0.5", "--store", str(store), "--no-progress",
               "--plot", str(tmp_path / "p.png"))
    assert r.exit_code == 0, r.output
    assert "loss at centre" in r.output and "5 × 5" in r.output
    assert (tmp_path / "p.png").exists()
    # resume: same arguments, nothing to do, same values
    r2 = invoke("surface", "mlp-digits", "--steps", "5", "--span", "0.5", "--store", str(store), "--no-progress")
    assert r2.exit_code == 0, r2.output
    for kind in ("contour", "filled", "heatmap", "surface3d", "html"):
        out = tmp_path / f"fig-{kind}.{'html' if kind == 'html' else 'png'}"
        r = invoke("plot", str(store), "--kind", kind, "--out", str(out), "--log")
        assert r.exit_code == 0, r.output
        assert out.stat().st_size > 2000
    r = invoke("info", str(store))
    assert r.exit_code == 0 and "yes (25/25 points)" in r.output and "filter" in r.output


def test_surface_1d_axes_and_overwrite(tmp_path):
    store = tmp_path / "line.zarr"
    r = invoke("surface", "seed-relu", "--dims", "1", "--directions", "axes:w0", "--steps", "9", "--span", "-1,1",
               "--store", str(store), "--no-progress")
    assert r.exit_code == 0, r.output
    r = invoke("surface", "seed-relu", "--dims", "1", "--directions", "axes:w1", "--steps", "9", "--store", str(store),
               "--no-progress")
    assert r.exit_code != 0  # different computation: refused without --overwrite
    r = invoke("surface", "seed-relu", "--dims", "1", "--directions", "axes:w1", "--steps", "9", "--store", str(store),
               "--no-progress", "--overwrite")
    assert r.exit_code == 0, r.output
    assert lossatlas.open_surface(store).x.attrs["long_name"] == "w1"
    r = invoke("plot", str(store), "--out", str(tmp_path / "l.svg"))
    assert r.exit_code == 0 and (tmp_path / "l.svg").exists()


def test_file_target_with_checkpoint(tmp_path):
    import torch

    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        import torch, lossatlas
        def make():
            torch.manual_seed(0)
            net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
            x = torch.randn(20, 3)
            return lossatlas.Problem(net, torch.nn.MSELoss(), (x, x.sum(1, keepdim=True)))
    """))
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    torch.save(net.state_dict(), tmp_path / "ckpt.pt")
    store = tmp_path / "s.zarr"
    r = invoke("surface", f"{tmp_path / 'mine.py'}:make", "--checkpoint", str(tmp_path / "ckpt.pt"), "--steps", "3",
               "--store", str(store), "--no-progress", "--dtype", "float64")
    assert r.exit_code == 0, r.output
    center, _ = lossatlas.open_directions(store)
    assert torch.equal(center["0.weight"], net[0].weight.detach().double())


@pytest.mark.parametrize("args, words", [
    (["surface", "no-such-example"], "TARGET must be an example name"),
    (["surface", "mlp-digits", "--dims", "5"], "--dims must be 1, 2, 3 or 4"),
    (["surface", "mlp-digits", "--steps", "0", "--no-progress"], "option --steps must be an integer >= 1"),
    (["surface", "mlp-digits", "--span", "wide"], "--span must be"),
    (["surface", "mlp-digits", "--dtype", "float8"], "--dtype must be one of"),
    (["plot", "/no/such/store.zarr"], "does not exist"),
])
def test_errors_are_one_line_with_exit_code_2(args, words, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err and "Traceback" not in err


def test_debug_shows_the_traceback():
    with pytest.raises(lossatlas.LossAtlasError):
        main(["--debug", "surface", "no-such-example"])


def test_demo_quick_as_a_real_subprocess(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "lossatlas", "demo", "--quick", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    for name in summary["figures"]:
        img = np.asarray(Image.open(out / name).convert("L"), dtype=float)
        assert img.std() > 10, name
    md = (out / "summary.md").read_text()
    for name in summary["figures"]:
        assert f"({name})" in md
    seed = summary["sections"][0]
    # the numbers it claims are the numbers of the stores and the problem
    ex = lossatlas.examples.load("seed-relu")
    assert np.isclose(seed["loss_at_theta"], ex.problem.loss(ex.center))
    assert seed["jensen_gap"] > 0 and seed["loss_at_midpoint"] > max(seed["loss_at_theta"], seed["loss_at_twin"])
    pair = summary["sections"][1]["models"]
    assert pair["logreg-mse"]["slice"]["proves_nonconvex_slice"] is True
    assert pair["logreg-bce"]["slice"]["proves_nonconvex_slice"] is False
    mlp = summary["sections"][2]
    ds = lossatlas.open_surface(out / "mlp-digits-plane.zarr")
    assert ds.attrs["complete"] == 1 and np.isclose(float(np.nanmax(ds.loss)), mlp["loss_max"])
    # the stores reopen with the CLI
    r = invoke("info", str(out / "seed-relu-plane.zarr"))
    assert r.exit_code == 0, r.output


def test_audit_verify_compare_commands(tmp_path):
    cert = tmp_path / "seed.npz"
    r = invoke("audit", "seed-relu", "--budget", "60", "--save-certificate", str(cert), "--no-progress",
               "--json", str(tmp_path / "a.json"))
    assert r.exit_code == 0, r.output
    assert "non-convex (proven)" in r.output and cert.exists()
    assert json.loads((tmp_path / "a.json").read_text())["proven_nonconvex"] is True
    r = invoke("verify", str(cert), "seed-relu")
    assert r.exit_code == 0 and "VALID" in r.output
    # the same certificate does not prove anything about another problem
    r = invoke("verify", str(cert), "logreg-mse")
    assert r.exit_code != 0
    r = invoke("audit", "logreg-bce", "--budget", "40", "--no-progress")
    assert r.exit_code == 0 and "no violation found" in r.output
    r = invoke("compare", "logreg-bce", "seed-relu", "--budget", "40", "--out", str(tmp_path / "c.png"),
               "--no-progress")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c.png").exists() and "λmin" in r.output


def test_surface_of_the_seed_net_works_with_default_options(capsys):
    """Every parameter of the seed net is a scalar: the default --ignore (auto) moves them all and
    says so, instead of refusing the default command (an explicit --ignore biasbn is still refused)."""
    with pytest.raises(SystemExit) as code:
        main(["surface", "seed-relu", "--steps", "5", "--no-progress"])
    out = capsys.readouterr()
    assert code.value.code == 0, out.err
    assert "using --ignore none" in " ".join(out.out.split())
    with pytest.raises(SystemExit) as code:
        main(["surface", "seed-relu", "--steps", "5", "--no-progress", "--ignore", "biasbn"])
    assert code.value.code == 2 and "ignore" in capsys.readouterr().err


def test_surface_default_ignore_leaves_biases_out_where_there_are_weights(capsys):
    with pytest.raises(SystemExit) as code:
        main(["surface", "logreg-bce", "--steps", "3", "--no-progress"])
    out = capsys.readouterr()
    assert code.value.code == 0, out.err
    assert "using --ignore none" not in " ".join(out.out.split())
