"""QLLM's presets (notebook 04).

CPU: nanoGPT's char shape on bytes, 400 steps, 8 globals and two 32-byte
segments per block so the recurrent memory is exercised. GPU: the seed's
shape and batch (WikiText-2 bytes, 768 wide, 12 layers, 12 heads, seq 256,
16 x accumulation 4, lr 5e-5, AMP) with our model options (rotation,
recurrent globals, cosine coherence); the 5000 steps and the schedule are ours.

``seed``: the seed's own WikiText-2 run, as its ``train_improved.py`` launches
``quantum_llm_train.py`` (qllm2 v1): 768 wide, 12 layers, 12 heads, seq 256,
16 globals (``globals="seed"``), the PhaseRotator once on the embeddings
(``phase="gain", phase_at="embeddings"``), its coherence term with lambda 0.05,
LoRA r 32, alpha 64 trained with the base, an untied head, biases, dropout
0.1; batch 16 x accumulation 4, AdamW lr 5e-5 held constant (no warmup, no
decay), betas (0.9, 0.95), weight decay 0.01, gradient clip 1.0, fp16 AMP,
seed 42. Its script gives epochs, not steps: 20 epochs of WikiText-2's train
split (about 11.0 MB of bytes, ``max_samples`` 100000 x 256 does not cap it)
in 256-byte chunks, 16 per micro-batch, one step per 4, is about 13,400
optimizer steps. Ours, where the seed gives nothing to copy: the evaluation
(every 670 steps, about one of its epochs, on 50 batches; the final numbers
on the whole validation split, the seed's per-epoch measure). Ours, where it
does: the batches are random 256-byte windows (the seed shuffles fixed,
non-overlapping chunks once per epoch), and the model differences listed at
the end of :mod:`physllm.qllm.model`'s docstring.
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
# 20 epochs x ~11.0e6 bytes / (16 x 4 x 256 bytes per step) ~ 13,400 steps
SEED_STEPS = 13_400
QLLM_SEED = Preset(
    model=dict(
        n_layer=12,
        n_head=12,
        n_embd=768,
        block_size=256,
        bias=True,  # nn.Linear and nn.LayerNorm defaults (the head alone has none)
        dropout=0.1,
        phase="gain",
        phase_at="embeddings",
        globals="seed",
        n_global=16,
        coherence=0.05,
        coherence_form="seed",
        tie_head=False,
        lora_rank=32,
        lora_alpha=64.0,
        lora_train_base=True,  # --lora_train_only not passed
    ),
    train=dict(
        corpus="wikitext2",
        tokenizer="byte",
        batch_size=16,
        grad_accum=4,
        steps=SEED_STEPS,
        lr=5e-5,
        min_lr=5e-5,  # = lr: the seed has no schedule
        warmup_steps=0,
        weight_decay=0.01,
        beta1=0.9,
        beta2=0.95,
        grad_clip=1.0,
        dtype="float16",  # torch.amp.autocast("cuda") with a GradScaler
        seed=42,
        eval_interval=670,
        eval_iters=50,
    ),
)

PRESETS = {"cpu": QLLM_CPU, "gpu": QLLM_GPU, "seed": QLLM_SEED}
