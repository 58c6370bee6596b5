"""The leaderboard protocol (notebook 06, v2): a staged sweep, then per-entry numbers with
intervals.

A protocol is a staged :mod:`physllm.experiments.sweep` spec (:data:`PROTOCOLS`):

* ``smoke``: three entries at the CPU protocol's small size, a learning-rate stage of
  two rates x one seed, then three seeds at the picked rate, 40 steps (minutes on two cores:
  what nbval and the tests run; its numbers are not evidence);
* ``cpu``: ``experiments/protocol_cpu.toml`` (every entry, two sizes, 4 rates, then
  3 seeds at 400 and 2000 steps);
* ``gpu``: ``experiments/protocol_gpu.toml`` (the same protocol at GPU scale).

From the final stage's ``results.csv`` (one learning rate per entry and size):

* ``best_lr[entry][size]``: the rate the lr stage picked (:func:`pick_lr`);
* ``gaps[entry][size][steps]``: the paired gap ``entry - gpt`` in val_loss over seeds,
  ``{mean, ci95_low, ci95_high, n_seeds, verdict}`` (:func:`physllm.experiments.stats.paired_gap`:
  Student-t 95% interval; "better"/"worse" only when it excludes 0);
* :func:`summary_rows`: mean and sd of each (entry, size, steps) over seeds;
* :func:`curves`: each run's training loss against tokens, FLOPs or seconds, read from
  its ``history.json``, for seed bands (:func:`physllm.analysis.plot_seed_bands`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from physllm.data import repo_root
from physllm.errors import PhysllmError
from physllm.experiments.leaderboard import REFERENCE, all_entries
from physllm.experiments.stats import as_rows, gap_table
from physllm.experiments.sweep import SweepSpec, load_specs, pick_lr, read_spec_file

# The reduced grid: three entries (the reference, a physics model, an attention-free one)
# at one tiny size; the same two stages as the full protocol, at a budget of seconds.
SMOKE: dict[str, Any] = {
    "preset": "cpu",
    "entries": ["gpt", "hamiltonian", "context_vector-seed"],
    "sizes": {"0.2M": {"n_embd": 64}},  # the CPU protocol's small size (every entry matched)
    "overrides": {
        "batch_size": 8,
        "eval_interval": 10,
        "eval_iters": 2,
        "final_eval_blocks": 200,  # the first 200 val blocks: the same tokens for every run
    },
    "stages": {
        "lr": {"seeds": [0], "lrs": [1e-3, 3e-3], "steps": [40]},
        "seeds": {"seeds": [1, 2, 3], "lrs": "best", "lr_from": "lr", "steps": [40]},
    },
}
PROTOCOLS = ("smoke", "cpu", "gpu")
FINAL_STAGE = "seeds"  # the stage whose rows hold one rate per entry and size
GAP_KEYS = ("mean", "ci95_low", "ci95_high", "n_seeds", "verdict")


def spec_source(protocol: str) -> Mapping[str, Any] | Path:
    """The staged spec of ``protocol``: :data:`SMOKE`, or ``experiments/protocol_<name>.toml``."""
    if protocol not in PROTOCOLS:
        raise PhysllmError(f"no protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
    if protocol == "smoke":
        return json.loads(json.dumps(SMOKE))  # a deep copy
    root = repo_root() or Path.cwd()
    return root / "experiments" / f"protocol_{protocol}.toml"


def load_protocol(
    protocol: str, out_dir: str | os.PathLike, corpus: str = "", **overrides: Any
) -> list[SweepSpec]:
    """The stages of ``protocol`` writing under ``out_dir`` (``out_dir/<stage>/results.csv``).
    ``corpus``: replaces the spec's ("": the recipe's); ``overrides``: config fields for
    every run (``threads``, ``device``)."""
    source = spec_source(protocol)
    values = dict(source) if isinstance(source, Mapping) else read_spec_file(source)
    if corpus:
        values["corpus"] = corpus
    if overrides:
        values["overrides"] = {**values.get("overrides", {}), **overrides}
    return load_specs(values, out_dir=str(out_dir))


def _clean(value: Any) -> Any:
    """NaN as None, so metrics.json stays strict JSON."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _ok(results: Any) -> list[dict[str, Any]]:
    return [r for r in as_rows(results) if r.get("status", "ok") == "ok"]


def best_lrs(results: Any, lr_results: Any = None) -> dict[str, dict[str, float]]:
    """``{entry: {size: lr}}``: :func:`pick_lr` on the lr stage's rows when given, else the
    one rate each (entry, size) ran at in ``results`` (a PhysllmError if several)."""
    rows = as_rows(results)
    out: dict[str, dict[str, float]] = {}
    for entry, size in dict.fromkeys((r["entry"], r["size"]) for r in rows):
        if lr_results is not None:
            lr = pick_lr(lr_results, entry, size)
        else:
            rates = {float(r["lr"]) for r in rows if r["entry"] == entry and r["size"] == size}
            if len(rates) > 1:
                raise PhysllmError(
                    f"{entry} at {size} ran several learning rates {sorted(rates)}: "
                    "pass the lr stage's results to pick one"
                )
            lr = rates.pop()
        out.setdefault(entry, {})[str(size)] = lr
    return out


def gap_tree(results: Any, baseline: str = REFERENCE) -> dict[str, dict[str, dict[str, Any]]]:
    """``gaps[entry][size][steps] = {mean, ci95_low, ci95_high, n_seeds, verdict}`` of
    val_loss against ``baseline``, paired by seed (steps as a string: a JSON key)."""
    tree: dict[str, dict[str, dict[str, Any]]] = {}
    for g in gap_table(_ok(results), baseline):
        cell = {k: _clean(g[k]) for k in GAP_KEYS}
        tree.setdefault(g["entry"], {}).setdefault(str(g["size"]), {})[str(g["steps"])] = cell
    return tree


def lr_edges(lr_results: Any, best: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, str]]:
    """``{entry: {size: "highest" | "lowest"}}`` for every picked rate at an end of the rates
    its (entry, size) tried: its optimum may lie outside the grid, so its loss (and its gap
    to GPT) is tuned only as far as the grid reaches."""
    rows = as_rows(lr_results)
    edges: dict[str, dict[str, str]] = {}
    for entry, by_size in best.items():
        for size, lr in by_size.items():
            grid = sorted(
                {float(r["lr"]) for r in rows if r["entry"] == entry and str(r["size"]) == size}
            )
            if len(grid) > 1 and lr in (grid[0], grid[-1]):
                edges.setdefault(entry, {})[size] = "highest" if lr == grid[-1] else "lowest"
    return edges


def protocol_metrics(results: Any, lr_results: Any = None) -> dict[str, Any]:
    """``{"best_lr", "gaps", "lr_at_edge", "runs"}`` of the final stage's rows (and the lr
    stage's: the rates, :func:`lr_edges`, and its finished runs in the count)."""
    best = best_lrs(results, lr_results)
    every = len(_ok(results)) + (len(_ok(lr_results)) if lr_results is not None else 0)
    return {
        "best_lr": best,
        "gaps": gap_tree(results),
        "lr_at_edge": lr_edges(lr_results, best) if lr_results is not None else {},
        "runs": every,
    }


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample sd (None below 1 and 2 values)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, sd


SUMMED = ("val_loss", "bits_per_unit", "train_tokens_per_sec", "wall_s", "val_loss_carried")


def summary_rows(results: Any) -> list[dict[str, Any]]:
    """One row per (entry, size, steps) of finished runs: ``n_seeds``, ``lr``, params,
    tokens, FLOPs, and ``<metric>_mean`` / ``<metric>_sd`` over seeds of :data:`SUMMED`."""
    rows = _ok(results)
    out = []
    for key in dict.fromkeys((r["entry"], r["size"], r["steps"]) for r in rows):
        mine = [r for r in rows if (r["entry"], r["size"], r["steps"]) == key]
        first = mine[0]
        row = {"entry": key[0], "size": key[1], "steps": key[2], "n_seeds": len(mine)}
        row.update({k: first.get(k) for k in ("model", "lr", "params", "tokens", "flops", "unit")})
        for metric in SUMMED:
            values = [float(r[metric]) for r in mine if r.get(metric) is not None]
            row[f"{metric}_mean"], row[f"{metric}_sd"] = _mean_sd(values)
        out.append(row)
    return out


def headline_cell(results: Any) -> tuple[str, int]:
    """The (size, steps) the table leads with: GPT's largest size, the longest budget."""
    rows = [r for r in _ok(results) if r["entry"] == REFERENCE]
    if not rows:
        raise PhysllmError("no finished GPT run in the results")
    size = max(rows, key=lambda r: r.get("params") or 0)["size"]
    return str(size), max(r["steps"] for r in rows if r["size"] == size)


def leaderboard_rows(
    results: Any, sweep_rows: Sequence[Mapping[str, Any]] = (), block_size: int | None = None
) -> list[dict[str, Any]]:
    """The README table's rows (keys of :data:`physllm.experiments.leaderboard.ROW_KEYS`,
    plus ``size``, ``n_seeds``, ``val_loss_sd``) at :func:`headline_cell`: means over seeds,
    with the length sweep's speed and memory at ``block_size``."""
    size, steps = headline_cell(results)
    summary = {
        r["entry"]: r for r in summary_rows(results) if (r["size"], r["steps"]) == (size, steps)
    }
    at_block = {
        r["label"]: r for r in sweep_rows if block_size is None or r["length"] == block_size
    }
    variants = {e.name: e.variant for e in all_entries()}
    ref = summary.get(REFERENCE, {})
    rows = []
    for e in all_entries():
        s = summary.get(e.name)
        if s is None:
            continue
        bench = at_block.get(e.name, {})
        rows.append(
            {
                "entry": e.name,
                "model": s["model"],
                "variant": variants.get(e.name, ""),
                "size": size,
                "params": s["params"],
                "params_vs_gpt": s["params"] / ref["params"] if ref.get("params") else None,
                "steps": steps,
                "tokens_seen": s["tokens"],
                "n_seeds": s["n_seeds"],
                "val_loss": s["val_loss_mean"],
                "val_loss_sd": s["val_loss_sd"],
                "val_bpc": s["bits_per_unit_mean"],
                "bpc_unit": s["unit"],
                "train_tokens_per_sec": s["train_tokens_per_sec_mean"],
                "infer_tokens_per_sec": bench.get("decode_tokens_per_sec"),
                "peak_mem_mb": bench.get("peak_mem_mb"),
                "wall_s": s["wall_s_mean"],
                "speed_vs_gpt": bench.get("speed_ratio"),
                "mem_vs_gpt": bench.get("mem_ratio"),
                "carries_state": False,  # evaluate_split: every model scored from a zero state
            }
        )
    return rows


# --------------------------------------------------------------------------- curves

X_AXES = ("tokens", "flops", "time_s")


def run_curve(run_dir: str | os.PathLike, x: str = "tokens") -> tuple[list[float], list[float]]:
    """One run's training loss against ``x``: ``tokens`` (step x tokens per step), ``flops``
    (tokens x metrics.json's flops_per_token) or ``time_s`` (training seconds)."""
    if x not in X_AXES:
        raise PhysllmError(f"x must be one of {', '.join(X_AXES)}, got {x!r}")
    run_dir = Path(run_dir)
    history = json.loads((run_dir / "history.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    per_step = metrics["tokens_seen"] / metrics["steps"]
    per_token = (metrics.get("flops_per_token") or math.nan) if x == "flops" else 1.0
    scale = per_step * per_token
    points = [h for h in history if "train_loss" in h and (x != "time_s" or "time_s" in h)]
    xs = [h["time_s"] if x == "time_s" else h["step"] * scale for h in points]
    return xs, [h["train_loss"] for h in points]


def curves(
    results: Any, runs_dir: str | os.PathLike, size: str, steps: int, x: str = "tokens"
) -> dict[str, list[tuple[list[float], list[float]]]]:
    """``{entry: [(xs, losses) per seed]}`` of the finished runs at ``size`` and ``steps``."""
    out: dict[str, list[tuple[list[float], list[float]]]] = {}
    for r in _ok(results):
        if str(r["size"]) == str(size) and r["steps"] == steps:
            out.setdefault(r["entry"], []).append(run_curve(Path(runs_dir) / r["run_id"], x))
    return out


__all__ = [
    "FINAL_STAGE",
    "PROTOCOLS",
    "SMOKE",
    "best_lrs",
    "curves",
    "gap_tree",
    "headline_cell",
    "leaderboard_rows",
    "load_protocol",
    "lr_edges",
    "protocol_metrics",
    "run_curve",
    "spec_source",
    "summary_rows",
]
