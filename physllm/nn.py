"""Building blocks shared by several architectures, defined once.

GPT, QLLM and NGT use the same GELU MLP and bias-optional LayerNorm, and
GPT, QLLM, NGT and the Hamiltonian model start from GPT-2's init. The blocks
take plain ints and flags rather than a config, so any model can build them.
Parameter names (``c_fc``, ``c_proj``, ``weight``, ``bias``) are part of the
checkpoint format: renaming one changes every state_dict key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "LayerNorm", "init_gpt2_weights"]


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's cannot drop only the bias)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class MLP(nn.Module):
    """d -> hidden -> d with GELU, then dropout: the transformer's feed-forward.

    ``hidden`` defaults to GPT's 4 * n_embd; NGT passes a width that matches
    a GPT's parameter count.
    """

    def __init__(
        self, n_embd: int, hidden: int | None = None, bias: bool = False, dropout: float = 0.0
    ):
        super().__init__()
        hidden = 4 * n_embd if hidden is None else hidden
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


def init_gpt2_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2 init: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 n_layer)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):  # each residual branch adds variance: keep the sum O(1)
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
