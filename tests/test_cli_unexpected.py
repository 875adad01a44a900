"""A CLI command never prints a traceback without --debug, even for an exception nobody foresaw."""
import pytest

from lossatlas.cli import _app


def _boom(*args, **kwargs):
    raise ValueError("something deep inside\nover two lines")


def test_unexpected_exception_is_one_line_exit_1(monkeypatch, capsys):
    monkeypatch.setattr("lossatlas.cli.curvature_cmd.resolve", _boom)
    with pytest.raises(SystemExit) as exit_:
        _app.main(["hessian", "seed-relu"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1, err
    assert err.startswith("error: unexpected ValueError: something deep inside over two lines")
    assert "\n" not in err and "Traceback" not in err and "--debug" in err


def test_unexpected_exception_with_debug_is_raised(monkeypatch):
    monkeypatch.setattr("lossatlas.cli.curvature_cmd.resolve", _boom)
    with pytest.raises(ValueError, match="something deep inside"):
        _app.main(["hessian", "seed-relu", "--debug"])
