"""Each seed project's claim, the probe rows that can refute it, and one sentence of what
the probes found (notebook 07's section "What the probes say about each seed").

Three kinds of rows: the capability matrix (:data:`CLAIMS`, :func:`claim_findings`), recall
at distance (:data:`DISTANCE_CLAIMS`, :func:`distance_findings`: the claims about length
and memory) and repetition at matched perplexity (:data:`REPETITION_CLAIM`,
:func:`repetition_findings`: the Hamiltonian's "not repetitive")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from physllm.probes.runner import cell_text


@dataclass(frozen=True)
class Claim:
    """A seed's claim: the entries that embody it and the tasks (matrix columns) that test it."""

    seed: str
    claim: str
    entries: tuple[str, ...]
    tasks: tuple[str, ...]
    control: str = ""  # what the control row removes (recall at distance)


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


DISTANCE_CLAIMS: tuple[Claim, ...] = (
    Claim(
        "New-LLM (context_vector)",
        "a context of unlimited length at constant memory: what it read stays in its state",
        ("context_vector-seed", "context_vector-fixed"),
        ("recall_at_distance",),
        "its state zeroed after the facts",
    ),
    Claim(
        "QLLM",
        "its global memory tokens give long-range coherence beyond the block",
        ("qllm",),
        ("recall_at_distance",),
        "its memory tokens reset after the facts",
    ),
    Claim(
        "CHopT (hopfield)",
        "facts written into its Hopfield memory are remembered in later calls",
        ("hopfield",),
        ("recall_at_distance",),
        "the facts' call not written",
    ),
)
REPETITION_CLAIM = Claim(
    "Hamiltonian LLM",
    'its generations stay "logical without being repetitive"',
    ("hamiltonian",),
    ("repetition",),
)


def _above(cell: Mapping[str, Any]) -> bool:
    """The cell clears a guesser's 95% range: its interval's low end (one seed: its mean)."""
    low = cell["ci95_low"] if cell["n_seeds"] >= 2 else cell["mean"]
    return low > cell["chance_high"]


def _distance_text(cells: Mapping[str, Mapping[str, Any]]) -> str:
    """In-block, every distance with its control, and how far recall stays above chance."""
    parts, held = [], []
    if "in_block" in cells:
        parts.append(f"in-block {cell_text(cells['in_block'])}")
    for key, cell in cells.items():
        if key == "in_block":
            continue
        parts.append(
            f"d={cell['distance']} ({key}) {cell_text(cell)} vs control {cell['control_mean']:.2f}"
        )
        if _above(cell) and cell["mean"] > cell["control_mean"]:
            held.append(f"d={cell['distance']}")
    any_cell = next(iter(cells.values()))
    text = "; ".join(parts) + f"; chance {any_cell['chance']:.2f}"
    if not held:
        return text + ": above chance at no distance scored"
    return text + f": above chance and its control at {', '.join(held)}"


def distance_findings(
    distance: Mapping[str, Mapping[str, Mapping[str, Any]]], steps: int, reference: str = "gpt"
) -> list[str]:
    """One sentence per claim of :data:`DISTANCE_CLAIMS` from ``distance`` (``{entry: {
    "in_block" | "<k>x": cell}}``, :func:`physllm.probes.runner.distance_matrix`): each
    entry's recall in-block and at each distance (mean [95% interval] over seeds) against
    its control, how far it stays above chance, and the reference (GPT, whose window ends
    at its block) at the same distances."""
    ref = distance.get(reference)
    train_len = next(
        (
            cells["in_block"]["settings"]["seq_len"]
            for cells in distance.values()
            if "in_block" in cells
        ),
        None,
    )
    lines = []
    for c in DISTANCE_CLAIMS:
        found = [f"row `{e}`: {_distance_text(distance[e])}" for e in c.entries if e in distance]
        what = " | ".join(found) if found else "not in this grid (add it to distance_archs)"
        head = f"**{c.seed}** claims {c.claim}. At {steps} steps"
        head += f", trained at length {train_len}" if train_len else ""
        line = f"{head} (control: {c.control}): {what}."
        if ref and found:
            line += f" Reference `{reference}` (learned positions, block = training length): "
            line += _distance_text(ref) + "."
        lines.append(line)
    return lines


def _gap_text(gap: Mapping[str, Any], what: str) -> str:
    if gap["n_seeds"] < 2:
        return f"{what} {gap['mean']:+.3f} (one seed: no interval)"
    low, high = gap["ci95_low"], gap["ci95_high"]
    return f"{what} {gap['mean']:+.3f} [{low:+.3f}, {high:+.3f}]: {gap['verdict']}"


def repetition_findings(
    summary: Mapping[str, Mapping[str, Any]], steps: int, reference: str = "gpt"
) -> list[str]:
    """The sentence of :data:`REPETITION_CLAIM` from :func:`physllm.probes.repetition
    .repetition_summary`: each entry's repeated-4 rate, distinct-4 and drift at the matched
    perplexity against ``reference``'s, with the paired gap and its verdict."""
    c = REPETITION_CLAIM
    head = f"**{c.seed}** claims {c.claim}. At {steps} steps"
    entries = [e for e in c.entries if e in summary]
    if not entries:
        return [f"{head}: not in this grid (add it to text_archs)."]
    ppl = summary[entries[0]]["matched"]["ppl"]
    if ppl is None:
        return [f"{head}: no perplexity common to every model's temperature sweep (widen it)."]
    temps = [t["temperature"] for t in summary[entries[0]]["temperatures"]]
    head += f", temperatures {min(temps):g}-{max(temps):g}, at matched perplexity {ppl:.2f}"
    found = []
    for e in [*entries, reference]:
        if e not in summary:
            continue
        m = summary[e]["matched"]
        text = f"row `{e}`: repeated-4 {cell_text(m['repeated_4'], 3)}, distinct-4 "
        text += f"{cell_text(m['distinct_4'], 3)}, drift {cell_text(m['drift'], 3)} nats"
        gap = summary[e]["gap"]
        if gap:
            text += f"; vs `{reference}` " + _gap_text(gap["repeated_4"], "repeated-4")
            text += ", " + _gap_text(gap["distinct_4"], "distinct-4")
        found.append(text)
    return [f"{head}: " + " | ".join(found) + " (repeated-4: lower is less repetitive)."]


__all__ = [
    "CLAIMS",
    "DISTANCE_CLAIMS",
    "REPETITION_CLAIM",
    "Claim",
    "claim_findings",
    "distance_findings",
    "repetition_findings",
]


def curve_findings(curve: Mapping[str, Mapping[str, Mapping[str, Any]]], steps: int) -> list[str]:
    """One sentence per entry of ``curve`` (:func:`physllm.probes.runner.curve_matrix`):
    its MQAR accuracy at each width and pair count, and the most pairs it holds above
    chance at each width (Zoology's question: the width a model needs)."""
    lines = []
    for entry, cells in curve.items():
        parts = []
        for width in sorted({c["width"] for c in cells.values()}):
            mine = sorted(
                (c for c in cells.values() if c["width"] == width), key=lambda c: c["n_pairs"]
            )
            points = ", ".join(f"{c['n_pairs']} pairs {cell_text(c)}" for c in mine)
            held = [c["n_pairs"] for c in mine if _above(c)]
            most = f"above chance up to {max(held)} pairs" if held else "above chance at none"
            parts.append(f"width {width}: {points} ({most})")
        lines.append(
            f"MQAR against pairs and width, {steps} steps, row `{entry}`: " + "; ".join(parts) + "."
        )
    return lines
