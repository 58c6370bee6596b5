"""``python -m physllm chat``: talk to a model trained on chat-formatted text.

Training text comes through the UltraChat loader (:mod:`physllm.data`), which
renders each conversation with an explicit template the model sees in
training (:func:`physllm.data.format_chat`)::

    <|user|>
    How do gates work?<|end|>
    <|assistant|>
    They decide what to keep.<|end|>

A chat turn writes the user's text in the same template, opens an
``<|assistant|>`` turn and samples until the model closes it with ``<|end|>``
(or opens another role's turn). The history is the model's decoding state:
for the context-vector model that is a fixed-size vector, so the hundredth
turn costs what the first did; for GPT it is the key/value cache of the last
``block_size`` tokens.

The REPL reads lines from stdin, so it works interactively and with piped
input (``printf 'hi\\nbye\\n' | python -m physllm chat --ckpt RUN``), and ends
cleanly at end of input. ``/reset`` clears the history, ``/quit`` exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from physllm.arch import Command
from physllm.args import add_dataclass_flags, dataclass_values
from physllm.data import CHAT_END, CHAT_ROLES, format_chat
from physllm.errors import PhysllmError
from physllm.sampling import SamplingConfig, TextStream, pick_token

STOP_MARKERS = (CHAT_END, *CHAT_ROLES.values())  # the reply ends where a marker starts
PENALTY_WINDOW = 512  # the repetition penalty looks at this many recent tokens


class ChatSession:
    """A conversation with a model: ``reply(text)`` streams the answer, the state keeps the history."""

    def __init__(
        self,
        model,
        tokenizer,
        sampling: SamplingConfig | None = None,
        max_new_tokens: int = 200,
        system: str | None = None,
        seed: int = 1337,
    ):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.sampling = (sampling or SamplingConfig()).validate()
        self.max_new_tokens = max_new_tokens
        self.system = system
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        try:
            tokenizer.encode("".join(STOP_MARKERS))
        except PhysllmError:
            raise PhysllmError(
                "this checkpoint's tokenizer cannot write the chat markers "
                f"({', '.join(STOP_MARKERS)}): train it on chat-formatted text (e.g. --corpus ultrachat)"
            ) from None
        self.reset()

    def reset(self) -> None:
        """Forget the conversation."""
        self.state, self.logits = None, None
        self.context = torch.zeros(1, 0, dtype=torch.long, device=self.device)
        self.turns: list[dict[str, str]] = []
        if self.system:
            self._feed(format_chat([{"role": "system", "content": self.system}]))

    def _feed(self, text: str) -> None:
        ids = torch.tensor([self.tokenizer.encode(text)], device=self.device)
        self._feed_ids(ids)

    def _feed_ids(self, ids: torch.Tensor) -> None:
        self.logits, self.state = self.model.decode_step(ids, self.state)
        self.context = torch.cat([self.context, ids], dim=1)[:, -PENALTY_WINDOW:]

    @torch.no_grad()
    def reply(self, text: str) -> Iterator[str]:
        """Stream the assistant's answer to ``text``, piece by piece."""
        prompt = format_chat([{"role": "user", "content": text}]) + CHAT_ROLES["assistant"] + "\n"
        self._feed(prompt)  # may raise PhysllmError (characters outside a char vocabulary)
        # The answer ends where a marker starts; a split character or a possible
        # marker prefix is not shown until it is known.
        stream = TextStream(self.tokenizer, stops=STOP_MARKERS)
        for _ in range(self.max_new_tokens):
            token = pick_token(self.logits, self.context, self.sampling, self.generator)  # (1, 1)
            self._feed_ids(token)
            piece = stream.push(token)
            if stream.stopped:
                break
            if piece:
                yield piece
        else:  # out of tokens: close the turn so the history keeps the training format
            self._feed(CHAT_END)
        if rest := stream.flush():
            yield rest
        answer = stream.text
        self._feed("\n")
        self.turns += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]


# --------------------------------------------------------------------------- data


def dialogue_conversations(text: str, turns: int = 4) -> list[list[dict[str, str]]]:
    """A play's speeches (``NAME:\\nlines`` blocks) as UltraChat-style conversations.

    Consecutive speeches alternate user/assistant, ``turns`` per conversation;
    speaker names are dropped. Used to demo chat training offline.
    """
    speeches = []
    for block in text.split("\n\n"):
        head, _, body = block.strip().partition("\n")
        if head.endswith(":") and body.strip():
            speeches.append(" ".join(body.split()))
    roles = ("user", "assistant")
    return [
        [{"role": roles[k % 2], "content": s} for k, s in enumerate(speeches[i : i + turns])]
        for i in range(0, len(speeches) - turns + 1, turns)
    ]


def write_chat_parquet(conversations: list[list[dict]], folder: str | Path, split: str) -> Path:
    """Write conversations as an UltraChat parquet (``prompt``, ``prompt_id``, ``messages``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "prompt": [c[0]["content"] for c in conversations],
            "prompt_id": [f"{split}-{i}" for i in range(len(conversations))],
            "messages": conversations,
        }
    )
    path = folder / f"{split}-00000-of-00001.parquet"
    pq.write_table(table, path)
    return path


@contextlib.contextmanager
def local_data(data_dir: str | Path, cache_dir: str | Path) -> Iterator[None]:
    """Read hub corpora from ``data_dir`` and cache tokens in ``cache_dir`` inside the block."""
    saved = {k: os.environ.get(k) for k in ("PHYSLLM_DATA_DIR", "PHYSLLM_CACHE_DIR")}
    os.environ["PHYSLLM_DATA_DIR"], os.environ["PHYSLLM_CACHE_DIR"] = str(data_dir), str(cache_dir)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- CLI


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=200, help="per reply")
    parser.add_argument("--system", default=None, help="an optional system message")
    parser.add_argument("--seed", type=int, default=1337)
    add_dataclass_flags(parser.add_argument_group("sampling"), SamplingConfig)


def check_chat_args(args: argparse.Namespace) -> None:
    """Bad flags fail here, before the checkpoint is read."""
    SamplingConfig(**dataclass_values(args, SamplingConfig)).validate()
    if args.max_new_tokens < 1:
        raise PhysllmError("--max-new-tokens must be >= 1")


def run_chat(args: argparse.Namespace, model, tokenizer, device: torch.device) -> None:
    """``physllm chat``: the REPL on stdin (a prompt only when stdin is a terminal)."""
    knobs = SamplingConfig(**dataclass_values(args, SamplingConfig))
    session = ChatSession(model, tokenizer, knobs, args.max_new_tokens, args.system, args.seed)
    interactive = sys.stdin.isatty()
    if interactive:
        print("physllm chat: /reset clears the history, /quit or Ctrl-D exits", file=sys.stderr)
    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:  # end of input
            if interactive:
                sys.stdout.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text == "/quit":
            return
        if text == "/reset":
            session.reset()
            print("(history cleared)", file=sys.stderr)
            continue
        sys.stdout.write("assistant> ")
        try:
            for piece in session.reply(text):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except PhysllmError as err:  # e.g. a character the char vocabulary lacks: skip this turn
            print(f"\n(error: {err})", file=sys.stderr)
        sys.stdout.write("\n")
        sys.stdout.flush()


# Any architecture's checkpoint chats (GPT's key/value cache or the context vector as the
# history); it lives here because the context-vector model is the one built for it.
CHAT_COMMAND = Command(
    name="chat",
    help="chat with a chat-trained model, a REPL on stdin",
    description="Chat with a model trained on chat-formatted text (reads stdin; /reset, /quit).",
    add_arguments=add_chat_arguments,
    check=check_chat_args,
    run=run_chat,
)


__all__ = [
    "ChatSession",
    "CHAT_COMMAND",
    "run_chat",
    "dialogue_conversations",
    "local_data",
    "write_chat_parquet",
]
