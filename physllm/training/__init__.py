"""The training layer: configs and presets, batch sources, the evaluator, the trainer
and checkpoints. ``from physllm.training import make_config, train`` is the usual entry."""

from physllm.training.checkpoint import load_checkpoint, save_checkpoint
from physllm.training.presets import NANOGPT_CHAR_CPU, PRESETS, baseline_overrides, get_preset
from physllm.training.trainer import (
    RunResult,
    TrainConfig,
    autocast_context,
    config_from_dict,
    device_description,
    estimate_loss,
    estimate_stream_loss,
    git_sha,
    lr_at,
    make_config,
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
    "config_from_dict",
    "device_description",
    "estimate_loss",
    "estimate_stream_loss",
    "get_preset",
    "git_sha",
    "load_checkpoint",
    "lr_at",
    "make_config",
    "peak_rss_mb",
    "reset_peak_rss",
    "resolve_device",
    "save_checkpoint",
    "train",
]
