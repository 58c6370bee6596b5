"""Model registry: ``MODELS[name] -> (ConfigClass, ModelClass)``.

Each architecture lives in its own file, read top to bottom: config
dataclass, parts, model. Register new ones here.
"""

from __future__ import annotations

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
    try:
        return MODELS[name]
    except KeyError:
        raise PhysllmError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None


def build_model(name: str, config: ModelConfig | dict) -> LanguageModel:
    """Instantiate model ``name`` from its config (dataclass or dict)."""
    config_cls, model_cls = get_model_classes(name)
    if isinstance(config, dict):
        try:
            config = config_cls.from_dict(config)
        except (TypeError, ValueError) as err:
            raise PhysllmError(f"bad {name} config: {err}") from None
    return model_cls(config)


__all__ = [
    "MODELS",
    "GPT",
    "GPTConfig",
    "LanguageModel",
    "ModelConfig",
    "build_model",
    "get_model_classes",
]
