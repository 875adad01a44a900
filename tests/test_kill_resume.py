import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import lossatlas

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _slow_problem  # noqa: E402


def _points_done(path):
    try:
        return lossatlas.open_surface(path).attrs["points_done"]
    except lossatlas.LossAtlasError:
        return 0


def test_sigkill_mid_run_resumes_to_identical_values(tmp_path):
    reference = _slow_problem.run(None)
    store = tmp_path / "killed.zarr"
    env = dict(os.environ, PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(HERE / "_slow_problem.py"), str(store), "0.01"], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and _points_done(store) < 27:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = lossatlas.open_surface(store)
    assert 0 < partial.attrs["points_done"] < 81, partial.attrs["points_done"]
    assert partial.attrs["complete"] == 0
    resumed = _slow_problem.run(store)
    assert resumed.attrs["complete"] == 1
    np.testing.assert_array_equal(resumed.loss.values, reference.loss.values)
    np.testing.assert_array_equal(resumed.accuracy.values, reference.accuracy.values)
    # and the store on disk holds exactly these values
    np.testing.assert_array_equal(lossatlas.open_surface(store).loss.values, reference.loss.values)
