"""QLLM (notebook 04): a byte-level transformer with a phase module, global memory
tokens, a coherence loss and LoRA."""

from physllm.arch import Architecture, Entry, Headline
from physllm.qllm.model import QLLM, QLLMConfig
from physllm.qllm.presets import PRESETS

ARCH = Architecture(
    name="qllm",
    config_class=QLLMConfig,
    model_class=QLLM,
    notebook="04_qllm",
    presets=PRESETS,
    leaderboard=(
        Entry("qllm", "qllm", "rotation phases, recurrent global memory tokens, coherence loss"),
    ),
    headlines=(Headline("04_qllm", "qllm", "per-position rotation, recurrent globals (bytes)"),),
)

__all__ = ["ARCH", "QLLM", "QLLMConfig"]
