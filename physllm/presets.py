"""Named configurations: ``PRESETS[model][preset] -> overrides``.

``cpu`` presets run in about three minutes on two CPU cores and still show a
real effect; ``gpu`` presets are the seed projects' own scale. Notebooks and the
CLI (``--preset``) read the same table, so a notebook run and a CLI run with the
same preset train the same thing.
"""

from __future__ import annotations

from typing import Any

from physllm.errors import PhysllmError

# nanoGPT's Shakespeare-char CPU recipe (its README): val loss 1.88 after 2000 iterations.
NANOGPT_CHAR_CPU: dict[str, Any] = dict(
    corpus="default",
    tokenizer="char",
    n_layer=4,
    n_head=4,
    n_embd=128,
    block_size=64,
    batch_size=12,
    steps=2000,
    lr=1e-3,
    min_lr=1e-4,
    warmup_steps=100,
    weight_decay=0.1,
    beta2=0.99,
    dropout=0.0,
    grad_clip=1.0,
    eval_interval=250,
    eval_iters=20,
)

# GPT-2 small (124M) on a FineWeb-Edu sample with gpt2 tokens: the scale of the
# Hamiltonian seed; the other architectures' gpu presets set their own.
GPT2_SMALL_GPU: dict[str, Any] = dict(
    corpus="fineweb-edu",
    tokenizer="tiktoken:gpt2",
    n_layer=12,
    n_head=12,
    n_embd=768,
    block_size=1024,
    batch_size=8,
    grad_accum=16,
    steps=10_000,
    lr=6e-4,
    min_lr=6e-5,
    warmup_steps=700,
    weight_decay=0.1,
    beta2=0.95,
    dropout=0.0,
    eval_interval=500,
    eval_iters=50,
    compile=True,
)

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "gpt": {"cpu": NANOGPT_CHAR_CPU, "gpu": GPT2_SMALL_GPU},
}


def get_preset(model: str, preset: str) -> dict[str, Any]:
    """The overrides of ``preset`` for ``model`` (a copy: safe to modify)."""
    try:
        return dict(PRESETS[model][preset])
    except KeyError:
        known = ", ".join(PRESETS.get(model, {})) or "none"
        raise PhysllmError(f"no preset {preset!r} for model {model!r} (known: {known})") from None
