"""The interactive HTML page really renders (plotly + WebGL) in headless Chromium."""
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

import lossatlas

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=900,700", "--virtual-time-budget=8000"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_interactive_surface_renders_in_a_browser(tmp_path):
    ex = lossatlas.examples.load("seed-relu")
    ds = lossatlas.surface(ex.problem, ex.center, ex.default_directions(), steps=21, progress=False)
    page = lossatlas.plot.save_html(lossatlas.plot.interactive(ds), tmp_path / "s.html")
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    page.as_uri()], capture_output=True, timeout=120, check=False)
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    centre = img[150:550, 150:650]
    saturation = centre.max(axis=2) - centre.min(axis=2)
    # the viridis surface is drawn: many strongly coloured pixels where the axes alone are grey/white
    assert (saturation > 60).mean() > 0.05
