"""Small formatting and reading helpers that several layers share (layer 1: imports nothing
of physllm), so tables in reports, the README and the leaderboard read numbers alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def format_seconds(seconds: float | None) -> str:
    """A duration as people read it: ``42s``, ``3m 05s``, ``1h 02m``; ``""`` for None."""
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def clock(seconds: float) -> str:
    """Elapsed time as a clock: ``0:42``, ``12:05``, ``1:02:03``."""
    seconds = int(seconds)
    h, m, s = seconds // 3600, seconds % 3600 // 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def millions(n: float | None) -> str:
    """Parameter counts as papers write them: 0.80M, 12.5M, 124M (``""`` if not a number)."""
    if not isinstance(n, (int, float)):
        return ""
    m = n / 1e6
    return f"{m:.2f}M" if m < 10 else f"{m:.1f}M" if m < 100 else f"{m:.0f}M"


def num(value: Any, fmt: str) -> str:
    """``format(value, fmt)`` for a number, ``""`` for anything else (a missing cell)."""
    return format(value, fmt) if isinstance(value, (int, float)) else ""


def first_line(text: Any, limit: int = 300) -> str:
    """The first line of ``str(text)``, stripped and cut to ``limit`` characters."""
    lines = str(text).strip().splitlines()
    return lines[0][:limit] if lines else ""


def read_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when it is missing or unreadable (reports
    read folders a killed run may have left half-written)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


__all__ = ["clock", "first_line", "format_seconds", "millions", "num", "read_json"]
