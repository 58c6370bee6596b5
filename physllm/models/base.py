"""What every physllm model shares: a config dataclass and a small module base.

The contract (DESIGN section 2): ``forward(idx, targets=None) -> (logits,
loss)`` with logits (B, T, V) and ``loss`` already including the model's own
regularisers, whose parts go in ``self.last_aux`` (floats, for logging);
``num_params()``; and ``decode_step`` for incremental generation, which
:mod:`physllm.sampling` drives. Models with a cache (GPT's keys and values,
the context vector's state) override ``decode_step``; the default recomputes
the forward pass on the last ``block_size`` tokens, which is always correct.

Recurrent models may also *train* with their state carried from one block to
the next (truncated backpropagation through time): such a model returns True
from ``carries_state()``, gives ``initial_state(B)``, accepts
``forward(idx, targets, state=...)`` and leaves the detached state after the
block in ``self.last_state``. A state is a list of tensors with the batch
first, so the trainer can slice rows and restart them without knowing more.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from physllm.validation import (
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    ConfigError,
    Rule,
    check_fields,
    merged_rules,
)


@dataclass
class ModelConfig:
    """A model's hyperparameters, checked when built (:mod:`physllm.validation`).

    Subclasses declare ``field_rules`` (merged with these; rules for fields a
    config lacks are ignored, so the shape names common to most models are
    declared once here) and put relations between fields in ``check``.
    """

    vocab_size: int = 0  # 0: taken from the tokenizer when training starts
    block_size: int = 256  # longest context the model is trained on

    field_rules: ClassVar[dict[str, Rule]] = {
        "vocab_size": NON_NEGATIVE,
        "block_size": POSITIVE,
        "n_layer": POSITIVE,
        "n_head": POSITIVE,
        "n_embd": POSITIVE,
        "dropout": FRACTION,
    }

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> ModelConfig:
        """Raise :class:`~physllm.validation.ConfigError` (a PhysllmError) on a bad field."""
        check_fields(self, merged_rules(type(self)))
        self.check()
        return self

    def check(self) -> None:
        """Relations between fields (subclasses); every field is already well typed here."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        if not isinstance(values, dict):
            raise ConfigError(f"{cls.__name__} must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        return cls(**values)


class LanguageModel(nn.Module):
    """Base class: subclasses set ``config_class`` and implement ``forward``."""

    config_class: type[ModelConfig] = ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.last_aux: dict[str, float] = {}
        self.last_state: Any = None  # carries_state models: the state after the last forward

    def carries_state(self) -> bool:
        """True: train on consecutive blocks with the state handed on (truncated BPTT)."""
        return False

    def initial_state(self, batch_size: int, device: Any = None) -> list[torch.Tensor]:
        """The state before the first token: tensors (batch_size, ...) (carries_state models)."""
        raise NotImplementedError(f"{type(self).__name__} carries no state")

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; shared (tied) tensors counted once."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        return n

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: matrices (dim >= 2) decay, biases and norm gains do not."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    @torch.no_grad()
    def decode_step(self, idx: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """Feed new tokens ``idx`` (B, T_new); return next-token logits (B, V) and the new state.

        Default: the state is the token history and every step recomputes the
        forward pass on its last ``block_size`` tokens.
        """
        history = idx if state is None else torch.cat([state, idx], dim=1)
        history = history[:, -self.config.block_size :]
        logits, _ = self(history)
        return logits[:, -1, :], history
