"""Hamiltonian LLM: tokens as particles with a position q and a momentum p.

Two variants of one model (DESIGN section 6):

``variant="symplectic"`` (default) is the physics the seed's README describes.
Every token t carries a position q_t and a momentum p_t, both from
embeddings. Layer l is one leapfrog (velocity Verlet) step of size dt_l of

    H_l(q, p) = sum_t |p_t|^2 / 2m + V_l(q; context)

where the context c_t (what token t "feels" from the tokens before it) is
computed once per layer from the layer's input positions and then held
fixed during the step, so each layer is *exactly* a symplectic map. The
context adds two causal branches:

    guide:  c^attn_t  = causal self-attention over LN(q)        long range, semantic
    local:  c^local_t = sum_{k<K} a exp(-lambda k) * LN(q)_{t-k}  grammar; influence decays
                                                                  as exp(-lambda k), lambda learned
                                                                  per channel

The force on token t is, in ``mode="direct"`` (fast), an MLP output

    F_t = W_2 gelu(W_1 (LN(q_t) + c_t))

and in ``mode="conservative"`` exactly minus the gradient of a scalar
potential (autograd), so that H is defined and conserved by the exact flow:

    V_t(q_t) = kappa |q_t|^2 / 2 + v . gelu(W_1 (LN(q_t) + c_t))      F_t = -dV_t/dq_t

(the confining kappa |q|^2 / 2 keeps trajectories bounded).

The step is velocity Verlet (``integrator="velocity"``, kick-drift-kick) or
position Verlet (``"position"``, drift-kick-drift). Both are second-order,
symplectic and time-reversible; they differ in cost. Each layer has its own
potential V_l, so velocity Verlet's closing kick (V_l at q_{l+1}) cannot be
reused as the next layer's opening kick (V_{l+1}): two force evaluations per
layer, 20 d^2 weights per token to a GPT block's 12 d^2. Position Verlet kicks
once, at the half-drifted position q + dt/2 p/m, so a layer costs what a GPT
block costs (attention + one MLP) and adjacent half drifts cost nothing.

Logits read out
where each token is heading, q + tau p, through the tied embedding:

    logits_t = E . LN(q_t^L + tau p_t^L)

Steering is an extra constant force s * u on every momentum at every layer,
u the unit direction of the target word's token embeddings: a linear
potential -s u.q tilting the landscape toward (s > 0) or away from (s < 0)
the word.

``variant="seed"`` is what the seed's code actually does (no integrator): a
GPT whose input is q + EMA_0.9(p_t - p_{t-1}) (halved at end-of-text), with a
causal depthwise conv (kernel 3, SiLU) beside RoPE attention that subtracts a
learned distance penalty softplus(g(x_i)) * min(|i - j|, 64) * 0.1 (g initialised
as the seed's: weights N(0, 0.01), bias 0.5). Its steering adds s * E[first token of
the target] to the embeddings at every position.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from physllm.arch import LanguageModel, TransformerShape
from physllm.hamiltonian.integrators import (
    drift_kicks,
    force_from_potential,
    leapfrog_kicks,
)
from physllm.nn import CausalSelfAttention, Derived, KVCache, init_gpt2_weights
from physllm.validation import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_FLOAT,
    PROBABILITY,
    at_least,
    one_of,
    require,
)


@dataclass
class HamiltonianConfig(TransformerShape):
    variant: str = "symplectic"  # symplectic | seed
    # symplectic
    mode: str = "direct"  # direct (force network) | conservative (F = -dV/dq by autograd)
    mlp_ratio: int = 4  # hidden width of the force / potential network, in units of n_embd
    dt: float = 1.0  # initial step size of every layer
    substeps: int = 1  # leapfrog steps of dt / k per layer, the context held: error ~ 1/k^2
    # velocity (kick-drift-kick: 2 force evaluations per layer) | position (drift-kick-drift: 1)
    integrator: str = "velocity"
    learn_dt: bool = True
    mass: float = 1.0
    decay_kernel: int = 16  # length K of the local exp(-lambda k) kernel
    decay_init: float = 0.5  # initial lambda
    kappa_init: float = 0.1  # conservative: initial confinement kappa
    steer_scale: float = 1.0  # force per unit strength, in units of the mean embedding norm
    # seed
    conv_kernel: int = 3
    ema_beta: float = 0.9
    eos_id: int = -1  # end-of-text token: momentum halved there (-1: none)
    gravity_max: int = 64
    gravity_scale: float = 0.1

    field_rules = {
        "variant": one_of("symplectic", "seed"),
        "mode": one_of("direct", "conservative"),
        "integrator": one_of("velocity", "position"),
        "mlp_ratio": POSITIVE,
        "dt": POSITIVE_FLOAT,  # a leapfrog step forward in time
        "substeps": POSITIVE,
        "mass": POSITIVE_FLOAT,  # p / m
        "decay_kernel": POSITIVE,
        "decay_init": POSITIVE_FLOAT,  # softplus^{-1}(lambda) needs lambda > 0
        "kappa_init": POSITIVE_FLOAT,  # likewise
        "conv_kernel": POSITIVE,
        "ema_beta": PROBABILITY,
        "eos_id": at_least(-1),
        "gravity_max": NON_NEGATIVE,
    }

    def check(self) -> None:
        super().check()
        if self.variant == "seed":  # rotary positions rotate channel pairs of each head
            head = self.n_embd // self.n_head
            require(
                head % 2 == 0,
                f"--variant seed needs an even head size, got {head} (--n-embd / --n-head)",
            )


# --------------------------------------------------------------------------- decoding cache


class LayerCache:
    """What a layer's new positions need from its earlier ones, so a decoding step costs one
    token's work: the attention's keys and values (a :class:`~physllm.nn.KVCache`
    preallocated to the block) and the last ``width - 1`` inputs of its causal convolution
    (zeros before the first token: the convolution's causal padding)."""

    def __init__(self, kv: KVCache, like: torch.Tensor, width: int):
        self.kv = kv
        self.recent = like.new_zeros(like.size(0), width - 1, like.size(-1))  # (B, K-1, C)

    def repeat(self, repeats: int) -> LayerCache:
        """A copy with each batch row repeated ``repeats`` times (rows b * repeats + i)."""
        kv = self.kv
        k, v = (t[:, :, : kv.length].repeat_interleave(repeats, 0) for t in (kv.k, kv.v))
        copy = LayerCache(KVCache(k, v, kv.capacity), self.recent, self.recent.size(1) + 1)
        copy.recent = self.recent.repeat_interleave(repeats, 0)
        return copy

    def conv_input(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) after the held inputs: (B, K - 1 + T, C); holds the last K - 1."""
        padded = torch.cat([self.recent, x], dim=1)
        self.recent = padded[:, padded.size(1) - self.recent.size(1) :]
        return padded


def causal_pad(x: torch.Tensor, width: int, cache: LayerCache | None) -> torch.Tensor:
    """x (B, T, C) with the width - 1 inputs before it (B, width - 1 + T, C): zeros when
    decoding starts (or without a cache), the cache's held inputs after that."""
    if cache is not None:
        return cache.conv_input(x)
    return F.pad(x, (0, 0, width - 1, 0))


def depthwise_causal_conv(
    padded: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y_t = sum_j weight[c, j] padded[t + j] (+ bias): padded (B, K - 1 + T, C), weight
    (C, K) in conv1d's (correlation) order -> y (B, T, C). One new position (decoding) is a
    dot product over its window, several times cheaper there than a convolution call."""
    if padded.size(1) == weight.size(1):  # T = 1
        y = (padded * weight.t()).sum(1, keepdim=True)
        return y if bias is None else y + bias
    y = F.conv1d(padded.transpose(1, 2), weight.unsqueeze(1), bias, groups=weight.size(0))
    return y.transpose(1, 2)


# --------------------------------------------------------------------------- symplectic parts


def layer_norm(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` without the module call's overhead (decoding steps)."""
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


class DecayConv(nn.Module):
    """Causal depthwise convolution whose kernel is a_c exp(-lambda_c k), k = 0..K-1.

    lambda_c = softplus(raw_c) > 0 is learned per channel, so the influence of
    token t-k on token t is exactly a_c exp(-lambda_c k).
    """

    def __init__(self, channels: int, kernel: int, decay_init: float):
        super().__init__()
        self.kernel = kernel
        # softplus^{-1}(x) = log(exp(x) - 1)
        self.raw_decay = nn.Parameter(torch.full((channels,), math.log(math.expm1(decay_init))))
        self.gain = nn.Parameter(torch.full((channels,), 0.1))
        self.register_buffer("lags", torch.arange(kernel, dtype=torch.float), persistent=False)

    @property
    def decay(self) -> torch.Tensor:
        """lambda (C,)"""
        return F.softplus(self.raw_decay)

    def weights(self) -> torch.Tensor:
        """w[c, k] = a_c exp(-lambda_c k): (C, K)"""
        return self.gain[:, None] * torch.exp(-self.decay[:, None] * self.lags[None, :])

    def window_weights(self) -> torch.Tensor:
        """The kernel as weights of the window x_{t-K+1} .. x_t: (K, C), row j weighing
        x_{t-K+1+j}, so one new position's output is (window * w).sum(1) (decoding)."""
        return self.weights().flip(-1).t().contiguous()

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """x (B, T, C) -> y (B, T, C), y_t = sum_k w_k x_{t-k}."""
        w = self.weights().flip(-1)  # (C, K): a convolution correlates, so flip
        return depthwise_causal_conv(causal_pad(x, self.kernel, cache), w)


class SymplecticLayer(nn.Module):
    """One leapfrog step of H = |p|^2/2m + V(q; c), the context c fixed during the step
    (``substeps`` = k: k steps of dt / k, the same time at 1/k^2 of the energy error);
    velocity Verlet (kick-drift-kick) or position Verlet (drift-kick-drift)."""

    def __init__(self, config: HamiltonianConfig):
        super().__init__()
        C, H = config.n_embd, config.mlp_ratio * config.n_embd
        self.mode, self.mass, self.substeps = config.mode, config.mass, config.substeps
        # both integrators step from two factors of dt (step_factors): one loop each
        self.steps = drift_kicks if config.integrator == "position" else leapfrog_kicks
        self.ln_ctx = nn.LayerNorm(C, bias=config.bias)
        self.guide = CausalSelfAttention(config.n_embd, config.n_head, config.bias, config.dropout)
        self.local = DecayConv(C, config.decay_kernel, config.decay_init)
        self.ln_q = nn.LayerNorm(C, bias=config.bias)
        self.c_fc = nn.Linear(C, H, bias=config.bias)
        if config.mode == "direct":
            self.c_proj = nn.Linear(H, C, bias=config.bias)
        else:
            self.v = nn.Parameter(torch.zeros(H))
            self.raw_kappa = nn.Parameter(torch.tensor(math.log(math.expm1(config.kappa_init))))
        dt = torch.tensor(float(config.dt))
        if config.learn_dt:
            self.dt = nn.Parameter(dt)
        else:
            self.register_buffer("dt", dt)

    def context(self, q: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """c = guide(LN q) + local(LN q): (B, T, C), what each token feels from its past
        (with a ``cache``, q holds the new positions and the cache the earlier ones)."""
        x = self.ln_ctx(q)
        return self.guide(x, None if cache is None else cache.kv)[0] + self.local(x, cache)

    def potential(self, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Conservative mode: V_t = kappa |q_t|^2 / 2 + v . gelu(W_1 (LN q_t + c_t)), (B, T)."""
        kappa = F.softplus(self.raw_kappa)
        return 0.5 * kappa * (q * q).sum(-1) + F.gelu(self.c_fc(self.ln_q(q) + c)) @ self.v

    def force(self, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """F(q) at fixed context c: (B, T, C)."""
        if self.mode == "direct":
            # F_t = W_2 gelu(W_1 (LN q_t + c_t))
            return self.c_proj(F.gelu(self.c_fc(self.ln_q(q) + c)))
        # F_t = -dV_t/dq_t (tokens interact only through the fixed c)
        grad = force_from_potential(
            lambda x: self.potential(x, c), create_graph=torch.is_grad_enabled()
        )
        return grad(q)

    def forward(
        self,
        q: torch.Tensor,
        p: torch.Tensor,
        steer: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Tokens interact only through c; the step itself is per token, so a decoding step
        # integrates the new positions alone.
        c = self.context(q, cache)

        def force(x: torch.Tensor) -> torch.Tensor:
            f = self.force(x, c)
            return f if steer is None else f + steer  # steering: a constant extra force

        return self.steps(q, p, force, *self.step_factors(), self.substeps)

    def step_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The integrator's two factors of dt for k substeps: velocity Verlet's half kick
        dt/2k and drift dt/(k m) (:func:`leapfrog_kicks`), or position Verlet's kick dt/k
        and half drift dt/(2 k m) (:func:`drift_kicks`)."""
        dt = self.dt / self.substeps
        if self.steps is drift_kicks:
            return dt, 0.5 * dt / self.mass
        return 0.5 * dt, dt / self.mass

    def decode_constants(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What :meth:`step` reads from the parameters alone, computed once per decoding
        state: the local kernel as window weights (K, C) and :meth:`step_factors`."""
        return self.local.window_weights(), *self.step_factors()

    def step(
        self,
        q: torch.Tensor,
        p: torch.Tensor,
        steer: torch.Tensor | None,
        cache: LayerCache,
        constants: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` for one new position (B, 1, C) after those in ``cache``, in eval
        mode: the same numbers in fewer ops (``constants`` from :meth:`decode_constants`).

        Per token and layer, velocity Verlet is 2 + 2(k + 1) matrix products (k substeps):
        the guide's c_attn and c_proj, then the force's c_fc and c_proj at each of its
        k + 1 evaluations. GPT's block is 4 (c_attn, c_proj, c_fc, c_proj), so at k = 1 a
        layer multiplies by 6 matrices to GPT's 4, and by 20 d^2 weights to GPT's 12 d^2.
        Position Verlet evaluates the force k times: 4 products at k = 1, GPT's count."""
        w_local, first, second = constants
        x = layer_norm(self.ln_ctx, q)
        local = (cache.conv_input(x) * w_local).sum(1, keepdim=True)  # sum_k w_k x_{t-k}
        c = self.guide.step(x, cache.kv) + local
        if self.mode == "direct":
            ln, fc, proj = self.ln_q, self.c_fc, self.c_proj

            def force(y: torch.Tensor) -> torch.Tensor:
                h = layer_norm(ln, y) + c
                f = F.linear(F.gelu(F.linear(h, fc.weight, fc.bias)), proj.weight, proj.bias)
                return f if steer is None else f + steer
        else:

            def force(y: torch.Tensor) -> torch.Tensor:
                f = self.force(y, c)
                return f if steer is None else f + steer

        return self.steps(q, p, force, first, second, self.substeps)


# --------------------------------------------------------------------------- seed parts


def ema_scan(
    velocity: torch.Tensor, beta: float, reset: torch.Tensor, m: torch.Tensor | None = None
) -> torch.Tensor:
    """m_t = (beta m_{t-1} + (1 - beta) v_t) (1 - r_t): velocity (B, T, C), reset (B, T, 1);
    ``m`` (B, C) the value before the first step (zeros)."""
    m = torch.zeros_like(velocity[:, 0]) if m is None else m
    out = []
    for t in range(velocity.size(1)):
        m = (beta * m + (1.0 - beta) * velocity[:, t]) * (1.0 - reset[:, t])
        out.append(m)
    return torch.stack(out, dim=1)


def rope(x: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Rotary positions (the seed's half-split form) on x (B, nh, T, hs) at positions
    start .. start + T - 1."""
    T, hs = x.size(-2), x.size(-1)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hs, 2, device=x.device).float() / hs))
    freqs = torch.outer(torch.arange(start, start + T, device=x.device).float(), inv_freq)
    angle = torch.cat([freqs, freqs], dim=-1).to(x.dtype)  # (T, hs)
    x1, x2 = x.chunk(2, dim=-1)
    return x * angle.cos() + torch.cat([-x2, x1], dim=-1) * angle.sin()


class DistancePenaltyAttention(nn.Module):
    """RoPE attention minus a learned per-head distance penalty (the seed's "gravity")."""

    def __init__(self, config: HamiltonianConfig):
        super().__init__()
        C = config.n_embd
        self.n_head, self.cap, self.scale = config.n_head, config.gravity_max, config.gravity_scale
        self.c_attn = nn.Linear(C, 3 * C, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        self.gravity = nn.Linear(C, config.n_head)

    def forward(
        self, x: torch.Tensor, cache: LayerCache | None = None, start: int = 0
    ) -> torch.Tensor:
        """x (B, T, C) at positions start .. start + T - 1; the cache holds the keys
        (rotated) and values of the positions before."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = rope(q, start), rope(k, start)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.kv.extend(k, v)  # (B, nh, start + T, hs)
        # S_ij = q_i.k_j / sqrt(hs) - softplus(g(x_i)) * min(|i - j|, 64) * 0.1
        g = F.softplus(self.gravity(x)).transpose(1, 2).unsqueeze(-1)  # (B, nh, T, 1)
        i = torch.arange(start, start + T, device=x.device)[:, None]  # query positions
        j = torch.arange(k.size(2), device=x.device)[None, :]  # key positions
        dist = (i - j).abs().clamp(max=self.cap).to(x.dtype)  # (T, S)
        bias = (-g * dist * self.scale).masked_fill(j > i, float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class SeedBlock(nn.Module):
    """x + attn(LN x) + SiLU(conv3(x)), then x + MLP(LN x): the seed's block."""

    def __init__(self, config: HamiltonianConfig):
        super().__init__()
        C = config.n_embd
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.attn = DistancePenaltyAttention(config)
        self.k = config.conv_kernel
        self.reflex = nn.Conv1d(C, C, self.k, padding=self.k - 1, groups=C)
        self.c_fc = nn.Linear(C, 4 * C, bias=False)
        self.c_proj = nn.Linear(4 * C, C, bias=False)

    def forward(
        self, x: torch.Tensor, cache: LayerCache | None = None, start: int = 0
    ) -> torch.Tensor:
        # causal: the k - 1 inputs before each position, not after
        padded = causal_pad(x, self.k, cache)  # (B, k - 1 + T, C)
        reflex = F.silu(depthwise_causal_conv(padded, self.reflex.weight[:, 0], self.reflex.bias))
        x = x + self.attn(self.ln1(x), cache, start) + reflex
        return x + self.c_proj(F.gelu(self.c_fc(self.ln2(x))))


# --------------------------------------------------------------------------- model


class HamiltonianLM(LanguageModel):
    config_class = HamiltonianConfig
    renamed_parameters = {"wpe_p.": "wte_p."}  # the momentum table is token-indexed

    def __init__(self, config: HamiltonianConfig):
        super().__init__(config)
        C, V = config.n_embd, config.vocab_size
        self.wte = nn.Embedding(V, C)  # q (tied to the head)
        self.wte_p = nn.Embedding(V, C)  # p
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight
        self.drop = nn.Dropout(config.dropout)
        if config.variant == "symplectic":
            self.wpe = nn.Embedding(config.block_size, C)
            self.layers = nn.ModuleList([SymplecticLayer(config) for _ in range(config.n_layer)])
            self.ln_f = nn.LayerNorm(C, bias=config.bias)
            self.tau = nn.Parameter(torch.tensor(1.0))
        else:
            self.layers = nn.ModuleList([SeedBlock(config) for _ in range(config.n_layer)])
            self.ln_f = nn.LayerNorm(C)
        init_gpt2_weights(self, config.n_layer)
        if config.variant == "seed":  # the seed's gravity head: a penalty of 0.1 softplus(0.5)
            for block in self.layers:  # per token of distance from the start
                nn.init.normal_(block.attn.gravity.weight, std=0.01)
                nn.init.constant_(block.attn.gravity.bias, 0.5)
        if config.variant == "symplectic" and config.mode == "conservative":
            for layer in self.layers:
                nn.init.normal_(layer.v, std=0.02 / math.sqrt(2 * config.n_layer))

    # ----------------------------------------------------------------- forward passes

    def phase_space(self, idx: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Symplectic: q_0 = E_q[x] + P[t], p_0 = E_p[x]; both (B, T, C), positions from
        ``start``."""
        pos = torch.arange(start, start + idx.size(1), device=idx.device)
        return self.drop(self.wte(idx) + self.wpe(pos)), self.drop(self.wte_p(idx))

    def seed_embedding(self, idx: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """Seed: x = E_q[x_t] + EMA_beta(E_p[x_t] - E_p[x_{t-1}]), halved at end-of-text.
        ``cache`` (decoding) holds the last token's E_p and the EMA after it, and is updated."""
        p = self.wte_p(idx)
        before = p[:, :1] if cache is None or "p" not in cache else cache["p"]  # v_0 = 0
        velocity = p - torch.cat([before, p[:, :-1]], dim=1)
        reset = ((idx == self.config.eos_id).to(p.dtype) * 0.5).unsqueeze(-1)
        m = ema_scan(
            velocity, self.config.ema_beta, reset, None if cache is None else cache.get("m")
        )
        if cache is not None:
            cache.update(p=p[:, -1:], m=m[:, -1])
        return self.wte(idx) + m

    def new_cache(self, idx: torch.Tensor) -> dict[str, Any]:
        """An empty decoding cache for a batch like ``idx`` (B, T): one
        :class:`LayerCache` per layer, preallocated to the block."""
        cfg, like = self.config, self.wte.weight
        B, hs = idx.size(0), cfg.n_embd // cfg.n_head
        width = cfg.decay_kernel if cfg.variant == "symplectic" else cfg.conv_kernel
        x = like.new_zeros(B, 1, cfg.n_embd)
        cache: dict[str, Any] = {
            "layers": [
                LayerCache(KVCache.empty(like, B, cfg.n_head, hs, cfg.block_size), x, width)
                for _ in self.layers
            ]
        }
        if cfg.variant == "symplectic":  # for single-token steps (SymplecticLayer.step)
            cache["derived"] = Derived([layer.decode_constants() for layer in self.layers])
        return cache

    def run(
        self,
        idx: torch.Tensor,
        steer: torch.Tensor | None = None,
        trace: bool = False,
        cache: dict | None = None,
        start: int = 0,
    ) -> dict[str, Any]:
        """Full pass. Returns logits (B, T, V), hidden (B, T, C) (what the head reads) and,
        with ``trace``, the per-layer states (symplectic: lists of q and p; seed: x).

        ``steer`` (C,): symplectic, a force added to every layer's kicks; seed, an
        offset added to the embeddings. ``cache`` (:meth:`new_cache`, extended in place):
        ``idx`` holds the positions from ``start`` on, the cache what came before.
        """
        out: dict[str, Any] = {}
        layer_caches = [None] * len(self.layers) if cache is None else cache["layers"]
        if "derived" in (cache or {}) and idx.size(1) == 1 and not (trace or self.training):
            # one decoding step: each layer's step (the same numbers in fewer ops), the
            # constants it reads computed when the cache was made (new_cache)
            q = self.wte(idx) + self.wpe.weight[start]  # (dropout is off in eval)
            p = self.wte_p(idx)
            for layer, layer_cache, constants in zip(
                self.layers, layer_caches, cache["derived"].values
            ):
                q, p = layer.step(q, p, steer, layer_cache, constants)
            hidden = self.ln_f(torch.addcmul(q, self.tau, p))  # LN(q + tau p)
            out.update(logits=self.lm_head(hidden), hidden=hidden)
            return out
        if self.config.variant == "symplectic":
            q, p = self.phase_space(idx, start)
            qs, ps = [q], [p]
            for layer, layer_cache in zip(self.layers, layer_caches):
                q, p = layer(q, p, steer, layer_cache)
                if trace:
                    qs.append(q)
                    ps.append(p)
            # logits = E . LN(q + tau p): read out where the token is heading
            hidden = self.ln_f(q + self.tau * p)
            if trace:
                out.update(qs=qs, ps=ps)
        else:
            x = self.seed_embedding(idx, cache)
            if steer is not None:
                x = x + steer
            x = self.drop(x)
            xs = [x]
            for block, layer_cache in zip(self.layers, layer_caches):
                x = block(x, layer_cache, start)
                xs.append(x)
            hidden = self.ln_f(x)
            if trace:
                out.update(xs=xs)
        out.update(logits=self.lm_head(hidden), hidden=hidden)
        return out

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        steer: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, V); cross-entropy loss if targets (B, T) given."""
        logits = self.run(idx, steer)["logits"]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
            if self.config.variant == "symplectic":
                self.last_aux = {
                    "dt_mean": float(torch.stack([la.dt.detach() for la in self.layers]).mean())
                }
        return logits, loss

    @torch.no_grad()
    def decode_step(
        self, idx: torch.Tensor, state: dict | None = None
    ) -> tuple[torch.Tensor, dict]:
        """Cached step: feed the new tokens ``idx`` (B, T); the next-token logits (B, V).

        Every layer's context is causal and its leapfrog step per token, so the new
        positions need from the earlier ones only each layer's attention keys and values
        and its convolution's last inputs (:meth:`new_cache`). Past the block, the last
        ``block_size`` tokens are re-encoded from position 0, as uncached sampling does
        (learned positions). ``state["steer"]`` (C,), when set, steers every step (set it
        before the first call: the cached positions were computed with it).

        One token in eval mode goes through :meth:`SymplecticLayer.step` (the symplectic
        variant), reading the constants :meth:`new_cache` computed from the parameters:
        velocity Verlet multiplies by 6 matrices per layer to GPT's 4 (its second force
        evaluation), position Verlet by 4; both add a LayerNorm and the local kernel.
        """
        state = dict(state or {})
        block, pos = self.config.block_size, state.get("pos", 0)
        history = idx if "tokens" not in state else torch.cat([state["tokens"], idx], dim=1)
        history = history[:, -block:]
        if "cache" not in state or pos + idx.size(1) > block:
            state["cache"], pos, idx = self.new_cache(history), 0, history
        out = self.run(idx, state.get("steer"), cache=state["cache"], start=pos)
        state.update(tokens=history, pos=pos + idx.size(1), hidden=out["hidden"][:, -1])
        return out["logits"][:, -1, :], state

    @staticmethod
    def fork_state(state: dict, repeats: int) -> dict:
        """A decoding state with each batch row repeated ``repeats`` times (rows b * repeats + i),
        the original left as it was: K candidates continued from one cached past."""
        cache = {
            k: [layer.repeat(repeats) for layer in v]
            if k == "layers"
            else v.repeat_interleave(repeats, 0)
            if isinstance(v, torch.Tensor)
            else v  # Derived from the parameters: the same for every row
            for k, v in state["cache"].items()
        }
        rows = {k: state[k].repeat_interleave(repeats, 0) for k in ("tokens", "hidden")}
        return {**state, **rows, "cache": cache}

    # ----------------------------------------------------------------- steering and analysis

    def steer_vector(self, token_ids: list[int], strength: float) -> torch.Tensor:
        """The steering term (C,) toward (strength > 0) or away from (< 0) a word's tokens.

        Seed, as its ``get_concept_vector``: strength * E[first token] (the rest of the
        word is ignored). Symplectic: every token counts, u the mean of their embeddings,
        a force strength * steer_scale * |E|_mean * u/|u| on every momentum kick.
        """
        if not token_ids:
            raise ValueError("the target word encodes to no tokens")
        E = self.wte.weight.detach()
        if self.config.variant == "seed":
            return strength * E[token_ids[0]]
        u = E[torch.tensor(token_ids, device=E.device)].mean(0)
        scale = self.config.steer_scale * E.norm(dim=-1).mean()
        return strength * scale * u / u.norm().clamp_min(1e-12)

    def with_substeps(self, substeps: int) -> HamiltonianLM:
        """A copy with the same weights whose layers each take ``substeps`` leapfrog steps of
        dt / substeps: the same trained model nearer the exact flow of each layer's H."""
        model = type(self)(dataclasses.replace(self.config, substeps=substeps))
        model.load_state_dict(self.state_dict())
        return model.to(self.wte.weight.device).train(self.training)

    def layer_energies(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Conservative mode: each layer's H_l = T + V_l before and after its step, per token.

        Returns kinetic, potential_in, potential_out, H_in, H_out, each (L, B, T).
        """
        if self.config.variant != "symplectic" or self.config.mode != "conservative":
            raise ValueError("energies are defined in the symplectic variant's conservative mode")
        q, p = self.phase_space(idx)
        rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("kinetic", "V_in", "V_out")}
        rows["kinetic_out"] = []
        for layer in self.layers:
            c = layer.context(q).detach()
            rows["kinetic"].append(0.5 * (p * p).sum(-1) / layer.mass)
            rows["V_in"].append(layer.potential(q, c))
            q, p = layer(q, p)
            rows["V_out"].append(layer.potential(q, c))
            rows["kinetic_out"].append(0.5 * (p * p).sum(-1) / layer.mass)
        out = {k: torch.stack(v).detach() for k, v in rows.items()}
        out["H_in"] = out["kinetic"] + out["V_in"]
        out["H_out"] = out["kinetic_out"] + out["V_out"]
        return out
