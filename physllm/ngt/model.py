"""Newton Gravity Transformer (NGT): attention as gravity between tokens.

Each token carries a **mass** ``m = softplus(E_mass[x])`` (one number per
vocabulary entry) and sits at a **coordinate** ``z`` in a small space of
``n_coord`` dimensions that starts at ``z0 = E_coord[pos]`` and moves from
layer to layer, ``z <- LN(z + W_next o)``, pushed by what attention read (o).
Attention scores come from distances between coordinates instead of
query-key dot products; values still come from the hidden state, and every
block keeps its MLP, so the model is a transformer whose "who looks at whom"
is geometric.

Per head h, coordinates are projected, ``u = P_h z``, and ``d2_ij = |u_i - u_j|^2``.
Two kernels (``kernel=``):

``"seed"``: the seed project's score, kept so its behaviour can be shown::

    s_ij = m_i m_j (-gamma / (d2_ij + eps) + b)

  Newton's potential is -G m_i m_j / r, but softmax turns a *higher* score
  into *more* weight, and this score is most negative at small distance: near
  tokens get the least weight, far tokens the most. The kernel repels. Its
  radius cutoffs: ``hard`` masks pairs with d2 > R^2 (a step: the radius gets no
  gradient); ``soft`` multiplies the (negative) score by relu(1 - d2/R^2), which
  lifts far pairs to score 0, the largest possible, so it favours what lies
  outside the radius (inverted).

``"gaussian"`` (the default): attractive, with the mass as a prior on the key::

    s_ij = -gamma d2_ij + log m_j        a_ij  ∝  m_j exp(-gamma |u_i - u_j|^2)

  Expanding d2 = |u_i|^2 - 2 u_i.u_j + |u_j|^2 and dropping |u_i|^2 (constant
  along a softmax row, so it cannot change the weights) leaves a dot product
  of augmented vectors::

    q'_i = [2 gamma u_i, 1]      k'_j = [u_j, -gamma |u_j|^2 + log m_j]
    s_ij = q'_i . k'_j  (+ a per-row constant)

  so attention runs through ``F.scaled_dot_product_attention`` (flash kernels
  on GPU) at ``scale=1`` and never builds the (T, T, C) difference tensor.
  (Under bf16 autocast the scores q'.k' are rounded to 8 bits of mantissa: a per-key
  error up to about gamma |u|^2 / 100, measured 1.4 to 2.4 x gamma |u|^2 / 256; the
  weights' total variation from the float64 formula is about 0.01 at |u| ~ 2, 0.04 at
  |u| ~ 4 and 0.27 at |u| ~ 8 (tests/test_ngt.py): fine while the LayerNormed
  coordinates keep |u| moderate, not beyond.)

``cutoff="smooth"`` adds ``-softplus((d2/R^2 - 1)/w)`` to the scores: about 0
inside the radius, a wall rising linearly in d2 beyond it, and differentiable
in R, so the radius learns. ``repulsion > 0`` adds ``mean m_i m_j / (d2_ij + eps)``
over pairs of the coordinates attention reads (every layer, every head) to the
training loss: a mean, so its weight does not depend on the batch size or on
gradient accumulation.

Decoding with a cache (:meth:`NGT.decode_step`). Everything layer l holds about
position j (its hidden state x_j, coordinate z_j, and so u_j = P z_j, v_j and the
mass m_j of its token) depends on positions <= j only: attention is causal, and
the MLP, ``coord_next`` and the LayerNorms of x and z act on one position at a
time. So once computed, what position j offers later queries never changes, and
a new position i needs from each layer only that, kept per layer in a
:class:`~physllm.nn.KVCache` (allocated once at ``block_size``, filled in place):

    gaussian:  keys k'_j = [u_j, -gamma |u_j|^2 + log m_j]    values v_j (zero-padded like q', k')
    seed:      keys k"_j = [u_j, m_j, |u_j|^2, 1]             values v_j (mass in the values: m_j v_j)
               (m_j only when the mass is in the logits)

and row i of the scores, s_ij for j <= i, is the full forward's row i. The
cutoffs read d2_ij = |u_i - u_j|^2 from u_j (the gaussian's k'_j holds u_j in its
first c entries). The repulsion is a training loss only. So every variant is
cached exactly; nothing is normalised over all positions.

One new query (a decoding step, :meth:`GravityAttention.step`) gets its whole row of
d2_ij from one product, the gaussian's trick again: with q"_i = [-2 u_i, (0,) 1, |u_i|^2],

    q"_i . k"_j = |u_i|^2 + |u_j|^2 - 2 u_i . u_j = d2_ij
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from physllm.arch import LanguageModel, TransformerShape
from physllm.gpt.model import GPT, GPTConfig
from physllm.nn import (
    MLP,
    Derived,
    KVCache,
    LayerNorm,
    band_causal_mask,
    init_gpt2_weights,
    layer_norm,
    mlp_step,
)
from physllm.validation import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_FLOAT,
    at_least,
    one_of,
    require,
)

KERNELS = ("gaussian", "seed")
CUTOFFS = ("auto", "none", "hard", "soft", "smooth")
MASS_MODES = ("logits", "values", "none")
REPULSION_FORMS = ("coords", "seed")


@dataclass
class NGTConfig(TransformerShape):
    n_coord: int = 32  # C: width of the coordinate stream z (the seed's WikiText run: 64)
    head_coord: int = 16  # per-head coordinate dims of u = P z (the seed's default)
    mlp_hidden: int = 0  # 0: the width that gives the vanilla GPT's parameter count
    kernel: str = (
        "gaussian"  # "gaussian" (attractive, SDPA) or "seed" (m m (-gamma / (d2 + eps) + b))
    )
    mass_in: str = "logits"  # "logits", "values" (v_j * m_j, the seed's option) or "none"
    cutoff: str = "auto"  # auto (gaussian: none, seed: hard) | none | hard | soft (seed's) | smooth
    radius_init: float = 4.0  # raw radius; softplus(4) = 4.02, the seed's initial_radius
    cutoff_width: float = 0.1  # w of the smooth cutoff, as a fraction of R^2
    gamma_init: float = 0.0  # raw gamma; softplus(0) = ln 2 = 0.69 (the seed's init)
    dist_eps: float = 1e-6  # the seed's eps in 1 / (d2 + eps)
    repulsion: float = 0.0  # weight of the repulsion term in the training loss
    repulsion_samples: int = 64  # positions per sequence the repulsion looks at (evenly spaced)
    repulsion_eps: float = 1e-2  # softening: 1 / (d2 + eps) stays finite when two tokens meet
    # coords: ours (every layer's u, evenly spaced positions, masses detached);
    # seed: the seed's (final z, random positions, 1 / max(d2, 1e-6), masses pushed too)
    repulsion_form: str = "coords"

    field_rules = {
        "n_coord": POSITIVE,
        "head_coord": POSITIVE,
        "mlp_hidden": NON_NEGATIVE,
        "kernel": one_of(*KERNELS),
        "mass_in": one_of(*MASS_MODES),
        "cutoff": one_of(*CUTOFFS),
        "cutoff_width": POSITIVE_FLOAT,
        "dist_eps": POSITIVE_FLOAT,  # 1 / (d2 + eps) at d2 = 0
        "repulsion": at_least(0),
        "repulsion_samples": POSITIVE,
        "repulsion_eps": POSITIVE_FLOAT,
        "repulsion_form": one_of(*REPULSION_FORMS),
    }

    def check(self) -> None:
        super().check()
        require(
            not (self.kernel == "gaussian" and self.cutoff == "soft"),
            "--cutoff soft is the seed's multiplicative cutoff: --kernel seed only",
        )

    @property
    def resolved_cutoff(self) -> str:
        if self.cutoff != "auto":
            return self.cutoff
        return "none" if self.kernel == "gaussian" else "hard"


# --------------------------------------------------------------------------- kernels


def pairwise_d2(u: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """u (..., T, c) -> d2 (..., T, T) = |u_i - u_j|^2 via the Gram matrix (no (T, T, c) tensor).

    With ``w`` (..., S, c) (a decoding step's keys): d2 (..., T, S) = |u_i - w_j|^2.
    """
    w = u if w is None else w
    sq_u, sq_w = u.pow(2).sum(-1), w.pow(2).sum(-1)  # (..., T), (..., S)
    # d2_ij = |u_i|^2 + |w_j|^2 - 2 u_i . w_j, clamped: rounding can make it slightly negative
    return (sq_u.unsqueeze(-1) + sq_w.unsqueeze(-2) - 2 * u @ w.transpose(-1, -2)).clamp_min(0.0)


def seed_scores(
    d2: torch.Tensor,
    gamma: torch.Tensor,
    bias: torch.Tensor,
    mass: torch.Tensor | None,
    eps: float,
    key_mass: torch.Tensor | None = None,
) -> torch.Tensor:
    """The seed's score as its code computes it (ngt_model.py at 7e05baf: the bias added,
    then the mass product). d2 (B, H, T, S); gamma, bias (H,); mass (B, T) of the queries
    or None; ``key_mass`` (B, S) of the keys (default: ``mass``, the keys are the queries).

    b is scaled by m_i m_j, so it is not a row constant: along a row b m_i m_j grows
    with the key's mass, a mass prior (its README's formula, -gamma m_i m_j / (d2 + eps)
    + b, has a b that softmax would ignore).
    """
    g, b = gamma.view(-1, 1, 1), bias.view(-1, 1, 1)
    key_mass = mass if key_mass is None else key_mass
    mm = 1.0 if mass is None else (mass.unsqueeze(-1) * key_mass.unsqueeze(-2)).unsqueeze(1)
    # s_ij = m_i m_j (-gamma / (d2_ij + eps) + b)
    return mm * (-g / (d2 + eps) + b)


def gaussian_scores(
    d2: torch.Tensor, gamma: torch.Tensor, log_mass: torch.Tensor | None
) -> torch.Tensor:
    """The attractive score, written out. d2 (B, H, T, S); gamma (H,); log_mass (B, S) of the
    keys or None."""
    # s_ij = -gamma d2_ij + log m_j
    s = -gamma.view(-1, 1, 1) * d2
    return s if log_mass is None else s + log_mass[:, None, None, :]


def augmented_qk(
    u: torch.Tensor, gamma: torch.Tensor, log_mass: torch.Tensor | None, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """q', k' (B, H, T, dim) with q'_i . k'_j = -gamma d2_ij + log m_j + (a per-row constant).

    u (B, H, T, c); the vectors are zero-padded to ``dim`` so SDPA's fused kernels
    (which want equal, aligned head sizes) take them.
    """
    g = gamma.view(1, -1, 1, 1)
    ones = torch.ones_like(u[..., :1])
    # k'_j last entry: -gamma |u_j|^2 + log m_j
    k_last = -g * u.pow(2).sum(-1, keepdim=True)
    if log_mass is not None:
        k_last = k_last + log_mass[:, None, :, None]
    q = torch.cat([2 * g * u, ones], dim=-1)  # q'_i = [2 gamma u_i, 1]
    k = torch.cat([u, k_last], dim=-1)  # k'_j = [u_j, -gamma |u_j|^2 + log m_j]
    pad = dim - q.size(-1)
    return F.pad(q, (0, pad)), F.pad(k, (0, pad))


def cutoff_term(d2: torch.Tensor, radius: torch.Tensor, mode: str, width: float) -> torch.Tensor:
    """Additive score term of the hard or smooth radius cutoff (0 inside, falling outside)."""
    r2 = radius**2
    if mode == "hard":  # a step: d2 > R^2 -> -inf; d(step)/dR = 0 almost everywhere
        return torch.zeros_like(d2).masked_fill(d2 > r2, float("-inf"))
    # smooth: -softplus((d2 / R^2 - 1) / w), about 0 inside R, linear in d2 outside
    return -F.softplus((d2 / r2 - 1.0) / width)


def repulsion_energy(
    u: torch.Tensor, mass: torch.Tensor | None, samples: int, eps: float
) -> torch.Tensor:
    """Mean over sequences, heads and pairs i < j of m_i m_j / (d2_ij + eps).

    u (B, H, T, c), mass (B, T). Looks at ``samples`` evenly spaced positions
    (all when T is smaller): a fixed subset, so the mean of equal micro-batches
    is the mean of their union.
    """
    T = u.size(2)
    if T > samples:
        idx = torch.linspace(0, T - 1, samples, device=u.device).round().long()
        u = u[:, :, idx]
        mass = None if mass is None else mass[:, idx]
    n = u.size(2)
    d2 = pairwise_d2(u)  # (B, H, n, n)
    energy = 1.0 / (d2 + eps)
    if mass is not None:  # masses weigh the pairs but are not pushed by this term
        m = mass.detach()
        energy = energy * (m.unsqueeze(-1) * m.unsqueeze(-2)).unsqueeze(1)
    pairs = torch.ones(n, n, dtype=torch.bool, device=u.device).triu(1)
    return energy[..., pairs].mean()


def seed_repulsion_energy(z: torch.Tensor, mass: torch.Tensor, samples: int) -> torch.Tensor:
    """The seed's repulsion (train.py at 2ceebcf, ``compute_repulsion_loss``): on the final
    coordinates z (B, T, C), ``samples`` random positions shared across the batch, the mean
    over pairs i < j of m_i m_j / max(d2_ij, 1e-6). The masses (B, T) keep their gradient,
    so the term also pushes every mass towards 0."""
    T = z.size(1)
    if T > samples:
        idx = torch.randperm(T, device=z.device)[:samples]
        z, mass = z[:, idx], mass[:, idx]
    diff = z.unsqueeze(2) - z.unsqueeze(1)
    d2 = (diff * diff).sum(-1).clamp_min(1e-6)  # the seed's min_dist = 1e-3, squared
    energy = mass.unsqueeze(-1) * mass.unsqueeze(-2) / d2  # (B, n, n)
    pairs = torch.ones(z.size(1), z.size(1), dtype=torch.bool, device=z.device).triu(1)
    return energy[:, pairs].mean()


# --------------------------------------------------------------------------- parts


def causal_mask(T: int, S: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, S) bool: the T queries are the last T of S positions; query i (at S - T + i)
    sees key j iff j <= S - T + i (S = T: the usual lower triangle)."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)


class GaussianStep(NamedTuple):
    """What the gaussian kernel's single-token step reads from the parameters (and pads)."""

    two_gamma: torch.Tensor  # (1, H, 1, 1)
    neg_gamma: torch.Tensor
    radius: torch.Tensor  # R = softplus(radius_raw)
    q_pad: torch.Tensor  # (B, H, 1, qk_dim - c): [1, 0 ...]
    k_pad: torch.Tensor  # (B, H, 1, qk_dim - c - 1): zeros
    v_pad: torch.Tensor  # (B, H, 1, value_dim - hs): zeros


class SeedStep(NamedTuple):
    """What the seed kernel's single-token step reads from the parameters (and constants)."""

    neg_gamma: torch.Tensor  # (1, H, 1, 1)
    bias: torch.Tensor  # (1, H, 1, 1)
    radius: torch.Tensor
    r2: torch.Tensor  # R^2
    r2_eps: torch.Tensor  # R^2 + eps: the hard cutoff on d2 + eps
    eps: torch.Tensor  # dist_eps as a 0-dim tensor: a Python scalar costs a conversion per op
    minus_two: torch.Tensor
    q_mid: torch.Tensor  # (B, H, 1, key_dim - c - 1): [(0,) 1]
    one: torch.Tensor  # (B, H, 1, 1)


class BlockStep(NamedTuple):
    """What a block's one-token step reads from the parameters (``NGTBlock.decode_constants``)."""

    attn: GaussianStep | SeedStep
    out_weight: torch.Tensor  # (d + C, H hs): [W_p; W_next W_p]; the last block's (d, H hs): W_p
    out_bias: torch.Tensor | None  # (d + C,) or (d,)
    n_embd: int  # d: where o ends and the coordinates' step begins
    moves_coords: bool  # False for the last block: no later layer reads its z


class GravityAttention(nn.Module):
    """Attention whose weights come from masses and coordinates; values from the hidden state."""

    def __init__(self, config: NGTConfig):
        super().__init__()
        C, H, c = config.n_coord, config.n_head, config.head_coord
        self.n_head, self.head_coord = H, c
        self.head_size = config.n_embd // H
        self.kernel, self.mass_in = config.kernel, config.mass_in
        self.cutoff, self.cutoff_width = config.resolved_cutoff, config.cutoff_width
        self.dist_eps, self.dropout = config.dist_eps, config.dropout
        # q'/k' width for SDPA: the value head size when [u, 1] fits, else padded up to a multiple of 8
        self.qk_dim = max(self.head_size, 8 * math.ceil((c + 1) / 8))
        # what a decoding cache keeps per position and head (module docstring): gaussian k'_j
        # and the padded v_j; seed k"_j = [u_j, (m_j,) |u_j|^2, 1] and v_j
        seed_key = c + (1 if self.mass_in == "logits" else 0) + 2  # [u_j, (m_j,) |u_j|^2, 1]
        self.key_dim = self.qk_dim if self.kernel == "gaussian" else seed_key
        self.value_dim = self.qk_dim if self.kernel == "gaussian" else self.head_size
        self.coord_proj = nn.Linear(C, H * c, bias=config.bias)  # u = P z, every head at once
        self.v_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.gamma_raw = nn.Parameter(torch.full((H,), config.gamma_init))  # gamma = softplus
        self.bias = nn.Parameter(torch.zeros(H))  # the seed's b (seed kernel only)
        self.radius_raw = nn.Parameter(torch.tensor(config.radius_init))  # R = softplus, per layer

    @property
    def gamma(self) -> torch.Tensor:
        return F.softplus(self.gamma_raw)

    @property
    def radius(self) -> torch.Tensor:
        return F.softplus(self.radius_raw)

    def coords(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, T, C) -> per-head coordinates u (B, H, T, c)."""
        B, T, _ = z.shape
        return self.coord_proj(z).view(B, T, self.n_head, self.head_coord).transpose(1, 2)

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty decoding cache for ``capacity`` positions, allocated once: keys
        (B, H, capacity, key_dim) and values (B, H, capacity, value_dim) (module docstring)."""
        w = self.v_proj.weight
        keys = w.new_empty(batch, self.n_head, 0, self.key_dim)
        return KVCache(keys, w.new_empty(batch, self.n_head, 0, self.value_dim), capacity)

    def forward(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        mass: torch.Tensor,
        need_weights: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x (B, T, d) normalised hidden state, z (B, T, C), mass (B, T) of these T positions.

        ``cache``: the keys and values of the positions before them (:meth:`new_cache`),
        extended in place with these T, which attend to all of them. Returns the output
        (B, T, d), the coordinates u (B, H, T, c) the scores read, and the attention
        weights (B, H, T, T) when ``need_weights`` (a full pass, without a cache).
        """
        if need_weights and cache is not None:
            raise ValueError("attention weights come from a full forward pass, not a cache")
        B, T, d = x.shape
        u = self.coords(z)  # (B, H, T, c)
        v = self.v_proj(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, H, T, hs)
        if self.mass_in == "values":  # heavier tokens broadcast more: v_j * m_j
            v = v * mass[:, None, :, None]
        score_mass = mass if self.mass_in == "logits" else None

        weights = None
        if self.kernel == "gaussian" and not need_weights:
            y = self._gaussian_attention(u, v, score_mass, cache)
        else:
            y, weights = self._explicit_attention(u, v, score_mass, cache)
        y = y.transpose(1, 2).contiguous().view(B, T, d)  # heads side by side
        return self.resid_dropout(self.c_proj(y)), u, weights

    def _gaussian_attention(
        self, u: torch.Tensor, v: torch.Tensor, mass: torch.Tensor | None, cache: KVCache | None
    ) -> torch.Tensor:
        """The gaussian kernel through SDPA: u (B, H, T, c), v (B, H, T, hs), mass (B, T) or
        None -> y (B, H, T, hs). With a cache the keys are the S = T_past + T positions so far."""
        T = u.size(2)
        log_m = None if mass is None else mass.clamp_min(1e-20).log()
        q, k = augmented_qk(u, self.gamma, log_m, self.qk_dim)  # (B, H, T, qk_dim)
        q, k = q.to(v.dtype), k.to(v.dtype)  # gamma is float32: match v under autocast
        vp = F.pad(v, (0, self.qk_dim - self.head_size))
        keys_u = u
        if cache is not None:
            k, vp = cache.extend(k, vp)  # (B, H, S, qk_dim): k'_j, v_j of every position so far
            keys_u = k[..., : self.head_coord]  # u_j: the first c entries of k'_j
        S = k.size(2)
        dropout_p = self.dropout if self.training else 0.0
        if self.cutoff == "none":  # query i at S - T + i sees keys j <= S - T + i
            mask, is_causal = band_causal_mask(T, S, device=u.device)
            y = F.scaled_dot_product_attention(
                q, k, vp, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p, scale=1.0
            )
        else:  # the cutoff needs d2 itself: an additive (T, S) mask, no flash kernel
            extra = cutoff_term(pairwise_d2(u, keys_u), self.radius, self.cutoff, self.cutoff_width)
            mask = extra.masked_fill(~causal_mask(T, S, u.device), float("-inf"))
            y = F.scaled_dot_product_attention(
                q, k, vp, attn_mask=mask, dropout_p=dropout_p, scale=1.0
            )
        return y[..., : self.head_size]

    def decode_constants(self, batch: int) -> GaussianStep | SeedStep:
        """What :meth:`step` reads from the parameters alone, computed once per decoding
        state: the kernel's softplus'd scalars shaped to broadcast with a query's heads
        (B, H, 1, .), and the constant entries of q', k' (gaussian) or q", k" (seed) and the
        value pad for a batch of ``batch``."""
        w, H, c = self.v_proj.weight, self.n_head, self.head_coord
        gamma = self.gamma.view(1, H, 1, 1)
        if self.kernel == "seed":
            q_mid = w.new_zeros(batch, H, 1, self.key_dim - c - 1)  # q"_i = [-2 u_i, (0,) 1, ..]
            q_mid[..., -1] = 1.0
            return SeedStep(
                neg_gamma=-gamma,
                bias=self.bias.view(1, H, 1, 1),
                radius=self.radius,
                r2=self.radius**2,
                r2_eps=self.radius**2 + self.dist_eps,
                eps=w.new_tensor(self.dist_eps),
                minus_two=w.new_tensor(-2.0),
                q_mid=q_mid,
                one=w.new_ones(batch, H, 1, 1),  # k"_j's last entry
            )
        q_pad = w.new_zeros(batch, H, 1, self.qk_dim - c)  # q'_i = [2 gamma u_i, 1, 0 ...]
        q_pad[..., 0] = 1.0
        return GaussianStep(
            two_gamma=2 * gamma,
            neg_gamma=-gamma,
            radius=self.radius,
            q_pad=q_pad,
            k_pad=w.new_zeros(batch, H, 1, self.qk_dim - c - 1),  # k'_j = [u_j, k_last, 0 ...]
            v_pad=w.new_zeros(batch, H, 1, self.value_dim - self.head_size),
        )

    def step(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        mass: torch.Tensor | None,
        log_mass: torch.Tensor | None,
        cache: KVCache,
        constants: GaussianStep | SeedStep,
    ) -> torch.Tensor:
        """:meth:`forward`'s heads, side by side before ``c_proj`` (B, 1, H hs), for one new
        position after those in ``cache`` (extended in place), in eval mode (the block
        applies ``c_proj`` fused with its ``W_next``): x (B, 1, d), z (B, 1, C); the token's
        mass and log-mass
        (B, H, 1, 1) where this layer reads them (:meth:`NGT._step`), else None;
        ``constants`` from :meth:`decode_constants`.

        The same scores in fewer ops: one query sees every key (no causal mask), its heads
        (B, H, 1, .) lie in memory as (B, 1, H .) (no transposes), its key and value go
        straight into the cache, and the seed kernel's d2 row is one product q" . k"."""
        B, H, c, hs = x.size(0), self.n_head, self.head_coord, self.head_size
        u = F.linear(z, self.coord_proj.weight, self.coord_proj.bias).view(B, H, 1, c)
        v = F.linear(x, self.v_proj.weight, self.v_proj.bias).view(B, H, 1, hs)
        if self.mass_in == "values":  # v_i * m_i
            v = v * mass
        sq = (u * u).sum(-1, keepdim=True)  # |u_i|^2
        const = constants
        if isinstance(const, GaussianStep):
            # k'_i = [u_i, -gamma |u_i|^2 (+ log m_i), 0 ...], q'_i = [2 gamma u_i, 1, 0 ...]
            if log_mass is None:
                k_last = const.neg_gamma * sq
            else:
                k_last = torch.addcmul(log_mass, const.neg_gamma, sq)
            k = torch.cat([u, k_last, const.k_pad], dim=-1)
            q = torch.cat([const.two_gamma * u, const.q_pad], dim=-1)
            if const.v_pad.size(-1):
                v = torch.cat([v, const.v_pad], dim=-1)
        else:  # k"_i = [u_i, (m_i,) |u_i|^2, 1], q"_i = [-2 u_i, (0,) 1, |u_i|^2 + eps]
            k = [u, sq, const.one] if self.mass_in != "logits" else [u, mass, sq, const.one]
            k = torch.cat(k, dim=-1)
            q = torch.cat([const.minus_two * u, const.q_mid, sq + const.eps], dim=-1)
        cache.k.narrow(2, cache.length, 1).copy_(k)
        cache.v.narrow(2, cache.length, 1).copy_(v)
        cache.length += 1
        keys = cache.k.narrow(2, 0, cache.length)  # (B, H, S, key_dim)
        values = cache.v.narrow(2, 0, cache.length)
        if isinstance(const, GaussianStep):
            mask = None
            if self.cutoff != "none":  # the cutoff as an additive mask on the scores
                d2 = pairwise_d2(u, keys[..., :c])
                mask = cutoff_term(d2, const.radius, self.cutoff, self.cutoff_width)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=1.0)
            y = y[..., :hs] if const.v_pad.size(-1) else y
        else:
            y = self._seed_row(q, keys, mass, const).softmax(dim=-1) @ values
        return y.reshape(B, 1, H * hs)

    def _seed_row(
        self, q: torch.Tensor, keys: torch.Tensor, mass: torch.Tensor | None, const: SeedStep
    ) -> torch.Tensor:
        """The seed kernel's scores (B, H, 1, S) of one query q" against the cached keys k"
        (B, H, S, key_dim): :meth:`attention_weights`' row before the softmax."""
        keys_t = keys.transpose(-1, -2)  # (B, H, key_dim, S)
        # d2_j + eps = q"_i . k"_j = |u_i|^2 + |u_j|^2 - 2 u_i . u_j + eps, with d2_j clamped
        # at 0 as pairwise_d2 does: eps in the query saves an op over the whole row
        d2_eps = (q @ keys_t).clamp_min_(self.dist_eps)
        # s_j = m_i m_j (-gamma / (d2_j + eps) + b)   (seed_scores)
        s = torch.addcdiv(const.bias, const.neg_gamma, d2_eps)
        if self.mass_in == "logits":  # m_j: row c of the keys; in place, no new row
            s = s.mul_(keys_t.narrow(-2, self.head_coord, 1)).mul_(mass)
        if self.cutoff == "hard":  # d2_j > R^2
            return s.masked_fill_(d2_eps > const.r2_eps, float("-inf"))
        if self.cutoff == "soft":
            return s * F.relu(1.0 - (d2_eps - const.eps) / const.r2)
        if self.cutoff == "smooth":
            d2 = d2_eps - const.eps
            return s + cutoff_term(d2, const.radius, self.cutoff, self.cutoff_width)
        return s

    def _explicit_attention(
        self, u: torch.Tensor, v: torch.Tensor, mass: torch.Tensor | None, cache: KVCache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores written out (the seed kernel; traces): y (B, H, T, hs) and weights (B, H, T, S)."""
        keys_u, key_mass = u, mass
        if cache is not None:  # keys k"_j = [u_j, (m_j,) |u_j|^2, 1] (m_j copied to every head)
            k = [u, u.pow(2).sum(-1, keepdim=True), torch.ones_like(u[..., :1])]
            if mass is not None:
                k.insert(1, mass[:, None, :, None].expand_as(u[..., :1]))
            k, v = cache.extend(torch.cat(k, dim=-1), v)  # (B, H, S, key_dim), (B, H, S, hs)
            keys_u = k[..., : self.head_coord]
            key_mass = None if mass is None else k[:, 0, :, self.head_coord]  # (B, S)
        causal = causal_mask(u.size(2), keys_u.size(2), u.device)
        weights = self.attention_weights(u, mass, causal, keys_u, key_mass)
        y = F.dropout(weights, self.dropout if self.training else 0.0, self.training) @ v
        return y, weights

    def attention_weights(
        self,
        u: torch.Tensor,
        mass: torch.Tensor | None,
        causal: torch.Tensor,
        keys: torch.Tensor | None = None,
        key_mass: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Explicit scores -> softmax weights (B, H, T, S): the seed kernel, and traces.

        u (B, H, T, c) and mass (B, T) of the queries; ``keys`` (B, H, S, c) and ``key_mass``
        (B, S) of the positions they read (default: the queries themselves, S = T);
        ``causal`` (T, S) which of them each query may see.
        """
        keys = u if keys is None else keys
        key_mass = mass if key_mass is None else key_mass
        d2 = pairwise_d2(u, keys)  # (B, H, T, S)
        if self.kernel == "seed":
            s = seed_scores(d2, self.gamma, self.bias, mass, self.dist_eps, key_mass)
            if self.cutoff == "soft":  # the seed's: s * relu(1 - d2 / R^2) (lifts far pairs to 0)
                s = s * F.relu(1.0 - d2 / self.radius**2)
            elif self.cutoff in ("hard", "smooth"):
                s = s + cutoff_term(d2, self.radius, self.cutoff, self.cutoff_width)
        else:
            log_m = None if key_mass is None else key_mass.clamp_min(1e-20).log()
            s = gaussian_scores(d2, self.gamma, log_m)
            if self.cutoff != "none":
                s = s + cutoff_term(d2, self.radius, self.cutoff, self.cutoff_width)
        s = s.masked_fill(~causal, float("-inf"))
        return s.softmax(dim=-1)


class NGTBlock(nn.Module):
    """Identical to GPT's pre-LN block except that attention reads coordinates, which it moves."""

    def __init__(self, config: NGTConfig, mlp_hidden: int):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias)
        self.attn = GravityAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.bias)
        self.mlp = MLP(config.n_embd, mlp_hidden, bias=config.bias, dropout=config.dropout)
        self.coord_next = nn.Linear(config.n_embd, config.n_coord, bias=config.bias)  # W_next
        self.ln_z = LayerNorm(config.n_coord, config.bias)

    def forward(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        mass: torch.Tensor,
        need_weights: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x (B, T, d), z (B, T, C), mass (B, T); ``cache`` this layer's decoding cache
        (extended in place). Returns x, z after the block, u and the weights (or None)."""
        o, u, weights = self.attn(self.ln_1(x), z, mass, need_weights, cache)
        x = x + o
        x = x + self.mlp(self.ln_2(x))
        # z <- LN(z + W_next o): the coordinates move by what attention read
        z = self.ln_z(z + self.coord_next(o))
        return x, z, u, weights

    def decode_constants(self, batch: int, moves_coords: bool = True) -> BlockStep:
        """What :meth:`step` reads from the parameters: the attention's constants and the
        output projection fused with the coordinates' update. o = W_p y + b_p and
        W_next o + b_next = (W_next W_p) y + (W_next b_p + b_next), so one product
        [W_p; W_next W_p] y (d + C rows) gives both o and the coordinates' step.
        ``moves_coords`` False (the last block, whose z no layer reads): W_p alone, and
        :meth:`step` leaves z where it was."""
        proj, nxt = self.attn.c_proj, self.coord_next
        attn, d = self.attn.decode_constants(batch), proj.out_features
        if not moves_coords:
            return BlockStep(attn, proj.weight, proj.bias, d, moves_coords=False)
        weight = torch.cat([proj.weight, nxt.weight @ proj.weight])  # (d + C, H hs)
        bias = None
        if proj.bias is not None or nxt.bias is not None:
            b_proj = proj.weight.new_zeros(proj.out_features) if proj.bias is None else proj.bias
            b_next = F.linear(b_proj, nxt.weight, nxt.bias)
            bias = torch.cat([b_proj, b_next])
        return BlockStep(attn, weight, bias, d, moves_coords=True)

    def step(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        mass: torch.Tensor | None,
        log_mass: torch.Tensor | None,
        cache: KVCache,
        constants: BlockStep,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` for one new position (B, 1, .) after those in ``cache``, in eval
        mode, through :meth:`GravityAttention.step`, without the modules' call overhead.
        After the last block (``constants.moves_coords`` False) z is returned unmoved."""
        attn, weight, bias, d, moves_coords = constants
        y = self.attn.step(layer_norm(self.ln_1, x), z, mass, log_mass, cache, attn)
        if not moves_coords:
            return mlp_step(x + F.linear(y, weight, bias), self.ln_2, self.mlp), z
        # [o, W_next o + b_next], (B, 1, d) and (B, 1, C): one split, two views
        o, dz = F.linear(y, weight, bias).split([d, z.size(-1)], dim=-1)
        return mlp_step(x + o, self.ln_2, self.mlp), layer_norm(self.ln_z, z + dz)


def matched_mlp_hidden(config: NGTConfig) -> int:
    """MLP width that gives NGT the parameter count of the vanilla GPT of the same shape.

    NGT has no query/key projections (2 d^2 per layer fewer) but coordinate
    projections and a mass table; the difference goes into the MLP (2 d per unit per layer).
    """
    d, L = config.n_embd, config.n_layer
    with torch.device("meta"):  # count parameters without allocating them
        gpt = GPT(GPTConfig(**config.shape()))
        probe = NGT(replace(config, mlp_hidden=4 * d))
    deficit = gpt.num_params() - probe.num_params()
    per_unit = L * (2 * d + (1 if config.bias else 0))
    return max(1, 4 * d + round(deficit / per_unit))


# --------------------------------------------------------------------------- model


class NGT(LanguageModel):
    config_class = NGTConfig

    def __init__(self, config: NGTConfig):
        super().__init__(config)
        self.mlp_hidden = config.mlp_hidden or matched_mlp_hidden(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.mass_emb = nn.Embedding(config.vocab_size, 1)  # m = softplus(E_mass[x])
        self.coord_emb = nn.Embedding(config.block_size, config.n_coord)  # z0 = E_coord[pos]
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            [NGTBlock(config, self.mlp_hidden) for _ in range(config.n_layer)]
        )
        self.ln_f = LayerNorm(config.n_embd, config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        init_gpt2_weights(self, config.n_layer)
        nn.init.normal_(self.coord_emb.weight, std=1.0)  # unit-scale, like the LayerNormed z later
        nn.init.zeros_(self.mass_emb.weight)  # every token starts at m = ln 2: no preference

    def masses(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> m (B, T) = softplus(E_mass[x])."""
        return F.softplus(self.mass_emb(idx)).squeeze(-1)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, V); loss (cross-entropy + repulsion when training)."""
        logits, trace = self._run(idx, need_weights=False)
        loss = None
        if targets is not None:
            ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
            loss = ce
            aux = {"ce": ce.detach()}
            if self.config.repulsion > 0:
                rep = self.repulsion(trace)
                aux["repulsion"] = rep.detach()
                if self.training:  # a training regulariser: validation loss stays comparable
                    loss = ce + self.config.repulsion * rep
            self._set_aux(aux, trace["mass"])
        return logits, loss

    def repulsion(self, trace: dict) -> torch.Tensor:
        """The repulsion term of ``repulsion_form`` on a forward pass's trace (a scalar)."""
        cfg = self.config
        if cfg.repulsion_form == "seed":
            return seed_repulsion_energy(trace["z"][-1], trace["mass"], cfg.repulsion_samples)
        energies = [
            repulsion_energy(u, trace["mass"], cfg.repulsion_samples, cfg.repulsion_eps)
            for u in trace["u"]
        ]
        return torch.stack(energies).mean()

    def _set_aux(self, aux: dict[str, torch.Tensor], mass: torch.Tensor) -> None:
        with torch.no_grad():
            aux["gamma_mean"] = torch.stack([b.attn.gamma.mean() for b in self.blocks]).mean()
            aux["radius_mean"] = torch.stack([b.attn.radius for b in self.blocks]).mean()
            aux["mass_mean"] = mass.mean()
            values = torch.stack([v.float() for v in aux.values()]).tolist()  # one sync
        self.last_aux = dict(zip(aux.keys(), values))

    def _run(
        self,
        idx: torch.Tensor,
        need_weights: bool,
        caches: list[KVCache] | None = None,
        start: int = 0,
    ) -> tuple[torch.Tensor, dict]:
        """idx (B, T) at positions start .. start + T - 1 -> logits (B, T, V) and the trace;
        ``caches`` (one per layer) hold positions 0 .. start - 1 and are extended in place."""
        B, T = idx.shape
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}"
            )
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx))  # (B, T, d): no position in the hidden state; it lives in z
        mass = self.masses(idx)  # (B, T)
        z = self.coord_emb(pos).expand(B, T, -1)  # (B, T, C)
        trace = {"mass": mass, "z": [z], "u": [], "attn": []}
        for i, block in enumerate(self.blocks):
            cache = None if caches is None else caches[i]
            x, z, u, weights = block(x, z, mass, need_weights, cache)
            trace["z"].append(z)
            trace["u"].append(u)
            trace["attn"].append(weights)
        return self.lm_head(self.ln_f(x)), trace

    @torch.no_grad()
    def decode_step(
        self, idx: torch.Tensor, state: dict | None = None
    ) -> tuple[torch.Tensor, dict]:
        """Cached step: idx (B, T_new) -> next-token logits (B, V) and the new state.

        The state keeps each layer's :class:`~physllm.nn.KVCache` (what later positions read
        of earlier ones, module docstring; preallocated to ``block_size``, filled in place),
        the next position, the last ``block_size`` tokens, and what a one-token step reads
        from the parameters (:meth:`decode_constants`, made with the state). A step costs one
        token's work per layer: its coordinates, value and scores against the cached keys;
        one token in eval mode goes through :meth:`_step`, the same numbers in fewer ops.

        Per token and layer that is 5 matrix products to GPT's 4 (NGT has no q, k but the
        coordinates' P, and W_next rides on the output projection, :meth:`NGTBlock.
        decode_constants`; its MLP is wider to match GPT's parameters), the coordinate
        LayerNorm (not in the last layer, whose coordinates no layer reads), and for the seed kernel an explicit score row (its d2 product, the score's
        elementwise ops, the cutoff, a softmax and the weighted sum) where GPT's is one fused
        attention call.
        """
        block = self.config.block_size
        history = idx if state is None else torch.cat([state["tokens"], idx], dim=1)
        total = idx.size(1) + (0 if state is None else state["pos"])
        if state is None or total > block:
            # Learned absolute positions (z0 = E_coord[pos]): past the block, re-encode the
            # last block_size tokens from position 0, what uncached sampling does.
            history = history[:, -block:]
            caches = [b.attn.new_cache(idx.size(0), block) for b in self.blocks]
            logits, _ = self._run(history, need_weights=False, caches=caches, start=0)
            # what single-token steps read from the parameters: computed once per state
            derived = Derived(self.decode_constants(idx.size(0)))
        else:
            caches, derived = state["caches"], state["derived"]
            if idx.size(1) == 1 and not self.training:
                logits = self._step(idx, caches, state["pos"], derived)
            else:
                logits, _ = self._run(idx, need_weights=False, caches=caches, start=state["pos"])
        tokens = history[:, -block:]
        state = {"tokens": tokens, "pos": min(total, block), "caches": caches, "derived": derived}
        return logits[:, -1, :], state

    def decode_constants(self, batch: int) -> tuple:
        """What :meth:`_step` reads from the parameters alone: the vocabulary's masses and
        log-masses, (V, H, 1, 1) (the same for every head, so a token's is a query's shape
        at one index), and each block's :meth:`NGTBlock.decode_constants`."""
        vocab = torch.arange(self.config.vocab_size, device=self.wte.weight.device)
        mass = self.masses(vocab).view(-1, 1, 1, 1).expand(-1, self.config.n_head, 1, 1)
        last = len(self.blocks) - 1  # its coordinates' update is read by no layer
        layers = [b.decode_constants(batch, i < last) for i, b in enumerate(self.blocks)]
        return mass, mass.clamp_min(1e-20).log(), layers

    def _step(self, idx: torch.Tensor, caches: list[KVCache], pos: int, derived: Derived):
        """:meth:`_run` for one new token idx (B, 1) at ``pos`` after the cached positions,
        in eval mode: each block's :meth:`NGTBlock.step`. Logits (B, 1, V)."""
        mass_table, log_mass_table, layers = derived.values
        cfg, tokens = self.config, idx.view(-1)
        # what the layers read of the token's mass m_i: m_i (in the values, or the seed's
        # logits), log m_i (the gaussian's logits), or nothing; (B, H, 1, 1)
        in_logits = cfg.mass_in == "logits"
        mass = (
            mass_table[tokens]
            if cfg.mass_in == "values" or (in_logits and cfg.kernel == "seed")
            else None
        )
        log_mass = log_mass_table[tokens] if in_logits and cfg.kernel == "gaussian" else None
        x = self.wte(idx)  # (dropout is off in eval)
        z = self.coord_emb.weight[pos].expand(idx.size(0), 1, -1)  # z0 = E_coord[pos]
        for block, cache, constants in zip(self.blocks, caches, layers):
            x, z = block.step(x, z, mass, log_mass, cache, constants)
        return self.lm_head(layer_norm(self.ln_f, x))

    @torch.no_grad()
    def forward_with_trace(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the analysis plots, for idx (B, T).

        ``z`` (L+1, B, T, C): coordinates entering each layer and leaving the last;
        ``u`` (L, B, H, T, c): per-head coordinates the scores read; ``attn``
        (L, B, H, T, T); ``mass`` (B, T); ``gamma`` (L, H); ``radius`` (L,); ``logits``.
        """
        logits, trace = self._run(idx, need_weights=True)
        return {
            "logits": logits,
            "mass": trace["mass"],
            "z": torch.stack(trace["z"]),
            "u": torch.stack(trace["u"]),
            "attn": torch.stack(trace["attn"]),
            "gamma": torch.stack([b.attn.gamma for b in self.blocks]),
            "radius": torch.stack([b.attn.radius for b in self.blocks]),
        }


__all__ = [
    "NGT",
    "NGTConfig",
    "GravityAttention",
    "augmented_qk",
    "causal_mask",
    "cutoff_term",
    "gaussian_scores",
    "matched_mlp_hidden",
    "pairwise_d2",
    "repulsion_energy",
    "seed_repulsion_energy",
    "seed_scores",
]
