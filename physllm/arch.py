"""What every physllm model shares: a config dataclass and a small module base.

The contract (DESIGN section 2): ``forward(idx, targets=None) -> (logits,
loss)`` with logits (B, T, V) and ``loss`` already including the model's own
regularisers, whose parts go in ``self.last_aux`` (floats, for logging);
``num_params()``; and ``decode_step`` for incremental generation, which
:mod:`physllm.sampling` drives. Every registered model overrides ``decode_step``
with a cache (the keys and values of GPT, NGT, QLLM, the Hamiltonian model and
Hopfield's backbone, the context vector's state); the default here recomputes
the forward pass on the last ``block_size`` tokens, which is always correct.

Recurrent models may also *train* with their state carried from one block to
the next (truncated backpropagation through time): such a model returns True
from ``carries_state()``, gives ``initial_state(B)``, accepts
``forward(idx, targets, state=...)`` and leaves the detached state after the
block in ``self.last_state``. A state is a list of tensors with the batch
first, so the trainer can slice rows and restart them without knowing more.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
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
    check_multiple,
    merged_rules,
)


@dataclass
class ModelConfig:
    """A model's hyperparameters, checked when built (:mod:`physllm.validation`).

    Subclasses declare ``field_rules`` (merged with their bases' along the class
    hierarchy) and put relations between fields in ``check``.
    """

    vocab_size: int = 0  # 0: taken from the tokenizer when training starts
    block_size: int = 256  # longest context the model is trained on

    field_rules: ClassVar[dict[str, Rule]] = {
        "vocab_size": NON_NEGATIVE,
        "block_size": POSITIVE,
    }

    # old field name -> new one, so checkpoints written before a rename still load
    renamed_fields: ClassVar[dict[str, str]] = {}

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
        """Build from a dict (a checkpoint's ``config.json``); fields renamed since the
        checkpoint was written (:attr:`renamed_fields`) are read under their new name."""
        if not isinstance(values, dict):
            raise ConfigError(f"{cls.__name__} must be a JSON object, got {type(values).__name__}")
        values = {cls.renamed_fields.get(k, k): v for k, v in values.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        return cls(**values)


# The fields that size a stack of attention blocks. A model without one may use the same
# names for other things (context_vector's n_layer counts recurrent layers), so a baseline
# takes them only from a TransformerShape.
SHAPE_FIELDS: tuple[str, ...] = ("n_layer", "n_head", "n_embd")


@dataclass
class TransformerShape(ModelConfig):
    """The shape of a stack of attention blocks, declared once for every model built
    on one (GPT, Hamiltonian, NGT, QLLM, Hopfield's backbone): their configs extend
    this, so the fields, defaults and rules below are the same for all of them and a
    GPT baseline can take another model's shape field for field."""

    n_layer: int = 4  # blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 128  # residual stream width; each head takes n_embd / n_head channels
    dropout: float = 0.0
    bias: bool = False  # no biases in Linear/LayerNorm: slightly better and faster (nanoGPT)

    field_rules: ClassVar[dict[str, Rule]] = {
        "n_layer": POSITIVE,
        "n_head": POSITIVE,
        "n_embd": POSITIVE,
        "dropout": FRACTION,
    }

    def check(self) -> None:
        check_multiple(self, "n_embd", "n_head")

    def shape(self) -> dict[str, Any]:
        """The shape fields with ``vocab_size`` and ``block_size``: ``GPTConfig(**cfg.shape())``
        is the vanilla GPT of this model's shape."""
        return {f.name: getattr(self, f.name) for f in fields(TransformerShape)}


class LanguageModel(nn.Module):
    """Base class: subclasses set ``config_class`` and implement ``forward``."""

    config_class: type[ModelConfig] = ModelConfig
    # old parameter-name prefix -> new one, so checkpoints written before a rename still load
    renamed_parameters: ClassVar[dict[str, str]] = {}

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        if self.renamed_parameters:
            self._register_load_state_dict_pre_hook(self._rename_old_parameters)
        self.last_aux: dict[str, float] = {}
        self.last_state: Any = None  # carries_state models: the state after the last forward

    def _rename_old_parameters(self, state_dict: dict, prefix: str, *args: Any) -> None:
        for key in list(state_dict):
            for old, new in self.renamed_parameters.items():
                if key.startswith(prefix + old):
                    state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)

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


# --------------------------------------------------------------------------- descriptors
#
# An architecture is one folder, ``physllm/<name>/``, whose ``__init__`` holds an
# :class:`Architecture`: everything the rest of the package needs to know about
# it (its config and model, presets, leaderboard rows, README headlines, CLI
# commands). :mod:`physllm.models` collects them; nothing else names a model.


@dataclass(frozen=True)
class Preset:
    """A named configuration, split by who reads it: ``model`` fields go to the model's
    config, ``train`` fields to the trainer's (:class:`physllm.training.TrainConfig`).

    ``cpu`` presets run in about three minutes on two CPU cores; ``gpu`` presets
    are the seed projects' own scale."""

    model: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        """Both halves as one flat dict (a copy: safe to modify)."""
        return {**self.train, **self.model}

    def with_(self, model: Mapping[str, Any] = (), train: Mapping[str, Any] = ()) -> Preset:
        """This preset with some fields changed (or added)."""
        return replace(
            self, model={**self.model, **dict(model)}, train={**self.train, **dict(train)}
        )

    def without(self, *names: str) -> Preset:
        """This preset without fields ``names`` (their defaults apply)."""
        return replace(
            self,
            model={k: v for k, v in self.model.items() if k not in names},
            train={k: v for k, v in self.train.items() if k not in names},
        )


@dataclass(frozen=True)
class Entry:
    """One leaderboard row: ``model`` (a registry name) with ``overrides``; ``match`` names
    an integer config field searched (in steps of ``match_step``) to bring the parameter
    count nearest GPT's; ``own_shape`` keeps the model preset's ``n_layer``/``n_head``/``n_embd``."""

    name: str
    model: str
    variant: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    match: str | None = None
    match_step: int = 16
    own_shape: bool = False
    per_preset: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Headline:
    """One README row: run ``run`` of ``notebook``'s report against its run ``baseline``."""

    notebook: str
    run: str
    variant: str
    baseline: str = "gpt"


@dataclass(frozen=True)
class Command:
    """A CLI command an architecture adds: ``python -m physllm <name> --ckpt RUN ...``.

    The CLI builds the parser (``--ckpt`` and ``--device`` are added for every
    command), calls ``add_arguments(parser)``, then ``check(args)`` (bad input
    fails here, before any file is read: raise PhysllmError), loads the
    checkpoint, refuses one whose model is not a ``model_class``, and calls
    ``run(args, model, tokenizer, device)``. Loading and errors are the CLI's,
    so a command's module never imports the CLI or the training layer.
    """

    name: str  # the command word; must not clash with a core command (train, sample, ...)
    help: str  # one line for ``python -m physllm --help``
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, LanguageModel, Any, torch.device], None]
    check: Callable[[argparse.Namespace], None] = lambda args: None
    description: str = ""  # the command's own --help (default: help)
    model_class: type | tuple[type, ...] | None = None  # the checkpoint must hold one (None: any)


@dataclass(frozen=True)
class Architecture:
    """Everything the package needs to know about one architecture (see CONTRIBUTING.md)."""

    name: str
    config_class: type[ModelConfig]
    model_class: type[LanguageModel]
    notebook: str | None = None  # e.g. "03_ngt"
    presets: Mapping[str, Preset] = field(default_factory=dict)
    leaderboard: tuple[Entry, ...] = ()
    headlines: tuple[Headline, ...] = ()
    commands: tuple[Command, ...] = ()
