"""Training FLOPs per token, counted by running the model (not by a per-model formula).

:func:`training_flops_per_token` runs one forward and backward pass of a
(batch, block) input under :class:`torch.utils.flop_counter.FlopCounterMode`,
which counts the floating-point operations of every matrix product torch
dispatches (``mm``, ``addmm``, ``bmm``, convolutions and the fused attention
kernels), 2 FLOPs per multiply-add. Every architecture is measured the same way,
whatever its layers are, so the numbers compare across the leaderboard.

What it counts, for a GPT with N matrix parameters (non-embedding, plus the tied
output head), n_layer blocks, width d and block T, per token:

    forward   2 N                  (each weight is one multiply-add per token)
            + n_layer * 4 T d      (scores Q K^T: 2 T d, and P V: 2 T d)
    backward  2 x forward          (gradients with respect to inputs and to weights)
    total     6 N + 12 n_layer T d

Causal attention is counted in full (T keys per query, not T/2): that is what
FlopCounterMode does for the fused kernels, and what a dense kernel computes.
Not counted: elementwise operations, softmax, normalisations, activations,
embedding lookups, the optimizer step, and any recurrence written with
elementwise products (a scan's gates); for the models here these are a few
percent of the total at most.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from physllm.models import LanguageModel

aten = torch.ops.aten


def _attention_flops(q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...]) -> int:
    """Q K^T then P V for q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv): 2 FLOPs a multiply-add."""
    b, h, t_q, d = q
    t_k, d_v = k[2], v[3]
    return 2 * b * h * t_q * t_k * d + 2 * b * h * t_q * t_k * d_v


def _cpu_attention_forward(q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> int:
    return _attention_flops(q, k, v)


def _cpu_attention_backward(
    grad_out: Any, q: Any, k: Any, v: Any, *args: Any, **kwargs: Any
) -> int:
    # dP = dO V^T and dV = P^T dO, dQ = dS K and dK = dS^T Q: twice the forward's products
    return 2 * _attention_flops(q, k, v)


# FlopCounterMode knows the CUDA attention kernels (flash, memory-efficient, cuDNN) but
# not the CPU one (torch 2.13): without these two entries attention would count 0 on CPU.
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_forward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


# metrics.json's flops_how: how flops_per_token was counted, in one line
FLOPS_HOW = (
    "torch FlopCounterMode on one forward+backward (eval mode) of a (1, block) batch, "
    "divided by block: matrix products incl. attention's QK^T and PV (causal counted in full); "
    "elementwise ops, softmax, norms, embeddings and the optimizer not counted"
)


def training_flops_per_token(
    model: LanguageModel,
    block_size: int,
    batch_size: int = 1,
    device: torch.device | str | None = None,
) -> float:
    """FLOPs of one training forward+backward, divided by the batch * block_size tokens.

    Random token ids (B, T) = (batch_size, block_size) go through ``model(idx, targets)``
    and ``loss.backward()`` under FlopCounterMode, on a copy of the model in eval mode:
    the model itself is untouched (its gradients, ``last_aux``/``last_state``, a
    memory bank's usage), no random number is drawn (no dropout mask, which is
    elementwise and would not count anyway), and no training-mode-only regulariser
    (QLLM's coherence, NGT's repulsion weight) is added: those are elementwise too.
    A model with no trainable parameter is counted forward only.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, block_size)
    idx = torch.randint(model.config.vocab_size, shape, generator=generator).to(device)
    targets = torch.randint(model.config.vocab_size, shape, generator=generator).to(device)
    probe = copy.deepcopy(model).eval()
    for p in probe.parameters():
        p.grad = None
    with (
        torch.enable_grad(),
        FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter,
    ):
        _, loss = probe(idx, targets)
        if loss.requires_grad:
            loss.backward()
    return counter.get_total_flops() / (batch_size * block_size)


__all__ = ["CPU_ATTENTION", "FLOPS_HOW", "training_flops_per_token"]
