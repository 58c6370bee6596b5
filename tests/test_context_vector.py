"""context_vector (New-LLM): the scan, streaming, constant state, forms, bench --mode generate."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from physllm.bench import BenchConfig, measure_generation
from physllm.context_vector.fused import HiddenGatedLoop
from physllm.context_vector.model import (
    SCAN_CHUNK,
    ContextLayer,
    ContextVectorConfig,
    ContextVectorModel,
    LinearScan,
    chunked_scan,
    linear_scan,
    sequential_scan,
)
from physllm.errors import PhysllmError
from physllm.gpt import GPT, GPTConfig
from physllm.models import build_model, match_field
from physllm.training import make_config

from .conftest import REPO

TINY = dict(vocab_size=40, n_embd=16, n_hidden=32, n_context=12)
VARIANTS = [
    dict(form="seed"),
    dict(form="fixed"),
    dict(form="fixed", gates="input"),
    dict(form="seed", n_layer=2, ffn_depth=2),
    dict(form="fixed", gates="input", n_layer=3, ffn_depth=2),
]


def tiny(**kw) -> ContextVectorModel:
    torch.manual_seed(0)
    return ContextVectorModel(ContextVectorConfig(**{**TINY, **kw})).eval()


@pytest.mark.parametrize("T", [1, 2, 7, 64, 1000])
def test_parallel_scan_equals_the_sequential_loop(T):
    torch.manual_seed(T)
    a = torch.rand(3, T, 5)  # gates in (0, 1)
    b = torch.randn(3, T, 5)
    c0 = torch.randn(3, 5)
    assert (linear_scan(a, b, c0) - sequential_scan(a, b, c0)).abs().max() < 1e-5


@pytest.mark.parametrize("T, chunk", [(5, 8), (64, 8), (100, 8), (1000, 64), (513, 64)])
def test_chunked_scan_equals_the_sequential_loop(T, chunk):
    """Chunks in parallel, the state carried across them: the loop's states, whole chunks
    or a ragged last one, with gates near 1 (long memory) and near 0 (products underflow)."""
    torch.manual_seed(T)
    for a in (0.9 + 0.1 * torch.rand(2, T, 4), 0.01 * torch.rand(2, T, 4)):
        b, c0 = torch.randn(2, T, 4), torch.randn(2, 4)
        expected = sequential_scan(a, b, c0)
        assert (chunked_scan(a, b, c0, chunk) - expected).abs().max() < 1e-4
    assert SCAN_CHUNK * 8 <= 1000  # the 1000-step cases above go through the chunks


@pytest.mark.parametrize("T", [1, 2, 50, 300, 600])
def test_scan_gradients_equal_the_loop(T):
    """The model's scan (LinearScan: the gradient as a scan backwards in time) and autograd
    through linear_scan give the loop's gradients, for a, b and the initial state (at 600
    steps through the chunked scan, forward and backward)."""
    torch.manual_seed(T)
    a = torch.rand(2, T, 4, requires_grad=True)
    b = torch.randn(2, T, 4, requires_grad=True)
    c0 = torch.randn(2, 4, requires_grad=True)
    weight = torch.randn(2, T, 4)  # so that every state's gradient differs
    grads = []
    for scan in (LinearScan.apply, linear_scan, sequential_scan):
        out = scan(a, b, c0)
        (weight * out).sum().backward()
        grads.append((out.detach(), a.grad.clone(), b.grad.clone(), c0.grad.clone()))
        a.grad, b.grad, c0.grad = None, None, None
    for got in grads[:2]:
        for x, ref in zip(got, grads[2], strict=True):
            assert (x - ref).abs().max() < 1e-4


def test_linear_scan_function_passes_gradcheck():
    torch.manual_seed(0)
    a = torch.rand(2, 9, 3, dtype=torch.double, requires_grad=True)
    b = torch.randn(2, 9, 3, dtype=torch.double, requires_grad=True)
    c0 = torch.randn(2, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(LinearScan.apply, (a, b, c0))


@pytest.mark.parametrize("kw", VARIANTS, ids=str)
def test_streaming_one_token_at_a_time_equals_the_block_forward(kw):
    model = tiny(**kw)
    x = torch.randint(0, 40, (2, 30))
    full, _ = model(x)
    state, steps = None, []
    for t in range(30):
        logits, state = model.decode_step(x[:, t : t + 1], state)
        steps.append(logits)
    assert (torch.stack(steps, dim=1) - full).abs().max() < 1e-5
    # a prompt then single tokens: the same again
    logits, state = model.decode_step(x[:, :17], None)
    for t in range(17, 30):
        logits, state = model.decode_step(x[:, t : t + 1], state)
    assert (logits - full[:, -1]).abs().max() < 1e-5


# --------------------------------------------------------------------------- the fused loop


def reference_loop(layer: ContextLayer, x, c, masks=None):
    """The hidden-gated layer as it was before :mod:`physllm.context_vector.fused`: one
    autograd node per op and token. ``masks``: one dropout mask (T, B, H) per site."""
    fnn, cfg = layer.fnn, layer.cfg
    drop = (lambda h, k, t: h) if masks is None else (lambda h, k, t: h * masks[k][t])
    xw = fnn.input_part(x)
    hs = []
    for t in range(x.size(1)):
        h = xw[:, t] + F.linear(c, fnn.inp.weight[:, fnn.d_in :])
        if cfg.form == "seed":
            h = drop(F.relu(h), 0, t)
            for k, linear in enumerate(fnn.rest, start=1):
                h = drop(F.relu(linear(h)), k, t)
        else:
            for k, block in enumerate(fnn.blocks):
                h = h + drop(block(h), k, t)
            h = fnn.ln_out(h)
        f, i, d = layer.update(h).chunk(3, dim=-1)
        d = d if cfg.form == "seed" else torch.tanh(d)
        c = layer.ln_state(torch.sigmoid(f) * c + torch.sigmoid(i) * d)
        if cfg.form == "seed":
            c = c.clamp(-cfg.clamp, cfg.clamp)
        hs.append(h)
    return torch.stack(hs, dim=1), c


def outputs_and_grads(model, x, y, state, layer_fn=None):
    """Logits, last states and the gradients of every parameter and initial state of a loss
    on both the logits and the last states; ``layer_fn`` replaces the layers' forward."""
    model.zero_grad()
    state = [s.clone().requires_grad_() for s in state]
    forward = ContextLayer.forward
    if layer_fn is not None:
        ContextLayer.forward = lambda layer, x, c, trace=None: layer_fn(layer, x, c)
    try:
        logits, last = model.run(x, state)
    finally:
        ContextLayer.forward = forward
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()) + sum((c * c).sum() for c in last)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    grads.update({f"state{k}": s.grad for k, s in enumerate(state)})
    return [logits, *last], grads


HIDDEN = [
    dict(form="seed"),
    dict(form="fixed"),
    dict(form="seed", n_layer=2, ffn_depth=3),
    dict(form="fixed", n_layer=2, ffn_depth=2),
    dict(form="seed", n_context=400, big_gain=True),  # the clamp bites
]


@pytest.mark.parametrize(
    "kw, dtype",
    [(kw, torch.float32) for kw in HIDDEN[:4]] + [(kw, torch.float64) for kw in HIDDEN],
    ids=str,
)
def test_fused_hidden_loop_equals_the_reference_loop(kw, dtype):
    """Values and gradients (of every weight and of the initial states) equal the reference
    loop's. With big LayerNorm gains the recurrence is chaotic (a 1e-7 change of the state
    moves the logits by 0.1 in float32), so that case is compared in float64."""
    kw = dict(kw)
    big_gain = kw.pop("big_gain", False)
    model = tiny(**kw).train().to(dtype)
    with torch.no_grad():  # away from the init's symmetries (zero biases, unit gains)
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
        if big_gain:
            for layer in model.layers:
                layer.ln_state.weight.fill_(5.0)
    x, y = torch.randint(0, 40, (3, 21)), torch.randint(0, 40, (3, 21))
    state = [torch.randn(3, model.config.n_context, dtype=dtype) for _ in model.layers]
    fused, fused_grads = outputs_and_grads(model, x, y, state)
    ref, ref_grads = outputs_and_grads(model, x, y, state, reference_loop)
    if big_gain:
        assert ref[-1].abs().max().item() == pytest.approx(10.0)
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    for a, b in zip(fused, ref, strict=True):
        assert (a - b).abs().max() < tol
    assert fused_grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        scale = max(1.0, g.abs().max().item())
        assert (fused_grads[name] - g).abs().max() < tol * scale, name


@pytest.mark.parametrize("form", ["seed", "fixed"])
def test_fused_dropout_masks_are_the_references(form):
    """Dropout draws a mask per site for all steps up front; given the same masks the
    fused loop is the reference loop, values and gradients."""
    model = tiny(form=form, ffn_depth=2, dropout=0.3).train().double()
    layer = model.layers[0]
    x = torch.randn(2, 9, 16, dtype=torch.double)
    masks = [(torch.rand(9, 2, 32) > 0.3).double() / 0.7 for _ in range(2)]
    spec, _, args = fused_arguments(layer, x, torch.randn(2, 12, dtype=torch.double))
    leaves = [a.detach().requires_grad_() for a in args]
    h, c = HiddenGatedLoop.apply(spec, masks, *leaves)
    ((h * h).sum() + (c * c).sum()).backward()

    c0 = args[1].detach().requires_grad_()
    hr, cr = reference_loop(layer, x, c0, masks)
    ((hr * hr).sum() + (cr * cr).sum()).backward()
    assert (h - hr).abs().max() < 1e-9 and (c - cr).abs().max() < 1e-9
    assert (leaves[1].grad - c0.grad).abs().max() < 1e-9
    d_in = layer.fnn.d_in
    assert (leaves[2].grad - layer.fnn.inp.weight.grad[:, d_in:]).abs().max() < 1e-9
    assert (leaves[3].grad - layer.update.weight.grad).abs().max() < 1e-9
    # the layer draws its own masks in training, none in eval
    zeros = torch.zeros(2, 12, dtype=torch.double)
    assert not torch.equal(layer(x, zeros)[0], layer(x, zeros)[0])
    layer.eval()
    assert torch.equal(layer(x, zeros)[0], layer(x, zeros)[0])
    assert (layer(x, zeros)[0] - reference_loop(layer, x, zeros)[0]).abs().max() < 1e-9


def fused_arguments(layer, x, c):
    """The (spec, masks, tensors) ``ContextLayer._fused`` hands to HiddenGatedLoop."""
    captured = {}
    apply = HiddenGatedLoop.apply
    HiddenGatedLoop.apply = lambda spec, masks, *args: (
        captured.update(spec=spec, masks=masks, args=args) or (args[0], args[1])
    )
    try:
        layer._fused(x, c)
    finally:
        HiddenGatedLoop.apply = apply
    return captured["spec"], captured["masks"], list(captured["args"])


@pytest.mark.parametrize("form", ["seed", "fixed"])
def test_fused_loop_passes_gradcheck(form):
    torch.manual_seed(0)
    cfg = ContextVectorConfig(**{**TINY, "n_hidden": 6, "n_context": 4, "n_embd": 5}, form=form)
    layer = ContextLayer(5, cfg).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    spec, _, args = fused_arguments(layer, torch.randn(2, 4, 5).double(), torch.zeros(2, 4))
    args = [a.detach().double().requires_grad_() for a in args]
    args[1] = torch.randn(2, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: HiddenGatedLoop.apply(spec, None, *a), args)


def test_trace_reads_the_states_the_fused_forward_carries():
    model = tiny(n_layer=2)
    x = torch.randint(0, 40, (2, 11))
    _, state = model.run(x)
    trace = model.trace(x)
    for layer_trace, c in zip(trace, state, strict=True):
        assert (layer_trace["context"][:, -1] - c).abs().max() < 1e-6


@pytest.mark.parametrize("kw", VARIANTS[:3], ids=str)
def test_the_state_has_the_same_size_whatever_the_length(kw):
    model = tiny(**kw)
    _, short = model.decode_step(torch.randint(0, 40, (1, 5)), None)
    _, long = model.decode_step(torch.randint(0, 40, (1, 2000)), None)
    assert [s.shape for s in short] == [s.shape for s in long] == [(1, 12)] * model.config.n_layer


def test_no_positions_and_no_attention():
    model = tiny()
    names = [n for n, _ in model.named_parameters()]
    assert not any("wpe" in n or "attn" in n for n in names)
    # the context is the only path between tokens: with it zeroed every step,
    # a token's logits do not depend on what came before.
    x = torch.randint(0, 40, (1, 10))
    y = x.clone()
    y[0, :9] = torch.randint(0, 40, (9,))
    la, _ = model.decode_step(x[:, -1:], None)
    lb, _ = model.decode_step(y[:, -1:], None)
    assert torch.equal(la, lb)
    full_x, _ = model(x)
    full_y, _ = model(y)
    assert not torch.allclose(full_x[0, -1], full_y[0, -1])


def test_seed_form_is_the_seeds_code():
    seed, fixed = tiny(form="seed"), tiny(form="fixed")
    assert not hasattr(seed.layers[0].fnn, "ln_x") and hasattr(fixed.layers[0].fnn, "ln_x")
    assert not any(isinstance(m, torch.nn.GELU) for m in seed.modules())
    # the seed's LayerNorm'ed context is clamped to +-10; big LayerNorm gains make it bite
    big = tiny(form="seed", n_context=400)
    with torch.no_grad():
        big.layers[0].ln_state.weight.fill_(5.0)
    trace = big.trace(torch.randint(0, 40, (1, 20)))
    assert trace[0]["context"].abs().max() == pytest.approx(10.0)
    # fixed form: the forget gate starts open (bias +1)
    C = fixed.config.n_context
    assert torch.all(fixed.layers[0].update.bias[:C] == 1.0)
    with pytest.raises(PhysllmError, match="fixed"):
        ContextVectorConfig(form="seed", gates="input")
    with pytest.raises(PhysllmError, match="gates"):
        make_config("context_vector", gates="nope")


def test_trace_shapes_and_gate_ranges():
    model = tiny(n_layer=2)
    trace = model.trace(torch.randint(0, 40, (2, 9)))
    assert len(trace) == 2
    for layer in trace:
        for key in ("context", "forget", "input"):
            assert layer[key].shape == (2, 9, 12)
        assert 0 < layer["forget"].min() and layer["forget"].max() < 1


@pytest.mark.parametrize("kw", [dict(form="seed"), dict(gates="input")], ids=str)
def test_learns_a_fixed_batch(kw):
    torch.manual_seed(0)
    model = ContextVectorModel(ContextVectorConfig(**{**TINY, **kw}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 40, (4, 32))
    y = torch.roll(x, -1, dims=1)
    first = None
    for _ in range(60):
        _, loss = model(x, y)
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_matched_sizes():
    cfg = dict(vocab_size=65, block_size=64, n_embd=128, n_hidden=256, n_context=128)
    target = ContextVectorModel(ContextVectorConfig(form="seed", **cfg)).num_params()
    gpt_cfg = dict(vocab_size=65, block_size=64, n_layer=4, n_head=4)
    gpt = GPT(GPTConfig(**gpt_cfg, n_embd=match_field("gpt", gpt_cfg, "n_embd", target)))
    assert abs(gpt.num_params() - target) / target < 0.15
    h = match_field("context_vector", {**cfg, "gates": "input"}, "n_hidden", target)
    scan = ContextVectorModel(ContextVectorConfig(gates="input", **{**cfg, "n_hidden": h}))
    assert abs(scan.num_params() - target) / target < 0.1


def test_presets_build():
    for preset in ("cpu", "gpu"):
        cfg = make_config("context_vector", preset)
        assert cfg.model_config.form == "seed"
    assert make_config("context_vector", "gpu").model_config.n_context == 256
    model = build_model("context_vector", dict(vocab_size=65, block_size=64))
    assert isinstance(model, ContextVectorModel)


def test_generation_bench_state_is_constant_for_context_vector_and_grows_for_gpt():
    cfg = BenchConfig(
        n_layer=1, n_head=1, n_embd=16, vocab_size=32, block_size=600, timed_tokens=8, threads=1
    )
    rows = {}
    for spec in ("gpt", "context_vector:n_hidden=32+n_context=8+gates=input"):
        for length in (100, 600):
            cfg.lengths = str(length)
            rows[spec.split(":")[0], length] = measure_generation(spec, cfg)
    cv100, cv600 = rows["context_vector", 100], rows["context_vector", 600]
    assert cv100["state_kb"] == cv600["state_kb"] == 8 * 4 / 1024
    assert rows["gpt", 600]["state_kb"] > 5 * rows["gpt", 100]["state_kb"]
    assert cv600["timed_tokens"] == 7 and cv600["tokens_per_sec"] > 0


def test_bench_cli_generate_mode():
    proc = subprocess.run(
        [sys.executable, "-m", "physllm", "bench", "--mode", "generate"]
        + ["--models", "gpt,context_vector:gates=input", "--lengths", "64,256"]
        + ["--timed-tokens", "8", "--repeats", "1", "--n-layer", "1", "--n-embd", "16"]
        + ["--n-head", "1", "--vocab-size", "32", "--threads", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith("#")]
    assert len(lines) == 5 and "growth" in lines[0]  # header + 2 models x 2 lengths
    assert lines[0].split()[4:6] == ["x", "gpt"]  # tokens/s over gpt's at the same length
    table = {
        (c[0], c[1]): (float(c[3].replace(",", "")), float(c[4])) for c in map(str.split, lines[1:])
    }
    for length in ("64", "256"):
        gpt, cv = table["gpt", length], table["context_vector:gates=input", length]
        assert gpt[1] == 1.0 and cv[1] == pytest.approx(cv[0] / gpt[0], abs=0.01 + 1 / gpt[0])
    bad = subprocess.run(
        [sys.executable, "-m", "physllm", "bench", "--mode", "nosuch"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "mode" in bad.stderr


def test_notebook_runs_with_few_steps(run_notebook):
    import json

    from .conftest import shakespeare_available

    _, out = run_notebook(
        "02_context_vector",
        steps=20,
        bench_lengths="256,1024",
        bench_timed_tokens=16,
        chat_steps=10,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "context_vector" and metrics["steps"] == 20
    assert metrics["notebook"] == "02_context_vector"
    assert {"seed", "scan", "gpt"} <= set(metrics["runs"])
    assert ("chat" in metrics["runs"]) == shakespeare_available()
    assert metrics["streaming_mem_growth_context_vector"] < 1.05
    assert (
        metrics["streaming"]["gpt@1024"]["state_kb"] > metrics["streaming"]["gpt@256"]["state_kb"]
    )
    window, full = metrics["streaming"]["gpt_window@1024"], metrics["streaming"]["gpt@1024"]
    assert (
        window["state_kb"] < full["state_kb"] / 3 and metrics["streaming_mem_growth_gpt_window"] > 0
    )
    for name in ("loss_curves", "context_heatmap", "gate_stats", "streaming_bench"):
        assert (out / f"{name}.png").exists()
    assert (out / "hf" / "config.json").exists() and (out / "hf" / "tokenizer.json").exists()
