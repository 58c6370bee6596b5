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

# QLLM (notebook 04). CPU: nanoGPT's char shape on bytes, 400 steps, 8 globals and
# two 32-byte segments per block so the recurrent memory is exercised. GPU: the
# seed's run (WikiText-2 bytes, 768 wide, 12 layers, 12 heads, seq 256, lr 5e-5,
# AMP, accumulation 4); batch size and steps are ours (the seed does not say).
QLLM_CPU: dict[str, Any] = dict(
    NANOGPT_CHAR_CPU,
    tokenizer="byte",
    steps=400,
    warmup_steps=40,
    eval_interval=100,
    eval_iters=10,
    n_global=8,
    segment_len=32,
)
QLLM_GPU: dict[str, Any] = dict(
    corpus="wikitext2",
    tokenizer="byte",
    n_layer=12,
    n_head=12,
    n_embd=768,
    block_size=256,
    batch_size=16,
    grad_accum=4,
    steps=5000,
    lr=5e-5,
    min_lr=5e-6,
    warmup_steps=200,
    weight_decay=0.1,
    beta2=0.95,
    dropout=0.0,
    dtype="auto",
    eval_interval=500,
    eval_iters=50,
    n_global=16,
    segment_len=64,
)

# NGT (notebook 03). CPU: nanoGPT's char shape (its MLP widened to match GPT's
# parameter count, mlp_hidden=0), fewer steps so NGT and GPT both train within
# the notebook's three minutes. GPU: the seed's WikiText-103 run (BPE-8192,
# d 512, C 64, 8 layers, 8 heads, MLP 2048, block 512, batch 16 x accum 2,
# lr 3e-4, warmup 2000, cosine to 0, dropout 0.1, 15k steps, AdamW defaults).
NGT_CPU: dict[str, Any] = dict(
    NANOGPT_CHAR_CPU,
    steps=1000,
    eval_interval=200,
    n_coord=32,
    head_coord=16,
)
NGT_GPU: dict[str, Any] = dict(
    corpus="wikitext103",
    tokenizer="bpe:8192",
    n_layer=8,
    n_head=8,
    n_embd=512,
    n_coord=64,
    head_coord=16,
    mlp_hidden=2048,
    block_size=512,
    batch_size=16,
    grad_accum=2,
    steps=15_000,
    lr=3e-4,
    min_lr=0.0,
    warmup_steps=2000,
    weight_decay=0.01,
    beta2=0.999,
    dropout=0.1,
    eval_interval=500,
    eval_iters=50,
)

CONTEXT_VECTOR_CPU: dict[str, Any] = dict(
    # New-LLM (context_vector, notebook 02). cpu: the seed's model scaled to the
    # nanoGPT char recipe's budget (block, batch, schedule), fewer steps since the
    # notebook trains it beside its variants and a matched GPT.
    {k: v for k, v in NANOGPT_CHAR_CPU.items() if k != "n_head"},
    n_layer=1,
    n_embd=128,
    n_hidden=256,
    n_context=128,
    form="seed",
    carry_state=True,  # the seed's training: consecutive blocks, state handed on (truncated BPTT)
    steps=400,
    lr=2e-3,
    warmup_steps=40,
    eval_interval=100,
    threads=1,  # a per-token loop of tiny ops: extra threads only add synchronisation
)

CONTEXT_VECTOR_GPU: dict[str, Any] = dict(
    # gpu: the seed's own configuration (BPE 10k, embed 256, hidden 512, context
    # 256, 1 layer, length 512, dropout 0.1) on UltraChat, the chat-formatted
    # corpus the seed meant to train on, so `physllm chat` has a model to talk to.
    corpus="ultrachat",
    tokenizer="bpe:10000",
    max_chars=200_000_000,
    n_layer=1,
    n_embd=256,
    n_hidden=512,
    n_context=256,
    form="seed",
    carry_state=True,
    block_size=512,
    batch_size=32,
    steps=10_000,
    lr=1e-3,
    min_lr=1e-4,
    warmup_steps=500,
    weight_decay=0.1,
    beta2=0.95,
    dropout=0.1,
    eval_interval=500,
    eval_iters=50,
)

# Hamiltonian LLM (notebook 01). CPU: nanoGPT's char shape, 200 steps, since the
# notebook trains the symplectic model (direct and conservative force), the seed
# variant and a matched GPT. GPU: the seed's run (d 640, 12 layers, 10 heads,
# context 1024, batch 8 x accum 16, 10k steps, constant lr 6e-4, FineWeb-Edu,
# gpt2 tokens, end-of-text 50256), here with a held-out validation loss.
HAMILTONIAN_CPU: dict[str, Any] = dict(
    NANOGPT_CHAR_CPU,
    steps=200,
    warmup_steps=20,
    eval_interval=100,
    eval_iters=10,
)
HAMILTONIAN_GPU: dict[str, Any] = dict(
    corpus="fineweb-edu",
    tokenizer="tiktoken:gpt2",
    n_layer=12,
    n_head=10,
    n_embd=640,
    block_size=1024,
    batch_size=8,
    grad_accum=16,
    steps=10_000,
    lr=6e-4,
    min_lr=6e-4,
    warmup_steps=0,
    weight_decay=0.1,
    beta2=0.95,
    dropout=0.0,
    eos_id=50256,
    eval_interval=500,
    eval_iters=50,
)

# CHopT (notebook 05). CPU: nanoGPT's char GPT trained briefly as the backbone
# (stage 1, the memory empty), then the memory layer on synthetic facts with the
# backbone frozen (stage 2, memory_* fields). GPU: Llama-3.2-3B (pretrained, so
# no stage 1: steps=0) with LoRA, NarrativeQA summaries written to memory only.
HOPFIELD_CPU: dict[str, Any] = dict(
    NANOGPT_CHAR_CPU,
    steps=500,
    warmup_steps=50,
    eval_interval=250,
    eval_iters=10,
    memory_steps=150,
)
HOPFIELD_GPU: dict[str, Any] = dict(
    backbone="hf:meta-llama/Llama-3.2-3B",
    tokenizer="hf:meta-llama/Llama-3.2-3B",
    corpus="narrativeqa",
    block_size=2048,
    steps=0,
    mem_heads=8,
    mem_head_dim=128,
    key_window=4,
    n_slots=16384,
    memory_steps=3000,
    memory_lr=1e-4,
    memory_batch=4,
    lora_rank=16,
)

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "gpt": {"cpu": NANOGPT_CHAR_CPU, "gpu": GPT2_SMALL_GPU},
    "hopfield": {"cpu": HOPFIELD_CPU, "gpu": HOPFIELD_GPU},
    "hamiltonian": {"cpu": HAMILTONIAN_CPU, "gpu": HAMILTONIAN_GPU},
    "context_vector": {"cpu": CONTEXT_VECTOR_CPU, "gpu": CONTEXT_VECTOR_GPU},
    "ngt": {"cpu": NGT_CPU, "gpu": NGT_GPU},
    "qllm": {"cpu": QLLM_CPU, "gpu": QLLM_GPU},
}


def get_preset(model: str, preset: str) -> dict[str, Any]:
    """The overrides of ``preset`` for ``model`` (a copy: safe to modify)."""
    try:
        return dict(PRESETS[model][preset])
    except KeyError:
        known = ", ".join(PRESETS.get(model, {})) or "none"
        raise PhysllmError(f"no preset {preset!r} for model {model!r} (known: {known})") from None


def baseline_overrides(model: str, preset: str, baseline: str = "gpt") -> dict[str, Any]:
    """The settings of ``model``'s preset that ``baseline`` can take too (training budget,
    data, shared shape fields), so a vanilla baseline trains at the same budget."""
    import dataclasses

    from physllm.models import get_model_classes
    from physllm.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)} | {
        f.name for f in dataclasses.fields(get_model_classes(baseline)[0])
    }
    return {
        k: v for k, v in get_preset(model, preset).items() if k in names - {"model", "model_config"}
    }
