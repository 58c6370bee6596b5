"""Named configurations and the configs built from them.

``PRESETS[model][preset]`` is the flat view (training and model fields in one
dict) of the :class:`physllm.arch.Preset` objects that live with their
architectures (``physllm/<name>/presets.py``). ``cpu`` presets run in about three
minutes on two CPU cores; ``gpu`` presets are the seed projects' own scale. The CLI
(``--preset``), the notebooks and the leaderboard read the same table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from physllm.arch import SHAPE_FIELDS, TransformerShape
from physllm.errors import PhysllmError
from physllm.models import (
    ARCHITECTURES,
    build_model,
    count_params,
    get_model_classes,
    match_field,
)
from physllm.training.config import TrainConfig, split_overrides, train_field_names
from physllm.training.flops import training_flops_per_token

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    name: {preset: p.values() for preset, p in arch.presets.items()}
    for name, arch in ARCHITECTURES.items()
}
NANOGPT_CHAR_CPU: dict[str, Any] = PRESETS["gpt"]["cpu"]

# A vocabulary for counting parameters before the tokenizer is known (vocab_size 0):
# both models of a matched pair get the same, so only the matching is approximate.
COUNT_VOCAB = 256


def get_preset(model: str, preset: str) -> dict[str, Any]:
    """The overrides of ``preset`` for ``model`` (a copy: safe to modify). Read from the
    registry at call time: an architecture registered after import has its presets too."""
    arch = ARCHITECTURES.get(model) if isinstance(model, str) else None
    presets = arch.presets if arch else {}
    if preset not in presets:
        known = ", ".join(presets) or "none"
        raise PhysllmError(f"no preset {preset!r} for model {model!r} (known: {known})")
    return presets[preset].values()


def make_config(model: str = "gpt", preset: str | None = None, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a model name, an optional preset and field overrides.

    Overrides may name TrainConfig fields or the model config's fields alike
    (``make_config("gpt", "cpu", steps=100, n_layer=2)``); an unknown name is an error.
    """
    values = {**(get_preset(model, preset) if preset else {}), **overrides}
    train_fields, model_fields = split_overrides(model, values)
    config_cls, _ = get_model_classes(model)
    return TrainConfig(model=model, model_config=config_cls(**model_fields), **train_fields)


def _count(model: str, values: dict[str, Any]) -> int:
    return count_params(model, {**values, "vocab_size": values.get("vocab_size") or COUNT_VOCAB})


def _flops(model: str, values: dict[str, Any]) -> int:
    """Training FLOPs per token (:func:`training_flops_per_token`) at the config's block."""
    values = {**values, "vocab_size": values.get("vocab_size") or COUNT_VOCAB}
    built = build_model(model, values)
    return int(training_flops_per_token(built, values["block_size"], device="cpu"))


MATCH_BY = {"params": _count, "flops": _flops}


def matched_baseline(
    cfg: TrainConfig,
    baseline: str = "gpt",
    match: str | None = None,
    step: int = 16,
    *,
    out_dir: str | None = None,
    by: str = "params",
) -> TrainConfig:
    """``baseline`` at ``cfg``'s budget: the same training fields (steps, schedule, data,
    seed...; ``out_dir`` suffixed ``_<baseline>`` unless given) and the model fields the two
    configs share (n_layer, n_embd, block_size, dropout...; the shape fields only from a
    :class:`~physllm.arch.TransformerShape`, else the baseline keeps its own). With
    ``match``, that integer field of the baseline (a multiple of ``step``) is searched so
    its parameter count (``by="params"``) or its training FLOPs per token (``by="flops"``,
    :func:`~physllm.training.flops.training_flops_per_token`) is nearest ``cfg``'s model's."""
    train_fields = {k: getattr(cfg, k) for k in train_field_names()}
    train_fields["out_dir"] = out_dir or f"{cfg.out_dir.rstrip('/')}_{baseline}"
    config_cls, _ = get_model_classes(baseline)
    theirs = cfg.model_config.to_dict()
    shared = {f.name for f in dataclasses.fields(config_cls)} & set(theirs)
    if not isinstance(cfg.model_config, TransformerShape):  # no attention blocks to copy
        shared -= set(SHAPE_FIELDS)
    model_fields = {k: theirs[k] for k in shared}
    if match is not None:
        if match not in {f.name for f in dataclasses.fields(config_cls)}:
            raise PhysllmError(f"model {baseline!r} has no field {match!r} to match")
        if by not in MATCH_BY:
            raise PhysllmError(f"match by {by!r}: one of {', '.join(MATCH_BY)}")
        count = MATCH_BY[by]
        target = count(cfg.model, theirs)
        defaults = config_cls(**model_fields).to_dict()
        model_fields[match] = match_field(baseline, defaults, match, target, step, count=count)
    return TrainConfig(model=baseline, model_config=config_cls(**model_fields), **train_fields)


__all__ = [
    "NANOGPT_CHAR_CPU",
    "PRESETS",
    "get_preset",
    "make_config",
    "matched_baseline",
]
