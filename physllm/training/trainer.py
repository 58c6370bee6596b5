"""One trainer for the CLI, every notebook and the leaderboard, in named phases.

``train(cfg)`` runs the loop nanoGPT made familiar: batches from a
:class:`~physllm.training.batches.BatchSource` (random windows of a token memmap,
or, for recurrent models that carry their state, consecutive blocks of parallel
streams: truncated BPTT), AdamW with decay groups, linear warmup then cosine
decay, gradient accumulation and clipping, periodic evaluation on the held-out
split, and checkpoints. Around it: AMP on CUDA, opt-in ``torch.compile``, DDP under
``torchrun``, TensorBoard scalars, a tqdm bar, a NaN guard, and exact resume
(weights, optimizer, step, RNG and data-source state).

The phases are :class:`Trainer`'s methods: ``__init__`` (set-up, and resume),
``step``, ``log``, ``evaluate``, ``checkpoint`` and ``finish``; ``run`` strings them
together. Every run writes ``OUT/metrics.json`` (what reports read),
``OUT/history.json`` (the loss curves), ``OUT/best/`` and ``OUT/last/`` checkpoints
and ``OUT/tb/``.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from physllm.data import TokenData, repo_root
from physllm.env import (
    autocast_context,
    device_description,
    peak_memory_mb,
    resolve_device,
    set_threads,
)
from physllm.errors import PhysllmError, TrainingDivergedError
from physllm.lora import is_lora_name
from physllm.models import LanguageModel, ModelConfig, build_model
from physllm.progress import progress_bar
from physllm.tokenization import Tokenizer
from physllm.training.batches import BatchSource, batch_source
from physllm.training.checkpoint import (
    find_checkpoint,
    load_trainer_state,
    load_weights,
    recover_checkpoint,
    resolve_checkpoint_dir,
    save_checkpoint,
    write_json_atomic,
)
from physllm.training.config import TrainConfig
from physllm.training.evaluate import evaluate_loss, evaluate_split
from physllm.training.flops import FLOPS_HOW, training_flops_per_token
from physllm.training.resume import check_resume_config, finished_run, resume_history


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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: Iterable[torch.nn.Parameter],
    grad_clip: float,
) -> None:
    """Clip (``grad_clip`` > 0), step through the fp16 scaler, and clear the gradients."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


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


def train(cfg: TrainConfig, data: TokenData | None = None) -> RunResult:
    """Train ``cfg.model`` on ``cfg.corpus``; return the model, the data and the metrics.

    ``data``: batches from this instead of ``cfg.corpus``, any object with
    :class:`~physllm.data.TokenData`'s interface (``get_batch``, ``splits``, ``tokenizer``...):
    a synthetic task whose targets are -1 (ignored) except where an answer is scored
    (:class:`physllm.probes.ProbeData`).

    Bad input is a :class:`PhysllmError` raised before anything is written: the
    config and the paths it names first (:func:`_preflight`), then what needs the
    data (a block longer than a split) and the model (a checkpoint that does not fit).
    """
    _preflight(cfg)
    dist = Distributed()
    try:
        return Trainer(cfg, dist, data).run()
    finally:
        dist.close()


class Trainer:
    """One run of ``cfg``. Set-up (and resume) happens at construction; :meth:`run` then
    calls the phases: :meth:`step` each optimizer step, :meth:`log` every
    ``log_interval``, :meth:`evaluate` and :meth:`checkpoint` every ``eval_interval``,
    :meth:`finish` at the end. Nothing here asks what kind of model it trains: the batch
    source (windows or streams) and the model hide that."""

    def __init__(self, cfg: TrainConfig, dist: Distributed, data: TokenData | None = None):
        self.cfg, self.dist = cfg, dist
        set_threads(cfg.threads)
        self.device = device = dist.device(cfg.device)
        self.ctx, use_scaler = autocast_context(device, cfg.dtype)
        self.out_dir = Path(cfg.out_dir)
        self.last_dir, self.best_dir = self.out_dir / "last", self.out_dir / "best"
        if data is None:
            data = TokenData.load(cfg.corpus, cfg.tokenizer, cfg.max_chars)
        self.data = data
        self.mcfg = mcfg = _prepare_model_config(cfg, data.tokenizer)
        data.check_block(mcfg.block_size)
        resume_dir = self._resume_dir()

        torch.manual_seed(cfg.seed)  # same init on every rank
        self.model = self.raw_model = model = build_model(cfg.model, mcfg).to(device)
        if cfg.init_from and not cfg.resume:
            load_weights(model, resolve_checkpoint_dir(cfg.init_from), allow_missing=is_lora_name)
        self.optimizer = torch.optim.AdamW(
            model.optim_groups(cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            fused=device.type == "cuda",
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        # Each optimizer step reads batch_size * grad_accum rows; windows are seeded per
        # rank, streams split the text between ranks.
        rows = cfg.batch_size * cfg.grad_accum
        self.source = batch_source(
            model, data, "train", rows, cfg.seed + dist.rank, dist.rank, dist.world_size, device
        )
        self._eval_source("val", 0)  # evaluation's batches must fit the val split: checked now
        self.start_step, self.best_val = 0, float("inf")
        self.history: list[dict[str, Any]] = []
        self.saved_timing: dict[str, float] = {}  # the timing a resumed checkpoint holds
        self.train_time, self.steps_run = 0.0, 0
        self.finished: RunResult | None = None  # set when --resume finds nothing to do
        if resume_dir is not None:
            self.resume(resume_dir)

    # ------------------------------------------------------------------ set-up / resume

    def _resume_dir(self) -> Path | None:
        """last/, or what an interrupted save left (checkpoint.py's recovery rule)."""
        if not self.cfg.resume:
            return None
        resume_dir = find_checkpoint(self.last_dir)
        if resume_dir is None:
            raise PhysllmError(f"cannot resume: no checkpoint in {self.last_dir}")
        check_resume_config(self.cfg, resume_dir)
        return resume_dir

    def resume(self, resume_dir: Path) -> None:
        """Weights, optimizer, step, data position and RNGs from ``resume_dir``."""
        cfg, dist, device = self.cfg, self.dist, self.device
        load_weights(self.raw_model, resume_dir)
        state = load_trainer_state(resume_dir)
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_step, self.best_val = int(state["step"]), float(state["best_val"])
        try:
            self.source.load_state_dict(state)
        except PhysllmError as err:
            raise PhysllmError(f"{err} ({resume_dir})") from None
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        self.history = resume_history(self.out_dir, state, self.start_step)
        self.saved_timing = dict(state.get("timing", {}))
        if self.start_step >= cfg.steps:
            done = finished_run(
                cfg, dist.is_main, self.out_dir, self.last_dir, self.start_step, self.history
            )
            if done is not None:
                metrics, self.history = done
                best = find_checkpoint(self.best_dir)
                if best is not None:
                    load_weights(self.raw_model, best)  # what a full run returns: the best weights
                self.finished = self._result(metrics)
                return
        dist.barrier()  # every rank has read resume_dir before it is moved into place
        if dist.is_main:  # the writer's turn: undo what an interrupted save left
            recover_checkpoint(self.last_dir)
            recover_checkpoint(self.best_dir)
        dist.barrier()

    def _eval_source(self, split: str, seed: int, carry: bool = True) -> BatchSource:
        """A fresh source for one evaluation: the same batches every time."""
        return batch_source(
            self.raw_model,
            self.data,
            split,
            self.cfg.batch_size,
            seed,
            device=self.device,
            carry=carry,
        )

    # ------------------------------------------------------------------ the phases

    def step(self, step: int) -> float:
        """One optimizer step (``grad_accum`` micro-batches); returns its mean loss."""
        cfg, model, source = self.cfg, self.model, self.source
        set_lr(self.optimizer, lr_at(step, cfg))
        xs, ys, _ = source.next_batch()  # (rows, T)
        loss_sum, micro = 0.0, cfg.batch_size
        for micro_step in range(cfg.grad_accum):
            part = slice(micro_step * micro, (micro_step + 1) * micro)
            x = xs[part].to(self.device, non_blocking=True)
            y = ys[part].to(self.device, non_blocking=True)
            sync = not self.dist.enabled or micro_step == cfg.grad_accum - 1
            with self.ctx, contextlib.nullcontext() if sync else model.no_sync():
                _, loss = model(x, y, **source.model_inputs(part))
                loss = loss / cfg.grad_accum  # the mean over micro-batches, not their sum
            self.scaler.scale(loss).backward()
            loss_sum += loss.item()
            source.observe(self.raw_model)
        if not math.isfinite(loss_sum):
            raise TrainingDivergedError(
                f"loss became {loss_sum} at step {step}; stopped. "
                f"The last good checkpoint is in {self.last_dir}"
            )
        optimizer_step(self.optimizer, self.scaler, model.parameters(), cfg.grad_clip)
        return loss_sum

    def log(self, done: int, train_loss: float, writer: Any) -> None:
        """A history entry (and TensorBoard scalars) for the step just done."""
        entry = {
            "step": done,
            "train_loss": train_loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "time_s": round(self.train_time, 3),
        }
        entry.update({f"aux_{k}": v for k, v in self.raw_model.last_aux.items()})
        self.history.append(entry)
        if writer:
            for k, v in entry.items():
                if k != "step":
                    writer.add_scalar(f"train/{k}", v, done)

    def evaluate(
        self, split: str, iters: int, seed: int, carry: bool = True
    ) -> tuple[float, dict[str, float]]:
        """(mean loss, mean aux) on ``split``: :func:`evaluate_loss` on a fresh source."""
        source = self._eval_source(split, seed, carry)
        return evaluate_loss(self.raw_model, source, iters, device=self.device, ctx=self.ctx)

    def final_eval(self, split: str, max_blocks: int | None) -> dict[str, Any]:
        """:func:`evaluate_split` of ``split`` (its first ``max_blocks`` blocks; None: all)."""
        return evaluate_split(
            self.raw_model,
            self.data,
            self.mcfg.block_size,
            split,
            self.cfg.batch_size,
            device=self.device,
            ctx=self.ctx,
            max_blocks=max_blocks,
        )

    def checkpoint(self, step: int, val_loss: float, is_best: bool) -> None:
        """best/ (if ``is_best``), then last/ with the trainer state, then history.json."""
        info = {"step": step, "val_loss": val_loss, "corpus": self.data.corpus}
        trainer_state = {
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "best_val": self.best_val,
            "torch_rng": torch.get_rng_state(),
            # the loss curve so far, saved with the state it belongs to: a resume
            # rebuilds history.json exactly, whatever became of that file
            "history": self.history,
            # this invocation's training time: metrics for a run killed after its last checkpoint
            "timing": {"train_s": self.train_time, "steps": self.steps_run},
            **self.source.state_dict(),
        }
        if self.device.type == "cuda":
            trainer_state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        # best/ first: last/ is what --resume continues from, so once it holds this
        # step, best/ already does too (a kill in between just repeats this step).
        tokenizer = self.data.tokenizer
        if is_best:
            save_checkpoint(self.best_dir, self.raw_model, tokenizer, **info)
        save_checkpoint(self.last_dir, self.raw_model, tokenizer, trainer_state, **info)
        write_json_atomic(self.out_dir / "history.json", self.history)

    def finish(self, end_step: int, wall_s: float) -> RunResult:
        """Final numbers on the best weights (what best/ holds); metrics.json and history.json
        written. The losses come from :func:`evaluate_split`: the whole val split (or its
        first ``final_eval_blocks`` blocks) in fixed blocks, the same tokens for every model;
        ``val_loss`` scores each block from an empty context (``val_loss_carried``: state
        handed on, for models that carry it); ``train_loss`` the train split's first blocks,
        as many as val's. ``flops_per_token``: :func:`training_flops_per_token`."""
        cfg, data, model = self.cfg, self.data, self.raw_model
        if self.steps_run == 0 and not (self.best_dir / "config.json").exists():
            raise PhysllmError(
                f"nothing to do: the run in {self.out_dir} already reached step {cfg.steps}"
            )
        if (self.best_dir / "config.json").exists():
            load_weights(model, self.best_dir)
        # No step ran here only when resuming a run killed after its final checkpoint:
        # its timing then comes from that checkpoint.
        steps_timed = self.steps_run or int(self.saved_timing.get("steps", 0))
        time_timed = (
            self.train_time if self.steps_run else float(self.saved_timing.get("train_s", 0))
        )
        val = self.final_eval("val", cfg.final_eval_blocks or None)
        # the train split scored the same way, on as many tokens as val (its first blocks)
        train_eval = self.final_eval("train", val["val_blocks"])
        tokens_per_step = (
            cfg.batch_size * self.mcfg.block_size * cfg.grad_accum * self.dist.world_size
        )
        metrics = {
            "model": cfg.model,
            "params": model.num_params(),
            "params_non_embedding": model.num_params(non_embedding=True),
            "corpus": data.corpus,
            "tokenizer": data.tokenizer.name,
            "vocab_size": self.mcfg.vocab_size,
            "block_size": self.mcfg.block_size,
            "steps": end_step,
            "tokens_seen": end_step * tokens_per_step,
            "train_loss": train_eval["train_loss"],
            "val_loss": val["val_loss"],
            "val_bpc": val["val_bits_per_unit"],
            "val_eval": "blocks",
            **{k: v for k, v in val.items() if k not in ("val_loss", "aux")},
            "bpc_unit": data.tokenizer.unit,
            "flops_per_token": training_flops_per_token(model, self.mcfg.block_size),
            "flops_how": FLOPS_HOW,
            "tokens_per_sec": steps_timed * tokens_per_step / time_timed if time_timed else None,
            # NaN (not None) when unknown, a checkpoint from before timing was saved: callers format it
            "ms_per_step": 1000 * time_timed / steps_timed if steps_timed else float("nan"),
            "wall_s": wall_s,
            "peak_mem_mb": peak_memory_mb(self.device),
            "device": device_description(self.device),
            "threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "seed": cfg.seed,
            "git_sha": git_sha(),
            "world_size": self.dist.world_size,
            "model_config": self.mcfg.to_dict(),
            **{f"aux_{k}": v for k, v in val["aux"].items()},
        }
        if self.dist.is_main:
            write_json_atomic(self.out_dir / "metrics.json", metrics, indent=2)
            write_json_atomic(self.out_dir / "history.json", self.history)
        return self._result(metrics)

    def _result(self, metrics: dict[str, Any]) -> RunResult:
        self.raw_model.eval()
        return RunResult(
            self.raw_model, self.data.tokenizer, self.data, metrics, self.history, self.out_dir
        )

    # ------------------------------------------------------------------ the loop

    def _wrap(self) -> Any:
        """torch.compile and DDP around the model; the TensorBoard writer (main rank)."""
        cfg, dist = self.cfg, self.dist
        if cfg.compile:
            self.model = torch.compile(self.model)
        if dist.enabled:
            ids = [dist.local_rank] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if not (cfg.tensorboard and dist.is_main):
            return None
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

        purge = self.start_step if cfg.resume else None
        return SummaryWriter(str(self.out_dir / "tb"), purge_step=purge)

    def run(self) -> RunResult:
        """The loop: step, log, evaluate and checkpoint; then finish."""
        if self.finished is not None:
            return self.finished
        cfg, dist = self.cfg, self.dist
        if dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        writer = self._wrap()
        end_step = (
            cfg.steps if not cfg.stop_after else min(cfg.steps, self.start_step + cfg.stop_after)
        )
        # a report run forces a text bar even with progress=False (physllm.progress)
        bar = None
        if dist.is_main:
            bar = progress_bar(cfg.steps, cfg.model, enabled=cfg.progress, initial=self.start_step)
        val_loss, wall_start = float("nan"), time.perf_counter()
        self.model.train()
        try:
            for step in range(self.start_step, end_step):
                t0 = time.perf_counter()
                train_loss = self.step(step)
                self.train_time += time.perf_counter() - t0
                self.steps_run += 1
                done = step + 1
                if step % cfg.log_interval == 0 or done == end_step:
                    self.log(done, train_loss, writer)
                if bar:
                    bar.update(1)
                    if step % cfg.log_interval == 0:
                        bar.set_postfix(
                            loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}", refresh=False
                        )
                if done % cfg.eval_interval == 0 or done == end_step:
                    val_loss = self._eval_and_save(done, writer)
        finally:
            if bar:
                bar.close()
            if writer:
                writer.close()
        return self.finish(end_step, time.perf_counter() - wall_start)

    def _eval_and_save(self, done: int, writer: Any) -> float:
        """The periodic evaluation on val, and the checkpoint it decides (best or not)."""
        val_loss, aux = self.evaluate("val", self.cfg.eval_iters, self.cfg.seed + 10_000)
        entry = {"step": done, "val_loss": val_loss}
        self.history.append({**entry, **{f"val_aux_{k}": v for k, v in aux.items()}})
        if writer:
            writer.add_scalar("val/loss", val_loss, done)
        is_best = val_loss < self.best_val
        self.best_val = min(self.best_val, val_loss)
        if self.dist.is_main:
            self.checkpoint(done, val_loss, is_best)
        self.dist.barrier()  # other ranks may read best/ next: wait until it is written
        return val_loss


__all__ = ["RunResult", "Trainer", "git_sha", "lr_at", "optimizer_step", "set_lr", "train"]
