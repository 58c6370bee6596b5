"""CHopT's presets (notebook 05).

CPU: nanoGPT's char GPT trained briefly as the backbone (stage 1, the memory
empty), then the memory layer on synthetic facts with the backbone frozen
(stage 2, ``memory_*`` fields). GPU: Llama-3.2-3B (pretrained, so no stage 1:
``steps=0``) with LoRA, NarrativeQA summaries written to memory only.
"""

from __future__ import annotations

from physllm.arch import Preset
from physllm.gpt.presets import NANOGPT_CHAR_CPU

HOPFIELD_CPU = NANOGPT_CHAR_CPU.with_(
    model=dict(memory_steps=100),  # per stage (2a same wording, 2b paraphrases) and seed
    train=dict(steps=500, warmup_steps=50, eval_interval=250, eval_iters=10),
)
HOPFIELD_GPU = Preset(
    model=dict(
        backbone="hf:meta-llama/Llama-3.2-3B",
        block_size=2048,
        mem_heads=8,
        mem_head_dim=128,
        key_window=4,
        n_slots=16384,
        memory_steps=3000,
        memory_lr=1e-4,
        memory_batch=4,
        lora_rank=16,
    ),
    train=dict(tokenizer="hf:meta-llama/Llama-3.2-3B", corpus="narrativeqa", steps=0),
)

PRESETS = {"cpu": HOPFIELD_CPU, "gpu": HOPFIELD_GPU}
