"""Steering and the four decoders of the Hamiltonian seed's test script.

Modes (the seed's numbering, kept for its interactive loop):

1. ``sample``: temperature 0.7, top-k 50, repetition penalty 1.2.
2. ``steer``: the same sampler with a steering term (a force on every momentum
   in the symplectic variant, an embedding offset in the seed variant; see
   :meth:`HamiltonianLM.steer_vector`) toward a target word (strength > 0) or
   away from it (< 0).
3. ``least-action``: the top-5 candidates are each rolled out greedily for 3
   tokens; the candidate with the least mean "action" wins,

       S = (1 / (1 + L)) sum_steps [-log p(token) + 10 * (token seen in the last 15)]

4. ``flow``: the top-5 candidates scored by one step,

       S = -log p(candidate) + 5 * (seen in the last 32) + 2 * (1 - cos(h_now, h_after))

   with h the last hidden state (the vector the head reads).

Every decoder works on a batch of rows (B, T) at once, which is what makes the
measured steering curve (50 samples per strength and target) affordable on a
CPU. :func:`steering_curve` measures, against strength, how often the target
appears in the continuation and the continuation's perplexity under the
*unsteered* model (the fluency cost).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from physllm.arch import Command
from physllm.errors import PhysllmError
from physllm.hamiltonian.model import HamiltonianLM
from physllm.sampling import (
    SamplingConfig,
    TextStream,
    pick_token,
    repeated_ngram_rate,
    value_at_perplexity,
)

MODES = {"1": "sample", "2": "steer", "3": "least-action", "4": "flow"}


@dataclass
class DecodeConfig:
    temperature: float = 0.7
    top_k: int = 50
    repetition_penalty: float = 1.2
    lookahead: int = 3  # least-action: greedy roll-out length
    candidates: int = 5  # least-action and flow: top-k candidates scored
    repeat_window_action: int = 15
    repeat_cost_action: float = 10.0
    repeat_window_flow: int = 32
    repeat_cost_flow: float = 5.0
    momentum_weight: float = 2.0  # flow: weight of 1 - cos


def _window(idx: torch.Tensor, block_size: int) -> torch.Tensor:
    return idx[:, -block_size:]


@torch.no_grad()
def forward_last(model, idx: torch.Tensor, steer: torch.Tensor | None = None):
    """Logits (B, V) and hidden state (B, C) at the last position of the last block."""
    out = model.run(_window(idx, model.config.block_size), steer)
    return out["logits"][:, -1, :].float(), out["hidden"][:, -1, :].float()


# --------------------------------------------------------------------------- decoders


@torch.no_grad()
def iter_sample(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    steer: torch.Tensor | None = None,
    cfg: DecodeConfig | None = None,
    generator: torch.Generator | None = None,
    logit_bias: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Modes 1 and 2: yield (B, 1) tokens sampled with the seed's knobs (and steering).
    ``logit_bias`` (V,): added to every step's logits (the plain baseline steering is
    measured against)."""
    cfg = cfg or DecodeConfig()
    knobs = SamplingConfig(
        temperature=cfg.temperature, top_k=cfg.top_k, repetition_penalty=cfg.repetition_penalty
    ).validate()
    generated = idx[:, :0]
    state = None if steer is None else {"steer": steer}  # the cache holds the steered states
    new = idx
    for _ in range(max_new_tokens):
        logits, state = model.decode_step(new, state)  # cached: one token's work per step
        logits = logits.float()
        if logit_bias is not None:
            logits = logits + logit_bias
        # the seed penalises the tokens it generated, not the prompt's
        new = pick_token(logits, generated, knobs, generator)
        generated = torch.cat([generated, new], dim=1)
        yield new


def _seen(history: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, W) history, (B, K) tokens -> (B, K) float: 1 where a token is in its row's history."""
    return (tokens.unsqueeze(-1) == history.unsqueeze(1)).any(-1).float()


@torch.no_grad()
def iter_least_action(
    model, idx: torch.Tensor, max_new_tokens: int, cfg: DecodeConfig | None = None
) -> Iterator[torch.Tensor]:
    """Mode 3: top-k candidates, each rolled out greedily; least mean action wins."""
    cfg = cfg or DecodeConfig()
    B, K, L = idx.size(0), cfg.candidates, cfg.lookahead
    state, new = None, idx
    for _ in range(max_new_tokens):
        logits, state = model.decode_step(new, state)  # cached, as every roll-out below
        logp = logits.float().log_softmax(-1)
        top_logp, cand = logp.topk(K, dim=-1)  # (B, K)
        history = idx[:, -cfg.repeat_window_action :]
        action = -top_logp + cfg.repeat_cost_action * _seen(history, cand)
        # roll every candidate out as one batch of B * K rows, from a copy of the cache
        sim = torch.cat([idx.repeat_interleave(K, 0), cand.reshape(-1, 1)], dim=1)
        step_logits, sim_state = model.decode_step(sim[:, -1:], model.fork_state(state, K))
        for step in range(L):
            best_logp, best = step_logits.float().log_softmax(-1).max(-1)  # greedy
            seen = _seen(sim[:, -cfg.repeat_window_action :], best[:, None])[:, 0]
            action = action + (-best_logp + cfg.repeat_cost_action * seen).view(B, K)
            sim = torch.cat([sim, best[:, None]], dim=1)
            if step < L - 1:
                step_logits, sim_state = model.decode_step(best[:, None], sim_state)
        pick = (action / (1 + L)).argmin(-1, keepdim=True)  # (B, 1)
        new = cand.gather(1, pick)
        idx = torch.cat([idx, new], dim=1)
        yield new


@torch.no_grad()
def iter_flow(
    model, idx: torch.Tensor, max_new_tokens: int, cfg: DecodeConfig | None = None
) -> Iterator[torch.Tensor]:
    """Mode 4: -log p + repeat cost + w (1 - cos) between hidden states before and after."""
    cfg = cfg or DecodeConfig()
    B, K = idx.size(0), cfg.candidates
    state, new = None, idx
    for _ in range(max_new_tokens):
        logits, state = model.decode_step(new, state)  # cached
        hidden = state["hidden"].float()
        top_logp, cand = logits.float().log_softmax(-1).topk(K, dim=-1)  # (B, K)
        potential = -top_logp + cfg.repeat_cost_flow * _seen(
            idx[:, -cfg.repeat_window_flow :], cand
        )
        # every candidate one step on, from a copy of the cache: its hidden state (B * K, C)
        _, after = model.decode_step(cand.reshape(-1, 1), model.fork_state(state, K))
        after = after["hidden"].float()
        turn = 1.0 - F.cosine_similarity(hidden.repeat_interleave(K, 0), after, dim=-1)
        total = potential + cfg.momentum_weight * turn.view(B, K)
        new = cand.gather(1, total.argmin(-1, keepdim=True))
        idx = torch.cat([idx, new], dim=1)
        yield new


def iter_decode(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    mode: str = "sample",
    steer: torch.Tensor | None = None,
    cfg: DecodeConfig | None = None,
    generator: torch.Generator | None = None,
    logit_bias: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Any of the four modes by name (or by the seed's number 1-4)."""
    mode = MODES.get(mode, mode)
    if mode in ("sample", "steer"):
        return iter_sample(model, idx, max_new_tokens, steer, cfg, generator, logit_bias)
    if mode == "least-action":
        return iter_least_action(model, idx, max_new_tokens, cfg)
    if mode == "flow":
        return iter_flow(model, idx, max_new_tokens, cfg)
    raise PhysllmError(f"unknown mode {mode!r}; choose from 1-4 or {', '.join(MODES.values())}")


def decode(model, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """The new tokens (B, n) of :func:`iter_decode`."""
    was_training = model.training
    model.eval()
    try:
        new = list(iter_decode(model, idx, max_new_tokens, **kwargs))
    finally:
        model.train(was_training)
    return torch.cat(new, dim=1) if new else idx[:, :0]


# --------------------------------------------------------------------------- measurements


def target_ids(tokenizer, word: str) -> list[int]:
    """The target word's tokens as it appears inside a sentence (after a space): for a
    byte-level BPE that is one ``Ġword``-style token, not the sentence-initial pieces of
    ``word``; for characters, the word's characters (a space of its own is dropped).
    Errors are PhysllmError with a clear message."""
    if not word:
        raise PhysllmError("the target word is empty")
    ids, space = tokenizer.encode(" " + word), tokenizer.encode(" ")
    if space and ids[: len(space)] == space:
        ids = ids[len(space) :]
    if not ids:
        raise PhysllmError(f"the target word {word!r} encodes to no tokens")
    return ids


WORD = re.compile(r"[a-z']+")


def target_rates(texts: Sequence[str], cont: torch.Tensor, word: str, ids: Sequence[int]) -> dict:
    """word_rate: share of continuations containing the word anywhere (case-insensitive);
    whole_word_rate: share of the generated words (runs of letters) that are the word;
    token_rate: share of generated tokens that are one of the word's tokens."""
    words = [w for t in texts for w in WORD.findall(t.lower())]
    return dict(
        word_rate=sum(word.lower() in t.lower() for t in texts) / max(1, len(texts)),
        whole_word_rate=sum(w == word.lower() for w in words) / max(1, len(words)),
        token_rate=float(torch.isin(cont, torch.tensor(list(ids))).float().mean()),
    )


@torch.no_grad()
def continuation_nll(model, prompt: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per row (B,) of ``cont`` (B, n) after ``prompt`` (B, T),
    under the model as it is (unsteered)."""
    full = torch.cat([prompt, cont], dim=1)[:, -(model.config.block_size + 1) :]
    n = cont.size(1)
    logits = model.run(full[:, :-1])["logits"].float()  # (B, T + n - 1, V)
    logp = logits[:, -n:].log_softmax(-1)
    return -logp.gather(-1, full[:, -n:, None]).squeeze(-1).mean(-1)


def steering_curve(
    model,
    tokenizer,
    targets: Sequence[str],
    strengths: Sequence[float] = (-1.0, -0.5, 0.0, 0.5, 1.0),
    prompt: str = "\n",
    n_samples: int = 50,
    max_new_tokens: int = 24,
    seed: int = 1337,
    cfg: DecodeConfig | None = None,
    method: str = "steer",
) -> list[dict]:
    """Target-word rate and unsteered perplexity of ``n_samples`` steered continuations
    per (target, strength), each batch of samples generated at once.

    ``method="steer"``: the model's steering term (:meth:`HamiltonianLM.steer_vector`).
    ``method="bias"``: the plain baseline, ``strength`` nats added to the logits of the
    word's tokens at every step (no model internals at all).

    The same random seed for every strength (common random numbers), so the
    differences between strengths are the steering's, not the sampler's.
    """
    if method not in ("steer", "bias"):
        raise PhysllmError(f"steering method {method!r}: steer or bias")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    prompt_ids = torch.tensor([tokenizer.encode(prompt)], device=device).repeat(n_samples, 1)
    try:
        for word in targets:
            ids = target_ids(tokenizer, word)
            for s in strengths:
                steer = model.steer_vector(ids, s) if s != 0 and method == "steer" else None
                bias = None
                if s != 0 and method == "bias":
                    bias = torch.zeros(model.config.vocab_size, device=device)
                    bias[torch.tensor(ids, device=device)] = float(s)
                gen = torch.Generator(device=device).manual_seed(seed)
                t0 = time.perf_counter()
                cont = decode(
                    model, prompt_ids, max_new_tokens, mode="steer", steer=steer, cfg=cfg,
                    generator=gen, logit_bias=bias,
                )  # fmt: skip
                seconds = time.perf_counter() - t0
                texts = [tokenizer.decode(row.tolist()) for row in cont]
                nll = continuation_nll(model, prompt_ids, cont)
                rows.append(
                    dict(
                        target=word,
                        method=method,
                        strength=float(s),
                        n=n_samples,
                        **target_rates(texts, cont, word, ids),
                        ppl=float(torch.exp(nll.mean())),
                        tokens_per_sec=n_samples * max_new_tokens / seconds,
                        example=texts[0],
                    )
                )
    finally:
        model.train(was_training)
    return rows


def at_matched_perplexity(
    steered: Sequence[dict], biased: Sequence[dict], rate: str = "token_rate"
) -> list[dict]:
    """Steering against the logit-bias baseline at the same fluency cost.

    For each steered row (strength != 0), the baseline's ``rate`` (a key of the rows:
    ``token_rate``, ``whole_word_rate``...) at the steered row's perplexity: linear
    interpolation between the two bias strengths (same target, same sign) whose
    perplexities bracket it; None where no pair brackets it (the bias grid did not reach
    that cost). ``steer_minus_bias``: positive where steering moves the target's rate
    further than the bias does at equal perplexity."""
    rows = []
    for r in steered:
        if r["strength"] == 0:
            continue
        sign = 1 if r["strength"] > 0 else -1
        line = [
            (b["ppl"], b[rate]) for b in biased
            if b["target"] == r["target"] and (b["strength"] == 0 or (b["strength"] > 0) == (sign > 0))
        ]  # fmt: skip
        at_ppl = value_at_perplexity(line, r["ppl"])
        rows.append(
            dict(
                target=r["target"],
                strength=r["strength"],
                ppl=r["ppl"],
                rate=rate,
                steer_rate=r[rate],
                bias_rate=at_ppl,
                steer_minus_bias=None if at_ppl is None else sign * (r[rate] - at_ppl),
            )
        )
    return rows


def repetition_rate(cont: torch.Tensor, n: int = 4) -> float:
    """Share of n-grams in each continuation (B, T) that already occurred earlier in it,
    the mean over rows of :func:`~physllm.sampling.repeated_ngram_rate` (rows of one length
    hold as many n-grams each, so this is also the pooled share); 0 under n tokens."""
    if cont.size(-1) < n or cont.size(0) == 0:
        return 0.0
    return sum(repeated_ngram_rate(row, n) for row in cont.tolist()) / cont.size(0)


def compare_decoders(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    modes: Sequence[str] = ("sample", "least-action", "flow"),
    seed: int = 1337,
) -> list[dict]:
    """Each mode on the same prompts: perplexity under the model, repetition, tokens/s."""
    device = next(model.parameters()).device
    rows = []
    for mode in modes:
        nlls, conts, seconds = [], [], 0.0
        for prompt in prompts:
            idx = torch.tensor([tokenizer.encode(prompt)], device=device)
            gen = torch.Generator(device=device).manual_seed(seed)
            t0 = time.perf_counter()
            cont = decode(model, idx, max_new_tokens, mode=mode, generator=gen)
            seconds += time.perf_counter() - t0
            nlls.append(continuation_nll(model, idx, cont))
            conts.append(cont)
        rows.append(
            dict(
                mode=mode,
                ppl=float(torch.exp(torch.cat(nlls).mean())),
                repetition=sum(repetition_rate(c) for c in conts) / len(conts),
                tokens_per_sec=len(prompts) * max_new_tokens / seconds,
                example=tokenizer.decode(conts[0][0].tolist()),
            )
        )
    return rows


# --------------------------------------------------------------------------- CLI


def run_once(
    model,
    tokenizer,
    prompt: str,
    mode: str = "sample",
    target: str | None = None,
    strength: float = 0.0,
    max_new_tokens: int = 100,
    seed: int = 1337,
    cfg: DecodeConfig | None = None,
    out=None,
) -> str:
    """Generate one continuation, streaming it to ``out`` (stdout); return its text."""
    out = out or sys.stdout
    device = next(model.parameters()).device
    if not prompt:
        raise PhysllmError("the prompt is empty")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise PhysllmError("the prompt encodes to no tokens")
    mode = MODES.get(mode, mode)
    steer = None
    if mode == "steer":
        if not target:
            raise PhysllmError("steering needs a target word (--target)")
        if not math.isfinite(strength):
            raise PhysllmError(f"strength must be a finite number, got {strength}")
        steer = model.steer_vector(target_ids(tokenizer, target), strength)
        out.write(f"steering {'toward' if strength >= 0 else 'away from'} {target!r} ")
        out.write(f"with strength {strength}\n")
    gen = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([ids], device=device)
    out.write(prompt)
    stream = TextStream(tokenizer)  # holds back a character split over byte tokens
    model.eval()
    for token in iter_decode(model, idx, max_new_tokens, mode, steer, cfg, gen):
        if piece := stream.push(token):
            out.write(piece)
            out.flush()
    out.write(stream.flush() + "\n")
    return stream.text


def interactive(model, tokenizer, args, stdin=None, out=None) -> None:
    """The seed's loop: choose a mode (1-4), a prompt, for mode 2 a target and strength;
    ``q`` (or end of input) quits."""
    stdin, out = stdin or sys.stdin, out or sys.stdout

    def ask(question: str) -> str | None:
        out.write(question)
        out.flush()
        line = stdin.readline()
        return None if line == "" else line.rstrip("\n")

    out.write("modes: 1 sample, 2 steer, 3 least action, 4 Hamiltonian flow, q quit\n")
    while True:
        mode = ask("\nSelect Mode (1-4/q): ")
        if mode is None or mode.strip().lower() == "q":
            out.write("\n")
            return
        mode = mode.strip()
        if mode not in MODES:
            out.write(f"unknown mode {mode!r}: type 1, 2, 3, 4 or q\n")
            continue
        prompt = ask("Enter Prompt: ")
        if prompt is None:
            out.write("\n")
            return
        if not prompt:
            continue
        target, strength = None, 0.0
        if mode == "2":
            target = ask("Target Word: ")
            raw = ask("Strength: ")
            if target is None or raw is None:
                out.write("\n")
                return
            try:
                strength = float(raw)
            except ValueError:
                out.write(f"strength must be a number, got {raw!r}\n")
                continue
        try:
            run_once(
                model, tokenizer, prompt, mode, target, strength, args.max_new_tokens, args.seed,
                out=out,
            )  # fmt: skip
        except PhysllmError as err:
            out.write(f"error: {err}\n")


def add_steer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", default=None, help="omit for the interactive loop")
    parser.add_argument("--target", default=None, help="the word to steer toward or away from")
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument(
        "--mode",
        default=None,
        help="1 sample, 2 steer, 3 least-action, 4 flow (default: 2 with --target, else 1)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1337)


def check_steer_args(args: argparse.Namespace) -> None:
    """Bad flags fail here, before the checkpoint is read."""
    if args.max_new_tokens < 0:
        raise PhysllmError("--max-new-tokens must be >= 0")
    args.mode = args.mode or ("2" if args.target else "1")  # settled here: run_steer reads it
    if MODES.get(args.mode, args.mode) not in MODES.values():
        raise PhysllmError(
            f"unknown mode {args.mode!r}; choose from 1-4 or {', '.join(MODES.values())}"
        )
    if not math.isfinite(args.strength):
        raise PhysllmError(f"--strength must be a finite number, got {args.strength}")


def run_steer(args: argparse.Namespace, model, tokenizer, device: torch.device) -> None:
    """``physllm steer``: one continuation with --prompt, else the interactive loop."""
    if args.target is not None:
        target_ids(tokenizer, args.target)  # fail early on a word the tokenizer cannot encode
    if args.prompt is None:
        interactive(model, tokenizer, args)
        return
    run_once(
        model, tokenizer, args.prompt, args.mode, args.target, args.strength,
        args.max_new_tokens, args.seed,
    )  # fmt: skip


STEER_COMMAND = Command(
    name="steer",
    help="steer generation toward or away from a word",
    description=(
        "Generate with a Hamiltonian checkpoint, steered toward (strength > 0) or away "
        "from (< 0) a target word. Without --prompt: the seed's interactive loop "
        "(modes 1-4, q quits)."
    ),
    add_arguments=add_steer_arguments,
    check=check_steer_args,
    run=run_steer,
    model_class=HamiltonianLM,
)
