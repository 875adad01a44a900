"""``lossatlas report``: the page renders offline in headless Chromium with every section, its
numbers are the stored results, it is resumable, says when a store is still being computed; and
``plot.grid`` puts several results on shared scales."""
import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import lossatlas
from lossatlas.report import SECTIONS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost", "--proxy-server=127.0.0.1:9",
         "--virtual-time-budget=5000"]
SMALL = {"steps": 7, "slice_steps": 11, "audit_budget": 20, "trace_probes": 3, "density_iters": 6,
         "density_probes": 1}

USER = '''
import torch, lossatlas

def make():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = torch.tanh(x @ torch.tensor([[1.0], [-2.0], [0.5]]))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    return lossatlas.Problem(net, torch.nn.MSELoss(), (x, y))
'''


class _Numbers(HTMLParser):
    """The page's numbers (data-key/data-value spans with their text) and its sections."""

    def __init__(self):
        super().__init__()
        self.numbers, self.sections, self._open, self.data = [], [], None, None
        self._json = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and "data-key" in a:
            self._open = [a["data-key"], a["data-value"], ""]
        if tag == "section":
            self.sections.append(a.get("data-section"))
        if tag == "script" and a.get("id") == "lossatlas-data":
            self._json = True

    def handle_data(self, data):
        if self._open is not None:
            self._open[2] += data
        if self._json:
            self.data = json.loads(data)
            self._json = False

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.numbers.append(tuple(self._open))
            self._open = None


def _stored(folder: Path, where: str):
    """The value a page number claims to come from: ``file#field`` of the target's folder."""
    from lossatlas.demo import second_difference_check

    file, _, path = where.partition("#")
    if file.endswith(".json"):
        value = json.loads((folder / file).read_text())
        for part in path.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        return value
    ds = lossatlas.open_surface(folder / file)
    if path == "second_difference.min":
        return second_difference_check(ds)["min_second_difference"]
    var, _, what = path.partition("@") if "@" in path else path.partition(".")
    if "@" in path:
        return float(ds[var].sel(dict(zip(ds[var].dims, [float(c) for c in what.split(",")]))))
    return float({"min": np.nanmin, "max": np.nanmax}[what](ds[var].values))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    (tmp / "nets.py").write_text(USER)
    targets = ["logreg-mse", "seed-relu", f"{tmp / 'nets.py'}:make"]
    t0 = time.perf_counter()
    page = lossatlas.report(targets, out=tmp / "report.html", settings=SMALL)
    return page, time.perf_counter() - t0, targets


def test_every_section_and_number_comes_from_the_stored_results(made):
    page, _, targets = made
    text = page.read_text()
    parser = _Numbers()
    parser.feed(text)
    assert parser.sections == list(SECTIONS)
    assert parser.data["targets"] == ["logreg-mse", "seed-relu", "nets.py:make"]
    assert len(parser.numbers) > 60
    files = page.with_name("report_files")
    for key, value, shown in parser.numbers:
        target, _, where = key.partition("/")
        stored = _stored(files / target, where)
        if stored is None or (isinstance(stored, float) and not math.isfinite(stored)):
            assert value == "null" and shown == "–", key
            continue
        assert float(value) == float(stored), (key, value, stored)  # the exact stored value
        assert parser.data["numbers"][key] == float(stored)
        assert abs(float(shown) - float(stored)) <= 0.05 * abs(float(stored)) + 0.051, (key, shown, stored)
    # a static 3-D picture of each plane (readable without JavaScript), θ marked by a red star
    stills = re.findall(r'<div class="static3d" id="[^"]+"><img class="static" alt="([^"]+)" '
                        r'src="data:image/png;base64,([^"]+)"', text)
    assert len(stills) == 3 and all("θ marked" in alt for alt, _ in stills)
    from PIL import Image

    for _, data in stills:
        rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=int)
        assert rgb.shape[0] > 200 and rgb.std() > 20
        red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
        assert red.sum() >= 5  # the star at θ
    # the verdicts: seed-relu is proven non-convex, with a certificate file that `lossatlas verify` accepts
    audit = json.loads((files / "seed-relu" / "audit.json").read_text())
    assert audit["proven_nonconvex"] and (files / "seed-relu" / "certificate.npz").exists()
    assert "lossatlas verify report_files/seed-relu/certificate.npz seed-relu" in text
    cert = lossatlas.convexity.Certificate.load(files / "seed-relu" / "certificate.npz")
    assert cert.verify(lossatlas.examples.load("seed-relu").problem)


def test_page_is_self_contained_and_small(made):
    page, seconds, _ = made
    text = page.read_text()
    from plotly.offline import get_plotlyjs

    assert page.stat().st_size < 10e6
    assert text.count(get_plotlyjs()[:300]) == 1  # plotly.js inlined once
    own = text.replace(get_plotlyjs(), "")  # the page's own markup: nothing it loads comes from a network
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", own)
    assert "<img class=\"static\"" in text and "<table>" in text  # readable without JavaScript
    assert seconds < 60, seconds


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_renders_in_headless_chromium_without_errors(made, tmp_path):
    page, _, _ = made
    shot = tmp_path / "shot.png"
    # one launch: the DOM after the scripts ran (stdout) and a screenshot
    dom = subprocess.run([CHROMIUM, *FLAGS, "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'p'}",
                          "--window-size=1400,2200", f"--screenshot={shot}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=180, check=False)
    root = re.search(r"<html[^>]*>", dom.stdout)
    assert root and 'data-js-done="1"' in root.group(0), (dom.stdout[:300], dom.stderr[-2000:])
    assert "data-js-errors" not in root.group(0), root.group(0)  # the page's guard writes script errors there
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not [c for c in console if "rror" in c or "Uncaught" in c], console
    assert dom.stdout.count('class="js-plotly-plot"') >= 3 or dom.stdout.count("plot-container") >= 3
    assert dom.stdout.count('class="static3d drawn"') == 3  # each static picture gives way to its drawn 3-D view
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.std() > 20  # text, tables and figures: not a blank page


def test_report_is_resumable(made):
    page, _, targets = made
    again = page.parent / "again"  # the user target's results, copied: the module's page stays as it is
    shutil.copytree(page.with_name("report_files") / "nets.py-make", again / "report_files" / "nets.py-make")
    t0 = time.perf_counter()
    lossatlas.report(targets[-1:], out=again / "report.html", settings=SMALL)
    assert time.perf_counter() - t0 < 30
    prov = json.loads((again / "report_files" / "nets.py-make" / "provenance.json").read_text())
    assert {"plane.zarr", "slice-x.zarr", "slice-y.zarr", "audit.json", "curvature.json"} <= set(prov["reused"])


def test_a_store_still_being_computed_is_reported_incomplete(tmp_path):
    (tmp_path / "nets.py").write_text(USER)
    target = f"{tmp_path / 'nets.py'}:make"
    settings = {**SMALL, "chunk": 2}
    trace = tmp_path / "trace.txt"
    env = {**os.environ, "LOSSATLAS_DEBUG_TRACE": str(trace), "LOSSATLAS_DEBUG_PAUSE": "done=0.4"}
    code = (f"import lossatlas; lossatlas.report([{target!r}], out={str(tmp_path / 'r.html')!r}, "
            f"settings={settings!r}, sections=['plane'])")
    writer = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if trace.exists() and trace.read_text().count("done") >= 3:
                break
            time.sleep(0.05)
        assert trace.exists(), "the writer never started"
        page = lossatlas.report([target], out=tmp_path / "r.html", settings=settings, sections=["plane"])
    finally:
        writer.kill()
        writer.wait()
    text = page.read_text()
    assert 'id="incomplete"' in text
    m = re.search(r"plane\.zarr: (\d+)/(\d+) points", text)
    assert m and 0 < int(m.group(1)) < int(m.group(2)) == 49, text[text.find("incomplete"):][:400]


def test_report_cli(tmp_path, monkeypatch):
    from lossatlas.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["report", "seed-relu", "--out", "r.html", "--section", "nope"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["report", "linreg-mse", "--out", "r.html", "--steps", "5", "--budget", "20", "--section", "verdict",
              "--section", "plane"])
    assert exc.value.code == 0
    text = (tmp_path / "r.html").read_text()
    assert 'data-section="verdict"' in text and 'data-section="slices"' not in text
    assert (tmp_path / "r_files" / "linreg-mse" / "plane.zarr").exists()
    with pytest.raises(SystemExit) as exc:  # other settings: the report's own stores are replaced
        main(["report", "linreg-mse", "--out", "r.html", "--steps", "7", "--budget", "20", "--section", "plane"])
    assert exc.value.code == 0
    assert lossatlas.open_surface(tmp_path / "r_files" / "linreg-mse" / "plane.zarr").sizes["x"] == 7
    for name in ("audit.json", "plane.zarr"):  # `lossatlas info` shows every stored result
        with pytest.raises(SystemExit) as exc:
            main(["info", f"r_files/linreg-mse/{name}"])
        assert exc.value.code == 0


def test_report_checkpoint_keeps_batchnorm_statistics(tmp_path, monkeypatch, capsys):
    """``--checkpoint`` per target, loaded as every command loads it: BatchNorm statistics and frozen
    entries included; a count that does not match the targets is a one-line error."""
    from test_cli_checkpoint import TARGET, _load_target, _python_loss, _train

    from lossatlas.cli import main
    from lossatlas.testing import assert_close

    (tmp_path / "target.py").write_text(TARGET)
    module = _load_target(tmp_path / "target.py")
    trained = _train(module)
    torch.save(trained.state_dict(), tmp_path / "sd.pt")
    expected, _ = _python_loss(module, trained.state_dict())
    without = module.make()  # the checkpoint's trainable entries with the TARGET's own buffers: far off
    stale = without.loss({k: v for k, v in trained.state_dict().items() if k in without.param_names})
    assert abs(stale - expected) > 0.5 * expected
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["report", "target.py:make", "seed-relu", "--checkpoint", "sd.pt", "--checkpoint", "-", "--out", "r.html",
              "--steps", "3", "--section", "plane", "--section", "provenance"])
    assert exc.value.code == 0
    folder = tmp_path / "r_files" / "target.py-make-sd.pt"
    ds = lossatlas.open_surface(folder / "plane.zarr")
    assert_close(float(ds.loss.sel(x=0.0, y=0.0)), expected, torch.float32, what="loss at θ", factor=10)
    prov = json.loads((folder / "provenance.json").read_text())
    assert {k: prov["checkpoint"][k] for k in ("file", "entries", "trainable", "frozen", "buffers")} == \
        {"file": "sd.pt", "entries": 11, "trainable": 6, "frozen": 2, "buffers": 3}
    assert json.loads((tmp_path / "r_files" / "seed-relu" / "provenance.json").read_text())["checkpoint"] is None
    parser = _Numbers()
    parser.feed((tmp_path / "r.html").read_text())
    keys = {k for k, _, _ in parser.numbers}
    assert {"target.py-make-sd.pt/provenance.json#checkpoint.buffers",
            "target.py-make-sd.pt/plane.zarr#loss@0,0"} <= keys, keys
    for key, value, _ in parser.numbers:  # the page says what the files hold
        target, _, where = key.partition("/")
        stored = _stored(tmp_path / "r_files" / target, where)
        assert (value == "null") if stored is None else float(value) == float(stored), key
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["report", "target.py:make", "seed-relu", "--checkpoint", "sd.pt", "--out", "r2.html"])
    err = capsys.readouterr().err
    assert exc.value.code != 0 and "--checkpoint must be given once per TARGET" in err and "received 1" in err, err
    with pytest.raises(lossatlas.InvalidArgumentError, match="checkpoints"):
        lossatlas.report(["seed-relu", "logreg-mse"], out=tmp_path / "x.html", checkpoints=["sd.pt"])


def test_report_rejects_bad_arguments(tmp_path):
    with pytest.raises(lossatlas.InvalidArgumentError, match="out"):
        lossatlas.report("seed-relu", out=tmp_path / "r.txt")
    with pytest.raises(lossatlas.InvalidArgumentError, match="sections"):
        lossatlas.report("seed-relu", out=tmp_path / "r.html", sections=["nope"])
    with pytest.raises(lossatlas.InvalidArgumentError, match="settings"):
        lossatlas.report("seed-relu", out=tmp_path / "r.html", settings={"stepz": 3})
    with pytest.raises(lossatlas.InvalidArgumentError, match="TARGET"):
        lossatlas.report("no-such-example", out=tmp_path / "r.html")


def test_a_section_is_one_function_and_one_registration(tmp_path):
    from lossatlas.report import section

    @section("extra", "An extra section")
    def extra(page):
        return page.columns([page.num(t, "provenance.json#parameters", t.provenance["parameters"], "d")
                             for t in page.targets])
    try:
        page = lossatlas.report("seed-relu", out=tmp_path / "r.html", sections=["provenance", "extra"],
                                settings=SMALL)
        assert 'data-section="extra"' in page.read_text()
    finally:
        SECTIONS.pop("extra")
    # a section says which stored results it draws: only those are computed
    assert SECTIONS["provenance"].needs == () and SECTIONS["plane"].needs == ("plane",)
    lossatlas.report("logreg-mse", out=tmp_path / "p.html", sections=["provenance"], settings=SMALL)
    assert sorted(p.name for p in (tmp_path / "p_files" / "logreg-mse").iterdir()) == ["provenance.json"]
    with pytest.raises(lossatlas.InvalidArgumentError, match="needs"):
        section("bad", "Bad", needs=("plane", "nope"))


# --- plot.grid: several results on shared scales ---------------------------------------------------------

def _plane(scale, name, offset=0.0):
    a = np.linspace(-1, 1, 9)
    return xr.Dataset({"loss": (("x", "y"), offset + scale * np.add.outer(a ** 2, a ** 2))},
                      coords={"x": a, "y": a}, attrs={"name": name})


def test_grid_shares_levels_colour_range_and_axes():
    import matplotlib

    matplotlib.use("Agg")
    small, large = _plane(1.0, "small"), _plane(5.0, "large")
    fig = lossatlas.plot.grid([small, large], kind="filled", levels=11)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["small", "large"]
    assert fig.lossatlas_range == (0.0, 10.0)  # pooled over both
    np.testing.assert_allclose(fig.lossatlas_levels, np.linspace(0, 10, 11))
    a0, a1 = fig.axes[:2]
    assert a0.get_xlim() == a1.get_xlim() and a0.get_ylim() == a1.get_ylim()
    for ax in fig.axes[:2]:
        np.testing.assert_allclose(ax.collections[0].get_array() is not None, True)
    clims = [c.get_clim() for ax in fig.axes[:2] for c in ax.collections if hasattr(c, "get_clim")][:2]
    assert clims[0] == clims[1] == (0.0, 10.0)
    # explicit range and titles; a log scale is chosen when the data span more than a factor 100
    fig = lossatlas.plot.grid([small, large], vmin=1.0, vmax=4.0, titles=["a", "b"], kind="heatmap", log=False)
    assert fig.lossatlas_range == (1.0, 4.0) and fig.axes[1].get_title() == "b"
    assert lossatlas.plot.grid([_plane(1.0, "p", 1e-4), _plane(1e3, "q", 1e-4)]).lossatlas_log
    assert not lossatlas.plot.grid([small, large]).lossatlas_log  # contains 0: linear


def test_grid_of_slices_shares_the_value_axis_and_line_draws_several():
    import matplotlib

    matplotlib.use("Agg")
    x = np.linspace(-1, 1, 11)
    s1 = xr.Dataset({"loss": ("x", x ** 2)}, coords={"x": x}, attrs={"name": "one"})
    s2 = xr.Dataset({"loss": ("x", 3 * x ** 2)}, coords={"x": x}, attrs={"name": "two"})
    fig = lossatlas.plot.grid([s1, s2])
    assert fig.axes[0].get_ylim() == fig.axes[1].get_ylim() == (0.0, 3.0)
    fig = lossatlas.plot.line([s1, s2])
    assert [ln.get_label() for ln in fig.axes[0].get_lines()][:2] == ["one", "two"]
    with pytest.raises(lossatlas.InvalidArgumentError):
        lossatlas.plot.grid([s1, _plane(1.0, "p")])
    with pytest.raises(lossatlas.InvalidTypeError):
        lossatlas.plot.grid(s1)


def test_ratio_maps_share_vmin_vmax():
    import matplotlib

    matplotlib.use("Agg")
    a = np.linspace(-1, 1, 5)
    maps = [xr.Dataset({"ratio": (("x", "y"), s * np.abs(np.add.outer(a, a))),
                        "loss": (("x", "y"), np.add.outer(a ** 2, a ** 2))}, coords={"x": a, "y": a},
                       attrs={"name": f"m{s}"}) for s in (1.0, 2.0)]
    fig = lossatlas.plot.grid(maps)  # ratio maps: kind "ratio", variable "ratio", linear scale
    assert fig.lossatlas_range == (0.0, 4.0) and not fig.lossatlas_log
    fig = lossatlas.plot.ratio_map(maps[0], vmin=0.0, vmax=4.0)
    assert fig.axes[0].collections[0].get_clim() == (0.0, 4.0)


@pytest.mark.slow
def test_full_size_report_of_mlp_digits(tmp_path):
    t0 = time.perf_counter()
    page = lossatlas.report(["mlp-digits"], out=tmp_path / "mlp.html")
    seconds = time.perf_counter() - t0
    assert page.stat().st_size < 10e6
    assert "non-convex (proven)" in page.read_text()
    assert seconds < 180, seconds


BN_USER = '''
import torch, lossatlas

def make():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = torch.tanh(x @ torch.tensor([[1.0], [-2.0], [0.5]]))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    with torch.no_grad():
        net(x)  # running statistics of θ
    net.eval()
    return lossatlas.Problem(net, torch.nn.MSELoss(), (x, y))
'''


def test_stale_batchnorm_statistics_are_said_on_the_page_and_kept(tmp_path, made):
    """A plane and slices of a BatchNorm network evaluated with θ's stored statistics: the page says so in the
    plane and slices sections (with the way to the recalibrated view), provenance.json keeps the warning, and a
    page made again from the reused stores still says it; a model without BatchNorm gets no such note."""
    (tmp_path / "bn.py").write_text(BN_USER)
    target = f"{tmp_path / 'bn.py'}:make"
    sections = ["slices", "plane", "provenance"]
    settings = {**SMALL, "steps": 5, "slice_steps": 5}
    with pytest.warns(lossatlas.errors.BatchNormStatsWarning):  # still shown as a warning
        page = lossatlas.report([target], out=tmp_path / "r.html", settings=settings, sections=sections)
    folder = tmp_path / "r_files" / "bn.py-make"
    stored = json.loads((folder / "provenance.json").read_text())["warnings"]
    assert set(stored) == {"plane.zarr", "slice-x.zarr", "slice-y.zarr"}
    assert all(w["category"] == "BatchNormStatsWarning" for ws in stored.values() for w in ws)

    def notes(text):
        parts = re.split(r'<section[^>]*data-section="([^"]+)"', text)
        return {name: body.count('data-warning="BatchNormStatsWarning"') for name, body in zip(parts[1::2], parts[2::2])}

    text = page.read_text()
    assert notes(text) == {"slices": 1, "plane": 1, "provenance": 0}, notes(text)
    cmd = f"lossatlas surface {target} --directions example --steps 5 --span 1 --seed 0 --bn recalibrate"
    assert cmd in text and "Stale BatchNorm statistics" in text
    from lossatlas.cli import main

    with pytest.raises(SystemExit) as exc, pytest.warns(lossatlas.errors.BatchNormStatsWarning):
        # the note's command, with the stored statistics, is the page's plane
        main(cmd.split()[1:-2] + ["--store", str(tmp_path / "same.zarr"), "--no-progress"])
    assert exc.value.code == 0
    np.testing.assert_array_equal(lossatlas.open_surface(tmp_path / "same.zarr").loss.values,
                                  lossatlas.open_surface(folder / "plane.zarr").loss.values)
    before = lossatlas.open_surface(folder / "plane.zarr").loss.values.copy()
    with pytest.warns(lossatlas.errors.BatchNormStatsWarning):
        page = lossatlas.report([target], out=tmp_path / "r.html", settings=settings, sections=sections)
    prov = json.loads((folder / "provenance.json").read_text())
    assert {"plane.zarr", "slice-x.zarr", "slice-y.zarr"} <= set(prov["reused"]) and prov["warnings"] == stored
    assert notes(page.read_text()) == {"slices": 1, "plane": 1, "provenance": 0}
    np.testing.assert_array_equal(lossatlas.open_surface(folder / "plane.zarr").loss.values, before)  # no number changed
    # a model without BatchNorm: no note, nothing recorded
    made_text = made[0].read_text()
    assert 'data-warning="BatchNormStatsWarning"' not in made_text
    assert json.loads((made[0].with_name("report_files") / "nets.py-make" / "provenance.json").read_text())[
        "warnings"] == {}
