"""Hopfield memory analysis: energy descent, retrieval against beta, capacity curves,
recall over seeds with Student-t intervals, and the verdict on story recall."""

from __future__ import annotations

import random
from collections.abc import Callable

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
    curves: dict[str, list[dict]],
    chance: float | None = None,
    facts_fit: float | None = None,
):
    """Exact-match recall (and per-character accuracy) against the number of facts stored.

    ``curves``: a label -> rows of :func:`~physllm.hopfield.tasks.capacity_curve` (each
    row's ``n_slots`` and ``slots_per_fact`` go into the legend). ``facts_fit``: how many
    facts the FIFO bank holds; past it the oldest are gone, so recall is at most
    facts_fit / n (drawn as a dotted bound).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (label, rows) in enumerate(curves.items()):
        n = [r["n_facts"] for r in rows]
        slots = sorted({r["n_slots"] for r in rows})
        bank = f"{slots[0]} slots" if len(slots) == 1 else f"{slots[0]}..{slots[-1]} slots"
        per = rows[0].get("slots_per_fact")
        ax.plot(n, [r["exact_match"] for r in rows], "o-", color=f"C{i}",
                label=f"{label} ({bank}, {per} per fact): exact")  # fmt: skip
        ax.plot(n, [r["char_accuracy"] for r in rows], "s--", color=f"C{i}", alpha=0.5,
                label=f"{label}: per character")  # fmt: skip
    if facts_fit is not None:
        n = sorted({r["n_facts"] for rows in curves.values() for r in rows})
        ax.plot(n, [min(1.0, facts_fit / k) for k in n], ":", color="k", label="FIFO bank bound")
    if chance is not None:
        ax.axhline(chance, color="gray", lw=0.8, ls=":", label="chance per character")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("facts stored (held-out names and codes)")
    ax.set_ylabel("recall in call 2")
    ax.set_title("capacity: recall against facts in memory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def recall_table(rows: dict[str, dict]):
    """A pandas table: one row per setting (with / without memory...), recall columns."""
    import pandas as pd

    cols = ["n_facts", "questions", "exact_match", "char_accuracy", "answer_loss"]
    return pd.DataFrame({k: {c: v.get(c) for c in cols} for k, v in rows.items()}).T


SEED_METRICS = ("exact_match", "char_accuracy", "answer_loss")


def seed_summary(
    per_seed: list[dict[str, dict[str, dict]]],
    interval: Callable[[list[float]], tuple[float, float, float]],
) -> dict[str, dict[str, dict]]:
    """``{task: {reader: recall}}`` of several seeds -> the same nesting of
    ``{metric: mean, metric_ci95_low, metric_ci95_high, n_seeds, questions, per_seed}``.

    ``exact_match`` keeps the plain names ``ci95_low``/``ci95_high``; other metrics
    (``char_accuracy``, ``answer_loss``) are prefixed, and left out for a reader that
    does not report them (the stories' text lookups). ``interval`` is the repository's
    Student-t helper, :func:`physllm.experiments.stats.interval` (passed in: the
    experiments layer sits above the architectures).
    """
    out: dict[str, dict[str, dict]] = {}
    for task in per_seed[0]:
        out[task] = {}
        for reader in per_seed[0][task]:
            runs = [seed[task][reader] for seed in per_seed]
            row: dict = {"n_facts": runs[0].get("n_facts"), "n_seeds": len(runs)}
            row["questions"] = sum(r["questions"] for r in runs)
            for metric in (m for m in SEED_METRICS if m in runs[0]):  # lookups: exact match only
                mean, low, high = interval([r[metric] for r in runs])
                prefix = "" if metric == "exact_match" else f"{metric}_"
                row.update({metric: mean, f"{prefix}ci95_low": low, f"{prefix}ci95_high": high})
            row["per_seed"] = [r["exact_match"] for r in runs]
            out[task][reader] = row
    return out


def summary_table(summary: dict[str, dict[str, dict]], metric: str = "exact_match"):
    """A pandas table of :func:`seed_summary`: a row per task, a column per reader, each
    cell ``mean [ci95_low, ci95_high]`` of ``metric``."""
    import pandas as pd

    prefix = "" if metric == "exact_match" else f"{metric}_"

    def cell(r: dict) -> str:
        if metric not in r:
            return ""
        low, high = r[f"{prefix}ci95_low"], r[f"{prefix}ci95_high"]
        return f"{r[metric]:.3f} [{low:.3f}, {high:.3f}]"

    return pd.DataFrame({t: {k: cell(r) for k, r in rows.items()} for t, rows in summary.items()}).T


HELDOUT_SETTINGS = ("heldout_ask", "heldout_write", "heldout_both")


def _pct(r: dict) -> str:
    """``mean% [low, high]`` of a :func:`seed_summary` row's exact match."""
    return f"{100 * r['exact_match']:.0f}% [{100 * r['ci95_low']:.0f}, {100 * r['ci95_high']:.0f}]"


def recall_findings(
    summary: dict[str, dict[str, dict]],
    capacity: dict[str, list[dict]],
    lm_loss: tuple[float, float, int],
    goal: float = 0.8,
    cache_limit: float = 0.05,
) -> str:
    """Markdown bullets generated from this run's numbers: section 5's recall (a
    :func:`seed_summary`), the capacity curves (``{"no eviction": rows, "FIFO": rows}``
    of :func:`~physllm.hopfield.tasks.capacity_curve`) and ``lm_loss`` (val loss with the
    bank empty, with n facts, n). The issue's goal is checked on every held-out setting:
    the memory's mean exact match >= ``goal`` while the n-gram cache's is <= ``cache_limit``."""
    same = summary["same_template"]
    n = same["memory"]["n_seeds"]
    lines = [
        f"Exact match over {n} seeds, mean [Student-t 95% interval], "
        f"{same['memory']['questions']} questions per reader and task:",
        f"- **same wording**: memory {_pct(same['memory'])}, n-gram cache "
        f"{_pct(same['ngram_cache'])}, kNN-LM {_pct(same['knn_lm'])}, no memory "
        f"{_pct(same['no_memory'])}.",
    ]
    for t in HELDOUT_SETTINGS:
        rows = summary[t]
        lines.append(
            f"- **{t}**: memory {_pct(rows['memory'])}, n-gram cache {_pct(rows['ngram_cache'])}, "
            f"kNN-LM {_pct(rows['knn_lm'])}, no memory {_pct(rows['no_memory'])}."
        )
    short = [
        t
        for t in HELDOUT_SETTINGS
        if summary[t]["memory"]["exact_match"] < goal
        or summary[t]["ngram_cache"]["exact_match"] > cache_limit
    ]
    lines.append(
        f"- **Goal** (>= {goal:.0%} exact match on every held-out setting, the n-gram cache "
        f"<= {cache_limit:.0%}): "
        + ("reached." if not short else "not reached on " + ", ".join(short) + ".")
    )
    for name, rows in capacity.items():
        held = [r["n_facts"] for r in rows if r["exact_match"] >= 0.9]
        points = ", ".join(f"{r['n_facts']}: {100 * r['exact_match']:.0f}%" for r in rows)
        lines.append(
            f"- **capacity, {name}** (facts: exact match): {points}; >= 90% up to "
            f"{max(held, default=0)} facts."
        )
    empty, full, facts = lm_loss
    lines.append(
        f"- **ordinary text**: validation loss {empty:.3f} with the bank empty, {full:.3f} "
        f"holding {facts} facts ({full - empty:+.3f} nats per token)."
    )
    return "\n".join(lines)


STORY_BASELINES = ("ngram_cache", "ngram_words", "knn_lm")


def _above(summary: dict[str, dict], reader: str, baselines: tuple[str, ...]) -> list[str]:
    """The baselines whose interval's high end is not below ``reader``'s low end."""
    low = summary[reader]["ci95_low"]
    return [b for b in baselines if b in summary and not low > summary[b]["ci95_high"]]


def story_conclusion(
    summary: dict[str, dict[str, dict]],
    headline: str = "heldout_ask",
    baselines: tuple[str, ...] = STORY_BASELINES,
) -> str:
    """Sentences generated from a :func:`seed_summary` of story recall: per variant the
    memory's exact match beside each baseline's, and whether the memory is above every
    baseline by more than the interval (its interval's low end above each baseline's
    high end; NaN bounds, under two seeds, never are), then the verdict on ``headline``."""

    def cell(r: dict) -> str:
        return f"{r['exact_match']:.2f} [{r['ci95_low']:.2f}, {r['ci95_high']:.2f}]"

    lines = []
    for variant, rows in summary.items():
        others = "; ".join(f"{b} {cell(rows[b])}" for b in (*baselines, "no_memory") if b in rows)
        short = _above(rows, "memory", baselines)
        verdict = (
            "above every baseline by more than the interval"
            if not short
            else "not above " + ", ".join(short) + " by more than the interval"
        )
        lines.append(f"- {variant}: memory {cell(rows['memory'])}; {others}: {verdict}.")
    rows = summary[headline]
    n, low = rows["memory"]["n_seeds"], rows["memory"]["ci95_low"]
    short = _above(rows, "memory", baselines)
    highs = ", ".join(f"{b} ({rows[b]['ci95_high']:.2f})" for b in short)
    goal = "reached" if not short else f"not reached: its low end {low:.2f} is not above {highs}"
    head = f"Stories, exact match over {n} seeds, mean [Student-t 95% interval]:"
    tail = (
        f"Goal (stories asked in held-out templates, {headline}: the memory above the n-gram "
        f"caches and the kNN-LM by more than the interval): {goal}."
    )
    return "\n".join([head, *lines, tail])


__all__ = [
    "HELDOUT_SETTINGS",
    "STORY_BASELINES",
    "SEED_METRICS",
    "energy_descent",
    "plot_capacity_curve",
    "plot_energy_descent",
    "recall_findings",
    "recall_table",
    "retrieval_vs_beta",
    "seed_summary",
    "story_conclusion",
    "summary_table",
]
