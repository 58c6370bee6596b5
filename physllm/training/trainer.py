"""One trainer for the CLI and every notebook.

``train(cfg)`` runs the loop nanoGPT made familiar: random windows from a
token memmap (or, for recurrent models that carry their state, consecutive
blocks of parallel streams: truncated BPTT), AdamW with decay groups, linear
warmup then cosine decay, gradient accumulation and clipping, periodic
evaluation on the held-out split, and checkpoints. Around it: AMP on CUDA, opt-in ``torch.compile``, DDP under
``torchrun``, TensorBoard scalars, a tqdm bar, a NaN guard, and exact resume
(weights, optimizer, step, RNG and data-sampler state).

Every run writes ``OUT/metrics.json`` (what reports read), ``OUT/history.json``
(the loss curves), ``OUT/best/`` and ``OUT/last/`` checkpoints and ``OUT/tb/``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from physllm.data import StreamSampler, TokenData, repo_root
from physllm.errors import PhysllmError, TrainingDivergedError
from physllm.lora import is_lora_name
from physllm.models import LanguageModel, ModelConfig, build_model
from physllm.tokenization import Tokenizer
from physllm.training.checkpoint import (
    find_checkpoint,
    load_trainer_state,
    load_weights,
    read_checkpoint_config,
    recover_checkpoint,
    resolve_checkpoint_dir,
    save_checkpoint,
    write_json_atomic,
)
from physllm.training.config import TrainConfig


@dataclass
class RunResult:
    """What ``train`` returns: the trained model (best checkpoint's weights), its data and numbers."""

    model: LanguageModel
    tokenizer: Tokenizer
    data: TokenData
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path = Path(".")


# --------------------------------------------------------------------------- pieces


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` (nanoGPT's schedule)."""
    decay_steps = cfg.lr_decay_steps or cfg.steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if step > decay_steps:
        return cfg.min_lr
    ratio = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PhysllmError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PhysllmError("device 'cuda' asked for, but no CUDA GPU is available")
    return device


def autocast_context(
    device: torch.device, dtype: str
) -> tuple[contextlib.AbstractContextManager, bool]:
    """(autocast context, whether fp16 needs a GradScaler). Mixed precision on CUDA only."""
    if device.type != "cuda" or dtype == "float32":
        return contextlib.nullcontext(), False
    if dtype == "auto":
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    return torch.autocast(device_type="cuda", dtype=torch_dtype), torch_dtype is torch.float16


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated tensor memory. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB): Linux's VmHWM, which, unlike
    ``ru_maxrss``, does not inherit the peak of the process that spawned us."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Linux: restart the peak-RSS watermark (VmHWM) from the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def git_sha() -> str:
    """The checkout's short commit (``-dirty`` when tracked code changed), or ``unknown``."""
    root = repo_root()
    if root is None:
        return "unknown"

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "physllm", "notebooks")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


@torch.no_grad()
def estimate_loss(
    model: LanguageModel,
    data: TokenData,
    split: str,
    iters: int,
    batch_size: int,
    device: torch.device,
    ctx: contextlib.AbstractContextManager,
    seed: int,
) -> tuple[float, dict[str, float]]:
    """Mean loss over ``iters`` batches drawn with their own seed (the same batches every eval)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    losses, aux = [], {}
    for _ in range(iters):
        x, y = data.get_batch(split, batch_size, model.config.block_size, gen)
        with ctx:
            _, loss = model(x.to(device), y.to(device))
        losses.append(loss.item())
        for k, v in model.last_aux.items():
            aux[k] = aux.get(k, 0.0) + v / iters
    model.train(was_training)
    return sum(losses) / len(losses), aux


def restart_rows(
    model: LanguageModel, state: list[torch.Tensor] | None, reset: torch.Tensor
) -> list[torch.Tensor] | None:
    """``state`` with the rows flagged in ``reset`` (B,) put back to the model's initial state."""
    if state is None or bool(reset.all()):
        return None  # every row starts over: the model's own zero state
    initial = model.initial_state(reset.numel(), state[0].device)
    return [
        torch.where(reset.to(s.device).view(-1, *[1] * (s.dim() - 1)), s0, s)
        for s, s0 in zip(state, initial)
    ]


@torch.no_grad()
def estimate_stream_loss(
    model: LanguageModel,
    data: TokenData,
    split: str,
    iters: int,
    batch_size: int,
    device: torch.device | None = None,
    ctx: contextlib.AbstractContextManager | None = None,
    carry: bool = True,
) -> tuple[float, dict[str, float]]:
    """Mean loss over ``iters`` consecutive blocks of ``batch_size`` streams, the state carried.

    For carries_state models: how they are trained and how they read in
    generation. The streams start at fixed places, so every eval reads the same
    text; ``carry=False`` reads the same blocks, each from the initial state.
    """
    device = device or next(model.parameters()).device
    ctx = ctx or contextlib.nullcontext()
    was_training = model.training
    model.eval()
    streams = StreamSampler(data, split, batch_size, model.config.block_size)
    state, losses, aux = None, [], {}
    for _ in range(iters):
        x, y, reset = streams.next()
        with ctx:
            _, loss = model(x.to(device), y.to(device), state=restart_rows(model, state, reset))
        state = model.last_state if carry else None
        losses.append(loss.item())
        for k, v in model.last_aux.items():
            aux[k] = aux.get(k, 0.0) + v / iters
    model.train(was_training)
    return sum(losses) / len(losses), aux


class Distributed:
    """DDP under torchrun (RANK/WORLD_SIZE set), a no-op otherwise."""

    def __init__(self):
        self.enabled = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, cfg_device: str) -> torch.device:
        if self.enabled and torch.cuda.is_available() and cfg_device in ("auto", "cuda"):
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return resolve_device(cfg_device)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _prepare_model_config(cfg: TrainConfig, tokenizer: Tokenizer) -> ModelConfig:
    mcfg = cfg.model_config
    if mcfg.vocab_size == 0:
        mcfg.vocab_size = tokenizer.vocab_size
    elif mcfg.vocab_size < tokenizer.vocab_size:
        raise PhysllmError(
            f"vocab_size {mcfg.vocab_size} is smaller than tokenizer {tokenizer.name}'s {tokenizer.vocab_size}"
        )
    return mcfg


def _check_resume_config(cfg: TrainConfig, last_dir: Path) -> dict:
    """The checkpoint's config.json, after checking it is the run ``cfg`` asks to continue."""
    saved = read_checkpoint_config(last_dir)
    if saved["model"] != cfg.model:
        raise PhysllmError(
            f"cannot resume: {last_dir} holds a {saved['model']!r} model, not {cfg.model!r}"
        )
    ours = cfg.model_config.to_dict()
    diff = [
        f"{k}={saved['config'].get(k)!r} (asked {v!r})"
        for k, v in ours.items()
        if saved["config"].get(k) != v
    ]
    if diff:
        raise PhysllmError(f"cannot resume: {last_dir} was trained with {', '.join(diff[:3])}")
    step = saved.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise PhysllmError(f"cannot resume: {last_dir / 'config.json'} has no valid 'step'")
    if step > cfg.steps:
        raise PhysllmError(
            f"nothing to do: {last_dir} is at step {step} and --steps is {cfg.steps}; "
            "pass a larger --steps"
        )
    return saved


def _read_json(path: Path) -> Any:
    """``path``'s JSON; None if it does not exist. A PhysllmError naming it if unreadable."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise PhysllmError(f"{path} is corrupt or truncated ({type(err).__name__})") from None


def _resume_history(out_dir: Path, state: dict, start_step: int) -> list[dict[str, Any]]:
    """The loss history up to ``start_step``: from the trainer state (exact, written with
    the checkpoint), else (checkpoints from before it was kept there) from history.json."""
    if "history" in state:
        return [dict(h) for h in state["history"]]
    path = out_dir / "history.json"
    try:
        saved = _read_json(path)
    except PhysllmError as err:
        raise PhysllmError(
            f"cannot resume: {err}; move it aside to resume without the loss history so far"
        ) from None
    if saved is None:
        return []
    if not isinstance(saved, list) or not all(isinstance(h, dict) and "step" in h for h in saved):
        raise PhysllmError(f"cannot resume: {path} is not a list of history entries")
    return [h for h in saved if h["step"] <= start_step]


def _finished_run(
    cfg: TrainConfig,
    dist: Distributed,
    out_dir: Path,
    last_dir: Path,
    step: int,
    history: list[dict[str, Any]],
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """``--resume`` of a run already at ``cfg.steps``: (its metrics.json, its history), files
    unchanged. None when metrics.json is missing, unreadable or from an earlier step: the run
    was killed after its last checkpoint, and the caller finishes it (the final evaluation)."""
    try:
        metrics = _read_json(out_dir / "metrics.json")
    except PhysllmError:
        return None
    if not isinstance(metrics, dict) or metrics.get("steps") != step:
        return None
    if dist.is_main:
        try:
            readable = _read_json(out_dir / "history.json") is not None
        except PhysllmError:
            readable = False
        if not readable:  # the only file touched: the checkpoint holds its exact contents
            write_json_atomic(out_dir / "history.json", history)
        print(
            f"nothing to do: {last_dir} is already at step {step} (--steps {cfg.steps}); "
            f"{out_dir / 'metrics.json'} unchanged",
            file=sys.stderr,
        )
    return metrics, history


# --------------------------------------------------------------------------- the loop


def _preflight(cfg: TrainConfig) -> None:
    """Checks that need no data: every config field, then the paths the run will use."""
    if not isinstance(cfg, TrainConfig):
        raise PhysllmError(f"train() takes a TrainConfig, got {type(cfg).__name__}")
    cfg.validate()  # again: a notebook may have edited fields since construction
    if cfg.steps < 1:
        raise PhysllmError(f"--steps must be >= 1 to train, got {cfg.steps}")
    out_dir = Path(cfg.out_dir)
    # mkdir(parents=True) happens only after the data and model checks; make sure it will work
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise PhysllmError(f"--out-dir {out_dir}: {existing} exists and is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PhysllmError(f"--out-dir {out_dir}: cannot write in {existing}")
    if cfg.init_from and not cfg.resume:
        try:
            resolve_checkpoint_dir(cfg.init_from)
        except PhysllmError as err:
            raise PhysllmError(f"--init-from: {err}") from None


def train(cfg: TrainConfig) -> RunResult:
    """Train ``cfg.model`` on ``cfg.corpus``; return the model, the data and the metrics.

    Bad input is a :class:`PhysllmError` raised before anything is written: the
    config and the paths it names first (:func:`_preflight`), then what needs the
    data (a block longer than a split) and the model (a checkpoint that does not fit).
    """
    _preflight(cfg)
    dist = Distributed()
    try:
        return _train(cfg, dist)
    finally:
        dist.close()


def _train(cfg: TrainConfig, dist: Distributed) -> RunResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = dist.device(cfg.device)
    ctx, use_scaler = autocast_context(device, cfg.dtype)
    out_dir = Path(cfg.out_dir)
    last_dir, best_dir = out_dir / "last", out_dir / "best"

    data = TokenData.load(cfg.corpus, cfg.tokenizer, cfg.max_chars)
    mcfg = _prepare_model_config(cfg, data.tokenizer)
    data.check_block(mcfg.block_size)
    resume_dir = None  # last/, or what an interrupted save left (checkpoint.py's recovery rule)
    if cfg.resume:
        resume_dir = find_checkpoint(last_dir)
        if resume_dir is None:
            raise PhysllmError(f"cannot resume: no checkpoint in {last_dir}")
        _check_resume_config(cfg, resume_dir)

    torch.manual_seed(cfg.seed)  # same init on every rank
    model = build_model(cfg.model, mcfg).to(device)
    if cfg.init_from and not cfg.resume:
        load_weights(model, resolve_checkpoint_dir(cfg.init_from), allow_missing=is_lora_name)
    optimizer = torch.optim.AdamW(
        model.optim_groups(cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        fused=device.type == "cuda",
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    batch_gen = torch.Generator().manual_seed(cfg.seed + dist.rank)  # the data position
    # Recurrent models that carry their state: every optimizer step reads the next
    # block of batch_size * grad_accum parallel streams (truncated BPTT).
    stateful = model.carries_state()
    rows = cfg.batch_size * cfg.grad_accum
    streams = (
        StreamSampler(data, "train", rows, mcfg.block_size, dist.rank, dist.world_size)
        if stateful
        else None
    )
    if stateful:  # evaluation reads the val split as batch_size streams: check they fit now
        StreamSampler(data, "val", cfg.batch_size, mcfg.block_size)
    carried: list[torch.Tensor] | None = None  # the state after the last step's block (rows, ...)
    start_step, best_val, history = 0, float("inf"), []
    saved_timing: dict[str, float] = {}
    if resume_dir is not None:
        load_weights(model, resume_dir)
        state = load_trainer_state(resume_dir)
        optimizer.load_state_dict(state["optimizer"])
        start_step, best_val = int(state["step"]), float(state["best_val"])
        batch_gen.set_state(state["batch_rng"])
        if streams is not None:
            if "streams" not in state:
                raise PhysllmError(f"cannot resume: {resume_dir} holds no stream positions")
            streams.load_state_dict(state["streams"])
            carried = [t.to(device) for t in state["carried_state"]] or None
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        history = _resume_history(out_dir, state, start_step)
        saved_timing = dict(state.get("timing", {}))
        if start_step >= cfg.steps:
            finished = _finished_run(cfg, dist, out_dir, last_dir, start_step, history)
            if finished is not None:
                metrics, history = finished
                best = find_checkpoint(best_dir)
                if best is not None:
                    load_weights(model, best)  # what a full run returns: the best weights
                model.eval()
                return RunResult(model, data.tokenizer, data, metrics, history, out_dir)
        dist.barrier()  # every rank has read resume_dir before it is moved into place
        if dist.is_main:  # the writer's turn: undo what an interrupted save left
            recover_checkpoint(last_dir)
            recover_checkpoint(best_dir)
        dist.barrier()
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if device.type == "cuda" else None
        )
    writer = None
    if cfg.tensorboard and dist.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_step if cfg.resume else None)

    def checkpoint(step: int, val_loss: float, is_best: bool) -> None:
        info = {
            "step": step,
            "val_loss": val_loss,
            "corpus": data.corpus,
            "train_config": cfg.to_dict(),
        }
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "step": step,
            "best_val": best_val,
            "batch_rng": batch_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            # the loss curve so far, saved with the state it belongs to: a resume
            # rebuilds history.json exactly, whatever became of that file
            "history": history,
            # this invocation's training time: metrics for a run killed after its last checkpoint
            "timing": {"train_s": train_time, "steps": steps_run},
        }
        if streams is not None:
            trainer_state["streams"] = streams.state_dict()
            trainer_state["carried_state"] = [t.cpu() for t in carried or []]
        if device.type == "cuda":
            trainer_state["cuda_rng"] = torch.cuda.get_rng_state(device)
        # best/ first: last/ is what --resume continues from, so once it holds this
        # step, best/ already does too (a kill in between just repeats this step).
        if is_best:
            save_checkpoint(best_dir, raw_model, data.tokenizer, **info)
        save_checkpoint(last_dir, raw_model, data.tokenizer, trainer_state, **info)
        write_json_atomic(out_dir / "history.json", history)

    block, micro = mcfg.block_size, cfg.batch_size

    def evaluate(split: str, iters: int, seed: int) -> tuple[float, dict[str, float]]:
        """Random windows; consecutive blocks with the state carried for stateful models."""
        if stateful:
            return estimate_stream_loss(raw_model, data, split, iters, micro, device, ctx)
        return estimate_loss(raw_model, data, split, iters, micro, device, ctx, seed)

    tokens_per_step = micro * block * cfg.grad_accum * dist.world_size
    end_step = cfg.steps if not cfg.stop_after else min(cfg.steps, start_step + cfg.stop_after)
    progress = None
    if dist.is_main:  # a report run forces a text bar even with progress=False (physllm.progress)
        from physllm.progress import progress_bar

        progress = progress_bar(cfg.steps, cfg.model, enabled=cfg.progress, initial=start_step)

    train_time, steps_run, val_loss, train_loss = 0.0, 0, float("nan"), float("nan")
    wall_start = time.perf_counter()
    model.train()
    for step in range(start_step, end_step):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        if streams is not None:
            xs, ys, reset = streams.next()  # (rows, T): row r continues its previous block
            carried = restart_rows(raw_model, carried, reset)
            next_state = []
        for micro_step in range(cfg.grad_accum):
            kwargs = {}
            if streams is not None:
                part = slice(micro_step * micro, (micro_step + 1) * micro)
                x, y = xs[part], ys[part]
                kwargs["state"] = None if carried is None else [t[part] for t in carried]
            else:
                x, y = data.get_batch("train", micro, block, batch_gen)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sync = not dist.enabled or micro_step == cfg.grad_accum - 1
            with ctx, contextlib.nullcontext() if sync else model.no_sync():
                _, loss = model(x, y, **kwargs)
                loss = loss / cfg.grad_accum  # the mean over micro-batches, not their sum
            scaler.scale(loss).backward()
            loss_sum += loss.item()
            if streams is not None:
                next_state.append(raw_model.last_state)  # detached: BPTT stops at the block
        if streams is not None:
            carried = [torch.cat(parts) for parts in zip(*next_state)]
        if not math.isfinite(loss_sum):
            if progress:
                progress.close()
            raise TrainingDivergedError(
                f"loss became {loss_sum} at step {step}; stopped. The last good checkpoint is in {last_dir}"
            )
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        train_time += time.perf_counter() - t0
        steps_run += 1
        train_loss = loss_sum
        done = step + 1
        if step % cfg.log_interval == 0 or done == end_step:
            entry = {
                "step": done,
                "train_loss": train_loss,
                "lr": lr,
                "time_s": round(train_time, 3),
            }
            entry.update({f"aux_{k}": v for k, v in raw_model.last_aux.items()})
            history.append(entry)
            if writer:
                for k, v in entry.items():
                    if k != "step":
                        writer.add_scalar(f"train/{k}", v, done)
        if progress:
            progress.update(1)
            if step % cfg.log_interval == 0:
                progress.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}", refresh=False)
        if done % cfg.eval_interval == 0 or done == end_step:
            val_loss, aux = evaluate("val", cfg.eval_iters, cfg.seed + 10_000)
            history.append(
                {"step": done, "val_loss": val_loss, **{f"val_aux_{k}": v for k, v in aux.items()}}
            )
            if writer:
                writer.add_scalar("val/loss", val_loss, done)
            is_best = val_loss < best_val
            best_val = min(best_val, val_loss)
            if dist.is_main:
                checkpoint(done, val_loss, is_best)
            dist.barrier()  # other ranks may read best/ next: wait until it is written
    if progress:
        progress.close()
    if writer:
        writer.close()
    wall_s = time.perf_counter() - wall_start

    # Report on the best weights (what best/ holds): final numbers over more eval batches.
    if steps_run == 0 and not (best_dir / "config.json").exists():
        raise PhysllmError(f"nothing to do: the run in {out_dir} already reached step {cfg.steps}")
    if (best_dir / "config.json").exists():
        load_weights(raw_model, best_dir)
    # No step ran here only when resuming a run killed after its final checkpoint:
    # its timing then comes from that checkpoint.
    steps_timed = steps_run or int(saved_timing.get("steps", 0))
    time_timed = train_time if steps_run else float(saved_timing.get("train_s", 0.0))
    final_iters = max(cfg.eval_iters, 20)
    val_loss, aux = evaluate("val", final_iters, cfg.seed + 20_000)
    train_eval, _ = evaluate("train", final_iters, cfg.seed + 30_000)
    extra: dict[str, Any] = {"val_eval": "streams" if stateful else "windows"}
    if stateful:
        # the same blocks, each from the initial state: the gap is what the carried context buys
        extra["val_loss_reset"], _ = estimate_stream_loss(
            raw_model, data, "val", final_iters, micro, device, ctx, carry=False
        )
    metrics = {
        "model": cfg.model,
        "params": raw_model.num_params(),
        "params_non_embedding": raw_model.num_params(non_embedding=True),
        "corpus": data.corpus,
        "tokenizer": data.tokenizer.name,
        "vocab_size": mcfg.vocab_size,
        "block_size": block,
        "steps": end_step,
        "tokens_seen": end_step * tokens_per_step,
        "train_loss": train_eval,
        "val_loss": val_loss,
        "val_bpc": val_loss / math.log(2) / data.units_per_token("val"),
        **extra,
        "bpc_unit": data.tokenizer.unit,
        "tokens_per_sec": steps_timed * tokens_per_step / time_timed if time_timed else None,
        # NaN (not None) when unknown, a checkpoint from before timing was saved: callers format it
        "ms_per_step": 1000 * time_timed / steps_timed if steps_timed else float("nan"),
        "wall_s": wall_s,
        "peak_mem_mb": peak_memory_mb(device),
        "device": device_description(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "seed": cfg.seed,
        "git_sha": git_sha(),
        "world_size": dist.world_size,
        "model_config": mcfg.to_dict(),
        **{f"aux_{k}": v for k, v in aux.items()},
    }
    if dist.is_main:
        write_json_atomic(out_dir / "metrics.json", metrics, indent=2)
        write_json_atomic(out_dir / "history.json", history)
    raw_model.eval()
    return RunResult(raw_model, data.tokenizer, data, metrics, history, out_dir)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


__all__ = [
    "RunResult",
    "TrainConfig",
    "estimate_stream_loss",
    "lr_at",
    "train",
]
