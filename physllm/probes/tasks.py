"""Synthetic capability probes: seeded generators with exact answers.

Each task makes sequences in the next-token form every model trains on: a sample is a
token list ``s`` of ``seq_len + 1`` tokens; ``x = s[:-1]`` and ``y = s[1:]`` (N, T), with
``y[n, t] = IGNORE`` (-1, the models' ``cross_entropy(ignore_index=-1)``) except where
position ``t`` is scored: there the model, having read ``x[n, :t+1]``, must say ``y[n, t]``.
Only those positions enter the loss and the score.

Every task has a plain-Python ``solve(tokens)``: the answers ``{position: token}`` of one
row ``x[n]`` read from its tokens alone, with a dictionary or a copy. The tests check each
generator against its solver (100% on the scored positions, nothing else scored).

Tasks (vocabulary layouts in each class's docstring):

- :class:`MQAR`: Zoology's multi-query associative recall. ``n_pairs`` key-value pairs, then
  every key queried once in random order among filler; the answer is the key's value.
- :class:`SelectiveCopy`: MAD's selective copying. ``n_tokens`` data tokens scattered among
  blanks; after a copy marker, the data tokens in order.
- :class:`NoisyRecall`: MAD's noisy in-context recall. A stream of key-value pairs from one
  mapping per sequence, noise tokens between them; each repeated key's value is scored.
- :class:`Induction`: a random segment after a marker, repeated after a second marker at a
  random distance; the second copy is scored (an induction head's job).
- :class:`DistanceRecall`: facts (key-value pairs), filler from a disjoint part of the
  vocabulary, then every key queried: trained with the gap drawn inside the sequence, scored
  at a fixed gap ``distance`` that may be many times the training length (streamed through
  a model's decoding state: :mod:`physllm.probes.distance`).

Difficulty knobs: ``vocab_size``, ``seq_len`` and each task's own (``n_pairs``, ``n_tokens``,
``n_keys`` and ``noise``, ``segment``, ``n_facts`` and ``distance``). :meth:`Task.at_length`
is the same task at another length (length generalisation: train at T, score at 2T, 4T...).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from physllm.errors import PhysllmError

IGNORE = -1  # target of an unscored position: every model's cross_entropy ignore_index


class ExactMatch:
    """Running exact-match counts over batches: answers right, answers scored, and samples
    with every answer right."""

    def __init__(self) -> None:
        self.right = self.scored = self.all_right = self.samples = 0

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """logits (B, T, V), targets (B, T) with IGNORE at unscored positions."""
        mask = targets != IGNORE
        hit = (logits.argmax(-1) == targets) & mask
        self.right += int(hit.sum())
        self.scored += int(mask.sum())
        self.all_right += int((hit.sum(1) == mask.sum(1)).sum())
        self.samples += targets.size(0)

    def result(self) -> dict[str, float]:
        """``accuracy`` at the answers, ``exact`` (share of samples all right), ``n_scored``."""
        return {
            "accuracy": self.right / max(1, self.scored),
            "exact": self.all_right / max(1, self.samples),
            "n_scored": self.scored,
        }


@dataclass(frozen=True)
class Task:
    """A generator of (x, y) batches with an exact answer at every scored position."""

    name: ClassVar[str] = "task"
    vocab_size: int = 32
    seq_len: int = 32

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`PhysllmError` where the settings leave no valid sample."""
        if self.vocab_size < 4 or self.seq_len < 2:
            raise PhysllmError(f"{self.name}: vocab_size >= 4 and seq_len >= 2 needed, got {self}")

    def sample(self, rng: random.Random) -> tuple[list[int], list[int]]:
        """One sample: ``s`` (seq_len + 1 tokens) and the indices of ``s`` to predict (>= 1)."""
        raise NotImplementedError

    def solve(self, tokens: Sequence[int]) -> dict[int, int]:
        """The answers of one row ``x`` (seq_len tokens): ``{position t: token after t}``."""
        raise NotImplementedError

    def answer_count(self) -> int:
        """How many tokens an answer is drawn from (a uniform guess scores 1 / this)."""
        raise NotImplementedError

    def chance(self) -> float:
        return 1.0 / self.answer_count()

    def generate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples from ``random.Random(seed)``: x (n, T) int64 and y (n, T) int64,
        ``y`` = IGNORE except at the scored positions."""
        rng = random.Random(seed)
        rows, mask = [], torch.zeros(n, self.seq_len + 1, dtype=torch.bool)
        for i in range(n):
            s, scored = self.sample(rng)
            rows.append(s)
            mask[i, scored] = True
        s = torch.tensor(rows, dtype=torch.long)  # (n, T + 1)
        y = torch.where(mask[:, 1:], s[:, 1:], torch.full_like(s[:, 1:], IGNORE))
        return s[:, :-1], y

    def at_length(self, seq_len: int) -> Task:
        """The same task (vocabulary and knobs) at another length."""
        return dataclasses.replace(self, seq_len=seq_len)

    def settings(self) -> dict[str, Any]:
        """The task's name and every knob (what a results row records)."""
        return {"task": self.name, **dataclasses.asdict(self)}


def _need(ok: bool, task: Task, what: str) -> None:
    if not ok:
        raise PhysllmError(f"{task.name}: {what} ({task})")


@dataclass(frozen=True)
class MQAR(Task):
    """Multi-query associative recall (Zoology, Arora et al. 2023).

    Vocabulary: 0 filler; keys 1..K with K = (V - 1) // 2; values K+1..V-1. A sample is
    ``k1 v1 k2 v2 ... kP vP`` (distinct keys, random values), then a query region where each
    of the P keys appears once, in random order, followed by its value, at random places
    among filler tokens. Scored: the value after each query key.
    """

    name: ClassVar[str] = "mqar"
    n_pairs: int = 4

    @property
    def n_keys(self) -> int:
        return (self.vocab_size - 1) // 2

    def check(self) -> None:
        super().check()
        _need(1 <= self.n_pairs <= self.n_keys, self, "n_pairs must be in [1, (vocab_size-1)//2]")
        _need(self.seq_len + 1 >= 4 * self.n_pairs, self, "seq_len + 1 must be >= 4 * n_pairs")

    def answer_count(self) -> int:
        return self.vocab_size - 1 - self.n_keys

    def sample(self, rng: random.Random) -> tuple[list[int], list[int]]:
        K, P = self.n_keys, self.n_pairs
        keys = rng.sample(range(1, K + 1), P)
        value = {k: rng.randrange(K + 1, self.vocab_size) for k in keys}
        s = [t for k in keys for t in (k, value[k])]
        queries = rng.sample(keys, P)
        items: list[list[int]] = [[k, value[k]] for k in queries]
        items += [[0]] * (self.seq_len + 1 - 4 * P)
        rng.shuffle(items)
        scored = []
        for item in items:
            if len(item) == 2:
                scored.append(len(s) + 1)
            s += item
        return s, scored

    def solve(self, tokens: Sequence[int]) -> dict[int, int]:
        P = self.n_pairs
        value = {tokens[2 * i]: tokens[2 * i + 1] for i in range(P)}
        return {t: value[tok] for t, tok in enumerate(tokens) if t >= 2 * P and tok in value}


@dataclass(frozen=True)
class SelectiveCopy(Task):
    """Selective copying (MAD, Poli et al. 2024).

    Vocabulary: 0 blank, 1 copy marker, data 2..V-1. A sample is a context of
    ``seq_len - n_tokens`` positions holding ``n_tokens`` data tokens at random places among
    blanks, the marker, then the data tokens in order. Scored: each copied token.
    """

    name: ClassVar[str] = "selective_copy"
    n_tokens: int = 4

    def check(self) -> None:
        super().check()
        _need(self.n_tokens >= 1, self, "n_tokens must be >= 1")
        _need(self.seq_len >= 2 * self.n_tokens, self, "seq_len must be >= 2 * n_tokens")

    def answer_count(self) -> int:
        return self.vocab_size - 2

    def sample(self, rng: random.Random) -> tuple[list[int], list[int]]:
        N, L = self.n_tokens, self.seq_len - self.n_tokens
        data = [rng.randrange(2, self.vocab_size) for _ in range(N)]
        context = [0] * L
        for place, tok in zip(sorted(rng.sample(range(L), N)), data):
            context[place] = tok
        return context + [1] + data, list(range(L + 1, L + 1 + N))

    def solve(self, tokens: Sequence[int]) -> dict[int, int]:
        marker = list(tokens).index(1)
        data = [tok for tok in tokens[:marker] if tok >= 2]
        return {marker + j: tok for j, tok in enumerate(data) if marker + j < len(tokens)}


@dataclass(frozen=True)
class NoisyRecall(Task):
    """Noisy in-context recall (MAD, Poli et al. 2024).

    Vocabulary: 0 unused; keys 1..K, values K+1..2K with K = (V - 1) // 3; noise 2K+1..V-1.
    Each sample draws ``n_keys`` keys and a value for each; the sequence is a stream of
    ``key value`` pairs (keys drawn at random, with repeats), a noise token in place of a
    pair with probability ``noise``. Scored: the value after a key seen before in the sample.
    """

    name: ClassVar[str] = "noisy_recall"
    n_keys: int = 4
    noise: float = 0.2

    @property
    def key_range(self) -> int:
        return (self.vocab_size - 1) // 3

    def check(self) -> None:
        super().check()
        K = self.key_range
        _need(1 <= self.n_keys <= K, self, "n_keys must be in [1, (vocab_size-1)//3]")
        _need(self.vocab_size - 1 - 2 * K >= 1, self, "no token left for noise")
        _need(0.0 <= self.noise < 1.0, self, "noise must be in [0, 1)")

    def answer_count(self) -> int:
        return self.key_range

    def sample(self, rng: random.Random) -> tuple[list[int], list[int]]:
        K = self.key_range
        keys = rng.sample(range(1, K + 1), self.n_keys)
        value = {k: rng.randrange(K + 1, 2 * K + 1) for k in keys}
        s: list[int] = []
        seen: set[int] = set()
        scored = []
        while len(s) < self.seq_len + 1:
            if len(s) == self.seq_len or rng.random() < self.noise:
                s.append(rng.randrange(2 * K + 1, self.vocab_size))
                continue
            k = rng.choice(keys)
            if k in seen:
                scored.append(len(s) + 1)
            seen.add(k)
            s += [k, value[k]]
        return s, scored

    def solve(self, tokens: Sequence[int]) -> dict[int, int]:
        K, seen, answers = self.key_range, {}, {}
        for t, tok in enumerate(tokens):
            if 1 <= tok <= K:
                if tok in seen:
                    answers[t] = seen[tok]
                if t + 1 < len(tokens):
                    seen[tok] = tokens[t + 1]
        return answers


@dataclass(frozen=True)
class Induction(Task):
    """Induction / copy: repeat a random segment.

    Vocabulary: 0 marker, data 1..V-1. A sample is random data tokens with, at a random
    place, the marker and a ``segment`` of random tokens, then more random tokens, then
    the marker again and the same segment. Scored: the second copy, each token predicted
    from the one before it (find where the current token followed the first marker, read on).
    """

    name: ClassVar[str] = "induction"
    segment: int = 8

    def check(self) -> None:
        super().check()
        _need(self.segment >= 1, self, "segment must be >= 1")
        _need(self.seq_len >= 2 * self.segment + 1, self, "seq_len must be >= 2 * segment + 1")

    def answer_count(self) -> int:
        return self.vocab_size - 1

    def sample(self, rng: random.Random) -> tuple[list[int], list[int]]:
        V, S = self.vocab_size, self.segment
        free = self.seq_len - 1 - 2 * S
        before = rng.randint(0, free)
        noise = [rng.randrange(1, V) for _ in range(free)]
        seg = [rng.randrange(1, V) for _ in range(S)]
        s = noise[:before] + [0] + seg + noise[before:] + [0] + seg
        return s, list(range(len(s) - S, len(s)))

    def solve(self, tokens: Sequence[int]) -> dict[int, int]:
        first, second = [t for t, tok in enumerate(tokens) if tok == 0]
        return {second + j: tokens[first + 1 + j] for j in range(self.segment)}


@dataclass(frozen=True)
class DistanceRecall(Task):
    """Recall at distance: a fact seen long before its question.

    Vocabulary: 0 unused; keys 1..K, values K+1..2K with K = (V - 1) // 3; filler
    2K+1..V-1 (never a key or a value). A sample is filler, the facts ``k1 v1 ... kP vP``
    (distinct keys, random values), a gap of filler, then every key once in random order,
    each followed by its value. Scored: the value after each queried key.

    ``distance`` 0 (training): the gap is drawn uniformly in [0, seq_len + 1 - 4P] and the
    rest of the filler goes before the facts. ``distance`` d > 0 (scoring): the gap is
    exactly d filler tokens between the last fact and the first query, nothing before the
    facts, so ``seq_len`` must be 4P + d - 1 (:meth:`at_distance` builds it).
    """

    name: ClassVar[str] = "recall_at_distance"
    n_facts: int = 1
    distance: int = 0

    @property
    def key_range(self) -> int:
        return (self.vocab_size - 1) // 3

    def check(self) -> None:
        super().check()
        K, P = self.key_range, self.n_facts
        _need(1 <= P <= K, self, "n_facts must be in [1, (vocab_size-1)//3]")
        _need(self.vocab_size - 1 - 2 * K >= 1, self, "no token left for filler")
        _need(self.seq_len + 1 >= 4 * P, self, "seq_len + 1 must be >= 4 * n_facts")
        _need(self.distance >= 0, self, "distance must be >= 0")
        _need(
            self.distance == 0 or self.seq_len + 1 == 4 * P + self.distance,
            self,
            "a fixed distance d needs seq_len = 4 * n_facts + d - 1 (use at_distance)",
        )

    def answer_count(self) -> int:
        return self.key_range

    def at_distance(self, distance: int) -> DistanceRecall:
        """The same facts and vocabulary with a gap of exactly ``distance`` filler tokens."""
        P = self.n_facts
        return dataclasses.replace(self, seq_len=4 * P + distance - 1, distance=distance)

    def at_length(self, seq_len: int) -> Task:
        return dataclasses.replace(self, seq_len=seq_len, distance=0)

    def sample(self, rng: random.Random) -> tuple[list[int], list[int]]:
        K, P, V = self.key_range, self.n_facts, self.vocab_size
        keys = rng.sample(range(1, K + 1), P)
        value = {k: rng.randrange(K + 1, 2 * K + 1) for k in keys}
        free = self.seq_len + 1 - 4 * P  # filler tokens in the sample
        gap = self.distance or rng.randint(0, free)
        filler = [rng.randrange(2 * K + 1, V) for _ in range(free)]
        s = filler[: free - gap] + [t for k in keys for t in (k, value[k])] + filler[free - gap :]
        scored = []
        for k in rng.sample(keys, P):
            scored.append(len(s) + 1)
            s += [k, value[k]]
        return s, scored

    def solve(self, tokens: Sequence[int]) -> dict[int, int]:
        K, value, answers = self.key_range, {}, {}
        for t, tok in enumerate(tokens):
            if 1 <= tok <= K:
                if tok in value:
                    answers[t] = value[tok]
                elif t + 1 < len(tokens):
                    value[tok] = tokens[t + 1]
        return answers


TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (MQAR, SelectiveCopy, NoisyRecall, Induction, DistanceRecall)
}


def make_task(name: str, **knobs: Any) -> Task:
    """A task by name (:data:`TASKS`) with its knobs; an unknown name or knob is a PhysllmError."""
    if name not in TASKS:
        raise PhysllmError(f"unknown probe task {name!r}; choose from {', '.join(TASKS)}")
    fields = {f.name for f in dataclasses.fields(TASKS[name])}
    unknown = sorted(set(knobs) - fields)
    if unknown:
        raise PhysllmError(f"probe task {name!r} has no knob(s) {', '.join(unknown)}")
    return TASKS[name](**knobs)


__all__ = [
    "IGNORE",
    "MQAR",
    "DistanceRecall",
    "TASKS",
    "Induction",
    "NoisyRecall",
    "SelectiveCopy",
    "Task",
    "make_task",
]
