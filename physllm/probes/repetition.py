"""Repetition and drift in free generation, compared at matched perplexity (notebook 07).

The Hamiltonian seed says its model stays "logical without being repetitive". Repetition
is cheap to buy: a hotter sampler repeats less and says less that makes sense. So each
model (a leaderboard entry trained on text by the one trainer) samples at several
temperatures, and every point records, per sample of ``n_tokens`` from a fixed prompt:

* **distinct-n** (n = 1..4): distinct n-grams over all n-grams (1: nothing repeats);
* **repeated-4** (``repeated_4``): the share of 4-grams that already occurred earlier in
  the sample (0: nothing repeats; a loop drives it to 1);
* **perplexity** of the sample under the model itself, exp of its mean per-token loss
  (untempered: the model's own distribution, whatever the sampler's temperature);
* **drift**: that loss in the sample's last quarter minus its first (nats per token):
  above 0 the model grows less sure of its own text as it goes, below 0 more sure
  (often a loop settling in).

:func:`matched_perplexity` then reads each metric off each (entry, seed)'s temperature
curve at one common perplexity (linear between the two temperatures that bracket it,
:func:`physllm.sampling.value_at_perplexity`), so "less repetitive" means at the same
fluency cost; :func:`repetition_summary` gives the mean and Student-t 95% interval over
seeds, and the gap to GPT paired by seed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from physllm.arch import LanguageModel
from physllm.errors import PhysllmError
from physllm.experiments import leaderboard as lb
from physllm.experiments.stats import interval_cell, verdict
from physllm.probes.runner import cell_text, read_rows, write_rows
from physllm.sampling import (
    SamplingConfig,
    distinct_n,
    pick_token,
    repeated_ngram_rate,
    value_at_perplexity,
)
from physllm.training import TrainConfig, train

RESULTS = "repetition.csv"
# The shape and budget of the text runs: the leaderboard's CPU recipe (bytes of the default
# corpus, block 64, batch 12) at a 2-layer, 64-wide GPT, every entry matched to it.
TEXT_BUDGET: dict[str, Any] = dict(
    n_layer=2,
    n_head=2,
    n_embd=64,
    eval_iters=2,
    final_eval_blocks=8,  # the val loss is context here, not the measure: a capped evaluation
    tensorboard=False,
)
PROMPTS = ("\nThe ", "\nAnd ", "\nI am", "\nWhat")  # one length in bytes: one batch
METRICS = ("repeated_4", "distinct_1", "distinct_2", "distinct_3", "distinct_4", "drift")


def text_configs(
    archs: str | Iterable[str] = "gpt,hamiltonian",
    seed: int = 0,
    steps: int = 300,
    out_dir: str | os.PathLike = "runs/07_probes/repetition",
    **budget: Any,
) -> dict[str, TrainConfig]:
    """``{entry: TrainConfig}``: the leaderboard's CPU recipe on bytes of the default corpus
    at :data:`TEXT_BUDGET` (``budget`` overrides it), GPT's parameter count matched, warmup
    a tenth of ``steps``, one evaluation at the end."""
    values = {**TEXT_BUDGET, **budget}
    values.setdefault("warmup_steps", max(1, steps // 10))
    values.setdefault("eval_interval", steps)
    entries = lb.select_entries(archs)
    return lb.build_configs("cpu", 256, entries, out_dir, steps=steps, seed=seed, **values)


@torch.no_grad()
def sample_with_nll(
    model: LanguageModel,
    prompt: torch.Tensor,
    n_tokens: int,
    temperature: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_tokens`` sampled after ``prompt`` (B, P) at ``temperature`` through the model's
    ``decode_step``, and each one's loss under the model's own untempered distribution:
    tokens (B, n), nll (B, n) in nats."""
    cfg = SamplingConfig(temperature=temperature).validate()
    was_training = model.training
    model.eval()
    logits, state = model.decode_step(prompt)
    context, nll = prompt, []
    for i in range(n_tokens):
        token = pick_token(logits, context, cfg, generator)  # (B, 1)
        # -log p(token) at temperature 1: the model's own loss on what it wrote
        nll.append(-logits.float().log_softmax(-1).gather(-1, token))
        context = torch.cat([context, token], dim=1)
        if i + 1 < n_tokens:
            logits, state = model.decode_step(token, state)
    model.train(was_training)
    return context[:, prompt.size(1) :], torch.cat(nll, dim=1)


def sample_metrics(tokens: Sequence[int], nll: Sequence[float]) -> dict[str, float]:
    """One sample's measures: distinct-1..4, ``repeated_4``, ``ppl`` (exp mean loss),
    ``nll_first`` and ``nll_last`` (mean loss of the first and last quarter) and ``drift``
    (last minus first)."""
    tokens, nll = list(tokens), [float(v) for v in nll]
    q = max(1, len(nll) // 4)
    first, last = sum(nll[:q]) / q, sum(nll[-q:]) / q
    out = {f"distinct_{n}": distinct_n(tokens, n) for n in (1, 2, 3, 4)}
    out.update(
        repeated_4=repeated_ngram_rate(tokens, 4),
        ppl=math.exp(sum(nll) / len(nll)),
        nll_first=first,
        nll_last=last,
        drift=last - first,
    )
    return out


def temperature_sweep(
    model: LanguageModel,
    tokenizer: Any,
    temperatures: Sequence[float],
    prompts: Sequence[str] = PROMPTS,
    n_tokens: int = 256,
    seed: int = 1234,
) -> list[dict[str, Any]]:
    """A row per temperature: each measure of :func:`sample_metrics` averaged over one
    sample per prompt (prompts of one token length run as one batch), ``ppl`` over all
    their tokens, and the first sample's text. The same generator seed at every
    temperature (and for every model): common random numbers."""
    device = next(model.parameters()).device
    groups: dict[int, list[list[int]]] = {}
    for text in prompts:
        ids = tokenizer.encode(text)
        groups.setdefault(len(ids), []).append(ids)
    rows = []
    for temperature in temperatures:
        gen = torch.Generator(device=device).manual_seed(seed)
        samples, all_nll, example = [], [], None
        for ids in groups.values():
            tokens, nll = sample_with_nll(
                model, torch.tensor(ids, device=device), n_tokens, temperature, gen
            )
            for t, n in zip(tokens.tolist(), nll.tolist()):
                samples.append(sample_metrics(t, n))
                all_nll += n
                example = example or tokenizer.decode(t)
        row: dict[str, Any] = {"temperature": float(temperature), "n_samples": len(samples)}
        for key in samples[0]:
            if key != "ppl":
                row[key] = sum(s[key] for s in samples) / len(samples)
        row["ppl"] = math.exp(sum(all_nll) / len(all_nll))
        row["example"] = example
        rows.append(row)
    return rows


def run_repetition(
    archs: str | Iterable[str] = "gpt,hamiltonian",
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 300,
    temperatures: Sequence[float] = (0.6, 0.9, 1.2),
    prompts: Sequence[str] = PROMPTS,
    n_tokens: int = 256,
    out_dir: str | os.PathLike = "runs/07_probes/repetition",
    log: Callable[[str], None] | None = print,
    **budget: Any,
) -> list[dict[str, Any]]:
    """Train each entry (:func:`text_configs`) per seed and sweep its sampling temperature
    (:func:`temperature_sweep`); a row per (entry, seed, temperature) into
    ``out_dir/repetition.csv`` after each run, a finished (entry, seed, steps) skipped on
    a rerun. Returns this sweep's rows."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS
    rows = read_rows(path)
    wanted = set()
    for seed in seeds:
        configs = text_configs(archs, seed, steps, out_dir / f"seed{seed}", **budget)
        for name, cfg in configs.items():
            wanted.add((name, seed))
            if any((r["entry"], r["seed"], r["steps"]) == (name, seed, steps) for r in rows):
                continue
            t0 = time.perf_counter()
            result = train(cfg)
            m = result.metrics
            base = {
                "entry": name,
                "model": cfg.model,
                "seed": seed,
                "steps": steps,
                "params": m["params"],
                "corpus": m["corpus"],
                "val_loss": m["val_loss"],
                "n_tokens": n_tokens,
            }
            sweep = temperature_sweep(
                result.model, result.tokenizer, temperatures, prompts, n_tokens
            )
            rows += [{**base, **r} for r in sweep]
            write_rows(path, rows)
            if log:
                points = " ".join(
                    f"T{r['temperature']:g}: ppl {r['ppl']:.1f} rep {r['repeated_4']:.2f}"
                    for r in sweep
                )
                took = time.perf_counter() - t0
                log(f"{name:<14} seed {seed}  val {m['val_loss']:.3f}  {points}  ({took:.0f} s)")
    return [r for r in rows if (r["entry"], r["seed"]) in wanted and r["steps"] == steps]


def common_perplexity(rows: Iterable[Mapping[str, Any]]) -> float | None:
    """A perplexity every (entry, seed) curve reaches: the geometric middle of the range
    they all span (the highest of their lowest perplexities to the lowest of their
    highest); None when the ranges do not overlap (widen the temperatures)."""
    spans: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        spans.setdefault((r["entry"], int(r["seed"])), []).append(float(r["ppl"]))
    if not spans:
        return None
    low, high = max(min(p) for p in spans.values()), min(max(p) for p in spans.values())
    return math.sqrt(low * high) if low <= high else None


def matched_perplexity(
    rows: Iterable[Mapping[str, Any]], ppl: float | None = None, metrics: Sequence[str] = METRICS
) -> list[dict[str, Any]]:
    """Each (entry, seed)'s ``metrics`` at perplexity ``ppl`` (default
    :func:`common_perplexity`), read off its temperature curve; a row each, a metric None
    where the curve does not reach ``ppl``."""
    rows = list(rows)
    ppl = common_perplexity(rows) if ppl is None else ppl
    curves: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in rows:
        curves.setdefault((r["entry"], int(r["seed"])), []).append(r)
    out = []
    for (entry, seed), mine in curves.items():
        row: dict[str, Any] = {"entry": entry, "seed": seed, "ppl": ppl}
        for m in metrics:
            row[m] = (
                None
                if ppl is None
                else value_at_perplexity([(float(r["ppl"]), float(r[m])) for r in mine], ppl)
            )
        out.append(row)
    return out


def repetition_summary(
    rows: Iterable[Mapping[str, Any]],
    ppl: float | None = None,
    baseline: str = "gpt",
    metrics: Sequence[str] = METRICS,
) -> dict[str, dict[str, Any]]:
    """``{entry: {"temperatures": [...], "matched": {...}, "gap": {...}}}``.

    ``temperatures``: a row per temperature, ``ppl`` and each metric as ``{mean,
    ci95_low, ci95_high, n_seeds}`` over seeds. ``matched``: ``ppl`` (the common one)
    and each metric there, the same way. ``gap``: each metric minus ``baseline``'s at the
    matched perplexity, paired by seed, with the interval and a verdict (for
    ``repeated_4`` and ``drift`` lower is better, for distinct-n higher)."""
    rows = list(rows)
    if not rows:
        raise PhysllmError("no repetition rows to summarise")
    matched = matched_perplexity(rows, ppl, metrics)
    at = {(r["entry"], r["seed"]): r for r in matched}
    summary: dict[str, dict[str, Any]] = {}
    for entry in dict.fromkeys(r["entry"] for r in rows):
        mine = [r for r in rows if r["entry"] == entry]
        temps = []
        for t in sorted({float(r["temperature"]) for r in mine}):
            at_t = [r for r in mine if float(r["temperature"]) == t]
            point = {"temperature": t, "ppl": interval_cell([float(r["ppl"]) for r in at_t])}
            point.update({m: interval_cell([float(r[m]) for r in at_t]) for m in metrics})
            temps.append(point)
        seeds = sorted({int(r["seed"]) for r in mine})
        here = {"ppl": matched[0]["ppl"]}
        for m in metrics:
            here[m] = interval_cell([at[entry, s][m] for s in seeds if at[entry, s][m] is not None])
        gap = {}
        if entry != baseline:
            for m in metrics:
                diffs = [
                    at[entry, s][m] - at[baseline, s][m]
                    for s in seeds
                    if (baseline, s) in at
                    and at[entry, s][m] is not None
                    and at[baseline, s][m] is not None
                ]
                cell = interval_cell(diffs)
                lower = not m.startswith("distinct")
                cell["verdict"] = verdict(
                    cell["ci95_low"], cell["ci95_high"], lower_is_better=lower
                )
                gap[m] = cell
        summary[entry] = {
            "temperatures": temps,
            "matched": here,
            "gap": gap,
            "params": int(mine[0]["params"]),
            "steps": int(mine[0]["steps"]),
            "corpus": mine[0]["corpus"],
            "n_tokens": int(mine[0]["n_tokens"]),
            "seeds": seeds,
        }
    return summary


def temperature_table(summary: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """A row per (entry, temperature): perplexity and the measures, means over seeds."""
    return pd.DataFrame(
        [
            {
                "entry": entry,
                "temperature": t["temperature"],
                "ppl": t["ppl"]["mean"],
                **{m: t[m]["mean"] for m in ("repeated_4", "distinct_1", "distinct_4", "drift")},
            }
            for entry, s in summary.items()
            for t in s["temperatures"]
        ]
    )


def matched_table(summary: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """A row per entry at the matched perplexity: ``mean [low, high]`` of repeated-4,
    distinct-4 and drift, and the first two's gaps to the baseline with their verdicts."""
    rows = []
    for entry, s in summary.items():
        row: dict[str, Any] = {"entry": entry, "ppl": s["matched"]["ppl"]}
        row.update(
            {m: cell_text(s["matched"][m], 3) for m in ("repeated_4", "distinct_4", "drift")}
        )
        for m in ("repeated_4", "distinct_4"):
            if m in s["gap"]:
                row[f"gap {m}"] = f"{cell_text(s['gap'][m], 3)}: {s['gap'][m]['verdict']}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("entry")


__all__ = [
    "METRICS",
    "PROMPTS",
    "TEXT_BUDGET",
    "common_perplexity",
    "matched_perplexity",
    "matched_table",
    "repetition_summary",
    "run_repetition",
    "sample_metrics",
    "sample_with_nll",
    "temperature_sweep",
    "temperature_table",
    "text_configs",
]
