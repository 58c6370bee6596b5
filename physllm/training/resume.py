"""What ``--resume`` reads besides the weights: the checkpoint's config (is it this run?),
the loss history so far, and a finished run's metrics (nothing left to do)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from physllm.errors import PhysllmError
from physllm.training.checkpoint import read_checkpoint_config, write_json_atomic
from physllm.training.config import TrainConfig


def check_resume_config(cfg: TrainConfig, last_dir: Path) -> dict:
    """The checkpoint's config.json, after checking it is the run ``cfg`` asks to continue."""
    saved = read_checkpoint_config(last_dir)
    if saved["model"] != cfg.model:
        raise PhysllmError(
            f"cannot resume: {last_dir} holds a {saved['model']!r} model, not {cfg.model!r}"
        )
    ours = cfg.model_config.to_dict()
    diff = [
        f"{k}={saved['config'].get(k)!r} (asked {v!r})"
        for k, v in ours.items()
        if saved["config"].get(k) != v
    ]
    if diff:
        raise PhysllmError(f"cannot resume: {last_dir} was trained with {', '.join(diff[:3])}")
    step = saved.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise PhysllmError(f"cannot resume: {last_dir / 'config.json'} has no valid 'step'")
    if step > cfg.steps:
        raise PhysllmError(
            f"nothing to do: {last_dir} is at step {step} and --steps is {cfg.steps}; "
            "pass a larger --steps"
        )
    return saved


def _read_json(path: Path) -> Any:
    """``path``'s JSON; None if it does not exist. A PhysllmError naming it if unreadable."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise PhysllmError(f"{path} is corrupt or truncated ({type(err).__name__})") from None


def resume_history(out_dir: Path, state: dict, start_step: int) -> list[dict[str, Any]]:
    """The loss history up to ``start_step``: from the trainer state (exact, written with
    the checkpoint), else (checkpoints from before it was kept there) from history.json."""
    if "history" in state:
        return [dict(h) for h in state["history"]]
    path = out_dir / "history.json"
    try:
        saved = _read_json(path)
    except PhysllmError as err:
        raise PhysllmError(
            f"cannot resume: {err}; move it aside to resume without the loss history so far"
        ) from None
    if saved is None:
        return []
    if not isinstance(saved, list) or not all(isinstance(h, dict) and "step" in h for h in saved):
        raise PhysllmError(f"cannot resume: {path} is not a list of history entries")
    return [h for h in saved if h["step"] <= start_step]


def finished_run(
    cfg: TrainConfig,
    is_main: bool,
    out_dir: Path,
    last_dir: Path,
    step: int,
    history: list[dict[str, Any]],
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """``--resume`` of a run already at ``cfg.steps``: (its metrics.json, its history), files
    unchanged. None when metrics.json is missing, unreadable or from an earlier step: the run
    was killed after its last checkpoint, and the caller finishes it (the final evaluation)."""
    try:
        metrics = _read_json(out_dir / "metrics.json")
    except PhysllmError:
        return None
    if not isinstance(metrics, dict) or metrics.get("steps") != step:
        return None
    if is_main:
        try:
            readable = _read_json(out_dir / "history.json") is not None
        except PhysllmError:
            readable = False
        if not readable:  # the only file touched: the checkpoint holds its exact contents
            write_json_atomic(out_dir / "history.json", history)
        print(
            f"nothing to do: {last_dir} is already at step {step} (--steps {cfg.steps}); "
            f"{out_dir / 'metrics.json'} unchanged",
            file=sys.stderr,
        )
    return metrics, history


__all__ = ["check_resume_config", "finished_run", "resume_history"]
