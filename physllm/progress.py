"""Training progress bars, and the plain-text kind a report run streams to its terminal.

Interactively the trainer draws ``tqdm.auto``'s bar: a widget in Jupyter, a
terminal bar elsewhere. A notebook executed by ``python -m physllm report``
runs in a papermill kernel, where that widget is drawn for no one: the runner
sees only the cells' text streams. So the report runner sets
``PHYSLLM_PROGRESS=text`` (:data:`PROGRESS_ENV`) for its kernel, and every bar
made through :func:`progress_bar` becomes a plain ASCII ``tqdm`` on
``sys.stderr`` that refreshes at most every :data:`TEXT_INTERVAL_S` seconds;
the runner streams the cells' stderr to its own. ``text`` draws the bar even
where the caller passed ``progress=False`` (notebooks do, to keep their
outputs clean), because a report run that trains for hours must not be silent.

``PHYSLLM_PROGRESS=off`` draws no bar at all; unset or ``auto`` leaves the
choice to the caller. nbval and plain papermill runs never set the variable,
so their outputs are unaffected.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from physllm.errors import PhysllmError

PROGRESS_ENV = "PHYSLLM_PROGRESS"
MODES = ("auto", "text", "off")
TEXT_INTERVAL_S = 5.0  # a line every few seconds at most: a log, not an animation


def progress_mode() -> str:
    """``auto`` (the default), ``text`` or ``off``, from ``$PHYSLLM_PROGRESS``."""
    mode = os.environ.get(PROGRESS_ENV, "").strip().lower() or "auto"
    if mode not in MODES:
        raise PhysllmError(
            f"{PROGRESS_ENV}={os.environ[PROGRESS_ENV]!r} is not one of {', '.join(MODES)}"
        )
    return mode


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0) -> Any | None:
    """A ``tqdm`` bar over ``total`` steps, or None when there should be none.

    ``enabled`` is the caller's wish (a config's ``progress``); ``$PHYSLLM_PROGRESS``
    overrides it as the module docstring says.
    """
    mode = progress_mode()
    if mode == "off":
        return None
    if mode == "text":
        from tqdm.std import tqdm

        # sys.stderr is read now, not at import: in a kernel it is the cell's stream
        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            file=sys.stderr,
            ascii=True,
            mininterval=TEXT_INTERVAL_S,
            dynamic_ncols=False,
        )
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, mininterval=1.0)


__all__ = ["MODES", "PROGRESS_ENV", "TEXT_INTERVAL_S", "progress_bar", "progress_mode"]
