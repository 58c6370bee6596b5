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
# # 00 · Foundations: data, tokenizers, the vanilla GPT and the trainer
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/physllm/physllm/blob/main/notebooks/00_foundations.ipynb)
#
# Every physics-inspired model in this repository is measured against the
# model trained here: nanoGPT's character-level Shakespeare GPT, trained by
# the same `physllm.training.train` that every other notebook uses. This notebook
# walks through the pieces in order: a corpus, a tokenizer, attention as a
# weighted average, the causal mask, training, samples and the numbers a
# report records.
#
# Run it headless with papermill (`papermill notebooks/00_foundations.ipynb
# out.ipynb -p steps 500`) or as a report (`python -m physllm report
# 00_foundations`).

# %%
# Setup: on Colab, install the repository; anywhere else it is already installed.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+https://github.com/physllm/physllm"], check=True)

# %% tags=["parameters"]
steps = None  # None: the preset's number of optimizer steps
preset = "auto"  # "cpu" (about 3 minutes on 2 cores), "gpu" (GPT-2 small); auto: gpu when CUDA is available
corpus = "default"  # "default": TinyShakespeare if on disk, else the offline pydocs corpus
tokenizer = "char"
device = "auto"
seed = 1337
out_dir = "runs/00_foundations"
sample_tokens = 300

# %%
import math

import torch

from physllm import data as pdata
from physllm.analysis import loss_table, plot_loss_curves, save_figure
from physllm.gpt.model import GPT
from physllm.nn import CausalSelfAttention
from physllm.notebook import corpus_notice, resolve_out_dir, setup, show_source, write_metrics
from physllm.sampling import generate
from physllm.tokenization import BPETokenizer, ByteTokenizer, CharTokenizer
from physllm.training import make_config, train

# NBVAL_IGNORE_OUTPUT
preset, device = setup(seed=seed, preset=preset, device=device)
out_dir = resolve_out_dir(out_dir)
print(f"preset={preset} device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
print(corpus_notice(corpus))

# %% [markdown]
# ## 1. Data
#
# A corpus is a name that `physllm.data.load_corpus` turns into a training
# and a validation text. The split is fixed so every model in the
# repository is scored on the same text: for a single file, the first 90% of
# the characters train and the last 10% validate.

# %%
# NBVAL_IGNORE_OUTPUT
for row in pdata.list_corpora():
    print(f"{row['corpus']:<12} {row['source']}")

# %%
# NBVAL_IGNORE_OUTPUT
corpus_name = pdata.resolve_default_corpus() if corpus == "default" else corpus
splits = pdata.load_corpus(corpus_name)
print(corpus_name, {k: len(v) for k, v in splits.items()}, "characters")
print(splits["train"][:300])

# %% [markdown]
# ## 2. Tokenizers
#
# Four tokenizers share one interface (`encode`, `decode`, `vocab_size`):
#
# * `char`: one id per distinct character (65 for Shakespeare): long
#   sequences, tiny vocabulary; the classic nanoGPT setup.
# * `byte`: the 256 UTF-8 byte values: nothing is ever unknown.
# * `bpe`: byte-level BPE trained with HF `tokenizers` on the training split.
# * `tiktoken:gpt2`: OpenAI's fixed GPT-2 encoding (the 124M presets).
#
# Each must give back exactly the text it was given.

# %%
# NBVAL_IGNORE_OUTPUT
sample = splits["val"][:400]
tokenizers = {
    "char": CharTokenizer.fit(splits["train"] + splits["val"]),
    "byte": ByteTokenizer(),
    "bpe:512": BPETokenizer.fit(splits["train"][:300_000], vocab_size=512),
}
for name, tok in tokenizers.items():
    ids = tok.encode(sample)
    print(f"{name:<8} vocab {tok.vocab_size:>4}  {len(ids):>3} tokens for {len(sample)} chars  round trip: {tok.decode(ids) == sample}")
    assert tok.decode(ids) == sample

# %%
# NBVAL_IGNORE_OUTPUT
# tiktoken downloads its encoding file once; offline it fails with a clear message.
from physllm.errors import PhysllmError
from physllm.tokenization import TiktokenTokenizer

try:
    gpt2 = TiktokenTokenizer.from_name("gpt2")
    ids = gpt2.encode(sample)
    print(f"tiktoken:gpt2 vocab {gpt2.vocab_size}, {len(ids)} tokens, round trip: {gpt2.decode(ids) == sample}")
except PhysllmError as err:
    print("tiktoken:gpt2 unavailable here:", err)

# %% [markdown]
# ## 3. Attention is a weighted average of the past
#
# A GPT turns a sequence of token vectors $x_1 \dots x_T$ into predictions of
# the next token. Its only way of mixing information between positions is
# attention. Each position $i$ asks a question (query $q_i = W_Q x_i$),
# every position $j$ offers a label (key $k_j = W_K x_j$) and a content
# (value $v_j = W_V x_j$), and position $i$ receives the average of the
# contents weighted by how well the labels answer the question:
#
# $$ s_{ij} = \frac{q_i \cdot k_j}{\sqrt{d}}, \qquad a_{ij} = \frac{e^{s_{ij}}}{\sum_{j'} e^{s_{ij'}}}, \qquad o_i = \sum_j a_{ij} v_j . $$
#
# The weights $a_{ij}$ are positive and sum to one over $j$: $o_i$ is a
# convex combination of values. Training on "predict token $t+1$ from
# tokens $\le t$" at every position at once would be cheating if position $t$
# could see $t+1$, so the **causal mask** sets $s_{ij} = -\infty$ for $j > i$,
# which makes $a_{ij} = 0$: the weight matrix is lower-triangular. One
# forward pass then trains $T$ predictions, each of which saw only its past.
#
# The same computation in a few lines of torch:

# %%
torch.manual_seed(0)
T, d = 6, 8
q, k, v = torch.randn(3, T, d).unbind(0)
scores = q @ k.T / math.sqrt(d)  # s_ij
scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))  # causal mask
weights = scores.softmax(dim=-1)  # a_ij
out = weights @ v  # o_i = sum_j a_ij v_j
print("rows sum to 1:", torch.allclose(weights.sum(-1), torch.ones(T)))
print("no weight on the future:", bool((weights.triu(1) == 0).all()))
print("position 0 copies v_0:", torch.allclose(out[0], v[0]))
# The fused kernel physllm uses computes exactly this:
fused = torch.nn.functional.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0]
print("SDPA agrees:", torch.allclose(fused, out, atol=1e-6))

# %% [markdown]
# physllm's attention layer is this, with several heads side by side, the
# fused `scaled_dot_product_attention` kernel (flash attention on a GPU), and
# a key/value cache so that generating token $t+1$ reuses the keys and values
# of tokens $\le t$ instead of recomputing them:

# %%
show_source(CausalSelfAttention)

# %% [markdown]
# A block adds attention and an MLP to a residual stream, each after a
# LayerNorm (pre-LN, as in GPT-2); the output head shares its weights with the
# token embedding (the same vectors read and write tokens):

# %%
show_source(GPT.forward)

# %% [markdown]
# ## 4. Training
#
# `make_config("gpt", preset)` takes the preset's settings; the `cpu` preset
# is nanoGPT's Shakespeare-char CPU recipe (4 layers, 4 heads, width 128,
# block 64, batch 12, 2000 steps, lr 1e-3 with 100 warmup steps and cosine
# decay to 1e-4, no dropout), for which nanoGPT reports a validation loss of
# 1.88. `train` is the trainer every notebook and the CLI use: AdamW with
# decay groups, warmup + cosine, clipping, periodic evaluation on the
# validation split, best/last safetensors checkpoints, TensorBoard scalars.

# %%
overrides = {"steps": steps} if steps is not None else {}
cfg = make_config("gpt", preset, corpus=corpus, tokenizer=tokenizer, device=device, seed=seed,
                  out_dir=str(out_dir / "gpt"), **overrides)
print({k: v for k, v in cfg.to_dict().items() if k in ("corpus", "tokenizer", "steps", "batch_size", "lr")})
print(cfg.model_config)

# %%
# NBVAL_IGNORE_OUTPUT
result = train(cfg)
metrics = result.metrics
print(f"{metrics['params']:,} parameters, val loss {metrics['val_loss']:.4f} "
      f"({metrics['val_bpc']:.3f} bits/{metrics['bpc_unit']}), {metrics['ms_per_step']:.1f} ms/step on {metrics['device']}")

# %%
# NBVAL_IGNORE_OUTPUT
fig = plot_loss_curves({"gpt": result.history}, title=f"GPT on {metrics['corpus']} ({metrics['steps']} steps, {metrics['device']})")
save_figure(fig, out_dir, "loss_curves")

# %% [markdown]
# ### Is it learning anything? Two reference points
#
# * **Uniform guessing** over the vocabulary costs $\ln V$ nats per token.
# * **Unigram frequencies** (no context at all) cost the entropy of the
#   training distribution, measured on the validation text.
#
# A model that beats the unigram baseline has learned to use context.

# %%
# NBVAL_IGNORE_OUTPUT
V = result.tokenizer.vocab_size
unigram_loss = result.data.unigram_loss()  # train-split frequencies (add-one smoothed) on val
uniform_loss = math.log(V)
print(f"uniform {uniform_loss:.3f} nats, unigram {unigram_loss:.3f} nats")

# %%
# NBVAL_IGNORE_OUTPUT
print(f"model {metrics['val_loss']:.3f} nats: {unigram_loss - metrics['val_loss']:.3f} nats better than unigram")

# %%
# The trained model must beat the context-free baseline (not asserted for
# tiny smoke-test runs, which have had no time to learn).
learned_context = metrics["val_loss"] < unigram_loss - 0.5
print("beats unigram by > 0.5 nats:", learned_context or metrics["steps"] < 500)
assert learned_context or metrics["steps"] < 500

# %% [markdown]
# ## 5. Sampling
#
# `physllm.sampling.generate` applies, in order, a repetition penalty,
# temperature, top-k, top-p (nucleus) and min-p, then samples. The KV cache
# must not change what the model predicts: the cached step-by-step logits
# equal the logits of one full forward pass.

# %%
model, tok = result.model, result.tokenizer
prompt = torch.tensor([tok.encode("\n")])
full = generate(model, prompt, 40, temperature=0)  # greedy
with torch.no_grad():
    logits_full, _ = model(full[:, :-1])
    step_logits, state = model.decode_step(full[:, :1], None)
    cached = [step_logits]
    for t in range(1, full.size(1) - 1):
        step_logits, state = model.decode_step(full[:, t : t + 1], state)
        cached.append(step_logits)
print("KV cache matches the full forward pass:", torch.allclose(torch.stack(cached, 1), logits_full, atol=1e-4))

# %%
# NBVAL_IGNORE_OUTPUT
gen = torch.Generator().manual_seed(seed)
out = generate(model, torch.tensor([tok.encode("ROMEO:")]), sample_tokens, temperature=0.8, top_k=50,
               repetition_penalty=1.1, generator=gen)
print(tok.decode(out[0].tolist()))

# %% [markdown]
# ## 6. Results
#
# `metrics.json` is what reports and the leaderboard read: parameters,
# losses, bits per character, speed, memory, hardware, versions and the git
# commit.

# %%
# NBVAL_IGNORE_OUTPUT
metrics["unigram_loss"] = unigram_loss
loss_table({"gpt": metrics})

# %%
path = write_metrics(out_dir, metrics, runs={"gpt": metrics}, unigram_loss=unigram_loss, notebook="00_foundations")
print("wrote", path.name)
