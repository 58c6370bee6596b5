"""The training layer: configs and presets (:mod:`.config`, :mod:`.presets`), batch
sources (:mod:`.batches`), the one evaluator (:mod:`.evaluate`), the trainer in phases
(:mod:`.trainer`), the Hopfield memory stage on the same pieces (:mod:`.memory`) and
checkpoints (:mod:`.checkpoint`). ``from physllm.training import make_config, train``
is the usual entry."""

from physllm.env import (
    autocast_context,
    device_description,
    peak_rss_mb,
    reset_peak_rss,
    resolve_device,
)
from physllm.training.batches import BatchSource, StreamSource, WindowSource, batch_source
from physllm.training.checkpoint import load_checkpoint, save_checkpoint
from physllm.training.config import TrainConfig, split_overrides
from physllm.training.evaluate import evaluate_loss, evaluate_split, split_blocks
from physllm.training.flops import training_flops_per_token
from physllm.training.memory import train_memory
from physllm.training.presets import (
    NANOGPT_CHAR_CPU,
    PRESETS,
    get_preset,
    make_config,
    matched_baseline,
)
from physllm.training.trainer import RunResult, Trainer, git_sha, lr_at, train

__all__ = [
    "NANOGPT_CHAR_CPU",
    "PRESETS",
    "BatchSource",
    "RunResult",
    "StreamSource",
    "TrainConfig",
    "Trainer",
    "WindowSource",
    "autocast_context",
    "batch_source",
    "device_description",
    "evaluate_loss",
    "evaluate_split",
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
    "split_blocks",
    "split_overrides",
    "train",
    "train_memory",
    "training_flops_per_token",
]
