"""The one evaluator: mean loss over batches of a :class:`BatchSource`."""

from __future__ import annotations

import contextlib

import torch

from physllm.data import TokenData
from physllm.models import LanguageModel
from physllm.training.batches import BatchSource, batch_source


@torch.no_grad()
def evaluate_loss(
    model: LanguageModel,
    source: BatchSource | TokenData,
    iters: int,
    split: str = "val",
    batch_size: int = 12,
    seed: int = 0,
    device: torch.device | None = None,
    ctx: contextlib.AbstractContextManager | None = None,
    carry: bool = True,
) -> tuple[float, dict[str, float]]:
    """(mean loss, mean aux values) over ``iters`` batches of ``source``.

    Given TokenData, the batches are ``split``'s, ``batch_size`` rows each, from a fresh
    source: random windows seeded ``seed`` (the same batches every call), or, for a model
    that carries its state, consecutive blocks from fixed places with the state handed on
    (``carry=False``: each block from the initial state).
    """
    device = device or next(model.parameters()).device
    ctx = ctx or contextlib.nullcontext()
    if isinstance(source, TokenData):
        source = batch_source(model, source, split, batch_size, seed, device=device, carry=carry)
    was_training = model.training
    model.eval()
    losses, aux = [], {}
    for _ in range(iters):
        x, y, _ = source.next_batch()
        with ctx:
            _, loss = model(x.to(device), y.to(device), **source.model_inputs(slice(None)))
        source.observe(model)
        losses.append(loss.item())
        for k, v in model.last_aux.items():
            aux[k] = aux.get(k, 0.0) + v / iters
    model.train(was_training)
    return sum(losses) / len(losses), aux


__all__ = ["evaluate_loss"]
