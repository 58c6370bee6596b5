"""GPT's presets, and the nanoGPT recipe the CPU presets of every architecture start from."""

from __future__ import annotations

from physllm.arch import Preset

# nanoGPT's Shakespeare-char CPU recipe (its README): val loss 1.88 after 2000 iterations.
NANOGPT_CHAR_CPU = Preset(
    model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
    train=dict(
        corpus="default",
        tokenizer="char",
        batch_size=12,
        steps=2000,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=100,
        weight_decay=0.1,
        beta2=0.99,
        grad_clip=1.0,
        eval_interval=250,
        eval_iters=20,
    ),
)

# GPT-2 small (124M) on a FineWeb-Edu sample with gpt2 tokens: the scale of the
# Hamiltonian seed; the other architectures' gpu presets set their own.
GPT2_SMALL_GPU = Preset(
    model=dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0),
    train=dict(
        corpus="fineweb-edu",
        tokenizer="tiktoken:gpt2",
        batch_size=8,
        grad_accum=16,
        steps=10_000,
        lr=6e-4,
        min_lr=6e-5,
        warmup_steps=700,
        weight_decay=0.1,
        beta2=0.95,
        eval_interval=500,
        eval_iters=50,
        compile=True,
    ),
)

PRESETS = {"cpu": NANOGPT_CHAR_CPU, "gpu": GPT2_SMALL_GPU}
