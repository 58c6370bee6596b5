"""Chat: UltraChat-format data through the loader, the template, and the REPL over piped stdin."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from physllm.context_vector.chat import (
    STOP_MARKERS,
    ChatSession,
    dialogue_conversations,
    write_chat_parquet,
)
from physllm.data import CHAT_END, CHAT_ROLES, format_chat, load_corpus
from physllm.errors import PhysllmError
from physllm.sampling import SamplingConfig, generate
from physllm.tokenization import CharTokenizer
from physllm.training import make_config, train
from physllm.training.checkpoint import load_checkpoint

from .conftest import REPO

PLAY = """FIRST:
Good morrow, friend.

SECOND:
And to you, good sir.
How fares the day?

FIRST:
Well enough.

SECOND:
Then let us go.

FIRST:
Lead on.
"""

CONVERSATIONS = [
    [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "hello, how can i help?"},
        {"role": "user", "content": "tell me a fact"},
        {"role": "assistant", "content": "the sea is wide and deep."},
    ],
    [
        {"role": "user", "content": "how are you"},
        {"role": "assistant", "content": "i am well, thank you."},
    ],
] * 40


@pytest.fixture
def chat_data(tmp_path, monkeypatch):
    """A local UltraChat copy (parquet, `messages` column) in a temp PHYSLLM_DATA_DIR."""
    folder = tmp_path / "data" / "ultrachat"
    write_chat_parquet(CONVERSATIONS[:70], folder, "train_sft")
    write_chat_parquet(CONVERSATIONS[70:], folder, "test_sft")
    monkeypatch.setenv("PHYSLLM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PHYSLLM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_dialogue_to_conversations():
    convs = dialogue_conversations(PLAY, turns=2)
    assert convs == [
        [
            {"role": "user", "content": "Good morrow, friend."},
            {"role": "assistant", "content": "And to you, good sir. How fares the day?"},
        ],
        [
            {"role": "user", "content": "Well enough."},
            {"role": "assistant", "content": "Then let us go."},
        ],
    ]


def test_ultrachat_loader_renders_the_chat_template(chat_data):
    splits = load_corpus("ultrachat")
    text = splits["train"]
    assert text.startswith(
        f"{CHAT_ROLES['user']}\nhello there{CHAT_END}\n{CHAT_ROLES['assistant']}\n"
    )
    assert text.count(CHAT_ROLES["assistant"]) == 35 * 2 + 35
    assert CHAT_ROLES["user"] in splits["val"]


@pytest.fixture
def chat_run(chat_data):
    cfg = make_config(
        "context_vector",
        corpus="ultrachat",
        tokenizer="char",
        gates="input",
        n_embd=16,
        n_hidden=32,
        n_context=16,
        block_size=32,
        batch_size=8,
        steps=30,
        lr=1e-2,
        warmup_steps=2,
        eval_interval=30,
        eval_iters=2,
        out_dir=str(chat_data / "run"),
        progress=False,
        tensorboard=False,
    )
    train(cfg)
    return chat_data / "run"


def test_chat_repl_answers_piped_input_and_exits_at_eof(chat_run):
    proc = subprocess.run(
        [sys.executable, "-m", "physllm", "chat", "--ckpt", str(chat_run)]
        + ["--temperature", "0.9", "--top-p", "0.95", "--repetition-penalty", "1.1"]
        + ["--max-new-tokens", "40"],
        input="hello there\n\nhow are you\n",
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # one reply per non-empty line, then a clean exit at end of input: each reply is
    # exactly what a session with the same knobs and seed answers in this process
    model, tok, _ = load_checkpoint(chat_run)
    knobs = SamplingConfig(temperature=0.9, top_p=0.95, repetition_penalty=1.1)
    session = ChatSession(model, tok, knobs, max_new_tokens=40, seed=1337)
    replies = ["".join(session.reply(text)) for text in ("hello there", "how are you")]
    assert proc.stdout == "".join(f"assistant> {r}\n" for r in replies)
    assert any(replies)  # something was said


def test_session_reply_is_the_models_greedy_continuation(chat_run):
    """Greedy, so independent of the sampler's random stream: each reply is what
    ``generate`` continues the whole conversation so far with, up to the first stop
    marker; the model's state holds that conversation exactly, turn after turn."""
    model, tok, _ = load_checkpoint(chat_run)
    n_new = 40
    session = ChatSession(model, tok, SamplingConfig(temperature=0), max_new_tokens=n_new)
    history: list[int] = []  # the conversation's tokens as the model must have read them
    stopped = 0
    for k, text in enumerate(("hello there", "how are you", "tell me a fact")):
        history += tok.encode(format_chat([{"role": "user", "content": text}]))
        history += tok.encode(CHAT_ROLES["assistant"] + "\n")
        new = generate(model, torch.tensor([history]), n_new, temperature=0)[0, len(history) :]
        said = tok.decode(new.tolist())
        # generation stops as soon as a marker is complete, the reply is cut where it starts
        ends = [said.find(m) + len(m) for m in STOP_MARKERS if m in said]
        consumed = said[: min(ends)] if ends else said
        starts = [consumed.find(m) for m in STOP_MARKERS if m in consumed]
        expected = consumed[: min(starts)] if starts else consumed
        assert "".join(session.reply(text)) == expected
        stopped += bool(ends)
        history += tok.encode(consumed + ("" if ends else CHAT_END) + "\n")
        assert session.context[0].tolist() == history
        assert len(session.turns) == 2 * (k + 1)
        assert session.turns[-2:] == [
            {"role": "user", "content": text},
            {"role": "assistant", "content": expected},
        ]
    assert stopped, "no reply reached an end marker: the stop path went untested"


def test_chat_refuses_a_checkpoint_without_chat_markers(tmp_path):
    from physllm.context_vector.model import ContextVectorConfig, ContextVectorModel
    from physllm.training.checkpoint import save_checkpoint

    tok = CharTokenizer.fit("plain text only\n")
    model = ContextVectorModel(
        ContextVectorConfig(vocab_size=tok.vocab_size, n_embd=8, n_hidden=8, n_context=4)
    )
    save_checkpoint(tmp_path / "ckpt", model, tok)
    proc = subprocess.run(
        [sys.executable, "-m", "physllm", "chat", "--ckpt", str(tmp_path / "ckpt")],
        input="hi\n",
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "chat markers" in proc.stderr


class ScriptedModel(torch.nn.Module):
    """Says ``script`` (token ids) whatever it is told; counts what it was fed."""

    def __init__(self, script: list[int], vocab: int):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.script, self.vocab, self.fed = script, vocab, []

    def decode_step(self, idx, state=None):
        self.fed.append(idx[0].tolist())
        pos = 0 if idx.size(1) > 1 else state + 1  # a prompt restarts the script
        logits = torch.full((1, self.vocab), -1e9)
        logits[0, self.script[min(pos, len(self.script) - 1)]] = 0.0
        return logits, pos


def test_session_stops_at_the_end_marker_and_keeps_the_template():
    text = "".join(CHAT_ROLES.values()) + CHAT_END + "\nhi there"
    tok = CharTokenizer.fit(text)
    model = ScriptedModel(tok.encode(f"hi{CHAT_END}hit"), tok.vocab_size)
    session = ChatSession(model, tok, SamplingConfig(temperature=0), max_new_tokens=30)
    pieces = list(session.reply("hi"))
    assert "".join(pieces) == "hi"
    fed = "".join(tok.decode(ids) for ids in model.fed)
    # the user turn in the training template, the answer, its end marker, then a newline
    assert fed == f"{CHAT_ROLES['user']}\nhi{CHAT_END}\n{CHAT_ROLES['assistant']}\nhi{CHAT_END}\n"
    assert session.turns[-1] == {"role": "assistant", "content": "hi"}


def test_session_unknown_characters_are_a_clear_error():
    tok = CharTokenizer.fit("".join(CHAT_ROLES.values()) + CHAT_END + "\nab")
    model = ScriptedModel(tok.encode("a"), tok.vocab_size)
    session = ChatSession(model, tok, max_new_tokens=3)
    with pytest.raises(PhysllmError, match="outside"):
        list(session.reply("xyz"))
