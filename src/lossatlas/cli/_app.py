"""The typer application and the error policy shared by every command.

Errors of lossatlas's own type (bad input, damaged files) print one red line and exit with status 2;
any other exception (a failure nobody foresaw) prints one line naming its type and exits with status
1; Ctrl-C says what was saved and exits with 130. ``--debug`` (anywhere on the command line) shows
the full traceback instead. A command never prints a Python traceback without it.
"""

from __future__ import annotations

import os
import re
import sys
import warnings

import torch
import typer
from typer._click import exceptions as click_exc
from typer.core import TyperGroup

from .. import _threads
from .._version import __version__
from ..errors import BatchNormStatsWarning, InvalidArgumentError, LossAtlasError
from ..runner import interrupt_progress


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


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"lossatlas {__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (anywhere on the "
                                     "command line)."),
          threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for the computation (anywhere on "
                                      "the command line; default: LOSSATLAS_THREADS, else the cores idle now, one "
                                      "for a tiny problem). A store records the count it was made with."),
          version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                       help="Print the version and exit.")) -> None:
    """Map loss landscapes of neural networks and prove (or fail to prove) non-convexity."""
    if threads is not None:
        set_threads(threads, "--threads")


def set_threads(threads, option: str) -> int:
    """Use ``threads`` intra-op CPU threads (checked: an integer >= 1)."""
    try:
        n = int(str(threads).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise InvalidArgumentError(f"{option} must be an integer >= 1; received {threads!r}")
    torch.set_num_threads(n)
    _threads.mark_explicit(n)
    return n


def _threads_first(args: list[str]) -> list[str]:
    """``--threads N`` (or ``--threads=N``) anywhere on the command line, moved before the command
    (typer only knows root options there), as ``--debug``."""
    out, front, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a == "--threads" and i + 1 < len(args):
            front += [a, args[i + 1]]
            i += 2
            continue
        if a.startswith("--threads="):
            front.append(a)
        else:
            out.append(a)
        i += 1
    return front + out


#: library argument → CLI flag, for every command (beside each command's own options, found from its
#: parameters): errors raised by the library name the flags a CLI user can type
FLAG_FOR = {"overwrite=True": "--overwrite", "allow_large=True": "--allow-large", "progress=False": "--no-progress"}
ARG_FOR = {  # per command: the library's argument name → the CLI's flag, where the two differ
    "surface": {"store": "--store", "overwrite": "--overwrite", "center": "--checkpoint", "span": "--span"},
    "ratio-map": {"overwrite": "--overwrite", "center": "--checkpoint"},
    "interpolate": {"store": "--out", "overwrite": "--overwrite"},
    "connect": {"store": "--out", "overwrite": "--overwrite"},
    "trajectory": {"store": "--out", "overwrite": "--overwrite"},
}


def cli_message(text: str, args: list[str]) -> str:
    """``text`` (a library error) with the library's argument names replaced by the flags of the
    command being run (``overwrite=True`` → ``--overwrite``, ``argument 'steps'`` → ``--steps``)."""
    rest = list(args)
    while rest and rest[0].startswith("-"):  # root options (--debug, --threads N) before the command
        rest = rest[2:] if rest[0] == "--threads" else rest[1:]
    command = rest[0] if rest else None
    flags: dict[str, str] = {}
    try:
        group = typer.main.get_command(app)
        cmd = group.commands.get(command) if command else None
        for p in getattr(cmd, "params", []):
            opts = [o for o in getattr(p, "opts", []) if o.startswith("--")]
            if p.param_type_name == "option" and opts:
                flags[p.name] = opts[0]
            elif p.param_type_name == "argument":
                flags[p.name] = p.name.upper()
    except Exception:  # pragma: no cover - the message stays as the library wrote it
        pass
    flags.update(ARG_FOR.get(command or "", {}))
    for python, flag in FLAG_FOR.items():
        text = text.replace(python, flag)

    def arg(m):
        name = m.group(1)
        if name not in flags:
            return m.group(0)
        flag = flags[name]
        return f"option {flag}" if flag.startswith("--") else f"argument {flag}"
    return re.sub(r"argument '([A-Za-z_][A-Za-z0-9_]*)'", arg, text)


def console(*, soft_wrap: bool = False):
    """The rich console every command prints with (one place); ``soft_wrap``: long lines are not
    broken by rich (they stay greppable in a pipe; the terminal wraps them)."""
    from rich.console import Console

    return Console(soft_wrap=soft_wrap)


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
    args = _threads_first(args)
    threads_before, policy_before = torch.get_num_threads(), _threads.state()
    try:  # restored on exit: main() may run inside a user's process
        _main(args, debug)
    finally:
        torch.set_num_threads(threads_before)
        _threads.restore(policy_before)


def _main(args: list[str], debug: bool) -> None:
    if os.environ.get("LOSSATLAS_THREADS") and not any(a.startswith("--threads") for a in args):
        try:
            set_threads(os.environ["LOSSATLAS_THREADS"], "LOSSATLAS_THREADS")
        except LossAtlasError as exc:
            typer.secho(f"error: {exc}", err=True, fg="red")
            raise SystemExit(2) from None
    elif not any(a.startswith("--threads") for a in args):
        # the default for the whole command (the cores idle now: lossatlas._threads); a grid job may still
        # pin fewer for a tiny problem, and records what it used
        default = _threads.choose().threads
        torch.set_num_threads(default)
        _threads.note_default(default)

    shown_before = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, BatchNormStatsWarning):  # the CLI's line, with the CLI's flag
            text = " ".join(str(message).split()).replace("bn='recalibrate'", "--bn recalibrate")
            typer.secho(f"warning: {text}", err=True, fg="yellow")
        else:
            shown_before(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line
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
        typer.secho(f"error: {cli_message(' '.join(str(exc).split()), args)}", err=True, fg="red")
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
    finally:
        warnings.showwarning = shown_before
    raise SystemExit(rc if isinstance(rc, int) else 0)  # as typer's standalone mode: always an exit status


def interrupted_line(exc: BaseException) -> str:
    """The one line printed on Ctrl-C: how many points the store keeps and how to resume, or that an
    in-memory run kept nothing (what :func:`lossatlas.runner.interrupt_progress` recorded)."""
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
