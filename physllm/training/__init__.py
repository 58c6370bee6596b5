"""The training layer: configs and presets, batch sources, the evaluator, the trainer
and checkpoints. ``from physllm.training import make_config, train`` is the usual entry."""

from physllm.training.checkpoint import load_checkpoint, save_checkpoint
from physllm.training.config import TrainConfig, split_overrides
from physllm.training.presets import (
    NANOGPT_CHAR_CPU,
    PRESETS,
    baseline_overrides,
    get_preset,
    make_config,
    matched_baseline,
)
from physllm.training.trainer import (
    RunResult,
    autocast_context,
    device_description,
    estimate_loss,
    estimate_stream_loss,
    git_sha,
    lr_at,
    peak_rss_mb,
    reset_peak_rss,
    resolve_device,
    train,
)

__all__ = [
    "NANOGPT_CHAR_CPU",
    "PRESETS",
    "RunResult",
    "TrainConfig",
    "autocast_context",
    "baseline_overrides",
    "device_description",
    "estimate_loss",
    "estimate_stream_loss",
    "get_preset",
    "git_sha",
    "load_checkpoint",
    "lr_at",
    "make_config",
    "matched_baseline",
    "peak_rss_mb",
    "reset_peak_rss",
    "resolve_device",
    "save_checkpoint",
    "split_overrides",
    "train",
]
