"""NGT: the kernels' algebra, their direction, the radius gradient, repulsion
under accumulation, generation, checkpoints, the benchmark and the notebook."""

from __future__ import annotations

import json

import pytest
import torch

from physllm.arch import LanguageModel
from physllm.errors import PhysllmError
from physllm.gpt.model import GPT, GPTConfig
from physllm.models import build_model
from physllm.ngt.model import (
    CUTOFFS,
    KERNELS,
    MASS_MODES,
    NGT,
    GravityAttention,
    NGTConfig,
    augmented_qk,
    gaussian_scores,
    pairwise_d2,
    repulsion_energy,
)

TINY = dict(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=32, n_coord=8, head_coord=4)


def tiny(**overrides) -> NGT:
    torch.manual_seed(0)
    return NGT(NGTConfig(**{**TINY, **overrides}))


def line_coords(distances: list[float], c: int = 4) -> torch.Tensor:
    """u (1, 1, T, c): keys on a line at the given distances from the last position (the query)."""
    u = torch.zeros(1, 1, len(distances) + 1, c, dtype=torch.float64)
    u[0, 0, :-1, 0] = torch.tensor(distances, dtype=torch.float64)
    return u


def last_row_weights(kernel: str, distances: list[float], cutoff: str = "none") -> torch.Tensor:
    attn = GravityAttention(NGTConfig(**{**TINY, "n_head": 1, "kernel": kernel, "cutoff": cutoff}))
    attn = attn.double()
    u = line_coords(distances)
    T = u.size(2)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mass = torch.ones(1, T, dtype=torch.float64)
    return attn.attention_weights(u, mass, causal)[0, 0, -1, :-1]  # weight on each key


# --------------------------------------------------------------------------- the gaussian kernel


def test_augmented_dot_product_is_the_gaussian_score_up_to_a_row_constant():
    torch.manual_seed(0)
    u = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    gamma = torch.rand(3, dtype=torch.float64) + 0.1
    log_m = torch.randn(2, 7, dtype=torch.float64)
    q, k = augmented_qk(u, gamma, log_m, dim=8)
    dot = q @ k.transpose(-1, -2)
    exact = gaussian_scores(pairwise_d2(u), gamma, log_m)
    diff = dot - exact  # must be +gamma |u_i|^2: the same for every j
    assert torch.allclose(diff, diff[..., :1].expand_as(diff), atol=1e-10)
    assert torch.allclose(diff[..., 0], gamma.view(1, -1, 1) * u.pow(2).sum(-1), atol=1e-10)


@pytest.mark.parametrize("cutoff", ["none", "smooth", "hard"])
@pytest.mark.parametrize("mass_in", ["logits", "values"])
def test_gaussian_through_sdpa_equals_explicit_formula(cutoff, mass_in):
    model = tiny(cutoff=cutoff, mass_in=mass_in, radius_init=0.5).double().eval()
    idx = torch.randint(0, 17, (3, 16))
    with torch.no_grad():
        # coordinates large enough that gamma d2 and the cutoff matter
        model.blocks[0].attn.coord_proj.weight.normal_(0, 0.5)
        model.mass_emb.weight.normal_(0, 1)
        fast, _ = model(idx)  # SDPA with augmented q', k'
        slow = model.forward_with_trace(idx)["logits"]  # softmax(-gamma d2 + log m_j) written out
    assert (fast - slow).abs().max().item() < 1e-5


def test_gaussian_weight_falls_with_distance_and_seed_weight_rises():
    distances = [4.0, 3.0, 2.0, 1.0, 0.5]  # key j sits at distance distances[j] from the query
    gaussian = last_row_weights("gaussian", distances)
    seed = last_row_weights("seed", distances)
    # gaussian: nearer keys (later in the list) get more weight
    assert bool((gaussian.diff() > 0).all()), gaussian
    # seed: -gamma m m / (d2 + eps) is most negative near: the far key gets the most weight
    assert bool((seed.diff() < 0).all()), seed
    assert seed.argmax().item() == 0 and gaussian.argmax().item() == len(distances) - 1


def test_seed_soft_cutoff_favours_pairs_outside_the_radius():
    # R = softplus(4) = 4.02: the key at distance 6 is outside, the others inside
    weights = last_row_weights("seed", [6.0, 3.0, 1.0], cutoff="soft")
    # relu(1 - d2/R^2) = 0 outside: that score is lifted to 0, the largest possible,
    # so the pair a cutoff should remove gets the most weight of all
    assert weights.argmax().item() == 0
    assert weights[0] > 1.0 / len(weights)


def test_seed_hard_cutoff_masks_pairs_beyond_the_radius():
    weights = last_row_weights("seed", [6.0, 3.0, 1.0], cutoff="hard")
    assert weights[0].item() == 0.0 and weights[1:].sum() > 0.99


# --------------------------------------------------------------------------- radius and bias gradients


def _grads(model: NGT) -> None:
    idx = torch.randint(0, 17, (2, 16))
    with torch.no_grad():
        for block in model.blocks:  # spread the tokens so some pairs straddle the radius
            block.attn.coord_proj.weight.normal_(0, 0.5)
    _, loss = model(idx, idx)
    loss.backward()


@pytest.mark.parametrize("kernel", ["gaussian", "seed"])
def test_smooth_cutoff_gives_the_radius_a_gradient(kernel):
    model = tiny(kernel=kernel, cutoff="smooth", radius_init=1.0)
    _grads(model)
    for block in model.blocks:
        grad = block.attn.radius_raw.grad
        assert grad is not None and grad.abs().item() > 0


def test_seed_hard_cutoff_gives_the_radius_no_gradient():
    model = tiny(kernel="seed")  # the seed's default: hard cutoff
    assert model.config.resolved_cutoff == "hard"
    _grads(model)
    for block in model.blocks:
        grad = block.attn.radius_raw.grad
        assert grad is None or grad.abs().item() == 0
        # the seed's b is a per-row constant: softmax ignores it
        b = block.attn.bias.grad
        assert b is None or b.abs().max().item() < 1e-7


# --------------------------------------------------------------------------- repulsion


def test_repulsion_is_a_mean_the_same_with_and_without_accumulation():
    model = tiny(repulsion=0.5, repulsion_samples=8)
    torch.manual_seed(1)
    idx = torch.randint(0, 17, (8, 16))
    params = dict(model.named_parameters())

    model.zero_grad()
    _, loss = model(idx, idx)
    loss.backward()
    rep_full = model.last_aux["repulsion"]
    full = {k: p.grad.clone() for k, p in params.items() if p.grad is not None}

    model.zero_grad()
    reps = []
    for half in idx.chunk(2):  # two micro-batches, each loss / grad_accum as the trainer does
        _, loss = model(half, half)
        (loss / 2).backward()
        reps.append(model.last_aux["repulsion"])
    accum = {k: p.grad.clone() for k, p in params.items() if p.grad is not None}

    assert rep_full > 0
    assert abs(rep_full - sum(reps) / 2) < 1e-5 * rep_full
    assert full.keys() == accum.keys()
    for k in full:
        assert torch.allclose(full[k], accum[k], atol=1e-6, rtol=1e-4), k
    # and the repulsion really reaches the coordinates attention reads
    model.zero_grad()
    trace_u = model.blocks[0].attn.coords(model.coord_emb.weight[None])
    repulsion_energy(trace_u, None, 8, 1e-2).backward()
    assert model.blocks[0].attn.coord_proj.weight.grad.abs().sum() > 0


def test_repulsion_is_training_only_in_the_loss():
    model = tiny(repulsion=10.0)
    idx = torch.randint(0, 17, (2, 16))
    model.eval()
    _, loss = model(idx, idx)
    assert abs(loss.item() - model.last_aux["ce"]) < 1e-6  # validation loss is cross-entropy
    model.train()
    _, loss = model(idx, idx)
    expected = model.last_aux["ce"] + 10.0 * model.last_aux["repulsion"]
    assert abs(loss.item() - expected) < 1e-4 * expected


# --------------------------------------------------------------------------- the model


def test_parameters_match_the_vanilla_gpt():
    for shape in (
        dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128),
        dict(vocab_size=256, block_size=256, n_layer=6, n_head=8, n_embd=256),
    ):
        gpt = GPT(GPTConfig(**shape)).num_params()
        ngt = NGT(NGTConfig(**shape)).num_params()
        assert abs(ngt - gpt) / gpt < 0.005, (ngt, gpt)


def test_gpu_preset_is_the_seeds_wikitext103_run():
    from dataclasses import replace

    from physllm.training import make_config

    cfg = make_config("ngt", "gpu")
    m = cfg.model_config
    assert (cfg.corpus, cfg.tokenizer) == ("wikitext103", "bpe:8192")
    assert (m.n_embd, m.n_coord, m.n_layer, m.n_head, m.mlp_hidden, m.block_size) == (
        512,
        64,
        8,
        8,
        2048,
        512,
    )
    assert (cfg.batch_size, cfg.grad_accum, cfg.lr, cfg.warmup_steps, cfg.steps) == (
        16,
        2,
        3e-4,
        2000,
        15_000,
    )
    assert m.dropout == 0.1 and m.kernel == "gaussian"
    with torch.device("meta"):
        model = NGT(replace(m, vocab_size=8192))
    # q' and k' are padded to the value head size: one head size for the fused kernels
    assert model.blocks[0].attn.qk_dim == 512 // 8


def test_trace_shapes_and_weights():
    model = tiny().eval()
    idx = torch.randint(0, 17, (2, 10))
    tr = model.forward_with_trace(idx)
    assert tr["z"].shape == (3, 2, 10, 8)
    assert tr["u"].shape == (2, 2, 2, 10, 4)
    assert tr["attn"].shape == (2, 2, 2, 10, 10)
    assert tr["mass"].shape == (2, 10) and bool((tr["mass"] > 0).all())
    assert torch.allclose(tr["attn"].sum(-1), torch.ones(2, 2, 2, 10), atol=1e-5)
    assert bool((tr["attn"].triu(1) == 0).all())  # causal
    logits, _ = model(idx)
    assert torch.allclose(logits, tr["logits"], atol=1e-4)


def test_causal_future_tokens_do_not_change_the_past():
    model = tiny().eval()
    idx = torch.randint(0, 17, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 17
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)


def test_bad_options_are_clear_errors():
    with pytest.raises(PhysllmError, match="kernel"):
        build_model("ngt", {**TINY, "kernel": "newton"})
    with pytest.raises(PhysllmError, match="soft"):
        NGTConfig(**TINY, cutoff="soft")


def test_generation_and_checkpoint_round_trip(tmp_path):
    from physllm.sampling import generate
    from physllm.tokenization import CharTokenizer
    from physllm.training.checkpoint import load_checkpoint, save_checkpoint

    tok = CharTokenizer.fit("abcdefghijklmnopq")
    model = tiny(kernel="gaussian", repulsion=0.1).eval()
    prompt = torch.tensor([tok.encode("abc")])
    out = generate(model, prompt, 20, temperature=0)  # longer than block_size: the window slides
    assert out.shape == (1, 23)
    save_checkpoint(tmp_path / "ckpt", model, tok)
    loaded, tok2, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta["model"] == "ngt" and meta["config"]["repulsion"] == 0.1
    idx = torch.randint(0, 17, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], loaded(idx)[0])
    assert torch.equal(generate(loaded, prompt, 20, temperature=0), out)


def test_bench_takes_ngt_specs():
    from physllm.bench import BenchConfig, measure_training, model_config_for

    cfg = BenchConfig(
        models=["ngt:kernel=seed"],
        batch_size=2,
        block_size=16,
        n_layer=1,
        n_embd=32,
        n_head=2,
        vocab_size=17,
        steps=1,
        warmup=1,
    )
    name, mcfg = model_config_for("ngt:kernel=seed+mass_in=values", cfg)
    assert name == "ngt" and mcfg.kernel == "seed" and mcfg.mass_in == "values"
    assert mcfg.block_size == 16 and mcfg.n_embd == 32
    row = measure_training("ngt:kernel=seed", cfg)
    assert row["tokens_per_sec"] > 0


# --------------------------------------------------------------------------- the decoding cache

# every variant the config allows: kernel x cutoff x mass_in ("auto" is one of the others;
# the gaussian has no soft cutoff)
CACHE_VARIANTS = [
    (kernel, cutoff, mass_in)
    for kernel in KERNELS
    for cutoff in CUTOFFS
    if cutoff != "auto" and not (kernel == "gaussian" and cutoff == "soft")
    for mass_in in MASS_MODES
]


def spread(model: NGT) -> NGT:
    """Eval mode, with coordinates spread about the radius (so the cutoffs cut some pairs),
    a seed bias b and a spread of masses: every term of every score matters."""
    with torch.no_grad():
        for block in model.blocks:
            block.attn.coord_proj.weight.normal_(0.0, 0.3)
            block.attn.bias.normal_(0.0, 1.0)
        model.mass_emb.weight.normal_(0.0, 1.0)
    return model.eval()


def recompute_step(model: NGT):
    """The decode_step NGT inherited before it had a cache: the forward pass on the last
    block_size tokens, every step."""
    return LanguageModel.decode_step.__get__(model)


@pytest.mark.parametrize("kernel, cutoff, mass_in", CACHE_VARIANTS)
def test_cached_decoding_equals_the_full_forward(kernel, cutoff, mass_in):
    """A prefix, then token by token, or in chunks: at every position the cached step's
    logits are the full forward pass's (float32, batch 2, the whole block)."""
    model = spread(tiny(kernel=kernel, cutoff=cutoff, mass_in=mass_in, radius_init=1.0))
    x = torch.randint(0, 17, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(x)
    if cutoff == "hard":  # the radius cuts some pairs but not all, so the test sees it
        u = model.forward_with_trace(x)["u"]
        r2 = torch.stack([b.attn.radius for b in model.blocks]) ** 2
        assert 0.05 < float((pairwise_d2(u) > r2.view(-1, 1, 1, 1, 1)).float().mean()) < 0.95
    for prefill, chunk in ((3, 1), (1, 4), (5, 3)):
        logits, state = model.decode_step(x[:, :prefill], None)
        steps, ends = [logits], [prefill]
        for t in range(prefill, 16, chunk):
            logits, state = model.decode_step(x[:, t : t + chunk], state)
            steps.append(logits)
            ends.append(min(t + chunk, 16))
        assert state["pos"] == 16 and all(c.length == 16 for c in state["caches"])
        torch.testing.assert_close(
            torch.stack(steps, 1), full[:, [e - 1 for e in ends]], atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("cutoff", ["none", "smooth"])
def test_cached_decoding_with_q_k_wider_than_the_value_head(cutoff):
    """4 heads of 8 channels with 8 coordinate dims: q', k' (9 entries) are padded to 16, wider
    than the value head, so the cache keeps the values padded to 16 too."""
    model = spread(tiny(n_head=4, head_coord=8, cutoff=cutoff, radius_init=1.0))
    attn = model.blocks[0].attn
    assert (attn.head_size, attn.qk_dim, attn.value_dim) == (8, 16, 16)
    x = torch.randint(0, 17, (2, 16))
    with torch.no_grad():
        full, _ = model(x)
    logits, state = model.decode_step(x[:, :2], None)
    steps = [logits]
    for t in range(2, 16):
        logits, state = model.decode_step(x[:, t : t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", ["gaussian", "seed"])
def test_decode_cache_is_preallocated_and_filled_in_place(kernel):
    """Each layer's keys and values live in buffers allocated once at block_size; the steps
    write into them (no per-token concatenation) and only their filled length grows."""
    model = spread(tiny(kernel=kernel))
    x = torch.randint(0, 17, (1, 16))
    _, state = model.decode_step(x[:, :4], None)
    caches = state["caches"]
    buffers = [(c.k.data_ptr(), c.v.data_ptr()) for c in caches]
    assert len(caches) == 2 and all(c.capacity == 16 and c.length == 4 for c in caches)
    attn = model.blocks[0].attn
    assert caches[0].k.shape == (1, 2, 16, attn.key_dim)
    assert caches[0].v.shape == (1, 2, 16, attn.value_dim)
    for t in range(4, 16):
        _, state = model.decode_step(x[:, t : t + 1], state)
        assert state["caches"] is caches and caches[0].length == t + 1
    assert [(c.k.data_ptr(), c.v.data_ptr()) for c in caches] == buffers


@pytest.mark.parametrize("kernel", ["gaussian", "seed"])
def test_cached_decoding_past_the_block_crops_like_uncached_sampling(kernel):
    """Past block_size (positions are learned, z0 = E_coord[pos]) a step re-encodes the last
    block_size tokens from position 0, as the recompute path does; a longer prefix too."""
    model = spread(tiny(kernel=kernel))
    x = torch.randint(0, 17, (1, 30))
    old = recompute_step(model)
    logits, state = model.decode_step(x[:, :20], None)  # a prefill longer than the block
    torch.testing.assert_close(logits, old(x[:, :20], None)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, model(x[:, 4:20])[0][:, -1], atol=1e-5, rtol=0)
    for t in range(20, 30):
        logits, state = model.decode_step(x[:, t : t + 1], state)
        expected, _ = model(x[:, t - 15 : t + 1])
        torch.testing.assert_close(logits, expected[:, -1], atol=1e-5, rtol=0)
    assert state["tokens"].size(1) == 16 and state["pos"] == 16
    assert all(c.length == 16 for c in state["caches"])


@pytest.mark.parametrize("kernel, cutoff, mass_in", CACHE_VARIANTS)
def test_cached_generation_equals_the_recompute_path(kernel, cutoff, mass_in, monkeypatch):
    """Greedy generation through the cache gives the tokens the old recompute path gave,
    past the block too (3 + 29 tokens, block 16)."""
    from physllm.sampling import generate

    model = spread(tiny(kernel=kernel, cutoff=cutoff, mass_in=mass_in, radius_init=1.0))
    prompt = torch.randint(0, 17, (2, 3), generator=torch.Generator().manual_seed(2))
    cached = generate(model, prompt, 29, temperature=0)
    monkeypatch.setattr(model, "decode_step", recompute_step(model))
    assert torch.equal(cached, generate(model, prompt, 29, temperature=0))


STEP_VARIANTS = [
    *[(kernel, cutoff, mass_in, {}) for kernel, cutoff, mass_in in CACHE_VARIANTS],
    ("gaussian", "none", "logits", dict(n_head=4, head_coord=8)),  # q', k' padded past v
    ("seed", "hard", "logits", dict(bias=True)),
]


@pytest.mark.parametrize("kernel, cutoff, mass_in, shape", STEP_VARIANTS)
def test_single_token_steps_equal_the_general_cached_path(kernel, cutoff, mass_in, shape):
    """A one-token decoding step runs GravityAttention.step (keys and values written straight
    into the cache, the seed's d2 row as one product q" . k", constants computed with the
    state); it gives the general path's logits, on the same cache, to float rounding."""
    model = spread(tiny(kernel=kernel, cutoff=cutoff, mass_in=mass_in, radius_init=1.0, **shape))
    x = torch.randint(0, 17, (2, 16), generator=torch.Generator().manual_seed(3))
    _, state = model.decode_step(x[:, :3], None)
    _, general = model.decode_step(x[:, :3], None)
    calls = []
    step = GravityAttention.step
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GravityAttention, "step", lambda *a: calls.append(1) or step(*a))
        for t in range(3, 16):
            logits, state = model.decode_step(x[:, t : t + 1], state)
            with torch.no_grad():
                expected, _ = model._run(x[:, t : t + 1], False, general["caches"], start=t)
            torch.testing.assert_close(logits, expected[:, -1], atol=2e-6, rtol=0)
    assert len(calls) == 13 * len(model.blocks)  # every layer of every step took it
    # the last block's coordinates are read by no layer: its step does not move them
    moves = [layer.moves_coords for layer in state["derived"].values[2]]
    assert moves == [True] * (len(model.blocks) - 1) + [False]
    for fast, slow in zip(state["caches"], general["caches"]):
        # (the step's fused W_next W_p sums in another order: a few ulp of large entries)
        torch.testing.assert_close(fast.k[:, :, :16], slow.k[:, :, :16], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(fast.v[:, :, :16], slow.v[:, :, :16], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kernel", ["gaussian", "seed"])
def test_a_new_decoding_state_reads_changed_parameters(kernel):
    """The steps' constants (softplus'd gamma and radius, the bias, the masses) are computed
    when a state is made: after the parameters change, a new state decodes the new model."""
    model = spread(tiny(kernel=kernel, radius_init=1.0))
    x = torch.randint(0, 17, (1, 12))
    logits, state = model.decode_step(x[:, :4], None)
    for t in range(4, 8):
        logits, state = model.decode_step(x[:, t : t + 1], state)
    with torch.no_grad():  # a training update, in place
        for block in model.blocks:
            block.attn.gamma_raw.add_(0.7)
            block.attn.bias.add_(0.3)
            block.attn.radius_raw.add_(0.5)
        model.mass_emb.weight.mul_(-1.5)
    logits, state = model.decode_step(x[:, :4], None)
    for t in range(4, 12):
        logits, state = model.decode_step(x[:, t : t + 1], state)
        with torch.no_grad():
            expected, _ = model(x[:, : t + 1])
        torch.testing.assert_close(logits, expected[:, -1], atol=1e-5, rtol=0)


def test_probes_measure_ngt_s_cache():
    """The probes' state size reads NGT's cache: keys and values of the positions held."""
    from physllm.probes.runner import state_bytes

    model = tiny()
    a = model.blocks[0].attn
    got = state_bytes(model, 10)
    kv = 2 * 10 * 2 * (a.key_dim + a.value_dim) * 4  # layers x positions x heads x widths, fp32
    assert got == {"state_bytes": kv + 10 * 8, "state_how": "kv cache (measured)"}


# --------------------------------------------------------------------------- analysis


def test_coordinate_plots_and_projector(tmp_path):
    from physllm.ngt.analysis import (
        export_projector,
        kernel_weight_vs_distance,
        pca_3d,
        plot_coordinates_3d,
    )

    model = tiny().eval()
    tr = model.forward_with_trace(torch.randint(0, 17, (1, 12)))
    z = tr["z"][:, 0]  # (L+1, T, C)
    p = pca_3d(z[1])
    assert p.shape == (12, 3)
    # the first component carries the most variance
    assert p.var(0)[0] >= p.var(0)[1] >= p.var(0)[2]
    tokens = list("abcdefghijkl")
    fig = plot_coordinates_3d(z, tokens, tr["mass"][0])
    assert len(fig.data) == 3 and len(fig.layout.sliders[0].steps) == 3
    assert [t.visible for t in fig.data] == [True, False, False]
    export_projector(tmp_path / "proj", z[:2], tokens, tr["mass"][0])
    out = export_projector(tmp_path / "proj", z, tokens, tr["mass"][0])  # a rerun replaces it
    config = (out / "projector_config.pbtxt").read_text()
    assert config.count("embeddings {") == 3 and "metadata_path" in config
    r = torch.tensor([0.5, 1.0, 2.0, 3.0])
    assert bool((kernel_weight_vs_distance(r, "seed").diff() > 0).all())
    assert bool((kernel_weight_vs_distance(r, "gaussian").diff() < 0).all())


# --------------------------------------------------------------------------- the notebook


def test_notebook_runs_with_few_steps(run_notebook, monkeypatch):
    from tests.conftest import shakespeare_available

    # both worlds: TinyShakespeare where it is on disk, else pydocs
    _, out_dir = run_notebook("03_ngt", steps=20, bench_repeats=1)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["corpus"] == ("shakespeare" if shakespeare_available() else "pydocs")
    assert metrics["model"] == "ngt" and metrics["steps"] == 20
    assert set(metrics["runs"]) >= {"ngt", "gpt"}
    assert metrics["runs"]["gpt"]["steps"] == 20
    assert (
        abs(
            metrics["val_loss_gap_nats"]
            - (metrics["val_loss"] - metrics["runs"]["gpt"]["val_loss"])
        )
        < 1e-9
    )
    assert metrics["speed_ratio_vs_gpt"] > 0
    assert (out_dir / "coordinates_3d.html").exists()
    assert (out_dir / "projector" / "projector_config.pbtxt").exists()


# --------------------------------------------------------------------------- the seed's code


def seed_reference_logits(model: NGT, idx: torch.Tensor, soft: bool) -> torch.Tensor:
    """The seed's forward (leetae9yu/newton-gravity-transformer ngt_model.py at 7e05baf:
    GravityAttention, NGTBlock, NewtonGravityTransformer), transcribed, reading our
    model's weights: the score m_i m_j (-gamma / (d2 + eps) + b) (or, with mass in the
    values, v_j m_j and no mass in the score), its hard or soft radius cutoff, and the
    coordinates moved by the attention output, z <- LN(z + W_next o), layer after layer."""
    cfg = model.config
    B, T = idx.shape
    H, c, d = cfg.n_head, cfg.head_coord, cfg.n_embd
    h = model.wte(idx)
    m = torch.nn.functional.softplus(model.mass_emb(idx))  # (B, T, 1)
    z = model.coord_emb(torch.arange(T).unsqueeze(0).expand(B, T))
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for block in model.blocks:
        a, x = block.attn, block.ln_1(h)
        value = a.v_proj(x).view(B, T, H, d // H).transpose(1, 2)
        zh = a.coord_proj(z).view(B, T, H, c).transpose(1, 2)
        diff = zh.unsqueeze(-2) - zh.unsqueeze(-3)
        squared_dist = (diff * diff).sum(dim=-1)
        gamma = torch.nn.functional.softplus(a.gamma_raw).view(1, H, 1, 1)
        radius = torch.nn.functional.softplus(a.radius_raw)
        base_score = -gamma / (squared_dist + cfg.dist_eps) + a.bias.view(1, H, 1, 1)
        if cfg.mass_in == "logits":
            ms = m.squeeze(-1)
            scores = base_score * (ms.unsqueeze(-1) * ms.unsqueeze(-2)).unsqueeze(1)
        else:
            scores = base_score
            value = value * m.unsqueeze(1)
        if soft:
            scores = scores * torch.relu(1.0 - squared_dist / radius**2)
        else:
            scores = scores.masked_fill(squared_dist > radius**2, torch.finfo(scores.dtype).min)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        out = a.c_proj((weights @ value).transpose(1, 2).contiguous().view(B, T, d))
        h = h + out
        h = h + block.mlp(block.ln_2(h))
        z = block.ln_z(z + block.coord_next(out))
    return model.lm_head(model.ln_f(h))


@pytest.mark.parametrize("cutoff", ["hard", "soft"])
@pytest.mark.parametrize("mass_in", ["logits", "values"])
def test_seed_kernel_is_the_seeds_code(cutoff, mass_in):
    """Our seed kernel equals the seed's forward to 1e-6 on fixed weights with a bias b, a
    spread of masses and coordinates that the radius partly cuts (float64)."""
    model = tiny(kernel="seed", cutoff=cutoff, mass_in=mass_in, radius_init=1.0).double().eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.bias.normal_(0.0, 1.0)  # b matters: it is scaled by m_i m_j
            block.attn.coord_proj.weight.normal_(0.0, 0.3)  # coordinates spread about R
        model.mass_emb.weight.normal_(0.0, 1.0)
    idx = torch.randint(0, 17, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(idx)[0]
        reference = seed_reference_logits(model, idx, soft=cutoff == "soft")
        trace = model.forward_with_trace(idx)
    assert (ours - reference).abs().max() < 1e-6
    if cutoff == "hard":  # the radius cuts some pairs but not all, so the test sees it
        r2 = torch.stack([b.attn.radius for b in model.blocks]) ** 2
        cut = (pairwise_d2(trace["u"]) > r2.view(-1, 1, 1, 1, 1)).float().mean()
        assert 0.05 < float(cut) < 0.95


def test_gpu_twin_gpt_matches_ngt_parameters():
    """The gpu preset fixes NGT's MLP at the seed's 2048; its GPT twin's MLP is sized so the
    two match in parameters (without it GPT would carry 16% more)."""
    from dataclasses import replace

    from physllm.experiments.leaderboard import count_params
    from physllm.training import make_config, matched_baseline

    ngt = make_config("ngt", "gpu")
    ngt = replace(ngt, model_config=replace(ngt.model_config, vocab_size=8192))
    n_ngt = count_params("ngt", ngt.model_config.to_dict())
    plain = matched_baseline(ngt, out_dir="x")
    twin = matched_baseline(ngt, match="mlp_hidden", out_dir="x")
    assert count_params("gpt", plain.model_config.to_dict()) / n_ngt > 1.1
    assert abs(count_params("gpt", twin.model_config.to_dict()) / n_ngt - 1) < 0.005
    assert twin.model_config.mlp_hidden < 2048 and twin.model_config.n_embd == 512


@pytest.mark.parametrize("center", [0.0, 2.0, 4.0])
def test_bf16_augmented_scores_stay_near_the_float64_formula(center):
    """q'.k' in bf16 against the explicit gaussian score in float64, on coordinates spread
    about a common offset (|u| about 2 to 4): the score error stays within gamma |u|^2 / 64
    and the attention weights within 0.05 in total variation (the module docstring's bound)."""
    torch.manual_seed(0)
    B, H, T, c = 2, 4, 64, 16
    u = torch.randn(B, H, T, c) * 0.5 + center * torch.randn(1, H, 1, c) / c**0.5
    gamma, log_m = torch.full((H,), 0.69), torch.randn(B, T) * 0.5
    row_constant = gamma.double().view(1, H, 1, 1) * u.double().pow(2).sum(-1, keepdim=True)
    exact = gaussian_scores(pairwise_d2(u.double()), gamma.double(), log_m.double())
    q, k = augmented_qk(u, gamma, log_m, 32)
    scores = (q.bfloat16() @ k.bfloat16().transpose(-1, -2)).double()
    bound = float(gamma[0] * u.pow(2).sum(-1).max() / 64)
    assert float((scores - (exact + row_constant)).abs().max()) < bound
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    reference = exact.masked_fill(~causal, float("-inf")).softmax(-1)
    values = torch.eye(T).expand(B, H, T, T)
    fused = torch.nn.functional.scaled_dot_product_attention(
        q.bfloat16(), k.bfloat16(), values.bfloat16(), is_causal=True, scale=1.0
    )
    assert float((fused.double() - reference).abs().sum(-1).max()) < 0.05


def test_seed_repulsion_is_the_seeds_term():
    """repulsion_form="seed" adds the seed's compute_repulsion_loss (train.py at 2ceebcf) on the
    final coordinates, 64 random positions shared across the batch, masses pushed too."""
    from physllm.ngt.model import seed_repulsion_energy

    model = tiny(repulsion=0.05, repulsion_form="seed", block_size=80).train()
    idx = torch.randint(0, 17, (2, 80), generator=torch.Generator().manual_seed(4))
    torch.manual_seed(7)
    _, loss = model(idx, idx)
    trace = model._run(idx, need_weights=False)[1]
    z, m = trace["z"][-1], trace["mass"].unsqueeze(-1)
    # the seed's function, transcribed
    torch.manual_seed(7)
    keep = torch.randperm(80)[:64]
    z, m = z[:, keep, :], m[:, keep, :]
    diff = z.unsqueeze(2) - z.unsqueeze(1)
    squared_dist = (diff * diff).sum(-1).clamp_min(1e-3 * 1e-3)
    ms = m.squeeze(-1)
    energy = (ms.unsqueeze(-1) * ms.unsqueeze(-2)) / squared_dist
    pair_mask = torch.triu(torch.ones(64, 64, dtype=torch.bool), diagonal=1).unsqueeze(0)
    reference = energy.masked_select(pair_mask.expand_as(energy)).mean()
    expected = float(reference.detach())
    assert abs(model.last_aux["repulsion"] - expected) < 1e-5 * expected
    torch.manual_seed(7)
    ours = seed_repulsion_energy(trace["z"][-1], trace["mass"], 64)
    assert torch.allclose(ours, reference)
    ours.backward(retain_graph=True)  # the seed's masses get a gradient; ours are detached
    assert model.mass_emb.weight.grad.abs().sum() > 0
    model.zero_grad()
    # ours on layer 1's coordinates (which do not depend on the masses): no mass gradient
    repulsion_energy(trace["u"][0], trace["mass"], 64, 1e-2).backward()
    assert model.mass_emb.weight.grad is None or model.mass_emb.weight.grad.abs().sum() == 0
