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
# attention, how many patterns it can hold), walk through the code, train the
# memory on synthetic facts with a frozen backbone, and measure:
#
# * recall across calls on **held-out** facts ("the code of NAME is CODE",
#   names and codes never seen in training), with and without the memory;
# * the energy of the retrieval over update steps (it must descend);
# * a capacity curve: recall against the number of facts stored.
#
# Headless: `papermill notebooks/05_hopfield.ipynb out.ipynb -p steps 600`.

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
memory_steps = None  # stage-2 steps (None: the preset's memory_steps, or `steps` when that is set)
n_updates = 1  # Hopfield updates per read (1: exactly attention)
combine = "gated"  # add | gated | concat
key_window = 12  # hidden states each key and query sees
eval_facts = 16  # facts written in call 1 of the recall table
capacity_sizes = [1, 4, 16, 64, 128, 256]

# %%
import math
import random

import torch

from physllm.analysis import plot_loss_curves, save_figure
from physllm.hopfield import functional as hopfield_fn
from physllm.hopfield.analysis import (
    energy_descent,
    plot_capacity_curve,
    plot_energy_descent,
    recall_table,
    retrieval_vs_beta,
)
from physllm.hopfield.model import HopfieldLM, HopfieldMemory, MemoryBank
from physllm.hopfield.tasks import FactsTask, capacity_curve, recall
from physllm.notebook import corpus_notice, resolve_out_dir, setup, show_source, write_metrics
from physllm.training import make_config, train, train_memory

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
# ### Storage capacity and $\beta$
#
# For patterns on a sphere of radius $M$ and separation
# $\Delta_i = x_i^\top x_i - \max_{j\ne i} x_i^\top x_j$, a probe near $x_i$ is
# retrieved after one update with an error that falls like
# $2(N-1)\,e^{-\beta(\Delta_i - 2 \beta N M^2)}\,M$ (Ramsauer et al.,
# Theorem 4): large $\beta$ and well separated patterns give one-step
# retrieval, and the number of random patterns that can be stored this way
# grows exponentially with $d$. Small $\beta$ instead gives a *metastable*
# state: the average of many patterns. Below: the energy descent and the
# effect of $\beta$ on random patterns, with the functions the model uses.

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
# last block. A call **writes** one slot per token $s$: the key is a linear
# map of the last `key_window` hidden states (what the context looked like),
# the value the embedding of the *next* token (what came after), so a later
# call in a similar context retrieves what followed. Keys and queries are
# unit-RMS per head, so $\beta_h$ alone sets how sharp each head is.

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
# ## 3. Stage 1: the backbone
#
# The backbone is the repository's char GPT (nanoGPT's Shakespeare shape),
# trained here briefly by the shared trainer. The model is `hopfield` itself:
# during language modelling its bank is empty, and an empty bank leaves the
# backbone untouched (the memory layer gets no gradient), so this is plain
# GPT training and the metrics are the backbone's.

# %%
# The facts experiment uses the char backbone at every preset (it is small); the gpu
# preset adds the NarrativeQA experiment with Llama-3.2-3B in section 9.
overrides = {"steps": steps} if steps is not None else {}
cfg = make_config("hopfield", "cpu", corpus=corpus, tokenizer=tokenizer, device=device, seed=seed, threads=threads,
                  out_dir=str(out_dir / "backbone"), n_updates=n_updates, combine=combine,
                  key_window=key_window, **overrides)
mcfg = cfg.model_config
if memory_steps is None:
    memory_steps = steps if steps is not None else mcfg.memory_steps
print({k: getattr(cfg, k) for k in ("corpus", "tokenizer", "steps", "batch_size")}, "memory_steps", memory_steps)
print({k: getattr(mcfg, k) for k in ("backbone", "n_layer", "n_embd", "mem_heads", "mem_head_dim", "key_window", "n_updates", "combine", "n_slots")})

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

# %%
task = FactsTask(tok.encode)
example = task.episode(1, 2, random.Random(seed))
print(repr(tok.decode(example.write_ids[0].tolist())))
for row, target in zip(example.read_ids, example.read_targets):
    print(repr(tok.decode(row.tolist())), "-> scored:", repr(tok.decode(target[target >= 0].tolist())))
print("memory parameters:", sum(p.numel() for p in model.memory_layer.parameters()))

# %%
# NBVAL_IGNORE_OUTPUT
memory_history = train_memory(model, task, memory_steps, batch_size=mcfg.memory_batch,
                              max_facts=mcfg.memory_facts, lr=mcfg.memory_lr, seed=seed)
print(f"memory loss {memory_history[0]['train_loss']:.3f} -> {memory_history[-1]['train_loss']:.3f} "
      f"in {memory_history[-1]['time_s']:.1f} s")

# %%
# NBVAL_IGNORE_OUTPUT
fig = plot_loss_curves({"backbone (stage 1)": result.history}, title="stage 1: backbone language modelling")
save_figure(fig, out_dir, "backbone_loss")
fig = plot_loss_curves({"memory (stage 2)": memory_history}, title="stage 2: memory, cross-entropy on the codes")
save_figure(fig, out_dir, "memory_loss")

# %% [markdown]
# ## 5. Recall across calls
#
# Call 1 writes `eval_facts` held-out facts; call 2 gets only the questions
# (its tokens hold nothing of call 1: the test suite checks the token ids)
# and answers greedily. Without memory is the same model with the bank reset
# between the calls: then the code is a guess, chance being $26^{-4}$ for an
# exact match and about $1/26$ per character.

# %%
# NBVAL_IGNORE_OUTPUT
with_memory = recall(model, task, eval_facts, trials=8, seed=seed)
without_memory = recall(model, task, eval_facts, trials=8, seed=seed, use_memory=False)
table = recall_table({"with memory": with_memory, "without memory (reset)": without_memory})
table

# %%
# What must hold: without memory the codes cannot be known; with it they are.
# Asserted at the default 150 memory steps and above; smoke tests (`-p steps 20`,
# fewer than 100 memory steps) check the plumbing only, like the capacity curve below.
smoke = memory_steps < 100
print("no-memory recall at chance (< 5%):", without_memory["exact_match"] < 0.05)
assert without_memory["exact_match"] < 0.05
print("memory beats no memory:", with_memory["char_accuracy"] > without_memory["char_accuracy"] or smoke)
assert with_memory["char_accuracy"] > without_memory["char_accuracy"] or smoke
print(">= 90% exact-match recall with memory:", with_memory["exact_match"] >= 0.9 or smoke)
assert with_memory["exact_match"] >= 0.9 or smoke

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
# Recall against the number of facts in memory. Each fact writes one slot
# per character; the bank holds `n_slots`, beyond which FIFO replacement
# forgets the oldest facts, so recall can be at most (facts that fit) / n:
# the dotted bound. Training saw at most `memory_facts` facts per episode.

# %%
slots_per_fact = len(tok.encode(task.write_text(task.facts(1, random.Random(0)))))
facts_fit = mcfg.n_slots / slots_per_fact
print(f"{slots_per_fact} slots per fact; the bank of {mcfg.n_slots} slots holds {facts_fit:.0f} facts")

# %%
# NBVAL_IGNORE_OUTPUT
if memory_steps < 100:  # smoke runs (-p steps 20) check the plumbing: a shorter curve
    capacity_sizes = capacity_sizes[:3]
curve = capacity_curve(model, task, capacity_sizes, questions=32, seed=seed)
curve_without = [recall(model, task, n, trials=1, seed=seed + n, use_memory=False) for n in capacity_sizes[:3]]
fig = plot_capacity_curve(curve, curve_without, chance=1 / 26, facts_fit=facts_fit)
save_figure(fig, out_dir, "capacity_curve")
capacity = pd.DataFrame(curve).set_index("n_facts")
capacity["bank_bound"] = [min(1.0, facts_fit / n) for n in capacity.index]
capacity

# %% [markdown]
# ## 8. A limit: paraphrased questions
#
# Each slot is keyed by the *context* in which a token was written, so the
# memory answers a question that reproduces the fact's wording
# ("the code of NAME is"). Here the same training runs with call 2 asking
# `what is the code of NAME? ` instead, on a fresh memory layer. The query
# must now learn to match a context that never occurred in call 1.

# %%
# NBVAL_IGNORE_OUTPUT
import copy

para_model = copy.deepcopy(model)
para_model.memory_layer = HopfieldMemory(mcfg, para_model.backbone.n_embd)  # untrained memory
para_task = FactsTask(tok.encode, question="what is the code of {name}? ")
para_history = train_memory(para_model, para_task, memory_steps, batch_size=mcfg.memory_batch,
                            max_facts=mcfg.memory_facts, lr=mcfg.memory_lr, seed=seed, progress=False)
paraphrased = recall(para_model, para_task, eval_facts, trials=4, seed=seed)
recall_table({"question = the fact's wording": with_memory, "paraphrased question": paraphrased,
              "no memory": without_memory})

# %% [markdown]
# ## 9. GPU preset: NarrativeQA with the summary in memory only
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
# ## 10. Results

# %%
# NBVAL_IGNORE_OUTPUT
summary = {
    "backbone val loss": metrics["val_loss"],
    "memory loss (last)": memory_history[-1]["train_loss"],
    f"recall, {eval_facts} facts, with memory": with_memory["exact_match"],
    f"recall, {eval_facts} facts, without memory": without_memory["exact_match"],
    "largest n with >= 90% recall": max([r["n_facts"] for r in curve if r["exact_match"] >= 0.9], default=0),
}
pd.Series(summary)

# %%
path = write_metrics(
    out_dir,
    metrics,
    runs={"backbone": metrics},
    notebook="05_hopfield",
    memory_steps=memory_steps,
    memory_train_loss=memory_history[-1]["train_loss"],
    memory_train_s=memory_history[-1]["time_s"],
    recall_with_memory=with_memory,
    recall_without_memory=without_memory,
    recall_exact_match=with_memory["exact_match"],
    recall_exact_match_no_memory=without_memory["exact_match"],
    capacity_curve=curve,
    recall_paraphrased=paraphrased,
    learned_beta=model.memory_layer.beta.tolist(),
    narrativeqa=narrativeqa,
)
print("wrote", path.name)
