"""New-LLM (notebook 02): attention-free gated context recurrence, O(1) memory at
inference, HF transformers integration, chat."""

from physllm.arch import Architecture, Entry, Headline
from physllm.context_vector.chat import CHAT_COMMAND
from physllm.context_vector.model import ContextVectorConfig, ContextVectorModel
from physllm.context_vector.presets import PRESETS

ARCH = Architecture(
    name="context_vector",
    config_class=ContextVectorConfig,
    model_class=ContextVectorModel,
    notebook="02_context_vector",
    presets=PRESETS,
    # Attention-free and one layer deep (the seed's depth): its own widths, the FNN widened.
    leaderboard=(
        Entry(
            "context_vector-seed",
            "context_vector",
            "the seed's form (ReLU FNN, no tanh, clamp)",
            {"form": "seed", "gates": "hidden"},
            match="n_hidden",
            own_shape=True,
            # one 25M-parameter layer would be all FNN: stack four, as at scale one would
            per_preset={"gpu": {"n_layer": 4}},
        ),
        Entry(
            "context_vector-fixed",
            "context_vector",
            "fixed form (LayerNorm'ed input, residual GELU FNN, tanh delta)",
            # Input-read gates won at equal wall-clock (reports/choices/context_vector_gates_cpu)
            # but are not adopted: they read the 128-wide input, so the entry cannot be
            # matched to GPT's parameters at the probes' width 32 (README, "Design choices").
            {"form": "fixed", "gates": "hidden"},
            match="n_hidden",
            own_shape=True,
            per_preset={"gpu": {"n_layer": 4}},
        ),
    ),
    headlines=(
        Headline("02_context_vector", "seed", "the seed's form, truncated BPTT †"),
        Headline("02_context_vector", "seed_windows", "the seed's form, random windows"),
        Headline("02_context_vector", "fixed", "fixed form, truncated BPTT †"),
        Headline("02_context_vector", "scan", "parallel-scan form, truncated BPTT †"),
        Headline("02_context_vector", "scan_windows", "parallel-scan form, random windows"),
    ),
    commands=(CHAT_COMMAND,),
)

__all__ = ["ARCH", "ContextVectorConfig", "ContextVectorModel"]
