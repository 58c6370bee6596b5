"""QLLM: a byte-level transformer with a phase module, global memory tokens and a coherence loss.

Identical to :mod:`physllm.gpt.model` (pre-LN blocks, GELU MLP, tied head,
GPT-2 init) except for four things, each with the seed's form beside ours.
The seed is ``gowrav-vishwakarma/qllm2`` v1 (``quantum_llm_model.py``,
``quantum_llm_train.py``, ``train_improved.py``); the ``seed`` preset sets
every seed option at once.

**Separate q, k, v, o projections**, so LoRA (:mod:`physllm.lora`) can adapt
each by name. ``lora_rank > 0`` adds adapters; by default only they train (a
fine-tune of a frozen base), ``lora_train_base=True`` trains them together with
every base weight, as the seed's run did (then W + (alpha/r) B A is just a
reparametrised W).

**A phase module**, three forms:

* ``phase="gain"``, the seed's PhaseRotator, per channel c::

      y_c = x_c (cos phi_c - sin phi_c),   phi_c = pi tanh(p_c),  p = 0 at init

  cos phi - sin phi = sqrt(2) cos(phi + pi/4): a real *gain* in [-sqrt 2, sqrt 2],
  1 at init. It rescales (and may flip) each channel; it mixes nothing and
  does not preserve the norm. It is the real part of rotating the complex
  number x + i x, but with the imaginary part thrown away.
* ``phase="rotation"``, a true rotation: channel pairs are complex numbers
  z_j = x_{2j} + i x_{2j+1} multiplied by a unit complex number::

      z_j' = e^{i theta_j} z_j      (theta per pair, or per (position, pair))

  which preserves |x| exactly. A position-independent rotation feeding a
  linear layer can be absorbed into that layer's weights, q = W (R h) = (W R) h,
  and the forward pass does so (``Block.folded_qkv``: one product instead of a
  rotation of every token and three products; the same loss and gradients); a
  per-position one (``phase_per_position``) cannot: it acts like a learned RoPE.
* ``phase="none"``: identity.

and two places:

* ``phase_at="blocks"`` (ours): one module per block, on the attention input
  ``phase(ln_1(x))``; the globals pass through it too.
* ``phase_at="embeddings"`` (the seed's): one module, applied once to the byte
  embeddings ``wte(x) + wpe(t)`` before the globals are prepended, so the
  globals never pass through it. There a gain only rescales the columns of
  ``wte`` and ``wpe``: with an untied head (``tie_head=False``, the seed's) it
  is absorbed into them exactly and changes nothing but the training dynamics.

**G global memory tokens** prepended to the byte sequence; logits are read only
at byte positions.

* ``globals="seed"``: the seed's G learned vectors under the seed's plain causal
  mask over ``[globals | bytes]``: global i attends to globals 0..i, every byte
  to all globals and to earlier bytes. The globals see no byte, so whatever the
  input they are the same: a learned constant prefix (a bias every byte can
  attend to, never a memory of the text).
* ``globals="recurrent"``: real memory, as in the Recurrent Memory Transformer
  (Bulatov et al. 2022). The block of ``block_size`` bytes is cut into segments
  of ``segment_len``; segment k sees ``[read memory m_k | bytes_k | write
  memory]``. Bytes attend to the read copy and to earlier bytes; the write copy
  attends to the whole segment, and its final hidden state (layer-normed, so it
  cannot grow from segment to segment) is m_{k+1}. Information goes forward,
  segment k -> k+1, never back; gradients flow back through the chain within a
  training block (BPTT), and generation carries m_k past ``block_size``.
  Two controls that attribute a gain to the memory (``segment_memory``):
  ``"reset"``, every segment reads the learned m_0 (the same tokens, no memory
  of the text), and ``"none"``, no memory tokens at all (each segment alone,
  positions restarting: a GPT on 32-byte windows).
* ``globals="off"``: a plain causal byte transformer.

**The coherence loss** on the phases, weight ``coherence`` (lambda), mean over
the phase modules of the mean over neighbouring channels (pairs, for
rotations), two forms:

* ``coherence_form="cosine"`` (ours), on the angles phi::

      L_coh = mean_j (1 - cos(phi_{j+1} - phi_j))

  zero when neighbouring channels share one phase, periodic in 2 pi as a phase
  penalty must be.
* ``coherence_form="seed"``, on the raw parameters p (theta for rotations)::

      L_coh = mean_j (p_{j+1} - p_j)^2 + 0.1 mean_j p_j^2

  not periodic: it pulls neighbours together and every p towards 0 (gain 1).
  The seed's run used lambda 0.05.

It is added to the training loss; in eval mode ``loss`` is the cross-entropy
alone, as the seed's evaluation, so the validation bits per byte are comparable
across lambda (the coherence value is still in ``last_aux``).

**Not the seed's, with every seed option set** (the claims above are tested
against a transcription of the seed's forward): the init (GPT-2's N(0, 0.02);
the seed keeps PyTorch's defaults, N(0, 1) embeddings and uniform Linears);
the dropout places (ours also drops the embeddings and the attention output,
the seed only the attention weights and the MLP output); LoRA's zero factor
(ours B, on the output side; the seed's zeroes the input side); the weight
decay (ours spares biases, norms and phases; the seed decays everything); and
``wpe`` has ``block_size`` rows where the seed allocates G more that it never
reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from physllm.arch import LanguageModel, TransformerShape
from physllm.errors import PhysllmError
from physllm.lora import LoRALinear, apply_lora, effective_weight, mark_only_lora_trainable
from physllm.nn import (
    MLP,
    Derived,
    KVCache,
    LayerNorm,
    band_causal_mask,
    init_gpt2_weights,
    layer_norm,
    mlp_step,
    one_query_attention,
)
from physllm.validation import (
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_FLOAT,
    at_least,
    one_of,
    require,
)

PHASES = ("gain", "rotation", "none")
PHASE_AT = ("blocks", "embeddings")
GLOBALS = ("seed", "recurrent", "off")
SEGMENT_MEMORY = ("carry", "reset", "none")
COHERENCE_FORMS = ("cosine", "seed")

# q, k, v's weights side by side (3C, C) and their biases (3C,) or None
QKVWeights = tuple[torch.Tensor, torch.Tensor | None]


@dataclass
class QLLMConfig(TransformerShape):
    vocab_size: int = 256  # bytes
    phase: str = "rotation"  # gain (the seed's PhaseRotator) | rotation (norm-preserving) | none
    phase_per_position: bool = False  # rotation only: one phase per (position, pair), not per pair
    phase_at: str = "blocks"  # blocks (every attention input) | embeddings (once, the seed's)
    globals: str = "recurrent"  # seed (constant prefix) | recurrent (memory across segments) | off
    n_global: int = 16  # G, the seed's number of global tokens
    segment_len: int = (
        64  # recurrent: bytes per segment (a block is ceil(block_size / this) segments)
    )
    # recurrent: carry (m_k -> m_{k+1}) | reset (every segment reads m_0: the memory
    # tokens without memory) | none (no memory tokens: segments alone, positions restarting)
    segment_memory: str = "carry"
    coherence: float = 0.1  # lambda; our choice (0: off; the seed's run: 0.05)
    coherence_form: str = "cosine"  # cosine (periodic in the phase) | seed (squares of raw p)
    tie_head: bool = True  # output head = byte embedding (GPT); False: its own matrix (the seed's)
    lora_rank: int = 0  # 0: no adapters; > 0: LoRA on q, k, v, o
    lora_alpha: float = 64.0  # update scale alpha / r
    lora_dropout: float = 0.0
    lora_train_base: bool = False  # False: only adapters train; True: all weights too (the seed's)

    renamed_fields = {"lora_r": "lora_rank"}
    field_rules = {
        "phase": one_of(*PHASES),
        "phase_at": one_of(*PHASE_AT),
        "globals": one_of(*GLOBALS),
        "segment_memory": one_of(*SEGMENT_MEMORY),
        "coherence_form": one_of(*COHERENCE_FORMS),
        "n_global": NON_NEGATIVE,
        "segment_len": POSITIVE,
        "coherence": at_least(0),
        "lora_rank": NON_NEGATIVE,
        "lora_alpha": POSITIVE_FLOAT,
        "lora_dropout": FRACTION,
    }

    def check(self) -> None:
        super().check()
        require(
            self.phase != "rotation" or self.n_embd % 2 == 0,
            f"--phase rotation pairs channels: --n-embd must be even, got {self.n_embd}",
        )
        require(
            not self.phase_per_position or self.phase == "rotation",
            "phase_per_position (--phase-per-position) needs --phase rotation",
        )
        require(
            self.globals == "off" or self.n_global >= 1,
            f"--globals {self.globals} needs --n-global >= 1, got {self.n_global}",
        )


def check_config(config: QLLMConfig) -> None:
    """Raise a PhysllmError if ``config`` (perhaps edited since it was built) is not usable."""
    config.validate()


# --------------------------------------------------------------------------- phase module


class PhaseGain(nn.Module):
    """The seed's PhaseRotator: a per-channel gain cos(phi) - sin(phi), phi = pi tanh(p)."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(n_embd))  # phi = 0: gain 1, the identity

    def phases(self) -> torch.Tensor:
        # phi = pi tanh(p), in (-pi, pi)
        return math.pi * torch.tanh(self.p)  # (C,)

    def learned(self) -> torch.Tensor:
        return self.p  # (C,), the raw parameter the seed's coherence term reads

    def gain(self) -> torch.Tensor:
        phi = self.phases()
        return torch.cos(phi) - torch.sin(phi)  # (C,)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x (B, L, C); ``offset`` unused (the gain is the same at every position)."""
        # y_c = x_c (cos phi_c - sin phi_c)
        return x * self.gain()

    def fold_into(self, weight: torch.Tensor) -> torch.Tensor:
        """W (N, C) -> W diag(g): a linear layer fed the gained input, as one weight."""
        return weight * self.gain()


class PhaseRotation(nn.Module):
    """Rotate each channel pair (x_2j, x_2j+1) by theta_j: z_j <- e^{i theta_j} z_j."""

    def __init__(self, n_embd: int, n_pos: int = 0):
        super().__init__()
        shape = (n_pos, n_embd // 2) if n_pos else (n_embd // 2,)
        self.theta = nn.Parameter(torch.zeros(shape))  # theta = 0: the identity

    def phases(self) -> torch.Tensor:
        return self.theta  # (C/2,) or (L, C/2)

    def learned(self) -> torch.Tensor:
        return self.theta  # the angles are the parameter

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x (B, L, C) at window positions offset .. offset + L - 1 (a cached decoding step
        feeds the last positions alone: a per-position theta must know where they are)."""
        theta = self.theta
        if theta.dim() == 2:
            theta = theta[offset : offset + x.size(1)]
        return rotate_pairs(x, theta)

    def fold_into(self, weight: torch.Tensor) -> torch.Tensor:
        """W (N, C) -> W R, R the rotation (one theta per pair): a linear layer fed the
        rotated input, as one weight. Column pair j of W R is that of W rotated by -theta_j:
        (W R)_{:,2j} = W_{:,2j} cos + W_{:,2j+1} sin, and so on."""
        return rotate_pairs(weight, -self.theta)


def rotate_pairs(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """x (..., C) with channel pairs as complex numbers, times e^{i theta}, theta (..., C/2)."""
    cos, sin = torch.cos(theta), torch.sin(theta)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # real and imaginary parts, (..., C/2) each
    # (x1 + i x2) e^{i theta} = (x1 cos - x2 sin) + i (x1 sin + x2 cos)
    y1 = x1 * cos - x2 * sin
    y2 = x1 * sin + x2 * cos
    return torch.stack((y1, y2), dim=-1).flatten(-2)  # interleave back, (..., C)


class NoPhase(nn.Module):
    def phases(self) -> None:
        return None

    def learned(self) -> None:
        return None

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return x

    def fold_into(self, weight: torch.Tensor) -> torch.Tensor:
        return weight


def make_phase(config: QLLMConfig, n_pos: int) -> nn.Module:
    if config.phase == "gain":
        return PhaseGain(config.n_embd)
    if config.phase == "rotation":
        return PhaseRotation(config.n_embd, n_pos if config.phase_per_position else 0)
    return NoPhase()


def coherence_loss(phases: list[torch.Tensor]) -> torch.Tensor:
    """mean over layers of mean_j (1 - cos(phi_{j+1} - phi_j)), neighbours along the channel axis."""
    terms = [(1 - torch.cos(phi[..., 1:] - phi[..., :-1])).mean() for phi in phases]
    return torch.stack(terms).mean()


def seed_coherence_loss(params: list[torch.Tensor]) -> torch.Tensor:
    """The seed's term, mean over layers of mean_j (p_{j+1} - p_j)^2 + 0.1 mean_j p_j^2, on the
    raw parameters p (not phi = pi tanh p). Not periodic: it pulls every p towards 0."""
    terms = [((p[..., 1:] - p[..., :-1]) ** 2).mean() + 0.1 * (p**2).mean() for p in params]
    return torch.stack(terms).mean()


# --------------------------------------------------------------------------- blocks


class Attention(nn.Module):
    """Multi-head attention with a mask that may let globals see each other, and an
    optional key/value cache (:class:`~physllm.nn.KVCache`) for cached decoding."""

    def __init__(self, config: QLLMConfig):
        super().__init__()
        C = config.n_embd
        self.q = nn.Linear(C, C, bias=config.bias)
        self.k = nn.Linear(C, C, bias=config.bias)
        self.v = nn.Linear(C, C, bias=config.bias)
        self.o = nn.Linear(C, C, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.dropout = config.n_head, config.dropout

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        store: bool = True,
        causal: bool = True,
        qkv: QKVWeights | None = None,
    ) -> torch.Tensor:
        """x (B, L, C) -> (B, L, C). The keys are the ``cache``'s positions (if any) followed
        by these L, S in all; ``store`` False reads the cache without adding these L to it.
        ``mask`` (L, S) bool, True where query i may read key j; None: causal (the L queries
        are the last L of the S keys), or with ``causal`` False every key. ``qkv``: q, k, v's
        weights side by side (:meth:`Block.folded_qkv`), used instead of the three layers."""
        B, L, C = x.shape
        hs = C // self.n_head
        if qkv is None:
            q, k, v = self.q(x), self.k(x), self.v(x)
        else:
            q, k, v = F.linear(x, *qkv).split(C, dim=-1)
        q = q.view(B, L, self.n_head, hs).transpose(1, 2)  # (B, nh, L, hs)
        k = k.view(B, L, self.n_head, hs).transpose(1, 2)
        v = v.view(B, L, self.n_head, hs).transpose(1, 2)
        if cache is not None:
            k, v = cache.extend(k, v) if store else cache.extended(k, v)  # (B, nh, S, hs)
        if mask is None and causal:
            mask, causal = band_causal_mask(L, k.size(2), device=x.device)
        else:
            causal = False
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, L, C)
        return self.resid_dropout(self.o(y))


class Block(nn.Module):
    def __init__(self, config: QLLMConfig, n_pos: int):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias)
        self.phase = make_phase(config, n_pos) if config.phase_at == "blocks" else NoPhase()
        self.attn = Attention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.bias)
        self.mlp = MLP(config.n_embd, bias=config.bias, dropout=config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        offset: int = 0,
        store: bool = True,
        causal: bool = True,
        qkv: QKVWeights | None = None,
    ) -> torch.Tensor:
        """x (B, L, C) at window positions ``offset`` .. offset + L - 1; the rest as
        :class:`Attention`'s. ``qkv`` (from :meth:`folded_qkv`) has the phase inside."""
        h = self.ln_1(x)
        h = h if qkv is not None else self.phase(h, offset)
        x = x + self.attn(h, mask, cache, store, causal, qkv)
        x = x + self.mlp(self.ln_2(x))
        return x

    def phase_folds(self) -> bool:
        """Whether the phase can live inside q, k, v's weights: a phase the same at every
        position is a linear map h -> h R^T feeding linear layers, so q = W (R h) = (W R) h
        exactly; a per-position one cannot."""
        return not (isinstance(self.phase, PhaseRotation) and self.phase.theta.dim() == 2)

    def folded_qkv(self) -> QKVWeights | None:
        """q, k, v's weights side by side with the phase folded in, (3C, C), and their biases
        (3C,) or None; None when the phase cannot fold (:meth:`phase_folds`) or LoRA dropout
        acts on the input while training (then the adapters are no weight to merge). One
        product per token instead of a rotation and three products; the same numbers and,
        through the fold, the same gradients."""
        a = self.attn
        dropped = self.training and isinstance(a.q, LoRALinear) and a.q.lora_dropout.p > 0
        if dropped or not self.phase_folds():
            return None
        w, b = self.qkv_weights()
        return self.phase.fold_into(w), b

    def qkv_weights(self) -> QKVWeights:
        """q, k, v's weights side by side (3C, C), LoRA merged, and their biases or None."""
        a = self.attn
        w = torch.cat([effective_weight(a.q), effective_weight(a.k), effective_weight(a.v)])
        b = None if a.q.bias is None else torch.cat([a.q.bias, a.k.bias, a.v.bias])
        return w, b

    def decode_constants(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, bool]:
        """What :meth:`step` reads from the parameters: q, k, v's weights side by side
        (3C, C) and their biases, o's weight, and whether the phase is folded into them
        (:meth:`folded_qkv`; a per-position phase is applied at each step). LoRA updates
        are merged (eval: no dropout)."""
        qkv = self.folded_qkv() or self.qkv_weights()
        return *qkv, effective_weight(self.attn.o), self.phase_folds()

    def step(self, x: torch.Tensor, cache: KVCache, offset: int, constants: tuple) -> torch.Tensor:
        """:meth:`forward` for one new position x (B, 1, C) at window position ``offset``,
        after those in ``cache`` (extended in place), in eval mode: GPT's one-query path
        (:func:`~physllm.nn.one_query_attention`) on :meth:`decode_constants`."""
        w_qkv, b_qkv, w_o, folded = constants
        h = layer_norm(self.ln_1, x)
        if not folded:
            h = self.phase(h, offset)
        y = one_query_attention(h, w_qkv, b_qkv, self.attn.n_head, cache)
        return mlp_step(x + F.linear(y, w_o, self.attn.o.bias), self.ln_2, self.mlp)


def window_mask(n_global: int, n_bytes: int, write: bool, device=None) -> torch.Tensor | None:
    """Who reads whom in ``[read globals (G) | bytes (S) | write globals (G if write)]``
    (recurrent globals; the seed's use the plain causal mask, see ``QLLM.attention_mask``).

    Read globals see only each other; byte i sees the read globals and bytes
    0..i; write globals see everything. None (plain causal) without globals.
    """
    G, S = n_global, n_bytes
    if G == 0:
        return None
    L = G + S + (G if write else 0)
    mask = torch.zeros(L, L, dtype=torch.bool, device=device)
    mask[:G, :G] = True  # read globals: a closed set
    mask[G : G + S, :G] = True  # bytes read the globals...
    mask[G : G + S, G : G + S] = torch.ones(
        S, S, dtype=torch.bool, device=device
    ).tril()  # ...and the past
    if write:
        mask[G + S :, :] = True  # write globals summarise the whole segment
    return mask


# --------------------------------------------------------------------------- model


class QLLM(LanguageModel):
    config_class = QLLMConfig

    def __init__(self, config: QLLMConfig):
        super().__init__(config)
        check_config(config)
        C = config.n_embd
        recurrent = config.globals == "recurrent"
        self.carry = recurrent and config.segment_memory == "carry"  # m_k -> m_{k+1}
        no_tokens = config.globals == "off" or (recurrent and config.segment_memory == "none")
        self.G = 0 if no_tokens else config.n_global
        # positions restart in every segment (recurrent): the memory says where we are
        self.S = min(config.segment_len, config.block_size) if recurrent else config.block_size
        n_pos = self.G + self.S + (self.G if self.carry else 0)  # longest window the blocks see
        self.wte = nn.Embedding(config.vocab_size, C)
        self.wpe = nn.Embedding(self.S, C)
        if config.phase_at == "embeddings":  # the seed's: one phase module, on the byte embeddings
            self.phase = make_phase(config, self.S)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, n_pos) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(C, config.bias)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_head:
            self.lm_head.weight = self.wte.weight  # tied, as in GPT
        if self.G:
            # seed: the constant prefix; recurrent: the memory before the first segment
            self.memory = nn.Parameter(torch.randn(self.G, C) * 0.02)  # (G, C)
        if self.carry:
            self.write_embed = nn.Parameter(torch.randn(self.G, C) * 0.02)  # marks the write copy
            self.ln_mem = LayerNorm(C, config.bias)  # keeps |m_k| from growing with k
        init_gpt2_weights(self, config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("attn.o.weight"):  # residual projection, as GPT's c_proj
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.lora_rank > 0:
            apply_lora(
                self, ("q", "k", "v", "o"), config.lora_rank, config.lora_alpha, config.lora_dropout
            )
            if not config.lora_train_base:  # fine-tuning: the base stays as loaded
                mark_only_lora_trainable(self)

    # ---- one window: [read globals | bytes | write globals]

    def segment(
        self,
        idx: torch.Tensor,
        memory: torch.Tensor | None,
        write: bool,
        folds: list[QKVWeights | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Bytes ``idx`` (B, s) after read ``memory`` (B, G, C) -> byte hidden states
        (B, s, C) and, if ``write``, the next memory (B, G, C). ``folds``: each block's
        :meth:`Block.folded_qkv` (made once per forward pass, not once per segment)."""
        s = idx.size(1)
        parts = [self.embed(idx)]
        if self.G:
            parts.insert(0, memory)
            if write:
                parts.append(memory + self.write_embed)
        x = self.drop(torch.cat(parts, dim=1))  # (B, G + s (+ G), C)
        mask = self.attention_mask(s, write, idx.device)
        folds = folds or [None] * len(self.blocks)
        for block, qkv in zip(self.blocks, folds, strict=True):
            x = block(x, mask, qkv=qkv)
        hidden = x[:, self.G : self.G + s]
        new_memory = self.ln_mem(x[:, self.G + s :]) if write else None
        return hidden, new_memory

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Bytes ``idx`` (B, s) at segment positions start .. start + s - 1 -> (B, s, C)."""
        emb = self.wte(idx) + self.wpe.weight[start : start + idx.size(1)]  # (B, s, C)
        if self.config.phase_at == "embeddings":
            emb = self.phase(emb, start)  # the bytes only: the globals are prepended after it
        return emb

    def attention_mask(self, n_bytes: int, write: bool, device=None) -> torch.Tensor | None:
        """The mask of one window (None: plain causal)."""
        if self.config.globals == "seed":
            # the seed's: causal over [globals | bytes], so global i reads globals 0..i only
            # (still a constant prefix) and every byte reads all globals
            return None
        return window_mask(self.G, n_bytes, write, device)

    def initial_memory(self, batch: int) -> torch.Tensor | None:
        return self.memory.expand(batch, -1, -1) if self.G else None

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) bytes -> (B, T, C) final hidden states at the byte positions."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise PhysllmError(
                f"sequence of {T} is longer than block_size {self.config.block_size}"
            )
        memory = self.initial_memory(B)
        folds = [block.folded_qkv() for block in self.blocks]
        if self.config.globals != "recurrent":
            return self.segment(idx, memory, False, folds)[0]
        outs = []
        for start in range(0, T, self.S):
            # the last segment's memory would go unread; reset and none never write one
            write = self.carry and start + self.S < T
            segment = idx[:, start : start + self.S]
            hidden, new_memory = self.segment(segment, memory, write, folds)
            outs.append(hidden)
            memory = new_memory if write else memory
        return torch.cat(outs, dim=1)

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """As the base, except phases never decay: the coherence loss is their only regulariser."""
        groups = super().optim_groups(weight_decay)
        phase_ids = {
            id(p) for n, p in self.named_parameters() if n.startswith("phase.") or ".phase." in n
        }
        decay = [p for p in groups[0]["params"] if id(p) not in phase_ids]
        moved = [p for p in groups[0]["params"] if id(p) in phase_ids]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": groups[1]["params"] + moved, "weight_decay": 0.0},
        ]

    def phase_modules(self) -> list[nn.Module]:
        if self.config.phase_at == "embeddings":
            return [self.phase]
        return [b.phase for b in self.blocks]

    def phases(self) -> list[torch.Tensor]:
        """The angles phi of every phase module (one per block, or one on the embeddings)."""
        return [p for m in self.phase_modules() if (p := m.phases()) is not None]

    def coherence(self) -> torch.Tensor | None:
        """L_coh in the configured form; None without phases."""
        if self.config.coherence_form == "seed":
            params = [p for m in self.phase_modules() if (p := m.learned()) is not None]
            return seed_coherence_loss(params) if params else None
        phases = self.phases()
        return coherence_loss(phases) if phases else None

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) bytes -> logits (B, T, V) at byte positions only; loss if targets given."""
        logits = self.lm_head(self.ln_f(self.hidden_states(idx)))
        loss = None
        if targets is not None:
            lm = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
            coh = self.coherence()
            coh = lm.new_zeros(()) if coh is None else coh
            self.last_aux = {"lm": lm.item(), "coherence": coh.item()}
            # L = L_lm + lambda L_coh while training; eval reports the cross-entropy alone
            loss = lm + self.config.coherence * coh if self.training else lm
        return logits, loss

    # ---- cached decoding
    #
    # A decoding step feeds the newest byte(s) only. Every query reads only keys that
    # exist when it arrives, so a position's keys and values K^l_p, V^l_p in each layer l,
    # once computed, never change, and a new byte t needs just its own q, k, v:
    #
    #     o_t = sum_{p <= t} softmax_p(q_t . K_p / sqrt(hs)) V_p     (p over the cache and t)
    #
    # In a window [read globals (G) | bytes (S) | write globals (G)]:
    #
    #     read global i  (position i)          reads the read globals (seed: 0..i)
    #     byte j         (position G + j)      reads the read globals and bytes 0..j
    #     write global i (position G + S + i)  reads everything; no byte reads it
    #
    # so the read globals' keys and values are computed once, when a segment opens (G
    # tokens' work), each byte's when it comes, and the write copy, G queries over the
    # G + S cached keys and their own G, once when the segment closes, which is when the
    # byte after it arrives (the forward pass writes only a memory a later segment reads).
    # A byte costs one token's work plus 2G/S amortised. The write globals are the only
    # tokens that read later positions of their segment, and what they compute reaches
    # only the next segment (as m_{k+1}), never a byte of their own: every setting caches
    # exactly, none needs the recompute fallback.
    #
    # A one-byte step in eval mode runs GPT's one-query path (``Block.step``) on constants
    # derived once per state (``Block.decode_constants``): q, k, v as one product, with a
    # phase that is the same at every position folded into it.

    def _new_caches(self, batch: int, capacity: int) -> list[KVCache]:
        """One empty :class:`~physllm.nn.KVCache` per block, ``capacity`` positions each."""
        C, nh = self.config.n_embd, self.config.n_head
        like = self.wte.weight
        return [KVCache.empty(like, batch, nh, C // nh, capacity) for _ in self.blocks]

    def _run_cached(
        self,
        x: torch.Tensor,
        caches: list[KVCache],
        offset: int,
        store: bool = True,
        causal: bool = True,
        derived: Derived | None = None,
    ) -> torch.Tensor:
        """x (B, L, C) at window positions offset .. offset + L - 1 through every block,
        each reading (and with ``store`` extending) its cache. -> (B, L, C). One stored
        position with ``derived`` (eval mode) takes the blocks' one-query path."""
        if derived is not None and store and x.size(1) == 1:
            for block, cache, constants in zip(self.blocks, caches, derived.values, strict=True):
                x = block.step(x, cache, offset, constants)
            return x
        for block, cache in zip(self.blocks, caches, strict=True):
            x = block(x, None, cache, offset, store, causal)
        return x

    def _open_segment(self, memory: torch.Tensor | None, batch: int) -> list[KVCache]:
        """Caches for a new segment holding its read globals' keys and values: they read
        each other, all of them (not causally), and no byte, so they are computed once."""
        caches = self._new_caches(batch, self.G + self.S)
        if self.G:
            self._run_cached(self.drop(memory), caches, 0, causal=False)
        return caches

    def _write_memory(self, memory: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
        """m_{k+1} (B, G, C) from a full segment's caches: the write copy m_k + e_write at
        positions G + S .., reading every key, stored nowhere (no byte reads it)."""
        x = self.drop(memory + self.write_embed)
        x = self._run_cached(x, caches, self.G + self.S, store=False, causal=False)
        return self.ln_mem(x)

    def _decode_recurrent(self, idx: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        """Recurrent globals: the state is the read memory m_k (B, G, C) (None without memory
        tokens), each block's cache of the open segment and its byte count n."""
        B, T = idx.shape
        if state is None:
            memory = self.initial_memory(B)
            state = {"memory": memory, "caches": self._open_segment(memory, B), "n": 0}
            state["derived"] = self._derived()
        memory, caches, n = state["memory"], state["caches"], state["n"]
        derived = None if self.training else state["derived"]
        done = 0
        while done < T:
            if n == self.S:  # the open segment is full and a byte follows: close it
                if self.carry:
                    memory = self._write_memory(memory, caches)
                caches, n = self._open_segment(memory, B), 0
            take = min(self.S - n, T - done)
            x = self.drop(self.embed(idx[:, done : done + take], n))
            x = self._run_cached(x, caches, self.G + n, derived=derived)  # at G + n ..
            n, done = n + take, done + take
        logits = self._logits(x[:, -1])
        return logits, {"memory": memory, "caches": caches, "n": n, "derived": state["derived"]}

    def _decode_flat(self, idx: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        """Seed globals or none: one window [globals | bytes], causal, positions absolute: a
        GPT with a constant prefix, cached as GPT is. Past ``block_size`` the last
        block_size bytes are re-encoded from position 0, as uncached sampling does. The
        state keeps each block's cache (G + block_size positions), the next byte position
        and the last block_size bytes."""
        block, G = self.config.block_size, self.G
        history = idx if state is None else torch.cat([state["tokens"], idx], dim=1)
        total = idx.size(1) + (0 if state is None else state["pos"])
        if state is None or total > block:
            history = history[:, -block:]
            caches, derived = self._new_caches(idx.size(0), G + block), self._derived()
            x = self.embed(history)
            if G:
                x = torch.cat([self.initial_memory(idx.size(0)), x], dim=1)
            x = self._run_cached(self.drop(x), caches, 0)
        else:
            caches, derived = state["caches"], state["derived"]
            x = self.drop(self.embed(idx, state["pos"]))
            step = None if self.training else derived
            x = self._run_cached(x, caches, G + state["pos"], derived=step)
        state = {"tokens": history[:, -block:], "pos": min(total, block), "caches": caches}
        return self._logits(x[:, -1]), {**state, "derived": derived}

    def _derived(self) -> Derived:
        """What one-byte steps read from the parameters: each block's
        :meth:`Block.decode_constants`, computed once per decoding state."""
        return Derived([block.decode_constants() for block in self.blocks])

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final hidden states x (B, C) -> logits (B, V), as functional calls."""
        return F.linear(layer_norm(self.ln_f, x), self.lm_head.weight)

    @torch.no_grad()
    def decode_step(
        self, idx: torch.Tensor, state: dict | None = None
    ) -> tuple[torch.Tensor, dict]:
        """KV-cached step: bytes ``idx`` (B, T) -> next-byte logits (B, V) and the new state
        (the caches are extended in place). Recurrent globals carry the memory from segment to
        segment, so the context is unbounded at constant cost; seed globals and none crop
        to ``block_size`` as GPT does."""
        if self.config.globals == "recurrent":
            return self._decode_recurrent(idx, state)
        return self._decode_flat(idx, state)
