"""A command group that imports a sub-command's module only when that sub-command runs.

Importing every CLI module up front pulls in SQLAlchemy, the engine, Alembic and the HTTP
client before the arguments are even parsed, which made `billing --help` take over half a
second. The root group lists each lazy command from a one-line help given next to its loader
(tests/unit/test_cli_imports.py checks it against the command's own help) and builds the real
command the first time its name is resolved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class Lazy:
    """One sub-command: its `--help` line and how to get its Typer app or command function."""

    help: str
    load: Callable[[], typer.Typer | Callable[..., Any]]


def build_command(name: str, target: typer.Typer | Callable[..., Any]) -> Any:
    """The click command Typer builds for `target` when it is added to a root app."""
    root = typer.Typer(add_completion=False)
    root.callback()(_nothing)  # a callback keeps a one-command app a group
    if isinstance(target, typer.Typer):
        root.add_typer(target, name=name)
    else:
        root.command(name)(target)
    return typer.main.get_group(root).commands[name]


def _nothing() -> None:
    pass


class LazyGroup(TyperGroup):
    """Set `lazy` on a subclass; pass the subclass as `typer.Typer(cls=...)`."""

    lazy: ClassVar[Mapping[str, Lazy]] = {}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        eager = dict(self.commands)
        # Listed in `lazy`'s order; eager commands (registered on the Typer itself) keep their
        # place when `lazy` names them with `EAGER`, else they come last.
        self.commands = {
            name: eager.pop(name) if entry is EAGER else _placeholder(name, entry.help)
            for name, entry in self.lazy.items()
            if entry is not EAGER or name in eager
        }
        self.commands.update(eager)
        self._loaded: set[str] = {n for n, e in self.lazy.items() if e is EAGER}

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        # Only a command that is about to run (or show its own --help) gets here; listing
        # the group's help reads the placeholders.
        if args:
            self.load(args[0])
        return super().resolve_command(ctx, args)

    def load(self, name: str) -> Any:
        """The real command for `name` (imported now if it was not yet); None if unknown."""
        entry = self.lazy.get(name)
        if entry is not None and name not in self._loaded:
            self.commands[name] = build_command(name, entry.load())
            self._loaded.add(name)
        return self.commands.get(name)


def _placeholder(name: str, help_line: str) -> TyperCommand:
    return TyperCommand(name, help=help_line)


# Marks a name in `lazy` that is registered on the Typer itself (it is only placed in order).
EAGER = Lazy(help="", load=lambda: typer.Typer())
