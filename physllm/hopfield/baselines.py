"""Readers that answer a question from what an earlier call wrote: the memory and its baselines.

Recall (:func:`physllm.hopfield.tasks.recall`) scores every reader with one rule:
call 1 is written (``write``), call 2's questions are answered greedily
(``answer``) and the answer tokens are scored by teacher forcing (``answer_nll``).
A reader is anything with those three methods and ``reset``; the model-based
ones also have ``log_probs(idx)`` (B, T, V), which scores rows of different
lengths in one teacher-forced pass (story recall,
:func:`physllm.hopfield.stories.compare_story_readers`):

* :class:`MemoryReader`: the CHopT model, its bank written by call 1
  (``use_memory=False``: the bank is reset between the calls: the backbone alone);
* :class:`NGramCache`: no parameters. Every n-gram of the written text (all orders
  1..n) with the token that followed; an answer is the greedy continuation from
  the longest suffix of the prompt (at most n tokens) found in the text. It is
  what the facts task can be solved by without any learning;
* :class:`KNNLM`: Khandelwal et al. (2020), "Generalization through Memorization:
  Nearest Neighbor Language Models". Call 1 stores (hidden state at t, token t+1)
  for every position; a read takes the k nearest stored states by squared L2
  distance d to the query's hidden state, p_knn = softmax(-d / T) summed per token,
  and mixes p = lambda p_knn + (1 - lambda) p_LM with the frozen backbone's p_LM.

Shapes: prompts (B, Tq) token ids of one length; answers (B, n).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Protocol

import torch
import torch.nn.functional as F

from physllm.hopfield.model import HopfieldLM


class Reader(Protocol):
    """What :func:`~physllm.hopfield.tasks.recall` needs of a memory."""

    def reset(self) -> None: ...

    def write(self, ids: torch.Tensor) -> None: ...

    def answer(self, prompts: torch.Tensor, n: int) -> torch.Tensor: ...

    def answer_nll(self, prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor: ...


def _nll_at_answers(logp: torch.Tensor, prompts: torch.Tensor, answers: torch.Tensor):
    """Summed nats of ``answers`` (B, n) under log-probs ``logp`` (B, Tq + n - 1, V) -> (B,)."""
    Tq, n = prompts.size(1), answers.size(1)
    at = logp[:, Tq - 1 : Tq - 1 + n]  # the positions that predict the answer tokens
    return -at.gather(-1, answers.unsqueeze(-1)).squeeze(-1).sum(-1)


class MemoryReader:
    """The CHopT model as a reader: call 1 goes into its bank (unless ``use_memory`` is off)."""

    def __init__(self, model: HopfieldLM, use_memory: bool = True):
        self.model, self.use_memory = model, use_memory

    def reset(self) -> None:
        self.model.memory.reset()

    @torch.no_grad()
    def write(self, ids: torch.Tensor) -> None:
        """ids (1, T): call 1, stored in the bank (no memory: nothing is kept)."""
        if self.use_memory:
            self.model.call(ids)

    @torch.no_grad()
    def answer(self, prompts: torch.Tensor, n: int) -> torch.Tensor:
        out = self.model.call(prompts, max_new_tokens=n, write=False, temperature=0)
        return out[:, prompts.size(1) :]

    @torch.no_grad()
    def log_probs(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> log p (B, T, V), reading the bank (empty: the backbone alone)."""
        logits, _ = self.model(idx)
        return F.log_softmax(logits.float(), -1)

    @torch.no_grad()
    def answer_nll(self, prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        logp = self.log_probs(torch.cat([prompts, answers[:, :-1]], dim=1))
        return _nll_at_answers(logp, prompts, answers)


class NGramCache:
    """An exact n-gram cache of the written text: no parameters, no learning.

    ``n``: the longest context matched (the reviewer's 12); ``vocab_size``: for the
    smoothed probabilities of :meth:`answer_nll`. A context seen several times
    predicts its most frequent continuation (ties: the one stored first).
    """

    def __init__(self, n: int = 12, vocab_size: int = 256, smoothing: float = 0.01):
        self.n, self.vocab_size, self.smoothing = n, vocab_size, smoothing
        self.table: dict[tuple[int, ...], Counter] = {}

    def reset(self) -> None:
        self.table = {}

    def write(self, ids: torch.Tensor) -> None:
        """ids (1, T): every context of 1..n tokens ending at t, with token t+1."""
        seq = ids[0].tolist()
        for t in range(len(seq) - 1):
            for k in range(1, min(self.n, t + 1) + 1):
                self.table.setdefault(tuple(seq[t + 1 - k : t + 1]), Counter())[seq[t + 1]] += 1

    def continuation(self, context: list[int]) -> Counter | None:
        """The next-token counts after the longest suffix of ``context`` in the text."""
        for k in range(min(self.n, len(context)), 0, -1):
            found = self.table.get(tuple(context[-k:]))
            if found:
                return found
        return None

    def next_token(self, context: list[int]) -> int:
        found = self.continuation(context)
        return found.most_common(1)[0][0] if found else 0

    def answer(self, prompts: torch.Tensor, n: int) -> torch.Tensor:
        rows = []
        for row in prompts.tolist():
            for _ in range(n):
                row.append(self.next_token(row))
            rows.append(row[-n:])
        return torch.tensor(rows, dtype=torch.long)

    def answer_nll(self, prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """Teacher-forced nats with p = (1 - eps) p_cache + eps / V (eps = ``smoothing``;
        p_cache uniform where no suffix matches): the cache has no probabilities of its own."""
        eps, V, out = self.smoothing, self.vocab_size, []
        for prompt, answer in zip(prompts.tolist(), answers.tolist()):
            total = 0.0
            for i, tok in enumerate(answer):
                found = self.continuation(prompt + answer[:i])
                p_cache = found[tok] / sum(found.values()) if found else 1.0 / V
                total -= math.log((1 - eps) * p_cache + eps / V)
            out.append(total)
        return torch.tensor(out)


class KNNLM:
    """kNN-LM over the frozen backbone's hidden states (where the memory layer reads).

    ``k`` neighbours, ``temperature`` T on squared L2 distances, ``lam`` the weight of
    p_knn. Defaults: k 16, T 1 and lambda 0.5 (the char backbone's hidden states of
    one context differ by squared distances of tens: T 1 keeps the nearest dominant).
    """

    def __init__(self, model: HopfieldLM, k: int = 16, temperature: float = 1.0, lam: float = 0.5):
        self.model, self.k, self.temperature, self.lam = model, k, temperature, lam
        self.keys: torch.Tensor | None = None  # (S, C)
        self.values: torch.Tensor | None = None  # (S,)

    def reset(self) -> None:
        self.keys = self.values = None

    @torch.no_grad()
    def write(self, ids: torch.Tensor) -> None:
        """ids (1, T): store (hidden state at t, token t + 1) for t < T - 1."""
        h = self.model.hidden(ids)[0, :-1].float()  # (T-1, C)
        v = ids[0, 1:]
        self.keys = h if self.keys is None else torch.cat([self.keys, h])
        self.values = v if self.values is None else torch.cat([self.values, v])

    @torch.no_grad()
    def log_probs(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> log p (B, T, V): the backbone's (bank unused) mixed with p_knn."""
        logits, h = self.model.backbone(idx)  # no read: the frozen backbone
        p = F.softmax(logits.float(), -1)
        if self.keys is None:
            return p.log()
        B, T, C = h.shape
        d = torch.cdist(h.reshape(B * T, C).float(), self.keys).pow(2)  # (B*T, S)
        k = min(self.k, self.keys.size(0))
        dist, nearest = d.topk(k, largest=False)  # (B*T, k)
        w = F.softmax(-dist / self.temperature, -1)
        p_knn = torch.zeros(B * T, p.size(-1), device=p.device)
        p_knn.scatter_add_(1, self.values[nearest], w)
        mixed = self.lam * p_knn.view(B, T, -1) + (1 - self.lam) * p
        return mixed.clamp_min(1e-12).log()

    @torch.no_grad()
    def answer(self, prompts: torch.Tensor, n: int) -> torch.Tensor:
        seq = prompts
        for _ in range(n):
            nxt = self.log_probs(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
        return seq[:, prompts.size(1) :]

    @torch.no_grad()
    def answer_nll(self, prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        logp = self.log_probs(torch.cat([prompts, answers[:, :-1]], dim=1))
        return _nll_at_answers(logp, prompts, answers)


__all__ = ["KNNLM", "MemoryReader", "NGramCache", "Reader"]
