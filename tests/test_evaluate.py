"""The final evaluator (whole split, fixed blocks, same tokens for every model) and
training FLOPs per token."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from physllm.data import TokenData
from physllm.errors import PhysllmError
from physllm.models import ARCHITECTURES, build_model
from physllm.training import make_config, train
from physllm.training.evaluate import evaluate_split, split_blocks
from physllm.training.flops import training_flops_per_token

from .conftest import TINY_GPT

BLOCK = 16

# Small values for whatever size fields an architecture has (one layer, narrow): the
# registry's own cpu preset fills in the rest, so a newly registered model is tested too.
TINY = dict(
    n_layer=1,
    n_head=2,
    n_embd=32,
    block_size=BLOCK,
    n_hidden=32,
    n_context=12,
    n_coord=8,
    head_coord=4,
    n_global=4,
    segment_len=8,
    mem_heads=2,
    mem_head_dim=8,
    n_slots=64,
    carry_state=True,
)


@pytest.fixture(scope="module")
def data(small_text_file, monkeypatch_module) -> TokenData:
    """The small corpus, byte tokens (vocabulary 256: QLLM's, and fine for every model)."""
    return TokenData.load(str(small_text_file), "byte")


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory):
    """A module-wide token cache in a temp folder (the autouse fixture is per test)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PHYSLLM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield mp
    mp.undo()


def tiny_model(name: str, vocab_size: int, **overrides) -> torch.nn.Module:
    arch = ARCHITECTURES[name]
    names = {f.name for f in fields(arch.config_class)}
    cfg = {**arch.presets["cpu"].model, **{k: v for k, v in TINY.items() if k in names}}
    torch.manual_seed(0)
    return build_model(name, {**cfg, "vocab_size": vocab_size, **overrides})


def hand_scored(model, tokens, blocks: int, T: int) -> float:
    """Mean -ln p over blocks 0..blocks-1, one block per forward, from zero context."""
    total = 0.0
    with torch.no_grad():
        for k in range(blocks):
            window = torch.from_numpy(tokens[k * T : k * T + T + 1].astype("int64"))
            x, y = window[None, :-1], window[None, 1:]
            logits, _ = model(x)
            total += F.cross_entropy(logits[0], y[0], reduction="sum").item()
    return total / (blocks * T)


def test_every_model_is_scored_on_the_same_tokens(data):
    n_val = len(data.splits["val"])
    expected = (n_val - 1) // BLOCK * BLOCK  # the targets are shifted by one token
    seen = {}
    for name in ARCHITECTURES:
        model = tiny_model(name, data.tokenizer.vocab_size)
        result = evaluate_split(model, data, BLOCK, batch_size=64)
        seen[name] = result["val_tokens"]
        assert result["val_loss"] == result["val_loss_reset"]
        assert result["val_perplexity"] == pytest.approx(math.exp(result["val_loss"]))
        assert result["val_bits_per_unit"] == pytest.approx(
            result["val_loss"] / math.log(2) / data.units_per_token("val")
        )
        # an untrained model is about uniform over the 256 bytes
        assert abs(result["val_loss"] - math.log(256)) < 0.5, name
        assert ("val_loss_carried" in result) == model.carries_state()
    assert set(seen.values()) == {expected}, seen


def test_the_blocks_are_the_split_cut_in_order(data):
    # (N - 1) // T blocks: one token more would not add a block unless it completes one
    n_val = len(data.splits["val"])
    assert split_blocks(data, "val", BLOCK) == (n_val - 1) // BLOCK
    assert split_blocks(data, "val", n_val - 1) == 1
    with pytest.raises(PhysllmError, match="fewer than one block"):
        split_blocks(data, "val", n_val)


def test_gpt_matches_a_hand_computation(data):
    model = tiny_model("gpt", data.tokenizer.vocab_size).eval()
    tokens = data.splits["val"]
    result = evaluate_split(model, data, BLOCK, batch_size=7, max_blocks=20)
    assert result["val_tokens"] == 20 * BLOCK and result["val_blocks"] == 20
    assert "the first 20 of" in result["eval_protocol"]
    assert result["val_loss"] == pytest.approx(hand_scored(model, tokens, 20, BLOCK), rel=1e-5)
    whole = evaluate_split(model, data, BLOCK, batch_size=64)
    assert whole["val_blocks"] == split_blocks(data, "val", BLOCK)
    assert whole["eval_protocol"].startswith(f"val split, all {whole['val_blocks']} ")


def test_regularisers_never_enter_the_score(data):
    # QLLM's forward adds coherence * L_coh to its loss in training mode: the evaluator
    # must report plain cross-entropy whatever mode the model is in, and leave the mode
    model = tiny_model("qllm", data.tokenizer.vocab_size, coherence=100.0).train()
    result = evaluate_split(model, data, BLOCK, batch_size=8, max_blocks=8)
    assert model.training
    model.eval()
    assert result["val_loss"] == pytest.approx(
        hand_scored(model, data.splits["val"], 8, BLOCK), rel=1e-5
    )
    assert set(result["aux"]) == {"lm", "coherence"}


def test_carried_state_differs_and_reset_is_independent_blocks(data):
    model = tiny_model("context_vector", data.tokenizer.vocab_size).eval()
    assert model.carries_state()
    with torch.no_grad():  # larger weights than at init: the context changes the logits
        for p in model.parameters():
            p.mul_(5.0)
    tokens = data.splits["val"]
    blocks = 30
    result = evaluate_split(model, data, BLOCK, batch_size=4, max_blocks=blocks)
    assert result["val_loss_reset"] == pytest.approx(
        hand_scored(model, tokens, blocks, BLOCK), rel=1e-5
    )
    assert abs(result["val_loss_carried"] - result["val_loss_reset"]) > 0.01
    # carried by hand: 4 stretches of ceil(30 / 4) = 8 blocks (the last has 6), in order
    total = 0.0
    with torch.no_grad():
        for r in range(4):
            state = None
            for k in range(r * 8, min(r * 8 + 8, blocks)):
                window = torch.from_numpy(tokens[k * BLOCK : k * BLOCK + BLOCK + 1].astype("int64"))
                logits, _ = model(window[None, :-1], state=state)
                state = model.last_state
                total += F.cross_entropy(logits[0], window[1:], reduction="sum").item()
    assert result["val_loss_carried"] == pytest.approx(total / (blocks * BLOCK), rel=1e-5)


def gpt_flops(n_layer: int, T: int = 32, d: int = 32, V: int = 65) -> tuple[float, float]:
    """(measured, analytic) training FLOPs per token of a GPT.

    Analytic: 6 N for the N matrix weights (forward 2 N, backward twice that: gradients
    for inputs and for weights; the tied head counts, the embedding lookups do not),
    plus per layer 12 T d for attention (forward Q K^T and P V, 2 T d each; causal SDPA
    is counted in full by FlopCounterMode; backward twice).
    """
    model = build_model(
        "gpt", dict(n_layer=n_layer, n_head=2, n_embd=d, block_size=T, vocab_size=V)
    )
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return training_flops_per_token(model, T, batch_size=2), 6 * n + 12 * n_layer * T * d


def test_gpt_flops_match_the_analytic_count():
    for n_layer in (1, 3):
        measured, analytic = gpt_flops(n_layer)
        # bias=False: every counted product is a weight matmul or attention; nothing else
        assert measured == pytest.approx(analytic, rel=1e-9)
    # per layer: 6 * 12 d^2 (qkv, proj, 4x MLP) + 12 T d; the head 6 d V stays
    one, three = gpt_flops(1)[0], gpt_flops(3)[0]
    assert three - one == pytest.approx(2 * (6 * 12 * 32 * 32 + 12 * 32 * 32))


def test_flops_leave_the_model_as_it_was():
    model = tiny_model("gpt", 65, dropout=0.1).train()
    rng = torch.get_rng_state()
    assert training_flops_per_token(model, BLOCK) > 0
    assert model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # a run's dropout draws are not moved on


def test_the_trainer_caps_the_final_eval_only_when_told(small_text_file, tmp_path):
    cfg = make_config(
        "gpt",
        corpus=str(small_text_file),
        out_dir=str(tmp_path),
        **{**TINY_GPT, "steps": 2, "eval_interval": 2, "final_eval_blocks": 5},
    )
    m = train(cfg).metrics
    assert m["val_tokens"] == 5 * 32 and "the first 5 of" in m["eval_protocol"]
    assert m["flops_per_token"] > 6 * m["params_non_embedding"]  # 6 N, plus head and attention
