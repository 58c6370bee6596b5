"""Sampling knobs: each test fails if the knob's rule (sign, cut) were wrong."""

from __future__ import annotations

import pytest
import torch

from physllm.data import CHAT_END, CHAT_ROLES
from physllm.errors import PhysllmError
from physllm.sampling import (
    SamplingConfig,
    TextStream,
    apply_min_p,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    generate,
    stream_generate,
)
from physllm.tokenization import ByteTokenizer, CharTokenizer


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor([probs]).log()


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_repetition_penalty_lowers_positive_and_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 0.5, 0.1]])
    context = torch.tensor([[0, 1]])  # tokens 0 (positive logit) and 1 (negative) were seen
    out = apply_repetition_penalty(logits, context, 2.0)
    assert out[0, 0] == 1.0 and out[0, 1] == -4.0  # divide positive, multiply negative
    before, after = logits.softmax(-1)[0], out.softmax(-1)[0]
    assert after[0] < before[0] and after[1] < before[1]  # both penalised tokens less likely
    assert torch.equal(out[0, 2:], logits[0, 2:])  # unseen tokens untouched


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    assert kept(apply_top_p(logits, 0.5)) == [0]
    assert kept(apply_top_p(logits, 0.7)) == [0, 1]
    assert kept(apply_top_p(logits, 0.8)) == [0, 1]  # 0.5 + 0.3 already reaches 0.8
    assert kept(apply_top_p(logits, 0.81)) == [0, 1, 2]
    assert kept(apply_top_p(logits, 0.01)) == [0]  # the top token always survives
    shuffled = logits[:, [2, 0, 3, 1]]  # order in the vocabulary does not matter
    assert kept(apply_top_p(shuffled, 0.7)) == [1, 3]


def test_min_p_is_relative_to_the_top_token():
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    assert kept(apply_min_p(logits, 0.25)) == [0, 1, 2]  # threshold 0.125
    assert kept(apply_min_p(logits, 0.5)) == [0, 1]  # threshold 0.25
    assert kept(apply_min_p(logits, 0.0)) == [0, 1, 2, 3]


def test_top_k():
    logits = logits_of([0.1, 0.4, 0.2, 0.3])
    assert kept(apply_top_k(logits, 2)) == [1, 3]


@pytest.mark.parametrize(
    "knobs",
    [
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"temperature": -1.0},
        {"min_p": 2.0},
        {"top_k": -1},
        {"repetition_penalty": 0.0},
    ],
)
def test_bad_knobs_are_rejected(knobs):
    with pytest.raises(PhysllmError):
        SamplingConfig(**knobs).validate()


class Bigram(torch.nn.Module):
    """A fixed next-token table: logits depend only on the last token."""

    def __init__(self, vocab: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.randn(vocab, vocab) * 3

    def decode_step(self, idx, state):
        return self.table[idx[:, -1]], None


def test_greedy_follows_argmax_and_stream_equals_generate():
    model = Bigram()
    prompt = torch.tensor([[0]])
    out = generate(model, prompt, 6, temperature=0)
    for a, b in zip(out[0, :-1].tolist(), out[0, 1:].tolist()):
        assert b == int(model.table[a].argmax())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    streamed = torch.cat(list(stream_generate(model, prompt, 10, generator=g1, temperature=1.0)), 1)
    assert torch.equal(generate(model, prompt, 10, generator=g2, temperature=1.0)[:, 1:], streamed)


def test_eos_stops_generation():
    model = Bigram()
    first = int(model.table[0].argmax())
    out = generate(model, torch.tensor([[0]]), 10, temperature=0, eos_id=first)
    assert out.tolist() == [[0, first]]


def test_samples_never_leave_the_nucleus():
    model = Bigram()
    allowed = set(kept(apply_top_p(model.table[:1].clone(), 0.6)))
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        token = generate(model, torch.tensor([[0]]), 1, top_p=0.6, generator=gen)[0, 1].item()
        assert token in allowed


# --------------------------------------------------------------------------- TextStream

STOPS = (CHAT_END, *CHAT_ROLES.values())


def streamed(stream: TextStream, ids: list[int]) -> list[str]:
    pieces = [stream.push(i) for i in ids]
    return [*pieces, stream.flush()]


def test_text_stream_holds_back_a_split_utf8_character():
    tok = ByteTokenizer()
    text = "café 🙂 ok"
    ids = tok.encode(text)  # é is 2 bytes, the emoji 4: each is split over tokens
    assert tok.decode(ids[:4]).endswith("\ufffd")  # a plain decode would show garbage
    pieces = streamed(TextStream(tok), ids)
    assert "".join(pieces) == text == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)
    assert "é" in pieces and "🙂" in pieces  # shown whole, once complete


def test_text_stream_flush_gives_an_incomplete_tail():
    tok = ByteTokenizer()
    ids = tok.encode("a🙂")[:3]  # the emoji cut off after 2 of its 4 bytes
    stream = TextStream(tok)
    assert [stream.push(i) for i in ids] == ["a", "", ""]
    assert stream.flush() == tok.decode(ids[1:])  # shown as U+FFFD at the very end
    assert stream.text == tok.decode(ids)


def test_text_stream_passes_char_tokens_straight_through():
    tok = CharTokenizer.fit("hello wörld")
    ids = tok.encode("hö wo")
    stream = TextStream(tok)
    assert [stream.push(i) for i in ids] == list("hö wo")
    assert stream.flush() == ""


def test_text_stream_cuts_at_a_stop_marker_and_never_shows_its_prefix():
    tok = ByteTokenizer()
    reply = "Hi <3 é"
    ids = tok.encode(reply + CHAT_END + "\nmore")
    stream = TextStream(tok, stops=STOPS)
    pieces = []
    for i in ids:
        pieces.append(stream.push(i))
        if stream.stopped:
            break
    pieces.append(stream.flush())
    assert "".join(pieces) == reply == stream.text
    # "<" waits (it could open a marker) and shows with the "3"; "é" shows whole;
    # the marker's start is held back and then dropped; nothing after it comes
    assert [p for p in pieces if p] == ["H", "i", " ", "<3", " ", "é"]


def test_text_stream_flushes_a_held_marker_prefix_that_never_completed():
    tok = ByteTokenizer()
    stream = TextStream(tok, stops=STOPS)
    assert "".join(stream.push(i) for i in tok.encode("ok <|en")) == "ok "
    assert not stream.stopped
    assert stream.flush() == "<|en"


# The three loops TextStream replaced (cli sample, steering generate_text, chat
# reply), copied as they were: the stream must give the same text on any bytes.
def old_cli(tok, ids):
    out, pending = [], []
    for t in ids:
        pending.append(t)
        text = tok.decode(pending)
        if not text.endswith("\ufffd"):
            out.append(text)
            pending = []
    return "".join(out) + tok.decode(pending)


def old_chat(tok, ids):
    def held_back(text):
        for k in range(min(len(text), max(map(len, STOPS))), 0, -1):
            if any(m.startswith(text[-k:]) for m in STOPS):
                return k
        return 0

    out, seen, shown, answer = [], [], 0, ""
    for t in ids:
        seen.append(t)
        answer = tok.decode(seen)
        cut = min((answer.find(m) for m in STOPS if m in answer), default=-1)
        if cut >= 0:
            answer = answer[:cut]
            break
        if answer.endswith("\ufffd"):
            continue
        safe = len(answer) - held_back(answer)
        if safe > shown:
            out.append(answer[shown:safe])
            shown = safe
    if len(answer) > shown:
        out.append(answer[shown:])
    return out, answer


def test_text_stream_matches_the_loops_it_replaced():
    tok = ByteTokenizer()
    gen = torch.Generator().manual_seed(0)
    # bytes drawn from ASCII, marker characters and UTF-8 lead/continuation bytes
    alphabet = torch.tensor(list(b"ab <|>endusr\n") + [0xC3, 0xA9, 0xF0, 0x9F, 0x99, 0x82, 0xFF])
    stopped = 0
    for _ in range(300):
        ids = alphabet[torch.randint(len(alphabet), (40,), generator=gen)].tolist()
        if torch.rand((), generator=gen) < 0.5:  # half the streams hold a whole marker
            at = int(torch.randint(40, (), generator=gen))
            ids[at:at] = tok.encode(STOPS[at % len(STOPS)])
        plain = TextStream(tok)
        assert "".join(streamed(plain, ids)) == old_cli(tok, ids) == plain.text
        chat = TextStream(tok, stops=STOPS)
        pieces = []
        for i in ids:
            piece = chat.push(i)
            if chat.stopped:
                break
            if piece:
                pieces.append(piece)
        if rest := chat.flush():
            pieces.append(rest)
        assert (pieces, chat.text) == old_chat(tok, ids)
        stopped += chat.stopped
    assert 100 < stopped < 300  # both endings were exercised
