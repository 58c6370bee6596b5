"""Named configurations: ``PRESETS[model][preset] -> overrides``.

``cpu`` presets run in about three minutes on two CPU cores and still show a
real effect; ``gpu`` presets are the seed projects' own scale. Notebooks and the
CLI (``--preset``) read the same table, so a notebook run and a CLI run with the
same preset train the same thing.
"""

from __future__ import annotations

from typing import Any

from physllm.errors import PhysllmError
from physllm.models import ARCHITECTURES

# The presets live with their architectures (``physllm/<name>/presets.py``); this is
# the flat view (training and model fields in one dict) the trainer and CLI read.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    name: {preset: p.values() for preset, p in arch.presets.items()}
    for name, arch in ARCHITECTURES.items()
}
NANOGPT_CHAR_CPU: dict[str, Any] = PRESETS["gpt"]["cpu"]


def get_preset(model: str, preset: str) -> dict[str, Any]:
    """The overrides of ``preset`` for ``model`` (a copy: safe to modify)."""
    try:
        return dict(PRESETS[model][preset])
    except KeyError:
        known = ", ".join(PRESETS.get(model, {})) or "none"
        raise PhysllmError(f"no preset {preset!r} for model {model!r} (known: {known})") from None


def baseline_overrides(model: str, preset: str, baseline: str = "gpt") -> dict[str, Any]:
    """The settings of ``model``'s preset that ``baseline`` can take too (training budget,
    data, shared shape fields), so a vanilla baseline trains at the same budget."""
    import dataclasses

    from physllm.models import get_model_classes
    from physllm.training import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)} | {
        f.name for f in dataclasses.fields(get_model_classes(baseline)[0])
    }
    return {
        k: v for k, v in get_preset(model, preset).items() if k in names - {"model", "model_config"}
    }
