"""A notebook's headline gap by the leaderboard's rule, on the notebook's own configs.

Notebooks 01 to 04 train their variants and a matched GPT once, at one seed and at the
preset's learning rate. That single gap is not evidence (DESIGN.md section 8): the
seed alone moves a loss by about 0.01 nats, and a rate tuned for one model handicaps
the other. :func:`seed_gaps` runs the evidence protocol on exactly those configs:

1. a **learning-rate stage**: every config at every rate of ``lrs``, one seed
   (``lr_seed``), the notebook's own budget;
2. a **seeds stage**: new ``seeds`` at the rate each config picked
   (:func:`~physllm.experiments.sweep.pick_lr`: the lowest validation loss, one rule for
   the baseline and every candidate);
3. the gap ``candidate - baseline`` paired by seed (seed ``s`` of both sees the same
   batches), with a Student-t 95% interval
   (:func:`~physllm.experiments.stats.paired_gap`); "better" or "worse" only when it
   excludes 0.

Every run is its own ``python -m physllm train`` process scored by
:func:`physllm.training.evaluate_split` (the whole validation split in fixed blocks), one
row per run in ``out_dir/lr/results.csv`` and ``out_dir/seeds/results.csv``
(:func:`~physllm.experiments.sweep.run_plan`): run the notebook again and the finished
runs are skipped, a killed one continues from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from physllm.errors import PhysllmError
from physllm.experiments.stats import paired_gap
from physllm.experiments.sweep import (
    RUNS,
    Run,
    SweepFailed,
    pick_lr,
    read_results,
    run_config,
    run_plan,
)
from physllm.training import TrainConfig

SIZE = "recipe"  # the notebook's own size: one per grid
DEFAULT_LRS = (3e-4, 1e-3, 3e-3, 1e-2)  # the CPU protocol's rates (experiments/protocol_cpu.toml)
DEFAULT_SEEDS = (1, 2, 3)


def parse_rates(text: str | float | Sequence[float]) -> tuple[float, ...]:
    """``"3e-4,1e-3,3e-3,1e-2"`` (a papermill parameter), one number (``-p gap_lrs 1e-3``
    arrives as a float) or a sequence: positive finite rates."""
    if isinstance(text, (int, float)):
        text = [text]
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        rates = tuple(float(x) for x in items if str(x).strip())
    except ValueError:
        raise PhysllmError(
            f"learning rates must be numbers separated by commas, got {text!r}"
        ) from None
    if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
        raise PhysllmError(f"learning rates must be positive numbers, got {text!r}")
    if len(set(rates)) != len(rates):
        raise PhysllmError(f"learning rates must differ, got {text!r}")
    return rates


def seed_list(n_seeds: int, first: int = DEFAULT_SEEDS[0]) -> tuple[int, ...]:
    """``n_seeds`` seeds from ``first`` (the learning-rate stage uses seed 0)."""
    if not isinstance(n_seeds, int) or isinstance(n_seeds, bool) or n_seeds < 2:
        raise PhysllmError(f"a gap over seeds needs at least 2 seeds, got {n_seeds!r}")
    return tuple(range(first, first + n_seeds))


def stage_plan(
    configs: Mapping[str, TrainConfig],
    lrs: Mapping[str, Sequence[float]],
    seeds: Sequence[int],
    runs_dir: Path,
    threads: int | None = None,
) -> list[tuple[Run, TrainConfig]]:
    """Every (config, seed, rate) of a stage with its config (:func:`run_config`: min_lr =
    lr / 10, warmup at most a tenth of the steps), seed by seed so a partial stage is paired."""
    plan = []
    for seed in seeds:
        for name, cfg in configs.items():
            for lr in lrs[name]:
                run = Run(name, SIZE, seed, lr, cfg.steps)
                run_cfg = run_config(cfg, run, runs_dir)
                if threads is not None:
                    run_cfg = dataclasses.replace(run_cfg, threads=threads)
                plan.append((run, run_cfg))
    return plan


def check_configs(configs: Mapping[str, TrainConfig], baseline: str) -> None:
    """The grid's preconditions: the baseline is there, names are folder-safe, one budget."""
    if baseline not in configs:
        raise PhysllmError(f"no baseline {baseline!r} among the configs ({', '.join(configs)})")
    if len(configs) < 2:
        raise PhysllmError("a gap needs the baseline and at least one other config")
    bad = [n for n in configs if not n or "/" in n or n.startswith(".")]
    if bad:
        raise PhysllmError(f"config names must be folder names, got {bad}")
    budgets = {cfg.steps for cfg in configs.values()}
    if len(budgets) != 1:
        raise PhysllmError(f"every config must train for the same steps, got {sorted(budgets)}")


def seed_gaps(
    configs: Mapping[str, TrainConfig],
    baseline: str = "gpt",
    lrs: str | Sequence[float] = DEFAULT_LRS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    out_dir: str | os.PathLike = "runs/gaps",
    lr_seed: int = 0,
    threads: int | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """The protocol (module docstring) on ``configs`` (name -> the config a notebook
    trained; ``baseline`` among them). Returns ``{"best_lr": {name: rate}, "gaps": {name:
    gap}, "lrs", "seeds", "lr_seed", "steps", "results"}``, each gap
    :func:`~physllm.experiments.stats.paired_gap`'s dict plus ``lr``/``baseline_lr`` and
    the mean ``val_loss``/``baseline_val_loss`` over the seeds. A
    :class:`~physllm.experiments.sweep.SweepFailed` if a run failed."""
    check_configs(configs, baseline)
    rates, seeds = parse_rates(lrs), tuple(seeds)
    if lr_seed in seeds:
        raise PhysllmError(f"the seeds must be new: {lr_seed} already picked the rates")
    out = Path(out_dir)
    best, _, failed = lr_stage(configs, rates, lr_seed, out, threads, log)
    rows = seeds_stage(configs, best, seeds, out, threads, log, failed)
    gaps = {name: gap_at_best(rows, name, baseline, best) for name in configs if name != baseline}
    return {
        "best_lr": best,
        "gaps": gaps,
        "lrs": list(rates),
        "seeds": list(seeds),
        "lr_seed": lr_seed,
        "steps": next(iter(configs.values())).steps,
        "results": str(out / "seeds" / "results.csv"),
    }


def lr_stage(
    configs: Mapping[str, TrainConfig],
    rates: Sequence[float],
    lr_seed: int,
    out: Path,
    threads: int | None = None,
    log: Callable[[str], None] | None = print,
) -> tuple[dict[str, float], list[dict[str, Any]], int]:
    """Stage 1: every config at every rate, seed ``lr_seed``, into ``out/lr/results.csv``.
    Returns each config's picked rate (:func:`~physllm.experiments.sweep.pick_lr`), the
    stage's rows and how many runs failed."""
    path = out / "lr" / "results.csv"
    plan = stage_plan(configs, {n: rates for n in configs}, (lr_seed,), out / RUNS, threads)
    failed = run_plan(plan, path, "lr", log)["failed"]
    rows = read_results(path)
    return {name: pick_lr(rows, name, SIZE) for name in configs}, rows, failed


def seeds_stage(
    configs: Mapping[str, TrainConfig],
    best: Mapping[str, float],
    seeds: Sequence[int],
    out: Path,
    threads: int | None = None,
    log: Callable[[str], None] | None = print,
    failed: int = 0,
) -> list[dict[str, Any]]:
    """Stage 2: every config at its picked rate, each of ``seeds``, into
    ``out/seeds/results.csv``; its finished rows. A :class:`SweepFailed` if a run of either
    stage failed (``failed``: stage 1's count)."""
    plan = stage_plan(configs, {n: (best[n],) for n in configs}, seeds, out / RUNS, threads)
    failed += run_plan(plan, out / "seeds" / "results.csv", "seeds", log)["failed"]
    if failed:
        raise SweepFailed(f"{failed} run(s) failed: their train.log under {out / RUNS} says why")
    return [r for r in read_results(out / "seeds" / "results.csv") if r["status"] == "ok"]


def _mean(rows: Sequence[Mapping[str, Any]], entry: str, lr: float) -> float:
    values = [float(r["val_loss"]) for r in rows if r["entry"] == entry and r["lr"] == lr]
    return sum(values) / len(values) if values else math.nan


def gap_at_best(
    rows: Sequence[Mapping[str, Any]], name: str, baseline: str, best: Mapping[str, float]
) -> dict[str, Any]:
    """:func:`paired_gap` of ``name`` against ``baseline``, each at its picked rate."""
    mine = [
        r
        for r in rows
        if (r["entry"] == name and r["lr"] == best[name])
        or (r["entry"] == baseline and r["lr"] == best[baseline])
    ]
    gap = paired_gap(mine, name, baseline)
    return {
        **gap,
        "lr": best[name],
        "baseline_lr": best[baseline],
        "val_loss": _mean(mine, name, best[name]),
        "baseline_val_loss": _mean(mine, baseline, best[baseline]),
    }


def paired_gaps(
    result: Mapping[str, Any] | None, pairs: Sequence[tuple[str, str]]
) -> dict[str, dict[str, Any]]:
    """Gaps between configs of one :func:`seed_gaps` result other than its baseline (a
    candidate against a control): ``{"a - b": gap_at_best(...)}``, paired by seed, each
    config at the rate it picked. Pairs naming a config the grid did not run are left out;
    no result (a notebook's ``gap_seeds = 0``): ``{}``."""
    if result is None:
        return {}
    rows = [r for r in read_results(result["results"]) if r["status"] == "ok"]
    ran = result["best_lr"]
    return {f"{a} - {b}": gap_at_best(rows, a, b, ran) for a, b in pairs if a in ran and b in ran}


def gap_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """:func:`seed_gaps`'s gaps as table rows (for ``pandas.DataFrame``)."""
    keys = ("lr", "val_loss", "baseline_lr", "baseline_val_loss", "mean", "ci95_low", "ci95_high")
    rows = []
    for name, gap in result["gaps"].items():
        row = {"variant": name, **{k: gap[k] for k in keys}}
        row.update(n_seeds=gap["n_seeds"], verdict=gap["verdict"])
        rows.append(row)
    return rows


__all__ = [
    "DEFAULT_LRS",
    "gap_at_best",
    "gap_rows",
    "paired_gaps",
    "parse_rates",
    "seed_gaps",
    "seed_list",
]
