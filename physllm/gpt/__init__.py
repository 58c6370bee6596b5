"""The vanilla GPT every physics model is measured against (notebook 00)."""

from physllm.arch import Architecture, Entry
from physllm.gpt.model import GPT, GPTConfig
from physllm.gpt.presets import PRESETS

ARCH = Architecture(
    name="gpt",
    config_class=GPTConfig,
    model_class=GPT,
    notebook="00_foundations",
    presets=PRESETS,
    leaderboard=(
        Entry("gpt", "gpt", "vanilla: pre-LN, learned positions, tied embeddings (the reference)"),
    ),
)

__all__ = ["ARCH", "GPT", "GPTConfig"]
