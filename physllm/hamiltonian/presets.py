"""The Hamiltonian LLM's presets (notebook 01).

CPU: nanoGPT's char shape, 200 steps, since the notebook trains the symplectic
model (direct and conservative force), the seed variant and a matched GPT.
GPU: the seed's run (d 640, 12 layers, 10 heads, context 1024, batch 8 x accum
16, 10k steps, constant lr 6e-4, FineWeb-Edu, gpt2 tokens, end-of-text 50256),
here with a held-out validation loss.
"""

from __future__ import annotations

from physllm.arch import Preset
from physllm.gpt.presets import NANOGPT_CHAR_CPU

HAMILTONIAN_CPU = NANOGPT_CHAR_CPU.with_(
    train=dict(steps=200, warmup_steps=20, eval_interval=100, eval_iters=10)
)
HAMILTONIAN_GPU = Preset(
    model=dict(n_layer=12, n_head=10, n_embd=640, block_size=1024, dropout=0.0, eos_id=50256),
    train=dict(
        corpus="fineweb-edu",
        tokenizer="tiktoken:gpt2",
        batch_size=8,
        grad_accum=16,
        steps=10_000,
        lr=6e-4,
        min_lr=6e-4,
        warmup_steps=0,
        weight_decay=0.1,
        beta2=0.95,
        eval_interval=500,
        eval_iters=50,
    ),
)

PRESETS = {"cpu": HAMILTONIAN_CPU, "gpu": HAMILTONIAN_GPU}
