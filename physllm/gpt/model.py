"""The vanilla GPT every physics model is measured against.

nanoGPT's model, kept readable: pre-LayerNorm blocks, learned absolute
positions, causal multi-head attention through
``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU),
a GELU MLP, the output head tied to the token embedding, GPT-2's init, and a
key/value cache so sampling costs one token's work per step.

Attention, for one head with queries Q, keys K, values V (T x hs each):

    S_ij = Q_i . K_j / sqrt(hs)          similarity of position i to j
    S_ij = -inf for j > i                the causal mask: no peeking ahead
    A_i  = softmax_j(S_ij)               weights: a probability over the past
    O_i  = sum_j A_ij V_j                a weighted average of past values

With ``attn_window`` W > 0 the mask is a band, S_ij = -inf unless i - W < j <= i:
each position sees itself and the W - 1 before it (sliding-window attention, as in
Longformer / Mistral), so decoding keeps only the last W keys and values per layer
(:class:`~physllm.nn.RollingKVCache`) and its memory stays constant however long the
stream. Stacked, the n_layer windows still reach n_layer (W - 1) tokens back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from physllm.arch import LanguageModel, TransformerShape
from physllm.nn import (
    MLP,
    CausalSelfAttention,
    KVCache,
    LayerNorm,
    RollingKVCache,
    init_gpt2_weights,
    layer_norm,
    mlp_step,
)
from physllm.validation import NON_NEGATIVE


@dataclass
class GPTConfig(TransformerShape):
    """GPT is the transformer shape (:class:`~physllm.arch.TransformerShape`) and the
    width of its MLP, so that it can match another model's parameter count exactly."""

    mlp_hidden: int = 0  # the MLP's hidden width; 0: GPT's 4 * n_embd
    attn_window: int = 0  # 0: full causal attention; W > 0: itself and the W - 1 before it

    field_rules = {"mlp_hidden": NON_NEGATIVE, "attn_window": NON_NEGATIVE}


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias)
        self.attn = CausalSelfAttention(
            config.n_embd, config.n_head, config.bias, config.dropout, window=config.attn_window
        )
        self.ln_2 = LayerNorm(config.n_embd, config.bias)
        self.mlp = MLP(
            config.n_embd, config.mlp_hidden or None, bias=config.bias, dropout=config.dropout
        )

    def forward(
        self, x: torch.Tensor, cache: KVCache | RollingKVCache | None = None
    ) -> tuple[torch.Tensor, KVCache | RollingKVCache | tuple]:
        if cache is not None and x.size(1) == 1 and not self.training:
            return self.step(x, cache), cache
        a, cache = self.attn(self.ln_1(x), cache)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, cache

    def step(self, x: torch.Tensor, cache: KVCache | RollingKVCache) -> torch.Tensor:
        """:meth:`forward` for one new position x (B, 1, C) in eval mode (decoding): the same
        math, the attention through its one-query path and the rest as functional calls, so
        GPT's step gets the same trimming as the other models' (the bench compares them)."""
        x = x + self.attn.step(layer_norm(self.ln_1, x), cache)
        return mlp_step(x, self.ln_2, self.mlp)


class GPT(LanguageModel):
    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: the same vectors read and write tokens
        init_gpt2_weights(self, config.n_layer)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, V); loss if targets (B, T) given."""
        logits, _ = self._run(idx, caches=None, start=0)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    def _run(
        self,
        idx: torch.Tensor,
        caches: list | None,
        start: int,
        after_block: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list]:
        """idx (B, T) at positions start .. start + T - 1 -> logits (B, T, V) and each block's
        cache (extended in place) or, without caches, its (k, v). ``after_block(i, x)``
        replaces block i's output x (B, T, C): a layer inserted between blocks (Hopfield's
        memory read)."""
        T = idx.size(1)
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        new_caches = []
        for i, block in enumerate(self.blocks):
            x, cache = block(x, None if caches is None else caches[i])
            if after_block is not None:
                x = after_block(i, x)
            new_caches.append(cache)
        return self.lm_head(self.ln_f(x)), new_caches

    def context_tokens(self) -> int:
        """How many of the latest tokens decide the next logits: the block, or with a window
        W each of the n_layer attentions reaching W - 1 positions further back."""
        W, block = self.config.attn_window, self.config.block_size
        return block if W == 0 else min(block, self.config.n_layer * (W - 1) + 1)

    @torch.no_grad()
    def decode_step(
        self,
        idx: torch.Tensor,
        state: dict | None = None,
        after_block: Callable[[int, torch.Tensor, bool], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """KV-cached step. The state keeps each layer's cache (a :class:`~physllm.nn.KVCache`
        preallocated to ``block_size`` and filled in place; with ``attn_window`` W a
        :class:`~physllm.nn.RollingKVCache` of the last W positions), the next position,
        and the last :meth:`context_tokens` tokens.

        ``after_block(i, x, fresh)`` replaces block i's output x (B, T, C) for the positions
        this step runs (a layer between blocks: Hopfield's memory read); ``fresh`` is True
        when the step encodes its context from scratch (the first step, or past the
        block), so a layer that keeps a state of its own across steps starts it again."""
        block, window = self.config.block_size, self.config.attn_window
        history = idx if state is None else torch.cat([state["tokens"], idx], dim=1)
        total = idx.size(1) + (0 if state is None else state["pos"])
        fresh = state is None or total > block
        hook = None if after_block is None else (lambda i, x: after_block(i, x, fresh))
        if fresh:
            # Learned absolute positions: past the block, re-encode the last block_size
            # tokens from position 0 (what uncached sampling does). Only the last
            # context_tokens of them reach the last position: encode those, at the block's end.
            if total > block:
                history = history[:, -self.context_tokens() :]
            start = block - history.size(1) if total > block else 0
            logits, prefix = self._run(history, caches=None, start=start, after_block=hook)
            if window:  # a ring of the last W positions: the same memory at any length
                caches = [RollingKVCache(k, v, min(window, block)) for k, v in prefix]
            else:
                caches = [KVCache(k, v, block) for k, v in prefix]
        else:
            logits, caches = self._run(idx, state["caches"], state["pos"], after_block=hook)
        tokens = history[:, -self.context_tokens() :]
        return logits[:, -1, :], {"tokens": tokens, "pos": min(total, block), "caches": caches}
