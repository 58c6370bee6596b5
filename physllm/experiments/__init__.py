"""Experiments over every architecture (layer 7: above training and bench, below reporting):
the leaderboard (:mod:`physllm.experiments.leaderboard`), the grid runner behind
``python -m physllm sweep`` (:mod:`physllm.experiments.sweep`: one ``results.csv`` row
per run) and the paired gap to GPT with its 95% interval (:mod:`physllm.experiments.stats`)."""

from physllm.experiments.stats import gap_table, paired_gap
from physllm.experiments.sweep import (
    COLUMNS,
    SweepSpec,
    load_specs,
    pick_lr,
    read_results,
    run_stages,
    run_sweep_grid,
)

__all__ = [
    "COLUMNS",
    "SweepSpec",
    "gap_table",
    "load_specs",
    "paired_gap",
    "pick_lr",
    "read_results",
    "run_stages",
    "run_sweep_grid",
]
