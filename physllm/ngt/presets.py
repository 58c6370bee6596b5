"""NGT's presets (notebook 03).

CPU: nanoGPT's char shape (its MLP widened to match GPT's parameter count,
``mlp_hidden=0``), fewer steps so NGT and GPT both train within the notebook's
three minutes. GPU: the seed's WikiText-103 run (BPE-8192, d 512, C 64, 8
layers, 8 heads, MLP 2048, block 512, batch 16 x accum 2, lr 3e-4, warmup
2000, cosine to 0, dropout 0.1, 15k steps, AdamW defaults).
"""

from __future__ import annotations

from physllm.arch import Preset
from physllm.gpt.presets import NANOGPT_CHAR_CPU

NGT_CPU = NANOGPT_CHAR_CPU.with_(
    model=dict(n_coord=32, head_coord=16), train=dict(steps=1000, eval_interval=200)
)
NGT_GPU = Preset(
    model=dict(
        n_layer=8,
        n_head=8,
        n_embd=512,
        n_coord=64,
        head_coord=16,
        mlp_hidden=2048,
        block_size=512,
        dropout=0.1,
    ),
    train=dict(
        corpus="wikitext103",
        tokenizer="bpe:8192",
        batch_size=16,
        grad_accum=2,
        steps=15_000,
        lr=3e-4,
        min_lr=0.0,
        warmup_steps=2000,
        weight_decay=0.01,
        beta2=0.999,
        eval_interval=500,
        eval_iters=50,
    ),
)

PRESETS = {"cpu": NGT_CPU, "gpu": NGT_GPU}
