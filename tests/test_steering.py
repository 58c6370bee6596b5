"""Steering and the seed's four decoders; the steer command and its interactive loop."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from physllm.errors import PhysllmError
from physllm.hamiltonian.steering import (
    DecodeConfig,
    at_matched_perplexity,
    continuation_nll,
    decode,
    repetition_rate,
    run_once,
    steering_curve,
    target_rates,
)
from physllm.training.checkpoint import load_checkpoint
from tests.conftest import REPO, TINY_GPT


@pytest.fixture(scope="module")
def ham_run(tmp_path_factory, small_text_file) -> Path:
    """A tiny symplectic Hamiltonian model trained 40 steps on the small corpus."""
    from physllm.training import make_config, train

    out = tmp_path_factory.mktemp("ham_run")
    train(
        make_config(
            "hamiltonian",
            corpus=str(small_text_file),
            steps=40,
            eval_interval=40,
            lr=3e-3,
            out_dir=str(out),
            **TINY_GPT,
        )
    )
    return out


@pytest.fixture(scope="module")
def loaded(ham_run):
    from physllm.training.checkpoint import load_checkpoint

    model, tokenizer, _ = load_checkpoint(ham_run)
    return model, tokenizer


def steer_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "physllm", "steer", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )


def test_steering_moves_the_target_rate(loaded):
    """Over 50 samples per strength: the target's tokens get more frequent with positive
    strength and rarer with negative strength than unsteered."""
    model, tokenizer = loaded
    rows = steering_curve(
        model, tokenizer, ["the"], strengths=(-2.0, 0.0, 2.0), n_samples=50, max_new_tokens=16
    )
    rate = {r["strength"]: r["token_rate"] for r in rows}
    assert rate[-2.0] < rate[0.0] < rate[2.0]
    assert all(r["n"] == 50 and r["ppl"] > 1 for r in rows)


def test_logit_bias_baseline_moves_the_rate_and_costs_perplexity(loaded):
    """The plain baseline: strength nats on the word's tokens' logits. Strength 0 is the
    same samples as unsteered steering (common random numbers)."""
    model, tokenizer = loaded
    kw = dict(n_samples=30, max_new_tokens=12)
    rows = steering_curve(model, tokenizer, ["the"], (-3.0, 0.0, 3.0), method="bias", **kw)
    rate = {r["strength"]: r["token_rate"] for r in rows}
    assert rate[-3.0] < rate[0.0] < rate[3.0]
    assert {r["method"] for r in rows} == {"bias"}
    plain = steering_curve(model, tokenizer, ["the"], (0.0,), **kw)[0]
    assert plain["token_rate"] == rate[0.0] and plain["ppl"] == rows[1]["ppl"]
    with pytest.raises(PhysllmError, match="steer or bias"):
        steering_curve(model, tokenizer, ["the"], (1.0,), method="nudge", **kw)


def test_matched_perplexity_interpolates_the_baseline():
    steered = [
        dict(target="a", strength=0.0, ppl=10.0, token_rate=0.2),
        dict(target="a", strength=1.0, ppl=13.0, token_rate=0.5),
        dict(target="a", strength=-1.0, ppl=30.0, token_rate=0.05),
    ]
    biased = [
        dict(target="a", strength=0.0, ppl=10.0, token_rate=0.2),
        dict(target="a", strength=2.0, ppl=12.0, token_rate=0.4),
        dict(target="a", strength=4.0, ppl=16.0, token_rate=0.8),
        dict(target="a", strength=-2.0, ppl=11.0, token_rate=0.1),
    ]
    rows = {r["strength"]: r for r in at_matched_perplexity(steered, biased)}
    assert set(rows) == {1.0, -1.0}
    assert rows[1.0]["bias_rate"] == pytest.approx(0.5)  # 0.4 + 0.4 * (13 - 12) / 4
    assert rows[1.0]["steer_minus_bias"] == pytest.approx(0.0)
    assert rows[-1.0]["bias_rate"] is None  # the bias grid never cost ppl 30
    # any rate of the rows: here whole words, where the bias is ahead at ppl 13
    for r in steered + biased:
        r["whole_word_rate"] = r["token_rate"] / 2
    steered[1]["whole_word_rate"] = 0.1
    words = {r["strength"]: r for r in at_matched_perplexity(steered, biased, "whole_word_rate")}
    assert words[1.0]["bias_rate"] == pytest.approx(0.25)
    assert words[1.0]["steer_minus_bias"] == pytest.approx(-0.15)


@pytest.mark.parametrize("word", ["the", "def", "x"])
def test_steering_shifts_the_next_token_distribution_toward_the_target(loaded, word):
    """Deterministic: the probability of the target's tokens at the next position rises
    strictly with the strength, from away (< 0) through unsteered (0) to toward (> 0)."""
    from physllm.hamiltonian.steering import forward_last, target_ids

    model, tokenizer = loaded
    ids = target_ids(tokenizer, word)
    strengths = (-1.0, -0.5, 0.0, 0.5, 1.0)
    for prompt in ("The ", "and ", "in a ", "x = 1\n"):
        idx = torch.tensor([tokenizer.encode(prompt)])
        p = []
        for s in strengths:
            logits, _ = forward_last(model, idx, model.steer_vector(ids, s) if s else None)
            p.append(float(logits.softmax(-1)[0, ids].sum()))
        assert all(a < b for a, b in zip(p, p[1:])), (word, prompt, p)


def test_decoders_pick_among_the_top_candidates(loaded):
    model, tokenizer = loaded
    idx = torch.tensor([tokenizer.encode("The "), tokenizer.encode("and ")])
    for mode in ("least-action", "flow"):
        cont = decode(model, idx, 5, mode=mode)
        assert cont.shape == (2, 5)
        for t in range(5):
            with torch.no_grad():
                logits = model.run(torch.cat([idx, cont[:, :t]], dim=1))["logits"][:, -1]
            top = logits.topk(5, dim=-1).indices
            assert (top == cont[:, t : t + 1]).any(-1).all(), mode
    # least action with a huge repeat cost never picks a token from its recent window
    cfg = DecodeConfig(repeat_cost_action=1e6, repeat_window_action=3, lookahead=1)
    cont = decode(model, idx, 6, mode="least-action", cfg=cfg)
    full = torch.cat([idx, cont], dim=1)
    for t in range(idx.size(1), full.size(1)):
        window = full[:, t - 3 : t]
        assert not (window == full[:, t : t + 1]).any(-1).all()


def test_measurements_match_their_definitions(loaded):
    model, _ = loaded
    prompt = torch.randint(0, model.config.vocab_size, (2, 5))
    cont = torch.randint(0, model.config.vocab_size, (2, 4))
    with torch.no_grad():
        logits = model(torch.cat([prompt, cont], 1)[:, :-1])[0][:, -4:]
    manual = torch.nn.functional.cross_entropy(logits.transpose(1, 2), cont, reduction="none")
    assert torch.allclose(continuation_nll(model, prompt, cont), manual.mean(-1), atol=1e-5)
    assert repetition_rate(torch.tensor([[1, 2, 1, 2, 1, 2]]), n=2) == pytest.approx(3 / 5)
    rates = target_rates(["a The b", "xyz there"], torch.tensor([[1, 2], [3, 3]]), "the", [3])
    # "there" contains "the" but is not the word: 1 of the 5 words is
    assert rates == dict(word_rate=1.0, whole_word_rate=0.2, token_rate=0.5)


def test_steer_command(ham_run):
    r = steer_cli(
        "--ckpt", str(ham_run), "--prompt", "The ", "--target", "the", "--strength", "0.5",
        "--max-new-tokens", "20",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    # exactly what run_once prints in this process for the same steering and seed:
    # the notice, the prompt, 20 new characters (a char model), a newline
    model, tokenizer, _ = load_checkpoint(ham_run)
    steered, plain = io.StringIO(), io.StringIO()
    text = run_once(model, tokenizer, "The ", "steer", "the", 0.5, 20, 1337, out=steered)
    assert len(text) == 20
    expected = f"steering toward 'the' with strength 0.5\nThe {text}\n"
    assert r.stdout == steered.getvalue() == expected
    # and the steering changed the text: unsteered, the same seed samples another one
    assert run_once(model, tokenizer, "The ", "sample", max_new_tokens=20, out=plain) != text
    for mode in ("3", "flow"):  # the interactive test runs all four
        r = steer_cli("--ckpt", str(ham_run), "--prompt", "The ", "--mode", mode,
                      "--max-new-tokens", "5")  # fmt: skip
        assert r.returncode == 0, (mode, r.stderr)


def test_steer_interactive_loop_with_piped_input(ham_run):
    script = "1\nThe \n2\nThe \nthe\n-0.5\n3\nAnd \n4\nAnd \n9\n2\nThe \nthe\nlots\nq\n"
    r = steer_cli("--ckpt", str(ham_run), "--max-new-tokens", "6", stdin=script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Select Mode (1-4/q): ") == 7
    assert "steering away from 'the'" in r.stdout
    assert "unknown mode '9'" in r.stdout
    assert "strength must be a number" in r.stdout
    # end of input without q: a clean exit too
    r = steer_cli("--ckpt", str(ham_run), "--max-new-tokens", "4", stdin="1\nThe \n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Select Mode") == 2


def test_steer_bad_input_is_one_line_and_exit_2(ham_run, tiny_run):
    cases = [
        ("--ckpt", str(ham_run), "--prompt", "x", "--mode", "7"),
        ("--ckpt", str(ham_run), "--prompt", "x", "--target", "\u2603"),  # not in the vocab
        ("--ckpt", str(ham_run), "--prompt", "x", "--strength", "nan", "--target", "the"),
        ("--ckpt", str(tiny_run), "--prompt", "x"),  # a GPT checkpoint: no steering
        ("--ckpt", str(ham_run / "nope"), "--prompt", "x"),
    ]
    for args in cases:
        r = steer_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr


def test_target_ids_take_the_word_as_it_appears_inside_a_sentence():
    """A byte-level BPE has the in-sentence word (after a space) as one token; characters
    keep the word's own letters (the space, a token of its own, is not part of it)."""
    from physllm.hamiltonian.steering import target_ids
    from physllm.tokenization import BPETokenizer, CharTokenizer

    text = "the king and the queen love the land. " * 200
    bpe = BPETokenizer.fit(text, vocab_size=300)
    assert target_ids(bpe, "love") == bpe.encode(" love") and len(bpe.encode(" love")) == 1
    assert bpe.encode("love") != bpe.encode(" love")
    chars = CharTokenizer.fit(text)
    assert target_ids(chars, "love") == chars.encode("love")
