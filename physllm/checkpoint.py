"""Checkpoints: safetensors weights, a JSON config, and resumable trainer state.

A checkpoint is a folder::

    model.safetensors   the weights (tied tensors stored once)
    config.json         {"model": name, "config": {...}, "step": ..., ...}
    tokenizer.json      the tokenizer it was trained with
    trainer_state.pt    optional: optimizer, step, RNG states, for --resume

Folders are written whole into a temporary sibling and swapped in, so a run
killed mid-save leaves the previous checkpoint intact. Trainer state is read
with ``torch.load(weights_only=True)``: tensors and plain containers only,
never arbitrary pickled objects.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from physllm.errors import PhysllmError
from physllm.models import LanguageModel, build_model
from physllm.tokenization import Tokenizer, load_tokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINER_STATE = "trainer_state.pt"


def model_name_of(model: LanguageModel) -> str:
    from physllm.models import MODELS

    for name, (_, cls) in MODELS.items():
        if type(model) is cls:
            return name
    raise PhysllmError(f"{type(model).__name__} is not a registered model")


def save_checkpoint(
    directory: str | Path,
    model: LanguageModel,
    tokenizer: Tokenizer | None = None,
    trainer_state: dict | None = None,
    **info: Any,
) -> Path:
    """Write a checkpoint folder atomically; ``info`` goes into config.json."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / WEIGHTS))
    meta = {"model": model_name_of(model), "config": model.config.to_dict(), **info}
    (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
    if tokenizer is not None:
        tokenizer.save(tmp)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_STATE)
    # Swap: the old folder survives until the new one is complete and in place.
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """Accept a checkpoint folder, or a run folder (then ``best/``, else ``last/``)."""
    path = Path(path)
    if (path / CONFIG).exists():
        return path
    for name in ("best", "last", "last.old"):  # last.old: a save interrupted mid-swap
        if (path / name / CONFIG).exists():
            return path / name
    raise PhysllmError(f"no checkpoint in {path} (expected {CONFIG} and {WEIGHTS})")


def read_checkpoint_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise PhysllmError(f"no checkpoint config at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PhysllmError(f"checkpoint config {path} is corrupt (not valid JSON)") from None
    if not isinstance(meta, dict) or "model" not in meta or "config" not in meta:
        raise PhysllmError(f"checkpoint config {path} lacks 'model' and 'config'")
    return meta


def load_weights(
    model: LanguageModel, directory: str | Path, allow_missing: Callable[[str], bool] | None = None
) -> None:
    """Load ``model.safetensors`` into ``model``; a clear error if it does not fit.

    ``allow_missing(name)`` True lets the file lack that parameter (it keeps its
    init): how a base checkpoint loads into a model with new LoRA adapters."""
    path = Path(directory) / WEIGHTS
    if not path.exists():
        raise PhysllmError(f"no weights file at {path}")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except SafetensorError as err:
        raise PhysllmError(f"checkpoint weights {path} are corrupt or truncated ({err})") from None
    except RuntimeError as err:  # shape mismatch
        first = str(err).strip().splitlines()[-1].strip()
        raise PhysllmError(f"checkpoint weights {path} do not match its config: {first}") from None
    if allow_missing is not None:
        missing = [k for k in missing if not allow_missing(k)]
    if missing or unexpected:
        raise PhysllmError(
            f"checkpoint weights {path} do not match its config: "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[LanguageModel, Tokenizer, dict]:
    """Checkpoint or run folder -> (model in eval mode, tokenizer, config.json contents)."""
    directory = resolve_checkpoint_dir(path)
    meta = read_checkpoint_config(directory)
    model = build_model(meta["model"], meta["config"])
    load_weights(model, directory)
    tokenizer = load_tokenizer(directory)
    return model.to(device).eval(), tokenizer, meta


def load_trainer_state(directory: str | Path) -> dict:
    path = Path(directory) / TRAINER_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PhysllmError(f"cannot resume: no {TRAINER_STATE} in {directory}") from None
    except Exception as err:
        raise PhysllmError(f"cannot resume: {path} is corrupt ({type(err).__name__})") from None
