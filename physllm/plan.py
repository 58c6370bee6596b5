"""Will a run fit, and how long will it take? ``python -m physllm plan``, before training.

For the config a ``train`` command line builds (the same flags: ``--model``, ``--preset``
and any field), without loading data or training:

* **parameters**: counted on the model built at that config (on the CPU, in float32);
* **memory** of one process, per GPU:

  - weights, gradients and AdamW's two moments: 4 bytes each a parameter, 16 in all
    (mixed precision keeps float32 weights and autocasts the matrix products);
  - activations kept for the backward pass, by the estimate of Korthikanti et al. (2022,
    "Reducing Activation Recomputation in Large Transformer Models", eq. 1) for a
    transformer layer, ``34 T B d`` bytes at 16 bits (doubled at float32), without its
    ``5 a T^2 B`` attention-score term: SDPA's fused kernels do not store the scores;
  - the logits and their gradient, ``2 x 4 B T V`` bytes (the loss reads them in float32);

  an estimate for a transformer; a recurrent model's activations differ;
* **FLOPs per token** of a training step (forward and backward), counted by running the
  model under :func:`physllm.training.flops.training_flops_per_token` at two short
  blocks and extrapolated linearly in the block length (attention's cost per token grows
  with it; every other matrix product's does not). The two points cost a second or two;
* **time** per optimizer step and for the run on named GPUs: FLOPs per step over the
  GPU's dense 16-bit peak times ``mfu``, the fraction of peak a run achieves (0.4 by
  default: what a well-tuned small-model run reaches; state your own with ``--mfu``).

The figures are estimates to decide whether ``-p steps 15000`` fits a Colab session, not
measurements: ``python -m physllm bench`` measures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from physllm.errors import PhysllmError
from physllm.fmt import format_seconds
from physllm.models import build_model
from physllm.training import TrainConfig
from physllm.training.flops import training_flops_per_token


@dataclass(frozen=True)
class GPU:
    """A GPU's memory and dense 16-bit tensor peak (its datasheet, no sparsity)."""

    name: str
    memory_gb: float
    peak_tflops: float
    dtype: str  # the 16-bit type it runs (the T4 has no bfloat16)


GPUS = (
    GPU("T4", 16, 65, "float16"),
    GPU("L4", 24, 121, "bfloat16"),
    GPU("A100-40GB", 40, 312, "bfloat16"),
    GPU("A100-80GB", 80, 312, "bfloat16"),
    GPU("H100-SXM", 80, 989, "bfloat16"),
)
DEFAULT_MFU = 0.4
USABLE_MEMORY = 0.9  # the CUDA context, allocator slack and fragmentation take the rest
BYTES_PER_PARAM = 16  # float32 weight + gradient + AdamW's two moments
ACTIVATION_BYTES = 34  # per token, per unit of width, per layer, at 16 bits (no scores)
LOGIT_BYTES = 8  # float32 logits and their gradient, per token and vocabulary entry
FLOP_BLOCKS = (32, 64)  # the two short blocks the FLOPs per token are measured at

# vocabulary sizes of tokenizers that need a download (or the corpus) to build
KNOWN_VOCAB = {
    "byte": 256,
    "char": 256,  # at most a byte's worth of characters for the corpora here
    "tiktoken:gpt2": 50257,
    "tiktoken:r50k_base": 50257,
    "tiktoken:p50k_base": 50281,
    "tiktoken:cl100k_base": 100277,
    "tiktoken:o200k_base": 200019,
}


def vocab_size_of(tokenizer: str, given: int = 0) -> int:
    """The vocabulary of ``tokenizer`` (``bpe:N`` is N), or ``given`` when set."""
    if given:
        return given
    if tokenizer in KNOWN_VOCAB:
        return KNOWN_VOCAB[tokenizer]
    if tokenizer.startswith("bpe"):
        return int(tokenizer.partition(":")[2] or 8192)
    raise PhysllmError(
        f"the vocabulary of tokenizer {tokenizer!r} is not known without loading it: "
        "pass --vocab-size"
    )


def flops_per_token(model: torch.nn.Module, block_size: int) -> float:
    """Training FLOPs per token at ``block_size``: measured at :data:`FLOP_BLOCKS` (batch 1)
    and extrapolated linearly in the block length."""
    short, long = (min(b, block_size) for b in FLOP_BLOCKS)
    f_short = training_flops_per_token(model, short)
    if long == short:
        return f_short
    f_long = training_flops_per_token(model, long)
    slope = (f_long - f_short) / (long - short)
    return f_long + slope * (block_size - long)


def memory_gb(cfg: TrainConfig, params: int, bits: int) -> dict[str, float]:
    """Per-process memory of one micro-batch step, by the module docstring's estimates."""
    mc = cfg.model_config
    tokens = cfg.batch_size * mc.block_size
    width, layers = getattr(mc, "n_embd", 0), getattr(mc, "n_layer", 1)
    scale = 1 if bits == 16 else 2
    parts = {
        "weights+optimizer": params * BYTES_PER_PARAM,
        "activations": ACTIVATION_BYTES * scale * tokens * width * layers,
        "logits": LOGIT_BYTES * tokens * mc.vocab_size,
    }
    gb = {k: v / 1e9 for k, v in parts.items()}
    gb["total"] = sum(gb.values())
    return gb


def plan(cfg: TrainConfig, mfu: float = DEFAULT_MFU, world_size: int = 1) -> dict[str, Any]:
    """The estimates of the module docstring for ``cfg`` (its ``vocab_size`` set), as a dict:
    ``params``, ``flops_per_token``, ``tokens_per_step``, ``memory_gb`` (16-bit and float32)
    and one row per :data:`GPUS` entry (``fits``, ``step_s``, ``run_s``)."""
    if not 0 < mfu <= 1:
        raise PhysllmError(f"mfu must be in (0, 1], got {mfu}")
    if cfg.model_config.vocab_size <= 0:
        raise PhysllmError("the config's vocab_size must be set (vocab_size_of)")
    model = build_model(cfg.model, cfg.model_config)
    params = sum(p.numel() for p in model.parameters())
    per_token = flops_per_token(model, cfg.model_config.block_size)
    del model
    tokens = cfg.batch_size * cfg.grad_accum * cfg.model_config.block_size * world_size
    mem = {bits: memory_gb(cfg, params, bits) for bits in (16, 32)}
    rows = []
    for gpu in GPUS:
        step_s = per_token * tokens / world_size / (gpu.peak_tflops * 1e12 * mfu)
        need = mem[16]["total"]
        rows.append(
            {
                "gpu": gpu.name,
                "memory_gb": gpu.memory_gb,
                "need_gb": need,
                "fits": need <= gpu.memory_gb * USABLE_MEMORY,
                "step_s": step_s,
                "run_s": step_s * cfg.steps,
            }
        )
    return {
        "model": cfg.model,
        "params": params,
        "flops_per_token": per_token,
        "tokens_per_step": tokens,
        "steps": cfg.steps,
        "mfu": mfu,
        "memory_gb": {"bits16": mem[16], "float32": mem[32]},
        "gpus": rows,
    }


def format_plan(p: Mapping[str, Any]) -> str:
    """The plan as the command prints it."""
    m16, m32 = p["memory_gb"]["bits16"], p["memory_gb"]["float32"]
    lines = [
        f"{p['model']}: {p['params'] / 1e6:.1f}M parameters, "
        f"{p['flops_per_token'] / 1e9:.3f} GFLOPs per token (training, measured), "
        f"{p['tokens_per_step']:,} tokens per step, {p['steps']:,} steps",
        f"memory per GPU, 16-bit autocast: {m16['total']:.1f} GB (weights and AdamW "
        f"{m16['weights+optimizer']:.1f}, activations {m16['activations']:.1f}, logits "
        f"{m16['logits']:.1f}); float32: {m32['total']:.1f} GB",
        f"at {p['mfu']:.0%} of each GPU's dense 16-bit peak:",
        f"  {'gpu':<10} {'memory':>7} {'fits':>5} {'per step':>9} {'whole run':>10}",
    ]
    for r in p["gpus"]:
        lines.append(
            f"  {r['gpu']:<10} {r['memory_gb']:>5.0f}GB {'yes' if r['fits'] else 'NO':>5} "
            f"{r['step_s']:>8.3f}s {format_seconds(r['run_s']):>10}"
        )
    lines.append("estimates (physllm.plan's docstring says how); python -m physllm bench measures")
    return "\n".join(lines)


def with_vocab(cfg: TrainConfig, vocab_size: int) -> TrainConfig:
    """``cfg`` with its model's vocabulary set (what loading the data would do)."""
    mc = dataclasses.replace(cfg.model_config, vocab_size=vocab_size)
    return dataclasses.replace(cfg, model_config=mc)


__all__ = ["DEFAULT_MFU", "GPUS", "format_plan", "plan", "vocab_size_of", "with_vocab"]
