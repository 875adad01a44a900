"""The typer application and the error policy shared by every command.

Errors of lossatlas's own type (bad input, damaged files) print one red line and exit with status 2;
any other exception (a failure nobody foresaw) prints one line naming its type and exits with status
1; Ctrl-C says what was saved and exits with 130. ``--debug`` (anywhere on the command line) shows
the full traceback instead. A command never prints a Python traceback without it.
"""

from __future__ import annotations

import sys

import typer
from typer._click import exceptions as click_exc
from typer.core import TyperGroup

from ..errors import LossAtlasError


class _Interrupted(Exception):
    """A KeyboardInterrupt carried past typer (which turns it into a silent exit status 130)."""

    def __init__(self, interrupt: KeyboardInterrupt):
        super().__init__("interrupted")
        self.interrupt = interrupt


class _Group(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted(exc) from None


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Map loss landscapes of neural networks and prove (or fail to prove) non-convexity.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    """Map loss landscapes of neural networks and prove (or fail to prove) non-convexity."""


def console():
    """The rich console every command prints with (one place)."""
    from rich.console import Console

    return Console()


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
    if debug:  # anywhere on the command line, as the help says: typer only knows it before the command
        args = ["--debug"] + [a for a in args if a != "--debug"]
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
    except (KeyboardInterrupt, _Interrupted) as exc:
        interrupt = exc.interrupt if isinstance(exc, _Interrupted) else exc
        if debug:
            raise interrupt from None
        typer.secho(interrupted_line(interrupt), err=True)
        raise SystemExit(130) from None
    except LossAtlasError as exc:
        if debug:
            raise
        typer.secho(f"error: {' '.join(str(exc).split())}", err=True, fg="red")
        raise SystemExit(2) from None
    except Exception as exc:  # not a bad input but a failure lossatlas did not foresee: still one line
        if debug:
            raise
        text = " ".join(str(exc).split()) or "(no message)"
        if len(text) > 300:
            text = text[:297] + "..."
        typer.secho(f"error: unexpected {type(exc).__name__}: {text} — this is a lossatlas bug or an "
                    "unsupported model; rerun with --debug for the traceback", err=True, fg="red")
        raise SystemExit(1) from None
    raise SystemExit(rc if isinstance(rc, int) else 0)  # as typer's standalone mode: always an exit status


def interrupted_line(exc: BaseException) -> str:
    """The one line printed on Ctrl-C: how many points the store keeps and how to resume, or that an
    in-memory run kept nothing (what :func:`lossatlas.runner.interrupt_progress` recorded)."""
    from ..runner import interrupt_progress

    info = interrupt_progress(exc)
    if info is None:
        return ("interrupted; a command writing a store keeps every finished chunk: run the same command "
                "again to resume")
    if info["store"] is None:
        return ("interrupted: nothing was saved (the grid was computed in memory); pass --store PATH to make "
                "a run resumable")
    done = "some" if info["points_done"] is None else str(info["points_done"])
    return (f"interrupted: {done} of {info['points_total']} points saved in {info['store']}; rerun the same "
            "command to resume")
