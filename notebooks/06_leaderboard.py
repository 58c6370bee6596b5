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
# # 06 · Leaderboard: every architecture at the same budget
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/physllm/physllm/blob/main/notebooks/06_leaderboard.ipynb)
#
# Notebooks 00 to 05 each put one physics-inspired model beside a vanilla GPT.
# This one puts all of them in one table: every registered model (the
# context vector in both its forms, NGT with both kernels) trained on the
# same text, with the same tokenizer, batch, block, number of steps, schedule,
# optimizer settings and seed, each sized to within 10% of GPT's parameter
# count. Then: validation loss and bits per byte, training and inference
# speed, peak memory and wall time in one table; loss against steps and
# against training time; and speed and memory against sequence length.
#
# Nothing here is new code: the models, presets and trainer are the ones the
# other notebooks use, the entries, the matching and the table live in
# `physllm/experiments/leaderboard.py`, and the README's table is rendered by
# `physllm/reporting/readme.py`.
#
# Headless: `python -m physllm report 06_leaderboard` (this notebook into
# `reports/06_leaderboard/<run>/`, and the README's results table regenerated
# from its `metrics.json`), or `papermill notebooks/06_leaderboard.ipynb out.ipynb -p steps 1000`.

# %%
# Setup: on Colab, install the repository; anywhere else it is already installed.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "git+https://github.com/physllm/physllm"],
        check=True,
    )

# %% tags=["parameters"]
steps = None  # None: the recipe's optimizer steps (cpu 400, gpu 10000), the same for every model
preset = "auto"  # "cpu" (about 3-4 minutes on 2 cores) or "gpu" (25M-parameter models); auto: gpu with CUDA
corpus = "default"  # "default": the recipe's (TinyShakespeare on cpu, WikiText-103 on gpu)
tokenizer = "default"  # "default": bytes, the one tokenizer of every entry
device = "auto"
seed = 1337
out_dir = "runs/06_leaderboard"
entries = "all"  # "all" or comma-separated entry names (gpt, the reference, is always in)
threads = 0  # CPU threads of every run and benchmark (0: torch's default)
sweep_lengths = (
    "default"  # sequence lengths of the speed/memory sweep; "default": the preset's; "": skip
)
sweep_repeats = 1  # interleaved rounds of the sweep (each model's best is kept)

# %%
# NBVAL_IGNORE_OUTPUT
import dataclasses

import pandas as pd
import torch

from physllm.analysis import plot_length_sweep, plot_loss_curves, save_figure
from physllm.bench import format_length_table
from physllm.data import TokenData
from physllm.experiments import leaderboard as lb
from physllm.models import MODELS
from physllm.notebook import corpus_notice, resolve_out_dir, setup, show_source, write_metrics

preset, device = setup(seed=seed, preset=preset, device=device, threads=threads)
threads = threads or torch.get_num_threads()  # explicit from here on: every run gets the same
out_dir = resolve_out_dir(out_dir)
print(f"preset={preset} device={device} torch={torch.__version__} threads={threads}")
print(corpus_notice(corpus if corpus != "default" else lb.recipe(preset)["corpus"]))

# %% [markdown]
# ## 1. The entries and the rules
#
# An entry is a registered model with the overrides that make it a variant.
# Where a variant is far from GPT's size, one integer field is searched to
# match GPT's parameter count: the context vector, attention-free and one
# layer deep, widens its FNN (`n_hidden`); NGT, which has no query and key
# projections, widens its MLP (`mlp_hidden=0` matches it to GPT by itself).
# The Hopfield model is a GPT backbone plus a memory layer; in language
# modelling its bank is empty and the memory is not read, so it trains as its
# backbone (its point, recall across calls, is notebook 05's), and its row
# shows what the unused layer costs.

# %%
show_source(lb.Entry)
pd.DataFrame(
    [(e.name, e.model, e.variant, e.match or "") for e in lb.select_entries(entries)],
    columns=["entry", "model", "variant", "matched field"],
).set_index("entry")

# %% [markdown]
# One recipe for everyone: nanoGPT's Shakespeare-char CPU recipe (4 layers,
# 4 heads, width 128, block 64, batch 12, AdamW at 1e-3 with cosine decay),
# on **bytes** rather than characters, because QLLM is byte-level by design
# and a byte tokenizer is the same for every corpus. TinyShakespeare is plain
# ASCII, so a byte is a character and bits per byte are bits per character.
# A configuration is built in layers (the model's own preset, then the
# recipe, then the variant, then the matched width), so whatever a model's
# preset says about its own training (the context vector's preset, for one,
# carries its state from block to block) comes along.

# %%
rec = lb.recipe(preset)
if corpus != "default":
    rec["corpus"] = corpus
if tokenizer != "default":
    rec["tokenizer"] = tokenizer
budget = dict(
    lb.smoke_budget(steps, preset),
    corpus=rec["corpus"],
    tokenizer=rec["tokenizer"],
    seed=seed,
    device=device,
    threads=threads,
    progress=False,
    tensorboard=False,
)
data = TokenData.load(rec["corpus"], rec["tokenizer"])  # tokenized once, shared by every run
configs = lb.build_configs(
    preset, data.tokenizer.vocab_size, lb.select_entries(entries), out_dir=out_dir, **budget
)
shown = ("corpus", "tokenizer", "steps", "batch_size", "lr", "min_lr", "warmup_steps", "seed")
print({k: v for k, v in configs["gpt"].to_dict().items() if k in shown})
ref_params = lb.count_params("gpt", configs["gpt"].model_config.to_dict())
for name, cfg in configs.items():
    n = lb.count_params(cfg.model, cfg.model_config.to_dict())
    print(f"{name:<22} {n:>10,} parameters  x{n / ref_params:.3f}")
within = all(
    abs(lb.count_params(c.model, c.model_config.to_dict()) / ref_params - 1) <= lb.PARAM_TOLERANCE
    for c in configs.values()
)
print(f"every entry within {lb.PARAM_TOLERANCE:.0%} of GPT's parameters:", within)
assert within

# %% [markdown]
# ## 2. Training
#
# One after another in this process, through `physllm.training.train`. After each
# run the trained model streams text: a 16-token validation prompt, then one
# token per `decode_step` call up to the block length (GPT reads its key/value
# cache, the context vector its state, QLLM its global memory; the others
# recompute the window), batch 1. Inference tokens/s is one over the median
# step time.

# %%
# NBVAL_IGNORE_OUTPUT
print("corpus:", data.corpus)
results = lb.run_entries(configs)
metrics = {name: r.metrics for name, r in results.items()}

# %% [markdown]
# ## 3. Speed and memory against sequence length
#
# The training runs above shared one process, so neither their peak memory
# (the process's high-water mark only grows) nor, on a busy machine, their
# speed compares cleanly. Here each model runs in a fresh process, in turns:
# a training step at batch 12 (cpu) and each length, its peak memory, and
# streaming decode up to that length. The first length is the training block:
# its row gives the table its peak memory and speed ratio. The same command
# line: `python -m physllm bench --all --mode lengths --lengths 64,128,256`.

# %%
# NBVAL_IGNORE_OUTPUT
sweep_rows, sweep_cfg = [], None
lengths = lb.SWEEPS[preset]["lengths"] if sweep_lengths == "default" else sweep_lengths
if lengths:
    block = configs["gpt"].model_config.block_size
    lengths = ",".join(str(v) for v in sorted({block, *map(int, str(lengths).split(","))}))
    sweep_cfg, labels = lb.sweep_config(
        configs, preset, device=device, threads=threads, repeats=sweep_repeats, lengths=lengths
    )
    sweep_rows = lb.run_sweep(sweep_cfg, labels)
    print(format_length_table(sweep_rows, sweep_cfg))

# %% [markdown]
# ## 4. The table
#
# `val loss` in nats per byte and `bits/byte` on the validation split (the
# best checkpoint, 20 batches); `train tok/s` and `train wall s` from the
# training run itself; `infer tok/s` from the streaming decode after it;
# `peak MB`, `speed x gpt` and `mem x gpt` from the isolated sweep at the
# training length. `state carried`: the context vector's preset trains it on
# consecutive blocks with its state handed on (truncated BPTT), and the
# trainer evaluates it the same way, so its validation loss is read with the
# text before each block in its state, where every other model sees a
# window of one block.

# %%
# NBVAL_IGNORE_OUTPUT
block_size = configs["gpt"].model_config.block_size
rows = lb.leaderboard_rows(metrics, sweep_rows, block_size)
table = lb.leaderboard_frame(rows)
pd.options.display.float_format = "{:,.3f}".format
table

# %%
missing = sorted(set(MODELS) - set(table["model"]))
print("every registered model is in the table:", not missing, missing or "")
assert not missing or entries != "all"

# %% [markdown]
# With an empty bank the Hopfield model is its GPT backbone: built from the
# same seed, it starts from GPT's weights and takes the same steps, so its
# losses must be GPT's.

# %%
if "hopfield" in metrics:
    same = abs(metrics["hopfield"]["val_loss"] - metrics["gpt"]["val_loss"]) < 1e-4
    print("hopfield (empty memory) has GPT's validation loss:", same)
    assert same

# %%
# A trained model must have learned more than byte frequencies (not asserted for
# smoke runs, which have had no time to learn).
unigram_loss = data.unigram_loss()
learned = all(m["val_loss"] < unigram_loss - 0.3 for m in metrics.values())
print("every model beats the unigram loss by > 0.3 nats:", learned or configs["gpt"].steps < 200)
assert learned or configs["gpt"].steps < 200

# %% [markdown]
# ## 5. Curves
#
# Loss against optimizer steps (validation as markers) and against training
# seconds (evaluation excluded): at the same number of steps the models saw
# the same tokens; against time, a slow model pays for its speed.

# %%
# NBVAL_IGNORE_OUTPUT
histories = {name: r.history for name, r in results.items()}
unit = metrics["gpt"]["bpc_unit"]
fig = plot_loss_curves(histories, title=f"every model, {metrics['gpt']['corpus']} {unit}s")
_ = save_figure(fig, out_dir, "loss_vs_steps")
fig = plot_loss_curves(histories, x="time_s", title="training loss against training time")
_ = save_figure(fig, out_dir, "loss_vs_time")

# %%
# NBVAL_IGNORE_OUTPUT
if sweep_rows:
    fig = plot_length_sweep(
        sweep_rows, title=f"speed and memory against length, {metrics['gpt']['device']}"
    )
    _ = save_figure(fig, out_dir, "speed_memory_vs_length")

# %% [markdown]
# ## 6. At scale: the `gpu` preset
#
# `preset="gpu"` (the default when CUDA is there) trains 25M-parameter
# models: GPT with 8 layers, 8 heads and width 512 on WikiText-103 bytes,
# block 512, 32 sequences a step, 10k steps (164M bytes), bf16 autocast; the
# context vector stacks four layers to reach that size. It has not been run:
# no GPU has been available to this project. On a CUDA box
# (`colab/run_gpu.sh`, or Colab):
#
# ```
# python -m physllm report 06_leaderboard            # preset auto = gpu there
# ```
#
# which writes `reports/06_leaderboard/gpu/` and adds a GPU table to the
# README beside the CPU one. The recipe:

# %%
print(lb.recipe("gpu"))
print("sweep:", lb.SWEEPS["gpu"])

# %% [markdown]
# ## 7. Results
#
# `metrics.json`: GPT's run at the top level (what the reports index shows),
# every entry's metrics under `runs`, the table's rows under `leaderboard`
# (what the README's table is generated from) and the sweep's rows.

# %%
path = write_metrics(
    out_dir,
    metrics["gpt"],
    runs=metrics,
    notebook="06_leaderboard",
    preset=preset,
    batch_size=configs["gpt"].batch_size,
    param_tolerance=lb.PARAM_TOLERANCE,
    recipe={k: v for k, v in rec.items()},
    entries={name: {"model": c.model, **c.model_config.to_dict()} for name, c in configs.items()},
    leaderboard=rows,
    sweep=sweep_rows,
    sweep_config=dataclasses.asdict(sweep_cfg) if sweep_cfg else {},
    unigram_loss=unigram_loss,
)
print("wrote", path.name)
