"""New-LLM: a language model with no attention, only a context vector carried token to token.

Per token t, each layer reads its input x_t (the token embedding for the first
layer) and the context c_{t-1} left by the previous token, and writes c_t:

    h_t   = FNN([x_t, c_{t-1}])            the hidden state; logits_t = W_o h_t
    f_t   = sigmoid(W_f h_t)               forget gate: how much of c_{t-1} to keep
    i_t   = sigmoid(W_i h_t)               input gate: how much of the new delta to add
    d_t   = tanh(W_c h_t)                  the proposed change, bounded in [-1, 1]
    c_t   = LayerNorm(f_t * c_{t-1} + i_t * d_t)

There are no positions: the order of the tokens lives only in the order of the
updates. The state is one vector per layer, so streaming a text costs the same
memory and time per token whatever its length (against attention's growing
key/value cache), and what is lost is exactly that: the past is squeezed into
``n_context`` numbers, with no way to look a token up again.

Two forms (``form``):

* ``"seed"``: what the seed's code did. The FNN is Linear+ReLU layers without
  residuals or normalisation, the delta has no tanh, the LayerNorm'ed context
  is clamped to +-10, and the embedding (std 0.02) is concatenated raw with a
  context of unit scale, so the context drowns the token at init.
* ``"fixed"`` (default): the token embedding is LayerNorm'ed before it meets
  the context, the FNN is residual GELU blocks with a final LayerNorm, the
  delta is tanh-bounded (as the seed's docs say) and the forget gate starts
  open (bias +1, the LSTM habit) so gradients reach further back.

Two gatings (``gates``):

* ``"hidden"`` (default, the seed's): gates and delta read h_t, which reads
  c_{t-1}: the recurrence is nonlinear and runs as a loop over time (in
  training, one autograd Function over the whole loop, with its backward
  written out: :mod:`physllm.context_vector.fused`).
* ``"input"``: gates and delta read only the layer's input x_t. Then

      c_t = f_t * c_{t-1} + i_t * d_t

  is *linear* in c, and all T states come from a parallel associative scan
  (log2 T vectorised steps, no loop over tokens). A LayerNorm on c_t would
  break the linearity, so this variant carries the raw state (bounded anyway:
  |c_t| <= max|d| / (1 - max f) elementwise) and normalises the *readout*:
  h_t = FNN([x_t, LayerNorm(c_{t-1})]).

Training (``carry_state``): with ``carry_state=True`` (the presets' choice,
as the seed describes) :func:`physllm.training.train` reads the corpus as
``batch_size`` parallel streams of consecutive blocks and hands each row's
context from one block to the next, detached: truncated backpropagation
through time. The gradient reaches back at most one block, but the forward
pass sees the whole stream, as generation does; validation is read the same
way. With ``carry_state=False`` training takes nanoGPT's random windows, each
from a zero context. Generation always carries the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from physllm.arch import LanguageModel, ModelConfig
from physllm.context_vector.fused import CellSpec, HiddenGatedLoop
from physllm.validation import FRACTION, POSITIVE, POSITIVE_FLOAT, one_of, require

State = list[torch.Tensor]  # one context vector (B, n_context) per layer


@dataclass
class ContextVectorConfig(ModelConfig):
    block_size: int = 256  # training window only: the model itself has no positions
    n_embd: int = 128  # token embedding width (seed: 256)
    n_hidden: int = 256  # FNN width (seed: 512)
    n_context: int = 128  # context vector size (seed: 256)
    n_layer: int = 1  # stacked context layers, each with its own state (seed: 1)
    ffn_depth: int = 1  # Linear layers (seed) or residual blocks (fixed) in each FNN
    dropout: float = 0.0  # (seed: 0.1)
    form: str = "fixed"  # "fixed" | "seed" (the seed's code, see the module docstring)
    gates: str = "hidden"  # "hidden": gates read h (loop) | "input": gates read x (parallel scan)
    clamp: float = 10.0  # the seed form clamps the context to +-clamp
    forget_bias: float = 1.0  # fixed form: forget gates start at sigmoid(1) = 0.73
    carry_state: bool = False  # train on consecutive blocks, state handed on (truncated BPTT)

    # no heads and no bias: not a TransformerShape, so its shape-like fields carry their own rules
    field_rules = {
        "n_embd": POSITIVE,
        "n_layer": POSITIVE,
        "dropout": FRACTION,
        "n_hidden": POSITIVE,
        "n_context": POSITIVE,
        "ffn_depth": POSITIVE,
        "form": one_of("fixed", "seed"),
        "gates": one_of("hidden", "input"),
        "clamp": POSITIVE_FLOAT,
    }

    def check(self) -> None:
        require(
            not (self.gates == "input" and self.form == "seed"),
            "--gates input is a variant of the fixed form (--form fixed)",
        )


# --------------------------------------------------------------------------- the scan


SCAN_CHUNK = 64  # positions per chunk of the chunked scan (measured best of 32-256 on CPU)


def linear_scan(a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """All states of c_t = a_t * c_{t-1} + b_t, with c_{-1} = c0: a, b (B, T, C); c0 (B, C)
    -> c (B, T, C). Up to 8 chunks' length, :func:`hillis_steele_scan` over all T; beyond,
    :func:`chunked_scan` (its log2 T rounds each sweep all T: T log T work, and the passes
    over memory grow with it)."""
    if a.size(1) < 8 * SCAN_CHUNK:
        return hillis_steele_scan(a, b, c0)
    return chunked_scan(a, b, c0, SCAN_CHUNK)


def chunked_scan(a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor, chunk: int) -> torch.Tensor:
    """:func:`linear_scan` chunk by chunk: within each chunk of K positions in parallel,
    across chunks by the carried state. Unrolling the recurrence inside chunk j,

        c_t = s_t + P_t * c_in,   s = the chunk's scan from a zero state,
                                  P_t = a_{first} * ... * a_t (cumulative product),

    with c_in the last state of chunk j - 1. All chunks' s and P come at once (the chunks
    as a batch), then T / K fused multiply-adds carry the state: T log K work instead of
    T log T. Products of gates may underflow to 0 over a chunk, which is then their true
    value to float precision; nothing is divided by them."""
    B, T, C = a.shape
    pad = (-T) % chunk  # a = 1, b = 0 past the end: the state passes through unchanged
    a = F.pad(a, (0, 0, 0, pad), value=1.0).view(B, -1, chunk, C)  # (B, n, K, C)
    b = F.pad(b, (0, 0, 0, pad)).view(B, -1, chunk, C)
    n = a.size(1)
    flat = (B * n, chunk, C)
    s = hillis_steele_scan(a.reshape(flat), b.reshape(flat), a.new_zeros(B * n, C))
    s, P = s.view(B, n, chunk, C), torch.cumprod(a, dim=2)
    carry, chunks = c0, []
    for j in range(n):
        chunks.append(torch.addcmul(s[:, j], P[:, j], carry.unsqueeze(1)))  # s + P * c_in
        carry = chunks[-1][:, -1]
    return torch.stack(chunks, dim=1).view(B, n * chunk, C)[:, :T]


def hillis_steele_scan(a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """All states of c_t = a_t * c_{t-1} + b_t, with c_{-1} = c0, by a parallel scan.

    a, b (B, T, C); c0 (B, C) -> c (B, T, C). Two steps compose into one,

        (a1, b1) then (a2, b2)  =  (a2 * a1, a2 * b1 + b2),

    an associative operation, so Hillis-Steele's scan gets every prefix in
    ceil(log2 T) rounds, each a vectorised op over all T: round k combines
    each position with the one 2^k before it. No division by a product of
    gates (which underflows on long texts), so it is stable at any length.
    """
    # Fold the initial state into the first step: c_0 = a_0 * c0 + b_0.
    b = torch.cat([b[:, :1] + a[:, :1] * c0.unsqueeze(1), b[:, 1:]], dim=1)
    T, shift = a.size(1), 1
    while shift < T:
        # position t absorbs the composed steps ending at t - shift
        b = torch.cat([b[:, :shift], a[:, shift:] * b[:, :-shift] + b[:, shift:]], dim=1)
        a = torch.cat([a[:, :shift], a[:, shift:] * a[:, :-shift]], dim=1)
        shift *= 2
    return b


class LinearScan(torch.autograd.Function):
    """:func:`linear_scan` with the gradient of the recurrence written out.

    The gradient of a linear recurrence is the same recurrence run backwards in
    time: with g_t = dL/dc_t from outside,

        G_t = g_t + a_{t+1} G_{t+1}     (G = dL/dc_t in total; G_T = 0 beyond the end)
        dL/db_t = G_t,   dL/da_t = G_t * c_{t-1},   dL/dc0 = a_0 * G_0

    so backward is one more scan, and only ``a`` and the states are kept.
    Autograd through :func:`linear_scan` instead keeps every round's tensors,
    (B, T, C) each, and fills a full-size zero gradient for every slice it took.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        c = linear_scan(a, b, c0)
        ctx.save_for_backward(a, c, c0)
        return c

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, c, c0 = ctx.saved_tensors
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1)  # a_{t+1}
        G = linear_scan(a_next.flip(1), g.flip(1), torch.zeros_like(c0)).flip(1)
        c_prev = torch.cat([c0.unsqueeze(1), c[:, :-1]], dim=1)
        return G * c_prev, G, a[:, 0] * G[:, 0]


def sequential_scan(a: torch.Tensor, b: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """The same recurrence as :func:`linear_scan`, one step at a time (the reference)."""
    c, out = c0, []
    for t in range(a.size(1)):
        c = a[:, t] * c + b[:, t]
        out.append(c)
    return torch.stack(out, dim=1)


# --------------------------------------------------------------------------- parts


class FNN(nn.Module):
    """h = FNN([x, c]); the first Linear is split so its x half runs for all t at once.

    ``W [x; c] + b = W_x x + W_c c + b``: the loop over time only has to do the
    W_c c half. Seed: ``ffn_depth`` Linear+ReLU(+dropout) layers. Fixed: one
    Linear on [LN(x), c], then ``ffn_depth`` residual GELU blocks and a final LayerNorm.
    """

    def __init__(self, d_in: int, d_ctx: int, cfg: ContextVectorConfig):
        super().__init__()
        self.d_in, self.form = d_in, cfg.form
        H = cfg.n_hidden
        self.inp = nn.Linear(d_in + d_ctx, H)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.form == "seed":
            self.rest = nn.ModuleList([nn.Linear(H, H) for _ in range(cfg.ffn_depth - 1)])
        else:
            self.ln_x = nn.LayerNorm(d_in)
            self.blocks = nn.ModuleList(
                [
                    nn.Sequential(nn.LayerNorm(H), nn.Linear(H, H), nn.GELU(), nn.Linear(H, H))
                    for _ in range(cfg.ffn_depth)
                ]
            )
            self.ln_out = nn.LayerNorm(H)

    def input_part(self, x: torch.Tensor) -> torch.Tensor:
        """W_x x + b for every position: x (B, T, d_in) -> (B, T, H)."""
        if self.form == "fixed":
            x = self.ln_x(x)
        return F.linear(x, self.inp.weight[:, : self.d_in], self.inp.bias)

    def finish(self, xw: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """h from the precomputed input part xw (..., H) and the context c (..., C)."""
        u = xw + F.linear(c, self.inp.weight[:, self.d_in :])  # = W [x; c] + b
        if self.form == "seed":
            h = self.drop(F.relu(u))
            for layer in self.rest:
                h = self.drop(F.relu(layer(h)))
            return h
        h = u
        for block in self.blocks:
            h = h + self.drop(block(h))  # residual: h + MLP(LN(h))
        return self.ln_out(h)


class ContextLayer(nn.Module):
    """One recurrent layer: reads x (B, T, d_in) and its state c (B, C); returns h (B, T, H)."""

    def __init__(self, d_in: int, cfg: ContextVectorConfig):
        super().__init__()
        C = cfg.n_context
        self.cfg = cfg
        self.fnn = FNN(d_in, C, cfg)
        # f, i and delta in one Linear (the seed's three Linears stacked).
        d_gate = d_in if cfg.gates == "input" else cfg.n_hidden
        self.update = nn.Linear(d_gate, 3 * C)
        if cfg.gates == "input":
            self.ln_gate = nn.LayerNorm(d_in)
            self.ln_read = nn.LayerNorm(C)  # normalise the readout, not the carried state
        else:
            self.ln_state = nn.LayerNorm(C)

    def gates(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(f, i, delta) from the gate input's projection (..., 3C)."""
        f, i, d = self.update(g).chunk(3, dim=-1)
        # f = sigmoid(W_f g), i = sigmoid(W_i g), delta = tanh(W_c g) (seed: no tanh)
        d = d if self.cfg.form == "seed" else torch.tanh(d)
        return torch.sigmoid(f), torch.sigmoid(i), d

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, trace: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d_in), c (B, C) -> h (B, T, H), last state (B, C).

        ``trace``, if a dict, receives the states after every token and the gates (B, T, C).
        """
        if self.cfg.gates == "input":
            return self._scan(x, c, trace)
        if trace is not None:
            return self._loop(x, c, trace)
        return self._fused(x, c)

    def _loop(self, x, c, trace):
        xw = self.fnn.input_part(x)  # (B, T, H): the x half of the first Linear, all t at once
        hs, cs, fs, is_ = [], [], [], []
        for t in range(x.size(1)):
            h = self.fnn.finish(xw[:, t], c)  # h_t = FNN([x_t, c_{t-1}])  (B, H)
            f, i, d = self.gates(h)
            # c_t = LayerNorm(f * c_{t-1} + i * delta)
            c = self.ln_state(f * c + i * d)
            if self.cfg.form == "seed":
                c = c.clamp(-self.cfg.clamp, self.cfg.clamp)
            hs.append(h)
            cs.append(c)
            if trace is not None:
                fs.append(f)
                is_.append(i)
        if trace is not None:
            trace.update(
                context=torch.stack(cs, 1), forget=torch.stack(fs, 1), input=torch.stack(is_, 1)
            )
        return torch.stack(hs, dim=1), c

    def _fused(self, x, c):
        """:meth:`_loop`'s math as one autograd Function (:mod:`.fused`): no per-token graph,
        weight gradients batched over all tokens. The same outputs and gradients."""
        fnn, cfg = self.fnn, self.cfg
        if cfg.form == "seed":
            params = [t for layer in fnn.rest for t in (layer.weight, layer.bias)]
            spec = CellSpec("seed", cfg.ffn_depth, cfg.clamp, self.ln_state.eps)
        else:
            params = [
                t
                for ln, fc, _, proj in fnn.blocks
                for t in (ln.weight, ln.bias, fc.weight, fc.bias, proj.weight, proj.bias)
            ]
            params += [fnn.ln_out.weight, fnn.ln_out.bias]
            eps = tuple(block[0].eps for block in fnn.blocks)
            spec = CellSpec(
                "fixed", cfg.ffn_depth, cfg.clamp, self.ln_state.eps, eps, fnn.ln_out.eps
            )
        masks = None
        if self.training and cfg.dropout > 0:  # one mask per dropout site, all steps at once
            B, T = x.shape[:2]
            keep = 1.0 - cfg.dropout
            masks = [
                torch.empty(T, B, cfg.n_hidden, device=x.device, dtype=self.update.weight.dtype)
                .bernoulli_(keep)
                .div_(keep)
                for _ in range(cfg.ffn_depth)
            ]
        xw = fnn.input_part(x)  # (B, T, H): the x half of the first Linear, all t at once
        Wc = fnn.inp.weight[:, fnn.d_in :]
        u = self.update
        s = self.ln_state
        return HiddenGatedLoop.apply(
            spec, masks, xw, c, Wc, u.weight, u.bias, s.weight, s.bias, *params
        )

    def _scan(self, x, c, trace):
        f, i, d = self.gates(self.ln_gate(x))  # (B, T, C) each, from the input alone
        # c_t = f_t * c_{t-1} + i_t * delta_t for all t at once
        cs = LinearScan.apply(f, i * d, c)  # (B, T, C), by linear_scan
        prev = torch.cat([c.unsqueeze(1), cs[:, :-1]], dim=1)  # c_{t-1}  (B, T, C)
        h = self.fnn.finish(self.fnn.input_part(x), self.ln_read(prev))  # (B, T, H)
        if trace is not None:
            trace.update(context=cs, forget=f, input=i)
        return h, cs[:, -1]


# --------------------------------------------------------------------------- the model


class ContextVectorModel(LanguageModel):
    config_class = ContextVectorConfig

    def __init__(self, config: ContextVectorConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        widths = [config.n_embd] + [config.n_hidden] * (config.n_layer - 1)
        self.layers = nn.ModuleList([ContextLayer(d, config) for d in widths])
        self.lm_head = nn.Linear(config.n_hidden, config.vocab_size)  # logits = W_o h
        self.init_weights()

    def init_weights(self) -> None:
        """N(0, 0.02) weights and zero biases (the seed's init); fixed form: open forget gates."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.config.form == "fixed":
            C = self.config.n_context
            for layer in self.layers:
                nn.init.constant_(layer.update.bias[:C], self.config.forget_bias)

    def initial_state(self, batch_size: int, device=None) -> State:
        """Zero context for every layer (the first token has no past)."""
        return [torch.zeros(batch_size, self.config.n_context, device=device) for _ in self.layers]

    def run(
        self, idx: torch.Tensor, state: State | None = None, trace: list | None = None
    ) -> tuple[torch.Tensor, State]:
        """idx (B, T) from ``state`` (None: zeros) -> logits (B, T, V), the state after the last token."""
        if state is None:
            state = self.initial_state(idx.size(0), idx.device)
        x = self.drop(self.wte(idx))  # (B, T, n_embd); no positions
        new_state = []
        for layer, c in zip(self.layers, state):
            layer_trace = {} if trace is not None else None
            x, c = layer(x, c, layer_trace)  # (B, T, n_hidden)
            new_state.append(c)
            if trace is not None:
                trace.append(layer_trace)
        return self.lm_head(x), new_state

    def carries_state(self) -> bool:
        return self.config.carry_state

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        state: State | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, V) from ``state`` (None: zeros); loss if targets (B, T).

        The state after the last token is left, detached, in ``self.last_state``:
        the next block starts from it without backpropagating into this one.
        """
        logits, new_state = self.run(idx, state)
        self.last_state = [c.detach() for c in new_state]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def trace(self, idx: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per layer: the context after each token and the forget/input gates, (B, T, C) each."""
        out: list = []
        self.run(idx, trace=out)
        return out

    @torch.no_grad()
    def decode_step(
        self, idx: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """Feed tokens idx (B, T_new) from ``state``: next-token logits (B, V) and the new state.

        The state is n_layer vectors of n_context numbers whatever has been read:
        each new token costs the same time and memory.
        """
        logits, state = self.run(idx, state)
        return logits[:, -1, :], state
