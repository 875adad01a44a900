import subprocess
import sys

import numpy as np
from PIL import Image
from typer.testing import CliRunner

import lossatlas
from lossatlas.cli import app


def test_demo_quick_in_process(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    img = np.asarray(Image.open(tmp_path / "mlp-digits-contour.png").convert("L"), dtype=float)
    assert img.std() > 5  # not blank
    ds = lossatlas.open_surface(tmp_path / "mlp-digits.zarr")
    assert ds.attrs["complete"] == 1


def test_console_script_runs_as_subprocess(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lossatlas", "demo", "--quick", "--out", str(tmp_path / "d"),
                          "--no-progress"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d" / "mlp-digits-contour.png").exists()
