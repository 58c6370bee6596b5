"""The Hamiltonian model: both variants, both force modes, training, decoding, energies."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from physllm.hamiltonian.model import HamiltonianConfig, HamiltonianLM, ema_scan
from physllm.models import MODELS, build_model
from physllm.sampling import generate
from tests.conftest import TINY_GPT

KINDS = {
    "symplectic-direct": dict(variant="symplectic", mode="direct"),
    "symplectic-conservative": dict(variant="symplectic", mode="conservative"),
    "seed": dict(variant="seed"),
}


def tiny(**kw) -> HamiltonianLM:
    torch.manual_seed(0)
    cfg = HamiltonianConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw)
    return HamiltonianLM(cfg)


def test_registered():
    assert MODELS["hamiltonian"] == (HamiltonianConfig, HamiltonianLM)
    with pytest.raises(ValueError):
        HamiltonianConfig(variant="nope")
    with pytest.raises(ValueError):
        HamiltonianConfig(mode="nope")


@pytest.mark.parametrize("kind", KINDS)
def test_forward_backward_and_causality(kind):
    model = tiny(**KINDS[kind])
    idx = torch.randint(0, 30, (3, 12))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 12, 30)
    assert math.isfinite(loss.item())
    loss.backward()
    # every parameter, the seed's gravity head included, gets a gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # changing token 8 must not change the logits before it
    other = idx.clone()
    other[:, 8] = (other[:, 8] + 1) % 30
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(other)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@pytest.mark.parametrize("kind", KINDS)
def test_decode_step_matches_forward_and_generates(kind):
    model = tiny(**KINDS[kind]).eval()
    idx = torch.randint(0, 30, (2, 10))
    logits, state = model.decode_step(idx[:, :6], None)
    for t in range(6, 10):
        logits, state = model.decode_step(idx[:, t : t + 1], state)
    with torch.no_grad():
        full, _ = model(idx)
    assert torch.allclose(logits, full[:, -1], atol=1e-5)
    out = generate(model, idx[:, :4], 20, temperature=1.0)  # past block_size: a sliding window
    assert out.shape == (2, 24)


def uncached_logits(model, x, t, steer=None):
    """What decoding without a cache gives after x[:, :t + 1]: the last block, re-encoded."""
    with torch.no_grad():
        return model.run(x[:, max(0, t + 1 - model.config.block_size) : t + 1], steer)["logits"][
            :, -1
        ]


KINDS_CACHED = {
    **KINDS,
    "symplectic-substeps": dict(substeps=2),
    "symplectic-position": dict(integrator="position", substeps=2),
    "seed-eos": dict(variant="seed", eos_id=3),
}


@pytest.mark.parametrize("kind", KINDS_CACHED)
@pytest.mark.parametrize("prefill, chunk", [(1, 1), (5, 1), (4, 3)])
@pytest.mark.parametrize("steered", [False, True])
def test_cached_decoding_equals_the_forward_pass_at_every_position(kind, prefill, chunk, steered):
    """Token by token or in chunks, up to the block and 14 tokens past it (a re-encoded last
    block each step there), steered or not: the full pass's logits, to 1e-5."""
    model = tiny(decay_kernel=4, **KINDS_CACHED[kind]).eval()
    x = torch.randint(0, 30, (2, 30))
    x[0, 3] = 3  # an end-of-text token where the seed halves the momentum (seed-eos)
    steer = model.steer_vector([1, 2], 0.7) if steered else None
    logits, state = model.decode_step(x[:, :prefill], {"steer": steer} if steered else None)
    torch.testing.assert_close(
        logits, uncached_logits(model, x, prefill - 1, steer), atol=1e-5, rtol=0
    )
    for t in range(prefill, 30, chunk):
        logits, state = model.decode_step(x[:, t : t + chunk], state)
        end = min(t + chunk, 30) - 1
        torch.testing.assert_close(logits, uncached_logits(model, x, end, steer), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_cache_is_preallocated_and_a_step_feeds_one_token(kind, monkeypatch):
    """The keys and values live in buffers allocated once (no per-token copy), and a step
    after the prefill runs the layers on the new token alone."""
    model = tiny(**KINDS[kind]).eval()
    x = torch.randint(0, 30, (1, 12))
    _, state = model.decode_step(x[:, :3], None)
    buffers = [(c.kv.k.data_ptr(), c.kv.v.data_ptr()) for c in state["cache"]["layers"]]
    assert all(c.kv.capacity == model.config.block_size for c in state["cache"]["layers"])
    widths = []
    run = model.run
    monkeypatch.setattr(
        model, "run", lambda idx, *a, **k: widths.append(idx.size(1)) or run(idx, *a, **k)
    )
    for t in range(3, 12):
        _, state = model.decode_step(x[:, t : t + 1], state)
    assert widths == [1] * 9
    assert [(c.kv.k.data_ptr(), c.kv.v.data_ptr()) for c in state["cache"]["layers"]] == buffers
    assert all(c.kv.length == 12 for c in state["cache"]["layers"])


def test_cached_sampling_and_steering_give_the_uncached_tokens():
    """iter_sample (sampling, steering, logit bias) decodes through the cache: the same
    tokens, step for step, as recomputing the window every step under the same generator."""
    from physllm.hamiltonian.steering import DecodeConfig, iter_sample
    from physllm.sampling import SamplingConfig, pick_token

    model = tiny().eval()
    prompt = torch.randint(0, 30, (3, 4))
    steer = model.steer_vector([5], 1.0)
    bias = torch.zeros(30)
    bias[7] = 2.0
    cfg = DecodeConfig()
    got = torch.cat(
        list(iter_sample(model, prompt, 24, steer, cfg, torch.Generator().manual_seed(0), bias)), 1
    )
    knobs = SamplingConfig(
        temperature=cfg.temperature, top_k=cfg.top_k, repetition_penalty=cfg.repetition_penalty
    )
    gen, idx, generated = torch.Generator().manual_seed(0), prompt, prompt[:, :0]
    for _ in range(24):
        logits = uncached_logits(model, idx, idx.size(1) - 1, steer) + bias
        token = pick_token(logits, generated, knobs, gen)
        generated, idx = torch.cat([generated, token], 1), torch.cat([idx, token], 1)
    assert torch.equal(got, generated)


def test_conservative_force_is_gradient_of_potential():
    model = tiny(mode="conservative").double()
    layer = model.layers[1]
    q = torch.randn(2, 5, 16, dtype=torch.float64)
    c = layer.context(q).detach()
    qr = q.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(layer.potential(qr, c).sum(), qr)
    assert torch.allclose(layer.force(q, c), -grad)


def test_energy_along_layers_is_conserved_to_second_order():
    """Each layer conserves its own H_l = T + V_l up to the leapfrog error: one step's
    error is O(dt^3), so halving dt shrinks it by about 8 (at least 4 here)."""
    errors = []
    for dt in (0.2, 0.1):
        model = tiny(mode="conservative", dt=dt, learn_dt=False).double()
        with torch.no_grad():
            for layer in model.layers:
                layer.v.normal_(std=1.0)
            for emb in (model.wte, model.wpe, model.wte_p):
                emb.weight.normal_(std=1.0)
        e = model.layer_energies(torch.randint(0, 30, (2, 10)))
        assert e["H_in"].shape == (2, 2, 10)
        errors.append(float(((e["H_out"] - e["H_in"]).abs() / e["H_in"].abs()).max()))
    assert errors[0] < 1e-3
    assert errors[0] / errors[1] > 4.0
    with pytest.raises(ValueError):
        tiny().layer_energies(torch.zeros(1, 3, dtype=torch.long))


def test_seed_momentum_is_ema_halved_at_eos():
    v = torch.randn(1, 6, 4)
    m = ema_scan(v, 0.9, torch.zeros(1, 6, 1))
    expected = torch.zeros(4)
    for t in range(6):
        expected = 0.9 * expected + 0.1 * v[0, t]
    assert torch.allclose(m[0, -1], expected, atol=1e-6)
    reset = torch.zeros(1, 6, 1)
    reset[0, 3] = 0.5
    halved = ema_scan(v, 0.9, reset)
    assert torch.allclose(halved[0, 3], 0.5 * m[0, 3], atol=1e-6)
    # the model: an end-of-text token changes the embedding from there on
    model = tiny(variant="seed", eos_id=7)
    idx = torch.tensor([[1, 2, 7, 3, 4]])
    plain = tiny(variant="seed", eos_id=-1)
    plain.load_state_dict(model.state_dict())
    a, b = model.seed_embedding(idx), plain.seed_embedding(idx)
    assert torch.allclose(a[:, :2], b[:, :2]) and not torch.allclose(a[:, 2:], b[:, 2:])


@pytest.mark.parametrize("variant", ["symplectic", "seed"])
def test_steer_vector_reads_the_word_as_each_variant_does(variant):
    """Symplectic: every token of the word counts. Seed, as its get_concept_vector:
    strength * E[first token], the rest of the word ignored."""
    model = tiny(variant=variant)
    v1 = model.steer_vector([3, 4], 1.0)
    with torch.no_grad():
        model.wte.weight[4] += 1.0
    v2 = model.steer_vector([3, 4], 1.0)
    assert torch.allclose(model.steer_vector([3, 4], -0.5), -0.5 * v2)
    if variant == "seed":
        assert torch.equal(v1, v2) and torch.equal(v2, model.wte.weight[3].detach())
    else:
        assert not torch.allclose(v1, v2)  # the second token matters
    # steering changes the logits, and strength 0 does nothing
    idx = torch.randint(0, 30, (1, 8))
    with torch.no_grad():
        base = model.run(idx)["logits"]
        assert torch.allclose(model.run(idx, model.steer_vector([3], 0.0))["logits"], base)
        assert not torch.allclose(model.run(idx, model.steer_vector([3], 1.0))["logits"], base)


def seed_reference_logits(model: HamiltonianLM, idx: torch.Tensor, eos_id: int) -> torch.Tensor:
    """The seed's forward (sonnguyenasu/Hamiltonian-LLM main.py at 5104bb8:
    EMAMomentumEmbedding, AdaptiveGravityAttention, HamiltonianBlock, HamiltonianNano_v8),
    transcribed loop for loop, reading our model's weights."""
    cfg = model.config
    B, T = idx.shape
    C, nh = cfg.n_embd, cfg.n_head
    hd = C // nh
    # EMAMomentumEmbedding: velocity = roll difference, first step zeroed; EMA with reset
    q, p_raw = model.wte.weight[idx], model.wte_p.weight[idx]
    p_prev = torch.roll(p_raw, shifts=1, dims=1)
    mask = torch.ones_like(p_raw)
    mask[:, 0, :] = 0
    velocity = (p_raw - p_prev) * mask
    reset = ((idx == eos_id).float() * 0.5).unsqueeze(-1)
    m, momentum = torch.zeros_like(velocity[:, 0]), []
    for t in range(T):
        m = (cfg.ema_beta * m + (1 - cfg.ema_beta) * velocity[:, t]) * (1 - reset[:, t])
        momentum.append(m)
    x = q + torch.stack(momentum, 1)
    # RotaryEmbedding(head_dim)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.einsum("i,j->ij", torch.arange(T).float(), inv_freq)
    rope = torch.cat((freqs, freqs), dim=-1)[None, None]

    def rotate(t: torch.Tensor) -> torch.Tensor:
        t1, t2 = t.chunk(2, dim=-1)
        return t * rope.cos() + torch.cat((-t2, t1), dim=-1) * rope.sin()

    for block in model.layers:
        a = block.attn
        h = F.layer_norm(x, (C,), block.ln1.weight, block.ln1.bias)
        qq, kk, vv = (h @ a.c_attn.weight.T).split(C, dim=2)
        qq, kk, vv = (t.view(B, T, nh, hd).transpose(1, 2) for t in (qq, kk, vv))
        qq, kk = rotate(qq), rotate(kk)
        att = (qq @ kk.transpose(-2, -1)) * hd**-0.5
        g = F.softplus(h @ a.gravity.weight.T + a.gravity.bias).transpose(1, 2).unsqueeze(-1)
        ind = torch.arange(T)
        dist = torch.clamp((ind.view(1, 1, T, 1) - ind.view(1, 1, 1, T)).abs(), max=64)
        att = att - g * dist * 0.1
        att = att.masked_fill(~torch.tril(torch.ones(T, T)).bool(), float("-inf"))
        y = (F.softmax(att, dim=-1) @ vv).transpose(1, 2).contiguous().view(B, T, C)
        reflex = F.silu(
            F.conv1d(x.transpose(1, 2), block.reflex.weight, block.reflex.bias, padding=2, groups=C)
        )[:, :, :T].transpose(1, 2)
        x = x + y @ a.c_proj.weight.T + reflex
        h = F.layer_norm(x, (C,), block.ln2.weight, block.ln2.bias)
        x = x + F.gelu(h @ block.c_fc.weight.T) @ block.c_proj.weight.T
    x = F.layer_norm(x, (C,), model.ln_f.weight, model.ln_f.bias)
    return x @ model.wte.weight.T  # lm_head tied to q_emb


def test_seed_variant_is_the_seeds_code():
    """Our seed variant's logits equal the seed's forward on fixed inputs and weights, and
    its gravity head starts as the seed's (weights N(0, 0.01), bias 0.5)."""
    model = tiny(variant="seed", eos_id=7).eval()
    idx = torch.randint(0, 30, (2, 16), generator=torch.Generator().manual_seed(1))
    idx[0, 5] = 7  # an end-of-text token: momentum halved there
    with torch.no_grad():
        ours = model(idx)[0]
        reference = seed_reference_logits(model, idx, eos_id=7)
    assert (ours - reference).abs().max() < 1e-6
    for block in model.layers:
        assert torch.equal(block.attn.gravity.bias, torch.full_like(block.attn.gravity.bias, 0.5))
        assert 0.005 < float(block.attn.gravity.weight.detach().std()) < 0.02


@pytest.mark.parametrize("kind", ["symplectic-direct", "seed"])
def test_trains_through_physllm_train(kind, small_text_file, tmp_path):
    from physllm.training import make_config, train
    from physllm.training.checkpoint import load_checkpoint

    cfg = make_config(
        "hamiltonian",
        corpus=str(small_text_file),
        steps=30,
        eval_interval=30,
        lr=3e-3,
        out_dir=str(tmp_path),
        **TINY_GPT,
        **KINDS[kind],
    )
    result = train(cfg)
    first, last = result.history[0], result.metrics
    assert last["val_loss"] < first["train_loss"] - 0.3
    model, _, meta = load_checkpoint(tmp_path)
    assert meta["config"]["variant"] == KINDS[kind]["variant"]
    idx = torch.randint(0, model.config.vocab_size, (1, 8))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], result.model.eval()(idx)[0], atol=1e-6)


def test_gpu_preset_is_the_seeds_configuration():
    from physllm.training import make_config

    cfg = make_config("hamiltonian", "gpu")
    m = cfg.model_config
    assert (m.n_embd, m.n_layer, m.n_head, m.block_size) == (640, 12, 10, 1024)
    assert (cfg.batch_size, cfg.grad_accum, cfg.steps, cfg.lr) == (8, 16, 10_000, 6e-4)
    assert (cfg.corpus, cfg.tokenizer) == ("fineweb-edu", "tiktoken:gpt2")
    m.vocab_size = 50257
    with torch.device("meta"):
        for variant in ("symplectic", "seed"):
            m.variant = variant
            n = build_model("hamiltonian", m).num_params()
            assert 115e6 < n < 130e6, (variant, n)  # the seed's "124M"


def test_notebook_runs_with_20_steps(run_notebook):
    import json

    from tests.conftest import shakespeare_available

    _, out_dir = run_notebook(
        "01_hamiltonian", steps=20, steer_samples=50, steer_tokens=8, bench_steps=0, threads=1
    )
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["model"] == "hamiltonian" and metrics["steps"] == 20
    assert set(metrics["runs"]) == {"symplectic", "symplectic-conservative", "seed", "gpt"}
    assert all(run["steps"] == 20 for run in metrics["runs"].values())
    assert metrics["corpus"] == ("shakespeare" if shakespeare_available() else "pydocs")
    rows = metrics["steering"]["symplectic"]
    assert {r["strength"] for r in rows} == {-1.0, -0.5, 0.0, 0.5, 1.0}
    assert all(r["n"] == 50 for r in rows)
    assert 1.8 <= metrics["oscillator_slopes"]["leapfrog"] <= 2.2
    for name in ("layer_energies", "model_drift", "phase_space", "decay", "steering_symplectic"):
        assert (out_dir / f"{name}.png").exists(), name


def test_bench_counts_the_positions_the_cache_holds():
    """The generation bench's state size is the keys and values of the positions held (plus
    the convolution's tail), so it grows with the context: not 0, not the preallocation."""
    from physllm.bench import _tensor_kb

    model = tiny(decay_kernel=4).eval()
    C, L = model.config.n_embd, model.config.n_layer
    _, short = model.decode_step(torch.randint(0, 30, (1, 4)), None)
    _, long = model.decode_step(torch.randint(0, 30, (1, 12)), None)
    tail_kb = L * 3 * C * 4 / 1024  # K - 1 = 3 held inputs per layer, float32
    assert _tensor_kb(short["cache"]) == pytest.approx(L * 2 * 4 * C * 4 / 1024 + tail_kb)
    assert _tensor_kb(long["cache"]) == pytest.approx(L * 2 * 12 * C * 4 / 1024 + tail_kb)


def uncached_least_action(model, idx, n, cfg):
    """The least-action decoder as it was before the cache: every roll-out recomputed."""
    from physllm.hamiltonian.steering import _seen, forward_last

    B, K, L = idx.size(0), cfg.candidates, cfg.lookahead
    for _ in range(n):
        top_logp, cand = forward_last(model, idx)[0].log_softmax(-1).topk(K, dim=-1)
        action = -top_logp + cfg.repeat_cost_action * _seen(
            idx[:, -cfg.repeat_window_action :], cand
        )
        sim = torch.cat([idx.repeat_interleave(K, 0), cand.reshape(-1, 1)], dim=1)
        for _ in range(L):
            best_logp, best = forward_last(model, sim)[0].log_softmax(-1).max(-1)
            seen = _seen(sim[:, -cfg.repeat_window_action :], best[:, None])[:, 0]
            action = action + (-best_logp + cfg.repeat_cost_action * seen).view(B, K)
            sim = torch.cat([sim, best[:, None]], dim=1)
        idx = torch.cat([idx, cand.gather(1, (action / (1 + L)).argmin(-1, keepdim=True))], dim=1)
    return idx


def uncached_flow(model, idx, n, cfg):
    from physllm.hamiltonian.steering import _seen, forward_last

    B, K = idx.size(0), cfg.candidates
    for _ in range(n):
        logits, hidden = forward_last(model, idx)
        top_logp, cand = logits.log_softmax(-1).topk(K, dim=-1)
        potential = -top_logp + cfg.repeat_cost_flow * _seen(
            idx[:, -cfg.repeat_window_flow :], cand
        )
        sim = torch.cat([idx.repeat_interleave(K, 0), cand.reshape(-1, 1)], dim=1)
        turn = 1.0 - F.cosine_similarity(
            hidden.repeat_interleave(K, 0), forward_last(model, sim)[1], dim=-1
        )
        total = potential + cfg.momentum_weight * turn.view(B, K)
        idx = torch.cat([idx, cand.gather(1, total.argmin(-1, keepdim=True))], dim=1)
    return idx


@pytest.mark.parametrize("kind", ["symplectic-direct", "seed"])
@pytest.mark.parametrize("mode", ["least-action", "flow"])
def test_cached_least_action_and_flow_pick_the_uncached_tokens(kind, mode):
    """The seed's modes 3 and 4 score candidates by rolling each out from a forked copy of
    the cache: the same tokens as recomputing every roll-out, past the block too."""
    from physllm.hamiltonian.steering import DecodeConfig, decode

    model = tiny(**KINDS[kind]).eval()
    prompt = torch.randint(0, 30, (2, 5))
    cfg = DecodeConfig(candidates=3, lookahead=2)
    got = decode(model, prompt, 16, mode=mode, cfg=cfg)  # 5 + 16 > block 16
    reference = {"least-action": uncached_least_action, "flow": uncached_flow}[mode]
    assert torch.equal(got, reference(model, prompt, 16, cfg)[:, 5:])


def test_fork_state_copies_rows_and_leaves_the_original():
    model = tiny().eval()
    x = torch.randint(0, 30, (2, 6))
    logits, state = model.decode_step(x, None)
    forked = model.fork_state(state, 3)
    nxt = torch.randint(0, 30, (2, 1))
    a, _ = model.decode_step(nxt.repeat_interleave(3, 0), forked)
    b, state = model.decode_step(nxt, state)  # the original still at position 6
    torch.testing.assert_close(a, b.repeat_interleave(3, 0), atol=1e-6, rtol=0)
    assert state["pos"] == 7 and forked["cache"]["layers"][0].kv.k.size(0) == 6


@pytest.mark.parametrize("mode", ["direct", "conservative"])
@pytest.mark.parametrize("substeps, mass, bias", [(1, 1.0, False), (3, 0.5, True)])
@pytest.mark.parametrize("steered", [False, True])
@pytest.mark.parametrize("integrator", ["velocity", "position"])
def test_single_token_steps_equal_the_general_cached_path(
    mode, substeps, mass, bias, steered, integrator
):
    """A one-token decoding step runs SymplecticLayer.step (the attention's single-query step,
    the local kernel and dt's factors computed with the state); it gives the layers' general
    forward on the same cache, to float rounding."""
    from physllm.hamiltonian.model import SymplecticLayer

    kw = dict(mode=mode, substeps=substeps, mass=mass, bias=bias, decay_kernel=4)
    kw["integrator"] = integrator
    model = tiny(**kw).eval()
    with torch.no_grad():  # away from the init: per-channel decays, unequal step sizes
        for i, layer in enumerate(model.layers):
            layer.dt.fill_(0.6 + 0.3 * i)
            layer.local.raw_decay.normal_(0.0, 1.0)
            layer.local.gain.normal_(0.0, 0.5)
        model.tau.fill_(0.8)
    x = torch.randint(0, 30, (2, 14))
    steer = model.steer_vector([1, 2], 0.7) if steered else None
    _, state = model.decode_step(x[:, :3], {"steer": steer})
    _, general = model.decode_step(x[:, :3], {"steer": steer})
    del general["cache"]["derived"]  # without the constants, run takes the general path
    calls = []
    step = SymplecticLayer.step
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SymplecticLayer, "step", lambda *a: calls.append(1) or step(*a))
        for t in range(3, 14):
            logits, state = model.decode_step(x[:, t : t + 1], state)
            expected, general = model.decode_step(x[:, t : t + 1], general)
            torch.testing.assert_close(logits, expected, atol=2e-6, rtol=0)
    assert len(calls) == 11 * len(model.layers)  # only the fast state's steps took it


def test_a_new_decoding_state_reads_changed_parameters():
    """The steps' constants (the local kernel's weights, dt / 2 and dt / m) are computed when
    a state is made: after the parameters change, a new state decodes the new model."""
    model = tiny(decay_kernel=4).eval()
    x = torch.randint(0, 30, (2, 12))
    logits, state = model.decode_step(x[:, :4], None)
    for t in range(4, 8):
        logits, state = model.decode_step(x[:, t : t + 1], state)
    with torch.no_grad():  # a training update, in place
        for layer in model.layers:
            layer.dt.mul_(0.5)
            layer.local.raw_decay.add_(1.0)
            layer.local.gain.mul_(3.0)
    logits, state = model.decode_step(x[:, :4], None)
    for t in range(4, 12):
        logits, state = model.decode_step(x[:, t : t + 1], state)
        torch.testing.assert_close(logits, uncached_logits(model, x, t), atol=1e-5, rtol=0)
