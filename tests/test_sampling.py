"""Sampling knobs: each test fails if the knob's rule (sign, cut) were wrong."""

from __future__ import annotations

import pytest
import torch

from physllm.errors import PhysllmError
from physllm.sampling import (
    SamplingConfig,
    apply_min_p,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    generate,
    stream_generate,
)


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
