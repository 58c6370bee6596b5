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


def save_figure(fig, out_dir: str | os.PathLike, name: str) -> Path:
    """Save a matplotlib figure as ``out_dir/name.png`` (reports pick up PNGs) and return the path."""
    path = Path(out_dir) / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
