"""QLLM: phase forms, causality with both global modes, recurrent memory, LoRA, sampling."""

from __future__ import annotations

import json
import math

import pytest
import torch

from physllm.errors import PhysllmError
from physllm.lora import LoRALinear, merge_lora
from physllm.models import build_model
from physllm.qllm.model import (
    QLLM,
    PhaseGain,
    PhaseRotation,
    QLLMConfig,
    coherence_loss,
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
        dict(globals="recurrent", phase="rotation"),
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
    """The seed's globals see only each other: their states ignore the text."""
    model = tiny(globals="seed")
    G, mem = model.G, model.initial_memory(1)
    mask = window_mask(G, 24, write=False)

    def global_states(idx):
        x = torch.cat([mem, model.wte(idx) + model.wpe(torch.arange(24))], dim=1)
        for block in model.blocks:
            x = block(x, mask)
        return x[:, :G]

    a = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(global_states(a), global_states(255 - a), atol=1e-6, rtol=0)


@pytest.mark.parametrize("globals_", ["recurrent", "seed", "off"])
def test_decode_step_matches_forward(globals_):
    model = tiny(globals=globals_)
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
