"""``python -m physllm plan``: a run's parameters, memory, FLOPs and time before it starts."""

from __future__ import annotations

import dataclasses

import pytest

from physllm import cli
from physllm.errors import PhysllmError
from physllm.models import build_model
from physllm.plan import GPUS, plan, vocab_size_of, with_vocab
from physllm.training import make_config
from physllm.training.flops import training_flops_per_token

SMALL = dict(n_layer=2, n_head=2, n_embd=32, block_size=128, batch_size=4, grad_accum=2)


def small_config(model: str = "gpt", **changes):
    return with_vocab(make_config(model, "cpu", **{**SMALL, **changes}), 256)


def test_vocabulary_sizes_without_loading_a_tokenizer():
    assert vocab_size_of("byte") == 256 and vocab_size_of("tiktoken:gpt2") == 50257
    assert vocab_size_of("bpe:8192") == 8192 and vocab_size_of("hf:some/model", 32000) == 32000
    with pytest.raises(PhysllmError, match="--vocab-size"):
        vocab_size_of("hf:some/model")


@pytest.mark.parametrize("model", ["gpt", "hamiltonian"])
def test_the_estimates_follow_their_stated_formulas(model):
    cfg = small_config(model)
    p = plan(cfg, mfu=0.5)
    built = build_model(model, cfg.model_config)
    assert p["params"] == sum(t.numel() for t in built.parameters())
    # measured at two short blocks and extrapolated: equal to counting at the full block
    assert p["flops_per_token"] == pytest.approx(training_flops_per_token(built, 128), rel=1e-6)
    assert p["tokens_per_step"] == 4 * 2 * 128
    m16 = p["memory_gb"]["bits16"]
    assert m16["weights+optimizer"] == pytest.approx(p["params"] * 16 / 1e9)
    assert m16["activations"] == pytest.approx(34 * 4 * 128 * 32 * 2 / 1e9)
    assert m16["logits"] == pytest.approx(8 * 4 * 128 * 256 / 1e9)
    assert p["memory_gb"]["float32"]["activations"] == pytest.approx(2 * m16["activations"])
    for gpu, row in zip(GPUS, p["gpus"], strict=True):
        step = p["flops_per_token"] * 4 * 2 * 128 / (gpu.peak_tflops * 1e12 * 0.5)
        assert row["step_s"] == pytest.approx(step) and row["run_s"] == pytest.approx(
            step * cfg.steps
        )
        assert row["fits"]


def test_gpt2_small_costs_what_the_kaplan_count_says():
    cfg = with_vocab(make_config("gpt", "gpu"), 50257)
    p = plan(cfg)
    mc = cfg.model_config
    # 6 N + 12 n_layer T d, N the matrices incl. the tied head (position embeddings excluded)
    n = p["params"] - mc.block_size * mc.n_embd
    expected = 6 * n + 12 * mc.n_layer * mc.block_size * mc.n_embd
    assert p["flops_per_token"] == pytest.approx(expected, rel=0.03)


def test_a_batch_too_large_for_a_t4_is_said_not_to_fit():
    p = plan(small_config(batch_size=4096, block_size=1024))
    fits = {row["gpu"]: row["fits"] for row in p["gpus"]}
    assert not fits["T4"] and p["memory_gb"]["bits16"]["total"] > 16


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "nope"], "unknown model"),
        (["--mfu", "0"], "mfu"),
        (["--world-size", "0"], "world-size"),
        (["--tokenizer", "hf:x/y"], "--vocab-size"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["plan", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_the_command_prints_every_gpu(capsys):
    cli.main(["plan", "--model", "gpt", "--preset", "cpu", "--steps", "100"])
    out = capsys.readouterr().out
    assert "parameters" in out and all(g.name in out for g in GPUS)
    assert dataclasses.is_dataclass(GPUS[0])
