"""Where the trainer and the evaluator read batches from: one :class:`BatchSource`
interface, two implementations.

- :class:`WindowSource`: random windows of the token memmap (nanoGPT's get_batch).
- :class:`StreamSource`: consecutive blocks of parallel streams, with the model's
  recurrent state handed from one block to the next (truncated BPTT), for models
  whose ``carries_state()`` is True.

The caller's loop is the same for both: ``x, y, reset = source.next_batch()``, then
for each slice ``part`` of the rows ``model(x[part], y[part], **source.model_inputs(part))``
followed by ``source.observe(model)``. ``state_dict``/``load_state_dict`` hold what
an exact ``--resume`` needs (sampler position, carried state).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from physllm.data import StreamSampler, TokenData
from physllm.errors import PhysllmError
from physllm.models import LanguageModel


class BatchSource(Protocol):
    """Batches of ``rows`` sequences of the model's block size."""

    kind: str  # "windows" | "streams": how batches are drawn (final numbers: evaluate_split)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x, y (rows, T) int64, and reset (rows,) bool (rows starting over) or None."""
        ...

    def model_inputs(self, part: slice) -> dict[str, Any]:
        """Keyword arguments for the model's forward on rows ``part`` (besides x, y)."""
        ...

    def observe(self, model: LanguageModel) -> None:
        """Called after each forward, in row order: what the next batch must carry on."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class WindowSource:
    """Random windows, drawn with their own generator (its state is the data position)."""

    kind = "windows"

    def __init__(self, data: TokenData, split: str, rows: int, block_size: int, seed: int):
        self.data, self.split, self.rows, self.block_size = data, split, rows, block_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, y = self.data.get_batch(self.split, self.rows, self.block_size, self.generator)
        return x, y, None

    def model_inputs(self, part: slice) -> dict[str, Any]:
        return {}

    def observe(self, model: LanguageModel) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"batch_rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["batch_rng"])


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


class StreamSource:
    """Consecutive blocks of ``rows`` streams (physllm.data.StreamSampler); row r of each
    batch continues row r of the last, and the model's state after it is handed on.
    ``carry=False`` reads the same blocks, each from the initial state."""

    kind = "streams"

    def __init__(
        self,
        model: LanguageModel,
        data: TokenData,
        split: str,
        rows: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
        carry: bool = True,
    ):
        block_size = model.config.block_size
        self.sampler = StreamSampler(data, split, rows, block_size, rank, world_size)
        self.model, self.device, self.carry = model, device, carry
        self.carried: list[torch.Tensor] | None = None  # the state after the last batch (rows, ...)
        self._parts: list[list[torch.Tensor]] = []  # states after this batch's forwards, in order

    def _settle(self) -> None:
        if self._parts:
            self.carried = [torch.cat(parts) for parts in zip(*self._parts)]
            self._parts = []

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._settle()
        x, y, reset = self.sampler.next()
        self.carried = restart_rows(self.model, self.carried, reset) if self.carry else None
        return x, y, reset

    def model_inputs(self, part: slice) -> dict[str, Any]:
        # no state to hand on (carry=False, or the first batch): the model's own initial
        # state, so a model without one (GPT) reads the same blocks too
        return {} if self.carried is None else {"state": [t[part] for t in self.carried]}

    def observe(self, model: LanguageModel) -> None:
        if self.carry:
            self._parts.append(model.last_state)  # detached by the model: BPTT stops here

    def state_dict(self) -> dict[str, Any]:
        self._settle()
        return {
            "streams": self.sampler.state_dict(),
            "carried_state": [t.cpu() for t in self.carried or []],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "streams" not in state:
            raise PhysllmError("cannot resume: the checkpoint holds no stream positions")
        self.sampler.load_state_dict(state["streams"])
        self.carried = [t.to(self.device) for t in state["carried_state"]] or None
        self._parts = []


def batch_source(
    model: LanguageModel,
    data: TokenData,
    split: str,
    rows: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    carry: bool = True,
) -> BatchSource:
    """Streams for a model that carries its state, random windows (seeded ``seed``) otherwise."""
    if model.carries_state():
        return StreamSource(model, data, split, rows, rank, world_size, device, carry)
    return WindowSource(data, split, rows, model.config.block_size, seed)


__all__ = ["BatchSource", "StreamSource", "WindowSource", "batch_source", "restart_rows"]
