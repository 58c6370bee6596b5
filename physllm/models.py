"""The registry: every architecture's :class:`~physllm.arch.Architecture`, by name.

Each architecture is one folder (``physllm/<name>/``) whose ``ARCH`` says what
it is; this module collects them, in the order tables list them (GPT, the
reference, first). Adding one is a line here (or :func:`register` from outside
the package; see CONTRIBUTING.md). ``MODELS[name] -> (ConfigClass, ModelClass)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from physllm import context_vector, gpt, hamiltonian, hopfield, ngt, qllm
from physllm.arch import Architecture, LanguageModel, ModelConfig
from physllm.errors import PhysllmError

ARCHITECTURES: dict[str, Architecture] = {}
MODELS: dict[str, tuple[type[ModelConfig], type[LanguageModel]]] = {}


def register(arch: Architecture, replace: bool = False) -> Architecture:
    """Add ``arch`` to the registry (its model, presets, leaderboard rows, headlines and
    commands become visible to the trainer, the leaderboard, the README and the CLI)."""
    if arch.name in ARCHITECTURES and not replace:
        raise PhysllmError(f"an architecture named {arch.name!r} is already registered")
    ARCHITECTURES[arch.name] = arch
    MODELS[arch.name] = (arch.config_class, arch.model_class)
    return arch


def unregister(name: str) -> None:
    """Remove architecture ``name`` (tests that register a throwaway one clean up with this)."""
    ARCHITECTURES.pop(name, None)
    MODELS.pop(name, None)


for _package in (gpt, hamiltonian, context_vector, ngt, qllm, hopfield):  # notebook order
    register(_package.ARCH)


def get_architecture(name: str) -> Architecture:
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise PhysllmError(f"unknown model {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def get_model_classes(name: str) -> tuple[type[ModelConfig], type[LanguageModel]]:
    arch = get_architecture(name)  # a checkpoint's JSON may hold anything: checked there
    return arch.config_class, arch.model_class


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
    "ARCHITECTURES",
    "MODELS",
    "LanguageModel",
    "ModelConfig",
    "get_architecture",
    "register",
    "unregister",
    "build_model",
    "count_params",
    "get_model_classes",
    "match_field",
]
