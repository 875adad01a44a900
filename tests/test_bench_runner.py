"""`make bench` runs every benchmark and reads their targets from one line format."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_script_is_run_by_make_bench():
    listed = {argv[0] for _, argv, _ in _load("run_all").BENCHMARKS}
    scripts = {p.name for p in BENCH.glob("bench_*.py")} - {"bench_curvature_matrices.py"}  # a library, not a run
    assert listed == scripts
    assert all((BENCH / s).exists() for s in listed)


def test_verdict_line_is_what_run_all_collects(capsys):
    verdict = _load("_verdict").verdict
    assert verdict("x", 2.0, 1.0) is False
    assert verdict("y", 2.0, 1.0, ">=") is True
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[MISS] x") and out[1].startswith("[PASS] y")


def test_run_all_collects_targets_and_reports_a_crash(tmp_path, monkeypatch):
    fake = tmp_path / "bench"
    fake.mkdir()
    (fake / "ok.py").write_text("print('[PASS] a: 1.000 <= 2.000')\n")
    (fake / "bad.py").write_text("raise SystemExit(3)\n")
    run_all = _load("run_all")
    monkeypatch.setattr(run_all, "HERE", fake)
    monkeypatch.setattr(run_all, "BENCHMARKS", [("ok", ["ok.py"], {}), ("bad", ["bad.py"], {})])
    monkeypatch.setattr(sys, "argv", ["run_all", "--log", str(tmp_path / "log")])
    assert run_all.main() == 1
    assert "[PASS] a" in (tmp_path / "log").read_text()


def test_run_all_has_a_gpu_row_and_shows_gpu_not_measured_once(tmp_path, monkeypatch, capsys):
    run_all = _load("run_all")
    constant = _load("_verdict").GPU_NOT_MEASURED
    assert ("gpu", ["bench_zoo.py", "--device", "cuda"], {}) in run_all.BENCHMARKS
    fake = tmp_path / "bench"
    fake.mkdir()
    (fake / "scale.py").write_text(f"print('## 4. {constant}')\nprint('[PASS] s: 1.000 <= 2.000')\n")
    (fake / "zoo.py").write_text(f"print({constant!r})\n")
    monkeypatch.setattr(run_all, "HERE", fake)
    monkeypatch.setattr(run_all, "BENCHMARKS", [("scale", ["scale.py"], {}), ("gpu", ["zoo.py"], {})])
    monkeypatch.setattr(sys, "argv", ["run_all", "--log", str(tmp_path / "log")])
    assert run_all.main() == 0
    table = capsys.readouterr().out.split("Targets (docs/benchmarks.md explains each):")[1]
    assert table.count(constant) == 1 and f"gpu            {constant}" in table and "[PASS] s" in table


def test_gpu_benchmarks_without_cuda_say_so_and_exit_0():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the benchmark would measure it")
    proc = subprocess.run([sys.executable, str(BENCH / "bench_zoo.py"), "--device", "cuda"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == [_load("_verdict").GPU_NOT_MEASURED]


def test_device_helpers_shared_by_the_gpu_benchmarks(capsys):
    import torch

    scale = _load("bench_scale")
    cpu = torch.device("cpu")
    assert scale.gpu_device("cpu") == cpu
    seconds, out = scale.synced(lambda: 7, cpu)
    assert out == 7 and seconds >= 0
    assert scale.matmul_rate(cpu, n=32, reps=2) > 0
    assert scale.tf32_state().startswith("TF32 matmul ")
    assert scale.forward_flops(torch.nn.Linear(64, 128), [torch.randn(10, 64), torch.randn(5, 64)]) == 2 * 15 * 64 * 128
    layer = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    x = [torch.randn(3, 4, 8)]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    unfused = scale.forward_flops(layer.train(), x)  # training mode never takes the fused fast path
    assert unfused >= 2 * 12 * (4 * 8 * 8 + 2 * 8 * 16) and scale.forward_flops(layer.eval(), x) == unfused
    assert torch.backends.mha.get_fastpath_enabled() == fastpath
    if not torch.cuda.is_available():
        assert scale.gpu_device("cuda") is None
        assert capsys.readouterr().out.strip() == _load("_verdict").GPU_NOT_MEASURED


def test_gpu_environment_check_knows_every_dependency():
    env = _load("gpu_env")
    block = re.search(r"^dependencies = \[(.*?)^\]", (BENCH.parent / "pyproject.toml").read_text(), re.S | re.M)
    names = set(re.findall(r'^\s*"([A-Za-z0-9_.-]+)', block.group(1), re.M))
    assert len(names) >= 10
    assert names <= set(env.DEPENDENCIES), names - set(env.DEPENDENCIES)
    assert env.pinned("zarr").startswith("zarr==") and env.pinned("no-such-package") == "no-such-package"
    assert set(env.WHEELS) >= {n for n, (_, need) in env.DEPENDENCIES.items() if n in ("zarr", "gudhi", "einconv")}


def test_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")]).returncode == 0


@pytest.mark.slow
def test_gpu_check_rehearsal_on_the_cpu(tmp_path):
    """GPU_CHECK_DEVICE=cpu runs every step of the device script on the CPU, small planes (~1 min)."""
    import os

    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=600)
    summary = (tmp_path / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stdout[-3000:]
    assert "0 step(s) failed" in summary
    assert "passed" in (tmp_path / "test_cuda.log").read_text()
    assert "loop vs vmap" in (tmp_path / "bench_zoo.log").read_text()
