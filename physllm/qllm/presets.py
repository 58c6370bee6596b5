"""QLLM's presets (notebook 04).

CPU: nanoGPT's char shape on bytes, 400 steps, 8 globals and two 32-byte
segments per block so the recurrent memory is exercised. GPU: the seed's run
(WikiText-2 bytes, 768 wide, 12 layers, 12 heads, seq 256, lr 5e-5, AMP,
accumulation 4); batch size and steps are ours (the seed does not say).
"""

from __future__ import annotations

from physllm.arch import Preset
from physllm.gpt.presets import NANOGPT_CHAR_CPU

QLLM_CPU = NANOGPT_CHAR_CPU.with_(
    model=dict(n_global=8, segment_len=32),
    train=dict(tokenizer="byte", steps=400, warmup_steps=40, eval_interval=100, eval_iters=10),
)
QLLM_GPU = Preset(
    model=dict(
        n_layer=12, n_head=12, n_embd=768, block_size=256, dropout=0.0, n_global=16, segment_len=64
    ),
    train=dict(
        corpus="wikitext2",
        tokenizer="byte",
        batch_size=16,
        grad_accum=4,
        steps=5000,
        lr=5e-5,
        min_lr=5e-6,
        warmup_steps=200,
        weight_decay=0.1,
        beta2=0.95,
        dtype="auto",
        eval_interval=500,
        eval_iters=50,
    ),
)

PRESETS = {"cpu": QLLM_CPU, "gpu": QLLM_GPU}
