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
import random
import time
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

from physllm.env import device_description, peak_rss_mb, reset_peak_rss, resolve_device
from physllm.errors import PhysllmError
from physllm.models import build_model, get_model_classes
from physllm.nn import state_nbytes
from physllm.training.flops import training_flops_per_token
from physllm.validation import (
    DEVICE,
    NON_NEGATIVE,
    POSITIVE,
    at_least,
    check_fields,
    one_of,
    require,
)


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
    mode: str = "train"  # train: fwd+bwd | generate: streaming decode | lengths: both per length
    lengths: str = "1024,8192,65536"  # generate, lengths: context lengths
    timed_tokens: int = 256  # generate, lengths: tokens decoded one at a time and timed
    prefill_chunk: int = 1024  # generate: tokens per decode_step call while building the context
    compile: bool = False  # train: torch.compile each model (compiled in the untimed warmup)

    field_rules = {
        "batch_size": POSITIVE,
        "block_size": POSITIVE,
        "n_layer": POSITIVE,
        "n_head": POSITIVE,
        "n_embd": POSITIVE,
        "vocab_size": POSITIVE,
        "steps": POSITIVE,
        "warmup": NON_NEGATIVE,
        "repeats": POSITIVE,  # the best of zero rounds is nothing
        "device": DEVICE,
        "threads": NON_NEGATIVE,
        "mode": one_of("train", "generate", "lengths"),
        "timed_tokens": at_least(2),
        "prefill_chunk": POSITIVE,
    }

    def __post_init__(self) -> None:
        """Check every field, the lengths and each model spec at this shape: bad input
        fails here, before any measuring process starts."""
        check_fields(self, self.field_rules)
        require(
            isinstance(self.models, list) and all(isinstance(m, str) for m in self.models),
            f"models must be a list of model specs, got {self.models!r}",
        )
        parse_lengths(self.lengths)
        for spec in self.models:
            model_config_for(spec, self)


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"ngt:kernel=seed+n_coord=32"`` -> ``("ngt", {"kernel": "seed", "n_coord": 32})``."""

    name, _, rest = spec.partition(":")
    config_cls, _ = get_model_classes(name)
    hints = typing.get_type_hints(config_cls)
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split("+")):
        key, sep, value = item.partition("=")
        if not sep or key not in hints:
            raise PhysllmError(f"bad override {item!r} in {spec!r} (fields: {', '.join(hints)})")
        kind = hints[key]
        try:
            overrides[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            raise PhysllmError(
                f"bad override {item!r} in {spec!r}: not a {kind.__name__}"
            ) from None
    return name, overrides


def model_config_for(spec: str, cfg: BenchConfig):
    """The model's config at the benchmark's shape: shared knobs, then the spec's overrides."""

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
    try:
        return name, config_cls(**{**shape, **overrides})
    except PhysllmError as err:
        raise PhysllmError(f"model {spec!r} at this shape: {err}") from None


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def measure_training(spec: str, cfg: BenchConfig) -> dict[str, Any]:
    """Forward+backward(+AdamW step) tokens/s and peak memory of one model, in this process."""
    return _measure_training(spec, cfg)[0]


def _measure_training(
    spec: str, cfg: BenchConfig, baseline: float | None = None
) -> tuple[dict[str, Any], torch.nn.Module]:
    """:func:`measure_training`'s row and the model it built. CPU peak memory is the
    resident high-water mark since this call began, above ``baseline`` MB (default:
    what the process holds when the call begins)."""

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(0)
    reset_peak_rss()
    baseline = _rss_mb() if baseline is None else baseline
    model, step = _trainer(spec, cfg, device)
    for _ in range(max(cfg.warmup, 1 if cfg.compile else 0)):  # compiling is not timed
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
        peak = peak_rss_mb() - baseline
    tokens_per_sec = cfg.steps * cfg.batch_size * cfg.block_size / elapsed
    # counted after the timing (FlopCounterMode on a copy of the model: training.flops)
    flops = training_flops_per_token(model, cfg.block_size, device=device)
    row = {
        "model": spec,
        "params": model.num_params(),
        "tokens_per_sec": tokens_per_sec,
        "ms_per_step": 1000 * elapsed / cfg.steps,
        "peak_mem_mb": peak,
        "flops_per_token": flops,
        # the step's FLOPs over its whole time (optimizer and elementwise work included)
        "achieved_flops": flops * tokens_per_sec,
    }
    return row, model


# training steps a model takes in a row before the next model's turn (as DECODE_TURN: the
# first step of a turn finds the model's weights, gradients and optimizer state cold)
TRAIN_TURN = 3


def interleaved_train_speeds(cfg: BenchConfig) -> dict[str, float]:
    """Training tokens/s of every model, all in this one process taking turns of
    :data:`TRAIN_TURN` steps (``steps`` in all per round): a slow spell of a shared machine
    slows every model alike. One over the median step; the best of ``repeats`` rounds.
    Compiled models (``cfg.compile``) are compiled in an untimed first step."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    steps = {}
    for spec in cfg.models:
        torch.manual_seed(0)
        steps[spec] = _trainer(spec, cfg, device)[1]
    for step in steps.values():
        for _ in range(max(cfg.warmup, 1)):
            step()
    tokens = cfg.batch_size * cfg.block_size
    speeds: dict[str, float] = {}
    for _ in range(cfg.repeats):
        times: dict[str, list[float]] = {spec: [] for spec in steps}
        for start in range(0, cfg.steps, TRAIN_TURN):
            for spec, step in steps.items():
                for _ in range(min(TRAIN_TURN, cfg.steps - start)):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    step()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[spec].append(time.perf_counter() - t0)
        for spec, ts in times.items():
            speeds[spec] = max(tokens / sorted(ts)[len(ts) // 2], speeds.get(spec, 0.0))
    return speeds


def _trainer(spec: str, cfg: BenchConfig, device: torch.device):
    """The model of ``spec`` at the benchmark's shape in train mode, and one training step
    (fwd+bwd+AdamW) on a fixed random batch, compiled if ``cfg.compile``."""
    name, mcfg = model_config_for(spec, cfg)
    model = build_model(name, mcfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    shape = (cfg.batch_size, cfg.block_size)
    x, y = (torch.randint(0, mcfg.vocab_size, shape, device=device) for _ in range(2))
    run = torch.compile(model) if cfg.compile else model

    def step() -> None:
        _, loss = run(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step


def _interleaved_train_child(specs: str, cfg: BenchConfig, queue) -> None:
    try:
        queue.put({"speeds": interleaved_train_speeds(cfg)})
    except Exception as err:  # report, do not hang the parent
        queue.put({"model": specs, "error": f"{type(err).__name__}: {err}"})


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


def run_bench(
    cfg: BenchConfig, child=_child, speeds=_interleaved_train_child
) -> list[dict[str, Any]]:
    """Peak memory, FLOPs and a timing per model, each in a fresh process (best of
    ``repeats`` rounds); then tokens/s from one process where every model takes its steps
    in turn (:func:`interleaved_train_speeds`; the fresh processes' own timing is kept as
    ``tokens_per_sec_isolated``). Ratios against gpt."""
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
    timing = run_isolated(speeds, ",".join(cfg.models), cfg)["speeds"]
    for spec, row in best.items():
        row["tokens_per_sec_isolated"] = row["tokens_per_sec"]
        row["tokens_per_sec"] = timing[spec]
        row["ms_per_step"] = 1000 * cfg.batch_size * cfg.block_size / timing[spec]
        row["achieved_flops"] = row["flops_per_token"] * timing[spec]
    rows = [best[s] for s in cfg.models]
    ref = best.get("gpt", rows[0])
    for row in rows:
        row["speed_ratio"] = row["tokens_per_sec"] / ref["tokens_per_sec"]
        row["mem_ratio"] = (
            row["peak_mem_mb"] / ref["peak_mem_mb"] if ref["peak_mem_mb"] > 0 else float("nan")
        )
        row["reference"] = ref["model"]
    return rows


def hardware(cfg: BenchConfig) -> str:
    """The run's device in ``metrics.json``'s words (the measuring processes' threads: this
    one's unless ``cfg.threads`` sets them), plus the torch version."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    described = device_description(device)
    if cfg.threads and device.type == "cpu":
        described = described.replace(
            f"{torch.get_num_threads()} threads", f"{cfg.threads} threads"
        )
    return f"{described}, torch {torch.__version__}"


def format_table(rows: list[dict[str, Any]], cfg: BenchConfig) -> str:
    ref = rows[0]["reference"] if rows else "gpt"
    lines = [
        f"# training step (fwd+bwd+AdamW), batch {cfg.batch_size} x block {cfg.block_size}, "
        f"{cfg.n_layer} layers, width {cfg.n_embd}; tokens/s: every model in one process taking "
        f"its steps in turn, 1 / median step, best of {cfg.repeats} rounds of {cfg.steps} steps; "
        f"peak memory: each model in its own process"
        + (", every model torch.compile'd (compiled in the untimed warmup)" if cfg.compile else ""),
        f"# hardware: {hardware(cfg)}; ratios against {ref}",
        "# MFLOP/tok: training (fwd+bwd) FLOPs per token, matrix products incl. attention, "
        "counted by torch's FlopCounterMode; GFLOP/s: that times tokens/s",
        f"{'model':<28} {'params':>10} {'tokens/s':>10} {'speed x':>8} {'ms/step':>9} {'peak MB':>9} {'mem x':>7}"
        f" {'MFLOP/tok':>10} {'GFLOP/s':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r.get('label') or r['model']:<28} {r['params']:>10,} {r['tokens_per_sec']:>10,.0f} {r['speed_ratio']:>8.2f} "
            f"{r['ms_per_step']:>9.1f} {r['peak_mem_mb']:>9.1f} {r['mem_ratio']:>7.2f}"
            f" {r['flops_per_token'] / 1e6:>10.2f} {r['achieved_flops'] / 1e9:>8.2f}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- generation


def parse_lengths(lengths: str) -> list[int]:
    try:
        values = [int(v) for v in lengths.split(",") if v.strip()]
    except ValueError:
        raise PhysllmError(f"bad --lengths {lengths!r}: comma-separated integers") from None
    if not values or min(values) < 2:
        raise PhysllmError(f"bad --lengths {lengths!r}: each length must be >= 2")
    return values


def _tensor_kb(obj: Any) -> float:
    """Kilobytes held by the tensors in a (nested) cache/state."""
    return state_nbytes(obj)[0] / 2**10


@torch.no_grad()
def measure_generation(spec: str, cfg: BenchConfig) -> dict[str, Any]:
    """Streaming decode at one context length (``cfg.lengths`` holds one number), in this process.

    The context is built by feeding ``length - timed_tokens`` random tokens
    through the model's own cache path (``decode_step``) in chunks of
    ``prefill_chunk``; then ``timed_tokens`` tokens are generated one at a
    time (greedy) and timed: tokens/s is one over the median step time (robust
    to a busy machine; the mean is kept as ``tokens_per_sec_mean``). Peak
    memory is measured over that generation phase only (the watermark is reset after the prefill): CUDA max allocated, or on
    Linux CPU the process's peak resident set. ``state_kb`` is the exact size
    of the cache (GPT: keys and values; context_vector: its state vectors).
    """

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    (length,) = parse_lengths(cfg.lengths)
    model = _decoder(spec, cfg, device)
    logits, state, timed = _prefill(model, length, cfg)
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    reset = device.type == "cuda" or reset_peak_rss()
    times = []
    for _ in range(timed - 1):
        t0 = time.perf_counter()
        token = logits.argmax(dim=-1, keepdim=True)
        logits, state = model.decode_step(token, state)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    elapsed = sum(times)
    median = sorted(times)[len(times) // 2]  # robust to a busy machine's stalls
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mb()
    return {
        "model": spec,
        "length": length,
        "params": model.num_params(),
        "timed_tokens": timed - 1,
        "tokens_per_sec": 1.0 / median,
        "tokens_per_sec_mean": (timed - 1) / elapsed,
        "ms_per_token": 1000 * median,
        "peak_mem_mb": peak,
        "peak_scope": "cuda allocated"
        if device.type == "cuda"
        else ("process RSS, generation phase" if reset else "process RSS, whole run"),
        "state_kb": _tensor_kb(state),
    }


def _decoder(spec: str, cfg: BenchConfig, device: torch.device) -> torch.nn.Module:
    """The model of ``spec`` at the benchmark's shape, seed 0, in eval mode."""
    torch.manual_seed(0)
    name, mcfg = model_config_for(spec, cfg)
    return build_model(name, mcfg).to(device).eval()


@torch.no_grad()
def _prefill(
    model: torch.nn.Module, length: int, cfg: BenchConfig
) -> tuple[torch.Tensor, Any, int]:
    """Build a context of ``length - timed_tokens`` random tokens (seed 0) through the
    model's cache in chunks of ``prefill_chunk``, then one untimed warm-up step. Returns
    the last logits, the state and how many of the length's tokens remain to be timed."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    prefill = max(1, length - cfg.timed_tokens)
    logits, state, done = None, None, 0
    while done < prefill:
        n = min(cfg.prefill_chunk, prefill - done)
        ids = torch.randint(model.config.vocab_size, (1, n), generator=gen).to(device)
        logits, state = model.decode_step(ids, state)
        done += n
    token = logits.argmax(dim=-1, keepdim=True)
    logits, state = model.decode_step(token, state)  # warm-up step, not timed
    return logits, state, length - done


# decoding steps a model takes in a row before the next model's turn: short enough that a
# slow spell of the machine (seconds) falls on every model, long enough that a model's
# weights and cache are back in the CPU's caches after its first step (one step each in
# turn put 8 models' working sets through the caches at every token)
DECODE_TURN = 16


@torch.no_grad()
def interleaved_decode_speeds(cfg: BenchConfig) -> dict[tuple[str, int], float]:
    """Tokens/s of every model at every length, all decoding in this one process: each
    (model, length) pair keeps its own decoding state and the pairs take turns of
    :data:`DECODE_TURN` steps, so a slow spell of a shared machine slows every model at
    every length alike. Both the ratios between models and each model's speed at its
    longest length over its shortest then hold where measurements in separate processes,
    or one length after another, do not. A pair whose timed steps run out before the
    longest's starts again from a fresh context (untimed), so every pair is timed across
    the whole round, and the pairs go round in a new random order every time. Per pair,
    one over the median of its steps in all ``repeats`` rounds."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    models = {spec: _decoder(spec, cfg, device) for spec in cfg.models}
    pairs = [(spec, length) for length in parse_lengths(cfg.lengths) for spec in models]
    pooled: dict[tuple[str, int], list[float]] = {}
    order = random.Random(0)
    for _ in range(cfg.repeats):
        running = {pair: list(_prefill(models[pair[0]], pair[1], cfg)) for pair in pairs}
        # timed steps per context: what each length leaves (at least one), the same for
        # every model
        budget = {
            n: max(1, min(r[2] for (_, m), r in running.items() if m == n) - 1) for _, n in pairs
        }
        left = {pair: budget[pair[1]] for pair in pairs}
        times: dict[tuple[str, int], list[float]] = {pair: [] for pair in pairs}
        for _ in range(-(-max(budget.values()) // DECODE_TURN)):
            # in a new order every time round: a pair never sits at one phase of a load
            # that comes and goes periodically (another job's steps)
            for pair in order.sample(pairs, len(pairs)):
                model = models[pair[0]]
                if left[pair] == 0:  # a fresh context for the next turns, untimed
                    running[pair] = list(_prefill(model, pair[1], cfg))
                    left[pair] = budget[pair[1]]
                logits, state, _ = running[pair]
                for _ in range(min(DECODE_TURN, left[pair])):
                    t0 = time.perf_counter()
                    token = logits.argmax(dim=-1, keepdim=True)
                    logits, state = model.decode_step(token, state)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[pair].append(time.perf_counter() - t0)
                left[pair] -= min(DECODE_TURN, left[pair])
                running[pair][:2] = logits, state
        for pair, steps in times.items():
            pooled.setdefault(pair, []).extend(steps)
    # one median over every round's steps: the best of several rounds' medians would
    # favour whichever pair had one lucky round
    return {pair: 1.0 / sorted(steps)[len(steps) // 2] for pair, steps in pooled.items()}


def _interleaved_child(specs: str, cfg: BenchConfig, queue) -> None:
    try:
        queue.put({"speeds": interleaved_decode_speeds(cfg)})
    except Exception as err:  # report, do not hang the parent
        queue.put({"model": ",".join(cfg.models), "error": f"{type(err).__name__}: {err}"})


def _generation_child(spec: str, cfg: BenchConfig, queue) -> None:
    try:
        queue.put(measure_generation(spec, cfg))
    except Exception as err:  # report, do not hang the parent
        queue.put({"model": spec, "error": f"{type(err).__name__}: {err}"})


def generation_config(cfg: BenchConfig) -> BenchConfig:
    """The benchmark's config for generation: GPT's positions must reach the longest length."""
    longest = max(parse_lengths(cfg.lengths))
    if cfg.timed_tokens < 2:
        raise PhysllmError("--timed-tokens must be >= 2")
    return dataclasses.replace(cfg, block_size=max(cfg.block_size, longest))


def run_generation_bench(
    cfg: BenchConfig, child=_generation_child, speeds=_interleaved_child
) -> list[dict[str, Any]]:
    """Every model at every length: peak memory and cache size each in a fresh process
    (the most of ``repeats``), tokens/s from one process where every model decodes at every
    length in turn (:func:`interleaved_decode_speeds`; what the fresh processes timed is kept as
    ``tokens_per_sec_isolated``).

    Rows also carry each model's growth from its shortest length:
    ``mem_growth`` (peak memory ratio) and ``speed_ratio`` (tokens/s ratio), and
    ``reference_ratio``: tokens/s over gpt's (or the first model's) at the same length.
    """
    cfg = generation_config(cfg)
    for spec in cfg.models:
        model_config_for(spec, cfg)  # fail fast on a bad name or override
    lengths = parse_lengths(cfg.lengths)
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for _ in range(cfg.repeats):
        for spec in cfg.models:
            for length in lengths:
                row = run_isolated(child, spec, dataclasses.replace(cfg, lengths=str(length)))
                prev = best.get((spec, length))
                if prev is not None:
                    row["peak_mem_mb"] = max(row["peak_mem_mb"], prev["peak_mem_mb"])
                    if prev["tokens_per_sec"] > row["tokens_per_sec"]:
                        row.update({k: prev[k] for k in ("tokens_per_sec", "ms_per_token")})
                best[(spec, length)] = row
    timing = run_isolated(speeds, ",".join(cfg.models), cfg)["speeds"]
    for (spec, length), row in best.items():
        row["tokens_per_sec_isolated"] = row["tokens_per_sec"]
        row["tokens_per_sec"] = timing[spec, length]
        row["ms_per_token"] = 1000 / timing[spec, length]
    rows = []
    ref = "gpt" if "gpt" in cfg.models else cfg.models[0]
    for spec in cfg.models:
        first = best[(spec, lengths[0])]
        for length in lengths:
            row = best[(spec, length)]
            row["mem_growth"] = row["peak_mem_mb"] / first["peak_mem_mb"]
            row["speed_ratio"] = row["tokens_per_sec"] / first["tokens_per_sec"]
            row["reference"] = ref
            row["reference_ratio"] = row["tokens_per_sec"] / best[(ref, length)]["tokens_per_sec"]
            rows.append(row)
    return rows


def format_generation_table(rows: list[dict[str, Any]], cfg: BenchConfig) -> str:
    cfg = generation_config(cfg)
    ref = rows[0]["reference"] if rows else "gpt"
    lines = [
        f"# streaming generation, batch 1: context built to each length through the cache, then "
        f"{cfg.timed_tokens} tokens decoded one at a time; tokens/s: 1 / median step, every model "
        f"at every length in one process, taking its steps in turn (a busy machine slows all "
        f"alike), the median over {cfg.repeats} rounds",
        f"# {cfg.n_layer} layers, width {cfg.n_embd}, gpt block {cfg.block_size}; hardware: {hardware(cfg)}",
        f"# peak memory: each model in its own process, {rows[0]['peak_scope'] if rows else ''}; "
        f"growth and speed vs each model's "
        f"shortest length; x {ref}: tokens/s over {ref}'s at the same length",
        f"{'model':<28} {'length':>7} {'params':>10} {'tokens/s':>9} {'x ' + ref:>8} {'speed x':>8} "
        f"{'peak MB':>9} {'growth':>7} {'cache KB':>10}",
    ]
    for r in rows:
        lines.append(
            f"{r.get('label') or r['model']:<28} {r['length']:>7} {r['params']:>10,} {r['tokens_per_sec']:>9,.0f} "
            f"{r['reference_ratio']:>8.2f} {r['speed_ratio']:>8.2f} {r['peak_mem_mb']:>9.1f} "
            f"{r['mem_growth']:>7.3f} {r['state_kb']:>10,.1f}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- lengths


@torch.no_grad()
def decode_speed(
    model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, repeats: int = 1
) -> dict[str, float]:
    """Streaming generation speed: ``prompt`` (1, P) through ``decode_step``, then
    ``new_tokens`` greedy tokens one call each. Tokens/s is one over the median step
    time (robust to a busy machine's stalls); the best of ``repeats`` passes is kept."""
    was_training = model.training
    model.eval()
    device = prompt.device
    best = float("inf")
    for _ in range(repeats):
        logits, state = model.decode_step(prompt, None)
        times = []
        for _ in range(new_tokens):
            t0 = time.perf_counter()
            token = logits.argmax(dim=-1, keepdim=True)  # (1, 1)
            logits, state = model.decode_step(token, state)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        best = min(best, sorted(times)[len(times) // 2])
    model.train(was_training)
    return {"decode_tokens_per_sec": 1.0 / best, "decode_ms_per_token": 1000 * best}


def measure_lengths(spec: str, cfg: BenchConfig) -> dict[str, Any]:
    """One model at every length in ``cfg.lengths`` (ascending), in this process: a
    training step (batch ``cfg.batch_size`` x the length) as :func:`measure_training`,
    then streaming decode up to that length (``cfg.timed_tokens`` tokens timed, at most
    half the length) as :func:`decode_speed`.

    The model is rebuilt at each length (``block_size`` = the length). CPU peak
    memory at a length is the resident high-water mark since that length began,
    above what the process held before the first model: with lengths ascending,
    memory kept by the allocator from a shorter length is less than a longer one
    needs, so each peak is that length's own. Returns ``{"model", "rows"}``.
    """
    baseline = _rss_mb()  # before any model: the import cost is not the model's
    rows = []
    for length in sorted(parse_lengths(cfg.lengths)):
        row, model = _measure_training(
            spec, dataclasses.replace(cfg, block_size=length), baseline=baseline
        )
        device = next(model.parameters()).device
        timed = max(1, min(cfg.timed_tokens, length // 2))
        gen = torch.Generator().manual_seed(0)
        prompt = torch.randint(model.config.vocab_size, (1, length - timed), generator=gen)
        row.update(decode_speed(model, prompt.to(device), timed), length=length)
        rows.append(row)
        del model
    return {"model": spec, "rows": rows}


def _lengths_child(spec: str, cfg: BenchConfig, queue) -> None:
    try:
        queue.put(measure_lengths(spec, cfg))
    except Exception as err:  # report, do not hang the parent
        queue.put({"model": spec, "error": f"{type(err).__name__}: {err}"})


def run_length_bench(cfg: BenchConfig, child=_lengths_child) -> list[dict[str, Any]]:
    """Training and decoding speed and training peak memory of every model at every
    length of ``cfg.lengths``: one fresh process per model and round, models in
    turns; best tokens/s and highest peak of ``repeats`` rounds. Each row also
    carries ``speed_ratio``, ``mem_ratio`` and ``decode_ratio`` against gpt (or the
    first model) at the same length."""
    lengths = sorted(parse_lengths(cfg.lengths))
    for spec in cfg.models:
        model_config_for(spec, dataclasses.replace(cfg, block_size=lengths[-1]))  # fail fast
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for _ in range(cfg.repeats):
        for spec in cfg.models:
            for row in run_isolated(child, spec, cfg)["rows"]:
                prev = best.setdefault((spec, row["length"]), row)
                if prev is not row:
                    for key in ("tokens_per_sec", "decode_tokens_per_sec"):
                        prev[key] = max(prev[key], row[key])
                    prev["ms_per_step"] = min(prev["ms_per_step"], row["ms_per_step"])
                    prev["decode_ms_per_token"] = 1000 / prev["decode_tokens_per_sec"]
                    prev["peak_mem_mb"] = max(prev["peak_mem_mb"], row["peak_mem_mb"])
    ref = "gpt" if "gpt" in cfg.models else cfg.models[0]
    rows = []
    for spec in cfg.models:
        for length in lengths:
            row, base = best[(spec, length)], best[(ref, length)]
            row["speed_ratio"] = row["tokens_per_sec"] / base["tokens_per_sec"]
            row["decode_ratio"] = row["decode_tokens_per_sec"] / base["decode_tokens_per_sec"]
            row["mem_ratio"] = (
                row["peak_mem_mb"] / base["peak_mem_mb"]
                if base["peak_mem_mb"] > 0
                else float("nan")
            )
            row["reference"] = ref
            rows.append(row)
    return rows


def format_length_table(rows: list[dict[str, Any]], cfg: BenchConfig) -> str:
    ref = rows[0]["reference"] if rows else "gpt"
    lines = [
        f"# training step (fwd+bwd+AdamW) at batch {cfg.batch_size} x each length, then streaming "
        f"decode (batch 1) up to that length; best of {cfg.repeats} rounds, one process per model",
        f"# hardware: {hardware(cfg)}; ratios against {ref} at the same length",
        f"{'model':<28} {'length':>7} {'params':>10} {'tokens/s':>10} {'speed x':>8} "
        f"{'peak MB':>9} {'mem x':>7} {'decode/s':>9} {'decode x':>9}",
    ]
    for r in rows:
        lines.append(
            f"{r.get('label') or r['model']:<28} {r['length']:>7} {r['params']:>10,} "
            f"{r['tokens_per_sec']:>10,.0f} {r['speed_ratio']:>8.2f} {r['peak_mem_mb']:>9.1f} "
            f"{r['mem_ratio']:>7.2f} {r['decode_tokens_per_sec']:>9,.0f} {r['decode_ratio']:>9.2f}"
        )
    return "\n".join(lines)
