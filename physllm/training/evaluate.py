"""The evaluators.

- :func:`evaluate_split`: every final number. The whole split in fixed, non-overlapping
  blocks, the same tokens for every model, scored with plain cross-entropy.
- :func:`evaluate_loss`: a quick estimate on a few batches of a :class:`BatchSource`
  (random windows, or streams), for the training curve and best-checkpoint choice.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from physllm.data import TokenData
from physllm.errors import PhysllmError
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


def split_blocks(data: TokenData, split: str, block_size: int) -> int:
    """How many blocks :func:`evaluate_split` scores on the whole of ``split``.

    Block k reads tokens [kT, kT + T) and predicts [kT + 1, kT + T + 1): the targets
    are the inputs shifted by one, so the split's first token is never predicted and
    N tokens give (N - 1) // T full blocks (the partial one at the end is dropped).
    """
    n = (len(data.splits[split]) - 1) // block_size
    if n < 1:
        raise PhysllmError(
            f"corpus {data.corpus!r}: the {split} split has {len(data.splits[split])} tokens, "
            f"fewer than one block of {block_size}+1"
        )
    return n


def _blocks(tokens: np.ndarray, ids: np.ndarray, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks ``ids`` (B,) of the token array: x, y (B, T) int64, y shifted by one."""
    window = tokens[ids[:, None] * T + np.arange(T + 1)].astype(np.int64)  # (B, T+1)
    window = torch.from_numpy(window)
    return window[:, :-1], window[:, 1:]


def _summed_ce(model: LanguageModel, x: torch.Tensor, y: torch.Tensor, **inputs: Any) -> float:
    """Sum over the B*T positions of -ln p(y | x): the model's logits, plain cross-entropy
    (its forward's own loss may add regularisers; they must not enter the score)."""
    logits, _ = model(x, y, **inputs)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").item()


def _reset_pass(
    model: LanguageModel,
    tokens: np.ndarray,
    n_blocks: int,
    T: int,
    batch_size: int,
    device: torch.device,
    ctx: contextlib.AbstractContextManager,
) -> tuple[float, dict[str, float]]:
    """Summed cross-entropy of blocks 0..n_blocks-1, each from an empty context / zero
    state, ``batch_size`` blocks a forward; the model's aux values averaged over blocks."""
    total, aux = 0.0, {}  # aux: name -> mean over blocks
    for start in range(0, n_blocks, batch_size):
        ids = np.arange(start, min(start + batch_size, n_blocks))
        x, y = _blocks(tokens, ids, T)
        with ctx:
            total += _summed_ce(model, x.to(device), y.to(device))
        for k, v in model.last_aux.items():
            aux[k] = aux.get(k, 0.0) + float(v) * len(ids) / n_blocks
    return total, aux


def _carried_pass(
    model: LanguageModel,
    tokens: np.ndarray,
    n_blocks: int,
    T: int,
    streams: int,
    device: torch.device,
    ctx: contextlib.AbstractContextManager,
) -> float:
    """Summed cross-entropy of the same blocks read in order with the state handed on.

    The blocks are cut into ``streams`` contiguous stretches of m = ceil(n / streams)
    (row r reads blocks r*m, r*m + 1, ...), each from the zero state; step j runs block j
    of every row that still has one. Those rows are always the first ones, so the
    state of the active rows is a prefix of the last step's.
    """
    m = math.ceil(n_blocks / streams)
    total, state = 0.0, None
    for j in range(m):
        active = min(streams, math.ceil((n_blocks - j) / m))  # rows r with r*m + j < n_blocks
        ids = np.arange(active) * m + j
        x, y = _blocks(tokens, ids, T)
        inputs = {"state": None if state is None else [s[:active] for s in state]}
        with ctx:
            total += _summed_ce(model, x.to(device), y.to(device), **inputs)
        state = model.last_state
    return total


@torch.no_grad()
def evaluate_split(
    model: LanguageModel,
    data: TokenData,
    block_size: int,
    split: str = "val",
    batch_size: int = 12,
    device: torch.device | None = None,
    ctx: contextlib.AbstractContextManager | None = None,
    max_blocks: int | None = None,
) -> dict[str, Any]:
    """Score ``split`` of ``data`` in fixed non-overlapping blocks of ``block_size`` tokens.

    The blocks are those of :func:`split_blocks` (all of them, or the first
    ``max_blocks`` for a quick run; None or 0: all), so every model is scored on the
    same tokens. ``batch_size`` blocks go through each forward (no gradients).
    Keys (``s`` is the split's name):

    - ``s_loss`` = ``s_loss_reset``: nats/token, each block from an empty context
      (or zero state): the number that compares across models;
    - ``s_loss_carried`` (models whose ``carries_state()``): the same blocks in order
      with the state handed on, ``batch_size`` contiguous stretches each from zero;
    - ``s_tokens`` (predicted tokens: blocks * block_size), ``s_blocks``;
    - ``s_bits_per_unit`` = loss / ln 2 / (characters or bytes per token, the whole split's);
    - ``s_perplexity`` = exp(loss);
    - ``eval_protocol``: all of that in one line; ``aux``: the model's ``last_aux``
      values averaged over the reset pass (for logging; they never enter the loss).
    """
    device = device or next(model.parameters()).device
    ctx = ctx or contextlib.nullcontext()
    tokens = data.splits[split]
    available = split_blocks(data, split, block_size)
    n_blocks = min(available, max_blocks) if max_blocks else available
    n_tokens = n_blocks * block_size
    was_training = model.training
    model.eval()
    try:
        total, aux = _reset_pass(model, tokens, n_blocks, block_size, batch_size, device, ctx)
        carried = None
        if model.carries_state():
            streams = min(batch_size, n_blocks)
            carried = _carried_pass(model, tokens, n_blocks, block_size, streams, device, ctx)
    finally:
        model.train(was_training)
    loss = total / n_tokens
    which = f"all {n_blocks}" if n_blocks == available else f"the first {n_blocks} of {available}"
    protocol = (
        f"{split} split, {which} non-overlapping blocks of {block_size} tokens "
        f"({n_tokens} predicted tokens), each from an empty context; plain cross-entropy"
    )
    result: dict[str, Any] = {f"{split}_loss": loss, f"{split}_loss_reset": loss}
    if carried is not None:
        result[f"{split}_loss_carried"] = carried / n_tokens
        protocol += f"; carried: {streams} contiguous stretches in order, state handed on"
    result.update(
        {
            f"{split}_tokens": n_tokens,
            f"{split}_blocks": n_blocks,
            f"{split}_bits_per_unit": loss / math.log(2) / data.units_per_token(split),
            f"{split}_perplexity": math.exp(loss),
            "eval_protocol": protocol,
            "aux": aux,
        }
    )
    return result


__all__ = ["evaluate_loss", "evaluate_split", "split_blocks"]
