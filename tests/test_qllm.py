"""QLLM: phase forms, causality with both global modes, recurrent memory, LoRA, sampling,
and the seed options against a transcription of the seed's own code."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from physllm.errors import PhysllmError
from physllm.lora import LoRALinear, merge_lora
from physllm.models import build_model
from physllm.qllm.model import (
    QLLM,
    PhaseGain,
    PhaseRotation,
    QLLMConfig,
    coherence_loss,
    seed_coherence_loss,
    window_mask,
)
from physllm.sampling import apply_repetition_penalty, generate


def tiny(**kw) -> QLLM:
    values = dict(
        block_size=24, n_layer=2, n_head=2, n_embd=16, n_global=3, segment_len=8, coherence=0.1
    )
    values.update(kw)
    torch.manual_seed(0)
    model = QLLM(QLLMConfig(**values)).eval()
    with torch.no_grad():  # non-trivial phases, as after training
        for name, p in model.named_parameters():
            if name.endswith(("phase.p", "phase.theta")):
                p.normal_(0, 1.0)
    return model


def test_gain_is_the_seed_formula_and_identity_at_init():
    gain = PhaseGain(6)
    x = torch.randn(2, 5, 6)
    torch.testing.assert_close(gain(x), x)  # p = 0: cos 0 - sin 0 = 1
    with torch.no_grad():
        gain.p.copy_(torch.linspace(-2, 2, 6))
    phi = math.pi * torch.tanh(gain.p.detach())
    torch.testing.assert_close(gain(x), x * (torch.cos(phi) - torch.sin(phi)))
    # a gain, not a rotation: the norm changes
    assert not torch.allclose(gain(x).norm(dim=-1), x.norm(dim=-1))


@pytest.mark.parametrize("n_pos", [0, 5])
def test_rotation_preserves_norm_and_is_a_complex_multiply(n_pos):
    rot = PhaseRotation(6, n_pos)
    x = torch.randn(2, 5, 6)
    torch.testing.assert_close(rot(x), x)  # theta = 0 at init
    with torch.no_grad():
        rot.theta.normal_(0, 2.0)
    y = rot(x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    z = torch.view_as_complex(x.reshape(2, 5, 3, 2).contiguous())
    expected = torch.view_as_real(z * torch.polar(torch.ones_like(rot.theta), rot.theta.detach()))
    torch.testing.assert_close(y, expected.flatten(-2))


@pytest.mark.parametrize(
    "kw",
    [
        dict(globals="seed", phase="gain"),
        dict(globals="seed", phase="gain", phase_at="embeddings", tie_head=False, bias=True),
        dict(globals="recurrent", phase="rotation"),
        dict(globals="recurrent", phase="rotation", phase_per_position=True, phase_at="embeddings"),
        dict(globals="recurrent", phase="rotation", phase_per_position=True),
        dict(globals="off", phase="none"),
    ],
)
def test_no_byte_sees_a_later_byte(kw):
    model = tiny(**kw)
    idx = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    logits, _ = model(idx)
    assert logits.shape == (2, 24, 256)
    for t in (0, 7, 8, 15, 22):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 256
        new, _ = model(changed)
        torch.testing.assert_close(new[:, : t + 1], logits[:, : t + 1], atol=1e-6, rtol=0)
        assert not torch.allclose(new[:, t + 1], logits[:, t + 1])


def test_recurrent_memory_flows_forward_only():
    model = tiny(globals="recurrent")
    S = model.config.segment_len
    idx = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(2))
    logits, _ = model(idx)
    # a change in segment 1 leaves segment 0 alone
    later = idx.clone()
    later[:, S + 3] = (later[:, S + 3] + 7) % 256
    torch.testing.assert_close(model(later)[0][:, :S], logits[:, :S], atol=1e-6, rtol=0)
    # a change in segment 0 reaches segment 1's first byte, which sees segment 0
    # only through the memory (positions restart in every segment)
    earlier = idx.clone()
    earlier[:, 2] = (earlier[:, 2] + 7) % 256
    new = model(earlier)[0]
    assert (new[:, S] - logits[:, S]).abs().max() > 1e-4


def test_recurrent_memory_carries_across_six_segments():
    """A byte of segment 0 reaches the first byte of every later segment (each sees the past
    only through the memory), and streaming decode carries the same memory."""
    model = tiny(globals="recurrent", block_size=48)
    S = model.config.segment_len
    idx = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(5))
    earlier = idx.clone()
    earlier[:, 1] = (earlier[:, 1] + 7) % 256
    logits, new = model(idx)[0], model(earlier)[0]
    for k in range(1, 48 // S):
        assert (new[:, k * S] - logits[:, k * S]).abs().max() > 1e-5, f"segment {k}"
    state, streamed = None, []
    for t in range(48):
        step_logits, state = model.decode_step(idx[:, t : t + 1], state)
        streamed.append(step_logits)
    torch.testing.assert_close(torch.stack(streamed, 1), logits, atol=1e-5, rtol=0)


def test_seed_globals_are_a_constant_prefix():
    """The seed's globals see only globals (causally: global i reads globals 0..i): their
    states ignore the text."""
    model = tiny(globals="seed")
    G = model.G
    mask = model.attention_mask(24, write=False)
    assert mask is None  # the seed's plain causal mask over [globals | bytes]

    def global_states(idx, mem):
        x = torch.cat([mem, model.wte(idx) + model.wpe(torch.arange(24))], dim=1)
        for block in model.blocks:
            x = block(x, mask)
        return x[:, :G]

    a = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(4))
    mem = model.initial_memory(1)
    states = global_states(a, mem)
    torch.testing.assert_close(global_states(255 - a, mem), states, atol=1e-6, rtol=0)
    later = mem.clone()
    later[:, G - 1] += 1.0  # the last global: no earlier global reads it
    changed = global_states(a, later)
    torch.testing.assert_close(changed[:, : G - 1], states[:, : G - 1], atol=1e-6, rtol=0)
    assert (changed[:, G - 1] - states[:, G - 1]).abs().max() > 1e-3


@pytest.mark.parametrize("globals_", ["recurrent", "seed", "off"])
@pytest.mark.parametrize("phase_at", ["blocks", "embeddings"])
def test_decode_step_matches_forward(globals_, phase_at):
    model = tiny(globals=globals_, phase_at=phase_at)
    idx = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
    logits, _ = model(idx)
    step_logits, state = model.decode_step(idx[:, :5])
    torch.testing.assert_close(step_logits, logits[:, 4], atol=1e-5, rtol=0)
    for t in range(5, 24):
        step_logits, state = model.decode_step(idx[:, t : t + 1], state)
        torch.testing.assert_close(step_logits, logits[:, t], atol=1e-5, rtol=0)
    out = generate(model, idx[:, :4], 30, temperature=0.8, top_k=20, top_p=0.9, min_p=0.01)
    assert out.shape == (2, 34)  # past block_size: recurrent memory keeps going


def test_coherence_loss_and_eval_loss():
    model = tiny(phase="rotation", coherence=0.5)
    idx = torch.randint(0, 256, (2, 24))
    phases = model.phases()
    assert len(phases) == 2 and phases[0].shape == (8,)
    coh = coherence_loss(phases)
    phi = phases[0]
    manual = (1 - torch.cos(phi[1:] - phi[:-1])).mean()
    assert coh > 0 and torch.isclose(
        coh, (manual + (1 - torch.cos(phases[1][1:] - phases[1][:-1])).mean()) / 2
    )
    model.train()
    _, loss_train = model(idx, idx)
    assert model.last_aux["coherence"] == pytest.approx(coh.item(), rel=1e-5)
    assert loss_train.item() == pytest.approx(model.last_aux["lm"] + 0.5 * coh.item(), rel=1e-5)
    model.eval()
    _, loss_eval = model(idx, idx)
    assert loss_eval.item() == pytest.approx(model.last_aux["lm"], rel=1e-6)
    assert coherence_loss([torch.zeros(4)]).item() == 0.0  # identity at init costs nothing
    # no phases, no coherence
    none = tiny(phase="none")
    none.train()
    none(idx, idx)
    assert none.last_aux["coherence"] == 0.0


def test_lora_on_qllm_trains_only_adapters_and_merges_exactly():
    model = tiny(lora_rank=4, lora_alpha=8)
    adapted = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert len(adapted) == 8 and {n.rsplit(".", 1)[1] for n in adapted} == {"q", "k", "v", "o"}
    model.train()
    idx = torch.randint(0, 256, (2, 24))
    _, loss = model(idx, idx)
    loss.backward()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.grad is not None
        else:
            assert not p.requires_grad and p.grad is None, name
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.eval()
    before, _ = model(idx)
    merge_lora(model)
    assert model.config.lora_rank == 0
    after, _ = model(idx)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    assert (after - model.__class__(model.config).eval()(idx)[0]).abs().max() > 0


def test_repetition_penalty_lowers_positive_and_negative_logits():
    logits = torch.tensor([[2.0, -1.5, 0.5, 0.0]])
    context = torch.tensor([[0, 1]])  # token 0 has a positive logit, token 1 a negative one
    before = logits.softmax(-1)
    after = apply_repetition_penalty(logits, context, 1.5).softmax(-1)
    assert after[0, 0] < before[0, 0] and after[0, 1] < before[0, 1]
    assert after[0, 2] > before[0, 2]  # the mass goes to unpenalised tokens


def test_bad_options_are_clear_errors():
    with pytest.raises(PhysllmError, match="phase"):
        build_model("qllm", {"phase": "twist"})
    with pytest.raises(PhysllmError, match="globals"):
        build_model("qllm", {"globals": "maybe"})
    with pytest.raises(PhysllmError, match="phase_per_position"):
        build_model("qllm", {"phase": "gain", "phase_per_position": True})
    with pytest.raises(PhysllmError, match="--phase-at"):
        build_model("qllm", {"phase_at": "middle"})
    with pytest.raises(PhysllmError, match="--coherence-form"):
        build_model("qllm", {"coherence_form": "squares"})


def test_lora_finetune_through_the_trainer(tmp_path):
    from physllm.training import make_config, train
    from physllm.training.checkpoint import load_checkpoint

    shape = dict(
        corpus="pydocs",
        tokenizer="byte",
        block_size=16,
        n_layer=1,
        n_head=2,
        n_embd=16,
        n_global=2,
        segment_len=8,
        batch_size=4,
        eval_interval=5,
        eval_iters=2,
        progress=False,
        tensorboard=False,
        threads=1,
    )
    base = train(make_config("qllm", steps=5, out_dir=str(tmp_path / "base"), **shape))
    tuned = train(
        make_config(
            "qllm",
            steps=5,
            lr=1e-2,
            warmup_steps=0,
            out_dir=str(tmp_path / "lora"),
            init_from=str(tmp_path / "base"),
            lora_rank=4,
            **shape,
        )
    )
    base_sd, tuned_sd = base.model.state_dict(), tuned.model.state_dict()
    lora_keys = [k for k in tuned_sd if "lora_" in k]
    assert lora_keys and set(tuned_sd) - set(lora_keys) == set(base_sd)
    for k, v in base_sd.items():  # the base is loaded and frozen
        torch.testing.assert_close(tuned_sd[k], v)
    assert any(tuned_sd[k].abs().sum() > 0 for k in lora_keys if "lora_B" in k)
    reloaded, _, meta = load_checkpoint(tmp_path / "lora")
    assert meta["config"]["lora_rank"] == 4
    metrics = json.loads((tmp_path / "lora" / "metrics.json").read_text())
    assert metrics["model"] == "qllm" and metrics["bpc_unit"] == "byte"


def test_notebook_runs_with_20_steps(run_notebook):
    _, out_dir = run_notebook("04_qllm", steps=20)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["model"] == "qllm" and metrics["steps"] == 20
    assert metrics["tokenizer"] == "byte" and metrics["bpc_unit"] == "byte"
    assert {"qllm", "gpt", "qllm_lora"} <= set(metrics["runs"])
    ablation = [k for k in metrics["runs"] if k.startswith("ablation/")]
    assert len(ablation) >= 8
    assert all(metrics["runs"][k]["steps"] == 20 for k in ablation)
    assert metrics["lora"]["loss_after"] < metrics["lora"]["loss_before"]
    assert math.isfinite(metrics["val_bpc"]) and math.isfinite(metrics["gpt_val_bpc"])
    assert (out_dir / "ablation.png").exists() and (out_dir / "loss_curves.png").exists()


def test_phases_are_not_weight_decayed():
    model = tiny(phase="rotation", phase_per_position=True)
    decay, no_decay = model.optim_groups(0.1)
    thetas = {id(b.phase.theta) for b in model.blocks}
    assert thetas <= {id(p) for p in no_decay["params"]}
    assert not thetas & {id(p) for p in decay["params"]}
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # the seed's one phase module, on the embeddings
    model = tiny(phase="rotation", phase_per_position=True, phase_at="embeddings")
    decay, no_decay = model.optim_groups(0.1)
    assert id(model.phase.theta) in {id(p) for p in no_decay["params"]}
    assert id(model.phase.theta) not in {id(p) for p in decay["params"]}


# --------------------------------------------------------------------------- the seed's code
#
# Transcribed from gowrav-vishwakarma/qllm2 v1, quantum_llm_model.py (QuantumInspiredLLM,
# PhaseRotator, MultiHeadSelfAttention, TransformerBlock, LoRALinear) and qllm_utils.py
# (causal_mask), the version train_improved.py's 3.425 run calls; read here from OUR
# model's weights. The seed's LoRALinear names its factors the other way round:
# its B (r, in) is our lora_A, its A (out, r) our lora_B.


def seed_causal_mask(seq_len):
    mask = torch.full((1, 1, seq_len, seq_len), float("-inf"), dtype=torch.float64)
    return torch.triu(mask, diagonal=1)


def seed_lora_linear(layer, x):
    out = F.linear(x, layer.weight, layer.bias)
    if isinstance(layer, LoRALinear):
        update = F.linear(x, layer.lora_A)  # the seed's B: [*, r]
        update = F.linear(update, layer.lora_B)  # the seed's A: [*, out]
        out = out + layer.scaling * update
    return out


def seed_attention(attn, x, attn_bias, num_heads):
    B, L, D = x.shape
    head_dim = D // num_heads

    def split(t):
        return t.view(B, L, num_heads, head_dim).transpose(1, 2)

    q, k, v = (split(seed_lora_linear(lin, x)) for lin in (attn.q, attn.k, attn.v))
    scores = torch.matmul(q, k.transpose(-2, -1)) * head_dim**-0.5
    scores = scores + attn_bias
    out = torch.matmul(torch.softmax(scores, dim=-1), v)  # attention dropout: eval, identity
    out = out.transpose(1, 2).contiguous().view(B, L, D)
    return seed_lora_linear(attn.o, out)


def seed_layer_norm(ln, x):
    return F.layer_norm(x, (x.size(-1),), ln.weight, ln.bias, 1e-5)  # nn.LayerNorm(dim)


def seed_forward(model, idx):
    """QuantumInspiredLLM.forward: embed -> PhaseRotator -> prepend globals -> blocks -> head."""
    B, L = idx.shape
    pos = torch.arange(0, L).unsqueeze(0)
    x = F.embedding(idx, model.wte.weight) + F.embedding(pos, model.wpe.weight)
    phi = torch.tanh(model.phase.p) * math.pi  # PhaseRotator.forward
    c, s = torch.cos(phi), torch.sin(phi)
    x = x * c - x * s
    g = model.memory.unsqueeze(0).expand(B, -1, -1)  # add_globals
    x, n_g = torch.cat([g, x], dim=1), model.memory.size(0)
    attn_bias = seed_causal_mask(L + n_g)
    for blk in model.blocks:  # TransformerBlock.forward
        x = x + seed_attention(
            blk.attn, seed_layer_norm(blk.ln_1, x), attn_bias, model.config.n_head
        )
        h = seed_layer_norm(blk.ln_2, x)
        h = F.linear(
            F.gelu(F.linear(h, blk.mlp.c_fc.weight, blk.mlp.c_fc.bias)),
            blk.mlp.c_proj.weight,
            blk.mlp.c_proj.bias,
        )
        x = x + h
    x = seed_layer_norm(model.ln_f, x)
    return F.linear(x[:, n_g:, :], model.lm_head.weight)  # head: nn.Linear(dim, vocab, bias=False)


def seed_coherence(phase):
    """PhaseRotator.coherence_loss, on its raw parameter."""
    diff = phase[1:] - phase[:-1]
    return (diff**2).mean() + 0.1 * (phase**2).mean()


def seed_model(**kw):
    """The seed preset's model options at a tiny shape, with trained-looking phases and LoRA."""
    from dataclasses import replace

    from physllm.training import make_config

    shape = dict(vocab_size=256, block_size=24, n_layer=2, n_head=2, n_embd=16, n_global=3)
    config = replace(make_config("qllm", "seed").model_config, lora_rank=4, **shape, **kw)
    torch.manual_seed(0)
    model = QLLM(config).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("phase.p"):
                p.normal_(0, 1.0)  # gains of both signs
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)  # a trained adapter: its update is not 0
    return model


def test_seed_options_match_the_seeds_forward_and_coherence():
    model = seed_model(dropout=0.0).eval()
    assert model.lm_head.weight is not model.wte.weight  # the seed's head is its own
    idx = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(6))
    logits, _ = model(idx)
    reference = seed_forward(model, idx)
    assert logits.dtype == reference.dtype == torch.float64
    assert (logits - reference).abs().max() < 1e-6
    # the coherence term and the training loss: ce + lambda L_coh, lambda the seed's 0.05
    coh = seed_coherence(model.phase.p)
    torch.testing.assert_close(model.coherence(), coh, atol=1e-12, rtol=0)
    assert model.config.coherence == 0.05
    model.train()
    _, loss = model(idx, idx)
    ce = F.cross_entropy(reference.flatten(0, 1), idx.flatten())
    assert abs(loss.item() - (ce + 0.05 * coh).item()) < 1e-6
    assert abs(model.last_aux["coherence"] - coh.item()) < 1e-9
    model.eval()
    assert abs(model(idx, idx)[1].item() - ce.item()) < 1e-6  # eval: the cross-entropy alone


def test_seed_placement_and_mask_are_what_the_reference_checks():
    """The reference has teeth: the gain on every block (ours) or globals that see each other
    whole (this model's earlier seed mask) give other logits."""
    seed = seed_model(dropout=0.0).eval()
    idx = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(6))
    reference = seed_forward(seed, idx)
    blocks = seed_model(dropout=0.0, phase_at="blocks").eval()
    state = {k: v for k, v in seed.state_dict().items() if k != "phase.p"}
    blocks.load_state_dict(state, strict=False)
    with torch.no_grad():
        for b in blocks.blocks:
            b.phase.p.copy_(seed.phase.p)
    assert (blocks(idx)[0] - reference).abs().max() > 1e-3
    closed = window_mask(3, 24, write=False)  # globals see all globals
    x = torch.cat(
        [seed.initial_memory(2), seed.phase(seed.wte(idx) + seed.wpe(torch.arange(24)))], dim=1
    )
    for block in seed.blocks:
        x = block(x, closed)
    other = seed.lm_head(seed.ln_f(x[:, 3:]))
    assert (other - reference).abs().max() > 1e-3


def test_embedding_gain_with_an_untied_head_is_absorbed_into_the_tables():
    """The docstring's claim: g (wte[x] + wpe[t]) = (g wte)[x] + (g wpe)[t]."""
    seed = seed_model(dropout=0.0).eval()
    idx = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(8))
    absorbed = seed_model(dropout=0.0).eval()
    with torch.no_grad():
        gain = torch.cos(seed.phase.phases()) - torch.sin(seed.phase.phases())
        absorbed.wte.weight.mul_(gain)
        absorbed.wpe.weight.mul_(gain)
        absorbed.phase.p.zero_()  # gain 1
    torch.testing.assert_close(absorbed(idx)[0], seed(idx)[0], atol=1e-12, rtol=0)


def test_seed_coherence_form_over_layers_and_rotations():
    gains = tiny(phase="gain", coherence_form="seed")
    ps = [b.phase.p for b in gains.blocks]
    expected = torch.stack([seed_coherence(p) for p in ps]).mean()
    torch.testing.assert_close(gains.coherence(), expected)
    torch.testing.assert_close(seed_coherence_loss(ps), expected)
    rotations = tiny(phase="rotation", coherence_form="seed")
    thetas = [b.phase.theta for b in rotations.blocks]  # the angles are the parameter
    torch.testing.assert_close(
        rotations.coherence(), torch.stack([seed_coherence(t) for t in thetas]).mean()
    )
    # not periodic, unlike ours: a shift of 2 pi costs, and p = 0 (gain 1) costs nothing
    theta = torch.tensor([0.1, 0.1 + 2 * math.pi])
    assert coherence_loss([theta]) < 1e-6 < seed_coherence_loss([theta])
    assert seed_coherence_loss([torch.zeros(5)]).item() == 0.0
    assert tiny(phase="none", coherence_form="seed").coherence() is None


def test_lora_trained_with_the_base():
    """lora_train_base: adapters and every base weight get gradients and move in a step."""
    model = tiny(lora_rank=4, lora_alpha=8, lora_train_base=True, phase_at="embeddings").train()
    assert all(p.requires_grad for p in model.parameters())
    groups = model.optim_groups(0.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    opt = torch.optim.AdamW(groups, lr=1e-2)
    idx = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(7))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(2):  # B = 0 at init: A's gradient is 0 until B has moved
        opt.zero_grad()
        _, loss = model(idx, idx)
        loss.backward()
        if step == 0:
            for name, p in model.named_parameters():
                if "lora_A" not in name:
                    assert p.grad is not None and p.grad.abs().sum() > 0, name
        opt.step()
    for name, p in model.named_parameters():
        assert not torch.equal(p.detach(), before[name]), f"{name} did not change"
    # the default still fine-tunes: only the adapters train
    frozen = tiny(lora_rank=4)
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == {
        n for n, _ in frozen.named_parameters() if "lora_" in n
    }


def test_seed_preset_is_the_seeds_wikitext2_run():
    from dataclasses import replace

    from physllm.training import make_config

    cfg = make_config("qllm", "seed")
    m = cfg.model_config
    assert (cfg.corpus, cfg.tokenizer) == ("wikitext2", "byte")
    assert (m.n_embd, m.n_layer, m.n_head, m.block_size, m.n_global) == (768, 12, 12, 256, 16)
    assert (m.phase, m.phase_at, m.globals, m.coherence_form, m.coherence) == (
        "gain",
        "embeddings",
        "seed",
        "seed",
        0.05,
    )
    assert (m.lora_rank, m.lora_alpha, m.lora_train_base, m.lora_dropout) == (32, 64.0, True, 0.0)
    assert (m.tie_head, m.bias, m.dropout) == (False, True, 0.1)
    assert (cfg.batch_size, cfg.grad_accum, cfg.lr, cfg.min_lr, cfg.warmup_steps) == (
        16,
        4,
        5e-5,
        5e-5,  # constant: the seed has no schedule
        0,
    )
    assert (cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.grad_clip) == (0.9, 0.95, 0.01, 1.0)
    assert (cfg.dtype, cfg.seed) == ("float16", 42)
    assert 13_000 <= cfg.steps <= 14_000  # 20 epochs of WikiText-2's ~11 MB, 16 x 4 x 256 a step
    with torch.device("meta"):
        model = QLLM(replace(m, vocab_size=256))
    C, V, G, L, r = 768, 256, 16, 12, 32
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["wte.weight"] == (V, C) and shapes["wpe.weight"] == (256, C)
    assert shapes["phase.p"] == (C,) and shapes["memory"] == (G, C)
    assert shapes["lm_head.weight"] == (V, C) and model.lm_head.weight is not model.wte.weight
    assert shapes["blocks.11.attn.o.lora_A"] == (r, C) and shapes["blocks.11.attn.o.lora_B"] == (
        C,
        r,
    )
    assert "blocks.0.phase.p" not in shapes and "blocks.0.attn.q.bias" in shapes
    # the seed's QuantumInspiredLLM, counted from its modules ...
    linear = C * C + C
    lora = r * C + C * r
    block = 2 * 2 * C + 4 * (linear + lora) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    seed = V * C + (256 + G) * C + C + L * block + 2 * C + C * V + G * C
    # ... allocates G position rows it never reads (only the bytes get positions): we do not
    assert model.num_params() == seed - G * C == 88_018_176
    assert all(p.requires_grad for p in model.parameters())  # LoRA trained with the base


@pytest.mark.parametrize("segment_memory", ["reset", "none"])
def test_memory_controls_see_nothing_of_earlier_segments(segment_memory):
    """The attribution controls: with the memory reset for every segment, or with no memory
    tokens, a byte of segment 0 reaches no later segment; the default carries it. Streaming
    decode computes the same as the forward pass."""
    model = tiny(globals="recurrent", block_size=32, segment_memory=segment_memory)
    S = model.config.segment_len
    assert model.G == (0 if segment_memory == "none" else 3)
    assert not hasattr(model, "write_embed")
    idx = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(6))
    earlier = idx.clone()
    earlier[:, 1] = (earlier[:, 1] + 7) % 256
    logits, new = model(idx)[0], model(earlier)[0]
    torch.testing.assert_close(new[:, S:], logits[:, S:], atol=1e-6, rtol=0)
    assert (new[:, 1:S] - logits[:, 1:S]).abs().max() > 1e-5  # within the segment it matters
    state, streamed = None, []
    for t in range(32):
        step_logits, state = model.decode_step(idx[:, t : t + 1], state)
        streamed.append(step_logits)
    torch.testing.assert_close(torch.stack(streamed, 1), logits, atol=1e-5, rtol=0)


# ----- cached decoding: each step costs one byte's work and computes what the forward pass does


def streamed_logits(model: QLLM, idx: torch.Tensor) -> torch.Tensor:
    """Uncached logits (B, T, V) at every position of a stream of any length. Recurrent
    globals: segment by segment through ``model.segment``, the memory carried past
    block_size; otherwise the forward pass on the last block_size bytes, as uncached
    sampling crops."""
    B, T = idx.shape
    block = model.config.block_size
    if model.config.globals != "recurrent":
        rows = [model(idx[:, max(0, t + 1 - block) : t + 1])[0][:, -1] for t in range(T)]
        return torch.stack(rows, 1)
    memory, hidden = model.initial_memory(B), []
    for start in range(0, T, model.S):
        write = model.carry and start + model.S < T
        h, new_memory = model.segment(idx[:, start : start + model.S], memory, write)
        hidden.append(h)
        memory = new_memory if write else memory
    return model.lm_head(model.ln_f(torch.cat(hidden, dim=1)))


CACHED_SETTINGS = [
    dict(globals="recurrent"),
    dict(globals="recurrent", phase_per_position=True),
    dict(globals="recurrent", phase_per_position=True, phase_at="embeddings"),
    dict(globals="recurrent", segment_memory="reset", phase="gain", bias=True),
    dict(globals="recurrent", segment_memory="none"),
    dict(globals="recurrent", segment_len=5, lora_rank=2, tie_head=False),
    dict(globals="seed", phase="gain"),
    dict(globals="seed", phase_per_position=True),
    dict(globals="seed", phase="gain", phase_at="embeddings", tie_head=False, bias=True),
    dict(globals="off", phase_per_position=True),
]


@pytest.mark.parametrize("kw", CACHED_SETTINGS, ids=lambda kw: "-".join(map(str, kw.values())))
@pytest.mark.parametrize("prefill, chunk", [(1, 1), (5, 1), (3, 5), (13, 7)])
def test_cached_decoding_equals_the_uncached_forward(kw, prefill, chunk):
    """Byte by byte and in chunks that straddle segment boundaries, over 40 bytes (past
    block_size 24 and across five segments of 8): the logits of the uncached computation
    at every position fed, for every globals setting."""
    model = tiny(**kw)
    idx = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(7))
    expected = streamed_logits(model, idx)
    if model.config.globals == "recurrent":  # within the block: the forward pass itself
        torch.testing.assert_close(expected[:, :24], model(idx[:, :24])[0], atol=1e-5, rtol=0)
    logits, state = model.decode_step(idx[:, :prefill], None)
    steps, ends = [logits], [prefill]
    for t in range(prefill, 40, chunk):
        logits, state = model.decode_step(idx[:, t : t + chunk], state)
        steps.append(logits)
        ends.append(min(t + chunk, 40))
    got = torch.stack(steps, 1)
    torch.testing.assert_close(got, expected[:, [e - 1 for e in ends]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", CACHED_SETTINGS, ids=lambda kw: "-".join(map(str, kw.values())))
def test_one_byte_steps_equal_the_general_path(kw):
    """A one-byte step in eval mode (``Block.step``: q, k, v as one product, a phase the same
    at every position folded into it, LoRA merged) gives the logits of the general path
    (taken in train mode, dropout 0), byte by byte past block_size, with non-trivial phases
    and adapters; and every layer of every such step takes it."""
    import physllm.qllm.model as qllm_model

    model = tiny(**kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):  # zero at init: the merge would go untested
                p.normal_(0, 0.1)
    idx = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(10))
    fast = one_query = 0

    def counted(*args):
        nonlocal fast
        fast += 1
        return one_query(*args)

    def stream(train: bool) -> torch.Tensor:
        model.train(train)
        state, rows = None, []
        for t in range(idx.size(1)):
            logits, state = model.decode_step(idx[:, t : t + 1], state)
            rows.append(logits)
        return torch.stack(rows, 1)

    one_query = qllm_model.one_query_attention
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qllm_model, "one_query_attention", counted)
        general = stream(train=True)
        assert fast == 0
        steps = stream(train=False)
    torch.testing.assert_close(steps, general, atol=1e-5, rtol=0)
    assert fast >= model.config.n_layer * 20  # the first byte and re-encodings aside


FOLD_SETTINGS = [
    dict(),
    dict(phase="gain", bias=True),
    dict(phase="none"),
    dict(globals="seed"),
    dict(lora_rank=2, lora_train_base=True),
]


@pytest.mark.parametrize("kw", FOLD_SETTINGS, ids=lambda kw: "-".join(map(str, kw.values())))
def test_training_folds_the_phase_into_one_qkv_product_exactly(kw):
    """In training a phase the same at every position lives inside q, k, v's weights (one
    product per token, made once per forward pass): the loss and every gradient equal the
    rotate-then-three-products path (in float64: the adapters' scale amplifies float32
    rounding); q's own layer is not called."""
    import physllm.qllm.model as qllm_model

    model = tiny(**kw).double().train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)
    idx = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
    calls = []
    model.blocks[0].attn.q.register_forward_hook(lambda *_: calls.append(1))

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        _, loss = model(idx, idx)
        loss.backward()
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    folded, folded_grads = loss_and_grads()
    assert not calls
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qllm_model.Block, "folded_qkv", lambda self: None)
        general, general_grads = loss_and_grads()
    assert calls
    torch.testing.assert_close(folded, general, atol=1e-12, rtol=0)
    assert folded_grads.keys() == general_grads.keys()
    for name, grad in general_grads.items():
        torch.testing.assert_close(folded_grads[name], grad, atol=1e-11, rtol=0, msg=name)


def test_a_per_position_phase_or_lora_dropout_does_not_fold():
    """A per-position phase is no weight, nor are adapters with dropout on their input while
    training: those blocks keep the rotate-then-project path."""
    assert tiny(phase_per_position=True).train().blocks[0].folded_qkv() is None
    dropped = tiny(lora_rank=2, lora_dropout=0.1)
    assert dropped.train().blocks[0].folded_qkv() is None
    assert dropped.eval().blocks[0].folded_qkv() is not None


@pytest.mark.parametrize("kw", [dict(globals="recurrent"), dict(globals="seed")])
def test_a_cached_step_attends_with_one_query(kw):
    """After the prefill every attention call of a step has one query (the new byte) over
    the cached keys, filled in place; recurrent globals add, once per segment, the G read
    globals (when a segment opens) and the G write globals (when the full one closes)."""
    model = tiny(**kw)
    G, S, L = model.G, model.S, model.config.n_layer
    idx = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(8))
    queries: list[tuple[int, int]] = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        queries.append((q.size(2), k.size(2)))
        return sdpa(q, k, v, **kwargs)

    _, state = model.decode_step(idx[:, :3], None)
    buffers = [c.k.data_ptr() for c in state["caches"]]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "scaled_dot_product_attention", spy)
        for t in range(3, 24):
            queries.clear()
            _, state = model.decode_step(idx[:, t : t + 1], state)
            if kw["globals"] == "seed" or t % S:  # inside a segment: one query per layer
                assert queries == [(1, G + t % S + 1)] * L, t
            else:  # a segment closed (write: G queries over G + S + G keys) and one opened
                assert queries == [(G, 2 * G + S)] * L + [(G, G)] * L + [(1, G + 1)] * L, t
                buffers = [c.k.data_ptr() for c in state["caches"]]
            assert [c.k.data_ptr() for c in state["caches"]] == buffers  # filled in place


@pytest.mark.parametrize("globals_", ["recurrent", "seed", "off"])
def test_cached_greedy_generation_is_unchanged(globals_):
    """``generate`` through the cache picks the bytes greedy decoding on the uncached
    logits picks, past block_size too."""
    model = tiny(globals=globals_)
    prompt = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(9))
    out = generate(model, prompt, 30, temperature=0)
    ids = prompt
    for _ in range(30):
        ids = torch.cat([ids, streamed_logits(model, ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
