"""Figures for the context-vector model: the state over a text, its gates, and streaming cost."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def plot_context_heatmap(
    context: torch.Tensor, labels: Sequence[str], dims: int = 48, title: str = ""
):
    """The context vector after each token: ``context`` (T, C), one column per token."""
    import matplotlib.pyplot as plt

    c = context[:, :dims].T.float().numpy()  # (dims, T)
    fig, ax = plt.subplots(figsize=(min(14, 2 + 0.14 * len(labels)), 4))
    lim = float(abs(c).max()) or 1.0
    im = ax.imshow(c, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([repr(s)[1:-1] for s in labels], fontsize=6, family="monospace")
    ax.set_ylabel(f"context dimension (first {c.shape[0]})")
    ax.set_title(title or "context vector c_t after each token")
    fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    return fig


def gate_summary(trace: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean gates and the implied memory: a forget gate f keeps f^k after k tokens,
    so 1 / (1 - f) tokens is its time constant."""
    f, i = trace["forget"].float(), trace["input"].float()
    horizon = 1.0 / (1.0 - f.mean(dim=(0, 1))).clamp_min(1e-6)  # per dimension
    return {
        "forget_mean": float(f.mean()),
        "input_mean": float(i.mean()),
        "horizon_median": float(horizon.median()),
        "horizon_max": float(horizon.max()),
        "frac_dims_horizon_gt_10": float((horizon > 10).float().mean()),
    }


def plot_gate_stats(traces: dict[str, dict[str, torch.Tensor]]):
    """Per run: histogram of forget and input gate values, and each dimension's memory horizon."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for k, (label, tr) in enumerate(traces.items()):
        color = f"C{k}"
        for ax, gate in zip(axes[:2], ("forget", "input")):
            ax.hist(
                tr[gate].flatten().numpy(),
                bins=50,
                range=(0, 1),
                alpha=0.5,
                color=color,
                label=label,
                density=True,
            )
        f = tr["forget"].float().mean(dim=(0, 1))
        horizon = (1.0 / (1.0 - f).clamp_min(1e-6)).sort(descending=True).values
        axes[2].plot(horizon.numpy(), color=color, label=label)
    axes[0].set_title("forget gate f (1 keeps the past)")
    axes[1].set_title("input gate i (1 writes the new delta)")
    axes[2].set_title("memory horizon 1/(1 - mean f) per dimension")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("context dimension (sorted)")
    axes[2].set_ylabel("tokens")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_streaming_bench(rows: list[dict[str, Any]], title: str = ""):
    """Peak memory and tokens/s against context length, one line per model (bench --mode generate)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for k, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        x = [r["length"] for r in mine]
        style = dict(marker="o", color=f"C{k}", label=model.split(":")[0])
        axes[0].plot(x, [r["peak_mem_mb"] for r in mine], **style)
        axes[1].plot(x, [max(r["state_kb"], 1e-3) for r in mine], **style)
        axes[2].plot(x, [r["tokens_per_sec"] for r in mine], **style)
    axes[0].set_ylabel("peak memory while generating (MB)")
    axes[1].set_ylabel("cache / state size (KB)")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("tokens / s (batch 1)")
    axes[2].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens in the context")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "streaming generation: memory and speed against length")
    fig.tight_layout()
    return fig


__all__ = ["gate_summary", "plot_context_heatmap", "plot_gate_stats", "plot_streaming_bench"]
