"""Recall at distance, scored by streaming: the fact and its question further apart than any
training block (:class:`~physllm.probes.tasks.DistanceRecall`, notebook 07).

A model trained on the task at a short length (the fact and its question inside one block)
is scored at a gap of d filler tokens, d up to many times that length, by how it would
really meet such a text: one token after another through its own decoding state.

* :func:`stream_logits`, for every model: ``decode_step`` reads the facts, then the filler
  in one call, then the queries one token at a time. What reaches a query is whatever the
  model's state keeps: the context vector's vectors, QLLM's memory tokens carried from
  segment to segment, GPT's window of its last ``block_size`` tokens (learned positions:
  past its block the fact is gone, and that is what it scores).
* :func:`memory_logits`, for a model with a memory bank (CHopT, :mod:`physllm.hopfield`):
  one inference call per block, as a chat would make them. Call 1 is the facts and is
  written into the bank; the rest (gap and queries) follows in calls of ``block_size``
  tokens, each read through the bank and then written into it, so the bank also fills
  with the filler. No call after the first holds a fact token: recall is the bank's.

``carry=False`` is the control: what the facts left is dropped (the stream restarts from an
empty state after them; the memory model does not write its first call). A model that
recalls through its state falls to chance under it.

:class:`DistanceEpisodes` is the task as the memory stage's episodes
(:func:`physllm.training.train_memory`): facts in call 1, gap and queries in call 2.
"""

from __future__ import annotations

import dataclasses
import random

import torch

from physllm.arch import LanguageModel
from physllm.errors import PhysllmError
from physllm.hopfield.tasks import Episode
from physllm.probes.data import EVAL_SEED
from physllm.probes.tasks import IGNORE, DistanceRecall, ExactMatch


def has_memory(model: LanguageModel) -> bool:
    """True for a model with a bank written across calls (CHopT's ``memorize``)."""
    return hasattr(model, "memorize") and hasattr(model, "memory")


@torch.no_grad()
def stream_logits(
    model: LanguageModel, x: torch.Tensor, n_fact: int, start: int, carry: bool = True
) -> torch.Tensor:
    """Logits (B, T - start, V) after each position ``start..T-1`` of ``x`` (B, T), streamed
    through ``decode_step``: the facts ``x[:, :n_fact]`` in one call, the tokens up to
    ``start`` in a second, then one token per call. ``carry=False``: the state after the
    facts is dropped (the second call starts from an empty state)."""
    _, state = model.decode_step(x[:, :n_fact])
    if not carry:
        state = None
    out = []
    if start > n_fact:
        _, state = model.decode_step(x[:, n_fact:start], state)
    for t in range(start, x.size(1)):
        logits, state = model.decode_step(x[:, t : t + 1], state)  # (B, V)
        out.append(logits)
    return torch.stack(out, dim=1)


@torch.no_grad()
def memory_logits(
    model: LanguageModel, x: torch.Tensor, n_fact: int, start: int, carry: bool = True
) -> tuple[torch.Tensor, list[int]]:
    """Logits (B, T - start, V) of a memory model over inference calls, and the bank's size
    after call 1 for each row. Per row, from an empty bank: call 1 ``x[i, :n_fact]`` is
    written (``carry=False``: not written); the rest is cut into calls of ``block_size``
    tokens from its end (the last call is a full block ending at the last query), each
    read through the bank, then written into it. The bank is left empty."""
    block = model.config.block_size
    rows, after_write = [], []
    for i in range(x.size(0)):
        model.memory.reset()
        if carry:
            model.memorize(x[i : i + 1, :n_fact])
        after_write.append(len(model.memory))
        rest = x[i : i + 1, n_fact:]  # (1, T - n_fact)
        ends = list(range(rest.size(1), 0, -block))[::-1]  # each call's end
        logits = []
        for begin, end in zip([0, *ends[:-1]], ends):
            call = rest[:, begin:end]
            logits.append(model(call)[0][0])  # (len, V): reads the bank
            model.memorize(call)
        rows.append(torch.cat(logits, dim=0)[start - n_fact :])
    model.memory.reset()
    return torch.stack(rows), after_write


@torch.no_grad()
def score_at_distance(
    model: LanguageModel,
    task: DistanceRecall,
    n: int = 128,
    seed: int = EVAL_SEED,
    carry: bool = True,
    batch_size: int = 64,
) -> dict[str, float]:
    """Exact match on ``n`` samples of ``task`` (a fixed ``distance``), streamed
    (:func:`stream_logits`) or, for a memory model, over calls (:func:`memory_logits`):
    ``accuracy`` at the answers, ``exact`` (samples with every answer right), ``n_scored``;
    a memory model adds ``bank_after_write``, the mean slots filled after call 1."""
    if task.distance <= 0:
        raise PhysllmError("score_at_distance needs a task at a fixed distance (at_distance)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x, y = task.generate(n, seed)  # (n, T) each
    n_fact = 2 * task.n_facts
    start = n_fact + task.distance  # the first query: nothing before it is scored
    tally, banks = ExactMatch(), []
    for lo in range(0, n, batch_size):
        xb, yb = x[lo : lo + batch_size].to(device), y[lo : lo + batch_size, start:].to(device)
        if has_memory(model):
            logits, after = memory_logits(model, xb, n_fact, start, carry)
            banks += after
        else:
            logits = stream_logits(model, xb, n_fact, start, carry)
        tally.add(logits, yb)
    model.train(was_training)
    out = tally.result()
    if banks:
        out["bank_after_write"] = sum(banks) / len(banks)
    return out


class DistanceEpisodes:
    """``task`` as two-call episodes for the memory stage (``train_memory``'s ``task``).

    Per batch, three lengths are drawn within the training length: filler before the facts
    (b), the gap (g) and where the gap is cut (a). Call 1 is ``b`` filler, the facts and
    ``a`` filler, all written, so the bank holds filler beside the facts as it will when
    scored; call 2, read through the memory only, is the other ``g - a`` filler and the
    queries, scored at the answers."""

    def __init__(self, task: DistanceRecall):
        self.task = task

    def episode(
        self, batch_size: int, n_facts: int, rng: random.Random, split: str = "train"
    ) -> Episode:
        P = min(n_facts, self.task.n_facts)
        task = dataclasses.replace(self.task, n_facts=P, distance=0)
        free = task.seq_len + 1 - 4 * P  # filler tokens in a training sample
        gap = rng.randint(0, free)
        before, cut = rng.randint(0, free - gap), rng.randint(0, gap)
        K, V = task.key_range, task.vocab_size
        rows, mask = [], torch.zeros(batch_size, before + 4 * P + gap, dtype=torch.bool)
        for i in range(batch_size):
            tokens, scored = task.at_distance(gap).sample(rng)  # facts, gap, queries
            rows.append([rng.randrange(2 * K + 1, V) for _ in range(before)] + tokens)
            mask[i, [before + j for j in scored]] = True
        s = torch.tensor(rows)  # (B, before + 4P + gap)
        split_at = before + 2 * P + cut
        read = s[:, split_at:]  # call 2: the rest of the gap and the queries
        targets = torch.where(mask[:, split_at + 1 :], read[:, 1:], IGNORE)
        items = [[(r[before + 2 * j], r[before + 2 * j + 1]) for j in range(P)] for r in rows]
        return Episode(s[:, :split_at], read[:, :-1], targets, None, items)


__all__ = [
    "DistanceEpisodes",
    "has_memory",
    "memory_logits",
    "score_at_distance",
    "stream_logits",
]
