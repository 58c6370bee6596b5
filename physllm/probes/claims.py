"""Each seed project's claim, the probe rows that can refute it, and one sentence of what
the probes found (notebook 07's section "What the probes say about each seed")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Claim:
    """A seed's claim: the entries that embody it and the tasks (matrix columns) that test it."""

    seed: str
    claim: str
    entries: tuple[str, ...]
    tasks: tuple[str, ...]


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "New-LLM (context_vector)",
        "a fixed-size context vector, updated token by token, carries the context an LM needs",
        ("context_vector-seed", "context_vector-fixed"),
        ("mqar", "noisy_recall", "induction"),
    ),
    Claim(
        "Hamiltonian LLM",
        "leapfrog (symplectic) layers move information through the sequence as well as attention",
        ("hamiltonian",),
        ("mqar", "induction"),
    ),
    Claim(
        "Newton Gravity Transformer",
        "attention by mass and distance in a learned coordinate space can replace dot products",
        ("ngt-gaussian", "ngt-seed"),
        ("mqar", "selective_copy", "induction"),
    ),
    Claim(
        "QLLM",
        "phase rotations and global memory tokens keep long-range information",
        ("qllm",),
        ("mqar", "noisy_recall"),
    ),
    Claim(
        "CHopT (hopfield)",
        "a modern Hopfield memory layer adds associative recall to a transformer",
        ("hopfield",),
        ("mqar", "noisy_recall"),
    ),
)


def _cell_text(task: str, cell: Mapping[str, Any], gap: Mapping[str, Any] | None) -> str:
    low, high, chance = cell["ci95_low"], cell["ci95_high"], cell["chance"]
    text = f"{task} {cell['mean']:.2f}"
    if cell["n_seeds"] >= 2:  # above chance: every seed's interval clears a guesser's range
        text += f" [{low:.2f}, {high:.2f}]"
        text += " (above chance)" if low > cell["chance_high"] else " (not above chance)"
    text += f", chance {chance:.2f}"
    if gap is not None:
        text += f"; vs GPT {gap['gap']:+.2f}: {gap['verdict']}"
    return text


def claim_findings(
    matrix: Mapping[str, Mapping[str, Mapping[str, Any]]],
    gaps: Sequence[Mapping[str, Any]],
    steps: int,
) -> list[str]:
    """One sentence per seed claim: each of its entries' accuracy on the tasks that test it
    (mean [95% interval] over seeds, against chance, and the paired gap to GPT), or that the
    grid did not run it."""
    by_key = {(g["entry"], g["task"]): g for g in gaps}
    lines = []
    for c in CLAIMS:
        found = []
        for entry in c.entries:
            cells = [(t, matrix[entry][t]) for t in c.tasks if t in matrix.get(entry, {})]
            if cells:
                parts = "; ".join(_cell_text(t, cell, by_key.get((entry, t))) for t, cell in cells)
                found.append(f"row `{entry}`: {parts}")
        what = " | ".join(found) if found else "not in this grid (add it to archs)"
        lines.append(f"**{c.seed}** claims {c.claim}. At {steps} steps: {what}.")
    return lines


__all__ = ["CLAIMS", "Claim", "claim_findings"]
