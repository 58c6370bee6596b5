"""Hopfield memory analysis: energy descent, retrieval against beta, capacity curves."""

from __future__ import annotations

import random

import torch

from physllm.hopfield import functional as hopfield_fn


@torch.no_grad()
def energy_descent(model, task, n_facts: int = 8, update_steps: int = 8, seed: int = 0):
    """Energies of call-2 probes over Hopfield updates: a tensor (update_steps + 1, H, Q).

    Call 1 writes ``n_facts`` held-out facts; the probes are the state
    patterns at every position of the questions of call 2, iterated
    ``update_steps`` times against the stored keys with the learned betas.
    """
    rng = random.Random(seed)
    device = next(model.parameters()).device
    facts = task.facts(n_facts, rng, "heldout")
    memory = model.entries_for(torch.tensor([task.encode(task.write_text(facts))], device=device))
    prompts = task.prompts(facts).to(device)
    layer = model.memory_layer
    q = layer.state_pattern(model.hidden(prompts))  # (n, H, T, dk)
    q = q.transpose(0, 1).reshape(1, layer.H, -1, layer.dk)  # all probes share the memory
    _, _, energies = hopfield_fn.retrieve(q, memory.keys, layer.beta, update_steps, memory.valid)
    return energies[:, 0]  # (steps + 1, H, Q)


def plot_energy_descent(energies: torch.Tensor, title: str = ""):
    """Energy against update step: thin lines per probe (head 0), the mean per head bold."""
    import matplotlib.pyplot as plt

    steps = range(energies.size(0))
    fig, ax = plt.subplots(figsize=(6, 4))
    for j in range(min(40, energies.size(2))):
        ax.plot(steps, energies[:, 0, j].cpu(), color="C0", alpha=0.15, lw=0.8)
    for h in range(energies.size(1)):
        ax.plot(
            steps, energies[:, h].mean(-1).cpu(), "o-", color=f"C{h + 1}", label=f"head {h} mean"
        )
    ax.set_xlabel("Hopfield update step")
    ax.set_ylabel("E(xi) = -lse(beta, K^T xi) + |xi|^2 / 2")
    ax.set_title(title or "energy of call-2 probes over update steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@torch.no_grad()
def retrieval_vs_beta(
    n_patterns: int, dim: int, noise: float, betas: list[float], probes: int = 200, seed: int = 0
) -> list[dict]:
    """Classical check: noisy copies of random unit-RMS patterns, one update, nearest pattern.

    Returns per beta the fraction of probes whose retrieved state is closest
    to the pattern they were a noisy copy of, and the mean cosine to it.
    """
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(1, 1, n_patterns, dim, generator=gen)
    X = X / X.pow(2).mean(-1, keepdim=True).sqrt()  # unit RMS: |x| = sqrt(dim)
    which = torch.randint(n_patterns, (probes,), generator=gen)
    xi = X[0, 0, which] + noise * torch.randn(probes, dim, generator=gen)
    rows = []
    for beta in betas:
        out, _, _ = hopfield_fn.retrieve(xi[None, None], X, beta, 1)
        out = out[0, 0]  # (probes, dim)
        nearest = (out @ X[0, 0].T).argmax(-1)
        cos = torch.nn.functional.cosine_similarity(out, X[0, 0, which], dim=-1)
        rows.append(
            {
                "beta": beta,
                "retrieved": (nearest == which).float().mean().item(),
                "cosine": cos.mean().item(),
            }
        )
    return rows


def plot_capacity_curve(
    with_memory: list[dict],
    without_memory: list[dict] | None = None,
    chance: float | None = None,
    facts_fit: float | None = None,
):
    """Exact-match recall (and per-character accuracy) against the number of facts stored.

    ``facts_fit``: how many facts the bank holds; past it FIFO has forgotten
    the oldest, so recall is at most facts_fit / n (drawn as a dotted bound).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    n = [r["n_facts"] for r in with_memory]
    ax.plot(n, [r["exact_match"] for r in with_memory], "o-", label="with memory: exact match")
    ax.plot(
        n,
        [r["char_accuracy"] for r in with_memory],
        "s--",
        alpha=0.6,
        label="with memory: per character",
    )
    if without_memory:
        m = [r["n_facts"] for r in without_memory]
        ax.plot(
            m,
            [r["exact_match"] for r in without_memory],
            "x-",
            color="C3",
            label="no memory: exact match",
        )
        ax.plot(
            m,
            [r["char_accuracy"] for r in without_memory],
            "x--",
            color="C3",
            alpha=0.5,
            label="no memory: per character",
        )
    if facts_fit is not None:
        ax.plot(
            n, [min(1.0, facts_fit / k) for k in n], ":", color="k", label="bank-size bound (FIFO)"
        )
    if chance is not None:
        ax.axhline(chance, color="gray", lw=0.8, ls=":", label="chance per character")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("facts stored (held-out names and codes)")
    ax.set_ylabel("recall in call 2")
    ax.set_title("capacity: recall against facts in memory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def recall_table(rows: dict[str, dict]):
    """A pandas table: one row per setting (with / without memory...), recall columns."""
    import pandas as pd

    cols = ["n_facts", "questions", "exact_match", "char_accuracy"]
    return pd.DataFrame({k: {c: v.get(c) for c in cols} for k, v in rows.items()}).T


__all__ = [
    "energy_descent",
    "plot_capacity_curve",
    "plot_energy_descent",
    "recall_table",
    "retrieval_vs_beta",
]
