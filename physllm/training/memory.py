"""The Hopfield memory stage on the trainer's pieces: its schedule (:func:`lr_at`), its
optimizer step (:func:`optimizer_step`) and its progress bar. What is specific to the
stage, the episodes and their loss, comes from :mod:`physllm.hopfield.tasks`."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import torch

from physllm.hopfield.tasks import (
    NarrativeQATask,
    draw_episode,
    episode_loss,
    load_narrativeqa_records,
    memory_parameters,
    narrativeqa_eval,
)
from physllm.progress import progress_bar
from physllm.training.config import TrainConfig
from physllm.training.trainer import lr_at, optimizer_step, set_lr


def memory_schedule(steps: int, lr: float, seed: int = 0, log_interval: int = 10) -> TrainConfig:
    """The stage's budget as a TrainConfig: 10% warmup, cosine decay to 5% of ``lr``,
    gradients clipped at 1, no weight decay."""
    return TrainConfig(
        model="hopfield",
        steps=steps,
        lr=lr,
        min_lr=0.05 * lr,
        warmup_steps=max(1, steps // 10),
        weight_decay=0.0,
        grad_clip=1.0,
        seed=seed,
        log_interval=log_interval,
        tensorboard=False,
    )


def run_stage(
    model,
    params: list[torch.nn.Parameter],
    cfg: TrainConfig,
    step_loss: Callable[[int], tuple[torch.Tensor, Callable[[], dict[str, Any]]]],
    progress: bool = False,
) -> list[dict[str, Any]]:
    """The memory stages' loop: ``cfg.steps`` AdamW steps on ``params`` at the schedule
    of ``cfg`` (:func:`memory_schedule`). ``step_loss(step)`` returns the step's loss and a
    function giving the history fields besides ``step``, ``train_loss`` and ``time_s``
    (called only on logged steps). Returns the history; the model is left in eval mode."""
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # fp32: the scaler is a pass-through
    bar = progress_bar(cfg.steps, "memory", enabled=progress)  # text in report runs
    history, t0 = [], time.perf_counter()
    model.train()
    try:
        for step in range(cfg.steps):
            set_lr(optimizer, lr_at(step, cfg))
            loss, fields = step_loss(step)
            loss.backward()
            optimizer_step(optimizer, scaler, params, cfg.grad_clip)
            if step % cfg.log_interval == 0 or step == cfg.steps - 1:
                history.append(
                    {
                        "step": step + 1,
                        "train_loss": loss.item(),
                        **fields(),
                        "time_s": round(time.perf_counter() - t0, 3),
                    }
                )
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    finally:
        if bar:
            bar.close()
    model.eval()
    return history


def train_memory(
    model,
    task,
    steps: int,
    batch_size: int = 8,
    max_facts: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    log_interval: int = 10,
    progress: bool = True,
    lora_rank: int | None = None,
) -> list[dict[str, Any]]:
    """Fit ``model``'s memory layer on two-call episodes with the backbone frozen; returns
    the history (``step``, ``train_loss``, ``n_facts``, ``time_s``, aux values).

    Each step draws the number of facts uniformly in [1, max_facts], writes call 1
    into a fresh per-episode memory and takes the cross-entropy of call 2's answers
    read through it. ``lora_rank`` (default: the model config's) > 0 also trains LoRA
    adapters on the backbone's attention; the rest of the backbone stays frozen.
    """
    params = memory_parameters(model, lora_rank)
    backbone_grad = any(p.requires_grad for p in model.backbone.parameters())
    rng = random.Random(seed)

    def step_loss(step: int):
        ep = draw_episode(task, batch_size, max_facts, rng)
        loss = episode_loss(model, ep, backbone_grad)
        n_facts = ep.write_ids.size(0) and len(ep.items[0])
        return loss, lambda: {
            "n_facts": n_facts,
            **{f"aux_{k}": v for k, v in model.last_aux.items()},
        }

    return run_stage(
        model, params, memory_schedule(steps, lr, seed, log_interval), step_loss, progress
    )


def train_gate(
    model,
    data,
    task,
    steps: int,
    bank_facts: int = 100,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    only_gate: bool = False,
) -> list[dict[str, Any]]:
    """Stage 2d: teach the memory to stay out of ordinary text when nothing in the bank
    matches; returns the history.

    Each step writes ``bank_facts`` unrelated facts of ``task`` (training names) into a
    per-step memory and takes the sum of two losses, with the memory layer trainable
    (``only_gate``: the gate alone) and the backbone frozen:

        L = CE(ordinary text | bank of unrelated facts) + CE(call 2's answers | its call 1)

    The first term is what a filled bank costs ordinary text (section 8 of notebook 05):
    it pushes g = sigmoid(w_g [h; W_o r]) toward 0, or the read toward nothing, when the
    bank holds nothing the text needs. The second keeps the read where it is the answer.
    The gate alone is a linear function of [h; W_o r] and cannot tell the two apart well
    (it closes on the answers too); the whole layer can.
    """
    gate = getattr(model.memory_layer, "gate", None)
    if gate is None:
        raise ValueError("train_gate needs combine='gated'")
    trainable = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    params = list((gate if only_gate else model.memory_layer).parameters())
    for p in params:
        p.requires_grad_(True)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device

    def step_loss(step: int):
        facts = task.facts(bank_facts, rng, "train")
        with torch.no_grad():
            bank = model.entries_for(
                torch.tensor([task.encode(task.write_text(facts, rng))], device=device)
            )
        x, y = data.get_batch("train", batch_size, model.config.block_size, gen)
        _, text_loss = model(x.to(device), y.to(device), memory=bank)
        facts_loss = episode_loss(model, draw_episode(task, batch_size, 16, rng))
        return text_loss + facts_loss, lambda: {
            "text_loss": text_loss.item(),
            "facts_loss": facts_loss.item(),
        }

    try:
        return run_stage(model, params, memory_schedule(steps, lr, seed), step_loss)
    finally:
        for p, flag in trainable.items():
            p.requires_grad_(flag)


def run_narrativeqa(
    model, tokenizer, steps: int, lr: float, batch_size: int, n_eval: int = 200, seed: int = 0
) -> dict:
    """The GPU preset's experiment: train the memory (and LoRA) on NarrativeQA train, then
    token F1 on validation questions with the summary in memory against without it."""
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_task = NarrativeQATask(encode, load_narrativeqa_records("train"), pad_id=pad)
    history = train_memory(model, train_task, steps, batch_size=batch_size, lr=lr, seed=seed)
    records = load_narrativeqa_records("validation", limit=n_eval)
    val_task = NarrativeQATask(encode, records, pad_id=pad)
    eos = tokenizer.eos_token_id
    return {
        "history": history,
        "with_memory": narrativeqa_eval(
            model, val_task, tokenizer.decode, records, True, eos_id=eos
        ),
        "without_memory": narrativeqa_eval(
            model, val_task, tokenizer.decode, records, False, eos_id=eos
        ),
    }


__all__ = ["memory_schedule", "run_narrativeqa", "run_stage", "train_gate", "train_memory"]
