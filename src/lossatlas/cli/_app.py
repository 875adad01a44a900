"""The typer application and the error policy shared by every command.

Errors of lossatlas's own type print one red line and exit with status 2; ``--debug`` (anywhere on
the command line) shows the full traceback instead.
"""

from __future__ import annotations

import sys

import typer
from typer._click import exceptions as click_exc

from ..errors import LossAtlasError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Map loss landscapes of neural networks and prove (or fail to prove) non-convexity.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    """Map loss landscapes of neural networks and prove (or fail to prove) non-convexity."""


def _usage_line(exc) -> str:
    """A usage error on one line; a bad value (typer checks types and ranges with pydantic, whose
    message says what was expected but not what was received) ends with the value received."""
    text = " ".join(exc.format_message().split())
    errors = getattr(exc.__cause__, "errors", None)
    if callable(errors) and "received" not in text:
        try:
            inputs = [e["input"] for e in errors() if "input" in e]
        except Exception:  # pragma: no cover - not a pydantic error after all
            inputs = []
        if inputs:
            text = f"{text.rstrip('.')}; received {inputs[0]!r}"
    return text


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        rc = app(args=args, prog_name="lossatlas", standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click_exc.UsageError as exc:  # typer's multi-line usage box → one line
        if debug:
            raise
        typer.secho(f"error: {_usage_line(exc)}", err=True, fg="red")
        raise SystemExit(2) from None
    except click_exc.ClickException as exc:
        if debug:
            raise
        typer.secho(f"error: {' '.join(exc.format_message().split())}", err=True, fg="red")
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        if debug:
            raise
        typer.secho("interrupted; a command writing a store keeps every finished chunk: run the same command "
                    "again to resume", err=True)
        raise SystemExit(130) from None
    except LossAtlasError as exc:
        if debug:
            raise
        typer.secho(f"error: {' '.join(str(exc).split())}", err=True, fg="red")
        raise SystemExit(2) from None
    raise SystemExit(rc if isinstance(rc, int) else 0)  # as typer's standalone mode: always an exit status
