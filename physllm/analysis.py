"""Loss curves and result tables from ``train``'s history and metrics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def plot_loss_curves(histories: dict[str, list[dict[str, Any]]], x: str = "step", title: str = ""):
    """One figure: train loss (thin) and val loss (markers) per run, against ``step`` or ``time_s``.

    ``histories`` maps a label to ``RunResult.history``.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, history) in enumerate(histories.items()):
        color = f"C{i}"
        train = [h for h in history if "train_loss" in h]
        ax.plot(
            [h[x] for h in train], [h["train_loss"] for h in train], color=color, alpha=0.4, lw=1
        )
        if x == "step":
            val = [h for h in history if "val_loss" in h]
            ax.plot(
                [h["step"] for h in val],
                [h["val_loss"] for h in val],
                "o-",
                color=color,
                label=f"{label} (val)",
            )
        else:
            ax.plot([], [], color=color, label=label)
    ax.set_xlabel("optimizer step" if x == "step" else "training seconds")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "loss: train (thin), validation (markers)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def loss_table(metrics: dict[str, dict[str, Any]]):
    """A pandas table of runs: params, losses, bits per unit, speed, memory."""
    import pandas as pd

    columns = [
        "params",
        "steps",
        "train_loss",
        "val_loss",
        "val_bpc",
        "tokens_per_sec",
        "ms_per_step",
        "peak_mem_mb",
    ]
    table = pd.DataFrame({label: {c: m.get(c) for c in columns} for label, m in metrics.items()}).T
    return table


def plot_length_sweep(rows: list[dict[str, Any]], title: str = ""):
    """Training tokens/s, training peak memory and streaming decode tokens/s against
    sequence length, one line per model (rows of ``physllm.bench.run_length_bench``,
    labelled by ``label`` where set)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    labels = list(dict.fromkeys(r.get("label") or r["model"] for r in rows))
    panels = (
        ("tokens_per_sec", "training tokens / s"),
        ("peak_mem_mb", "peak memory of a training step (MB)"),
        ("decode_tokens_per_sec", "decode tokens / s (batch 1)"),
    )
    for k, label in enumerate(labels):
        mine = sorted(
            (r for r in rows if (r.get("label") or r["model"]) == label), key=lambda r: r["length"]
        )
        style = dict(marker="o", color=f"C{k}", ls="-" if k < 10 else "--", label=label)
        for ax, (key, _) in zip(axes, panels):
            ax.plot([r["length"] for r in mine], [r[key] for r in mine], **style)
    for ax, (_, ylabel) in zip(axes, panels):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(title or "speed and memory against sequence length")
    fig.tight_layout()
    return fig


def save_figure(fig, out_dir: str | os.PathLike, name: str) -> Path:
    """Save a matplotlib figure as ``out_dir/name.png`` (reports pick up PNGs) and return the path."""
    path = Path(out_dir) / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def seed_band(
    runs: list[tuple[list[float], list[float]]], points: int = 100
) -> tuple[Any, Any, Any, Any]:
    """Mean, min and max over seeds of curves ``(xs, ys)`` on one grid of ``points`` x values
    spanning the range every seed covers (each curve linearly interpolated onto it).
    Returns ``(grid, mean, low, high)``, numpy arrays of shape (points,)."""
    import numpy as np

    lo = max(min(xs) for xs, _ in runs)
    hi = min(max(xs) for xs, _ in runs)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    ys = np.stack(
        [np.interp(grid, np.asarray(xs), np.asarray(y)) for xs, y in runs]
    )  # (seeds, points)
    return grid, ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def plot_seed_bands(
    groups: dict[str, list[tuple[list[float], list[float]]]],
    xlabel: str,
    title: str = "",
    ylabel: str = "training loss (nats/token)",
    logx: bool = False,
    ax=None,
):
    """One line per group (its mean over seeds) with a band from the lowest to the highest
    seed (:func:`seed_band`); ``groups`` maps a label to its seeds' ``(xs, ys)``."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for i, (label, runs) in enumerate(groups.items()):
        grid, mean, low, high = seed_band(runs)
        ax.plot(grid, mean, color=f"C{i}", lw=1.5, label=f"{label} ({len(runs)} seeds)")
        ax.fill_between(grid, low, high, color=f"C{i}", alpha=0.2, lw=0)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "mean over seeds, band: lowest to highest seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure
