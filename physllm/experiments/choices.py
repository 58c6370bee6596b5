"""Choosing between two forms of one leaderboard entry by loss at equal wall-clock.

Some design choices trade quality per step for speed: the Hamiltonian model's
velocity-Verlet layers evaluate the force twice, position Verlet once; the context
vector's hidden-read gates run a per-token loop, input-read gates a parallel scan.
Loss at equal *steps* hides the trade, tokens/s alone ignores quality. The question a
user has is which form reaches the lower validation loss in the same time, and the
answer follows the evidence protocol (DESIGN.md section 8,
:mod:`physllm.experiments.gaps`):

1. **learning-rate stage**: the reference form and the candidate, each at every rate of
   ``lrs``, one seed, ``steps`` steps, every run its own process;
2. **speed**: each form's training tokens/s, the median over those runs (the same
   machine, the same budget, run one after the other), gives the candidate's steps at equal
   wall-clock, ``steps_equal_time = round(steps * tok/s_candidate / tok/s_reference)``;
3. **seeds stage**: new seeds at each form's picked rate: the reference at ``steps``, the
   candidate at ``steps`` (equal steps) and at ``steps_equal_time`` (equal time);
4. **gaps** ``candidate - reference`` paired by seed, Student-t 95% interval, "better" or
   "worse" only when it excludes 0 (:func:`physllm.experiments.stats.verdict`).

The rule (:func:`decide`): the candidate replaces the reference only when its
equal-time gap is "better"; otherwise the reference stays, and the report says whether
the gap was "worse" or "not resolved". The seeds stage's actual wall seconds are
reported beside it, so a reader can check that "equal time" held.

``python -m physllm choose --entry hamiltonian --field integrator --reference velocity
--candidate position`` runs it and writes ``OUT/choice.json`` and ``OUT/choice.txt``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from physllm.bench import parse_model_spec
from physllm.data import TokenData
from physllm.errors import PhysllmError
from physllm.experiments.gaps import DEFAULT_LRS, lr_stage, parse_rates, seeds_stage
from physllm.experiments.leaderboard import build_configs, recipe, select_entries
from physllm.experiments.stats import interval_cell, per_seed, verdict
from physllm.training import TrainConfig

REFERENCE, CANDIDATE, EQUAL_TIME = "reference", "candidate", "candidate_equal_time"


def form_configs(
    entry: str, field: str, values: tuple[str, str], preset: str = "cpu", **budget: Any
) -> dict[str, TrainConfig]:
    """The leaderboard's config of ``entry`` (on the preset's corpus, or ``budget``'s) with
    ``field`` set to the reference's and the candidate's value (text, read as the config
    field's type), each re-matched to GPT's parameter count: ``{reference, candidate}``."""
    (base,) = [e for e in select_entries([entry]) if e.name == entry]
    shared = {**recipe(preset), **budget}
    data = TokenData.load(shared["corpus"], shared["tokenizer"], shared.get("max_chars", 0))
    vocab_size = data.tokenizer.vocab_size
    configs = {}
    for name, text in zip((REFERENCE, CANDIDATE), values):
        _, parsed = parse_model_spec(f"{base.model}:{field}={text}")
        form = dataclasses.replace(base, overrides={**base.overrides, **parsed})
        (configs[name],) = build_configs(preset, vocab_size, [form], **budget).values()
    if configs[REFERENCE].model_config == configs[CANDIDATE].model_config:
        raise PhysllmError(f"{field}={values[0]!r} and {values[1]!r} give the same model")
    return configs


def median_speed(rows: Sequence[Mapping[str, Any]], name: str) -> float:
    """The median training tokens/s of ``name``'s finished runs: one run slowed by
    something else on the machine does not move it."""
    speeds = sorted(float(r["train_tokens_per_sec"]) for r in rows if r["entry"] == name)
    if not speeds:
        raise PhysllmError(f"no finished runs of {name!r} to measure its speed from")
    mid = len(speeds) // 2
    return speeds[mid] if len(speeds) % 2 else (speeds[mid - 1] + speeds[mid]) / 2


def paired(rows: Sequence[Mapping[str, Any]], a: str, b: str, metric: str) -> dict[str, Any]:
    """``a - b`` in ``metric``, paired by seed (the two may differ in steps)."""
    ours, base = (per_seed(rows, n, metric, n) for n in (a, b))
    seeds = sorted(set(ours) & set(base))
    cell = interval_cell([ours[s] - base[s] for s in seeds])
    return {**cell, "verdict": verdict(cell["ci95_low"], cell["ci95_high"])}


def decide(equal_time: Mapping[str, Any]) -> str:
    """The candidate when its equal-time gap is resolved in its favour, else the reference."""
    return CANDIDATE if equal_time["verdict"] == "better" else REFERENCE


def equal_time_choice(
    configs: Mapping[str, TrainConfig],
    lrs: str | Sequence[float] = DEFAULT_LRS,
    seeds: Sequence[int] = (1, 2, 3),
    out_dir: str | os.PathLike = "runs/choices",
    lr_seed: int = 0,
    threads: int | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """The protocol of the module docstring on ``{reference, candidate}`` configs (the same
    steps). Returns the rates, speeds, steps, the two gaps, the wall seconds and the choice."""
    if set(configs) != {REFERENCE, CANDIDATE}:
        raise PhysllmError(f"configs must be {REFERENCE!r} and {CANDIDATE!r}, got {list(configs)}")
    steps = configs[REFERENCE].steps
    if configs[CANDIDATE].steps != steps:
        raise PhysllmError("the reference and the candidate must start from the same steps")
    rates, seeds, out = parse_rates(lrs), tuple(seeds), Path(out_dir)
    if lr_seed in seeds:
        raise PhysllmError(f"the seeds must be new: {lr_seed} already picked the rates")
    best, lr_rows, failed = lr_stage(configs, rates, lr_seed, out, threads, log)
    finished = [r for r in lr_rows if r["status"] == "ok"]
    speed = {name: median_speed(finished, name) for name in configs}
    equal_steps = max(1, round(steps * speed[CANDIDATE] / speed[REFERENCE]))
    final = {**configs, EQUAL_TIME: dataclasses.replace(configs[CANDIDATE], steps=equal_steps)}
    best[EQUAL_TIME] = best[CANDIDATE]  # the rule picks at the shortest budget
    mine = {(n, best[n], final[n].steps) for n in final}
    rows = [
        r
        for r in seeds_stage(final, best, seeds, out, threads, log, failed)
        if (r["entry"], r["lr"], r["steps"]) in mine
    ]
    gaps = {
        "equal_steps": paired(rows, CANDIDATE, REFERENCE, "val_loss"),
        "equal_time": paired(rows, EQUAL_TIME, REFERENCE, "val_loss"),
    }
    per_form = {
        n: {
            "lr": best[n],
            "steps": final[n].steps,
            "val_loss": interval_cell([float(r["val_loss"]) for r in rows if r["entry"] == n]),
            "wall_s": interval_cell([float(r["wall_s"]) for r in rows if r["entry"] == n]),
        }
        for n in final
    }
    return {
        "forms": per_form,
        "lr_stage_tokens_per_sec": speed,
        "speed_ratio": speed[CANDIDATE] / speed[REFERENCE],
        "gaps": gaps,
        "choice": decide(gaps["equal_time"]),
        "lrs": list(rates),
        "seeds": list(seeds),
        "lr_seed": lr_seed,
        "results": str(out / "seeds" / "results.csv"),
    }


def format_choice(result: Mapping[str, Any], what: Mapping[str, Any]) -> str:
    """The choice as a short text table: one row per form, then the two gaps and the rule."""
    names = {REFERENCE: what["reference"], CANDIDATE: what["candidate"]}
    names[EQUAL_TIME] = f"{what['candidate']} (equal time)"
    lines = [
        f"# {what['date']}, physllm {what['git_sha']}, {what['hardware']}; {what['corpus']}, "
        f"preset {what['preset']}, size {what['size'] or 'the recipe width'}",
        f"# {what['entry']}: {what['field']} = {what['reference']} (reference) or "
        f"{what['candidate']} (candidate); {len(result['seeds'])} seeds, rates picked from "
        f"{', '.join(f'{r:g}' for r in result['lrs'])} (seed {result['lr_seed']})",
        f"# speed from the lr stage: candidate / reference tokens/s = {result['speed_ratio']:.2f}",
        f"{'form':<32}{'lr':>8}{'steps':>7}{'val_loss':>10}{'wall_s':>9}",
    ]
    for n, f in result["forms"].items():
        lines.append(
            f"{names[n]:<32}{f['lr']:>8g}{f['steps']:>7}{f['val_loss']['mean']:>10.4f}"
            f"{f['wall_s']['mean']:>9.1f}"
        )
    for label, g in result["gaps"].items():
        lines.append(
            f"gap candidate - reference at {label.replace('_', ' ')}: {g['mean']:+.4f} "
            f"[{g['ci95_low']:+.4f}, {g['ci95_high']:+.4f}] ({g['n_seeds']} seeds): {g['verdict']}"
        )
    chosen = names[result["choice"]]
    lines.append(f"choice (the candidate only when better at equal time): {chosen}")
    return "\n".join(lines)


def write_choice(result: Mapping[str, Any], what: Mapping[str, Any], out: Path) -> str:
    """``out/choice.json`` (what was compared and the result) and ``out/choice.txt``."""
    out.mkdir(parents=True, exist_ok=True)
    text = format_choice(result, what)
    (out / "choice.json").write_text(json.dumps({**what, **result}, indent=1, default=str))
    (out / "choice.txt").write_text(text + "\n")
    return text


__all__ = [
    "CANDIDATE",
    "EQUAL_TIME",
    "REFERENCE",
    "decide",
    "equal_time_choice",
    "form_configs",
    "format_choice",
    "write_choice",
]
