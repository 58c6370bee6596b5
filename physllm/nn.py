"""Building blocks shared by several architectures, defined once.

GPT, QLLM and NGT use the same GELU MLP and bias-optional LayerNorm, GPT and the
Hamiltonian model's potential the same causal attention, and
GPT, QLLM, NGT and the Hamiltonian model start from GPT-2's init. The blocks
take plain ints and flags rather than a config, so any model can build them.
Parameter names (``c_fc``, ``c_proj``, ``weight``, ``bias``) are part of the
checkpoint format: renaming one changes every state_dict key.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from physllm.validation import ConfigError

__all__ = [
    "MLP",
    "CausalSelfAttention",
    "Derived",
    "KVCache",
    "LayerNorm",
    "RollingKVCache",
    "band_causal_mask",
    "init_gpt2_weights",
    "layer_norm",
    "mlp_step",
    "one_query_attention",
]


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's cannot drop only the bias)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


def layer_norm(module: LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` without the module call's overhead (decoding steps)."""
    return F.layer_norm(x, module.weight.shape, module.weight, module.bias, 1e-5)


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


def mlp_step(x: torch.Tensor, ln: LayerNorm, mlp: MLP) -> torch.Tensor:
    """``x + mlp(ln(x))`` in eval mode as functional calls: the second half of a pre-LN
    block's decoding step (GPT, QLLM, NGT), where module calls cost as much as the math."""
    h = F.gelu(F.linear(layer_norm(ln, x), mlp.c_fc.weight, mlp.c_fc.bias))
    return x + F.linear(h, mlp.c_proj.weight, mlp.c_proj.bias)


class KVCache:
    """The keys and values of earlier positions, (B, nh, capacity, hs) each, allocated once.

    :meth:`extend` writes a step's new keys and values in place and returns views of the
    filled prefix, so a decoding step costs one token's work; growing the cache by
    ``torch.cat`` instead copies every earlier key and value at every step.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, capacity: int):
        B, nh, T, hs = k.shape
        if T > capacity:
            raise ValueError(f"a prefix of {T} positions does not fit a cache of {capacity}")
        self.k = k.new_empty(B, nh, capacity, hs)
        self.v = v.new_empty(B, nh, capacity, v.size(-1))
        self.k[:, :, :T], self.v[:, :, :T] = k, v
        self.length = T

    @classmethod
    def empty(
        cls, like: torch.Tensor, batch: int, n_head: int, head_size: int, capacity: int
    ) -> KVCache:
        """A cache that holds no position yet, of ``like``'s dtype and device."""
        k = like.new_empty(batch, n_head, 0, head_size)
        return cls(k, k, capacity)

    @property
    def capacity(self) -> int:
        return self.k.size(2)

    def extended(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What :meth:`extend` returns, without storing k, v: for queries whose keys and
        values no later position reads (QLLM's write memory)."""
        held = slice(0, self.length)
        return (
            torch.cat([self.k[:, :, held], k], dim=2),
            torch.cat([self.v[:, :, held], v], dim=2),
        )

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, nh, T, hs) in place; the keys and values of every position so far."""
        end = self.length + k.size(2)
        if end > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} positions, {end} asked")
        self.k[:, :, self.length : end], self.v[:, :, self.length : end] = k, v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Derived:
    """What a decoding state keeps that comes from the model's parameters alone (a kernel's
    weights, the softplus of a learned scalar), computed once when the state is made so
    that each step does not redo it, and again for every new state, so parameters changed
    between two decodes are seen. ``values``: anything (per-layer tuples of tensors).

    It is the model's, the same for every sequence, not what the state grows by:
    :func:`state_nbytes` does not count it, and forking a state shares it."""

    __slots__ = ("values",)

    def __init__(self, values: Any):
        self.values = values


def state_nbytes(obj: Any) -> tuple[int, bool, bool]:
    """(bytes, holds a KV cache, holds floating-point tensors) of a decoding state: nested
    dicts, lists and tuples of tensors, caches (the positions they hold, not their
    capacity) and objects holding those (a model's own per-layer cache). What is
    :class:`Derived` from the parameters is not the state's and counts nothing."""
    if isinstance(obj, Derived):
        return 0, False, False
    if isinstance(obj, KVCache | RollingKVCache):
        k, v = obj.k[:, :, : obj.length], obj.v[:, :, : obj.length]
        return k.numel() * k.element_size() + v.numel() * v.element_size(), True, True
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size(), False, obj.is_floating_point()
    if isinstance(obj, dict):
        parts = list(obj.values())
    elif isinstance(obj, list | tuple):
        parts = list(obj)
    elif hasattr(obj, "__dict__"):
        parts = list(vars(obj).values())
    else:
        return 0, False, False
    sizes = [state_nbytes(p) for p in parts]
    return sum(s[0] for s in sizes), any(s[1] for s in sizes), any(s[2] for s in sizes)


class RollingKVCache:
    """The keys and values of the last ``capacity`` positions, (B, nh, capacity, hs) each: a
    ring buffer allocated once, so a sliding-window model decodes in the same memory however
    long the stream. Same interface as :class:`KVCache`; a prefix longer than the ring keeps
    its last ``capacity`` positions.

    One new position overwrites the oldest in place, and :meth:`extend` returns the ring in
    storage order, not time order. That is correct: attention is a weighted sum over keys,
    blind to their order, and each key already carries its position (added to the token
    embedding before the projection). A chunk of several positions comes back in time order
    after the held ones, for the band mask its queries need.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, capacity: int):
        B, nh, _, hs = k.shape
        self.k = k.new_empty(B, nh, capacity, hs)
        self.v = v.new_empty(B, nh, capacity, v.size(-1))
        self._store(k, v)

    @property
    def capacity(self) -> int:
        return self.k.size(2)

    def _store(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep the last ``capacity`` of k, v (in time order) at the start of the ring."""
        n = min(k.size(2), self.capacity)
        self.k[:, :, :n], self.v[:, :, :n] = k[:, :, k.size(2) - n :], v[:, :, v.size(2) - n :]
        self.length, self.next = n, n % self.capacity  # positions held; the slot written next

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add k, v (B, nh, T, hs); the keys and values of the last ``capacity`` positions
        before them, followed by (T > 1) or overwritten by (T == 1) the new ones."""
        if k.size(2) == 1:  # a decoding step: in place, the ring in storage order
            self.k[:, :, self.next : self.next + 1], self.v[:, :, self.next : self.next + 1] = k, v
            self.next = (self.next + 1) % self.capacity
            self.length = min(self.length + 1, self.capacity)
            return self.k[:, :, : self.length], self.v[:, :, : self.length]
        shift = -self.next if self.length == self.capacity else 0  # oldest held position first
        past_k = self.k[:, :, : self.length].roll(shift, dims=2)
        past_v = self.v[:, :, : self.length].roll(shift, dims=2)
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        self._store(k, v)
        return k, v


def band_causal_mask(
    T: int, S: int, window: int = 0, device: torch.device | None = None
) -> tuple[torch.Tensor | None, bool]:
    """``(attn_mask, is_causal)`` for ``F.scaled_dot_product_attention`` when the T queries
    are the last T of S keys: query i, at key position p = S - T + i, may see key j iff
    p - window < j <= p (``window`` 0: iff j <= p), i.e. itself and the window - 1 before it.
    """
    T_past = S - T
    if T_past == 0 and (window == 0 or window >= T):
        return None, True  # plain causal: the kernels' fast path
    if T == 1 and (window == 0 or window >= S):
        return None, False  # one query that may see every key
    mask = torch.ones(T, S, dtype=torch.bool, device=device).tril(T_past)
    if window:
        mask = mask.triu(T_past - window + 1)
    return mask, False


class CausalSelfAttention(nn.Module):
    """Causal multi-head attention with an optional key/value cache (GPT's; see
    :mod:`physllm.gpt.model` for the math), through ``F.scaled_dot_product_attention``.
    ``window`` W > 0 makes it sliding-window: each position sees itself and the W - 1
    before it (:func:`band_causal_mask`)."""

    def __init__(
        self, n_embd: int, n_head: int, bias: bool = False, dropout: float = 0.0, window: int = 0
    ):
        super().__init__()
        if n_embd % n_head:  # configs edited after construction too
            raise ConfigError(f"--n-embd ({n_embd}) must be a multiple of --n-head ({n_head})")
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = n_head
        self.dropout = dropout
        self.window = window

    def forward(
        self, x: torch.Tensor, cache: KVCache | RollingKVCache | None = None
    ) -> tuple[torch.Tensor, KVCache | RollingKVCache | tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, C); ``cache`` the keys and values of earlier positions (extended in
        place), or None. Returns the output (B, T, C) and the cache, or this call's (k, v)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is not None:
            k, v = cache.extend(k, v)  # (B, nh, T_past + T, hs)
        # With a cache the T new queries sit at the end: query i may see keys up
        # to T_past + i, which is the causal mask shifted right by T_past.
        mask, causal = band_causal_mask(T, k.size(2), self.window, x.device)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y)), (k, v) if cache is None else cache

    def step(self, x: torch.Tensor, cache: KVCache | RollingKVCache) -> torch.Tensor:
        """:meth:`forward`'s output for one new position x (B, 1, C) after those in ``cache``
        (extended in place), in eval mode, through :func:`one_query_attention`."""
        y = one_query_attention(x, self.c_attn.weight, self.c_attn.bias, self.n_head, cache)
        return F.linear(y, self.c_proj.weight, self.c_proj.bias)


def one_query_attention(
    x: torch.Tensor,
    w_qkv: torch.Tensor,
    b_qkv: torch.Tensor | None,
    n_head: int,
    cache: KVCache | RollingKVCache,
) -> torch.Tensor:
    """Causal attention for one new position x (B, 1, C) after those in ``cache`` (extended
    in place), before the output projection: (B, 1, C). ``w_qkv`` (3C, C), ``b_qkv`` project
    to q, k, v side by side. About half the ops of the general path: a lone query sees every
    key the cache returns (a window's ring holds only those it may see), so there is no
    mask, and with T = 1 the heads (B, nh, 1, hs) lie in memory as (B, 1, C), so they need
    no transposes or copies, in or out."""
    B, _, C = x.shape
    qkv = F.linear(x, w_qkv, b_qkv)  # (B, 1, 3C): q, k, v
    q, k, v = qkv.view(B, 3, n_head, 1, C // n_head).unbind(1)  # (B, nh, 1, hs)
    k, v = cache.extend(k, v)
    y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, 1, hs)
    return y.reshape(B, 1, C)


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
