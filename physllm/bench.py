"""Speed and memory benchmarks: ratios measured side by side in one run.

Each measurement runs in a fresh process (so one model's allocations cannot
inflate another's peak memory), and the models take turns over ``repeats``
rounds so that a slow moment of the machine hits all of them alike; the best
round per model is kept. Ratios are against ``gpt`` at the same shape.

A model is named as in the registry, optionally with config overrides:
``ngt:kernel=seed+n_coord=32``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import platform
import time
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

from physllm.errors import PhysllmError


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=lambda: ["gpt"])
    batch_size: int = 8
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    vocab_size: int = 256
    steps: int = 10  # timed forward+backward steps per round
    warmup: int = 3  # untimed steps first (allocator, caches, compile)
    repeats: int = 3  # rounds; models take turns each round
    device: str = "auto"
    threads: int = 0  # torch threads in each measuring process (0: torch's default)


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"ngt:kernel=seed+n_coord=32"`` -> ``("ngt", {"kernel": "seed", "n_coord": 32})``."""
    from physllm.models import get_model_classes

    name, _, rest = spec.partition(":")
    config_cls, _ = get_model_classes(name)
    hints = typing.get_type_hints(config_cls)
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split("+")):
        key, sep, value = item.partition("=")
        if not sep or key not in hints:
            raise PhysllmError(f"bad override {item!r} in {spec!r} (fields: {', '.join(hints)})")
        kind = hints[key]
        overrides[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return name, overrides


def model_config_for(spec: str, cfg: BenchConfig):
    """The model's config at the benchmark's shape: shared knobs, then the spec's overrides."""
    from physllm.models import get_model_classes

    name, overrides = parse_model_spec(spec)
    config_cls, _ = get_model_classes(name)
    names = {f.name for f in dataclasses.fields(config_cls)}
    shape = {
        k: getattr(cfg, k)
        for k in ("block_size", "n_layer", "n_head", "n_embd", "vocab_size")
        if k in names
    }
    if "dropout" in names:
        shape["dropout"] = 0.0
    return name, config_cls(**{**shape, **overrides})


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def measure_training(spec: str, cfg: BenchConfig) -> dict[str, Any]:
    """Forward+backward(+AdamW step) tokens/s and peak memory of one model, in this process."""
    import resource

    from physllm.models import build_model
    from physllm.train import resolve_device

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(0)
    baseline = _rss_mb()
    name, mcfg = model_config_for(spec, cfg)
    model = build_model(name, mcfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, mcfg.vocab_size, (cfg.batch_size, cfg.block_size), device=device)
    y = torch.randint(0, mcfg.vocab_size, (cfg.batch_size, cfg.block_size), device=device)

    def step() -> None:
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(cfg.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # peak resident memory above what the process held before building the model
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline
    return {
        "model": spec,
        "params": model.num_params(),
        "tokens_per_sec": cfg.steps * cfg.batch_size * cfg.block_size / elapsed,
        "ms_per_step": 1000 * elapsed / cfg.steps,
        "peak_mem_mb": peak,
    }


def _child(spec: str, cfg: BenchConfig, queue) -> None:
    try:
        queue.put(measure_training(spec, cfg))
    except Exception as err:  # report, do not hang the parent
        queue.put({"model": spec, "error": f"{type(err).__name__}: {err}"})


def run_isolated(func, spec: str, cfg: BenchConfig) -> dict[str, Any]:
    """Run ``func(spec, cfg, queue)`` in a fresh process and return what it reports."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=func, args=(spec, cfg, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise PhysllmError(f"benchmark of {spec} failed: {result['error']}")
    return result


def run_bench(cfg: BenchConfig, child=_child) -> list[dict[str, Any]]:
    """Best of ``repeats`` interleaved rounds per model, with ratios against gpt."""
    for spec in cfg.models:
        model_config_for(spec, cfg)  # fail fast on a bad name or override
    best: dict[str, dict[str, Any]] = {}
    for _ in range(cfg.repeats):
        for spec in cfg.models:
            row = run_isolated(child, spec, cfg)
            prev = best.get(spec)
            if prev is None or row["tokens_per_sec"] > prev["tokens_per_sec"]:
                row["peak_mem_mb"] = max(row["peak_mem_mb"], prev["peak_mem_mb"] if prev else 0.0)
                best[spec] = row
            else:
                prev["peak_mem_mb"] = max(prev["peak_mem_mb"], row["peak_mem_mb"])
    rows = [best[s] for s in cfg.models]
    ref = best.get("gpt", rows[0])
    for row in rows:
        row["speed_ratio"] = row["tokens_per_sec"] / ref["tokens_per_sec"]
        row["mem_ratio"] = (
            row["peak_mem_mb"] / ref["peak_mem_mb"] if ref["peak_mem_mb"] > 0 else float("nan")
        )
        row["reference"] = ref["model"]
    return rows


def hardware() -> str:
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name()}), torch {torch.__version__}"
    import os

    return f"cpu ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"


def format_table(rows: list[dict[str, Any]], cfg: BenchConfig) -> str:
    ref = rows[0]["reference"] if rows else "gpt"
    lines = [
        f"# training step (fwd+bwd+AdamW), batch {cfg.batch_size} x block {cfg.block_size}, "
        f"{cfg.n_layer} layers, width {cfg.n_embd}, best of {cfg.repeats} interleaved rounds of {cfg.steps} steps",
        f"# hardware: {hardware()}; ratios against {ref}",
        f"{'model':<28} {'params':>10} {'tokens/s':>10} {'speed x':>8} {'ms/step':>9} {'peak MB':>9} {'mem x':>7}",
    ]
    for r in rows:
        lines.append(
            f"{r['model']:<28} {r['params']:>10,} {r['tokens_per_sec']:>10,.0f} {r['speed_ratio']:>8.2f} "
            f"{r['ms_per_step']:>9.1f} {r['peak_mem_mb']:>9.1f} {r['mem_ratio']:>7.2f}"
        )
    return "\n".join(lines)
