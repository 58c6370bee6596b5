"""Decoding: temperature, top-k, top-p, min-p, repetition penalty, streaming.

Every knob is one small function on a (B, V) row of logits, applied in the
order HF transformers uses: repetition penalty, temperature, then the
truncations (top-k, top-p, min-p). ``temperature=0`` is greedy decoding.

Repetition penalty (Keskar et al. 2019, CTRL), for every token already in the
context with logit l and penalty r > 1:

    l' = l / r   if l > 0        both cases lower the token's logit,
    l' = l * r   if l <= 0       so its probability always goes down.

(One of the seed projects multiplied positive logits, which *raises* them.)

Measuring samples (shared by Hamiltonian steering and the repetition probe): distinct-n,
the repeated-n-gram rate, and a quantity read off a (perplexity, value) curve at a given
perplexity, so two decoders are compared at the same fluency cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from physllm.errors import PhysllmError


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off; keep the smallest set with cumulative probability >= top_p
    min_p: float = 0.0  # 0: off; drop tokens below min_p * p(most likely token)
    repetition_penalty: float = 1.0  # 1: off

    def validate(self) -> SamplingConfig:
        if not self.temperature >= 0:
            raise PhysllmError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise PhysllmError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise PhysllmError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.top_k < 0:
            raise PhysllmError(f"top_k must be >= 0 (0 is off), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise PhysllmError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        return self


def apply_repetition_penalty(
    logits: torch.Tensor, context: torch.Tensor, penalty: float
) -> torch.Tensor:
    """logits (B, V), context (B, T) token ids: lower every seen token's logit."""
    if penalty == 1.0:
        return logits
    seen = torch.gather(logits, 1, context)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, context, seen)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the most likely tokens until their probability reaches ``p``."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(dim=-1)
    # Probability mass strictly before each token; a token is kept while the
    # mass before it is still below p, so the top token is always kept.
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below ``min_p`` times the top token's."""
    if min_p <= 0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


def next_token_distribution(
    logits: torch.Tensor, context: torch.Tensor, cfg: SamplingConfig
) -> torch.Tensor:
    """Processed logits (B, V) for the next token; -inf where a token was cut."""
    logits = apply_repetition_penalty(logits.float(), context, cfg.repetition_penalty)
    if cfg.temperature > 0:
        logits = logits / cfg.temperature
    logits = apply_top_k(logits, cfg.top_k)
    logits = apply_top_p(logits, cfg.top_p)
    return apply_min_p(logits, cfg.min_p)


def pick_token(
    logits: torch.Tensor,
    context: torch.Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One next token per row (B, 1): argmax when temperature is 0, else a sample."""
    logits = next_token_distribution(logits, context, cfg)
    if cfg.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


@torch.no_grad()
def stream_generate(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    **knobs,
) -> Iterator[torch.Tensor]:
    """Yield each new token (B, 1) as soon as it is chosen.

    ``idx`` (B, T) is the prompt; ``knobs`` are :class:`SamplingConfig` fields.
    The model's ``decode_step`` carries its cache, so each step feeds only the
    newest token.
    """
    cfg = SamplingConfig(**knobs).validate()
    was_training = model.training
    model.eval()
    try:
        logits, state = model.decode_step(idx, None)
        context = idx
        for _ in range(max_new_tokens):
            token = pick_token(logits, context, cfg, generator)
            context = torch.cat([context, token], dim=1)
            yield token
            if eos_id is not None and bool((token == eos_id).all()):
                return
            logits, state = model.decode_step(token, state)
    finally:
        model.train(was_training)


def generate(model, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """Prompt (B, T) -> prompt plus up to ``max_new_tokens`` tokens (B, T + n)."""
    new = list(stream_generate(model, idx, max_new_tokens, **kwargs))
    return torch.cat([idx, *new], dim=1)


# --------------------------------------------------------------------------- measuring samples


def _ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence[int], n: int) -> float:
    """Distinct n-grams over all n-grams of one sample (Li et al. 2016): 1 when no n-gram
    repeats, 1 / (T - n + 1) for one token repeated; NaN for a sample shorter than n."""
    grams = _ngrams(list(tokens), n)
    return len(set(grams)) / len(grams) if grams else float("nan")


def repeated_ngram_rate(tokens: Sequence[int], n: int = 4) -> float:
    """Share of a sample's n-grams that already occurred earlier in it: 0 when none
    repeats, (T - n) / (T - n + 1) for one token repeated; NaN under n tokens."""
    grams, seen, repeated = _ngrams(list(tokens), n), set(), 0
    for gram in grams:
        repeated += gram in seen
        seen.add(gram)
    return repeated / len(grams) if grams else float("nan")


def value_at_perplexity(points: Iterable[tuple[float, float]], ppl: float) -> float | None:
    """A curve's value at perplexity ``ppl``: ``points`` (perplexity, value) are sorted by
    perplexity and the value interpolated linearly between the first two that bracket
    ``ppl``; None where none do (the curve never reached that perplexity)."""
    line = sorted(points)
    for (p0, v0), (p1, v1) in zip(line, line[1:]):
        if p0 <= ppl <= p1:
            return v0 if p1 == p0 else v0 + (v1 - v0) * (ppl - p0) / (p1 - p0)
    return None


# --------------------------------------------------------------------------- streaming text

REPLACEMENT = "\ufffd"  # what a byte-level decode gives for an incomplete UTF-8 sequence


def _stop_prefix(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop marker."""
    for k in range(min(len(text), max(map(len, stops), default=0)), 0, -1):
        if any(m.startswith(text[-k:]) for m in stops):
            return k
    return 0


class TextStream:
    """Turn a stream of token ids into text that is safe to show as it comes.

    A byte-level tokenizer (``byte``, ``bpe``, ``tiktoken``) can split one
    character over several tokens: ``"é"`` is two bytes, an emoji four. Decoding
    such a prefix gives U+FFFD, and printing it would show a wrong character. So
    tokens whose text ends in U+FFFD are held back until the character is
    complete; a char tokenizer's text always passes straight through.

    With ``stops`` (chat's turn markers) the text ends where the first marker
    starts, and trailing characters that could be the start of a marker are held
    back too, so a marker is never half shown. ``stopped`` says a marker came.

    ``push(token)`` returns the text newly safe to show (often ``""``);
    ``flush()`` returns the rest, including an incomplete character (as U+FFFD)
    or a held-back marker prefix; ``text`` is everything so far. The pieces
    joined equal ``tokenizer.decode`` of all tokens (cut at the first marker).
    """

    def __init__(self, tokenizer, stops: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.stopped = False
        self._done = ""  # decoded text that ends on a complete character
        self._pending: list[int] = []  # tokens whose text is not complete yet
        self._shown = 0  # characters of _done already returned
        self._cut: int | None = None  # where the first stop marker starts

    @property
    def text(self) -> str:
        """All text so far: complete, plus the pending tokens' decode, cut at a marker."""
        if self._cut is not None:
            return self._done[: self._cut]
        return self._done + (self.tokenizer.decode(self._pending) if self._pending else "")

    def push(self, token: int) -> str:
        """Add one token id; return the text that became safe to show."""
        if self.stopped:
            return ""
        self._pending.append(int(token))
        tail = self.tokenizer.decode(self._pending)
        full = self._done + tail
        # A marker is looked for before waiting on a split character: the
        # marker's own characters are complete even if what follows is not.
        cuts = [full.find(m) for m in self.stops if m in full]
        if cuts:
            self._done, self._pending, self._cut = full, [], min(cuts)
            self.stopped = True
            return ""
        if tail.endswith(REPLACEMENT):  # half a UTF-8 character: wait for the rest
            return ""
        self._done, self._pending = full, []
        safe = len(full) - _stop_prefix(full, self.stops)
        if safe <= self._shown:
            return ""
        piece, self._shown = full[self._shown : safe], safe
        return piece

    def flush(self) -> str:
        """The text not returned yet (held back or incomplete); the stream is then empty."""
        text = self.text
        if self._cut is None:
            self._done, self._pending = text, []
        rest, self._shown = text[self._shown :], len(text)
        return rest
