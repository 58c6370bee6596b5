"""Model registry: ``MODELS[name] -> (ConfigClass, ModelClass)``.

Each architecture lives in its own file, read top to bottom: config
dataclass, parts, model. Register new ones here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from physllm.errors import PhysllmError
from physllm.models.base import LanguageModel, ModelConfig
from physllm.models.context_vector import ContextVectorConfig, ContextVectorModel
from physllm.models.gpt import GPT, GPTConfig
from physllm.models.hamiltonian import HamiltonianConfig, HamiltonianLM
from physllm.models.hopfield import HopfieldConfig, HopfieldLM
from physllm.models.ngt import NGT, NGTConfig
from physllm.models.qllm import QLLM, QLLMConfig

MODELS: dict[str, tuple[type[ModelConfig], type[LanguageModel]]] = {
    "gpt": (GPTConfig, GPT),
    "hopfield": (HopfieldConfig, HopfieldLM),
    "hamiltonian": (HamiltonianConfig, HamiltonianLM),
    "ngt": (NGTConfig, NGT),
    "qllm": (QLLMConfig, QLLM),
    "context_vector": (ContextVectorConfig, ContextVectorModel),
}


def get_model_classes(name: str) -> tuple[type[ModelConfig], type[LanguageModel]]:
    if not isinstance(name, str) or name not in MODELS:  # a checkpoint's JSON may hold anything
        raise PhysllmError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, config: ModelConfig | dict) -> LanguageModel:
    """Instantiate model ``name`` from its config (dataclass or dict, e.g. a checkpoint's).

    Every config problem is a :class:`PhysllmError` naming the model, whether the
    dict holds unknown fields or values its config class rejects.
    """
    config_cls, model_cls = get_model_classes(name)
    if isinstance(config, ModelConfig):
        if not isinstance(config, config_cls):
            raise PhysllmError(
                f"model {name!r} takes a {config_cls.__name__}, got a {type(config).__name__}"
            )
        config.validate()  # it may have been edited since it was built
    else:
        try:
            config = config_cls.from_dict(config)
        except PhysllmError as err:
            raise PhysllmError(f"bad {name} config: {err}") from None
        except TypeError as err:  # not a mapping of field names
            raise PhysllmError(f"bad {name} config: {err}") from None
    return model_cls(config)


# --------------------------------------------------------------------------- sizing


def count_params(model: str, config: Mapping[str, Any]) -> int:
    """Parameters of ``model`` built from ``config`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        return build_model(model, dict(config)).num_params()


def match_field(
    model: str,
    config: Mapping[str, Any],
    name: str,
    target: int,
    step: int = 16,
    count: Callable[[str, Mapping[str, Any]], int] = count_params,
) -> int:
    """The multiple of ``step`` for integer field ``name`` that brings ``model``'s parameter
    count nearest ``target`` (the count must grow with the field; bisection)."""

    def n(k: int) -> int:
        return count(model, {**config, name: step * k})

    hi = 1
    while n(hi) < target:  # double until past the target
        hi *= 2
        if hi > 1 << 20:
            raise PhysllmError(f"{model}: no {name} reaches {target:,} parameters")
    lo = max(1, hi // 2)
    while lo < hi:  # smallest k with n(k) >= target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if n(mid) < target else (lo, mid)
    candidates = {max(1, lo - 1), lo}
    return step * min(sorted(candidates), key=lambda k: abs(n(k) - target))


__all__ = [
    "MODELS",
    "GPT",
    "GPTConfig",
    "LanguageModel",
    "ModelConfig",
    "build_model",
    "count_params",
    "get_model_classes",
    "match_field",
]
