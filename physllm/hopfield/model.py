"""CHopT: a modern Hopfield memory after a transformer, persisting across calls.

A backbone (a physllm GPT, or any transformers causal LM) runs as usual; at
one layer (after the last by default) a Hopfield memory layer reads a bank of
stored patterns and adds what it retrieves to the hidden state. The bank is
written *at inference*: every call stores, for each of its tokens s, the
pair

    key_s   = W_k [h_{s-w+1} ... h_s]    what the context looked like (a causal
                                          window of w hidden states)
    value_s = W_v e(x_{s+1})             what came next (its token embedding)

so a later call, its context cleared, that finds itself in a similar
context (``the code of bolek is``) retrieves what followed (the code).
``key_encoder`` says what W_k (and W_q) is. ``conv``: a causal convolution,
a weight matrix per offset in the window. ``pool`` (the default): per head h,
over n-gram items f_s = G [h_{s-n+1} ... h_s] (n = ``key_ngram``),

    W_k [h_{s-w+1} ... h_s] = P_h sum_i a_{s,i} f_{s-i} + R_h f_s,
    a_{s,i} = softmax_i(u_h . f_{s-i} + b_h)      (i = 0 .. w-n)

content-addressed pooling whose weights never see the offset i: a name
written 6 tokens before the code ("and NAME gets CODE") and asked 2 before
("code of NAME; ") adds the same n-grams to both (only those across the
name's edges and the wording's own words differ), where the conv meets the two offsets with
different weights and a wording that puts a name at an offset no training
wording used is not matched. R_h f_s keeps the current n-gram: which
character of the answer comes next. The hidden states are LayerNorm-ed
first. The read is the modern Hopfield update of
:mod:`physllm.hopfield.functional`, per head h with its own inverse
temperature beta_h:

    q_t   = W_q [h_{t-w+1} ... h_t]                   state pattern
    xi   <- K softmax(beta_h K^T xi)  (n_updates times; energy never rises)
    r_t   = V softmax(beta_h K^T xi)                  read-out, heads side by side
    h'_t  = h_t + g_t W_o r_t                          combine: add | gated | concat

with g_t = sigmoid(w_g [h_t; W_o r_t]) for the gated form. An empty bank
leaves the backbone untouched, exactly, which is the "no memory" baseline.

The bank holds ``n_slots`` slots; when full, new writes replace the oldest
(``fifo``) or the least read (``least_used``, by accumulated attention).
``reset()``, ``save(path)`` and ``load(path)`` (safetensors) manage it.
Training (``physllm.training.train_memory``) freezes the backbone and
fits W_k, W_q, W_v, W_o, the gate and the betas on "facts, then questions"
episodes whose questions run in a second call that sees only the memory.

Generation is cached (``decode_step``): the bank does not change while a
call decodes, so a position's read is computed once, when it arrives, on
top of the backbone's key/value cache; only the read's causal window of
w - 1 earlier hidden states is kept besides.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from physllm.arch import LanguageModel, TransformerShape
from physllm.errors import PhysllmError
from physllm.gpt.model import GPT, GPTConfig
from physllm.hopfield import functional as hopfield_fn
from physllm.lora import LoRALinear, apply_lora
from physllm.sampling import generate
from physllm.validation import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_FLOAT,
    ConfigError,
    Rule,
    check_multiple,
    one_of,
    require,
)


@dataclass
class HopfieldConfig(TransformerShape):
    """The shape fields (:class:`~physllm.arch.TransformerShape`) size the GPT backbone;
    an ``hf:`` backbone ignores them."""

    block_size: int = 64
    # "gpt": a physllm GPT of the shape fields' sizes; "hf:<id or path>": transformers
    backbone: str = "gpt"
    # the memory layer
    mem_heads: int = 4
    mem_head_dim: int = 32
    key_window: int = 16  # hidden states per key: " NAME has code abc" fits
    # pool: content-addressed pooling, one key for a name at any offset (held-out wordings);
    # conv: weights per offset (a name where no training wording put it is not matched)
    key_encoder: str = "pool"
    key_ngram: int = 3  # pool: each pooled item is the last key_ngram states (order in a name)
    n_updates: int = 1  # Hopfield steps per read; 1 is exactly attention
    beta_init: float = 0.5  # per head; unit-RMS keys: an exact match scores beta * d_head = 16
    combine: str = "gated"  # add | gated | concat
    # a learned recency term per head in the read's logits (the latest of equal matches wins);
    # off by default: on stories it learned gamma ~ 0 and changed no result (notebook 05)
    recency: bool = False
    # one softmax over the slots for all heads, their logits summed: a slot must match in
    # every head (one head pooling the name, another the attribute), which binds name and
    # attribute; False: each head picks its own slots (stories: other people's values win).
    # Off by default: it cut the answers naming another person or attribute but resolved no
    # gain on held-out-question stories, and lowered facts in held-out wordings (issue 16)
    bind_heads: bool = False
    mem_layer: int = -1  # read after this backbone block (-1: after the last); gpt only
    n_slots: int = 4096  # one slot per written token: about 150 facts of 27 characters
    replacement: str = "fifo"  # fifo | least_used: which slot a write overwrites when full
    # stage-2 training of the memory (physllm.training.train_memory)
    memory_steps: int = 100  # same-wording facts: ~100% recall after 100 steps (CPU preset)
    memory_lr: float = 1e-2  # a small layer on frozen features: a large step is safe
    memory_batch: int = 8  # episodes per step
    memory_facts: int = 16  # facts per episode at most (the number is drawn per step)
    lora_rank: int = 0  # LoRA on the backbone during memory training (0: off)

    # read by the memory's own training (notebook 05, the probes), never by `train`: a
    # sweep's language-model run does not depend on them (experiments.sweep.check_record)
    stage_fields = ("memory_steps", "memory_lr", "memory_batch", "memory_facts")

    field_rules = {
        "backbone": Rule(
            lambda v: v == "gpt" or (v.startswith("hf:") and len(v) > 3),
            "must be 'gpt' or 'hf:<id or path>'",
        ),
        "mem_heads": POSITIVE,
        "mem_head_dim": POSITIVE,
        "key_window": POSITIVE,
        "key_encoder": one_of("conv", "pool"),
        "key_ngram": POSITIVE,
        "n_updates": POSITIVE,
        "beta_init": POSITIVE_FLOAT,  # stored as log(beta)
        "combine": one_of("add", "gated", "concat"),
        "n_slots": POSITIVE,
        "replacement": one_of("fifo", "least_used"),
        "memory_steps": NON_NEGATIVE,
        "memory_lr": POSITIVE_FLOAT,
        "memory_batch": POSITIVE,
        "memory_facts": POSITIVE,
        "lora_rank": NON_NEGATIVE,
    }

    def check(self) -> None:
        require(
            self.key_encoder != "pool" or self.key_ngram <= self.key_window,
            f"--key-ngram {self.key_ngram} must fit the key window (--key-window {self.key_window})",
        )
        if self.backbone != "gpt":
            return  # an hf: backbone's sizes are known once it is loaded (HopfieldMemory checks)
        super().check()
        check_multiple(self, "n_embd", "mem_heads")
        require(
            -self.n_layer <= self.mem_layer < self.n_layer,
            f"--mem-layer must be a block index in [-{self.n_layer}, {self.n_layer}) "
            f"(--n-layer {self.n_layer}), got {self.mem_layer}",
        )


class MemoryState(NamedTuple):
    """Stored patterns as the read sees them: keys (B, H, S, dk), values (B, H, S, dv), valid (B, S);
    ``slots`` (S,): the bank's slot of each (a bank's state), None for per-episode memories;
    ``order`` (B, S): when each was written (tokens; later is larger), None: no recency."""

    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    slots: torch.Tensor | None = None
    order: torch.Tensor | None = None


# Write order is counted in tokens; recency's gamma_h is per this many (a char backbone's block).
RECENCY_SCALE = 64.0

# A decoding step's memory read: (h (B, T, C) of the positions fed now, fresh) -> h'. ``fresh``
# is True when the backbone encodes its context from scratch (first step, or past the block).
DecodeRead = Callable[[torch.Tensor, bool], torch.Tensor]

# --------------------------------------------------------------------------- backbones


class GPTBackbone(nn.Module):
    """A physllm GPT run block by block, with the memory read after block ``layer``."""

    def __init__(self, gpt: GPT, layer: int = -1):
        super().__init__()
        self.gpt = gpt
        self.layer = layer % len(gpt.blocks)
        self.n_embd = gpt.config.n_embd
        self.block_size = gpt.config.block_size
        self.lora_targets = ("c_attn", "c_proj")  # LoRA: attention in and out, MLP out

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.gpt.wte(idx)

    def forward(
        self, idx: torch.Tensor, read: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """idx (B, T) -> (logits (B, T, V), hidden (B, T, C) where the memory reads)."""
        hidden: list[torch.Tensor] = []

        def at_layer(i: int, x: torch.Tensor) -> torch.Tensor:
            if i != self.layer:
                return x
            hidden.append(x)
            return read(x) if read is not None else x

        logits, _ = self.gpt._run(idx, caches=None, start=0, after_block=at_layer)
        return logits, hidden[0]

    def decode_step(
        self, idx: torch.Tensor, state: dict | None, read: DecodeRead | None = None
    ) -> tuple[torch.Tensor, dict]:
        """GPT's KV-cached step (:meth:`~physllm.gpt.model.GPT.decode_step`) with ``read``
        after block ``layer``: idx (B, T) -> next-token logits (B, V) and GPT's state
        (``tokens``: the last block_size tokens)."""

        def at_layer(i: int, x: torch.Tensor, fresh: bool) -> torch.Tensor:
            return read(x, fresh) if read is not None and i == self.layer else x

        return self.gpt.decode_step(idx, state, after_block=at_layer)


class HFBackbone(nn.Module):
    """Any transformers causal LM: the memory reads its final (normed) hidden state."""

    def __init__(self, model: nn.Module, block_size: int | None = None):
        super().__init__()
        self.model = model
        self.n_embd = model.config.hidden_size
        # decoding crops the context here (the model's config.block_size, as uncached sampling)
        self.block_size = block_size or getattr(model.config, "max_position_embeddings", 2048)
        self.lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")
        # the key/value cache's keyword: transformers 5.24 renamed past_key_values to cache
        params = inspect.signature(model.base_model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(idx)

    def forward(
        self, idx: torch.Tensor, read: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.model.base_model(input_ids=idx).last_hidden_state  # (B, T, C)
        x = read(h) if read is not None else h
        return self.model.get_output_embeddings()(x), h

    def decode_step(
        self, idx: torch.Tensor, state: dict | None, read: DecodeRead | None = None
    ) -> tuple[torch.Tensor, dict]:
        """A step with the model's own key/value cache (``past_key_values``), then ``read``
        on the new positions' final hidden states. Past ``block_size`` the last block_size
        tokens are re-encoded from position 0, as uncached sampling does. The state keeps
        the cache, the next position and (``tokens``) the last block_size tokens."""
        block = self.block_size
        history = idx if state is None else torch.cat([state["tokens"], idx], dim=1)
        total = idx.size(1) + (0 if state is None else state["pos"])
        fresh = state is None or total > block
        if fresh:
            history = history[:, -block:]
            out = self.model.base_model(input_ids=history, use_cache=True)
        else:
            cache = {self.cache_kwarg: state["past"]}  # extended in place
            out = self.model.base_model(input_ids=idx, use_cache=True, **cache)
        h = out.last_hidden_state  # (B, T, C): the positions run now (fresh: the context)
        x = read(h, fresh) if read is not None else h
        logits = self.model.get_output_embeddings()(x[:, -1])
        past = getattr(out, "cache", None)
        past = out.past_key_values if past is None else past  # transformers < 5.24
        return logits, {"tokens": history[:, -block:], "pos": min(total, block), "past": past}


def build_backbone(config: HopfieldConfig) -> nn.Module:
    if config.backbone == "gpt":
        gpt = GPT(GPTConfig(**config.shape()))
        return GPTBackbone(gpt, config.mem_layer)
    if config.backbone.startswith("hf:"):
        from transformers import AutoModelForCausalLM

        try:  # never trust_remote_code: only architectures transformers ships
            model = AutoModelForCausalLM.from_pretrained(config.backbone[3:])
        except (OSError, ValueError) as err:  # not found, not reachable, not a model
            err = str(err).strip().splitlines()[0][:200]
            raise PhysllmError(f"cannot load backbone {config.backbone!r}: {err}") from None
        return HFBackbone(model, config.block_size)
    raise PhysllmError(f"backbone must be 'gpt' or 'hf:<id>', got {config.backbone!r}")


# --------------------------------------------------------------------------- memory


class Window(nn.Module):
    """A map of the last ``window`` vectors at each position; ``tail`` keeps a decode's past."""

    window: int

    def tail(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        """The w - 1 latest inputs (B, w - 1, C) once x (B, T, C) follows ``past``: the
        ``past`` of the next step."""
        return torch.cat([past, x], dim=1)[:, x.size(1) :]


class CausalWindow(Window):
    """A linear map of the last ``w`` vectors: a causal conv1d (B, T, C) -> (B, T, out).
    Its weights are per offset: a name seen 4 tokens back and one 7 back meet different ones."""

    def __init__(self, n_in: int, n_out: int, window: int):
        super().__init__()
        self.window = window
        self.conv = nn.Conv1d(n_in, n_out, window, bias=False)
        nn.init.normal_(self.conv.weight, std=1.0 / math.sqrt(n_in * window))

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, out). ``past`` (B, w - 1, C): the w - 1 inputs before x
        (a decoding step's); None: zeros, the start of a sequence."""
        if past is None:  # (B, C, w - 1 + T): no peeking ahead
            x = F.pad(x.transpose(1, 2), (self.window - 1, 0))
        else:
            x = torch.cat([past, x], dim=1).transpose(1, 2)
        return self.conv(x).transpose(1, 2)


class PooledWindow(Window):
    """Content-addressed pooling of the last ``w`` positions, per head, plus the current one:
    (B, T, C) -> (B, T, heads * d). Items are n-grams: f_t = G [x_{t-n+1} ... x_t] (a causal
    conv of kernel n), so an item says which characters come in which order;

        a_{t,i} = softmax_i(u_h . f_{t-i} + b_h)          i = 0 .. w-n, per head h
        y_t,h   = P_h sum_i a_{t,i} f_{t-i} + R_h f_t

    No weight depends on the offset i, so the same name four or seven tokens back pools to
    the same vector; R_h f_t says where in the answer the position is (its last n tokens).
    """

    def __init__(self, n_in: int, heads: int, d: int, window: int, ngram: int = 3):
        super().__init__()
        self.window, self.heads, self.d, self.ngram = window, heads, d, ngram
        self.items = CausalWindow(n_in, n_in, ngram)  # G
        self.score = nn.Linear(n_in, heads)  # u_h, b_h
        nn.init.zeros_(self.score.weight)  # starts as the window's mean
        self.pool = nn.Linear(n_in, heads * d, bias=False)  # P
        self.here = nn.Linear(n_in, heads * d, bias=False)  # R
        for lin in (self.pool, self.here):
            nn.init.normal_(lin.weight, std=1.0 / math.sqrt(n_in))

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, heads * d). ``past`` (B, w - 1, C): the w - 1 inputs before
        x (a decoding step's); None: zeros, the start of a sequence (as the conv pads)."""
        B, T, _ = x.shape
        H, d, n = self.heads, self.d, self.window - self.ngram + 1  # n items per window
        if past is None:
            past = x.new_zeros(B, self.window - 1, x.size(2))
        xs = torch.cat([past, x], dim=1)  # (B, w - 1 + T, C)
        f = self.items.conv(xs.transpose(1, 2)).transpose(1, 2)  # (B, n - 1 + T, C)
        a = torch.softmax(self.score(f).unfold(1, n, 1), dim=-1)  # (B, T, H, n)
        v = self.pool(f).unfold(1, n, 1).view(B, T, H, d, n)  # project first: n x cheaper
        pooled = torch.einsum("bthn,bthdn->bthd", a, v)
        return (pooled + self.here(f[:, -T:]).view(B, T, H, d)).reshape(B, T, H * d)


def key_encoder(kind: str, n_in: int, heads: int, d: int, window: int, ngram: int) -> Window:
    """The key/query map of a window of hidden states: ``conv`` | ``pool``."""
    if kind == "pool":
        return PooledWindow(n_in, heads, d, window, ngram)
    return CausalWindow(n_in, heads * d, window)


class HopfieldMemory(nn.Module):
    """The read/write projections, per-head betas and the combination with the hidden state."""

    def __init__(self, config: HopfieldConfig, n_embd: int):
        super().__init__()
        H, dk = config.mem_heads, config.mem_head_dim
        if n_embd % H:
            raise ConfigError(
                f"the backbone's hidden size {n_embd} is not a multiple of --mem-heads {H}"
            )
        self.H, self.dk, self.dv = H, dk, n_embd // H
        self.n_updates, self.combine = config.n_updates, config.combine
        self.bind_heads = config.bind_heads
        self.norm = nn.LayerNorm(n_embd)
        encoder = (config.key_encoder, n_embd, H, dk, config.key_window, config.key_ngram)
        self.write_key = key_encoder(*encoder)  # W_k
        self.read_query = key_encoder(*encoder)  # W_q
        # The query starts as the key: equal contexts match from step 0 (auto-association).
        self.read_query.load_state_dict(self.write_key.state_dict())
        self.write_value = nn.Linear(n_embd, n_embd, bias=False)  # W_v
        self.out = nn.Linear(n_embd, n_embd, bias=False)  # W_o
        self.log_beta = nn.Parameter(torch.full((H,), math.log(config.beta_init)))
        # gamma_h: logit added per RECENCY_SCALE tokens of write order; 0: no recency at first
        self.recency = nn.Parameter(torch.zeros(H)) if config.recency else None
        if config.combine == "gated":
            self.gate = nn.Linear(2 * n_embd, 1)
        elif config.combine == "concat":
            self.mix = nn.Linear(2 * n_embd, n_embd, bias=False)
            with torch.no_grad():  # starts as h + r: identity on h
                self.mix.weight.zero_()
                self.mix.weight[:, :n_embd].copy_(torch.eye(n_embd))
                self.mix.weight[:, n_embd:].copy_(torch.eye(n_embd))

    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.exp()  # (H,)

    def _heads(self, x: torch.Tensor, d: int) -> torch.Tensor:
        """(B, T, H*d) -> (B, H, T, d), each head unit-RMS (keys and queries on one scale)."""
        B, T, _ = x.shape
        x = x.view(B, T, self.H, d).transpose(1, 2)
        return F.rms_norm(x, (d,))

    def entries(
        self, h: torch.Tensor, next_emb: torch.Tensor, valid: torch.Tensor | None = None
    ) -> MemoryState:
        """What a call writes: h (B, T, C) hidden states, next_emb (B, T-1, C) embeddings of x_{s+1}."""
        B, T, C = h.shape
        keys = self._heads(self.write_key(self.norm(h))[:, :-1], self.dk)  # (B, H, T-1, dk)
        values = self._heads(self.write_value(next_emb), self.dv)  # (B, H, T-1, dv), unit RMS
        if valid is None:
            valid = torch.ones(B, T - 1, dtype=torch.bool, device=h.device)
        order = torch.arange(T - 1, device=h.device, dtype=h.dtype).expand(B, T - 1)
        return MemoryState(keys, values, valid, order=order)

    def recency_bias(self, memory: MemoryState) -> torch.Tensor | None:
        """b_i = gamma_h (t_i - max_j t_j) / RECENCY_SCALE: (B, H, 1, S), or None (no term).
        t_i is the write order, so a later pattern gains gamma_h per RECENCY_SCALE tokens;
        shifting by the latest write changes no softmax and keeps the logits small."""
        if self.recency is None or memory.order is None:
            return None
        t = memory.order.to(self.recency.dtype)  # (B, S)
        t = (t - t.max(dim=-1, keepdim=True).values) / RECENCY_SCALE
        return self.recency.view(1, -1, 1, 1) * t[:, None, None, :]

    def state_pattern(self, h: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        """The probes a read starts from: h (B, T, C) -> q (B, H, T, dk). ``past`` (B, w - 1,
        C): the normed hidden states before h (:meth:`window`; None: the sequence starts)."""
        return self._heads(self.read_query(self.norm(h), past), self.dk)

    def window(self, h: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        """The ``past`` a read of the positions after h (B, T, C) needs: the last w - 1
        normed hidden states, (B, w - 1, C)."""
        return self.read_query.tail(self.norm(h), past)

    def _head_retrieve(
        self, q: torch.Tensor, memory: MemoryState, bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each head its own read: q (B, H, Q, dk) -> (r (B, H, Q, dv), association (B, H,
        Q, S), energies (steps + 1, B, H, Q)), :func:`~physllm.hopfield.functional.retrieve`."""
        return hopfield_fn.retrieve(
            q, memory.keys, self.beta, self.n_updates, memory.valid, memory.values, bias
        )

    def _bound_retrieve(
        self, q: torch.Tensor, memory: MemoryState, bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All heads one read (``bind_heads``), shapes as :meth:`_head_retrieve`'s. The
        heads' patterns, each scaled by sqrt(beta_h / H), are laid side by side, so

            p = softmax(sum_h beta_h / H  k_h . q_h + b)      one distribution, (B, Q, S)
            r_h = V_h p                                        every head reads it

        and a slot wins only where every head matches: a person's other attribute (name
        head only) and another person's same attribute (attribute head only) both lose to
        the slot that matches both. The 1/H keeps an exact match's logit at beta * dk, as
        one head's. The Hopfield update runs on the scaled joint patterns (beta = 1), so the
        energy still never rises."""
        B, H, Q, dk = q.shape
        scale = (self.beta / H).sqrt().view(1, H, 1, 1)

        def joint(x: torch.Tensor) -> torch.Tensor:  # (B, H, N, d) -> (B, 1, N, H * d)
            return x.transpose(1, 2).reshape(x.size(0), 1, x.size(2), -1)

        r, assoc, energies = hopfield_fn.retrieve(
            joint(q * scale), joint(memory.keys * scale), 1.0, self.n_updates, memory.valid,
            joint(memory.values), None if bias is None else bias.sum(1, keepdim=True),
        )  # fmt: skip
        r = r.view(B, Q, H, self.dv).transpose(1, 2)  # (B, H, Q, dv)
        return r, assoc.expand(B, H, Q, -1), energies.expand(-1, B, H, Q)

    def read(
        self, h: torch.Tensor, memory: MemoryState, past: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        """h (B', T, C) -> combined hidden (B', T, C). B' = B * g: g rows share each memory.
        ``past``: the normed hidden states before h (:meth:`state_pattern`)."""
        Bq, T, C = h.shape
        Bm = memory.keys.size(0)
        q = self.state_pattern(h, past)  # (B', H, T, dk)
        # Rows that share a memory become one longer probe sequence: (Bm, H, g*T, dk)
        q = (
            q.view(Bm, Bq // Bm, self.H, T, self.dk)
            .transpose(1, 2)
            .reshape(Bm, self.H, -1, self.dk)
        )
        bias = self.recency_bias(memory)  # (Bm, H, 1, S) or None
        retrieve = self._bound_retrieve if self.bind_heads else self._head_retrieve
        r, assoc, energies = retrieve(q, memory, bias)  # r (Bm, H, g*T, dv)
        r = r.view(Bm, self.H, Bq // Bm, T, self.dv).permute(0, 2, 3, 1, 4).reshape(Bq, T, C)
        m = self.out(r)  # (B', T, C)
        if self.combine == "add":
            out = h + m
        elif self.combine == "gated":
            # h' = h + sigmoid(w_g [h; W_o r]) W_o r: the layer decides when to trust the memory
            out = h + torch.sigmoid(self.gate(torch.cat([h, m], dim=-1))) * m
        else:
            out = self.mix(torch.cat([h, r], dim=-1))
        return out, {"association": assoc, "energies": energies}


class MemoryBank(nn.Module):
    """Slots that outlive a call: keys (S, H, dk), values (S, H, dv), and bookkeeping.

    Buffers are not part of the model's weights (``persistent=False``): a
    checkpoint holds what the model learned, ``save``/``load`` what it has seen.
    """

    def __init__(self, n_slots: int, heads: int, dk: int, dv: int, replacement: str = "fifo"):
        super().__init__()
        self.replacement = replacement
        self.register_buffer("keys", torch.zeros(n_slots, heads, dk), persistent=False)
        self.register_buffer("values", torch.zeros(n_slots, heads, dv), persistent=False)
        self.register_buffer("valid", torch.zeros(n_slots, dtype=torch.bool), persistent=False)
        self.register_buffer("age", torch.zeros(n_slots, dtype=torch.long), persistent=False)
        self.register_buffer("usage", torch.zeros(n_slots), persistent=False)
        self.clock = 0  # writes so far: ages order the slots for fifo
        self.version = 0  # bumped by every change of the stored patterns (decode caches check it)

    def __len__(self) -> int:
        return int(self.valid.sum())

    @property
    def n_slots(self) -> int:
        return self.valid.numel()

    def reset(self) -> None:
        """Forget everything."""
        self.valid.zero_()
        self.usage.zero_()
        self.age.zero_()
        self.clock = 0
        self.version += 1

    def state(self) -> MemoryState | None:
        """The stored patterns in the read's layout (the filled slots only), or None when empty."""
        slots = self.valid.nonzero().squeeze(1)  # (S',): a part-filled bank reads S' slots, not S
        if slots.numel() == 0:
            return None
        return MemoryState(
            self.keys[slots].transpose(0, 1).unsqueeze(0),  # (1, H, S', dk)
            self.values[slots].transpose(0, 1).unsqueeze(0),  # (1, H, S', dv)
            torch.ones(1, slots.numel(), dtype=torch.bool, device=slots.device),  # (1, S')
            slots,
            self.age[slots].unsqueeze(0),  # (1, S'): write order, for the recency term
        )

    @torch.no_grad()
    def write(self, entries: MemoryState) -> None:
        """Store every valid entry (all batch rows into this one bank), evicting when full."""
        keys = entries.keys.transpose(1, 2)[entries.valid]  # (n, H, dk)
        values = entries.values.transpose(1, 2)[entries.valid]  # (n, H, dv)
        keys, values = (
            keys[-self.n_slots :],
            values[-self.n_slots :],
        )  # more than fits: keep the last
        n = keys.size(0)
        free = (~self.valid).nonzero().squeeze(1)[:n]
        if free.numel() < n:
            # fifo: the oldest write goes first; least_used: the least read (ties: oldest)
            score = self.age.double() if self.replacement == "fifo" else self.usage.double()
            score = score + self.age.double() / (self.clock + 1) * 1e-6
            score = score.masked_fill(~self.valid, float("inf"))
            score[free] = float("inf")
            victims = score.argsort()[: n - free.numel()]
            free = torch.cat([free, victims])
        self.keys[free] = keys.to(self.keys.dtype)
        self.values[free] = values.to(self.values.dtype)
        self.valid[free] = True
        self.usage[free] = 0.0
        self.age[free] = self.clock + torch.arange(n, device=self.age.device)
        self.clock += n
        self.version += 1

    @torch.no_grad()
    def touch(self, association: torch.Tensor, slots: torch.Tensor | None = None) -> None:
        """Accumulate the attention each slot received (least_used replacement reads it);
        association (B, H, Q, S'), ``slots`` (S') the slots read (None: all, in order)."""
        used = association.float().sum(dim=(0, 1, 2))
        if slots is None:
            self.usage += used
        else:
            self.usage.index_add_(0, slots, used)

    def save(self, path: str | Path) -> Path:
        """Write the bank to a safetensors file."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {
            k: getattr(self, k).detach().cpu().contiguous()
            for k in ("keys", "values", "valid", "age", "usage")
        }
        meta = {"clock": str(self.clock), "replacement": self.replacement}
        save_file(tensors, str(path), metadata=meta)
        return path

    def load(self, path: str | Path) -> None:
        """Read a bank written by ``save``; its shapes must match this one."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as err:
            raise PhysllmError(f"cannot read memory file {path}: {err}") from None
        for name in ("keys", "values", "valid", "age", "usage"):
            mine = getattr(self, name)
            if name not in tensors or tensors[name].shape != mine.shape:
                got = tuple(tensors[name].shape) if name in tensors else "missing"
                raise PhysllmError(
                    f"memory file {path} does not fit this bank: {name} {got} vs {tuple(mine.shape)}"
                )
            mine.copy_(tensors[name])
        self.clock = int(meta.get("clock", 0))
        self.version += 1


# --------------------------------------------------------------------------- the model


class HopfieldLM(LanguageModel):
    """Backbone + Hopfield memory layer + a slot bank that persists across calls."""

    config_class = HopfieldConfig

    def __init__(self, config: HopfieldConfig, backbone: nn.Module | None = None):
        super().__init__(config)
        self.backbone = backbone if backbone is not None else build_backbone(config)
        if config.lora_rank:
            self.add_lora(config.lora_rank)
        C = self.backbone.n_embd
        self.memory_layer = HopfieldMemory(config, C)
        self.memory = MemoryBank(
            config.n_slots, config.mem_heads, config.mem_head_dim, C // config.mem_heads,
            config.replacement,
        )  # fmt: skip

    def add_lora(self, rank: int) -> None:
        """LoRA adapters (alpha = 2 r) on the backbone's attention; idempotent."""
        if not any(isinstance(m, LoRALinear) for m in self.backbone.modules()):
            apply_lora(self.backbone, self.backbone.lora_targets, r=rank, alpha=2.0 * rank)
        self.config.lora_rank = rank

    @classmethod
    def from_hf(cls, model: nn.Module, **overrides) -> HopfieldLM:
        """Wrap an instantiated transformers causal LM (tests: a tiny random Llama)."""
        config = HopfieldConfig(
            vocab_size=model.config.vocab_size,
            block_size=getattr(model.config, "max_position_embeddings", 2048),
            backbone="hf:" + str(getattr(model.config, "_name_or_path", "") or "local"),
            **overrides,
        )
        return cls(config, backbone=HFBackbone(model, config.block_size))

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        memory: MemoryState | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, V), reading ``memory`` (default: the bank; empty: no read)."""
        from_bank = memory is None
        memory = self.memory.state() if from_bank else memory
        info: dict = {}

        def read(h: torch.Tensor) -> torch.Tensor:
            out, found = self.memory_layer.read(h, memory)
            info.update(found)
            return out

        logits, _ = self.backbone(idx, read if memory is not None else None)
        self._after_read(info, memory if from_bank else None)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss

    def _after_read(self, info: dict, bank_read: MemoryState | None) -> None:
        """The read's energies into ``last_aux``; in eval mode the attention each slot of
        ``bank_read`` (the bank's state that was read; None: not the bank) received."""
        self.last_aux = {}
        if not info:
            return
        energies = info["energies"].detach().float().mean(dim=(1, 2, 3))  # per step
        self.last_aux = {"energy_probe": energies[0].item(), "energy_read": energies[-1].item()}
        if bank_read is not None and not self.training:
            self.memory.touch(info["association"], bank_read.slots)

    @torch.no_grad()
    def decode_step(
        self, idx: torch.Tensor, state: dict | None = None
    ) -> tuple[torch.Tensor, dict]:
        """KV-cached step: idx (B, T) -> next-token logits (B, V) and the new state.

        The bank is fixed while a decode runs, so what a position reads from it never
        changes and the read is applied to the new positions alone, after the backbone's
        cached step (GPT's :class:`~physllm.nn.KVCache`, or the HF model's own cache):

            q_t = W_q [n(h_{t-w+1}) ... n(h_t)]     n: the memory layer's LayerNorm
            h'_t = h_t + g_t W_o V softmax(beta K^T q_t)

        q_t reads the w - 1 normed hidden states before t, so the state keeps them
        (``window``, zeros before the first position, as the causal conv pads). It also
        keeps the bank's state read (``memory``; None: empty, no read) and its
        ``version``: a bank changed since (a write, reset or load) re-encodes the context,
        reading the new bank. Each position's read counts once in ``least_used``'s usage.
        """
        if state is not None and state["version"] != self.memory.version:
            idx = torch.cat([state["backbone"]["tokens"], idx], dim=1)  # re-encode, new bank
            state = None
        memory = self.memory.state() if state is None else state["memory"]
        window = None if state is None else state["window"]
        info: dict = {}

        def read(h: torch.Tensor, fresh: bool) -> torch.Tensor:
            w = self.memory_layer.read_query.window
            past = h.new_zeros(h.size(0), w - 1, h.size(2)) if fresh else window
            out, found = self.memory_layer.read(h, memory, past)
            info.update(found, window=self.memory_layer.window(h, past))
            return out

        backbone_state = None if state is None else state["backbone"]
        step_read = read if memory is not None else None
        logits, backbone_state = self.backbone.decode_step(idx, backbone_state, step_read)
        window = info.pop("window", None)
        self._after_read(info, memory)
        return logits, {
            "backbone": backbone_state,
            "memory": memory,
            "window": window,
            "version": self.memory.version,
        }

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """The hidden states where the memory reads and writes, for a call of any length.

        Longer than the block: overlapping windows, each position keeping at
        least half a block of left context.
        """
        block, T = self.config.block_size, idx.size(1)
        if T <= block:
            return self.backbone(idx)[1]
        stride, pieces = block // 2, []
        for start in range(0, T, stride):
            end = min(T, start + stride)
            lo = max(0, end - block)  # the window ends at the segment's end
            pieces.append(self.backbone(idx[:, lo:end])[1][:, start - lo :])
        return torch.cat(pieces, dim=1)

    def entries_for(self, idx: torch.Tensor, valid: torch.Tensor | None = None) -> MemoryState:
        """Keys and values a call ``idx`` (B, T) writes; ``valid`` (B, T) masks padding."""
        h = self.hidden(idx)
        mask = None if valid is None else valid[:, :-1] & valid[:, 1:]
        return self.memory_layer.entries(h, self.backbone.embed(idx[:, 1:]), mask)

    @torch.no_grad()
    def memorize(self, idx: torch.Tensor, valid: torch.Tensor | None = None) -> int:
        """Write call ``idx`` into the bank; returns the number of slots written."""
        entries = self.entries_for(idx, valid)
        self.memory.write(entries)
        return int(entries.valid.sum())

    @torch.no_grad()
    def call(
        self, idx: torch.Tensor, max_new_tokens: int = 0, write: bool = True, **sampling
    ) -> torch.Tensor:
        """One inference call: generate from ``idx`` reading the memory, then write the call into it."""
        out = generate(self, idx, max_new_tokens, **sampling) if max_new_tokens else idx
        if write:
            self.memorize(out)
        return out


__all__ = [
    "GPTBackbone",
    "HFBackbone",
    "HopfieldConfig",
    "HopfieldLM",
    "HopfieldMemory",
    "MemoryBank",
    "MemoryState",
]
