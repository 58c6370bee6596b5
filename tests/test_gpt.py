"""The vanilla GPT: shapes, causality, the KV cache, checkpoints."""

from __future__ import annotations

import math

import torch

from physllm.checkpoint import load_checkpoint, save_checkpoint
from physllm.models import MODELS, build_model
from physllm.models.gpt import GPT, GPTConfig
from physllm.tokenization import ByteTokenizer


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


def test_tied_head_counted_once():
    model = tiny()
    assert model.lm_head.weight is model.wte.weight
    assert model.num_params() == sum(p.numel() for p in set(model.parameters()))


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
