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

Recall at distance (:func:`run_grid`'s ``distance_task``): one run per entry and seed on a
:class:`~physllm.probes.tasks.DistanceRecall`, the block the task's (short) length, scored
in-block (row ``<task>``) and, streamed through the model's decoding state, at a gap of
``k`` times that length for each ``k`` (rows ``<task>@<k>x``, with the same samples scored
with the state dropped after the facts as ``control_accuracy``): :func:`run_distance_probe`.

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
from physllm.experiments.stats import interval, interval_cell, verdict
from physllm.nn import state_nbytes
from physllm.probes.data import EVAL_SEED, ProbeData
from physllm.probes.distance import DistanceEpisodes, has_memory, score_at_distance
from physllm.probes.tasks import MQAR, DistanceRecall, ExactMatch, Task
from physllm.training import TrainConfig, train, train_memory

RESULTS = "results.csv"
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
        if isinstance(task, DistanceRecall) and getattr(cfg.model_config, "segment_len", 0):
            # QLLM's memory tokens learn only where a block holds two segments: half the
            # training length each, so a fact and its query often sit on either side
            segment = max(1, task.seq_len // 2)
            cfg.model_config = dataclasses.replace(cfg.model_config, segment_len=segment)
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
    tally = ExactMatch()
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        tally.add(model(xb)[0], yb)  # logits (B, T, V)
    model.train(was_training)
    return tally.result()


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


def run_distance_probe(
    name: str,
    cfg: TrainConfig,
    task: DistanceRecall,
    label: str,
    factors: Sequence[int] = (1, 2, 4, 8, 16),
    n_eval: int = 128,
    memory_steps: int | None = None,
) -> list[dict[str, Any]]:
    """Train ``cfg`` on ``task`` (gaps inside its length), then, for a memory model (CHopT),
    its memory stage on the task's two-call episodes (:class:`DistanceEpisodes`;
    ``memory_steps``, default the config's, backbone frozen). Rows: ``label`` scored
    in-block (:func:`score`), and ``label@kx`` at a gap of ``k * task.seq_len`` tokens
    (:func:`~physllm.probes.distance.score_at_distance`), with ``control_accuracy`` the
    same samples with the facts' state dropped."""
    result = train(cfg, data=ProbeData(task, cfg.model_config.block_size))
    model = result.model
    base = _row(name, cfg, label, task, result.metrics)
    if has_memory(model):
        mc = cfg.model_config
        steps = mc.memory_steps if memory_steps is None else memory_steps
        stage = dict(batch_size=mc.memory_batch, max_facts=task.n_facts, lr=mc.memory_lr)
        train_memory(model, DistanceEpisodes(task), steps, seed=cfg.seed, progress=False, **stage)
        base["memory_steps"] = steps
    first = {**base, **score(model, task, n_eval, batch_size=cfg.batch_size)}
    first.update(state_bytes(model, task.seq_len))
    first.update(seq_len=task.seq_len, distance=0, settings=json.dumps(task.settings()))
    rows = [first]
    for k in factors:
        at = task.at_distance(k * task.seq_len)
        row = {**base, "task": f"{label}@{k}x", "factor": k, "distance": at.distance}
        row.update(score_at_distance(model, at, n_eval, batch_size=cfg.batch_size))
        control = score_at_distance(model, at, n_eval, batch_size=cfg.batch_size, carry=False)
        row["control_accuracy"] = control["accuracy"]
        row.update(state_bytes(model, at.seq_len))
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


def _clear_for(
    rows: list[dict[str, Any]], run: tuple[str, int, int], labels: Sequence[str]
) -> tuple[list[dict[str, Any]], bool]:
    """Whether ``run`` (entry, seed, steps) already has a row for each of ``labels``; if not,
    the rows without any it has of them: a run scored at other factors (a length run, its
    block sized for them) is another experiment, and its rows give way to this one's."""
    done = {r["task"] for r in rows if (r["entry"], r["seed"], r["steps"]) == run}
    if set(labels) <= done:
        return rows, True
    stale = done & set(labels)
    kept = [
        r for r in rows if not ((r["entry"], r["seed"], r["steps"]) == run and r["task"] in stale)
    ]
    return kept, False


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
    distance_task: str = "",
    distance_factors: Sequence[int] = (1, 2, 4, 8, 16),
    memory_steps: int | None = None,
    **budget: Any,
) -> list[dict[str, Any]]:
    """Every entry x task (``{label: Task}``) x seed, ``steps`` each; plus, when
    ``length_task`` names one of ``tasks``, its length-generalisation runs (block
    ``max(length_factors)`` x its length, scored at each factor). ``distance_task`` names
    a :class:`DistanceRecall` of ``tasks`` run by :func:`run_distance_probe` (block its
    length, scored in-block and at each of ``distance_factors``) instead of :func:`run_probe`.
    Rows accumulate in ``out_dir/results.csv``; a (entry, task, seed, steps) already there
    is skipped. Returns every row of the grid."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS
    rows = read_rows(path)
    for what, name in (("length_task", length_task), ("distance_task", distance_task)):
        if name and name not in tasks:
            raise PhysllmError(f"{what} {name!r} is not one of {', '.join(tasks)}")
    if distance_task and not isinstance(tasks[distance_task], DistanceRecall):
        raise PhysllmError(f"distance_task {distance_task!r} is not a recall_at_distance task")
    # (label, task, factors, kind): one training run per entry and seed each
    plan = [(label, task, (1,), "plain") for label, task in tasks.items() if label != distance_task]
    if length_task:
        plan.append((length_task, tasks[length_task], tuple(length_factors), "length"))
    if distance_task:
        plan.append((distance_task, tasks[distance_task], tuple(distance_factors), "distance"))
    wanted = set()  # (entry, task label) of this grid's rows
    matched: dict[tuple[int, int, bool], dict[str, TrainConfig]] = {}
    for label, task, factors, kind in plan:
        labels = [label] if kind == "plain" else [f"{label}@{k}x" for k in factors]
        if kind == "distance":
            labels.insert(0, label)
        run_name = f"{label}_len" if kind == "length" else label
        block = task.seq_len * (max(factors) if kind == "length" else 1)
        for seed in seeds:
            run_dir = out_dir / "runs" / f"{run_name}_seed{seed}"
            shape = (task.vocab_size, block, isinstance(task, DistanceRecall))
            if shape not in matched:  # matching builds models: once per shape (and QLLM's segments)
                matched[shape] = probe_configs(task, archs, 0, steps, run_dir, block, **budget)
            for name, base in matched[shape].items():
                cfg = dataclasses.replace(
                    base,
                    seed=seed,
                    out_dir=str(run_dir / name),
                    model_config=dataclasses.replace(base.model_config),
                )
                wanted.update((name, lab) for lab in labels)
                rows, finished = _clear_for(rows, (name, seed, steps), labels)
                if finished:
                    continue
                t0 = time.perf_counter()
                if kind == "distance":
                    new = run_distance_probe(name, cfg, task, label, factors, n_eval, memory_steps)
                else:
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


def mqar_curve(
    archs: str | Iterable[str],
    widths: Sequence[int],
    pairs: Sequence[int],
    seq_len: int,
    vocab_size: int,
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 300,
    out_dir: str | os.PathLike = "runs/07_probes/mqar_curve",
    n_eval: int = 256,
    log: Callable[[str], None] | None = print,
    **budget: Any,
) -> list[dict[str, Any]]:
    """Zoology's plot at CPU scale: MQAR accuracy of each entry against the number of
    key-value pairs, at each model width (GPT that wide, every other entry matched to its
    parameter count, as in :func:`probe_configs`). One :func:`run_grid` per width (its rows
    in ``out_dir/width<W>/``, resumable), tasks labelled ``mqar_<P>pairs``; rows gain
    ``width`` and ``n_pairs``."""
    rows = []
    for width in widths:
        tasks = {
            f"mqar_{p}pairs": MQAR(vocab_size=vocab_size, seq_len=seq_len, n_pairs=p) for p in pairs
        }
        width_dir = Path(out_dir) / f"width{width}"
        budget_w = {**budget, "n_embd": width}
        new = run_grid(tasks, archs, seeds, steps, width_dir, n_eval=n_eval, log=log, **budget_w)
        rows += [{**r, "width": width, "n_pairs": tasks[r["task"]].n_pairs} for r in new]
    return rows


def curve_matrix(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`mqar_curve`'s rows as ``{entry: {"w<W>_p<P>": cell}}``, each cell
    :func:`capability_matrix`'s plus ``width`` and ``n_pairs``."""
    rows = list(rows)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for width in sorted({int(r["width"]) for r in rows}):
        matrix = capability_matrix(r for r in rows if int(r["width"]) == width)
        for entry, cells in matrix.items():
            for cell in cells.values():
                n_pairs = cell["settings"]["n_pairs"]
                out.setdefault(entry, {})[f"w{width}_p{n_pairs}"] = {
                    **cell,
                    "width": width,
                    "n_pairs": n_pairs,
                }
    return out


def curve_table(curve: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """:func:`curve_matrix` as a table: (entry, width) x pairs, ``mean [low, high]``."""
    table: dict[tuple[str, int], dict[str, str]] = {}
    for entry, cells in curve.items():
        for c in cells.values():
            table.setdefault((entry, c["width"]), {})[f"{c['n_pairs']} pairs"] = cell_text(c)
    frame = pd.DataFrame(table).T
    frame.index.names = ["entry", "width"]
    return frame[sorted(frame.columns, key=lambda c: int(c.split()[0]))]


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
        matrix.setdefault(entry, {})[task] = {
            **interval_cell([float(r["accuracy"]) for r in mine]),
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


def distance_matrix(
    rows: Iterable[Mapping[str, Any]], label: str = "recall_at_distance"
) -> dict[str, dict[str, dict[str, Any]]]:
    """The rows of :func:`run_distance_probe` as ``{entry: {"in_block": cell, "1x": cell,
    ...}}``: each cell :func:`capability_matrix`'s (accuracy over seeds with its interval,
    chance, settings...) plus ``distance``, ``factor`` and the control (``control_mean``,
    ``control_ci95_low``, ``control_ci95_high``: the facts' state dropped)."""
    mine = [r for r in rows if r["task"] == label or str(r["task"]).startswith(label + "@")]
    matrix = capability_matrix(mine)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for entry, cells in matrix.items():
        for task, cell in cells.items():
            key = "in_block" if task == label else task.split("@", 1)[1]
            runs = [r for r in mine if (r["entry"], r["task"]) == (entry, task)]
            cell = {**cell, "distance": cell["settings"]["distance"] or None}
            cell["factor"] = None if key == "in_block" else int(key.rstrip("x"))
            if key != "in_block":
                c_mean, c_low, c_high = interval([float(r["control_accuracy"]) for r in runs])
                cell.update(control_mean=c_mean, control_ci95_low=c_low, control_ci95_high=c_high)
            out.setdefault(entry, {})[key] = cell
    for entry in out:  # in-block first, then by distance
        out[entry] = dict(sorted(out[entry].items(), key=lambda kv: kv[1]["factor"] or 0))
    return out


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


def cell_text(c: Mapping[str, Any], digits: int = 2) -> str:
    """``mean [low, high]`` of a cell (one seed: the mean alone)."""
    if c["n_seeds"] < 2:
        return f"{c['mean']:.{digits}f}"
    return f"{c['mean']:.{digits}f} [{c['ci95_low']:.{digits}f}, {c['ci95_high']:.{digits}f}]"


def matrix_table(matrix: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """The capability matrix as a table: entry x task, ``mean [low, high]`` per cell."""
    table = {
        entry: {task: cell_text(c) for task, c in tasks.items()} for entry, tasks in matrix.items()
    }
    return pd.DataFrame(table).T


def distance_table(distance: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """:func:`distance_matrix` as a table: entry x (in-block, each distance ``d=...``, each
    control), ``mean [low, high]`` per cell, the controls' means."""
    table: dict[str, dict[str, str]] = {}
    for entry, cells in distance.items():
        row = table.setdefault(entry, {})
        for key, c in cells.items():
            row["in_block" if key == "in_block" else f"d={c['distance']}"] = cell_text(c)
        for key, c in cells.items():
            if key != "in_block":
                row[f"control d={c['distance']}"] = f"{c['control_mean']:.2f}"
    return pd.DataFrame(table).T


__all__ = [
    "EVAL_SEED",
    "accuracy_gaps",
    "PROBE_BUDGET",
    "capability_matrix",
    "cell_text",
    "distance_matrix",
    "distance_table",
    "matrix_table",
    "probe_configs",
    "read_rows",
    "run_distance_probe",
    "run_grid",
    "run_probe",
    "score",
    "state_bytes",
    "write_rows",
]
