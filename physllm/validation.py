"""Config validation in one place: each config declares its rules, this checks them.

Every config dataclass (training, each model's, the benchmark's) calls
:func:`check_fields` from ``__post_init__``, so a bad value fails when the
config is built, from the CLI and the Python API alike, before anything
touches the disk. The check is in two parts:

- **types**, from the dataclass annotations: an ``int`` field takes an
  integer (not a bool, not 4.0), a ``float`` field a real number that is
  *finite* (nan and inf are never a useful learning rate or dropout), a
  ``str`` field a string, a ``bool`` field a bool;
- **rules**, declared per field (``{"n_layer": at_least(1), "dropout":
  FRACTION}``): ranges, choices, non-empty strings. Relations between fields
  (``n_embd`` a multiple of ``n_head``) go through :func:`require` and
  :func:`check_multiple`.

A failure is a :class:`ConfigError`: a :class:`~physllm.errors.PhysllmError`
(one line, exit status 2 from the CLI) that is also a ``ValueError``, as
Python code expects of a bad argument. Its message names the field in its CLI
form: ``--dropout must be in [0, 1), got 1.5``.
"""

from __future__ import annotations

import functools
import math
import numbers
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from physllm.errors import PhysllmError


class ConfigError(PhysllmError, ValueError):
    """A config field holds a value it cannot take."""


def flag(name: str) -> str:
    """The CLI form of a field name: ``n_embd`` -> ``--n-embd``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Rule:
    """A predicate on one field's value and what it demands, in words ("must be >= 1")."""

    ok: Callable[[Any], bool]
    text: str


def at_least(low: float) -> Rule:
    return Rule(lambda v: v >= low, f"must be >= {low}")


def greater_than(low: float) -> Rule:
    return Rule(lambda v: v > low, f"must be > {low}")


def in_range(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Rule:
    """low <= v <= high, either end open; written as an interval: ``[0, 1)``."""

    def ok(v: float) -> bool:
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return Rule(ok, f"must be in {interval}")


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, f"must be one of {', '.join(choices)}")


def _device_name_ok(name: str) -> bool:
    if name in ("auto", "cpu", "mps", "cuda"):
        return True
    kind, _, index = name.partition(":")
    return kind == "cuda" and index.isascii() and index.isdigit()


# whether the device is present is checked when it is used (physllm.training.resolve_device)
DEVICE = Rule(_device_name_ok, "must be auto, cpu, cuda, cuda:<index> or mps")
POSITIVE = at_least(1)  # sizes and counts
NON_NEGATIVE = at_least(0)  # counts where 0 means "off" or "automatic"
POSITIVE_FLOAT = greater_than(0)
FRACTION = in_range(0, 1, high_open=True)  # dropout, Adam betas
PROBABILITY = in_range(0, 1)
NON_EMPTY = Rule(lambda v: bool(v.strip()), "must not be empty")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_error(kind: Any, value: Any) -> str | None:
    """Why ``value`` is not a ``kind`` (None when it is, or when ``kind`` is not checked here)."""
    if kind is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return None if ok else "must be an integer"
    if kind is float:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return "must be a number"
        return None if math.isfinite(value) else "must be a finite number"
    if kind is str:
        return None if isinstance(value, str) else "must be a string"
    return None  # nested configs, lists: their own code checks them


def check_fields(obj: Any, rules: Mapping[str, Rule] = {}) -> None:  # noqa: B006 (read only)
    """Check every field of dataclass ``obj`` against its annotation, then ``rules``.

    Raises :class:`ConfigError` at the first bad field, naming it as a flag.
    """
    hints = _hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        problem = _type_error(hints.get(f.name), value)
        if problem is None and f.name in rules and not rules[f.name].ok(value):
            problem = rules[f.name].text
        if problem is not None:
            raise ConfigError(f"{flag(f.name)} {problem}, got {value!r}")


def check_values(values: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """``rules`` on plain values (argparse results: already typed), named as flags."""
    for name, rule in rules.items():
        if not rule.ok(values[name]):
            raise ConfigError(f"{flag(name)} {rule.text}, got {values[name]!r}")


def require(condition: bool, message: str) -> None:
    """A relation between fields: raise :class:`ConfigError` with ``message`` unless it holds."""
    if not condition:
        raise ConfigError(message)


def check_multiple(obj: Any, name: str, of: str) -> None:
    """Field ``name`` must be a multiple of field ``of`` (``n_embd`` of ``n_head``)."""
    value, base = getattr(obj, name), getattr(obj, of)
    require(
        value % base == 0,
        f"{flag(name)} ({value}) must be a multiple of {flag(of)} ({base})",
    )


def merged_rules(cls: type, attr: str = "field_rules") -> dict[str, Rule]:
    """``cls.<attr>`` merged along the class hierarchy (a subclass's rule wins)."""
    rules: dict[str, Rule] = {}
    for klass in reversed(cls.__mro__):
        rules.update(vars(klass).get(attr, {}))
    return rules


__all__ = [
    "DEVICE",
    "FRACTION",
    "NON_EMPTY",
    "NON_NEGATIVE",
    "POSITIVE",
    "POSITIVE_FLOAT",
    "PROBABILITY",
    "ConfigError",
    "Rule",
    "at_least",
    "check_fields",
    "check_values",
    "check_multiple",
    "flag",
    "greater_than",
    "in_range",
    "merged_rules",
    "one_of",
    "require",
]
