"""The vanilla GPT: shapes, causality, the KV cache, checkpoints."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from physllm.arch import ModelConfig, TransformerShape
from physllm.context_vector.model import ContextVectorConfig
from physllm.errors import PhysllmError
from physllm.gpt.model import GPT, GPTConfig
from physllm.hamiltonian.model import HamiltonianConfig
from physllm.hopfield.model import HopfieldConfig
from physllm.models import MODELS, build_model, count_params
from physllm.ngt.model import NGTConfig
from physllm.qllm.model import QLLMConfig
from physllm.tokenization import ByteTokenizer
from physllm.training import make_config, matched_baseline
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


# ----- the transformer shape every attention model's config extends

SHAPED = [GPTConfig, HamiltonianConfig, QLLMConfig, HopfieldConfig, NGTConfig]
SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0, "bias": False}


@pytest.mark.parametrize("cls", SHAPED)
def test_configs_share_the_transformer_shape(cls):
    assert issubclass(cls, TransformerShape)
    names = [f.name for f in dataclasses.fields(cls)]
    assert names[:7] == ["vocab_size", "block_size", *SHAPE]  # the base's fields come first
    for name in SHAPE:  # declared once, in TransformerShape, not again in the subclass
        assert name not in cls.__dict__.get("__annotations__", {})
    # defaults as before the fields moved (checkpoints' config.json are unchanged)
    assert {k: getattr(cls(), k) for k in SHAPE} == SHAPE
    assert cls().block_size == (64 if cls is HopfieldConfig else 256)
    assert cls().vocab_size == (256 if cls is QLLMConfig else 0)
    # the GPT of a model's shape, for baselines and parameter matching
    shaped = cls(n_layer=2, n_head=2, n_embd=64, dropout=0.1, bias=True)
    gpt = GPTConfig(**shaped.shape())
    shape_keys = [k for k in gpt.to_dict() if k not in ("mlp_hidden", "attn_window")]  # GPT's own
    assert {k: gpt.to_dict()[k] for k in shape_keys} == {k: getattr(shaped, k) for k in shape_keys}
    assert gpt.mlp_hidden == 0  # GPT's own 4 * n_embd unless asked
    assert gpt.attn_window == 0  # full causal attention unless asked


def test_gpt_mlp_hidden_sets_the_mlp_width():
    base = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32))
    narrow = GPT(
        GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, mlp_hidden=64)
    )
    assert base.blocks[0].mlp.c_fc.out_features == 128
    assert narrow.blocks[0].mlp.c_fc.out_features == 64
    assert base.num_params() - narrow.num_params() == 2 * 2 * 32 * 64


@pytest.mark.parametrize("cls", SHAPED)
@pytest.mark.parametrize(
    "bad, message",
    [
        ({"n_layer": 0}, "--n-layer must be >= 1"),
        ({"n_head": 0}, "--n-head must be >= 1"),
        ({"dropout": 1.0}, "--dropout must be in"),
        ({"bias": 1}, "--bias must be true or false"),
        ({"n_embd": 100, "n_head": 3}, "--n-embd \\(100\\) must be a multiple of --n-head"),
    ],
)
def test_bad_shape_values_raise_when_built(cls, bad, message):
    with pytest.raises(PhysllmError, match=message):
        cls(**bad)


def test_context_vector_has_no_heads_but_keeps_its_shape_rules():
    assert not issubclass(ContextVectorConfig, TransformerShape)
    assert issubclass(ContextVectorConfig, ModelConfig)
    with pytest.raises(PhysllmError, match="--n-embd must be >= 1"):
        ContextVectorConfig(n_embd=0)
    with pytest.raises(PhysllmError, match="--dropout must be in"):
        ContextVectorConfig(dropout=-0.1)


def test_old_config_json_loads_into_the_shared_shape():
    # a GPT checkpoint's config.json, written before the shape fields moved
    old = dict(vocab_size=65, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.1, bias=True)
    assert GPTConfig.from_dict(old).to_dict() == {**old, "mlp_hidden": 0, "attn_window": 0}


def test_a_gpt_next_to_a_model_without_heads_keeps_its_own_shape():
    cfg = make_config("context_vector", "cpu", vocab_size=65, out_dir="runs/cv")
    gpt = matched_baseline(cfg, match="n_embd")
    mc = gpt.model_config
    # context_vector's n_layer counts recurrent layers: GPT keeps its own depth and heads
    assert (mc.n_layer, mc.n_head) == (GPTConfig().n_layer, GPTConfig().n_head)
    assert (mc.block_size, mc.vocab_size, gpt.steps) == (64, 65, cfg.steps)
    target = count_params("context_vector", cfg.model_config.to_dict())
    assert abs(count_params("gpt", mc.to_dict()) / target - 1) < 0.1


def test_kv_cache_is_preallocated_and_filled_in_place():
    """Decoding writes each step's keys and values into buffers allocated once at the block
    length (no per-token concatenation), and matches the full forward pass token by token."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    idx = torch.randint(0, 50, (2, 12))
    full, _ = model(idx)
    logits, state = model.decode_step(idx[:, :4], None)
    buffers = [c.k.data_ptr() for c in state["caches"]]
    assert all(c.capacity == 16 and c.length == 4 for c in state["caches"])
    steps = [logits]
    for t in range(4, 12):
        logits, state = model.decode_step(idx[:, t : t + 1], state)
        steps.append(logits)
    assert [c.k.data_ptr() for c in state["caches"]] == buffers  # the same memory throughout
    assert all(c.length == 12 for c in state["caches"])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 3:], atol=1e-5, rtol=0)


def test_kv_cache_refuses_to_overflow():
    from physllm.nn import KVCache

    k = torch.zeros(1, 2, 3, 4)
    cache = KVCache(k, k, capacity=4)
    keys, _ = cache.extend(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4))
    assert keys.shape == (1, 2, 4, 4) and keys[0, 0, 3].eq(1).all()
    with pytest.raises(ValueError, match="holds 4 positions"):
        cache.extend(k[:, :, :1], k[:, :, :1])


# ----- sliding-window attention (attn_window) and its rolling cache


def band_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Logits of the full forward pass, with the band mask built independently of the model's
    own: query i sees keys i - W < j <= i."""
    W = model.config.attn_window
    T = idx.size(1)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    band = (j <= i) & (j > i - W)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def banded(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0):
        calls.append(1)
        return sdpa(q, k, v, attn_mask=band)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "scaled_dot_product_attention", banded)
        logits, _ = model(idx)
    assert len(calls) == model.config.n_layer
    return logits


def test_attn_window_at_least_the_length_is_full_causal_attention():
    x = torch.randint(0, 50, (2, 12))
    full, _ = tiny()(x)
    for W in (12, 16, 100):
        windowed, _ = tiny(attn_window=W)(x)  # the same weights (seeded)
        torch.testing.assert_close(windowed, full, atol=0, rtol=0)
    narrow, _ = tiny(attn_window=4)(x)
    assert not torch.allclose(narrow[:, 4:], full[:, 4:], atol=1e-4)  # the window is applied


@pytest.mark.parametrize("n_layer", [1, 2])
def test_attn_window_forgets_exactly_what_falls_out_of_reach(n_layer):
    """With W < T, position t depends on tokens t - n_layer (W - 1) .. t only (each layer
    reaches W - 1 back; one layer: exactly the window t - W + 1 .. t)."""
    W, t = 4, 13
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=50, block_size=16, n_layer=n_layer, n_head=2, n_embd=32, attn_window=W)
    ).eval()
    oldest = t - n_layer * (W - 1)  # the oldest token position t still sees
    x = torch.randint(0, 50, (1, 16))
    base, _ = model(x)
    older = x.clone()
    older[0, :oldest] = (older[0, :oldest] + 1 + torch.arange(oldest)) % 50
    changed, _ = model(older)
    torch.testing.assert_close(changed[0, t], base[0, t], atol=1e-6, rtol=0)
    assert not torch.allclose(changed[0, oldest - 1], base[0, oldest - 1], atol=1e-4)
    edge = x.clone()
    edge[0, oldest] = (edge[0, oldest] + 1) % 50  # the oldest token inside the reach
    assert not torch.allclose(model(edge)[0][0, t], base[0, t], atol=1e-4)


@pytest.mark.parametrize("prefill, chunk", [(2, 1), (7, 1), (3, 3)])
def test_rolling_cache_decoding_equals_the_band_masked_forward(prefill, chunk):
    """Token by token (or in chunks) through a ring of W = 4 positions, over 16 tokens,
    after a prefill shorter or longer than W: the band-masked full forward's logits."""
    model = tiny(attn_window=4)
    x = torch.randint(0, 50, (2, 16))
    full = band_forward(model, x)
    torch.testing.assert_close(model(x)[0], full, atol=1e-5, rtol=0)
    logits, state = model.decode_step(x[:, :prefill], None)
    assert all(type(c).__name__ == "RollingKVCache" for c in state["caches"])
    steps, ends = [logits], [prefill]
    for t in range(prefill, 16, chunk):
        logits, state = model.decode_step(x[:, t : t + chunk], state)
        steps.append(logits)
        ends.append(min(t + chunk, 16))
    torch.testing.assert_close(
        torch.stack(steps, 1), full[:, [e - 1 for e in ends]], atol=1e-5, rtol=0
    )


def test_rolling_cache_keeps_its_size_and_memory_for_a_long_stream():
    W = 4
    model = tiny(attn_window=W)
    x = torch.randint(0, 50, (1, 16))
    _, state = model.decode_step(x[:, :2], None)
    shapes = [(c.k.shape, c.v.shape) for c in state["caches"]]
    buffers = [(c.k.data_ptr(), c.v.data_ptr()) for c in state["caches"]]
    assert all(c.k.size(2) == W for c in state["caches"])
    for t in range(2, 2 + 3 * W):
        _, state = model.decode_step(x[:, t : t + 1], state)
    assert [(c.k.shape, c.v.shape) for c in state["caches"]] == shapes
    assert [(c.k.data_ptr(), c.v.data_ptr()) for c in state["caches"]] == buffers
    assert all(c.length == W for c in state["caches"])
    assert state["tokens"].size(1) == model.context_tokens() == 2 * (W - 1) + 1  # not the stream


def test_rolling_cache_past_the_block_crops_like_uncached_sampling():
    """Past block_size the windowed model re-encodes only the tokens that still reach the
    last position, and matches the forward pass on the last block_size tokens."""
    model = tiny(attn_window=3)
    x = torch.randint(0, 50, (1, 40))
    logits, state = model.decode_step(x[:, :20], None)  # a prefill longer than the block
    torch.testing.assert_close(logits, model(x[:, 4:20])[0][:, -1], atol=1e-5, rtol=0)
    for t in range(20, 40):
        logits, state = model.decode_step(x[:, t : t + 1], state)
        expected, _ = model(x[:, t - 15 : t + 1])
        torch.testing.assert_close(logits, expected[:, -1], atol=1e-5, rtol=0)
    assert state["tokens"].size(1) == 5 and all(c.k.size(2) == 3 for c in state["caches"])


def test_rolling_kv_cache_keeps_the_last_positions():
    from physllm.nn import RollingKVCache

    steps = torch.arange(6.0).view(1, 1, 6, 1)  # position p's key is p
    cache = RollingKVCache(steps, steps, capacity=4)
    assert cache.k.flatten().tolist() == [2.0, 3.0, 4.0, 5.0] and cache.length == 4
    keys, _ = cache.extend(torch.full((1, 1, 1, 1), 6.0), torch.full((1, 1, 1, 1), 6.0))
    assert keys.flatten().tolist() == [6.0, 3.0, 4.0, 5.0]  # the oldest overwritten in place
    chunk = torch.tensor([7.0, 8.0]).view(1, 1, 2, 1)
    keys, _ = cache.extend(chunk, chunk)
    assert keys.flatten().tolist() == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]  # time order for a chunk
    assert cache.k.flatten().tolist() == [5.0, 6.0, 7.0, 8.0]


def test_band_causal_mask():
    from physllm.nn import band_causal_mask

    assert band_causal_mask(5, 5) == (None, True) and band_causal_mask(5, 5, 8) == (None, True)
    assert band_causal_mask(1, 6, 6) == (None, False)  # one query seeing every key
    mask, causal = band_causal_mask(1, 6, 4)  # the newest of 6 keys, window 4
    assert not causal and mask.int().tolist() == [[0, 0, 1, 1, 1, 1]]
    mask, _ = band_causal_mask(3, 5, 2)  # 3 new queries after 2 held keys
    assert mask.int().tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]


def test_generation_bench_state_of_a_windowed_gpt_is_constant():
    """``bench --mode generate`` takes the window as a spec override; its cache (keys, values
    and the few tokens kept for re-encoding) is the same size at every length."""
    from physllm.bench import BenchConfig, measure_generation

    cfg = BenchConfig(
        n_layer=1, n_head=1, n_embd=16, vocab_size=32, block_size=600, timed_tokens=8, threads=1
    )
    kb = {}
    for spec in ("gpt", "gpt:attn_window=16"):
        for length in (100, 600):
            kb[spec, length] = measure_generation(
                spec, dataclasses.replace(cfg, lengths=str(length))
            )["state_kb"]
    per_position = 2 * 16 * 4 / 1024  # one layer's key and value, float32, width 16
    tokens = 8 / 1024  # int64 ids
    assert kb["gpt:attn_window=16", 100] == kb["gpt:attn_window=16", 600]
    assert kb["gpt:attn_window=16", 600] == 16 * per_position + 16 * tokens  # ring + reach
    assert kb["gpt", 600] == 600 * (per_position + tokens)  # the positions held, grown


def test_negative_attn_window_is_a_clear_error():
    with pytest.raises(PhysllmError, match="--attn-window must be >= 0"):
        GPTConfig(attn_window=-1)
    with pytest.raises(PhysllmError, match="--attn-window"):
        build_model("gpt", {"vocab_size": 10, "block_size": 8, "attn_window": -4})


def test_baseline_matched_on_training_flops():
    """by="flops": GPT's MLP width sized so its training FLOPs per token match QLLM's (which
    computes more per byte: its memory tokens), where a parameter match leaves it short."""
    from physllm.training.presets import _flops

    cfg = make_config(
        "qllm", "cpu", vocab_size=256, n_layer=2, n_embd=64, n_global=4, segment_len=16,
        block_size=32, out_dir="x",
    )  # fmt: skip
    target = _flops("qllm", cfg.model_config.to_dict())
    plain = matched_baseline(cfg, out_dir="x")
    twin = matched_baseline(cfg, match="mlp_hidden", by="flops", out_dir="x")
    assert _flops("gpt", plain.model_config.to_dict()) < 0.9 * target
    assert abs(_flops("gpt", twin.model_config.to_dict()) / target - 1) < 0.03
    assert twin.model_config.mlp_hidden > 4 * 64
    with pytest.raises(PhysllmError, match="match by"):
        matched_baseline(cfg, match="mlp_hidden", by="speed", out_dir="x")


@pytest.mark.parametrize("window", [0, 4])
def test_one_token_decode_steps_take_the_trimmed_path_and_equal_the_general_one(
    window, monkeypatch
):
    """A decoding step of one token goes through Block.step (one query, functional calls);
    its logits equal the general cached path's (the block's forward on a chunk of one)."""
    from physllm.gpt.model import Block

    model = tiny(attn_window=window).eval()
    x = torch.randint(0, 50, (2, 14))
    _, fast = model.decode_step(x[:, :6], None)
    _, slow = model.decode_step(x[:, :6], None)
    calls = []
    step = Block.step
    monkeypatch.setattr(Block, "step", lambda self, *a: calls.append(1) or step(self, *a))
    for t in range(6, 14):
        a, fast = model.decode_step(x[:, t : t + 1], fast)
        model.train()  # the general path: training mode skips the one-token one (dropout 0)
        b, slow = model.decode_step(x[:, t : t + 1], slow)
        model.eval()
        torch.testing.assert_close(a, b, atol=2e-6, rtol=0)
    assert len(calls) == 8 * model.config.n_layer
