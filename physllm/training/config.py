"""What a run is: :class:`TrainConfig` (the trainer's fields plus the model's config),
and :func:`split_overrides`, which sorts a flat dict of overrides into the two."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from physllm.errors import PhysllmError
from physllm.models import ModelConfig, get_model_classes
from physllm.validation import (
    DEVICE,
    FRACTION,
    NON_EMPTY,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_FLOAT,
    ConfigError,
    Rule,
    at_least,
    check_fields,
    in_range,
    one_of,
    require,
)


def _tokenizer_name_ok(name: str) -> bool:
    """The tokenizer names physllm.tokenization knows (checked before any data is read)."""
    kind, sep, arg = name.partition(":")
    if kind in ("char", "byte"):
        return not sep
    if kind == "bpe":
        return not sep or (arg.isascii() and arg.isdigit() and int(arg) > 0)
    if kind == "hf":  # a transformers tokenizer (the Hopfield GPU preset's backbone's)
        return bool(arg)
    return kind == "tiktoken" and bool(arg or not sep)


@dataclass
class TrainConfig:
    """Everything about a run except the architecture (that is ``model_config``)."""

    model: str = "gpt"
    corpus: str = "default"  # "default": shakespeare if on disk, else the offline pydocs
    tokenizer: str = "char"
    max_chars: int = 0  # cap on corpus characters for huge hub datasets (0: the corpus's default)
    out_dir: str = "runs/gpt"
    steps: int = 2000  # optimizer steps
    batch_size: int = 12  # sequences per micro-batch (per process under DDP)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr: float = 1e-4  # cosine decays to this (nanoGPT: lr / 10)
    warmup_steps: int = 100
    lr_decay_steps: int = 0  # 0: decay over all `steps`
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99  # 0.99 for small-token-count runs (nanoGPT's char recipe); 0.95 at scale
    grad_clip: float = 1.0  # 0: off
    eval_interval: int = 250
    eval_iters: int = 20
    # final numbers: score the first N blocks of the val split (0: all of it, the default;
    # a cap only for quick runs, and metrics.json's eval_protocol says so)
    final_eval_blocks: int = 0
    log_interval: int = 10
    stop_after: int = 0  # stop this invocation after N steps (time-sliced jobs); --resume continues
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 on CUDA if supported, else fp16; fp32 on CPU) | float32 | bfloat16 | float16
    compile: bool = False
    seed: int = 1337
    resume: bool = False
    init_from: str = ""  # fine-tune: start from this run's or checkpoint's weights (LoRA adapters it lacks keep their init)
    threads: int = 0  # torch.set_num_threads on CPU (0: leave torch's default)
    progress: bool = True
    tensorboard: bool = True
    model_config: ModelConfig | None = None  # None: the model's defaults

    # Declared constraints (physllm.validation); relations between fields are in validate().
    field_rules = {
        "corpus": NON_EMPTY,
        "tokenizer": Rule(
            _tokenizer_name_ok,
            "must be char, byte, bpe, bpe:<vocab size>, tiktoken:<encoding> or hf:<id>",
        ),
        "max_chars": NON_NEGATIVE,
        "out_dir": NON_EMPTY,
        "steps": NON_NEGATIVE,  # 0: a config not for train() (Hopfield's pretrained backbone)
        "batch_size": POSITIVE,
        "grad_accum": POSITIVE,
        "lr": POSITIVE_FLOAT,
        "min_lr": at_least(0),
        "warmup_steps": NON_NEGATIVE,
        "lr_decay_steps": NON_NEGATIVE,
        "weight_decay": at_least(0),
        "beta1": FRACTION,
        "beta2": FRACTION,
        "grad_clip": at_least(0),
        "eval_interval": POSITIVE,
        "eval_iters": POSITIVE,
        "final_eval_blocks": NON_NEGATIVE,
        "log_interval": POSITIVE,
        "stop_after": NON_NEGATIVE,
        "device": DEVICE,
        "dtype": one_of("auto", "float32", "bfloat16", "float16"),
        "seed": in_range(0, 2**32, high_open=True),
        "threads": NON_NEGATIVE,
    }

    def __post_init__(self) -> None:
        if self.model_config is None:
            self.model_config = get_model_classes(self.model)[0]()
        self.validate()

    def validate(self) -> TrainConfig:
        """Raise a :class:`~physllm.errors.PhysllmError` naming the first bad field (as its
        ``--flag``). Runs at construction and again when training starts (notebooks
        edit configs in place)."""
        config_cls, _ = get_model_classes(self.model)
        if not isinstance(self.model_config, config_cls):
            raise ConfigError(
                f"model {self.model!r} takes a {config_cls.__name__}, "
                f"got {type(self.model_config).__name__}"
            )
        check_fields(self, self.field_rules)
        require(
            self.min_lr <= self.lr,
            f"--min-lr ({self.min_lr:g}) must not exceed --lr ({self.lr:g})",
        )
        self.model_config.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model_config"}
        d["model_config"] = self.model_config.to_dict()
        return d


def train_field_names() -> set[str]:
    """TrainConfig's own fields (not ``model``/``model_config``): what a preset's train half holds."""
    return {f.name for f in fields(TrainConfig)} - {"model", "model_config"}


def split_overrides(model: str, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``values`` sorted into (TrainConfig fields, ``model``'s config fields).

    A name in both goes to both; a name in neither is a PhysllmError.
    """
    config_cls, _ = get_model_classes(model)
    train_names = train_field_names()
    model_names = {f.name for f in fields(config_cls)}
    unknown = sorted(set(values) - train_names - model_names)
    if unknown:
        raise PhysllmError(f"unknown option(s) for model {model!r}: {', '.join(unknown)}")
    train = {k: v for k, v in values.items() if k in train_names}
    model_fields = {k: v for k, v in values.items() if k in model_names}
    return train, model_fields


__all__ = ["TrainConfig", "split_overrides", "train_field_names"]
