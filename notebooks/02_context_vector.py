# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · New-LLM: a context vector instead of attention
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/physllm/physllm/blob/main/notebooks/02_context_vector.ipynb)
#
# The seed project *New-LLM* drops attention and positions altogether: each
# token reads one fixed-size **context vector** left by the token before it,
# and writes the next one through LSTM-like gates. Memory at inference is then
# constant whatever the length of the text. This notebook derives the
# recurrence, shows the code, trains the seed's form, a repaired form and a
# fast variant whose recurrence is linear (so it trains with a parallel scan)
# next to a vanilla GPT of the same size, looks inside the context vector, measures streaming
# generation to 64k tokens against GPT's growing key/value cache, and ends
# with the HF transformers wrapper and a chat demo.
#
# What the seed's code did, and what we changed, is in
# `physllm/context_vector/model.py`'s docstring: `form="seed"` reproduces it
# (Linear+ReLU FNN without residuals, no tanh on the delta, context clamped to
# +-10); `form="fixed"` is the repaired form; `gates="input"` is the scan
# variant.

# %%
# Setup: on Colab, install the repository; anywhere else it is already installed.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+https://github.com/physllm/physllm"], check=True)

# %% tags=["parameters"]
steps = None  # None: the preset's number of optimizer steps (every model trains this many)
preset = "auto"  # "cpu" (about 3 minutes on 2 cores), "gpu" (the seed's scale); auto: gpu when CUDA is available
corpus = "default"  # "default": TinyShakespeare if on disk, else the offline pydocs corpus (gpu preset: its own)
tokenizer = "char"  # (gpu preset: its own)
device = "auto"
seed = 1337
out_dir = "runs/02_context_vector"
variants = "seed,fixed,scan,seed_windows,scan_windows"  # runs besides gpt: seed (the preset), fixed (fixed form, a loop), scan (input gates); *_windows: the same trained on random windows (no state carried)
bench_lengths = "1024,8192,65536"  # streaming benchmark: context lengths
bench_timed_tokens = 128  # tokens generated one at a time and timed at each length
bench_window = 256  # the sliding-window GPT's attention window in the streaming benchmark
chat_steps = 150  # steps of the chat demo's model (0: skip the chat demo)
threads = 0  # torch CPU threads of this kernel and of the gap grid's runs (0: torch's default)
gap_seeds = 0  # > 0: the headline gaps over this many new seeds at tuned rates (the committed report: 5)
gap_lrs = "3e-4,1e-3,3e-3,1e-2"  # the learning rates every model of the gap grid is tried at
gap_variants = "seed,fixed"  # the variants the gap grid runs beside gpt (each costs 6 runs)

# %%
# NBVAL_IGNORE_OUTPUT
import pandas as pd
import torch

from physllm.analysis import loss_table, plot_loss_curves, save_figure
from physllm.context_vector.analysis import (
    gate_summary,
    plot_context_heatmap,
    plot_gate_stats,
    plot_streaming_bench,
)
from physllm.context_vector.model import (
    FNN,
    ContextLayer,
    ContextVectorModel,
    linear_scan,
    sequential_scan,
)
from physllm.models import match_field
from physllm.notebook import (
    corpus_notice,
    headline_gaps,
    headline_metrics,
    resolve_out_dir,
    setup,
    show_source,
    write_metrics,
)
from physllm.training import (
    StreamSource,
    evaluate_loss,
    get_preset,
    make_config,
    matched_baseline,
    train,
)

preset, device = setup(seed=seed, preset=preset, device=device, threads=threads)
out_dir = resolve_out_dir(out_dir)
print(f"preset={preset} device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
print(corpus_notice(corpus if preset == "cpu" else get_preset("context_vector", preset)["corpus"]))

# %% [markdown]
# ## 1. The recurrence
#
# A GPT predicts token $t+1$ from an attention-weighted average over *all*
# earlier tokens, so generating token $t$ needs the keys and values of the
# $t-1$ tokens before it: memory and time per token grow with $t$. New-LLM
# keeps instead one vector $c_t \in \mathbb{R}^C$ per layer, updated once per
# token:
#
# $$
# \begin{aligned}
# h_t &= \mathrm{FNN}([x_t;\, c_{t-1}]) && \text{hidden state, } \text{logits}_t = W_o h_t\\
# f_t &= \sigma(W_f h_t),\quad i_t = \sigma(W_i h_t) && \text{forget and input gates}\\
# \delta_t &= \tanh(W_c h_t) && \text{proposed change, bounded}\\
# c_t &= \mathrm{LayerNorm}(f_t \odot c_{t-1} + i_t \odot \delta_t) && \text{new context}
# \end{aligned}
# $$
#
# with $c_{-1} = 0$. There are no positional embeddings: order exists only as
# the order of the updates.
#
# **Why memory is constant.** Everything the model knows about tokens
# $\le t$ is $c_t$: $n_\text{layer} \times C$ numbers. Generating one more
# token costs one FNN evaluation and one gate update, the same at token 10
# and token 100 000. A GPT's cache is $2 \times n_\text{layer} \times t \times d$
# numbers and each step attends over all $t$ of them.
#
# **What is lost against attention.** The same thing: the past is squeezed
# through $C$ numbers, and what the gates dropped cannot be looked up again
# (attention can re-read any token exactly, whenever it becomes relevant).
# The gradient to a token $k$ steps back passes through $k$ gate products
# $\prod f$, so it fades unless the forget gates stay near 1 (the reason the
# fixed form starts them at $\sigma(1) \approx 0.73$, and the LSTM habit).
# And training is sequential: $T$ dependent steps per block, where attention
# handles all positions in one parallel pass.
#
# **The scan variant** (`gates="input"`). If the gates and the delta read
# only the layer's input $x_t$ (not $h_t$, which depends on $c_{t-1}$), then
#
# $$ c_t = a_t \odot c_{t-1} + b_t, \qquad a_t = f(x_t),\; b_t = i(x_t) \odot \delta(x_t) $$
#
# is linear in $c$. Two steps compose into one step of the same form,
# $(a_1, b_1) \circ (a_2, b_2) = (a_2 a_1,\; a_2 b_1 + b_2)$, and this
# composition is associative, so all $T$ prefixes come out of a parallel
# (Hillis–Steele) scan in $\lceil \log_2 T \rceil$ vectorised rounds instead
# of $T$ sequential steps. Each round sweeps all $T$ positions ($T \log T$ work),
# so past 8 chunks of 64 the scan runs chunk by chunk: within each chunk in
# parallel from a zero state, giving $s_t$ and the gates' running product $P_t$,
# then $c_t = s_t + P_t\, c_{\mathrm{in}}$ carries the state across chunks
# ($T \log 64$ work). At equal wall-clock this variant's validation loss is lower
# than the hidden-gated loop's (`reports/choices/context_vector_gates_cpu`,
# `python -m physllm choose`); the leaderboard keeps the loop for now, since gates
# that read the 128-wide input cannot be shrunk to GPT's size at the probes' width 32.
# A LayerNorm on $c_t$ would break the linearity,
# so this variant carries the raw state (bounded anyway: $|c_t| \le
# \max|\delta| / (1 - \max f)$) and normalises what the FNN *reads*:
# $h_t = \mathrm{FNN}([x_t;\, \mathrm{LN}(c_{t-1})])$.

# %% [markdown]
# ## 2. The code
#
# One layer. The first Linear of the FNN acts on $[x_t; c_{t-1}]$, which is
# $W_x x_t + W_c c_{t-1}$: the $x$ half runs for all positions at once and
# only the $c$ half sits in the loop.

# %%
show_source(FNN)

# %%
show_source(ContextLayer._loop)

# %% [markdown]
# The scan variant: gates from the input, then every state at once.

# %%
show_source(ContextLayer._scan)

# %%
show_source(linear_scan)

# %% [markdown]
# Checks. The parallel scan equals the step-by-step loop over 4096 tokens, and
# for every form, streaming one token at a time through `decode_step`
# (generation) gives the logits of the full-block forward (training).

# %%
torch.manual_seed(0)
a, b, c0 = torch.rand(2, 4096, 16), torch.randn(2, 4096, 16), torch.randn(2, 16)
scan_err = (linear_scan(a, b, c0) - sequential_scan(a, b, c0)).abs().max().item()
print("scan == loop (max abs diff < 1e-5):", scan_err < 1e-5)
assert scan_err < 1e-5

from physllm.context_vector.model import ContextVectorConfig

for form, gates in [("seed", "hidden"), ("fixed", "hidden"), ("fixed", "input")]:
    torch.manual_seed(0)
    m = ContextVectorModel(ContextVectorConfig(vocab_size=50, n_embd=32, n_hidden=64, n_context=16, n_layer=2, form=form, gates=gates)).eval()
    x = torch.randint(0, 50, (1, 200))
    full, _ = m(x)
    state, steps_ = None, []
    for t in range(x.size(1)):
        logits, state = m.decode_step(x[:, t : t + 1], state)
        steps_.append(logits)
    err = (torch.stack(steps_, 1) - full).abs().max().item()
    sizes = [tuple(s.shape) for s in state]
    print(f"{form:>5}/{gates:<6} streaming == block: {err < 1e-5}; state after 200 tokens: {sizes}")
    assert err < 1e-5

# %% [markdown]
# ## 3. Training: the seed's form, the fixed form, the scan variant and GPT at matched size
#
# All runs use the same trainer, data, batch, block and steps (the preset's).
# The `cpu` preset is the seed's model scaled to nanoGPT's Shakespeare-char
# CPU recipe: embedding 128, hidden 256, context 128, one layer, block 64,
# batch 12. The other runs change one thing each: `fixed` is the repaired
# form (normalised embedding, residual GELU FNN, tanh delta, open forget
# gates, no clamp), `scan` is the fixed form with input-only gates trained by
# the parallel scan. Their hidden widths and GPT's width are chosen so all
# have about the same number of parameters, and all share one thread (the
# preset's: the loop is many tiny operations, where more threads only add
# synchronisation).
#
# **Truncated backpropagation through time.** The preset sets
# `carry_state=True`. This is our training, not the seed's: the seed trained
# on independent samples, each from a zero context, which is what the
# `_windows` rows below do. With it the trainer cuts the corpus
# into `batch_size` segments, one per batch row, and each optimizer step reads
# the *next* block of every segment (`physllm.data.StreamSampler`), starting
# from the context the previous step left (detached, so the gradient stops at
# the block boundary; the forward pass still sees the whole stream, as
# generation does):
#
# $$
# c^{(k+1)}_{-1} = \mathrm{stopgrad}ig(c^{(k)}_{T-1}ig)
# $$
#
# Validation is read the same way (consecutive blocks, state carried).
# `seed_windows` and `scan_windows` train the same models on nanoGPT's random
# windows instead, each from a zero context; section 4 scores every model on
# identical validation blocks both ways.

# %%
overrides = {"steps": steps} if steps is not None else {}
if preset == "cpu":
    overrides.update(corpus=corpus, tokenizer=tokenizer)
common = dict(device=device, seed=seed, **overrides)
base = make_config("context_vector", preset, out_dir=str(out_dir / "seed"), **common)
mc = base.model_config
print({k: v for k, v in base.to_dict().items() if k in ("corpus", "tokenizer", "steps", "batch_size", "lr")})
print(mc)

# %%
# NBVAL_IGNORE_OUTPUT
results, cfgs = {}, {"seed": base}
results["seed"] = train(base)
V = results["seed"].metrics["vocab_size"]
target = results["seed"].metrics["params"]
# Every other run: the same training settings (corpus, steps, batch, schedule) as the seed run.
train_fields = {k: v for k, v in base.to_dict().items() if k not in ("model", "model_config", "out_dir")}
arch = {**mc.to_dict(), "vocab_size": 0}
configs = {
    "scan": dict(arch, form="fixed", gates="input"),
    "fixed": dict(arch, form="fixed", gates="hidden"),
}
for c in configs.values():  # the FNN width that brings each nearest the seed run's size
    c["n_hidden"] = match_field("context_vector", {**c, "vocab_size": V}, "n_hidden", target)
configs.update(seed_windows=dict(arch, carry_state=False), scan_windows=dict(configs["scan"], carry_state=False))
for name in [v.strip() for v in variants.split(",") if v.strip() not in ("", "seed")]:
    cfgs[name] = make_config("context_vector", None, out_dir=str(out_dir / name), **train_fields, **configs[name])
    results[name] = train(cfgs[name])
# GPT at the seed run's budget and size: its own depth and heads, the width that matches
gpt_cfg = matched_baseline(base, match="n_embd", out_dir=str(out_dir / "gpt"))
results["gpt"] = train(gpt_cfg)
cfgs["gpt"] = gpt_cfg
metrics = {name: r.metrics for name, r in results.items()}
for name, m in metrics.items():
    print(f"{name:<6} {m['params']:>9,} params  val loss {m['val_loss']:.4f}  {m['tokens_per_sec']:>8,.0f} tokens/s (training)")

# %%
# NBVAL_IGNORE_OUTPUT
fig = plot_loss_curves({k: r.history for k, r in results.items()}, title=f"{metrics['seed']['corpus']}, {metrics['seed']['steps']} steps, {metrics['seed']['device']}")
_ = save_figure(fig, out_dir, "loss_curves")
fig = plot_loss_curves({k: r.history for k, r in results.items()}, x="time_s", title="the same runs against training time")
_ = save_figure(fig, out_dir, "loss_vs_time")

# %% [markdown]
# ### The gaps over seeds
#
# Each run above is one seed at the preset's learning rate (2e-3, chosen for
# the context vector, which the GPT baseline inherits). With `gap_seeds` > 0
# (the committed report runs 5), `physllm.experiments.gaps` puts GPT and the
# `gap_variants` through the protocol of notebook 06: every model at each rate
# of `gap_lrs` (seed 0), the rate with the lowest validation loss kept (one
# rule for all), then new seeds at that rate, each run in its own process and
# scored on the whole validation split, each block from a zero state (the
# carried-state loss is in each run's `metrics.json`). The gap to GPT is paired
# by seed with a Student-t 95% interval; these rows are the README's.

# %%
# NBVAL_IGNORE_OUTPUT
gap_names = ["gpt", *[v.strip() for v in gap_variants.split(",") if v.strip() in cfgs]]
headline = headline_gaps({k: cfgs[k] for k in gap_names}, gap_seeds, gap_lrs, out_dir, threads)

# %%
# NBVAL_IGNORE_OUTPUT
table = loss_table(metrics)
table["speed_vs_gpt"] = [m["tokens_per_sec"] / metrics["gpt"]["tokens_per_sec"] for m in metrics.values()]
table

# %%
# NBVAL_IGNORE_OUTPUT
# What the runs say, computed from their metrics.
g = metrics["gpt"]
for name, m in metrics.items():
    if name != "gpt":
        print(f"{name:<6} vs gpt: val loss {m['val_loss'] - g['val_loss']:+.3f} nats, training speed x{m['tokens_per_sec'] / g['tokens_per_sec']:.2f}")
if "scan" in metrics:
    s_, q_ = metrics["seed"], metrics["scan"]
    print(f"scan vs seed loop: training speed x{q_['tokens_per_sec'] / s_['tokens_per_sec']:.2f}, val loss {q_['val_loss'] - s_['val_loss']:+.3f} nats")
print("val loss is read as each run was trained: consecutive blocks with the state carried (carry_state runs), random windows otherwise")

# %% [markdown]
# The context-free baseline (unigram frequencies) tells whether a model uses
# its context at all.

# %%
data = results["seed"].data
unigram_loss = data.unigram_loss()
val_ids = torch.tensor(data.splits["val"][:].astype("int64"))  # the validation text, used below
long_run = metrics["seed"]["steps"] >= 300  # smoke tests (-p steps 20) have had no time to learn
beats = {k: m["val_loss"] < unigram_loss - 0.3 for k, m in metrics.items()}
print("every model beats unigram by > 0.3 nats:", all(beats.values()) or not long_run)
assert all(beats.values()) or not long_run

# %% [markdown]
# ## 4. Carrying the state: in training and at evaluation
#
# Every run, GPT included, is scored here on the *same* validation text: 12
# streams of consecutive blocks (a `StreamSource` read by `evaluate_loss`),
# once restarted at every block (what a random-window model saw in training,
# and all GPT ever sees) and, for the context vectors, once with the state
# handed from block to block (what streaming generation sees). The gap is what
# the carried context buys; comparing a `carry_state` run with its `_windows`
# twin is what truncated BPTT buys; the GPT row is the same blocks' reference.

# %%
# NBVAL_IGNORE_OUTPUT
carry = {}
for name in results:
    model = results[name].model.cpu()
    reset, _ = evaluate_loss(model, StreamSource(model, data, "val", 12, carry=False), 100)
    carried = (evaluate_loss(model, StreamSource(model, data, "val", 12), 100)[0]
               if name != "gpt" else None)  # GPT has no state to carry
    carry[name] = {"trained_with_state": getattr(model.config, "carry_state", False), "carried": carried, "reset": reset}
pd.DataFrame(carry).T.assign(gain_from_state=lambda t: t["reset"] - t["carried"], reset_vs_gpt=lambda t: t["reset"] - t.loc["gpt", "reset"])

# %%
# NBVAL_IGNORE_OUTPUT
for form in ("seed", "scan"):
    if form in carry and f"{form}_windows" in carry:
        a, b = carry[form], carry[f"{form}_windows"]
        print(f"{form}: truncated BPTT vs random windows, both read with the state carried: "
              f"{a['carried']:.4f} vs {b['carried']:.4f} ({a['carried'] - b['carried']:+.4f} nats); "
              f"the carried state is worth {a['reset'] - a['carried']:.4f} vs {b['reset'] - b['carried']:.4f} nats")

# %% [markdown]
# ## 5. Inside the context vector
#
# The first layer's context after each character of a validation line, and
# the gates' statistics over a batch of validation text. A forget gate $f$
# keeps a fraction $f^k$ of a dimension after $k$ tokens: $1/(1-f)$ is that
# dimension's memory horizon in tokens.

# %%
# NBVAL_IGNORE_OUTPUT
tok = results["seed"].tokenizer
text = data.tokenizer.decode(val_ids[:80].tolist())
ids = torch.tensor([tok.encode(text)])
tr = results["seed"].model.trace(ids)[0]
fig = plot_context_heatmap(tr["context"][0], [tok.decode([i]) for i in ids[0].tolist()], title="seed form: context c_t (first layer) over a validation line")
_ = save_figure(fig, out_dir, "context_heatmap")

# %%
# NBVAL_IGNORE_OUTPUT
batch = val_ids[: 16 * mc.block_size].view(16, mc.block_size)
traces = {name: results[name].model.trace(batch)[0] for name in ("seed", "fixed", "scan") if name in results}
gates = {name: gate_summary(t) for name, t in traces.items()}
fig = plot_gate_stats(traces)
_ = save_figure(fig, out_dir, "gate_stats")
for name, g in gates.items():
    print(name, {k: round(v, 3) for k, v in g.items()})

# %% [markdown]
# ## 6. Streaming generation: memory and speed against length
#
# `python -m physllm bench --mode generate` builds a context of each length
# through the model's own cache path (`decode_step`, in chunks), then
# generates `bench_timed_tokens` tokens one at a time and times them; each
# (model, length) runs in a fresh process, and peak memory is measured over
# the generation phase (on Linux CPU: the process's peak resident set after
# resetting the watermark; on CUDA: peak allocated). Tiny widths keep GPT's 64k-token
# KV-cached run affordable on a CPU; GPT needs 64k learned positions for it.
# The context vector model here is the scan variant (its prefill of 64k tokens is
# parallel; the seed's loop form decodes through the same constant-size state,
# one token at a time, but would take minutes to prefill 64k tokens on a CPU).
#
# A second constant-memory reference is the same GPT with sliding-window attention
# (`gpt:attn_window=W`, W = `bench_window` = 256 by default; labelled `gpt_window`):
# each position attends to itself and the W - 1 before it, so decoding keeps a ring of
# the last W keys and values per layer. Its memory stays flat like the context
# vector's, but it forgets everything older than its window exactly (n_layer (W - 1)
# tokens back, through the stack), where the context vector forgets gradually, by its gates.

# %%
# NBVAL_IGNORE_OUTPUT
from physllm.bench import BenchConfig, format_generation_table, run_generation_bench

bench_names = {  # spec -> label in the table, the figure and metrics.json
    "gpt": "gpt",
    f"gpt:attn_window={bench_window}": "gpt_window",
    "context_vector:gates=input+n_hidden=128+n_context=64": "context_vector",
}
bench_cfg = BenchConfig(
    models=list(bench_names),
    n_layer=2, n_head=2, n_embd=64, vocab_size=256, mode="generate", lengths=bench_lengths,
    timed_tokens=bench_timed_tokens, prefill_chunk=256, repeats=1, threads=1,
    device="cuda" if device.startswith("cuda") else "cpu",
)
bench_rows = run_generation_bench(bench_cfg)
for r in bench_rows:
    r["label"] = bench_names[r["model"]]
print(format_generation_table(bench_rows, bench_cfg))
fig = plot_streaming_bench([{**r, "model": r["label"]} for r in bench_rows])
_ = save_figure(fig, out_dir, "streaming_bench")

# %%
# NBVAL_IGNORE_OUTPUT
by = {(r["label"], r["length"]): r for r in bench_rows}
lengths = [int(v) for v in bench_lengths.split(",")]
lo, hi = lengths[0], lengths[-1]
cv_growth = by["context_vector", hi]["mem_growth"]
gpt_growth = by["gpt", hi]["mem_growth"]
cv_speed = by["context_vector", hi]["speed_ratio"]
gpt_speed = by["gpt", hi]["speed_ratio"]
window_growth = by["gpt_window", hi]["mem_growth"]
window_speed = by["gpt_window", hi]["speed_ratio"]
print(f"{lo} -> {hi} tokens: context_vector peak memory x{cv_growth:.3f}, tokens/s x{cv_speed:.2f}; "
      f"gpt peak memory x{gpt_growth:.3f}, tokens/s x{gpt_speed:.2f}; "
      f"gpt_window peak memory x{window_growth:.3f}, tokens/s x{window_speed:.2f}")

# %%
# The context vector's state is the same size at every length, and so is the windowed
# GPT's cache once the stream is longer than the tokens that still reach the next one
# (its ring of W keys and values per layer, and those tokens); the full GPT's cache grows.
cv_state = {by["context_vector", n]["state_kb"] for n in lengths}
reach = bench_cfg.n_layer * (bench_window - 1) + 1
window_state = {by["gpt_window", n]["state_kb"] for n in lengths if n >= reach}
print("context_vector state size constant:", len(cv_state) == 1)
print("gpt_window cache size constant past its reach:", len(window_state) <= 1)
print("gpt cache grows with the length:", by["gpt", hi]["state_kb"] > by["gpt", lo]["state_kb"])
assert len(cv_state) == 1 and by["gpt", hi]["state_kb"] > by["gpt", lo]["state_kb"]
assert len(window_state) <= 1 and by["gpt_window", hi]["state_kb"] < by["gpt", hi]["state_kb"]
assert cv_growth < 1.05  # the goal: under 5% growth of peak memory

# %% [markdown]
# ## 7. HF transformers
#
# `physllm.context_vector.hf` wraps the model as a `PreTrainedModel` + `GenerationMixin`,
# registered with `AutoConfig`/`AutoModelForCausalLM` (no
# `trust_remote_code`). Its cache is the state, so `generate` feeds the prompt
# once and then one token per step.

# %%
# NBVAL_IGNORE_OUTPUT
from transformers import AutoModelForCausalLM, AutoTokenizer

import physllm.context_vector.hf as phf

main = "scan" if "scan" in results else "seed"
hf_dir = out_dir / "hf"
hf_model = phf.to_hf(results[main].model.cpu())
hf_model.save_pretrained(hf_dir)
phf.hf_tokenizer(results[main].tokenizer).save_pretrained(hf_dir)
loaded = AutoModelForCausalLM.from_pretrained(hf_dir)
hf_tok = AutoTokenizer.from_pretrained(hf_dir)
print(type(loaded).__name__, type(hf_tok).__name__)

# %%
prompt_ids = hf_tok(text[:24], return_tensors="pt")["input_ids"]  # the start of the validation line above
same = torch.equal(loaded(input_ids=prompt_ids).logits, hf_model(input_ids=prompt_ids).logits)
print("from_pretrained reproduces the logits exactly:", same)
assert same
lengths_fed = []
hook = loaded.register_forward_pre_hook(lambda mod, args, kw: lengths_fed.append(kw["input_ids"].shape[1]), with_kwargs=True)
out = loaded.generate(prompt_ids, max_new_tokens=20, do_sample=False, pad_token_id=0)
hook.remove()
print("tokens fed per forward call:", lengths_fed[:3], "...", "all 1 after the prompt:", set(lengths_fed[1:]) == {1})
assert set(lengths_fed[1:]) == {1}

# %%
# NBVAL_IGNORE_OUTPUT
torch.manual_seed(seed)
out = loaded.generate(prompt_ids, max_new_tokens=200, do_sample=True, temperature=0.8, top_p=0.95, repetition_penalty=1.1, pad_token_id=0)
print(hf_tok.decode(out[0]))

# %% [markdown]
# ## 8. Chat
#
# Chat training data goes through the UltraChat loader: conversations
# (`messages` of `{"role", "content"}`) rendered with an explicit template the
# model sees in training, `<|user|>\n...<|end|>\n<|assistant|>\n...<|end|>`.
# No hub is reachable here, so the demo turns TinyShakespeare's dialogue into
# conversations in UltraChat's parquet format (consecutive speeches alternate
# user/assistant) and trains the scan variant on it briefly. The `gpu` preset
# trains on the real UltraChat. The REPL is
# `python -m physllm chat --ckpt RUN --temperature 0.9 --top-p 0.95 --repetition-penalty 1.1`;
# below, the same `ChatSession` it uses, with the history kept in the state.

# %%
# NBVAL_IGNORE_OUTPUT
import tempfile
from pathlib import Path

from physllm.context_vector.chat import (
    ChatSession,
    dialogue_conversations,
    local_data,
    write_chat_parquet,
)
from physllm.data import find_local_file, format_chat
from physllm.sampling import SamplingConfig

chat_metrics, chat_run = None, None
play = find_local_file("tinyshakespeare.txt")
knobs = SamplingConfig(temperature=0.9, top_p=0.95, repetition_penalty=1.1)
if base.corpus == "ultrachat":  # the gpu preset trained on the real UltraChat already
    chat_run = results["seed"]
elif chat_steps and play is not None:
    convs = dialogue_conversations(play.read_text())
    n_train = int(0.95 * len(convs))
    chat_tmp = Path(tempfile.mkdtemp(prefix="physllm-chat-"))  # data and token cache stay out of out_dir
    write_chat_parquet(convs[:n_train], chat_tmp / "data" / "ultrachat", "train_sft")
    write_chat_parquet(convs[n_train:], chat_tmp / "data" / "ultrachat", "test_sft")
    print(format_chat(convs[0][:2]))
    with local_data(chat_tmp / "data", chat_tmp / "cache"):
        chat_cfg = make_config("context_vector", None, **{**train_fields, "corpus": "ultrachat", "tokenizer": "char", "steps": chat_steps},
                               out_dir=str(out_dir / "chat"), **configs["scan"])
        chat_run = train(chat_cfg)
    chat_metrics = chat_run.metrics
if chat_run is not None:
    session = ChatSession(chat_run.model, chat_run.tokenizer, knobs, max_new_tokens=120, seed=seed)
    for line in ["Good morrow, my lord. What news from the court?", "And what of the king?"]:
        print("you>", line)
        print("assistant>", "".join(session.reply(line)))
else:
    print("chat demo skipped (chat_steps=0 or no TinyShakespeare on disk)")

# %% [markdown]
# ## 9. Results

# %%
# NBVAL_IGNORE_OUTPUT
summary = {
    name: {
        "params": m["params"], "val_loss": round(m["val_loss"], 4), "val_bpc": round(m["val_bpc"], 3),
        "train tokens/s": round(m["tokens_per_sec"]), "speed vs gpt": round(m["tokens_per_sec"] / metrics["gpt"]["tokens_per_sec"], 2),
    }
    for name, m in metrics.items()
}
pd.DataFrame(summary).T

# %%
extra = dict(
    notebook="02_context_vector",
    unigram_loss=unigram_loss,
    speed_ratio_vs_gpt=metrics["seed"]["tokens_per_sec"] / metrics["gpt"]["tokens_per_sec"],
    val_loss_gpt=metrics["gpt"]["val_loss"],
    carried_state=carry,
    gates=gates,
    streaming={f"{r['label']}@{r['length']}": {k: r[k] for k in ("tokens_per_sec", "peak_mem_mb", "mem_growth", "speed_ratio", "state_kb")} for r in bench_rows},
    streaming_mem_growth_context_vector=cv_growth,
    streaming_mem_growth_gpt=gpt_growth,
    streaming_mem_growth_gpt_window=window_growth,
    streaming_speed_ratio_context_vector=cv_speed,
    streaming_speed_ratio_gpt=gpt_speed,
    streaming_speed_ratio_gpt_window=window_speed,
)
if "scan" in metrics:
    extra["scan_speedup_vs_seed"] = metrics["scan"]["tokens_per_sec"] / metrics["seed"]["tokens_per_sec"]
    extra["speed_ratio_scan_vs_gpt"] = metrics["scan"]["tokens_per_sec"] / metrics["gpt"]["tokens_per_sec"]
extra.update(headline_metrics(headline))
runs = dict(metrics)
if chat_metrics is not None:
    runs["chat"] = chat_metrics
path = write_metrics(out_dir, metrics["seed"], runs=runs, **extra)
print("wrote", path.name)
