"""argparse helpers every command uses (layer 1: imports nothing above validation).

:class:`ArgumentParser` makes a usage error one line with exit status 2, like
every other error, and never abbreviates flags. :func:`add_dataclass_flags`
turns a config dataclass into flags (``n_embd`` -> ``--n-embd``), each
defaulting to None so :func:`given` returns only what the user set.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any

from physllm.errors import PhysllmError
from physllm.validation import flag


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2), like every other error,
    and flags are never abbreviated: ``--mode`` must not quietly mean ``--model``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_dataclass_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    skip: Collection[str] = frozenset(),
) -> None:
    """One ``--flag`` per bool/int/float/str field of dataclass ``cls``; defaults are None
    so only given flags override (other field types are not flags)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if kind is bool:
            parser.add_argument(
                flag(f.name),
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"(default: {default})",
            )
        elif kind in (int, float, str):
            parser.add_argument(
                flag(f.name),
                type=kind,
                default=None,
                metavar=kind.__name__.upper(),
                help=f"(default: {default})",
            )


def given(args: argparse.Namespace, names: Collection[str]) -> dict[str, Any]:
    """The flags among ``names`` the user set (not None)."""
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def dataclass_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of dataclass ``cls`` the user set as flags."""
    return given(args, {f.name for f in dataclasses.fields(cls)})


def check_writable_file(path: str, what: str) -> None:
    """``path`` can be (over)written: not a folder, and its folder exists."""
    target = Path(path)
    if target.is_dir():
        raise PhysllmError(f"{what} {path} is a folder, not a file")
    if not target.parent.is_dir():
        raise PhysllmError(f"{what} {path}: folder {target.parent} does not exist")


__all__ = [
    "ArgumentParser",
    "add_dataclass_flags",
    "check_writable_file",
    "dataclass_values",
    "flag",
    "given",
]
