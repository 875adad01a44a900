"""`make bench` runs every benchmark and reads their targets from one line format."""

import importlib.util
import subprocess
import sys
from pathlib import Path

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
