"""Figures for the Hamiltonian model (notebook 01): energy along the layers, energy
drift against dt, phase-space trajectories, the learned local decay, and the
measured steering curve. Each function takes numbers already computed (by
:mod:`physllm.hamiltonian.integrators`, the model or :mod:`physllm.hamiltonian.steering`) and returns a
matplotlib figure."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from physllm.hamiltonian.integrators import loglog_slope


def relative_layer_energy_change(energies: dict[str, torch.Tensor]) -> torch.Tensor:
    """|H_out - H_in| / |H_in| per layer and token, (L, B * T), from
    :meth:`HamiltonianLM.layer_energies`: what an exact flow of each layer's H keeps at 0."""
    H_in, H_out = energies["H_in"], energies["H_out"]
    return ((H_out - H_in).abs() / H_in.abs().clamp_min(1e-12)).flatten(1)


def layer_energy_error(energies: dict[str, torch.Tensor]) -> list[float]:
    """The median over tokens of :func:`relative_layer_energy_change`, one number per layer."""
    return [float(r.median()) for r in relative_layer_energy_change(energies)]


def plot_layer_energies(energies: dict[str, torch.Tensor]):
    """Per layer: mean kinetic, potential and H before/after the step, and the relative
    change of each layer's own H (what a perfect integrator would keep at 0)."""
    H_in, H_out = energies["H_in"], energies["H_out"]  # (L, B, T)
    L = H_in.size(0)
    layers = range(1, L + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    ax.plot(layers, energies["kinetic"].mean((1, 2)), "o-", label="kinetic |p|^2/2m (in)")
    ax.plot(layers, energies["V_in"].mean((1, 2)), "s-", label="potential V_l(q) (in)")
    ax.plot(layers, H_in.mean((1, 2)), "^-", label="H_l before the step")
    ax.plot(layers, H_out.mean((1, 2)), "v--", label="H_l after the step")
    ax.set(xlabel="layer", ylabel="mean energy per token", title="energy along the layers")
    ax.legend(fontsize=8)
    rel = relative_layer_energy_change(energies)
    ax = axes[1]
    ax.boxplot([r.numpy() for r in rel], positions=list(layers))
    ax.set_yscale("log")
    ax.set(
        xlabel="layer",
        ylabel="|H_out - H_in| / |H_in| per token",
        title="each layer's energy error (leapfrog, learned dt)",
    )
    fig.tight_layout()
    return fig


def plot_energy_drift(dts: Sequence[float], drift: dict[str, list[float]], title: str = ""):
    """Max relative energy error against dt on log-log axes, with fitted slopes."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, errs in drift.items():
        slope = loglog_slope(dts, errs)
        ax.loglog(dts, errs, "o-", label=f"{method} (slope {slope:.2f})")
    ref = drift[next(iter(drift))]
    for k, style in ((1, ":"), (2, "--")):
        scale = ref[-1] / dts[-1] ** k
        ax.loglog(dts, [scale * d**k for d in dts], style, c="gray", lw=1, label=f"dt^{k}")
    ax.set(xlabel="dt", ylabel="max relative energy error", title=title or "energy drift vs dt")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_energy_history(errors: dict[str, torch.Tensor], dt: float, title: str = ""):
    """Relative energy error along a long integration, one line per method."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for method, err in errors.items():
        ax.semilogy(torch.arange(len(err)) * dt, err.clamp_min(1e-16), label=method)
    ax.set(xlabel="time", ylabel="relative energy error", title=title or f"dt = {dt}")
    ax.legend()
    fig.tight_layout()
    return fig


def phase_projection(qs: Sequence[torch.Tensor], ps: Sequence[torch.Tensor], dims: int = 2):
    """Project per-layer states (each (T, C)) onto the top principal directions of all q.

    Returns q_proj, p_proj of shape (L + 1, T, dims): the same axes for q and p, so
    (q_k, p_k) is a genuine phase-plane slice along direction k.
    """
    Q = torch.stack([q.detach().float() for q in qs])  # (L+1, T, C)
    P = torch.stack([p.detach().float() for p in ps])
    flat = Q.flatten(0, 1)
    _, _, V = torch.pca_lowrank(flat - flat.mean(0), q=dims, center=False)
    return Q @ V, P @ V


def plot_phase_space(
    qs: Sequence[torch.Tensor], ps: Sequence[torch.Tensor], labels: Sequence[str], dims: int = 2
):
    """Tokens through the layers: (q_1, p_1) phase plane and the (q_1, q_2) plane."""
    qp, pp = phase_projection(qs, ps, dims)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = plt.cm.viridis(torch.linspace(0, 1, qp.size(1)).numpy())
    for t in range(qp.size(1)):
        for ax, (x, y) in zip(axes, ((qp[:, t, 0], pp[:, t, 0]), (qp[:, t, 0], qp[:, t, 1]))):
            ax.plot(x, y, "-", c=colors[t], lw=1, alpha=0.8)
            ax.plot(x[0], y[0], "o", c=colors[t], ms=3)
            ax.plot(x[-1], y[-1], "s", c=colors[t], ms=4)
            ax.annotate(repr(labels[t])[1:-1], (x[-1], y[-1]), fontsize=7)
    axes[0].set(xlabel="q . u1", ylabel="p . u1", title="phase plane along the top PC (o: input)")
    axes[1].set(xlabel="q . u1", ylabel="q . u2", title="positions through the layers")
    fig.tight_layout()
    return fig


def plot_decay(model):
    """The learned local kernels a exp(-lambda k): lambda per channel and layer, and the
    mean influence against distance."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, layer in enumerate(model.layers):
        lam = layer.local.decay.detach().float()
        axes[0].hist(lam.numpy(), bins=30, alpha=0.5, label=f"layer {i + 1}")
        w = layer.local.weights().detach().abs().mean(0)
        axes[1].semilogy(range(len(w)), w.numpy(), "o-", ms=3, label=f"layer {i + 1}")
    axes[0].axvline(model.config.decay_init, c="gray", ls=":", label="init")
    axes[0].set(xlabel="lambda", ylabel="channels", title="learned decay rates")
    axes[0].legend(fontsize=8)
    axes[1].set(
        xlabel="distance k", ylabel="mean |a| exp(-lambda k)", title="local influence vs distance"
    )
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_steering_curve(rows: Sequence[dict], title: str = ""):
    """Target rate (tokens and whole word) and unsteered perplexity against strength."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for target in dict.fromkeys(r["target"] for r in rows):
        sub = sorted((r for r in rows if r["target"] == target), key=lambda r: r["strength"])
        s = [r["strength"] for r in sub]
        axes[0].plot(s, [r["token_rate"] for r in sub], "o-", label=repr(target))
        axes[1].plot(s, [r["word_rate"] for r in sub], "o-", label=repr(target))
        axes[2].plot(s, [r["ppl"] for r in sub], "o-", label=repr(target))
    axes[0].set(xlabel="strength", ylabel="share of generated tokens", title="target tokens")
    axes[1].set(xlabel="strength", ylabel="share of samples", title="whole target word")
    axes[2].set(xlabel="strength", ylabel="perplexity", title="fluency: ppl under unsteered model")
    for ax in axes:
        ax.axvline(0, c="gray", lw=0.5)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
