"""The hidden-gated recurrence of :mod:`physllm.context_vector.model`, fused for training.

The readable loop (``ContextLayer._loop``) builds an autograd graph of a dozen
tiny ops per token, and on small widths that bookkeeping, not the arithmetic,
is the training time: every step records its nodes, every backward node
allocates, and each weight receives T separate (B x H) outer-product
gradients. This is the same math as one :class:`torch.autograd.Function`:

* forward: the loop without a graph, each step writing into preallocated
  time-major buffers (B, T) -> (T, B) so step t's slices are contiguous;
* backward: a hand-written loop back through time that carries only what
  depends on the previous step (the gradient of c and of h), writing the
  per-step gradients of the pre-activations into buffers; the weight
  gradients are then a few matmuls over all T * B rows at once.

LayerNorm statistics are recomputed for all steps at once in backward (the same
kernel on the same rows). Dropout (training with ``dropout > 0``) multiplies by
masks drawn for all steps up front: the same distribution as ``nn.Dropout`` per
step, a different order of random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_ln_backward = torch.ops.aten.native_layer_norm_backward
_gelu_backward = torch.ops.aten.gelu_backward


@dataclass(frozen=True)
class CellSpec:
    """What the loop needs besides tensors: the form and the LayerNorms' epsilons."""

    form: str  # "seed" | "fixed"
    depth: int  # seed: Linear+ReLU layers (the first is W_x x + W_c c); fixed: residual blocks
    clamp: float  # seed: the context is clamped to +-clamp
    eps_state: float  # ln_state
    eps_blocks: tuple[float, ...] = ()  # fixed: each block's LayerNorm
    eps_out: float = 1e-5  # fixed: ln_out


def _ln_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_hat, mean and rstd of a LayerNorm over the last dim, for all rows at once."""
    _, mean, rstd = torch.native_layer_norm(x, (x.size(-1),), None, None, eps)
    return (x - mean) * rstd, mean, rstd


class HiddenGatedLoop(torch.autograd.Function):
    """(xw, c0, W_c, W_u, b_u, ln_w, ln_b, *fnn) -> h (B, T, H), last context (B, C).

    ``xw`` (B, T, H) is the input half of the FNN's first Linear (bias included),
    ``W_c`` (H, C) its context half, ``W_u``/``b_u`` the (f, i, delta) Linear and
    ``ln_w``/``ln_b`` the state's LayerNorm. ``fnn``: seed, (W, b) of the Linears
    after the first; fixed, per block (ln_w, ln_b, W1, b1, W2, b2), then ln_out (w, b).
    ``masks``: None, or one dropout mask (T, B, H) per dropout site of the FNN.
    """

    @staticmethod
    def forward(ctx, spec, masks, xw, c0, Wc, Wu, bu, lnw, lnb, *fnn):
        ctx.set_materialize_grads(False)
        ctx.spec, ctx.n_fnn, ctx.has_masks = spec, len(fnn), masks is not None
        ctx.in_dtypes = (xw.dtype, c0.dtype)
        h, c, saved = run_loop(spec, masks, xw, c0, Wc, Wu, bu, lnw, lnb, fnn)
        ctx.save_for_backward(Wc, Wu, lnw, lnb, *fnn, *(masks or ()), *saved)
        return h.transpose(0, 1).contiguous(), c.clone()

    @staticmethod
    def backward(ctx, dh, dc):
        spec, saved = ctx.spec, list(ctx.saved_tensors)
        Wc, Wu, lnw, lnb = saved[:4]
        fnn, rest = saved[4 : 4 + ctx.n_fnn], saved[4 + ctx.n_fnn :]
        masks, acts = (rest[: spec.depth], rest[spec.depth :]) if ctx.has_masks else (None, rest)
        with torch.autocast(Wc.device.type, enabled=False):
            grads = _backward(spec, masks, Wc, Wu, lnw, lnb, fnn, acts, dh, dc)
        grads[0] = grads[0].to(ctx.in_dtypes[0])  # xw
        grads[1] = grads[1].to(ctx.in_dtypes[1])  # c0
        return (None, None, *grads)


def run_loop(spec, masks, xw, c0, Wc, Wu, bu, lnw, lnb, fnn):
    """The forward loop without autograd: h (T, B, H), the last context (B, C) and the
    tensors :func:`_backward` reads."""
    with torch.no_grad(), torch.autocast(xw.device.type, enabled=False):
        dtype = Wc.dtype
        xw, c = xw.to(dtype), c0.to(dtype)
        B, T, H = xw.shape
        C = c.size(1)
        new = dict(device=xw.device, dtype=dtype)
        cell = (SeedCell if spec.form == "seed" else FixedCell)(spec, fnn, masks)
        cell.start(T, B, H, new)
        xws = xw.transpose(0, 1).unbind(0)  # (B, H) views, one per t
        WcT, WuT = Wc.t(), Wu.t()
        G = torch.empty(T, B, 3 * C, **new)  # W_u h + b_u: (f, i, delta) before activation
        FI = torch.empty(T, B, 2 * C, **new)  # sigmoid: f and i
        D = G[..., 2 * C :] if spec.form == "seed" else torch.empty(T, B, C, **new)  # delta
        S = torch.empty(T, B, C, **new)  # f * c + i * delta, before the LayerNorm
        Cs = torch.empty(T + 1, B, C, **new)  # c_{-1} = c0, c_0, ..., c_{T-1}
        Cs[0] = c
        Gs, FIs, Ds, Ss, Css = (x.unbind(0) for x in (G, FI, D, S, Cs))
        fi_pre, d_pre = G[..., : 2 * C].unbind(0), G[..., 2 * C :].unbind(0)
        fs, is_ = FI[..., :C].unbind(0), FI[..., C:].unbind(0)
        for t in range(T):
            h = cell.step(t, xws[t], c, WcT)  # h_t = FNN([x_t, c_{t-1}])
            torch.addmm(bu, h, WuT, out=Gs[t])
            torch.sigmoid(fi_pre[t], out=FIs[t])
            if spec.form == "fixed":
                torch.tanh(d_pre[t], out=Ds[t])
            s = torch.mul(fs[t], c, out=Ss[t]).addcmul_(is_[t], Ds[t])  # f * c + i * delta
            n = torch.native_layer_norm(s, (C,), lnw, lnb, spec.eps_state)[0]
            if spec.form == "seed":
                c = torch.clamp(n, -spec.clamp, spec.clamp, out=Css[t + 1])
            else:
                c = Css[t + 1].copy_(n)
        h_all = cell.outputs()
        return h_all, c, (G, FI, D, S, Cs, h_all, *cell.saved())


def _backward(spec, masks, Wc, Wu, lnw, lnb, fnn, acts, dh, dc) -> list:
    """Gradients of (xw, c0, W_c, W_u, b_u, ln_w, ln_b, *fnn) from dh (B, T, H), dc (B, C)."""
    G, FI, D, S, Cs, h_all = acts[:6]
    T, B, C = S.shape
    H = Wc.size(0)
    new = dict(device=S.device, dtype=S.dtype)
    cell = (SeedCell if spec.form == "seed" else FixedCell)(spec, fnn, masks)
    cell.start_back(acts[6:], T, B, H, new)
    dH = torch.zeros(T, B, H, **new) if dh is None else dh.to(S.dtype).transpose(0, 1)
    dc = torch.zeros(B, C, **new) if dc is None else dc.to(S.dtype)
    f, i, Cprev = FI[..., :C], FI[..., C:], Cs[:-1]
    # dL/d(f, i, delta before their activations) = K * dL/ds, K stacked on dim 2
    i_d = i if spec.form == "seed" else i * (1 - D * D)  # tanh' = 1 - tanh^2
    K = torch.stack([Cprev * f * (1 - f), D * i * (1 - i), i_d], dim=2)  # (T, B, 3, C)
    xhat, mean, rstd = _ln_stats(S, spec.eps_state)
    keep = None
    if spec.form == "seed":  # the clamp passes the gradient where it did not bite
        n = xhat * lnw + lnb
        keep = ((n >= -spec.clamp) & (n <= spec.clamp)).to(S.dtype).unbind(0)
    dG = torch.empty(T, B, 3, C, **new)
    dN = torch.empty(T, B, C, **new)  # dL/d(LayerNorm output)
    dGs, dG2s, dNs = dG.unbind(0), dG.view(T, B, 3 * C).unbind(0), dN.unbind(0)
    Ks, fs, Ss, dHs = K.unbind(0), f.unbind(0), S.unbind(0), dH.unbind(0)
    means, rstds = mean.unbind(0), rstd.unbind(0)
    for t in range(T - 1, -1, -1):
        dn = dNs[t].copy_(dc) if keep is None else torch.mul(dc, keep[t], out=dNs[t])
        ds = _ln_backward(dn, Ss[t], (C,), means[t], rstds[t], lnw, lnb, _INPUT_ONLY)[0]
        torch.mul(Ks[t], ds.unsqueeze(1), out=dGs[t])
        dh_t = torch.addmm(dHs[t], dG2s[t], Wu)  # dL/dh_t: from the output and the gates
        du = cell.step_back(t, dh_t)  # dL/du_t, u_t = W_x x_t + b + W_c c_{t-1}
        dc = torch.addmm(ds * fs[t], du, Wc)  # through f * c_{t-1} and W_c c_{t-1}
    dU, fnn_grads = cell.grads()
    dG3 = dG.view(T, B, 3 * C)
    return [
        dU.transpose(0, 1),  # xw
        dc,  # c0
        _flat(dU).t() @ _flat(Cprev),  # W_c
        _flat(dG3).t() @ _flat(h_all),  # W_u
        dG3.sum((0, 1)),  # b_u
        (dN * xhat).sum((0, 1)),  # ln_state weight
        dN.sum((0, 1)),  # ln_state bias
        *fnn_grads,
    ]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.size(-1))


_INPUT_ONLY = [True, False, False]  # native_layer_norm_backward: no weight/bias gradients


class SeedCell:
    """The seed's FNN in the loop: h = ReLU(W_k ... ReLU(u)), u = W_x x + b + W_c c,
    ``depth`` Linear+ReLU layers, each followed by dropout."""

    def __init__(self, spec: CellSpec, fnn, masks):
        self.depth, self.masks = spec.depth, masks
        self.Ws = [fnn[2 * k] for k in range(spec.depth - 1)]
        self.bs = [fnn[2 * k + 1] for k in range(spec.depth - 1)]

    def start(self, T, B, H, new) -> None:
        self.A = torch.empty(self.depth, T, B, H, **new)  # each layer's output; the last is h
        self.As = [a.unbind(0) for a in self.A.unbind(0)]
        self.ms = [m.unbind(0) for m in self.masks] if self.masks is not None else None
        self.WTs = [W.t() for W in self.Ws]

    def step(self, t, xw_t, c, WcT) -> torch.Tensor:
        a = torch.addmm(xw_t, c, WcT, out=self.As[0][t]).relu_()
        if self.ms is not None:
            a.mul_(self.ms[0][t])
        for k, (WT, b) in enumerate(zip(self.WTs, self.bs), start=1):
            a = torch.addmm(b, a, WT, out=self.As[k][t]).relu_()
            if self.ms is not None:
                a.mul_(self.ms[k][t])
        return a

    def outputs(self) -> torch.Tensor:
        return self.A[-1]

    def saved(self) -> tuple:
        return (self.A,)

    def start_back(self, saved, T, B, H, new) -> None:
        (self.A,) = saved
        # ReLU and dropout pass the gradient where the output is nonzero, times the mask
        R = (self.A > 0).to(self.A.dtype)
        if self.masks is not None:
            R = R * torch.stack(list(self.masks))
        self.Rs = [r.unbind(0) for r in R.unbind(0)]
        self.dA = torch.empty(self.depth, T, B, H, **new)  # dL/d(each Linear's output)
        self.dAs = [a.unbind(0) for a in self.dA.unbind(0)]

    def step_back(self, t, dh) -> torch.Tensor:
        for k in range(self.depth - 1, 0, -1):
            dh = torch.mul(dh, self.Rs[k][t], out=self.dAs[k][t]) @ self.Ws[k - 1]
        return torch.mul(dh, self.Rs[0][t], out=self.dAs[0][t])

    def grads(self) -> tuple[torch.Tensor, list]:
        dA, A = self.dA, self.A
        out = []
        for k in range(1, self.depth):
            out += [_flat(dA[k]).t() @ _flat(A[k - 1]), dA[k].sum((0, 1))]
        return dA[0], out


class FixedCell:
    """The fixed form's FNN in the loop: h = u, then h + dropout(W2 GELU(W1 LN(h) + b1) + b2)
    per block, then LN_out(h)."""

    def __init__(self, spec: CellSpec, fnn, masks):
        self.spec, self.masks = spec, masks
        self.blocks = [fnn[6 * j : 6 * j + 6] for j in range(spec.depth)]
        self.ow, self.ob = fnn[-2], fnn[-1]

    def start(self, T, B, H, new) -> None:
        depth = self.spec.depth
        self.Hin = torch.empty(depth + 1, T, B, H, **new)  # block inputs; the last: LN_out's
        self.P = torch.empty(depth, T, B, H, **new)  # W1 LN(h) + b1, before the GELU
        self.Hins = [a.unbind(0) for a in self.Hin.unbind(0)]
        self.Ps = [a.unbind(0) for a in self.P.unbind(0)]
        self.ms = [m.unbind(0) for m in self.masks] if self.masks is not None else None
        self.blocksT = [(lw, lb, W1.t(), b1, W2.t(), b2) for lw, lb, W1, b1, W2, b2 in self.blocks]
        self.hs = []

    def step(self, t, xw_t, c, WcT) -> torch.Tensor:
        H, eps = xw_t.size(-1), self.spec.eps_blocks
        h = torch.addmm(xw_t, c, WcT, out=self.Hins[0][t])
        for j, (lw, lb, W1T, b1, W2T, b2) in enumerate(self.blocksT):
            z = torch.native_layer_norm(h, (H,), lw, lb, eps[j])[0]
            m = F.gelu(torch.addmm(b1, z, W1T, out=self.Ps[j][t]))
            o = torch.addmm(b2, m, W2T)
            if self.ms is not None:
                o.mul_(self.ms[j][t])
            h = torch.add(h, o, out=self.Hins[j + 1][t])  # the residual
        h = torch.native_layer_norm(h, (H,), self.ow, self.ob, self.spec.eps_out)[0]
        self.hs.append(h)
        return h

    def outputs(self) -> torch.Tensor:
        return torch.stack(self.hs)

    def saved(self) -> tuple:
        return (self.Hin, self.P)

    def start_back(self, saved, T, B, H, new) -> None:
        self.Hin, self.P = saved
        depth, spec = self.spec.depth, self.spec
        self.out_stats = _ln_stats(self.Hin[-1], spec.eps_out)
        self.stats = [_ln_stats(self.Hin[j], spec.eps_blocks[j]) for j in range(depth)]
        ones = torch.ones_like(self.P[0])
        # per block, per step: (LN input, mean, rstd, GELU' of the pre-activation, mask)
        self.per_step = [
            list(
                zip(
                    self.Hin[j].unbind(0),
                    self.stats[j][1].unbind(0),
                    self.stats[j][2].unbind(0),
                    _gelu_backward(ones, self.P[j]).unbind(0),  # GELU', all steps at once
                    self.masks[j].unbind(0) if self.masks is not None else [None] * T,
                    strict=True,
                )
            )
            for j in range(depth)
        ]
        _, m_o, r_o = self.out_stats
        self.out_steps = list(zip(self.Hin[-1].unbind(0), m_o.unbind(0), r_o.unbind(0)))
        # per-step gradients, appended backwards in time
        self.dU, self.dHout = [], []
        self.dO, self.dP, self.dZ = ([[] for _ in range(depth)] for _ in range(3))

    def step_back(self, t, dh) -> torch.Tensor:
        H = dh.size(-1)
        self.dHout.append(dh)
        h_in, m_o, r_o = self.out_steps[t]
        dh = _ln_backward(dh, h_in, (H,), m_o, r_o, self.ow, self.ob, _INPUT_ONLY)[0]
        for j in range(self.spec.depth - 1, -1, -1):
            lw, lb, W1, _, W2, _ = self.blocks[j]
            h_in, m_j, r_j, gelu_grad, mask = self.per_step[j][t]
            do = dh if mask is None else dh * mask
            dp = (do @ W2).mul_(gelu_grad)
            dz = dp @ W1
            self.dO[j].append(do)
            self.dP[j].append(dp)
            self.dZ[j].append(dz)
            dh = _ln_backward(dz, h_in, (H,), m_j, r_j, lw, lb, _INPUT_ONLY)[0].add_(dh)
        self.dU.append(dh)
        return dh

    def grads(self) -> tuple[torch.Tensor, list]:
        def in_time(xs):
            return torch.stack(xs[::-1])

        out = []
        for j, (lw, lb, *_) in enumerate(self.blocks):
            dO, dP, dZ = in_time(self.dO[j]), in_time(self.dP[j]), in_time(self.dZ[j])
            zhat = self.stats[j][0]
            out += [
                (dZ * zhat).sum((0, 1)),  # LN weight
                dZ.sum((0, 1)),  # LN bias
                _flat(dP).t() @ _flat(zhat * lw + lb),  # W1
                dP.sum((0, 1)),  # b1
                _flat(dO).t() @ _flat(F.gelu(self.P[j])),  # W2
                dO.sum((0, 1)),  # b2
            ]
        dHout = in_time(self.dHout)
        out += [(dHout * self.out_stats[0]).sum((0, 1)), dHout.sum((0, 1))]
        return in_time(self.dU), out
