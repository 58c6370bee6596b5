"""A probe task as the trainer's data: :class:`ProbeData` has :class:`~physllm.data.TokenData`'s
interface, so ``physllm.training.train(cfg, data=ProbeData(task))`` trains on the task with
the one trainer (schedule, clipping, evaluation, checkpoints) and no second loop.

``get_batch`` draws fresh samples each call (seeded by the batch source's generator, so a
run is deterministic and resumes exactly); targets are -1 except at the scored positions,
so the loss is the answers' cross-entropy alone. The train and val splits are disjoint
seed streams. ``splits`` hold a few samples' tokens end to end, only for the trainer's
final ``evaluate_split`` (a plain LM loss over every position, not the probe's score:
:func:`physllm.probes.runner.score` is).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from physllm.data import TokenData
from physllm.errors import PhysllmError
from physllm.probes.tasks import Task
from physllm.tokenization import TOKENIZER_FILE, Tokenizer

SPLIT_SALT = {"train": 0, "val": 1 << 40}  # val samples come from another seed stream
EVAL_SEED = 2 << 40  # held-out samples (the probes' scores): a stream neither split draws from
SPLIT_SAMPLES = 8  # samples end to end in each split (the trainer's final evaluate_split)


class ProbeTokenizer(Tokenizer):
    """Token ids 0..vocab_size-1 with no text behind them (written as space-separated ids)."""

    unit = "token"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.name = f"probe:{vocab_size}"

    def encode(self, text: str) -> list[int]:
        ids = [int(t) for t in text.split()]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise PhysllmError(f"probe token ids must be in [0, {self.vocab_size})")
        return ids

    def decode(self, ids: list[int]) -> str:
        return " ".join(str(i) for i in ids)

    def save(self, directory: str | Path) -> None:
        payload = {"type": "probe", "vocab_size": self.vocab_size}
        Path(directory, TOKENIZER_FILE).write_text(json.dumps(payload))


class ProbeData(TokenData):
    """:class:`TokenData`'s interface over a :class:`Task`: batches (B, task.seq_len)."""

    def __init__(self, task: Task, block_size: int | None = None):
        """``block_size``: the model's (at least ``task.seq_len``; longer for a model that is
        scored later at longer lengths). Batches are always ``task.seq_len`` long."""
        self.task = task
        self.tokenizer = ProbeTokenizer(task.vocab_size)
        block = max(block_size or task.seq_len, task.seq_len)
        n = max(SPLIT_SAMPLES, -(-2 * (block + 2) // task.seq_len))  # > one block of block+1
        self.splits = {
            s: task.generate(n, salt)[0].flatten().numpy() for s, salt in SPLIT_SALT.items()
        }
        self.folder = Path(".")
        info = {
            s: {"tokens": len(t), "chars": len(t), "bytes": len(t)} for s, t in self.splits.items()
        }
        self.meta = {"corpus": f"probe:{task.name}", "dtype": "int64", "splits": info}

    def get_batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` fresh samples: x, y (B, seq_len) int64, y = -1 where unscored."""
        if block_size < self.task.seq_len:
            raise PhysllmError(
                f"{self.task.name}: samples of {self.task.seq_len} tokens do not fit block {block_size}"
            )
        seed = int(torch.randint(1 << 31, (1,), generator=generator)) + SPLIT_SALT[split]
        return self.task.generate(batch_size, seed)


__all__ = ["EVAL_SEED", "ProbeData", "ProbeTokenizer"]
