"""The probe runner: every architecture on every task, over seeds, into one tidy table.

A run is one leaderboard entry (``physllm.experiments.leaderboard``: the registered models
and their variants, each matched to GPT's parameter count at the probe's shape) trained
on one task by the one trainer (``physllm.training.train(cfg, data=ProbeData(task))``),
then scored on held-out samples by :func:`score`: exact-match accuracy of the argmax at
every scored position (the answers), the fraction of samples with every answer right.
A row per (entry, task, seed) goes to ``OUT/results.csv``, rewritten through a temporary
file and a rename after each run; a rerun skips the rows already there (resume).

Length generalisation (:func:`run_grid`'s ``length_factors``): one more run per entry and
seed on ``length_task``, with the model's block ``max(factors)`` times the task's length,
trained at that length and scored at each multiple of it (rows ``<task>@<k>x``). A model
whose positions are learned has never seen the later ones; one without positions (the
context vector) has nothing that depends on length but its state.

:func:`capability_matrix` gives ``{entry: {task: {mean, ci95_low, ci95_high, n_seeds,
chance, settings}}}`` (Student-t interval over seeds, :func:`physllm.experiments.stats.interval`).
:func:`state_bytes` is what a model carries from one decoding step to the next at length T.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from physllm.arch import LanguageModel, TransformerShape
from physllm.errors import PhysllmError
from physllm.experiments import leaderboard as lb
from physllm.experiments.stats import interval, verdict
from physllm.nn import state_nbytes
from physllm.probes.data import ProbeData
from physllm.probes.tasks import IGNORE, Task
from physllm.training import TrainConfig, train

RESULTS = "results.csv"
EVAL_SEED = 2 << 40  # held-out samples: a seed stream neither training split draws from
# The probe's shape and budget (Zoology's MQAR sizing, scaled to a CPU): a 2-layer, 64-wide
# GPT and every entry matched to its parameter count; AdamW at the recipe's betas.
PROBE_BUDGET: dict[str, Any] = dict(
    n_layer=2,
    n_head=2,
    n_embd=64,
    dropout=0.0,
    batch_size=64,
    lr=3e-3,
    min_lr=3e-4,
    weight_decay=0.1,
    eval_iters=2,
    final_eval_blocks=2,
    tensorboard=False,
)


def probe_configs(
    task: Task,
    archs: str | Iterable[str] = "all",
    seed: int = 0,
    steps: int = 300,
    out_dir: str | os.PathLike = "runs/07_probes",
    block_size: int | None = None,
    **budget: Any,
) -> dict[str, TrainConfig]:
    """``{entry: TrainConfig}`` for ``task``: the leaderboard's entries (``archs``: "all" or
    names; gpt always) at :data:`PROBE_BUDGET` (``budget`` overrides it), GPT's parameter
    count matched, vocabulary the task's, block ``block_size`` (default: the task's length),
    warmup a tenth of ``steps``, one evaluation at the end. Samples are independent, so a
    model that can carry its state between blocks does not (``carry_state=False``)."""
    values = {**PROBE_BUDGET, **budget}
    values.setdefault("warmup_steps", max(1, steps // 10))
    values.setdefault("eval_interval", steps)
    values["block_size"] = block_size or task.seq_len
    configs = lb.build_configs(
        "cpu", task.vocab_size, lb.select_entries(archs), out_dir, steps=steps, seed=seed, **values
    )
    for cfg in configs.values():
        if getattr(cfg.model_config, "carry_state", False):
            cfg.model_config = dataclasses.replace(cfg.model_config, carry_state=False)
    return configs


@torch.no_grad()
def score(
    model: LanguageModel, task: Task, n: int = 256, seed: int = EVAL_SEED, batch_size: int = 64
) -> dict[str, float]:
    """Exact match on ``n`` held-out samples of ``task``: ``accuracy`` (scored positions whose
    argmax is the answer), ``exact`` (samples with every answer right), ``n_scored``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x, y = task.generate(n, seed)  # (n, T) each
    right = all_right = scored = 0
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        logits, _ = model(xb)  # (B, T, V)
        mask = yb != IGNORE
        hit = (logits.argmax(-1) == yb) & mask
        right += int(hit.sum())
        scored += int(mask.sum())
        all_right += int((hit.sum(1) == mask.sum(1)).sum())
    model.train(was_training)
    return {"accuracy": right / max(1, scored), "exact": all_right / n, "n_scored": scored}


@torch.no_grad()
def state_bytes(model: LanguageModel, seq_len: int) -> dict[str, Any]:
    """What ``model`` keeps between decoding steps after ``seq_len`` tokens (batch 1).

    Measured from ``decode_step``'s state: a KV cache (GPT: keys and values of every
    position, plus its token window; NGT, QLLM and the Hamiltonian model: their
    keys and values and whatever else a step reads, see each model; Hopfield: its
    backbone's, plus the bank's state it reads), or a recurrent state (the context
    vector's vectors). Returns ``{state_bytes, state_how}``.
    """
    device = next(model.parameters()).device
    ids = torch.zeros(1, seq_len, dtype=torch.long, device=device)
    _, state = model.decode_step(ids)
    size, has_kv, has_float = state_nbytes(state)
    if has_kv:
        return {"state_bytes": size, "state_how": "kv cache (measured)"}
    if has_float:
        return {"state_bytes": size, "state_how": "recurrent state (measured)"}
    cfg = model.config
    if isinstance(cfg, TransformerShape):
        T = min(seq_len, cfg.block_size)
        return {"state_bytes": 2 * cfg.n_layer * T * cfg.n_embd * 4, "state_how": "kv (analytic)"}
    return {"state_bytes": size, "state_how": "token window (measured)"}


def _row(
    name: str, cfg: TrainConfig, label: str, task: Task, metrics: Mapping[str, Any]
) -> dict[str, Any]:
    """The columns every row of one run shares."""
    return {
        "entry": name,
        "model": cfg.model,
        "task": label,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "lr": cfg.lr,
        "params": metrics["params"],
        "train_len": task.seq_len,
        "block_size": cfg.model_config.block_size,
        "train_s": metrics["wall_s"],
        "chance": task.chance(),
    }


def run_probe(
    name: str,
    cfg: TrainConfig,
    task: Task,
    label: str,
    factors: Sequence[int] = (1,),
    n_eval: int = 256,
) -> list[dict[str, Any]]:
    """Train ``cfg`` on ``task`` and score it at ``task.seq_len * k`` for each ``k`` in
    ``factors``; one row each (task ``label``, or ``label@kx`` when scoring at several)."""
    result = train(cfg, data=ProbeData(task, cfg.model_config.block_size))
    base = _row(name, cfg, label, task, result.metrics)
    rows = []
    for k in factors:
        at = task.at_length(task.seq_len * k)
        row = {**base, "task": label if tuple(factors) == (1,) else f"{label}@{k}x"}
        row.update(score(result.model, at, n_eval, batch_size=cfg.batch_size))
        row.update(state_bytes(result.model, at.seq_len))
        row.update(seq_len=at.seq_len, settings=json.dumps(at.settings()))
        rows.append(row)
    return rows


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """results.csv's rows ([] when there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    return pd.read_csv(path).to_dict("records")


def write_rows(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Every row to ``path`` through a temporary file and a rename (never a torn table)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pd.DataFrame(list(rows)).to_csv(tmp, index=False)
    os.replace(tmp, path)


def run_grid(
    tasks: Mapping[str, Task],
    archs: str | Iterable[str] = "all",
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 300,
    out_dir: str | os.PathLike = "runs/07_probes",
    length_task: str = "",
    length_factors: Sequence[int] = (1, 2, 4),
    n_eval: int = 256,
    log: Callable[[str], None] | None = print,
    **budget: Any,
) -> list[dict[str, Any]]:
    """Every entry x task (``{label: Task}``) x seed, ``steps`` each; plus, when
    ``length_task`` names one of ``tasks``, its length-generalisation runs (block
    ``max(length_factors)`` x its length, scored at each factor). Rows (:func:`run_probe`)
    accumulate in ``out_dir/results.csv``; a (entry, task, seed, steps) already there is
    skipped. Returns every row of the grid."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS
    rows = read_rows(path)
    plan = [(label, task, (1,)) for label, task in tasks.items()]
    if length_task:
        if length_task not in tasks:
            raise PhysllmError(f"length_task {length_task!r} is not one of {', '.join(tasks)}")
        plan.append((length_task, tasks[length_task], tuple(length_factors)))
    wanted = set()  # (entry, task label) of this grid's rows
    matched: dict[tuple[int, int], dict[str, TrainConfig]] = {}
    for label, task, factors in plan:
        labels = [label] if factors == (1,) else [f"{label}@{k}x" for k in factors]
        run_name = label if factors == (1,) else f"{label}_len"
        for seed in seeds:
            run_dir = out_dir / "runs" / f"{run_name}_seed{seed}"
            block = task.seq_len * max(factors)
            if (task.vocab_size, block) not in matched:  # matching builds models: once per shape
                matched[task.vocab_size, block] = probe_configs(
                    task, archs, 0, steps, run_dir, block, **budget
                )
            for name, base in matched[task.vocab_size, block].items():
                cfg = dataclasses.replace(
                    base,
                    seed=seed,
                    out_dir=str(run_dir / name),
                    model_config=dataclasses.replace(base.model_config),
                )
                wanted.update((name, lab) for lab in labels)
                key = (name, labels[0], seed, steps)
                if any((r["entry"], r["task"], r["seed"], r["steps"]) == key for r in rows):
                    continue
                t0 = time.perf_counter()
                new = run_probe(name, cfg, task, label, factors, n_eval)
                rows += new
                write_rows(path, rows)
                if log:
                    accs = " ".join(f"{r['task']} {r['accuracy']:.3f}" for r in new)
                    log(f"{name:<22} seed {seed}  {accs}  ({time.perf_counter() - t0:.0f} s)")
    return [
        r
        for r in rows
        if (r["entry"], r["task"]) in wanted and r["steps"] == steps and r["seed"] in seeds
    ]


def _chance_high(chance: float, n_scored: int) -> float:
    """The upper end of a uniform guesser's 95% range on ``n_scored`` answers."""
    return chance + 1.96 * math.sqrt(chance * (1 - chance) / max(1, n_scored))


def capability_matrix(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{entry: {task: {mean, ci95_low, ci95_high, n_seeds, chance, chance_high, settings,
    ...}}}``: accuracy over seeds with its Student-t 95% interval (NaN bounds under two
    seeds); ``chance_high``: the most a uniform guesser scores on as many answers (95%),
    since a constant answer scores a little above chance on a finite held-out set."""
    cells: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["entry"], r["task"]), []).append(r)
    matrix: dict[str, dict[str, dict[str, Any]]] = {}
    for (entry, task), mine in cells.items():
        mean, low, high = interval([float(r["accuracy"]) for r in mine])
        matrix.setdefault(entry, {})[task] = {
            "mean": mean,
            "ci95_low": low,
            "ci95_high": high,
            "n_seeds": len(mine),
            "seeds": sorted(int(r["seed"]) for r in mine),
            "chance": float(mine[0]["chance"]),
            # what a guesser could score on this many answers (95%, normal approximation)
            "chance_high": _chance_high(float(mine[0]["chance"]), int(mine[0]["n_scored"])),
            "exact_mean": sum(float(r["exact"]) for r in mine) / len(mine),
            "params": int(mine[0]["params"]),
            "state_bytes": int(mine[0]["state_bytes"]),
            "state_how": mine[0]["state_how"],
            "steps": int(mine[0]["steps"]),
            "settings": json.loads(mine[0]["settings"]),
        }
    return matrix


def accuracy_gaps(rows: Iterable[Mapping[str, Any]], baseline: str = "gpt") -> list[dict[str, Any]]:
    """Each entry's accuracy minus ``baseline``'s on each task, paired by seed, with the
    Student-t 95% interval; ``verdict`` "better"/"worse" only when it excludes 0."""
    acc = {(r["entry"], r["task"], int(r["seed"])): float(r["accuracy"]) for r in rows}
    out = []
    for entry, task in sorted({(e, t) for e, t, _ in acc if e != baseline}):
        seeds = sorted(s for e, t, s in acc if (e, t) == (entry, task) and (baseline, t, s) in acc)
        if not seeds:
            continue
        mean, low, high = interval([acc[entry, task, s] - acc[baseline, task, s] for s in seeds])
        out.append(
            {
                "entry": entry,
                "task": task,
                "gap": mean,
                "ci95_low": low,
                "ci95_high": high,
                "n_seeds": len(seeds),
                "verdict": verdict(low, high, lower_is_better=False),
            }
        )
    return out


def matrix_table(matrix: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """The capability matrix as a table: entry x task, ``mean [low, high]`` per cell."""

    def cell(c: Mapping[str, Any]) -> str:
        if c["n_seeds"] < 2:
            return f"{c['mean']:.2f}"
        return f"{c['mean']:.2f} [{c['ci95_low']:.2f}, {c['ci95_high']:.2f}]"

    table = {entry: {task: cell(c) for task, c in tasks.items()} for entry, tasks in matrix.items()}
    return pd.DataFrame(table).T


__all__ = [
    "EVAL_SEED",
    "accuracy_gaps",
    "PROBE_BUDGET",
    "capability_matrix",
    "matrix_table",
    "probe_configs",
    "read_rows",
    "run_grid",
    "run_probe",
    "score",
    "state_bytes",
    "write_rows",
]
