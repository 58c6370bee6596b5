"""CHopT (notebook 05): a modern Hopfield memory layer after a transformer that keeps
memory across inference calls."""

from physllm.arch import Architecture, Entry
from physllm.hopfield.model import HopfieldConfig, HopfieldLM
from physllm.hopfield.presets import PRESETS

ARCH = Architecture(
    name="hopfield",
    config_class=HopfieldConfig,
    model_class=HopfieldLM,
    notebook="05_hopfield",
    presets=PRESETS,
    # With its bank empty (language modelling) the memory is not read: the model is its
    # GPT backbone. The smallest key window keeps the unused layer within the tolerance.
    leaderboard=(
        Entry(
            "hopfield",
            "hopfield",
            "GPT backbone + Hopfield memory layer, bank empty",
            {"backbone": "gpt", "key_window": 1, "lora_rank": 0},
        ),
    ),
)

__all__ = ["ARCH", "HopfieldConfig", "HopfieldLM"]
