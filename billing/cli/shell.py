"""The root command group: every failure leaves the process as one line on stderr.

Commands turn the errors they expect into one line themselves (``common.handle_errors``).
This is the last resort around them: click's usage errors (typer draws them as a 5-6 line box)
become ``error: <message> (try '<command> --help')`` with exit 2, and an exception nobody
expected becomes one line naming its type and where it was raised, with ``EXIT_INTERNAL`` —
never a traceback, and never the exception's text (it could hold a URL with a password).
"""

from __future__ import annotations

import sys
import traceback
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer import _click as click
from typer.core import TyperArgument, TyperGroup, TyperOption
from typer.exceptions import Abort

EXIT_INTERNAL = 70  # sysexits.h EX_SOFTWARE: a bug, not bad input or an outage
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class OneLineGroup(TyperGroup):
    """A TyperGroup whose ``main`` prints one line per failure and exits with its code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        quiet_help_types(self)
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # the help was asked for, in effect
            if exc.message:
                typer.echo(exc.message, err=True)
            _exit(exc.exit_code, standalone_mode)
        except click.ClickException as exc:
            typer.echo(f"error: {usage_line(exc)}", err=True)
            _exit(exc.exit_code, standalone_mode)
        except Abort:
            typer.echo("error: aborted", err=True)
            _exit(1, standalone_mode)
        except Exception as exc:  # the last resort: one line, never a traceback
            typer.echo(f"error: {internal_error_line(exc)}", err=True)
            _exit(EXIT_INTERNAL, standalone_mode)
        # Without standalone mode click hands back an Exit's code (or the command's None).
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return rv


def _exit(code: int, standalone_mode: bool) -> NoReturn:
    if standalone_mode:
        sys.exit(code)
    raise typer.Exit(code)


def one_line(text: str) -> str:
    """Newlines and runs of blanks folded into single spaces."""
    return " ".join(text.split())


def usage_line(exc: click.ClickException) -> str:
    """click's message plus where the help is, on one line."""
    message = one_line(exc.format_message())
    ctx = getattr(exc, "ctx", None)
    if isinstance(ctx, click.Context) and ctx.command.get_help_option(ctx) is not None:
        message += f" (try '{ctx.command_path} {ctx.help_option_names[0]}')"
    return message


def internal_error_line(exc: BaseException) -> str:
    """The type and the innermost place in billing/ it came from; the text is left out."""
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename)
        if path.is_relative_to(PACKAGE_ROOT):
            where = f" at {path.relative_to(PACKAGE_ROOT.parent)}:{frame.lineno}"
            break
    return (
        f"unexpected internal error ({type(exc).__name__}{where}); nothing more is shown "
        "because the message could hold secrets: please report it"
    )


def quiet_help_types(command: click.Command) -> None:
    """``--help`` without typer's ``<bool>``/``<str>`` labels: flags show nothing, values a
    plain word (TEXT, INTEGER, ...). Walks the whole tree once; idempotent."""
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            quiet_help_types(sub)
    # The help option is made (and cached) on first use; make it now to relabel it too.
    help_option = command.get_help_option(click.Context(command))
    for param in [*command.params, help_option]:
        if isinstance(param, TyperOption | TyperArgument):
            param.display_type_rich = types.MethodType(_label, param)  # type: ignore[method-assign]


def _label(param: TyperOption | TyperArgument, ctx: click.Context) -> str | None:
    if isinstance(param, TyperOption) and (param.is_flag or param.count):
        return None
    if param.metavar:
        return param.metavar
    shown = param.display_type(ctx).strip("<>")
    plain = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "list[str]": "TEXT..."}
    return plain.get(shown, shown.upper() if shown.isidentifier() else shown)
