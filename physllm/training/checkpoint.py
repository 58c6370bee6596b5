"""Checkpoints: safetensors weights, a JSON config, and resumable trainer state.

A checkpoint is a folder::

    model.safetensors   the weights (tied tensors stored once)
    config.json         {"model": name, "config": {...}, "step": ..., ...}
    tokenizer.json      the tokenizer it was trained with
    trainer_state.pt    optional: optimizer, step, RNG states, loss history, for --resume
    complete.json       written last: the files above and their sizes

Trainer state is read with ``torch.load(weights_only=True)``: tensors and plain
containers only, never arbitrary pickled objects.

**How a save survives a kill.** ``save_checkpoint(NAME)`` writes the whole new
checkpoint into ``NAME.tmp/`` (``complete.json`` last), then swaps it in with
two renames, ``NAME -> NAME.old`` and ``NAME.tmp -> NAME``, then removes
``NAME.old``. Folders are only ever removed by first renaming them to
``<name>.trash/``, so a kill mid-removal never leaves a half-deleted ``NAME.old``
or ``NAME.tmp`` behind. A kill at any point (SIGKILL, OOM; not a power cut: files
are not fsynced) therefore leaves one of: ``NAME`` alone; ``NAME`` plus an
incomplete ``NAME.tmp`` (kill while writing); ``NAME`` plus a complete
``NAME.tmp``; ``NAME.old`` plus a complete ``NAME.tmp`` (kill between the
renames); ``NAME`` plus ``NAME.old``; or ``NAME.old`` alone (a hand-made or
pre-marker state).

**Recovery rule** (``find_checkpoint``, used by every loader and by ``--resume``):
a ``NAME.tmp`` counts only if its ``complete.json`` is present and every file it
lists has the listed size; ``NAME`` and ``NAME.old`` were only ever produced by
renaming a complete folder, so they count when they hold ``config.json``. Among those that count, the newest wins, and the
swap fixes the age order: ``NAME.tmp`` (written after ``NAME`` was last put in
place) over ``NAME`` over ``NAME.old``. Loading never changes the disk (a run
may be saving at that moment); ``train --resume`` calls ``recover_checkpoint``,
which moves the winner to ``NAME`` and discards the leftovers, before it trains.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from physllm.errors import PhysllmError
from physllm.models import MODELS, LanguageModel, build_model
from physllm.tokenization import Tokenizer, load_tokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINER_STATE = "trainer_state.pt"
MARKER = "complete.json"  # written last into NAME.tmp: which files a complete save holds

# Test-only fault injection: PHYSLLM_TEST_CRASH_AT="between_renames:NAME:N" makes
# the N-th save of a folder called NAME in this process SIGKILL itself after its
# first rename (NAME -> NAME.old), before NAME.tmp -> NAME. Used by
# tests/test_resume_kill.py to reproduce a kill mid-swap deterministically.
CRASH_ENV = "PHYSLLM_TEST_CRASH_AT"
_saves_seen: dict[str, int] = {}


def model_name_of(model: LanguageModel) -> str:
    for name, (_, cls) in MODELS.items():
        if type(model) is cls:
            return name
    raise PhysllmError(f"{type(model).__name__} is not a registered model")


def _sibling(directory: Path, suffix: str) -> Path:
    return directory.with_name(directory.name + suffix)


def _discard(path: Path) -> None:
    """Remove a folder so that no half-deleted copy of it can remain under its name:
    rename it to ``<name>.trash`` first (atomic), then delete that."""
    trash = _sibling(path, ".trash")
    if trash.exists():
        shutil.rmtree(trash)
    if path.exists():
        os.replace(path, trash)
        shutil.rmtree(trash)


def _maybe_crash(point: str, directory: Path) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    want, _, rest = spec.partition(":")
    name, _, nth = rest.partition(":")
    if want != point or (name and name != directory.name):
        return
    _saves_seen[directory.name] = _saves_seen.get(directory.name, 0) + 1
    if _saves_seen[directory.name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(
    directory: str | Path,
    model: LanguageModel,
    tokenizer: Tokenizer | None = None,
    trainer_state: dict | None = None,
    **info: Any,
) -> Path:
    """Write a checkpoint folder atomically; ``info`` goes into config.json.

    See the module docstring for the swap and what a kill at each point leaves."""
    directory = Path(directory)
    tmp, old = _sibling(directory, ".tmp"), _sibling(directory, ".old")
    _discard(tmp)  # an interrupted save's leftover: older than what we write now
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / WEIGHTS))
    meta = {"model": model_name_of(model), "config": model.config.to_dict(), **info}
    (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
    if tokenizer is not None:
        tokenizer.save(tmp)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_STATE)
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / MARKER).write_text(json.dumps({"step": info.get("step"), "files": files}))
    # Swap: a complete copy exists under some name at every instant (module docstring).
    if directory.exists():
        _discard(old)
        os.replace(directory, old)
    _maybe_crash("between_renames", directory)
    os.replace(tmp, directory)
    _discard(old)
    return directory


def _is_complete(folder: Path, *, renamed_into_place: bool) -> bool:
    """A NAME.tmp is complete when its marker is there and every file it lists has its size.
    NAME and NAME.old only ever came from renaming a complete folder (checkpoints from
    before the marker included), so they need only their config.json."""
    if renamed_into_place:
        return (folder / CONFIG).is_file()
    try:
        files = json.loads((folder / MARKER).read_text())["files"]
        return (
            isinstance(files, dict)
            and CONFIG in files
            and all((folder / name).stat().st_size == size for name, size in files.items())
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def find_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint among ``NAME/``, ``NAME.tmp/``, ``NAME.old/``; None if none.

    Reads only (the recovery rule is in the module docstring)."""
    directory = Path(directory)
    tmp, old = _sibling(directory, ".tmp"), _sibling(directory, ".old")
    if _is_complete(tmp, renamed_into_place=False):
        return tmp
    if _is_complete(directory, renamed_into_place=True):
        return directory
    if _is_complete(old, renamed_into_place=True):
        return old
    return None


def recover_checkpoint(directory: str | Path) -> Path | None:
    """Put the newest complete checkpoint back at ``NAME/`` and discard an interrupted
    save's leftovers (``NAME.tmp``, ``NAME.old``). Returns ``NAME`` or None if none is complete.

    For a writer (``train --resume``): never call it while another process may be saving."""
    directory = Path(directory)
    tmp, old = _sibling(directory, ".tmp"), _sibling(directory, ".old")
    found = find_checkpoint(directory)
    if found is None:
        return None
    if found == tmp and directory.exists():
        # NAME is older than the complete NAME.tmp: it becomes NAME.old, so that a
        # complete copy exists under some name at every instant, as in a save.
        _discard(old)
        os.replace(directory, old)
    elif found == old:
        _discard(directory)  # exists only if incomplete (else it would have been found)
    if found != directory:
        os.replace(found, directory)
    _discard(tmp)
    _discard(old)
    return directory


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = None) -> None:
    """Write JSON through a temporary sibling and ``os.replace``: a kill leaves the old file or the new one, never half of one.

    The sibling's name is fixed (``.NAME.tmp``; one writer per file, the main rank), so
    what a kill leaves behind is overwritten and renamed away by the next write."""
    path = Path(path)
    tmp_name = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp_name, "w") as fh:
            fh.write(json.dumps(obj, indent=indent))
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """Accept a checkpoint folder, or a run folder (then ``best/``, else ``last/``).

    A folder whose save was interrupted (only ``last.old`` or a complete ``last.tmp``
    left) resolves by the recovery rule of the module docstring."""
    path = Path(path)
    if (path / CONFIG).exists():
        return path
    found = find_checkpoint(path)  # `path` names a checkpoint whose save was interrupted
    if found is not None:
        return found
    for name in ("best", "last"):
        found = find_checkpoint(path / name)
        if found is not None:
            return found
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
    try:
        model = build_model(meta["model"], meta["config"])
    except PhysllmError as err:  # valid JSON, bad content: name the checkpoint
        raise PhysllmError(f"checkpoint {directory}: {err}") from None
    load_weights(model, directory)
    tokenizer = load_tokenizer(directory)
    return model.to(device).eval(), tokenizer, meta


def load_trainer_state(directory: str | Path) -> dict:
    """``trainer_state.pt`` of a checkpoint folder (one whose save was interrupted resolves
    by the recovery rule)."""
    directory = Path(directory)
    if not (directory / CONFIG).exists():
        directory = find_checkpoint(directory) or directory
    path = directory / TRAINER_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PhysllmError(f"cannot resume: no {TRAINER_STATE} in {directory}") from None
    except Exception as err:
        raise PhysllmError(f"cannot resume: {path} is corrupt ({type(err).__name__})") from None
