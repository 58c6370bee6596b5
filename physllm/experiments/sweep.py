"""The experiment runner: a grid of training runs from one declarative spec, into one
tidy ``results.csv``.

A :class:`SweepSpec` names leaderboard entries, sizes, seeds, learning rates and
budgets (optimizer steps); the grid is every combination, one :class:`Run` each.
Every run's :class:`~physllm.training.TrainConfig` is the leaderboard's
(:func:`physllm.experiments.leaderboard.build_configs`: one recipe per preset, every
entry's parameter count matched to GPT's, per size), then the run's own values::

    seed, lr, steps        the grid point
    min_lr = lr / 10       nanoGPT's rule, the same for every entry
    warmup_steps           the recipe's, at most a tenth of the run

Each run trains in its own process (``python -m physllm train`` with every field as
a flag, its command line in ``runs/<run id>/command.txt``, its output in
``train.log``) into ``OUT/runs/<run id>/``; the run id is the grid point
(``gpt_0.2M_seed1_lr0.001_steps400``). A finished run appends one row to
``OUT/results.csv`` (:data:`COLUMNS`), which is rewritten through a temporary
file and a rename, so a kill never leaves half a row. Running the spec again
skips every run already in results.csv, and a run whose folder holds a
checkpoint but no row (killed mid-run) continues from it (``--resume``). A run
that fails (diverges, crashes) gets a row with status ``failed`` and no losses;
``retry_failed`` runs it again.

The learning-rate rule (:func:`pick_lr`), the same for the baseline and every
candidate: at the shortest budget, the rate with the lowest mean validation loss
over seeds, among the rates whose every seed finished. A spec with
``lrs = "best"`` reads it from another sweep's results.csv (``lr_from``); in a
TOML file with stages, ``lr_from`` may name an earlier stage
(``experiments/protocol_cpu.toml``)::

    preset = "cpu"                           # keys every stage shares
    entries = "all"
    out_dir = "runs/protocol_cpu"            # each stage writes OUT/<stage>/results.csv
    [sizes]
    "0.2M" = { n_embd = 64 }
    [stages.lr]                              # a stage's keys replace the shared ones
    seeds = [0]
    lrs = [3e-4, 1e-3, 3e-3]
    steps = [400]
    [stages.seeds]
    seeds = [1, 2, 3]
    lrs = "best"
    lr_from = "lr"
    steps = [400, 2000]
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from physllm.args import flag
from physllm.data import TokenData
from physllm.errors import PhysllmError
from physllm.experiments.leaderboard import (
    PARAM_TOLERANCE,
    RECIPES,
    REFERENCE,
    SHAPE_FIELDS,
    build_configs,
    recipe,
    select_entries,
)
from physllm.experiments.stats import as_rows, format_gaps, gap_table
from physllm.models import count_params
from physllm.progress import progress_bar
from physllm.training import TrainConfig
from physllm.training.checkpoint import find_checkpoint
from physllm.training.config import train_field_names

try:  # POSIX; elsewhere two sweeps sharing an out_dir are not detected
    import fcntl
except ImportError:
    fcntl = None

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli is the same parser (requirements.txt installs it there)
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

RESULTS = "results.csv"
RUNS = "runs"
RUN_RECORD = (
    "sweep_run.json"  # the run's grid point and config, checked when it is skipped or resumed
)
MIN_LR_RATIO = 10  # min_lr = lr / 10 (nanoGPT's rule; the cosine decays to it)

# results.csv: the columns first, then what identifies and qualifies a row.
COLUMNS = (
    "entry",
    "size",
    "params",
    "seed",
    "lr",
    "steps",
    "tokens",
    "flops",  # training FLOPs: metrics.json's flops_per_token x tokens
    "val_loss",
    "val_loss_reset",  # recurrent models: every block from the initial state
    "val_loss_carried",  # recurrent models: state carried in from the text before
    "bits_per_unit",
    "train_tokens_per_sec",
    "wall_s",
    "git_sha",
    "run_id",
    "model",
    "unit",  # of bits_per_unit: char or byte
    "corpus",
    "tokenizer",
    "status",  # ok | failed
    "error",  # a failed run's last log line
)
INT_COLUMNS = {"params", "seed", "steps", "tokens"}
FLOAT_COLUMNS = {
    "lr",
    "flops",
    "val_loss",
    "val_loss_reset",
    "val_loss_carried",
    "bits_per_unit",
    "train_tokens_per_sec",
    "wall_s",
}

# Fields a spec's overrides and sizes may not set: the grid and the spec's own keys set them.
RESERVED = {
    *("seed", "lr", "min_lr", "steps", "out_dir", "resume", "corpus", "tokenizer", "model"),
    "stop_after",  # a row's steps are the steps trained: every run goes to its end
}
# Config fields that do not change what a run computes: not compared on skip or resume.
VOLATILE = {"out_dir", "resume", "threads", "progress", "tensorboard", "stop_after"}
SIZE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")  # a folder-name piece without "_"
SPEC_KEYS = (
    "entries",
    "sizes",
    "seeds",
    "lrs",
    "steps",
    "preset",
    "corpus",
    "tokenizer",
    "out_dir",
    "overrides",
    "lr_from",
    "resume",
    "name",
)


class SweepFailed(PhysllmError):
    """Some runs of a sweep failed (their rows say so); the others are in results.csv."""

    exit_code = 1


# --------------------------------------------------------------------------- the spec


def _list(value: Any, what: str, kind: type, check: Callable[[Any], bool], rule: str) -> tuple:
    """``value`` (a list, or one value) as a non-empty tuple of distinct ``kind``s passing ``check``."""
    items = list(value) if isinstance(value, list | tuple) else [value]
    if not items:
        raise PhysllmError(f"sweep spec: {what} must not be empty")
    for v in items:
        good_type = isinstance(v, kind) and not isinstance(v, bool)
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            good_type = True  # lr = 1 in TOML is an integer
        if not good_type or not check(v):
            raise PhysllmError(f"sweep spec: {what} must be {rule}, got {v!r}")
    if len(set(items)) != len(items):
        raise PhysllmError(f"sweep spec: {what} has duplicates: {items}")
    return tuple(kind(v) for v in items)


def _overrides(values: Any, what: str) -> dict[str, Any]:
    """A table of config overrides: known names (budget fields), not ones the sweep sets."""
    if not isinstance(values, Mapping):
        raise PhysllmError(f"sweep spec: {what} must be a table of config fields, got {values!r}")
    allowed = train_field_names() | {"block_size", "dropout", *SHAPE_FIELDS}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise PhysllmError(
            f"sweep spec: {what} has unknown field(s) {', '.join(unknown)} "
            f"(allowed: training fields, block_size, dropout, {', '.join(SHAPE_FIELDS)})"
        )
    reserved = sorted(set(values) & RESERVED)
    if reserved:
        raise PhysllmError(
            f"sweep spec: {what} may not set {', '.join(reserved)} (the grid or the spec's own keys do)"
        )
    return dict(values)


@dataclass
class SweepSpec:
    """One grid: every entry x size x seed x learning rate x budget (``steps``).

    ``sizes``: size name -> model overrides (``{"0.2M": {"n_embd": 64}}``), parameter
    matching re-applied per size. ``lrs``: rates, or ``"best"`` to take each entry's
    and size's from the results.csv at ``lr_from`` (:func:`pick_lr`). ``overrides``:
    config fields for every run (batch_size, block_size, eval_iters...). ``corpus`` and
    ``tokenizer``: "" for the recipe's. Runs go to ``out_dir/runs/``, rows to
    ``out_dir/results.csv``. ``resume``: continue a killed run from its checkpoint
    (else start it again).
    """

    entries: tuple[str, ...] = ("gpt",)
    sizes: dict[str, dict[str, Any]] = field(default_factory=lambda: {"recipe": {}})
    seeds: tuple[int, ...] = (1337,)
    lrs: tuple[float, ...] | str = (1e-3,)
    steps: tuple[int, ...] = (400,)
    preset: str = "cpu"
    corpus: str = ""
    tokenizer: str = ""
    out_dir: str = "runs/sweep"
    overrides: dict[str, Any] = field(default_factory=dict)
    lr_from: str = ""
    resume: bool = True
    name: str = ""  # the stage's name in a staged spec file

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> SweepSpec:
        """Normalise and check every key; a PhysllmError names the first bad one."""
        if self.preset not in RECIPES:
            raise PhysllmError(
                f"sweep spec: no preset {self.preset!r} (known: {', '.join(RECIPES)})"
            )
        names = self.entries
        if isinstance(names, list | tuple) and not names:
            raise PhysllmError("sweep spec: entries must not be empty")
        if not isinstance(names, str | list | tuple) or not all(isinstance(n, str) for n in names):
            raise PhysllmError(
                f'sweep spec: entries must be "all" or a list of names, got {names!r}'
            )
        self.entries = tuple(e.name for e in select_entries(names))  # unknown names fail here
        self.seeds = _list(
            self.seeds, "seeds", int, lambda s: 0 <= s < 2**32, "integers in [0, 2^32)"
        )
        self.steps = _list(self.steps, "steps", int, lambda s: s >= 1, "positive integers")
        if self.lrs == "best":
            if not self.lr_from:
                raise PhysllmError(
                    'sweep spec: lrs = "best" needs lr_from (a results.csv or a stage)'
                )
        else:
            ok = lambda v: math.isfinite(v) and v > 0  # noqa: E731
            self.lrs = _list(self.lrs, "lrs", float, ok, 'positive numbers (or "best")')
            if self.lr_from:
                raise PhysllmError('sweep spec: lr_from is read only with lrs = "best"')
        if not isinstance(self.sizes, Mapping) or not self.sizes:
            raise PhysllmError(
                "sweep spec: sizes must be a non-empty table of name = { overrides }"
            )
        for size, changes in self.sizes.items():
            if not SIZE_NAME.match(str(size)):
                raise PhysllmError(
                    f"sweep spec: size name {size!r} must be letters, digits, '.', '+', '-'"
                )
            _overrides(changes, f"size {size!r}")
        self.sizes = {str(k): dict(v) for k, v in self.sizes.items()}
        self.overrides = _overrides(self.overrides, "overrides")
        for key in ("corpus", "tokenizer", "out_dir", "lr_from", "name"):
            if not isinstance(getattr(self, key), str):
                raise PhysllmError(
                    f"sweep spec: {key} must be a string, got {getattr(self, key)!r}"
                )
        if not self.out_dir.strip():
            raise PhysllmError("sweep spec: out_dir must not be empty")
        if not isinstance(self.resume, bool):
            raise PhysllmError(f"sweep spec: resume must be true or false, got {self.resume!r}")
        return self

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SweepSpec:
        """A spec from a mapping (a TOML table): unknown keys are an error."""
        unknown = sorted(set(values) - set(SPEC_KEYS))
        if unknown:
            raise PhysllmError(
                f"sweep spec: unknown key(s) {', '.join(unknown)} (known: {', '.join(SPEC_KEYS)}, stages)"
            )
        return cls(**values)

    @property
    def results_path(self) -> Path:
        return Path(self.out_dir) / RESULTS

    @property
    def runs_dir(self) -> Path:
        return Path(self.out_dir) / RUNS


def read_spec_file(path: str | os.PathLike) -> dict[str, Any]:
    """A TOML file's tables; a PhysllmError (one line) if missing or malformed."""
    if tomllib is None:
        raise PhysllmError("reading a TOML spec needs Python 3.11, or `pip install tomli`")
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PhysllmError(f"sweep spec {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PhysllmError(f"sweep spec {path}: cannot read it ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise PhysllmError(f"sweep spec {path}: not valid TOML ({err})") from None


def load_specs(
    source: str | os.PathLike | Mapping[str, Any],
    out_dir: str | None = None,
    stage: str | None = None,
) -> list[SweepSpec]:
    """The spec(s) of a TOML file or a mapping, in order. With a ``stages`` table each
    stage is the shared keys updated by its own, writing to ``out_dir/<stage>``; its
    ``lr_from`` may name an earlier stage. ``out_dir`` replaces the file's; ``stage``
    keeps that stage only."""
    values = dict(source) if isinstance(source, Mapping) else read_spec_file(source)
    stages = values.pop("stages", None)
    if out_dir is not None:
        values["out_dir"] = out_dir
    if stages is None:
        if stage is not None:
            raise PhysllmError(f"sweep spec has no stages; cannot pick stage {stage!r}")
        return [SweepSpec.from_dict(values)]
    if not isinstance(stages, Mapping) or not stages:
        raise PhysllmError("sweep spec: stages must be a table of [stages.<name>] tables")
    base = Path(values.pop("out_dir", SweepSpec.out_dir))
    specs = []
    for name, table in stages.items():
        if not isinstance(table, Mapping):
            raise PhysllmError(f"sweep spec: stages.{name} must be a table")
        if "out_dir" in table or "name" in table:
            raise PhysllmError(f"sweep spec: stages.{name} may not set out_dir or name")
        merged = {**values, **table, "name": str(name), "out_dir": str(base / str(name))}
        source_stage = merged.get("lr_from", "")
        if source_stage in stages:
            if source_stage not in [s.name for s in specs]:
                raise PhysllmError(
                    f"sweep spec: stages.{name} reads lr_from stage {source_stage!r}, which does not come before it"
                )
            merged["lr_from"] = str(base / source_stage / RESULTS)
        specs.append(SweepSpec.from_dict(merged))
    if stage is not None:
        specs = [s for s in specs if s.name == stage]
        if not specs:
            raise PhysllmError(f"sweep spec: no stage {stage!r} (stages: {', '.join(stages)})")
    return specs


# --------------------------------------------------------------------------- results.csv


def _parse(column: str, text: str) -> Any:
    """A results.csv cell: "" -> None, numbers by column."""
    if text == "":
        return None
    if column in INT_COLUMNS:
        return int(float(text))
    if column in FLOAT_COLUMNS:
        return float(text)
    return text


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """results.csv's rows as dicts (numbers parsed, empty cells None); [] if there is none."""
    try:
        with open(path, newline="") as fh:
            return [{k: _parse(k, v or "") for k, v in row.items()} for row in csv.DictReader(fh)]
    except FileNotFoundError:
        return []


def write_results(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write every row to ``path`` through a temporary file and a rename: a kill leaves the
    old table or the new one, never a torn one. Columns: :data:`COLUMNS`, then any others."""
    path = Path(path)
    columns = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def result_row(
    run: Run, cfg: TrainConfig, metrics: Mapping[str, Any] | None, error: str = ""
) -> dict[str, Any]:
    """results.csv's row for ``run`` from its metrics.json (None: the run failed). Keys a
    metrics.json lacks (an older trainer) are empty cells."""
    m = metrics or {}
    tokens = m.get("tokens_seen")
    flops = m.get("flops")
    if flops is None and m.get("flops_per_token") is not None and tokens is not None:
        flops = m["flops_per_token"] * tokens
    return {
        "entry": run.entry,
        "size": run.size,
        "params": m.get("params"),
        "seed": run.seed,
        "lr": run.lr,
        "steps": run.steps,
        "tokens": tokens,
        "flops": flops,
        "val_loss": m.get("val_loss"),
        "val_loss_reset": m.get("val_loss_reset"),
        "val_loss_carried": m.get("val_loss_carried"),
        "bits_per_unit": m.get("val_bits_per_unit", m.get("val_bpc")),
        "train_tokens_per_sec": m.get("tokens_per_sec"),
        "wall_s": m.get("wall_s"),
        "git_sha": m.get("git_sha"),
        "run_id": run.run_id,
        "model": cfg.model,
        "unit": m.get("bpc_unit"),
        "corpus": m.get("corpus", cfg.corpus),
        "tokenizer": m.get("tokenizer", cfg.tokenizer),
        "status": "failed" if metrics is None else "ok",
        "error": error,
    }


# --------------------------------------------------------------------------- the learning-rate rule


def pick_lr(
    results: Any, entry: str, size: str, steps: int | None = None, metric: str = "val_loss"
) -> float:
    """The learning rate of ``entry`` at ``size``: at budget ``steps`` (default: the shortest
    in the results), the lowest mean ``metric`` over seeds, among the rates with the most
    finished seeds (a failed seed counts against its rate). Ties go to the smaller rate."""
    rows = [r for r in as_rows(results) if r.get("entry") == entry and r.get("size") == size]
    if not rows:
        raise PhysllmError(
            f"no results for entry {entry!r} at size {size!r} to pick a learning rate from"
        )
    steps = min(r["steps"] for r in rows) if steps is None else steps
    by_lr: dict[float, list[float]] = {}
    for r in rows:
        if r["steps"] == steps:
            values = by_lr.setdefault(float(r["lr"]), [])
            if r.get(metric) is not None:
                values.append(float(r[metric]))
    finished = max((len(v) for v in by_lr.values()), default=0)
    if finished == 0:
        raise PhysllmError(f"no finished run of entry {entry!r} at size {size!r}, {steps} steps")
    means = {lr: sum(v) / len(v) for lr, v in by_lr.items() if len(v) == finished}
    return min(means, key=lambda lr: (means[lr], lr))


def resolve_lrs(spec: SweepSpec) -> dict[tuple[str, str], tuple[float, ...]]:
    """``{(entry, size): rates}``: the spec's rates, or each one's :func:`pick_lr` from ``lr_from``."""
    keys = [(e, s) for e in spec.entries for s in spec.sizes]
    if spec.lrs != "best":
        return {k: tuple(spec.lrs) for k in keys}
    if not Path(spec.lr_from).is_file():
        raise PhysllmError(
            f'lrs = "best" reads {spec.lr_from}, which does not exist yet: run that sweep first'
        )
    rows = read_results(spec.lr_from)
    return {(e, s): (pick_lr(rows, e, s),) for e, s in keys}


# --------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Run:
    """One grid point."""

    entry: str
    size: str
    seed: int
    lr: float
    steps: int

    @property
    def run_id(self) -> str:
        """The run's folder name: the grid point, so the same spec finds the same folders."""
        return f"{self.entry}_{self.size}_seed{self.seed}_lr{self.lr:g}_steps{self.steps}"


def size_configs(spec: SweepSpec, vocab_size: int, size: str) -> dict[str, TrainConfig]:
    """:func:`build_configs` of every entry at ``size`` (GPT's parameter count matched)."""
    budget: dict[str, Any] = {"progress": False, "tensorboard": False}
    budget.update(spec.overrides)
    budget.update(spec.sizes[size])
    budget.update({k: v for k, v in (("corpus", spec.corpus), ("tokenizer", spec.tokenizer)) if v})
    return build_configs(
        spec.preset, vocab_size, select_entries(spec.entries), spec.runs_dir, **budget
    )


def run_config(base: TrainConfig, run: Run, runs_dir: Path) -> TrainConfig:
    """``base`` at grid point ``run``: its seed, lr (min_lr = lr / 10), steps (warmup at most
    a tenth of them) and folder. The model config is copied, not shared."""
    return dataclasses.replace(
        base,
        seed=run.seed,
        lr=run.lr,
        min_lr=run.lr / MIN_LR_RATIO,
        steps=run.steps,
        warmup_steps=min(base.warmup_steps, run.steps // 10),
        out_dir=str(runs_dir / run.run_id),
        resume=False,
        model_config=dataclasses.replace(base.model_config),
    )


def plan_runs(spec: SweepSpec, vocab_size: int) -> list[tuple[Run, TrainConfig]]:
    """Every run of the grid with its config, in running order: budget, size, seed, entry,
    rate (the short budget first; every entry at a seed before the next seed)."""
    lrs = resolve_lrs(spec)
    per_size = {size: size_configs(spec, vocab_size, size) for size in spec.sizes}
    plan = []
    for steps in spec.steps:
        for size, configs in per_size.items():
            for seed in spec.seeds:
                for entry in spec.entries:
                    for lr in lrs[(entry, size)]:
                        run = Run(entry, size, seed, lr, steps)
                        plan.append((run, run_config(configs[entry], run, spec.runs_dir)))
    ids = [run.run_id for run, _ in plan]
    if len(set(ids)) != len(ids):
        raise PhysllmError(
            "sweep spec: two grid points share a run id (learning rates equal to 6 digits?)"
        )
    return plan


def unmatched(plan: Sequence[tuple[Run, TrainConfig]]) -> list[str]:
    """A line for every (entry, size) whose parameter count is off GPT's at that size by
    more than the leaderboard's tolerance (matching moves one field in steps: it can miss)."""
    counts: dict[tuple[str, str], int] = {}
    for run, cfg in plan:
        if (run.entry, run.size) not in counts:
            counts[(run.entry, run.size)] = count_params(cfg.model, cfg.model_config.to_dict())
    notes = []
    for (entry, size), n in counts.items():
        ref = counts.get((REFERENCE, size))
        if ref and abs(n / ref - 1) > PARAM_TOLERANCE:
            notes.append(
                f"note: {entry} at size {size} has {n:,} parameters, x{n / ref:.3f} GPT's "
                f"(outside the leaderboard's {PARAM_TOLERANCE:.0%})"
            )
    return notes


def comparable(cfg: TrainConfig) -> dict[str, Any]:
    """What a run computes: its config without :data:`VOLATILE` fields."""
    return {k: v for k, v in cfg.to_dict().items() if k not in VOLATILE}


def check_record(run_dir: Path, cfg: TrainConfig) -> None:
    """A PhysllmError if ``run_dir`` holds a run of another config than ``cfg`` (the spec
    changed under the same out_dir). Fields only one side has are not compared, nor the
    model's ``stage_fields`` (settings of a later stage that `train` never reads)."""
    try:
        saved = json.loads((run_dir / RUN_RECORD).read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no record (or an unreadable one): nothing to compare
    ours = comparable(cfg)
    diff = [k for k in ours if k in saved and saved[k] != ours[k] and k != "model_config"]
    model_ours, model_saved = ours["model_config"], saved.get("model_config", {})
    later = getattr(cfg.model_config, "stage_fields", ())
    diff += [
        k
        for k in model_ours
        if k in model_saved and model_saved[k] != model_ours[k] and k not in later
    ]
    if diff:
        raise PhysllmError(
            f"{run_dir} was run with other values of {', '.join(diff[:4])} than the spec gives now; "
            "use another out_dir, or delete that folder and its results.csv row"
        )


# --------------------------------------------------------------------------- running


def train_command(cfg: TrainConfig) -> list[str]:
    """``python -m physllm train`` with every field of ``cfg`` as a flag (no preset), so the
    process builds exactly ``cfg``; ``--resume`` as ``cfg.resume`` says."""
    values = {k: v for k, v in cfg.to_dict().items() if k != "model_config"}
    values.update(cfg.model_config.to_dict())
    command = [sys.executable, "-m", "physllm", "train"]
    for name, value in values.items():
        if isinstance(value, bool):
            command.append(flag(name) if value else "--no-" + flag(name)[2:])
        elif isinstance(value, int | float | str):
            command.append(
                f"{flag(name)}={value!r}" if isinstance(value, float) else f"{flag(name)}={value}"
            )
        else:
            raise PhysllmError(
                f"{cfg.model}'s field {name} ({type(value).__name__}) cannot be a flag"
            )
    return command


def child_env() -> dict[str, str]:
    """The environment of a run's process: ours, with this checkout's physllm first on the path."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def last_line(path: Path) -> str:
    """The last non-empty line of a log (what a failed run said)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def run_process(run: Run, cfg: TrainConfig) -> dict[str, Any]:
    """Train ``run`` in its own process; its row (status ``failed`` if the process failed).
    A Ctrl-C stops the process and is raised again: the run is left to resume."""
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"run": dataclasses.asdict(run), "config": cfg.to_dict()}
    (run_dir / RUN_RECORD).write_text(json.dumps(record, indent=1))
    command = train_command(cfg)
    (run_dir / "command.txt").write_text(shlex.join(command) + "\n")
    log_path = run_dir / "train.log"
    with open(log_path, "a") as log:
        log.write(
            f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {'resumed' if cfg.resume else 'started'}\n"
        )
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env())
        try:
            code = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    if code in (130, -2):  # the run was interrupted (Ctrl-C reaches both processes)
        raise KeyboardInterrupt
    if code != 0:
        return result_row(run, cfg, None, error=f"exit {code}: {last_line(log_path)}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics.get("steps") != run.steps:  # never a row whose steps are not the run's
        return result_row(run, cfg, None, error=f"metrics.json is at step {metrics.get('steps')}")
    return result_row(run, cfg, metrics)


def to_do(
    plan: Sequence[tuple[Run, TrainConfig]], rows: Sequence[Mapping[str, Any]], retry_failed: bool
) -> list[tuple[Run, TrainConfig]]:
    """The runs of ``plan`` that ``rows`` lacks (or holds as failed, with ``retry_failed``);
    every run's folder checked against its config first."""
    status = {r["run_id"]: r.get("status") for r in rows}
    pending = []
    for run, cfg in plan:
        check_record(Path(cfg.out_dir), cfg)
        if run.run_id not in status or (retry_failed and status[run.run_id] == "failed"):
            pending.append((run, cfg))
    return pending


def describe(run: Run, row: Mapping[str, Any], seconds: float) -> str:
    """One line about a finished run."""
    head = f"{run.entry:<22} {run.size:<6} seed {run.seed:<5} lr {run.lr:<8g} {run.steps:>6} steps"
    if row["status"] != "ok":
        return f"{head}  FAILED ({row['error']})"
    return f"{head}  val {row['val_loss']:.4f}  {row['params']:>10,} params  {seconds:.0f} s"


def run_sweep_grid(
    spec: SweepSpec,
    log: Callable[[str], None] | None = print,
    dry_run: bool = False,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Run every grid point of ``spec`` not yet in its results.csv, each in its own process,
    appending its row as it finishes (a progress bar over the grid). ``dry_run``: only say
    what would run. Returns ``{planned, skipped, ran, failed, resumed, results}`` (counts,
    and results.csv's path)."""
    corpus = spec.corpus or recipe(spec.preset)["corpus"]
    tokenizer = spec.tokenizer or recipe(spec.preset)["tokenizer"]
    max_chars = spec.overrides.get("max_chars", recipe(spec.preset).get("max_chars", 0))
    data = TokenData.load(corpus, tokenizer, max_chars)  # tokenized once here, read by every run
    plan = plan_runs(spec, data.tokenizer.vocab_size)  # every config built: bad values fail now
    return run_plan(plan, spec.results_path, spec.name, log, spec.resume, retry_failed, dry_run)


def run_plan(
    plan: Sequence[tuple[Run, TrainConfig]],
    results_path: str | os.PathLike,
    name: str = "",
    log: Callable[[str], None] | None = print,
    resume: bool = True,
    retry_failed: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Run every ``(run, config)`` of ``plan`` not yet in ``results_path``, each in its own
    process, appending its row as it finishes (a progress bar over the plan); a killed run
    continues from its checkpoint when ``resume``. The engine of :func:`run_sweep_grid`
    and of :func:`physllm.experiments.gaps.seed_gaps`. Returns ``{planned, skipped, ran,
    failed, resumed, results}``."""
    say = log or (lambda _: None)
    results_path = Path(results_path)
    rows = read_results(results_path)
    pending = to_do(plan, rows, retry_failed)
    for _, cfg in pending:
        cfg.resume = resume and find_checkpoint(Path(cfg.out_dir) / "last") is not None
    summary = {
        "planned": len(plan),
        "skipped": len(plan) - len(pending),
        "ran": 0,
        "failed": 0,
        "resumed": sum(cfg.resume for _, cfg in pending),
        "results": str(results_path),
    }
    ids = {run.run_id for run, _ in plan}
    failed_before = sum(r.get("status") == "failed" and r["run_id"] in ids for r in rows)
    note = (
        f"; {failed_before} failed earlier (--retry-failed)"
        if failed_before and not retry_failed
        else ""
    )
    say(
        f"{f'sweep {name}'.strip()}: {len(plan)} runs, skipped {summary['skipped']} "
        f"(already in {results_path}{note}), {len(pending)} to run ({summary['resumed']} resumed)"
    )
    for line in unmatched(plan):
        say(line)
    if dry_run:
        for run, cfg in pending:
            say(f"  {'resume' if cfg.resume else 'new   '} {run.run_id}")
        return summary
    _run_pending(pending, results_path, name, summary, say)
    return summary


LOCK = ".sweep.lock"


@contextlib.contextmanager
def sweep_lock(results_path: Path) -> Iterator[None]:
    """Hold ``results_path``'s folder for one sweep: two sweeps rewriting one results.csv
    would each drop the other's rows. The lock goes with the process, so a killed sweep
    leaves nothing to clean up and ``--resume`` just works."""
    results_path.parent.mkdir(parents=True, exist_ok=True)
    path = results_path.parent / LOCK
    with open(path, "a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PhysllmError(
                    f"another sweep is writing {results_path}: wait for it to finish, "
                    "or give this one another out_dir"
                ) from None
        try:
            yield
        finally:  # no file left in a committed report folder
            path.unlink(missing_ok=True)


def _run_pending(
    pending: Sequence[tuple[Run, TrainConfig]],
    results_path: Path,
    name: str,
    summary: dict[str, Any],
    say: Callable[[str], None],
) -> None:
    """Run ``pending`` in order, rewriting results.csv after each (the progress bar's body)."""
    if not pending:
        return
    with sweep_lock(results_path):
        rows = read_results(results_path)  # what is there now, under the lock
        bar = progress_bar(summary["planned"], name or "sweep", initial=summary["skipped"])
        write = bar.write if bar is not None else say
        try:
            for run, cfg in pending:
                t0 = time.perf_counter()
                row = run_process(run, cfg)
                rows = [r for r in rows if r["run_id"] != run.run_id] + [
                    row
                ]  # a retried failure is replaced
                write_results(results_path, rows)
                summary["ran"] += 1
                summary["failed"] += row["status"] != "ok"
                write(describe(run, row, time.perf_counter() - t0))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()


def run_stages(
    specs: Iterable[SweepSpec],
    log: Callable[[str], None] = print,
    dry_run: bool = False,
    retry_failed: bool = False,
) -> list[dict[str, Any]]:
    """Every spec in turn (a staged file's stages), each followed by its paired gaps to GPT;
    a :class:`SweepFailed` at the end if any run failed."""
    summaries = []
    for spec in specs:
        if dry_run and spec.lrs == "best" and not Path(spec.lr_from).is_file():
            log(f"sweep {spec.name}: learning rates from {spec.lr_from} once it exists")
            continue
        summary = run_sweep_grid(spec, log, dry_run, retry_failed)
        summaries.append(summary)
        gaps = gap_table(read_results(spec.results_path))
        if gaps and not dry_run:
            log(format_gaps(gaps))
    failed = sum(s["failed"] for s in summaries)
    if failed:
        raise SweepFailed(
            f"{failed} run(s) failed (status 'failed' in results.csv, their train.log says why); "
            "--retry-failed runs them again"
        )
    return summaries


__all__ = [
    "COLUMNS",
    "RESULTS",
    "Run",
    "SweepFailed",
    "SweepSpec",
    "load_specs",
    "pick_lr",
    "plan_runs",
    "read_results",
    "resolve_lrs",
    "result_row",
    "run_config",
    "run_plan",
    "run_stages",
    "run_sweep_grid",
    "train_command",
    "write_results",
]
