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
# # 05 · CHopT: a modern Hopfield memory that persists across calls
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/physllm/physllm/blob/main/notebooks/05_hopfield.ipynb)
#
# A language model forgets everything between two calls: the second call
# sees only its own prompt. CHopT puts a **modern Hopfield memory** after the
# transformer. Each call *writes* key/value patterns computed from its own
# hidden states into a slot bank; a later call, whose context holds none of
# the earlier text, *reads* them by Hopfield retrieval. Here we derive the
# memory (classical and modern Hopfield energies, why one update step is
# attention, what the theory says about capacity), walk through the code, train
# the memory on synthetic facts with a frozen backbone, and measure, over
# `recall_seeds` seeds with Student-t 95% intervals:
#
# * recall across calls on **held-out** facts ("the code of NAME is CODE",
#   names and codes never seen in training), with and without the memory, and
#   against two memories that learn nothing: an exact **n-gram cache** of call 1
#   and a **kNN-LM** over the frozen backbone's hidden states;
# * the same with **held-out wordings**: facts written and questions asked with
#   templates that training never used;
# * the energy of the retrieval over update steps (it must descend);
# * capacity: recall against the number of facts stored, with a bank large
#   enough to hold them all and with the default FIFO bank;
# * what the memory costs ordinary text: the validation loss with the bank empty
#   and holding 100 facts, before and after a stage (2d) that trains the memory on
#   ordinary text with a bank of unrelated facts;
# * **stories**: several people with objects, places and colours, asked about in a
#   later call in held-out wordings, after unrelated text, and with near-duplicate
#   names and updates where the latest fact must win, against the same baselines.
#
# Headless, with the reference report's parameters (the parameters cell lists them):
# `papermill notebooks/05_hopfield.ipynb out.ipynb -p paraphrase_steps 400 -p recall_trials 4 -p capacity_max 2048 -p lm_blocks 0 -p gate_steps 200 -p story_steps 300 -p story_episodes 8`.

# %%
# Setup: on Colab, install the repository; anywhere else it is already installed.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+https://github.com/physllm/physllm"], check=True)

# %% tags=["parameters"]
steps = None  # backbone steps (None: the preset's); also the memory steps when memory_steps is None
preset = "auto"  # "cpu": char GPT + synthetic facts, about 3 minutes; "gpu": adds Llama-3.2-3B + NarrativeQA
corpus = "default"  # the backbone's language-modelling corpus (stage 1)
tokenizer = "char"
device = "auto"
seed = 1337
threads = 1  # CPU threads: the memory's many small ops gain nothing from more (and lose a lot on a busy machine)
out_dir = "runs/05_hopfield"
memory_steps = None  # stage 2a steps (None: the preset's memory_steps, or `steps` when that is set)
paraphrase_steps = None  # stage 2b steps on the training templates and generated wordings (None: 2 * memory_steps)
paraphrase_wordings = 64  # stage 2b: generated fact and question wordings added to the training templates (0: none)
n_updates = 1  # Hopfield updates per read (1: exactly attention)
combine = "gated"  # add | gated | concat
key_window = 16  # hidden states each key and query sees
key_encoder = "pool"  # pool: content-pooled trigrams, any offset | conv: weights per offset
recency = False  # a learned recency term in the read's logits (section 2): the latest of equal matches wins
bind_heads = False  # one softmax over the slots for all heads: a slot must match in every head (name and attribute)
eval_facts = 16  # facts written in call 1 of the recall tables
recall_seeds = 3  # seeds of the memory stage and of the facts drawn (each one retrains stage 2)
recall_trials = 2  # call-1/call-2 trials per seed and task (eval_facts questions each)
ngram_n = 12  # the n-gram cache's longest context
capacity_max = 256  # the capacity curves double from 16 facts to this
lm_facts = 100  # facts in the bank while the validation loss is measured
lm_blocks = 128  # validation blocks scored with the bank empty and full (0: the whole split)
gate_steps = None  # stage 2d (ordinary text with a filled bank) steps (None: memory_steps)
story_steps = None  # stage 2c (stories) steps per seed (None: 60, or memory_steps when smaller)
story_batch = 4  # stories per stage-2c step
story_entities = 3  # people per story (training draws 1..this; evaluation uses this)
story_wordings = 0  # stage 2c: generated story wordings per attribute and kind added to the training templates
story_episodes = 4  # stories per seed and variant in the evaluation
story_distractors = 4  # unrelated sentences after the story in the "distractors" variant
story_variants_run = "train,heldout_ask,heldout_both,distractors,interference"  # comma-separated
# The reference report (reports/05_hopfield) runs with paraphrase_steps=400,
# recall_trials=4, capacity_max=2048, lm_blocks=0, gate_steps=200, story_steps=300 and story_episodes=8.
# The values above are the default (nbval) run's, kept small for time.

# %%
import copy
import math
import random

import torch
from IPython.display import Markdown

from physllm.analysis import plot_loss_curves, save_figure
from physllm.experiments.stats import interval
from physllm.hopfield import functional as hopfield_fn
from physllm.hopfield.analysis import (
    HELDOUT_SETTINGS,
    energy_descent,
    plot_capacity_curve,
    plot_energy_descent,
    recall_findings,
    retrieval_vs_beta,
    seed_summary,
    story_conclusion,
    summary_table,
)
from physllm.hopfield.baselines import KNNLM, MemoryReader, NGramCache
from physllm.hopfield.model import HopfieldLM, HopfieldMemory, MemoryBank
from physllm.hopfield.stories import (
    ATTRIBUTES,
    ERROR_KINDS,
    StoryEpisodes,
    StoryTask,
    compare_story_readers,
    generated_story_templates,
    story_errors,
    story_variants,
    uses_heldout_frame,
)
from physllm.hopfield.tasks import (
    SETTINGS,
    FactsTask,
    TemplateSplit,
    capacity_curve,
    compare_readers,
    fresh_memory,
    generated_templates,
    readers,
    recall,
)
from physllm.notebook import corpus_notice, resolve_out_dir, setup, show_source, write_metrics
from physllm.training import evaluate_split, make_config, train, train_memory
from physllm.training.memory import train_gate

# NBVAL_IGNORE_OUTPUT
preset, device = setup(seed=seed, preset=preset, device=device, threads=threads)
out_dir = resolve_out_dir(out_dir)
print(f"preset={preset} device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
print(corpus_notice(corpus))

# %% [markdown]
# ## 1. Derivation
#
# ### Classical Hopfield network
#
# A Hopfield network stores $N$ binary patterns $x^\mu \in \{-1, +1\}^d$ in
# the Hebbian weights $W = \sum_\mu x^\mu x^{\mu\top}$ and has the energy
#
# $$ E(\xi) = -\tfrac12 \xi^\top W \xi = -\tfrac12 \sum_\mu (x^{\mu\top} \xi)^2 . $$
#
# Flipping a unit toward the sign of its local field $W\xi$ never raises $E$,
# so the state rolls down to a minimum: ideally the stored pattern nearest to
# the probe. The quadratic interaction makes the patterns interfere: with
# random patterns retrieval breaks down beyond $N \approx 0.14\,d$.
#
# ### Modern (dense) Hopfield network
#
# Replace the square by a sharper interaction. Krotov and Hopfield (2016)
# used $F(z) = z^n$ (capacity $\propto d^{n-1}$); Demircigil et al. (2017)
# the exponential, capacity exponential in $d$. Ramsauer et al. (2020) made
# it continuous: stored patterns $X = (x_1 \dots x_N) \in \mathbb{R}^{d\times N}$,
# state $\xi \in \mathbb{R}^d$, inverse temperature $\beta$,
#
# $$ E(\xi) = -\operatorname{lse}(\beta, X^\top \xi) + \tfrac12 \xi^\top \xi + \text{const},
#    \qquad \operatorname{lse}(\beta, z) = \beta^{-1} \log \textstyle\sum_i e^{\beta z_i} . $$
#
# $-\operatorname{lse}$ is concave and $\tfrac12|\xi|^2$ convex. The
# concave-convex procedure minimises the convex part against the tangent of
# the concave one, $\xi^{\text{new}} = \nabla_\xi \operatorname{lse}(\beta, X^\top\xi)$:
#
# $$ \boxed{\xi^{\text{new}} = X \operatorname{softmax}(\beta X^\top \xi)} $$
#
# and each such step **never increases** $E$; it typically converges in one
# step when the patterns are well separated.
#
# ### One update is attention
#
# Write the probes as queries $Q$, the stored patterns as keys $K$ and read
# the result through a value matrix $V$ with the same weights:
# $V \operatorname{softmax}(\beta K^\top q)$. With $\beta = 1/\sqrt{d_k}$ that is
# exactly transformer attention. Attention is one Hopfield update whose
# stored patterns are the context's keys. The CHopT memory keeps the
# patterns of *earlier calls* as well, in a bank that outlives the context.
#
# ### Storage capacity and $\beta$: what the theorems say
#
# Ramsauer et al. (2020) state their results for $N$ patterns with
# $M = \max_i \|x_i\|$ and the separation of pattern $i$ from the others,
# $\Delta_i = x_i^\top x_i - \max_{j\ne i} x_i^\top x_j$.
#
# * **One-step retrieval (Theorems 4 and 5).** If $x_i$ is *well separated*,
#   $\Delta_i \ge \frac{2}{\beta N} + \frac1\beta \ln\!\big(2(N-1)N\beta M^2\big)$,
#   and the probe $\xi$ lies in the sphere of radius $\frac{1}{\beta N M}$ around
#   $x_i$, the update converges to a fixed point $x_i^*$ in that sphere, and after
#   **one** update the retrieval error is bounded by
#   $$ \|f(\xi) - x_i\| \le 2(N-1)\, \exp\!\big(-\beta(\Delta_i - 2\max\{\|\xi - x_i\|, \|x_i^* - x_i\|\}\, M)\big)\, M ,$$
#   which for $\|\xi - x_i\|, \|x_i^* - x_i\| \le \frac{1}{2\beta M}$ becomes
#   $2e(N-1)M\,e^{-\beta\Delta_i}$: exponentially small in $\beta\Delta_i$.
# * **Capacity (Theorem 3).** For $N$ patterns drawn *at random* on the sphere
#   of radius $M = K\sqrt{d-1}$, with probability $1-p$ all of them are
#   well separated (so retrievable in one update) as long as
#   $N \le \sqrt{p}\, c^{(d-1)/4}$, for a constant $c > 1$ that depends on
#   $\beta$, $K$, $d$ and $p$ (for example $c \ge 3.15$ at $\beta = 1$, $K = 3$,
#   $d = 20$, $p = 0.001$): exponential in the dimension $d$.
#
# Both are statements about well-separated (or random) stored patterns. They
# do not say how many *learned* keys a CHopT bank separates: the keys of
# "the code of bolek is" and "the code of bolet is" differ in one character
# and are not random. That is measured in section 7. Small $\beta$ gives a
# *metastable* state instead: the average of many patterns. Below: the energy
# descent and the effect of $\beta$ on random patterns, with the functions the
# model uses.

# %%
gen = torch.Generator().manual_seed(seed)
X = torch.randn(1, 1, 64, 32, generator=gen, dtype=torch.float64)  # 64 stored patterns, d = 32
probes = X[:, :, :8] + 0.8 * torch.randn(1, 1, 8, 32, generator=gen, dtype=torch.float64)
_, _, E = hopfield_fn.retrieve(probes, X, beta=0.05, update_steps_max=10)
print("energy never increases over 10 updates:", bool((E[1:] - E[:-1] <= 1e-9).all()))
assert (E[1:] - E[:-1] <= 1e-9).all()
q, k, v = torch.randn(3, 1, 1, 5, 16, generator=gen).unbind(0)
attention = torch.nn.functional.scaled_dot_product_attention(q, k, v)
print("one update with beta = 1/sqrt(d) is attention:", torch.allclose(hopfield_fn.retrieve(q, k, 1 / math.sqrt(16), 1, pattern_projection=v)[0], attention, atol=1e-6))

# %%
# NBVAL_IGNORE_OUTPUT
import pandas as pd

rows = retrieval_vs_beta(n_patterns=256, dim=32, noise=0.8, betas=[0.01, 0.03, 0.1, 0.3, 1.0], seed=seed)
pd.DataFrame(rows).set_index("beta")

# %% [markdown]
# With 256 random patterns in 32 dimensions (a classical network holds about
# 4), one update retrieves nearly every noisy probe once $\beta$ is large
# enough; at small $\beta$ the state is an average (low cosine).
#
# ## 2. Implementation
#
# The pure update lives in `physllm/hopfield/functional.py` (names after
# ml-jku/hopfield-layers: `stored_pattern`, `state_pattern`,
# `update_steps_max`):

# %%
show_source(hopfield_fn.retrieve)

# %% [markdown]
# The memory layer (`physllm/hopfield/model.py`) sits after the backbone's
# last block. A call **writes** one slot per token $s$: the key is a map of
# the last `key_window` hidden states (what the context looked like), the
# value the embedding of the *next* token (what came after), so a later call
# in a similar context retrieves what followed. Keys and queries are unit-RMS
# per head, so $\beta_h$ alone sets how sharp each head is. The map
# (`key_encoder`) is **pool** by default: each head scores the window's
# trigrams by content, $a_i = \operatorname{softmax}_i(u_h \cdot f_{s-i})$, and
# keys $P_h \sum_i a_i f_{s-i} + R_h f_s$. No weight depends on the offset $i$,
# so a name two characters before the code ("code of NAME; ") and six before
# ("and NAME gets CODE") give one key; the alternative, **conv**, has a
# weight matrix per offset and never matches a name at an offset no training
# wording used.

# %%
show_source(HopfieldMemory.entries)

# %% [markdown]
# A **read** iterates the update from the query, reads the values with the
# last weights, and adds them to the hidden state through a gate
# $g = \sigma(w_g [h; W_o r])$ (or plainly, or by a linear map of the
# concatenation). Rows of a batch may share one memory (every question of an
# episode reads the same bank).

# %%
show_source(HopfieldMemory.read)

# %% [markdown]
# **Recency** (`recency=True`; off by default). A similarity-only read weighs a stale
# fact and the update that replaced it ("mara is in the barn." then "mara moved to the
# mill.") by how well their keys match, and nothing makes the later one win. Add a
# linear term in the write order $t_i$ to the energy:
#
# $$ E(\xi) = -\beta^{-1} \log \textstyle\sum_i \exp(\beta\, x_i^\top \xi + \gamma_h t_i / 64) + \tfrac12 \xi^\top\xi . $$
#
# The log-sum-exp of an affine function of $\xi$ is still convex, so $-\operatorname{lse}$
# is still concave and the CCCP step is the same update with a tilted softmax,
# $\xi^{\text{new}} = X \operatorname{softmax}(\beta X^\top \xi + \gamma_h t / 64)$: the
# energy still never rises (the test suite checks it), and among keys that match
# equally well the latest gains $e^{\gamma_h \Delta t / 64}$. $\gamma_h$ is learned per
# head from 0 (no change at first); $t$ is the token's write order (the bank's `age`),
# shifted so the latest write is 0.

# %%
show_source(HopfieldMemory.recency_bias)

# %% [markdown]
# The **bank** outlives calls: a fixed number of slots, FIFO or
# least-used replacement when full, `reset()`, and `save`/`load` as
# safetensors. Its buffers are not model weights: a checkpoint holds what
# the model learned, a memory file what it has seen.

# %%
show_source(MemoryBank.write)

# %% [markdown]
# An inference call reads the bank while it generates, then writes itself in:

# %%
show_source(HopfieldLM.call)

# %% [markdown]
# **Baselines that learn nothing** (`physllm/hopfield/baselines.py`), scored by the
# same `recall` on the same facts and questions. The **n-gram cache** stores every
# context of 1..`ngram_n` tokens of call 1 with the token that followed and answers
# by greedy continuation from the longest suffix of the question it has seen:

# %%
show_source(NGramCache.continuation)

# %% [markdown]
# The **kNN-LM** (Khandelwal et al. 2020) stores (hidden state at $t$, token
# $t+1$) for every position of call 1 and mixes the $k$ nearest neighbours'
# tokens, weighted by $\operatorname{softmax}(-d/T)$ of their squared distance,
# into the backbone's distribution with weight $\lambda$ ($k = 16$, $T = 1$,
# $\lambda = 0.5$, chosen on training names, not held-out ones):

# %%
show_source(KNNLM.log_probs)

# %% [markdown]
# ## 3. Stage 1: the backbone
#
# The backbone is the repository's char GPT (nanoGPT's Shakespeare shape),
# trained here briefly by the shared trainer. The model is `hopfield` itself:
# during language modelling its bank is empty, and an empty bank leaves the
# backbone untouched (the memory layer gets no gradient), so this is plain
# GPT training and the metrics are the backbone's.

# %%
# The facts experiment uses the char backbone at every preset (it is small); the gpu
# preset adds the NarrativeQA experiment with Llama-3.2-3B in section 10.
overrides = {"steps": steps} if steps is not None else {}
cfg = make_config("hopfield", "cpu", corpus=corpus, tokenizer=tokenizer, device=device, seed=seed, threads=threads,
                  out_dir=str(out_dir / "backbone"), n_updates=n_updates, combine=combine,
                  key_window=key_window, key_encoder=key_encoder, recency=recency, bind_heads=bind_heads,
                  **overrides)
mcfg = cfg.model_config
if memory_steps is None:
    memory_steps = steps if steps is not None else mcfg.memory_steps
print({k: getattr(cfg, k) for k in ("corpus", "tokenizer", "steps", "batch_size")}, "memory_steps", memory_steps)
print({k: getattr(mcfg, k) for k in ("backbone", "n_layer", "n_embd", "mem_heads", "mem_head_dim", "key_window", "key_encoder", "recency", "n_updates", "combine", "n_slots")})

# %%
# NBVAL_IGNORE_OUTPUT
result = train(cfg)
model, tok, metrics = result.model, result.tokenizer, result.metrics
print(f"{metrics['params']:,} parameters, val loss {metrics['val_loss']:.4f} "
      f"({metrics['val_bpc']:.3f} bits/{metrics['bpc_unit']}), {metrics['ms_per_step']:.1f} ms/step on {metrics['device']}")

# %% [markdown]
# ## 4. Stage 2: training the memory
#
# An episode is two calls. Call 1 is a list of facts, written to memory:
#
# ```
# the code of bolek is xqzt.
# the code of fimar is ohjd.
# ```
#
# Call 2 starts from an empty context and asks, one question per row,
# `the code of fimar is ` — it is scored on the four characters of the code
# only. The backbone is frozen; the trainable parts are the write key and
# value maps, the read query, the output map, the gate and the per-head
# $\beta$. Names (consonant-vowel patterns) and codes (four letters) come
# from a seeded RNG; a fixed fifth of all names and of all codes (by CRC32)
# is held out and used only for evaluation.
#
# Asked in the wording it was written in, a fact can be answered by copying
# what followed the same context in call 1: an exact n-gram cache does that
# without any parameters. So the memory trains in two parts. **2a**
# (`memory_steps`): the same wording in both calls. **2b**
# (`paraphrase_steps`): facts written and questions asked with *training
# templates* drawn independently per fact and per question, so the question's
# wording is mostly not the fact's. Two fact templates and two question
# templates are **held out**: no training episode uses them.
# With only three training wordings the key learns to rely on their connectors, so 2b
# also draws from `paraphrase_wordings` generated fact and question wordings (random
# prefix and connector words and marks around the name) that never use a held-out
# template's connector, leaving the name as the only signal shared by a fact and its
# question (`generated_templates`; the test suite checks that they avoid the held-out wordings),
# for 2 x `memory_steps` steps by default (the reference report: 4 x), since 100 steps on so many
# wordings lower recall on the training ones.

# %%
task = FactsTask(tok.encode)
split = TemplateSplit()
para_task = FactsTask(
    tok.encode,
    fact=split.templates("fact", False) + generated_templates("fact", paraphrase_wordings),
    question=split.templates("question", False) + generated_templates("question", paraphrase_wordings),
)
example = task.episode(1, 2, random.Random(seed))
print(repr(tok.decode(example.write_ids[0].tolist())))
for row, target in zip(example.read_ids, example.read_targets):
    print(repr(tok.decode(row.tolist())), "-> scored:", repr(tok.decode(target[target >= 0].tolist())))
for kind in ("fact", "question"):
    print(f"{kind} templates, training:", split.templates(kind, False))
    print(f"{kind} templates, held out:", split.templates(kind, True))
    print(f"{kind} templates, generated (first 4 of {paraphrase_wordings}):", generated_templates(kind, paraphrase_wordings)[:4])
print("memory parameters:", sum(p.numel() for p in model.memory_layer.parameters()))

# %%
# NBVAL_IGNORE_OUTPUT
if paraphrase_steps is None:
    paraphrase_steps = 2 * memory_steps  # many wordings need more steps than three (100: 0.6-0.8 recall)
stage = dict(batch_size=mcfg.memory_batch, max_facts=mcfg.memory_facts, lr=mcfg.memory_lr, seed=seed)
memory_history = train_memory(model, task, memory_steps, **stage)
para_history = train_memory(model, para_task, paraphrase_steps, **stage)
print(f"2a, same wording: loss {memory_history[0]['train_loss']:.3f} -> {memory_history[-1]['train_loss']:.3f} "
      f"in {memory_history[-1]['time_s']:.1f} s; 2b, training and generated wordings: {para_history[0]['train_loss']:.3f} -> "
      f"{para_history[-1]['train_loss']:.3f} in {para_history[-1]['time_s']:.1f} s")

# %%
# NBVAL_IGNORE_OUTPUT
fig = plot_loss_curves({"backbone (stage 1)": result.history}, title="stage 1: backbone language modelling")
save_figure(fig, out_dir, "backbone_loss")
fig = plot_loss_curves({"2a: same wording": memory_history, "2b: training and generated wordings": para_history},
                       title="stage 2: memory, cross-entropy on the codes")
save_figure(fig, out_dir, "memory_loss")

# %% [markdown]
# ## 5. Recall across calls, against baselines, over seeds
#
# Call 1 writes `eval_facts` held-out facts; call 2 gets only the questions
# (its tokens hold nothing of call 1: the test suite checks the token ids)
# and answers greedily. Every reader gets the same facts and questions:
#
# * **memory**: the trained CHopT model;
# * **no_memory**: the same model with the bank reset between the calls (chance:
#   $26^{-4}$ exact, about $1/26$ per character);
# * **ngram_cache**: the exact `ngram_n`-gram cache of call 1, no parameters;
# * **knn_lm**: the kNN-LM over the frozen backbone's hidden states.
#
# The tasks: **same_template** (written and asked as in 2a: the exact-context
# lookup); **train** (training templates, drawn per fact and per question);
# **heldout_ask** (written with training templates, asked with held-out ones);
# **heldout_write** (the reverse); **heldout_both**. Each further seed
# retrains stage 2 (2a and 2b) from a fresh memory layer on the same backbone and
# draws other facts. Cells: mean exact match over seeds [Student-t 95% interval].

# %%
# NBVAL_IGNORE_OUTPUT
seeds = [seed + i for i in range(recall_seeds)]
tasks = {"same_template": task, **{s: split.task(tok.encode, s) for s in SETTINGS}}
seed_models = [model]  # each seed's memory after 2b (section 9 trains stories on copies)
for s in seeds[1:]:
    other = fresh_memory(model, s)
    train_memory(other, task, memory_steps, **{**stage, "seed": s}, progress=False)
    train_memory(other, para_task, paraphrase_steps, **{**stage, "seed": s}, progress=False)
    seed_models.append(other)
per_seed = [compare_readers(m, tasks, eval_facts, recall_trials, s, ngram_n) for m, s in zip(seed_models, seeds)]
summary = seed_summary(per_seed, interval)
summary_table(summary)

# %% [markdown]
# The loss on the answer tokens (teacher-forced nats per code character; the
# n-gram cache's probabilities are its continuation counts mixed with 1% uniform):

# %%
# NBVAL_IGNORE_OUTPUT
summary_table(summary, "answer_loss")

# %%
# What must hold at the defaults (smoke runs, `-p steps 20`, check the plumbing only).
smoke = memory_steps < 50
same = summary["same_template"]
print("no-memory recall at chance (< 5%) on every task:", all(summary[t]["no_memory"]["exact_match"] < 0.05 for t in summary))
assert all(summary[t]["no_memory"]["exact_match"] < 0.05 for t in summary)
print("n-gram cache: every same-wording fact, every seed:", same["ngram_cache"]["per_seed"] == [1.0] * recall_seeds)
assert same["ngram_cache"]["per_seed"] == [1.0] * recall_seeds
print("n-gram cache <= 5% when the question's wording is held out:",
      max(summary[t]["ngram_cache"]["exact_match"] for t in ("heldout_ask", "heldout_both")) <= 0.05)
assert max(summary[t]["ngram_cache"]["exact_match"] for t in ("heldout_ask", "heldout_both")) <= 0.05
print(">= 90% exact match with memory, same wording:", same["memory"]["exact_match"] >= 0.9 or smoke)
assert same["memory"]["exact_match"] >= 0.9 or smoke
beats_cache = {t: summary[t]["memory"]["ci95_low"] > summary[t]["ngram_cache"]["exact_match"] for t in HELDOUT_SETTINGS}
print("memory beats the n-gram cache on every held-out wording (interval above its mean):", beats_cache)
assert all(beats_cache.values()) or smoke

# %% [markdown]
# A call's memory can be saved and loaded: here call 1 happens, the bank is
# saved, reset, loaded, and call 2 still answers.

# %%
# NBVAL_IGNORE_OUTPUT
facts = task.facts(4, random.Random(seed + 1), "heldout")
model.memory.reset()
model.call(torch.tensor([tok.encode(task.write_text(facts))]))
path = model.memory.save(out_dir / "memory.safetensors")
model.memory.reset()
model.memory.load(path)
answers = model.call(task.prompts(facts), max_new_tokens=task.code_len, write=False, temperature=0)
for (name, code), row in zip(facts, answers):
    print(f"{name}: stored {code}, recalled {tok.decode(row[-task.code_len:].tolist())}")
model.memory.reset()

# %% [markdown]
# ## 6. Energy descent
#
# The energy of each call-2 probe (every position of every question, head
# by head) against the number of Hopfield updates, with the learned
# $\beta_h$ and the keys of 8 held-out facts. CCCP guarantees the descent;
# the plot shows how fast the states settle.

# %%
energies = energy_descent(model, task, n_facts=8, update_steps=8, seed=seed)
print("probes, heads:", energies.shape[2], energies.shape[1])
print("energy never increases:", bool((energies[1:] - energies[:-1] <= 1e-4).all()))
assert (energies[1:] - energies[:-1] <= 1e-4).all()

# %%
# NBVAL_IGNORE_OUTPUT
print("learned beta per head:", [round(b, 3) for b in model.memory_layer.beta.tolist()])
fig = plot_energy_descent(energies)
save_figure(fig, out_dir, "energy_descent")

# %% [markdown]
# ## 7. Capacity
#
# Recall (same wording, 64 questions per point) against the number of facts
# in memory, two ways. **No eviction**: a bank of (facts x slots per fact)
# slots, so everything written stays: this measures the memory. **FIFO**:
# the model's own bank of `n_slots`; each fact writes one slot per
# character, and past `n_slots` / (slots per fact) facts FIFO has forgotten
# the oldest, so recall can be at most (facts that fit) / n: the dotted
# bound. That curve measures the bank's size, not the memory. Training saw
# at most `memory_facts` facts per episode. Up to the facts that fit, FIFO has
# evicted nothing and a read scans the filled slots only, so the two curves are one
# measurement there: the FIFO curve reuses those points (`from_no_eviction`) and
# runs only the sizes past the bank.

# %%
slots_per_fact = task.fact_tokens()
facts_fit = mcfg.n_slots / slots_per_fact
capacity_sizes = [16 * 2**i for i in range(int(math.log2(capacity_max / 16)) + 1)] if capacity_max >= 16 else [capacity_max]
if smoke:  # smoke runs (-p steps 20) check the plumbing: a shorter curve
    capacity_sizes = capacity_sizes[:2]
print(f"{slots_per_fact} slots per fact; the FIFO bank of {mcfg.n_slots} slots holds {facts_fit:.0f} facts")
print("facts stored:", capacity_sizes)

# %%
# NBVAL_IGNORE_OUTPUT
curve = capacity_curve(model, task, capacity_sizes, questions=64, seed=seed, evict=False)
curve_fifo = capacity_curve(model, task, capacity_sizes, questions=64, seed=seed, no_eviction=curve)
fig = plot_capacity_curve({"no eviction": curve, "FIFO": curve_fifo}, chance=1 / 26, facts_fit=facts_fit)
save_figure(fig, out_dir, "capacity_curve")
cols = ["n_slots", "slots_per_fact", "questions", "exact_match", "char_accuracy", "from_no_eviction"]
capacity = pd.concat({"no eviction": pd.DataFrame(curve).set_index("n_facts")[cols],
                      "FIFO": pd.DataFrame(curve_fifo).set_index("n_facts")[cols]}, axis=1)
capacity[("FIFO", "bank_bound")] = [min(1.0, facts_fit / n) for n in capacity.index]
capacity

# %% [markdown]
# ## 8. What the memory costs ordinary text
#
# The backbone's validation loss by the repository's evaluator (the first
# `lm_blocks` fixed blocks of the validation split, 0: all of them, each from an
# empty context), with the bank empty and holding `lm_facts` held-out facts. An
# empty bank leaves the model exactly its backbone; a filled one is read at every
# position of every block.

# %%
# NBVAL_IGNORE_OUTPUT
model.memory.reset()
lm_empty = evaluate_split(model, result.data, mcfg.block_size, "val", max_blocks=lm_blocks)
model.call(torch.tensor([tok.encode(task.write_text(task.facts(lm_facts, random.Random(seed), "heldout")))]))
lm_facts_loaded = evaluate_split(model, result.data, mcfg.block_size, "val", max_blocks=lm_blocks)
model.memory.reset()
print(f"validation loss, bank empty: {lm_empty['val_loss']:.4f}; holding {lm_facts} facts: "
      f"{lm_facts_loaded['val_loss']:.4f} ({lm_empty['val_blocks']} blocks of {mcfg.block_size})")

# %% [markdown]
# A filled bank costs ordinary text because nothing in stages 2a and 2b ever showed the
# memory ordinary text: every read it trained on had its answer in the bank, so the gate
# learned to let reads through. **Stage 2d** (`train_gate`, `gate_steps` steps, on a copy
# of the seed-1337 memory) adds the missing case: each step fills a bank with `lm_facts`
# unrelated training facts and takes the language-modelling loss of random training-split
# text read through it, plus the loss of a 2b episode (so the memory still answers):
# $L = \mathrm{CE}(\text{text} \mid \text{unrelated bank}) + \mathrm{CE}(\text{answers} \mid \text{call 1})$.
# The memory layer trains, the backbone stays frozen. The gate alone
# ($\sigma(w_g [h; W_o r])$, linear) cannot tell "an unrelated read" from "the answer" well
# enough: it closes on both. Then the same measurement, and recall on the same tasks as
# section 5 (this seed only).

# %%
show_source(train_gate)

# %%
# NBVAL_IGNORE_OUTPUT
if gate_steps is None:
    gate_steps = memory_steps
quiet = copy.deepcopy(model)
gate_history = train_gate(quiet, result.data, para_task, gate_steps, bank_facts=lm_facts,
                          batch_size=mcfg.memory_batch, seed=seed)
quiet.call(torch.tensor([tok.encode(task.write_text(task.facts(lm_facts, random.Random(seed), "heldout")))]))
lm_after_gate = evaluate_split(quiet, result.data, mcfg.block_size, "val", max_blocks=lm_blocks)
quiet.memory.reset()
recall_after_gate = {t: {"before": per_seed[0][t]["memory"]["exact_match"],
                         "after": recall(quiet, tasks[t], eval_facts, recall_trials, seed)["exact_match"]}
                     for t in ("same_template", *HELDOUT_SETTINGS)}
print(f"stage 2d, {gate_steps} steps: validation loss holding {lm_facts} facts "
      f"{lm_facts_loaded['val_loss']:.4f} -> {lm_after_gate['val_loss']:.4f} (bank empty: {lm_empty['val_loss']:.4f})")
pd.DataFrame(recall_after_gate).T

# %% [markdown]
# ## 9. Stories: several people, held-out wordings, distractors, updates
#
# A fact per line in one wording is what an exact lookup of call 1 solves. A
# **story** (`physllm/hopfield/stories.py`) has several people, each with an
# object (`has`), a place (`in`) and a colour, in shuffled sentences written in
# one of several templates per attribute; call 2 asks one question per
# (person, attribute) from an empty context, and the answer (a word and its
# full stop) must be exact. Each attribute's write, update and question templates
# are split into training and held-out ones.
#
# **Stage 2c** continues each seed's memory after 2b (a copy: sections 6-8 used the
# facts memory) for `story_steps` steps on stories in the *training* templates with
# near-duplicate names, two updates and two distractor sentences each (1 to
# `story_entities` people). With `story_wordings` > 0 it also draws from that many
# generated wordings per attribute and kind (`generated_story_templates`: a few cue words
# of the attribute, filler and question words around the name, then the value). The rule
# that keeps held-out wordings unseen: a generated wording may use any *single* word, a
# held-out template's cue words included ("thing", "belongs", "place": a paraphrase reuses
# known words in a new frame), but never two adjacent tokens (words, marks, the name or
# the value slot) that stand together in a held-out template and in no training one; the
# test suite checks it, and the cell below too. Evaluation, `story_episodes` stories of
# `story_entities` people per seed and variant:
#
# * **train**: story and questions in training templates (new names and stories);
# * **heldout_ask**: the story in training templates, the questions in held-out
#   ones: the words before the answer never preceded it in call 1;
# * **heldout_both**: story, questions and names all held out;
# * **distractors**: heldout_ask with `story_distractors` unrelated sentences of the
#   Python docs written after the story (training saw a small fixed pool);
# * **interference**: heldout_ask with near-duplicate names (mara and maro) and two
#   updates ("mara moved to the mill."), where the latest value is the answer.
#
# Readers, on the same stories and questions: the memory, no memory, the token
# n-gram cache and the kNN-LM of section 5, plus two that read the text itself:
# **ngram_words**, a word-level cache (the word after the latest occurrence of the
# longest suffix of the question, up to 8 words), and the **solver**, a parser of the
# templates (right by construction: it says the questions are answerable). Model
# readers are scored teacher-forced in one pass per story: greedy decoding returns
# the answer exactly when the argmax is right at each answer token given the right
# prefix, so this is the same exact match as generating (the test suite checks it).

# %%
story_tasks = story_variants(story_variants_run.split(","), story_entities, story_distractors)
story_train = StoryTask(templates="train", interference=True, distractors=2, wordings=story_wordings)
generated = [t for a in ATTRIBUTES for k in ("write", "update", "ask") for t in generated_story_templates(a, k, max(story_wordings, 8))]
print("generated story wordings, e.g.:", [t.text for t in generated[::40]])
print("none holds a piece of a held-out frame:", not any(uses_heldout_frame(t.text) for t in generated))
assert not any(uses_heldout_frame(t.text) for t in generated)
if story_steps is None:
    story_steps = min(60, memory_steps)
print("stage 2c, a training story:")
example_story = story_train.story(random.Random(seed))
print(example_story.write_text + "".join(f"  call 2: {p!r} -> {a!r}\n" for p, a in example_story.questions[:3]))
for name, story_task in story_tasks.items():
    shown = story_task.story(random.Random(seed))
    print(f"{name}: {shown.questions[0][0]!r} -> {shown.questions[0][1]!r}")

# %%
# NBVAL_IGNORE_OUTPUT
story_stage = {**stage, "batch_size": story_batch, "max_facts": story_entities}
story_per_seed, story_histories, story_error_seeds = [], [], []
for m, s in zip(seed_models, seeds):
    story_model = copy.deepcopy(m)
    story_histories.append(train_memory(story_model, StoryEpisodes(story_train, tok), story_steps,
                                        **{**story_stage, "seed": s}, progress=False))
    story_per_seed.append(compare_story_readers(readers(story_model, ngram_n), story_tasks, tok, story_episodes, s))
    story_error_seeds.append({v: story_errors(MemoryReader(story_model), story_tasks[v], tok, story_episodes, s)
                              for v in story_tasks if v != "train"})
story_summary = seed_summary(story_per_seed, interval)
print(f"stage 2c: {story_steps} steps per seed, loss {story_histories[0][0]['train_loss']:.3f} -> "
      + ", ".join(f"{h[-1]['train_loss']:.3f}" for h in story_histories) + " (seeds)")
summary_table(story_summary)

# %%
# What must hold at any setting: the questions are answerable from call 1, and every
# reader was asked the same questions.
print("solver right on every question of every variant and seed:",
      all(r[v]["solver"]["exact_match"] == 1.0 for r in story_per_seed for v in r))
assert all(r[v]["solver"]["exact_match"] == 1.0 for r in story_per_seed for v in r)
print("every reader asked the same questions:",
      all(len({x["questions"] for x in row.values()}) == 1 for row in story_summary.values()))
assert all(len({x["questions"] for x in row.values()}) == 1 for row in story_summary.values())

# %%
# NBVAL_IGNORE_OUTPUT
print(story_conclusion(story_summary, headline="heldout_ask"))

# %% [markdown]
# **What a wrong answer is.** The memory's greedy answers to the same questions, each
# put in one of `ERROR_KINDS` (`story_errors`, the first label that fits): the latest
# value (right); an earlier value of the same person and attribute (stale: an update
# lost); a value of the same person's other attribute; the same attribute of another
# person; a value the story never wrote; no value at all. Shares of all questions,
# mean over the seeds.

# %%
# NBVAL_IGNORE_OUTPUT
story_error_shares = {v: {k: sum(e[v][k] for e in story_error_seeds) / len(story_error_seeds) for k in ERROR_KINDS}
                      for v in story_error_seeds[0]}
pd.DataFrame(story_error_shares).T.round(3)

# %% [markdown]
# ## 10. GPU preset: NarrativeQA with the summary in memory only
#
# With `preset="gpu"` the memory sits on a pretrained Llama-3.2-3B (LoRA r 16
# on its attention) and is trained on NarrativeQA: call 1 writes the story
# summary, call 2 holds only "Question: ... Answer:". We report token F1 of
# greedy answers on validation questions with and without the memory. Not run
# on the CPU preset (the weights and the dataset come from the hub).

# %%
# NBVAL_IGNORE_OUTPUT
narrativeqa = None
if preset == "gpu":
    from physllm.hopfield.tasks import load_hf_hopfield
    from physllm.training.memory import run_narrativeqa

    gpu_cfg = make_config("hopfield", "gpu", device=device, seed=seed).model_config
    hf_model, hf_tok = load_hf_hopfield(gpu_cfg, device)
    narrativeqa = run_narrativeqa(hf_model, hf_tok, gpu_cfg.memory_steps, gpu_cfg.memory_lr,
                                  gpu_cfg.memory_batch, seed=seed)
    fig = plot_loss_curves({"memory on Llama-3.2-3B": narrativeqa.pop("history")}, title="NarrativeQA memory training")
    save_figure(fig, out_dir, "narrativeqa_loss")
    print(narrativeqa)
else:
    print("NarrativeQA runs with preset='gpu' only")

# %% [markdown]
# ## 11. Results

# %%
# NBVAL_IGNORE_OUTPUT
readers_shown = ["memory", "ngram_cache", "knn_lm", "no_memory"]
headline = {
    "backbone val loss (bank empty)": lm_empty["val_loss"],
    f"backbone val loss ({lm_facts} facts in the bank)": lm_facts_loaded["val_loss"],
    f"backbone val loss ({lm_facts} facts in the bank, after 2d)": lm_after_gate["val_loss"],
    "memory loss, 2a / 2b (last step)": f"{memory_history[-1]['train_loss']:.3f} / {para_history[-1]['train_loss']:.3f}",
    **{f"exact match, {t}, {r}": summary_table(summary).loc[t, r] for t in ("same_template", "heldout_ask", "heldout_both")
       for r in readers_shown},
    "largest n with >= 90% recall, no eviction": max([r["n_facts"] for r in curve if r["exact_match"] >= 0.9], default=0),
    "largest n with >= 90% recall, FIFO": max([r["n_facts"] for r in curve_fifo if r["exact_match"] >= 0.9], default=0),
    **{f"stories, {v}, {r}": summary_table(story_summary).loc[v, r] for v in story_summary
       for r in ["memory", "ngram_cache", "ngram_words", "knn_lm", "no_memory"]},
}
pd.Series(headline, dtype=object)

# %%
baselines = {t: {r: summary[t][r] for r in ("ngram_cache", "knn_lm", "no_memory")} for t in summary}
findings = recall_findings(summary, {"no eviction": curve, "FIFO": curve_fifo},
                           (lm_empty["val_loss"], lm_facts_loaded["val_loss"], lm_facts))
stories = {v: {r: {"mean": row["exact_match"], **row} for r, row in rows.items()} for v, rows in story_summary.items()}
path = write_metrics(
    out_dir,
    metrics,
    runs={"backbone": metrics},
    notebook="05_hopfield",
    memory_steps=memory_steps,
    paraphrase_steps=paraphrase_steps,
    paraphrase_wordings=paraphrase_wordings,
    recall_seeds=seeds,
    memory_train_loss=memory_history[-1]["train_loss"],
    paraphrase_train_loss=para_history[-1]["train_loss"],
    memory_train_s=memory_history[-1]["time_s"] + para_history[-1]["time_s"],
    recall_with_memory=summary["same_template"]["memory"],
    recall_without_memory=summary["same_template"]["no_memory"],
    recall_exact_match=summary["same_template"]["memory"]["exact_match"],
    recall_exact_match_no_memory=summary["same_template"]["no_memory"]["exact_match"],
    recall_with_memory_by_task={t: summary[t]["memory"] for t in summary},
    baselines=baselines,
    paraphrase_heldout={t: summary[t] for t in ("heldout_ask", "heldout_write", "heldout_both")},
    capacity_no_eviction=curve,
    capacity_fifo=curve_fifo,
    lm_loss_bank_empty=lm_empty["val_loss"],
    lm_loss_bank_100_facts=lm_facts_loaded["val_loss"],
    lm_loss_bank_facts=lm_facts,
    lm_loss_bank_100_facts_after_gate=lm_after_gate["val_loss"],
    gate_stage={"steps": gate_steps, "seed": seed, "bank_facts": lm_facts, "task": "2b's (training and generated wordings)",
                "train_loss": gate_history[-1]["train_loss"], "text_loss": gate_history[-1]["text_loss"],
                "recall_exact_match": recall_after_gate},
    learned_beta=model.memory_layer.beta.tolist(),
    stories=stories,
    stories_setup={
        "variants": {v: {k: getattr(t, k) for k in ("n_entities", "templates", "ask_templates", "distractors",
                                                    "distractor_source", "interference", "updates")}
                     for v, t in story_tasks.items()},
        "episodes_per_seed": story_episodes,
        "train_task": {"templates": "train", "interference": True, "distractors": 2, "max_entities": story_entities,
                       "generated_wordings": story_wordings},
        "recency": recency,
        "bind_heads": bind_heads,
        "steps": story_steps,
        "batch_size": story_batch,
        "train_loss": [h[-1]["train_loss"] for h in story_histories],
        "knn_lm": "included: the same kNN-LM reader as section 5, on each story's call 1",
    },
    recall_findings=findings,
    stories_conclusion=story_conclusion(story_summary, headline="heldout_ask"),
    stories_errors={"shares": story_error_shares, "per_seed": story_error_seeds, "reader": "memory"},
    narrativeqa=narrativeqa,
)
print("wrote", path.name)

# %% [markdown]
# ## 12. What the numbers show
#
# The findings below are generated from this run's numbers (section 5's table, the
# capacity curves, section 8), so they always say what the run measured:

# %%
# NBVAL_IGNORE_OUTPUT
gate_line = (f"Stage 2d ({gate_steps} steps, seed {seed}): holding {lm_facts} facts, the validation loss is "
             f"{lm_after_gate['val_loss']:.3f} (before 2d: {lm_facts_loaded['val_loss']:.3f}; bank empty: "
             f"{lm_empty['val_loss']:.3f}); recall before -> after: "
             + ", ".join(f"{t} {r['before']:.2f} -> {r['after']:.2f}" for t, r in recall_after_gate.items()) + ".")
Markdown(findings + "\n\n" + gate_line + "\n\n" + story_conclusion(story_summary, headline="heldout_ask"))

# %% [markdown]
# How to read them, from the mechanism:
#
# * **Same wording is the reviewer's task, and it proves nothing.** The n-gram
#   cache, with no parameters, recalls every same-wording fact: on that task the
#   memory shows nothing an exact lookup of call 1 does not.
# * **kNN-LM is weak here.** The backbone's hidden state at "...NAME is " depends on
#   the position in the call (learned absolute positions) and on the facts before it,
#   so the nearest stored state is rarely the fact asked about.
# * **Held-out wordings are where a memory must beat a lookup.** The n-gram cache
#   cannot bridge two wordings. The memory can, when its key and its query both carry
#   the name: the pooled key encoder adds the same n-grams of the name wherever it
#   stands in the window, so a held-out *question* matches a fact written in a
#   training wording. A held-out *fact* wording is harder: the written key also holds
#   that wording's own words, and the read sums similarity over the whole key. Trained
#   on three wordings, the key leans on their connectors; trained on many generated
#   ones (2b, `paraphrase_wordings`), where only the name is shared by a fact and its
#   question, it learns to weigh the name and little else (`-p paraphrase_wordings 0`
#   shows the difference). With the convolution (`-p key_encoder conv`), held-out fact wordings fail almost
#   entirely: its weights are per offset, and no training template put the name at a
#   held-out template's offset.
# * **Capacity.** With a bank that holds everything written, falling recall is
#   interference between learned keys, not eviction (training saw at most
#   `memory_facts` facts per episode); FIFO adds eviction past the facts that fit, at
#   the dotted bound.
# * **Stories**: where they fall short, it is the choice of which fact to read, not
#   the spelling: most wrong answers are the same attribute of *another person* or
#   another attribute of the right one (the table "What a wrong answer is"; a stale
#   value only where updates were written). A read
#   adds up similarity over the whole pooled key, so "mara" and "has" count separately;
#   nothing in the layer binds the name to the attribute, and three people share every
#   attribute's cue words. The two remedies tried here do not change that: generated
#   story wordings (`-p story_wordings 64`) teach frame-free cue words but cost the
#   training wordings, and the recency term (`-p recency True`) learns $\gamma_h \approx 0$,
#   since in a story the fact asked about is rarely the latest thing written about anyone.
# * **Ordinary text**: before 2d a filled bank raises the loss because stages 2a and 2b
#   only ever showed the memory reads whose answer was in the bank. Stage 2d shows it
#   ordinary text with an unrelated bank, which removes most of that cost at a small
#   price in recall (above).
