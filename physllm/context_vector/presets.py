"""New-LLM's presets (context_vector, notebook 02).

CPU: the seed's model scaled to the nanoGPT char recipe's budget (block,
batch, schedule), fewer steps since the notebook trains it beside its variants
and a matched GPT. GPU: the seed's own configuration (BPE 10k, embed 256,
hidden 512, context 256, 1 layer, length 512, dropout 0.1) on UltraChat, the
chat-formatted corpus the seed meant to train on, so ``physllm chat`` has a
model to talk to.
"""

from __future__ import annotations

from physllm.arch import Preset
from physllm.gpt.presets import NANOGPT_CHAR_CPU

CONTEXT_VECTOR_CPU = NANOGPT_CHAR_CPU.without("n_head").with_(
    model=dict(
        n_layer=1,
        n_hidden=256,
        n_context=128,
        form="seed",
        carry_state=True,  # ours, not the seed's (it trained on independent samples): truncated BPTT
    ),
    train=dict(
        steps=400,
        lr=2e-3,
        warmup_steps=40,
        eval_interval=100,
        threads=1,  # a per-token loop of tiny ops: extra threads only add synchronisation
    ),
)
CONTEXT_VECTOR_GPU = Preset(
    model=dict(
        n_layer=1,
        n_embd=256,
        n_hidden=512,
        n_context=256,
        form="seed",
        carry_state=True,
        block_size=512,
        dropout=0.1,
    ),
    train=dict(
        corpus="ultrachat",
        tokenizer="bpe:10000",
        max_chars=200_000_000,
        batch_size=32,
        steps=10_000,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=500,
        weight_decay=0.1,
        beta2=0.95,
        eval_interval=500,
        eval_iters=50,
    ),
)

PRESETS = {"cpu": CONTEXT_VECTOR_CPU, "gpu": CONTEXT_VECTOR_GPU}
