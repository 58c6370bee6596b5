"""The leaderboard: every registered architecture at one budget, in one table.

Each :class:`Entry` is a row: a registered model, the variant's config
overrides and, where the variant is far from GPT's size, the config field that
is searched to match GPT's parameter count (:func:`match_field`). Every entry
trains through :func:`physllm.training.train` with one recipe
(:data:`RECIPES`): the same corpus, tokenizer, batch, block, steps, schedule,
optimizer settings and seed. A configuration is built in layers, each
overriding the one before:

1. the model's own preset (``physllm.training``, same preset name): its
   architecture knobs (NGT's coordinate sizes, QLLM's globals and segments,
   the context vector's widths) and anything else it sets;
2. the recipe (every training field, plus ``block_size`` and ``dropout``) and,
   unless the entry keeps its own shape (the attention-free context vector),
   the transformer shape ``n_layer``, ``n_head``, ``n_embd``;
3. the entry's overrides (the variant), then its per-preset overrides;
4. ``vocab_size`` = the tokenizer's; then the matched field, if any.

Measured per entry: the trainer's metrics (val loss, bits per char or byte,
training tokens/s, wall time), streaming inference tokens/s of the trained
model (:func:`inference_speed`), and, in a fresh process per model, a
training step's speed and peak memory at each sequence length plus decode
speed up to it (:func:`physllm.bench.run_length_bench`); the peak at the
training length is the table's peak memory (one process held all the
training runs, so the trainer's own peak is not per model).

Notebook 06 runs the entries through the protocol (:mod:`physllm.experiments.protocol`:
each run in its own process via :mod:`physllm.experiments.sweep`, a learning rate per
entry and size, then seeds and the paired gap to GPT with its interval);
:func:`run_entries` trains them in this process at one seed (the first leaderboard, whose
committed report the README still renders until a protocol report replaces it).

The README's results section is generated from the leaderboard report's
``metrics.json`` by the reporting layer (:func:`physllm.reporting.readme.leaderboard_text`,
applied when :func:`physllm.reporting.index.rebuild_index` runs); this module only
runs the entries and builds the rows.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from physllm.arch import SHAPE_FIELDS, Entry
from physllm.bench import BenchConfig, decode_speed, model_config_for, run_length_bench
from physllm.errors import PhysllmError
from physllm.models import ARCHITECTURES, count_params, get_model_classes, match_field
from physllm.training import (
    NANOGPT_CHAR_CPU,
    PRESETS,
    TrainConfig,
    make_config,
    split_overrides,
    train,
)
from physllm.training.config import train_field_names

NOTEBOOK = "06_leaderboard"
REFERENCE = "gpt"
PARAM_TOLERANCE = 0.10  # every entry's parameter count within 10% of GPT's


# Each architecture declares its rows (``ARCH.leaderboard``); the table lists them in
# the registry's order, GPT (the reference) first.
def all_entries() -> tuple[Entry, ...]:
    """Every registered architecture's leaderboard rows, read from the registry now (so an
    architecture registered after import is in the leaderboard, the sweep and ``bench --all``)."""
    return tuple(e for arch in ARCHITECTURES.values() for e in arch.leaderboard)


# One recipe per preset: every field that decides a run's budget or optimizer.
RECIPES: dict[str, dict[str, Any]] = {
    # nanoGPT's Shakespeare-char CPU recipe (physllm.training) on bytes, fewer steps so
    # that eight models train in about three minutes on two cores.
    "cpu": dict(
        {k: v for k, v in NANOGPT_CHAR_CPU.items()},
        tokenizer="byte",
        max_chars=0,
        steps=400,
        warmup_steps=40,
        lr_decay_steps=0,
        beta1=0.9,
        grad_accum=1,
        eval_interval=100,
        eval_iters=10,
        dtype="auto",
        compile=False,
    ),
    # Not run yet: 25M-parameter models (GPT: 8 layers, width 512) on WikiText-103 bytes,
    # block 512, 32 x 512 bytes a step, 10k steps (164M bytes), bf16 autocast.
    "gpu": dict(
        corpus="wikitext103",
        tokenizer="byte",
        max_chars=0,
        n_layer=8,
        n_head=8,
        n_embd=512,
        block_size=512,
        dropout=0.0,
        batch_size=32,
        grad_accum=1,
        steps=10_000,
        lr=6e-4,
        min_lr=6e-5,
        warmup_steps=500,
        lr_decay_steps=0,
        weight_decay=0.1,
        beta1=0.9,
        beta2=0.95,
        grad_clip=1.0,
        eval_interval=500,
        eval_iters=50,
        dtype="auto",
        compile=False,
    ),
}

# The speed/memory sweep over sequence lengths (physllm.bench.run_length_bench); the
# first length is the recipe's block, so its row is the table's peak memory.
SWEEPS: dict[str, dict[str, Any]] = {
    "cpu": dict(lengths="64,128,256", batch_size=12, steps=5, warmup=2, timed_tokens=16),
    "gpu": dict(lengths="512,1024,2048", batch_size=8, steps=10, warmup=3, timed_tokens=64),
}


# --------------------------------------------------------------------------- configs


def recipe(preset: str) -> dict[str, Any]:
    """The shared recipe of ``preset`` (a copy)."""
    try:
        return dict(RECIPES[preset])
    except KeyError:
        raise PhysllmError(
            f"no leaderboard preset {preset!r} (known: {', '.join(RECIPES)})"
        ) from None


def select_entries(names: str | Iterable[str] = "all") -> list[Entry]:
    """``"all"`` or entry names (a comma-separated string or a list), in table order;
    the reference (gpt) is always included."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()] if names != "all" else []
    wanted = set(names)
    entries = all_entries()
    known = [e.name for e in entries]
    unknown = sorted(wanted - set(known))
    if unknown:
        raise PhysllmError(
            f"unknown leaderboard entries {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    return [e for e in entries if not wanted or e.name in wanted or e.name == REFERENCE]


def entry_values(
    entry: Entry, preset: str, vocab_size: int, budget: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Every ``make_config`` value of ``entry`` (training and model fields, the layers of the
    module docstring) before parameter matching. ``budget``: changes to the recipe."""
    shared = {**recipe(preset), **(budget or {})}
    # the recipe's model fields go only to a model that declares them (a registered model
    # need not have heads or dropout); an attention-free one keeps its own widths
    declared = {f.name for f in dataclasses.fields(get_model_classes(entry.model)[0])}
    if entry.own_shape:
        declared -= set(SHAPE_FIELDS)
    declared |= train_field_names()
    shared = {k: v for k, v in shared.items() if k in declared}
    train_fields, model_fields = split_overrides(entry.model, shared)
    values = dict(PRESETS.get(entry.model, {}).get(preset, {}))
    values.update(train_fields)
    values.update(model_fields)
    values.update(entry.overrides)
    values.update(entry.per_preset.get(preset, {}))
    values["vocab_size"] = vocab_size
    return values


def model_values(model: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The model-config part of ``values`` (what counting its parameters needs)."""
    return split_overrides(model, values)[1]


def build_configs(
    preset: str,
    vocab_size: int,
    entries: Sequence[Entry] | None = None,
    out_dir: str | os.PathLike = "runs/06_leaderboard",
    **budget: Any,
) -> dict[str, TrainConfig]:
    """``{entry name: TrainConfig}`` for ``entries`` (default: all), each entry with
    ``match`` set to GPT's parameter count. ``budget`` overrides recipe fields for all
    (``steps``, ``seed``, ``device``, ``threads``, ``corpus``...)."""
    entries = list(entries or all_entries())
    unknown = sorted(set(budget) - train_field_names() - {"block_size", "dropout", *SHAPE_FIELDS})
    if unknown:
        raise PhysllmError(f"unknown leaderboard budget field(s): {', '.join(unknown)}")
    # A run that sets torch's threads (a preset may) would change every later run's:
    # every entry gets the same explicit count.
    budget.setdefault("threads", torch.get_num_threads())
    ref = next(e for e in all_entries() if e.name == REFERENCE)
    target = count_params(
        ref.model, model_values(ref.model, entry_values(ref, preset, vocab_size, budget))
    )
    configs = {}
    for entry in entries:
        values = entry_values(entry, preset, vocab_size, budget)
        if entry.match:
            mv = model_values(entry.model, values)
            values[entry.match] = match_field(
                entry.model, mv, entry.match, target, entry.match_step
            )
        values["out_dir"] = str(Path(out_dir) / entry.name)
        configs[entry.name] = make_config(entry.model, None, **values)
    return configs


def smoke_budget(steps: int | None, preset: str) -> dict[str, Any]:
    """Budget changes for a ``steps`` override: warmup at most a tenth of the run."""
    if steps is None:
        return {}
    return {"steps": steps, "warmup_steps": min(recipe(preset)["warmup_steps"], steps // 10)}


# --------------------------------------------------------------------------- running


def inference_speed(
    model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, repeats: int = 3
) -> dict[str, float]:
    """Streaming decode of the trained model: ``prompt`` (1, P), then ``new_tokens`` tokens
    one ``decode_step`` each (physllm.bench.decode_speed); best of ``repeats`` passes."""
    return decode_speed(model, prompt, new_tokens, repeats=repeats)


def run_entries(
    configs: Mapping[str, TrainConfig],
    prompt_tokens: int = 16,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train every config in turn (``physllm.training.train``) and measure each trained
    model's streaming inference speed from a validation prompt of ``prompt_tokens``
    up to its block. Returns ``{name: RunResult}``; each ``metrics`` gains
    ``infer_tokens_per_sec`` and ``infer_ms_per_token``."""
    results = {}
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        result = train(cfg)
        device = next(result.model.parameters()).device
        val = result.data.splits["val"]
        block = result.model.config.block_size
        prompt = torch.tensor(val[:prompt_tokens].astype("int64"), device=device).unsqueeze(0)
        speed = inference_speed(result.model, prompt, max(1, block - prompt_tokens))
        result.metrics["infer_tokens_per_sec"] = speed["decode_tokens_per_sec"]
        result.metrics["infer_ms_per_token"] = speed["decode_ms_per_token"]
        # True only where val_loss was read with the state carried in (runs before the one
        # evaluator, val_eval "streams"): evaluate_split scores every model from a zero state,
        # and the carried number is val_loss_carried. The README's dagger follows this flag.
        result.metrics["carries_state"] = result.metrics.get("val_eval") == "streams"
        results[name] = result
        if log:
            m = result.metrics
            log(
                f"{name:<22} {m['params']:>10,} params  val {m['val_loss']:.4f}  "
                f"{m['val_bpc']:.3f} bits/{m['bpc_unit']}  {m['tokens_per_sec']:>8,.0f} train tok/s  "
                f"{m['infer_tokens_per_sec']:>7,.0f} infer tok/s  {time.perf_counter() - t0:.0f} s"
            )
    return results


def bench_spec(model: str, config: Mapping[str, Any], bench_cfg: BenchConfig) -> str:
    """A ``physllm.bench`` model spec (``ngt:kernel=seed``) that builds ``config`` at
    ``bench_cfg``'s shape: the fields where ``config`` differs from what the benchmark's
    shared shape gives (``block_size``, ``vocab_size`` and ``dropout`` are the bench's)."""
    _, base = model_config_for(model, bench_cfg)
    diff = [
        f"{k}={v}"
        for k, v in config.items()
        if k not in ("block_size", "vocab_size", "dropout") and getattr(base, k) != v
    ]
    return model + (":" + "+".join(diff) if diff else "")


def sweep_config(
    configs: Mapping[str, TrainConfig],
    preset: str,
    device: str = "auto",
    threads: int = 0,
    repeats: int = 1,
    **changes: Any,
) -> tuple[BenchConfig, dict[str, str]]:
    """The :class:`physllm.bench.BenchConfig` of the length sweep for trained ``configs``:
    the recipe's shape and :data:`SWEEPS`; returns ``(bench_config, {spec: entry name})``."""
    any_cfg = next(iter(configs.values()))
    mcfg = configs.get(REFERENCE, any_cfg).model_config
    sweep = {**SWEEPS[preset], **changes}
    cfg = BenchConfig(
        models=[],
        n_layer=mcfg.n_layer,
        n_head=mcfg.n_head,
        n_embd=mcfg.n_embd,
        vocab_size=mcfg.vocab_size,
        block_size=int(str(sweep["lengths"]).split(",")[0]),
        device=device,
        threads=threads,
        repeats=repeats,
        **sweep,
    )
    labels = {}
    for name, tcfg in configs.items():
        spec = bench_spec(tcfg.model, tcfg.model_config.to_dict(), cfg)
        labels[spec] = name
    return dataclasses.replace(cfg, models=list(labels)), labels


def run_sweep(bench_cfg: BenchConfig, labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """:func:`physllm.bench.run_length_bench`, each row labelled with its entry name."""
    rows = run_length_bench(bench_cfg)
    for row in rows:
        row["label"] = labels.get(row["model"], row["model"])
        row["reference"] = labels.get(row["reference"], row["reference"])
    return rows


def bench_all_config(preset: str, **given: Any) -> tuple[BenchConfig, dict[str, str]]:
    """``python -m physllm bench --all``: every entry as a benchmark spec at the recipe's
    training shape (flags in ``given`` win). Returns ``(BenchConfig, {spec: entry name})``."""
    r = recipe(preset)
    shape = {k: r[k] for k in ("batch_size", "block_size", *SHAPE_FIELDS)}
    shape["vocab_size"] = 256  # the recipe's byte tokens
    base = BenchConfig(**{**shape, **given})
    shape_budget = {k: getattr(base, k) for k in ("block_size", *SHAPE_FIELDS)}
    configs = build_configs(preset, base.vocab_size, **shape_budget)
    labels = {}
    for name, tcfg in configs.items():
        labels[bench_spec(tcfg.model, tcfg.model_config.to_dict(), base)] = name
    return dataclasses.replace(base, models=list(labels)), labels


# --------------------------------------------------------------------------- the table

ROW_KEYS = (
    "entry",
    "model",
    "variant",
    "params",
    "params_vs_gpt",
    "steps",
    "tokens_seen",
    "val_loss",
    "val_bpc",
    "bpc_unit",
    "train_tokens_per_sec",
    "infer_tokens_per_sec",
    "peak_mem_mb",
    "wall_s",
    "speed_vs_gpt",
    "mem_vs_gpt",
    "carries_state",
)


def leaderboard_rows(
    metrics: Mapping[str, Mapping[str, Any]],
    sweep_rows: Sequence[Mapping[str, Any]] = (),
    block_size: int | None = None,
) -> list[dict[str, Any]]:
    """One dict per entry (keys :data:`ROW_KEYS`) from each run's metrics and the length
    sweep's rows at ``block_size`` (peak memory, isolated speed ratio against gpt)."""
    variants = {e.name: e.variant for e in all_entries()}
    at_block = {
        r["label"]: r for r in sweep_rows if block_size is None or r["length"] == block_size
    }
    ref = metrics.get(REFERENCE)
    rows = []
    for name, m in metrics.items():
        bench = at_block.get(name, {})
        rows.append(
            {
                "entry": name,
                "model": m["model"],
                "variant": variants.get(name, ""),
                "params": m["params"],
                "params_vs_gpt": m["params"] / ref["params"] if ref else None,
                "steps": m["steps"],
                "tokens_seen": m["tokens_seen"],
                "val_loss": m["val_loss"],
                "val_bpc": m["val_bpc"],
                "bpc_unit": m["bpc_unit"],
                "train_tokens_per_sec": m["tokens_per_sec"],
                "infer_tokens_per_sec": m.get("infer_tokens_per_sec"),
                "peak_mem_mb": bench.get("peak_mem_mb"),
                "wall_s": m["wall_s"],
                "speed_vs_gpt": bench.get("speed_ratio"),
                "mem_vs_gpt": bench.get("mem_ratio"),
                "carries_state": bool(m.get("carries_state", False)),
            }
        )
    return rows


def leaderboard_frame(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The rows as a pandas DataFrame indexed by entry, columns in plain words."""
    import pandas as pd

    unit = rows[0]["bpc_unit"] if rows else "char"
    frame = pd.DataFrame(list(rows)).set_index("entry")
    frame = frame.drop(columns=["bpc_unit", "variant", "steps", "tokens_seen"])
    return frame.rename(
        columns={
            "params_vs_gpt": "params x gpt",
            "val_loss": "val loss",
            "val_bpc": f"bits/{unit}",
            "train_tokens_per_sec": "train tok/s",
            "infer_tokens_per_sec": "infer tok/s",
            "peak_mem_mb": "peak MB",
            "wall_s": "train wall s",
            "speed_vs_gpt": "speed x gpt",
            "mem_vs_gpt": "mem x gpt",
            "carries_state": "state carried",
        }
    )


__all__ = [
    "all_entries",
    "Entry",
    "RECIPES",
    "SWEEPS",
    "bench_all_config",
    "bench_spec",
    "build_configs",
    "count_params",
    "entry_values",
    "inference_speed",
    "leaderboard_frame",
    "leaderboard_rows",
    "match_field",
    "recipe",
    "run_entries",
    "run_sweep",
    "select_entries",
    "sweep_config",
]
