"""The vanilla GPT: shapes, causality, the KV cache, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from physllm.gpt.model import GPT, GPTConfig
from physllm.models import MODELS, build_model
from physllm.tokenization import ByteTokenizer
from physllm.training.checkpoint import load_checkpoint, save_checkpoint


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, **kw)).eval()


def test_registry():
    assert MODELS["gpt"] == (GPTConfig, GPT)


def test_shapes_and_initial_loss_near_uniform():
    model = tiny()
    x, y = torch.randint(0, 50, (2, 3, 16))
    logits, loss = model(x, y)
    assert logits.shape == (3, 16, 50)
    assert abs(loss.item() - math.log(50)) < 0.2  # GPT-2 init: nearly uniform predictions


def analytic_gpt_params(V: int, T: int, L: int, d: int, bias: bool) -> int:
    """nanoGPT's count, written out from the architecture (not from the model object).

    Token and position embeddings V*d + T*d; per block the attention's qkv (3 d^2)
    and output (d^2) maps and the MLP's d -> 4d -> d (8 d^2), i.e. 12 d^2, plus two
    LayerNorm gains (2d); a final LayerNorm gain (d); the head is tied to the token
    embedding, so it adds nothing. With ``bias``: every Linear's bias (3d + d + 4d + d
    per block) and every LayerNorm's bias (2d per block, d final).
    """
    per_block = 12 * d * d + 2 * d + (9 * d + 2 * d if bias else 0)
    return V * d + T * d + L * per_block + d + (d if bias else 0)


@pytest.mark.parametrize(
    ("V", "T", "L", "H", "d", "bias"),
    [(50, 16, 2, 2, 32, False), (65, 64, 3, 4, 48, False), (256, 32, 1, 1, 16, True)],
)
def test_parameter_count_equals_the_analytic_formula(V, T, L, H, d, bias):
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=d, bias=bias))
    assert model.lm_head.weight is model.wte.weight
    expected = analytic_gpt_params(V, T, L, d, bias)
    assert model.num_params() == expected
    # the non-embedding count drops exactly the two embedding tables
    assert model.num_params(non_embedding=True) == expected - (V + T) * d


def test_gpt2_small_is_124m():
    """The published figure as a reference independent of the formula above: GPT-2
    small (V 50257, T 1024, 12 layers of width 768, biases on) has 124,439,808
    parameters. Built on the meta device: shapes only, no memory."""
    assert analytic_gpt_params(50257, 1024, 12, 768, True) == 124_439_808
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12,
                              n_embd=768, bias=True))  # fmt: skip
    assert model.num_params() == 124_439_808


def test_causal_future_tokens_do_not_change_the_past():
    model = tiny()
    x = torch.randint(0, 50, (1, 16))
    y = x.clone()
    y[0, 10] = (y[0, 10] + 1) % 50
    a, _ = model(x)
    b, _ = model(y)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10], b[0, 10])


def test_kv_cache_equals_full_forward():
    model = tiny()
    x = torch.randint(0, 50, (2, 12))
    full, _ = model(x)
    logits, state = model.decode_step(x[:, :5], None)
    steps = [logits]
    for t in range(5, 12):
        logits, state = model.decode_step(x[:, t : t + 1], state)
        steps.append(logits)
    assert torch.allclose(torch.stack(steps, 1), full[:, 4:], atol=1e-5)


def test_decoding_past_the_block_crops_like_uncached_sampling():
    model = tiny()
    x = torch.randint(0, 50, (1, 20))  # longer than block_size 16
    logits, state = model.decode_step(x[:, :16], None)
    for t in range(16, 20):
        logits, state = model.decode_step(x[:, t : t + 1], state)
    expected, _ = model(x[:, -16:])
    assert torch.allclose(logits, expected[:, -1], atol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    model = tiny(dropout=0.1)
    save_checkpoint(tmp_path / "ckpt", model, ByteTokenizer(), step=3)
    again, tok, meta = load_checkpoint(tmp_path / "ckpt")
    x = torch.randint(0, 50, (2, 16))
    assert torch.equal(model(x)[0], again(x)[0])
    assert meta["model"] == "gpt" and meta["step"] == 3 and tok.vocab_size == 256
    assert again.lm_head.weight is again.wte.weight  # still tied after loading


def test_build_model_from_dict():
    model = build_model(
        "gpt", {"vocab_size": 10, "block_size": 8, "n_layer": 1, "n_head": 1, "n_embd": 8}
    )
    assert isinstance(model, GPT) and model.config.n_layer == 1
