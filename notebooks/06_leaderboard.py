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
# # 06 · Leaderboard: every architecture under one protocol
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/physllm/physllm/blob/main/notebooks/06_leaderboard.ipynb)
#
# Notebooks 00 to 05 each put one physics-inspired model beside a vanilla GPT.
# This one puts all of them through one protocol, so that a difference in the
# table is a claim only when it survives the noise of training:
#
# 1. every registered model (the context vector in both its forms, NGT with
#    both kernels) on the same text, tokenizer, batch, block and schedule, each
#    sized to within 10% of GPT's parameter count, at each size;
# 2. a **learning-rate stage**: a few rates, one seed, the short budget; each
#    entry and size gets the rate with the lowest validation loss (one rule for
#    the baseline and every candidate);
# 3. a **seeds stage**: new seeds at that rate, at each budget;
# 4. the **paired gap** to GPT (seed s of both sees the same data order) with a
#    Student-t 95% interval; "better" or "worse" only when the interval excludes
#    0, otherwise "not resolved";
# 5. loss against tokens, FLOPs and wall-clock with seed bands, and speed and
#    memory against sequence length.
#
# Every run is its own process (`python -m physllm train`, via
# `physllm.experiments.sweep`), appending one row to a stage's `results.csv`;
# running the notebook again skips the runs already there, so a killed
# protocol resumes. The numbers come from `physllm.training.evaluate_split`
# (the whole validation split in fixed blocks, the same tokens for every
# model).
#
# `protocol="smoke"` (the default, what nbval runs) is a reduced grid of
# minutes: three entries, one size, two rates, three seeds, 40 steps; its
# numbers show the machinery, not a result. `protocol="cpu"` runs
# `experiments/protocol_cpu.toml` (every entry, two sizes, 400 and 2000
# steps: one to two hours on two cores), `protocol="gpu"`
# `experiments/protocol_gpu.toml`. Headless, the committed CPU report:
# `python -m physllm report 06_leaderboard --reference --replace -p protocol cpu --run-name cpu`
# (this notebook into `reports/06_leaderboard/cpu/`, with `results.csv` and every
# run's metrics and history under `protocol_cpu_<corpus>/`; the README's
# leaderboard section is regenerated from its `metrics.json`).

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
protocol = "smoke"  # smoke (minutes), cpu or gpu (experiments/protocol_<name>.toml)
corpus = "default"  # "default": the protocol's (TinyShakespeare on cpu, WikiText-103 on gpu)
device = "auto"
out_dir = "runs/06_leaderboard"
threads = 0  # CPU threads of every run and benchmark (0: torch's default)
sweep_lengths = "default"  # lengths of the speed/memory sweep; "default": the preset's; "": skip
sweep_repeats = 1  # interleaved rounds of the sweep (each model's best is kept)

# %%
# NBVAL_IGNORE_OUTPUT
import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from physllm.analysis import plot_length_sweep, plot_seed_bands, save_figure
from physllm.bench import format_length_table
from physllm.data import TokenData, resolve_default_corpus
from physllm.experiments import leaderboard as lb
from physllm.experiments import protocol as pr
from physllm.experiments import stats, sweep
from physllm.models import MODELS
from physllm.notebook import corpus_notice, resolve_out_dir, setup, show_source, write_metrics
from physllm.reporting import readme as rd

specs = pr.load_protocol(protocol, out_dir="unused")  # the stages, to read the preset
preset, device = setup(seed=1337, preset=specs[0].preset, device=device, threads=threads)
threads = threads or torch.get_num_threads()  # explicit from here on: every run gets the same
out_dir = resolve_out_dir(out_dir)
if corpus == "default":
    corpus = specs[0].corpus or lb.recipe(preset)["corpus"]
corpus = resolve_default_corpus() if corpus == "default" else corpus  # shakespeare or pydocs
# each protocol and corpus in its own folder: a rerun resumes it, and never mixes corpora
sweep_dir = out_dir / f"protocol_{protocol}_{Path(corpus).stem}"
specs = pr.load_protocol(protocol, sweep_dir, corpus=corpus, threads=threads, device=device)
print(
    f"protocol={protocol} preset={preset} device={device} torch={torch.__version__} threads={threads}"
)
print(corpus_notice(corpus))

# %% [markdown]
# ## 1. The entries and the rules
#
# An entry is a registered model with the overrides that make it a variant.
# Where a variant is far from GPT's size, one integer field is searched to
# match GPT's parameter count at each size: the context vector, attention-free
# and one layer deep, widens its FNN (`n_hidden`); NGT, which has no query and
# key projections, widens its MLP. The Hopfield model is a GPT backbone plus a
# memory layer; in language modelling its bank is empty and the memory is not
# read, so it trains as its backbone (its point, recall across calls, is
# notebook 05's).

# %%
pd.DataFrame(
    [
        (e.name, e.model, e.variant, e.match or "")
        for e in lb.select_entries(list(specs[0].entries))
    ],
    columns=["entry", "model", "variant", "matched field"],
).set_index("entry")

# %% [markdown]
# The protocol's stages: the keys every stage shares, then each stage's own.
# The learning-rate rule and the paired interval are these functions:

# %%
pd.DataFrame(
    [
        {
            "stage": s.name,
            "entries": len(s.entries),
            "sizes": ", ".join(s.sizes),
            "seeds": ", ".join(map(str, s.seeds)),
            "lrs": s.lrs if s.lrs == "best" else ", ".join(f"{v:g}" for v in s.lrs),
            "steps": ", ".join(map(str, s.steps)),
            "runs": len(s.entries)
            * len(s.sizes)
            * len(s.seeds)
            * len(s.steps)
            * (1 if s.lrs == "best" else len(s.lrs)),
        }
        for s in specs
    ]
).set_index("stage")

# %%
show_source(sweep.pick_lr)
show_source(stats.interval)
show_source(stats.verdict)

# %% [markdown]
# ## 2. Running the protocol
#
# Stage by stage, each run in a fresh process; a line per finished run. The
# numbers each run's process reports (its metrics.json) are the final ones: the
# best checkpoint scored on the validation split by the one evaluator.

# %%
# NBVAL_IGNORE_OUTPUT
t0 = time.perf_counter()
summaries = sweep.run_stages(specs)
protocol_wall_s = time.perf_counter() - t0
lr_spec, final = specs[0], specs[-1]
lr_results = pd.read_csv(lr_spec.results_path)
results = pd.read_csv(final.results_path)
print(f"this session: {protocol_wall_s:.0f} s; every run's training wall time summed: "
      f"{lr_results['wall_s'].sum() + results['wall_s'].sum():.0f} s")  # fmt: skip
results.head()

# %% [markdown]
# ## 3. The learning rate of each entry and size
#
# Validation loss of the learning-rate stage (one seed, the short budget); the
# picked rate is the lowest, the same rule for every entry.

# %%
# NBVAL_IGNORE_OUTPUT
pm = pr.protocol_metrics(results, lr_results)
lr_table = lr_results.pivot_table(index=["entry", "size"], columns="lr", values="val_loss")
lr_table["picked"] = [pm["best_lr"][e][str(s)] for e, s in lr_table.index]
lr_table

# %%
# the seeds stage ran each entry and size at the rate the lr stage picked
ran = pr.best_lrs(results)
print("seeds stage at the picked rates:", ran == pm["best_lr"])
assert ran == pm["best_lr"]

# %% [markdown]
# ## 4. The gaps to GPT
#
# Per entry, size and budget: the entry's val loss minus GPT's, paired by seed,
# its 95% interval, and the verdict ("better" or "worse" only when the interval
# excludes 0). With a handful of seeds and small models many gaps are not
# resolved; that is the honest reading.

# %%
# NBVAL_IGNORE_OUTPUT
summary = pr.summary_rows(results)
gap_frame = pd.DataFrame(
    [
        {"entry": e, "size": s, "steps": int(n), **g}
        for e, by_size in pm["gaps"].items()
        for s, by_steps in by_size.items()
        for n, g in by_steps.items()
    ]
).set_index(["entry", "size", "steps"])
pd.options.display.float_format = "{:,.4f}".format
gap_frame

# %%
# every verdict follows its interval ("better"/"worse" only when it excludes 0)
nan_if_none = lambda v: math.nan if v is None else v  # noqa: E731
cells = [
    g for by_size in pm["gaps"].values() for by_steps in by_size.values() for g in by_steps.values()
]
agree = all(g["verdict"] == stats.verdict(nan_if_none(g["ci95_low"]), nan_if_none(g["ci95_high"]))
            for g in cells)  # fmt: skip
print("every verdict is its interval's:", agree)
assert agree

# %% [markdown]
# ## 5. Speed and memory against sequence length
#
# The runs above each had their own process, one after another; here each model
# at the headline size runs once more in a fresh process, in turns: a training
# step at each length and its peak memory, and streaming decode up to that
# length. The first length is the training block: its row gives the table its
# peak memory and ratios. The same command line:
# `python -m physllm bench --all --mode lengths --lengths 64,128,256`.

# %%
# NBVAL_IGNORE_OUTPUT
size, steps = pr.headline_cell(results)
data = TokenData.load(corpus, final.tokenizer or lb.recipe(preset)["tokenizer"])
configs = sweep.size_configs(final, data.tokenizer.vocab_size, size)
block = configs["gpt"].model_config.block_size
sweep_rows, sweep_cfg = [], None
lengths = lb.SWEEPS[preset]["lengths"] if sweep_lengths == "default" else sweep_lengths
if lengths:
    lengths = ",".join(str(v) for v in sorted({block, *map(int, str(lengths).split(","))}))
    sweep_cfg, labels = lb.sweep_config(
        configs, preset, device=device, threads=threads, repeats=sweep_repeats, lengths=lengths
    )
    sweep_rows = lb.run_sweep(sweep_cfg, labels)
    print(format_length_table(sweep_rows, sweep_cfg))

# %% [markdown]
# ## 6. The table
#
# At the headline cell (GPT's largest size, the longest budget): means over
# seeds of the val loss (nats per token) and bits per unit, training tokens/s
# and wall time from the runs; inference (streaming decode, batch 1), peak
# memory and the ratios to GPT from the isolated sweep at the training length.

# %%
# NBVAL_IGNORE_OUTPUT
rows = pr.leaderboard_rows(results, sweep_rows, block)
table = lb.leaderboard_frame(rows)
pd.options.display.float_format = "{:,.3f}".format
table

# %%
# every entry of the protocol has its row, and every registered model is in a full protocol
entries = set(final.entries)
print("every entry has a row:", set(table.index) == entries)
assert set(table.index) == entries
missing = sorted(set(MODELS) - {r["model"] for r in rows})
assert not missing or protocol == "smoke", missing
within = all(abs(r["params_vs_gpt"] - 1) <= lb.PARAM_TOLERANCE for r in rows)
print(f"every entry within {lb.PARAM_TOLERANCE:.0%} of GPT's parameters:", within)
assert within

# %% [markdown]
# ## 7. Loss against tokens, FLOPs and wall-clock
#
# Training loss of every seed at the headline cell: the line is the mean over
# seeds, the band spans the lowest to the highest seed. Against tokens the
# models saw the same text; against FLOPs (training FLOPs per token, counted by
# `FlopCounterMode`, times tokens) a model pays for its arithmetic; against
# seconds, for its speed on this machine.

# %%
# NBVAL_IGNORE_OUTPUT
axes = (("tokens", "tokens seen", "tokens"), ("flops", "training FLOPs", "flops"),
        ("time_s", "training seconds", "time"))  # fmt: skip
for x, label, name in axes:
    groups = pr.curves(results, final.runs_dir, size, steps, x=x)
    fig = plot_seed_bands(groups, label, title=f"training loss against {label}, {size}, {steps} steps",
                          logx=x == "flops")  # fmt: skip
    _ = save_figure(fig, out_dir, f"loss_vs_{name}")

# %%
# NBVAL_IGNORE_OUTPUT
if sweep_rows:
    fig = plot_length_sweep(sweep_rows, title=f"speed and memory against length, {device}")
    _ = save_figure(fig, out_dir, "speed_memory_vs_length")

# %% [markdown]
# ## 8. At scale: the `gpu` protocol
#
# `protocol="gpu"` runs `experiments/protocol_gpu.toml`: the same two stages
# on the `gpu` recipe (WikiText-103 bytes, block 512, batch 32, bf16 autocast;
# GPT with 8 layers and width 256 or 512), five seeds at 2000 and 10000 steps.
# It has not been run: no GPU has been available to this project. On a CUDA
# box: `python -m physllm report 06_leaderboard -p protocol gpu`.

# %%
print(lb.recipe("gpu"))
print("sweep:", lb.SWEEPS["gpu"])

# %% [markdown]
# ## 9. Results
#
# `metrics.json`: GPT's headline numbers at the top level (what the reports
# index shows), `best_lr[entry][size]`, `gaps[entry][size][steps]` (mean,
# ci95_low, ci95_high, n_seeds, verdict), the means over seeds (`summary`), the
# table's rows (`leaderboard`) and the sweep's rows; `results.csv` (the seeds
# stage) and `results_lr.csv` (the learning-rate stage) beside it. The README's
# leaderboard section is generated from these files:

# %%
# NBVAL_IGNORE_OUTPUT
shutil.copy(final.results_path, out_dir / "results.csv")
shutil.copy(lr_spec.results_path, out_dir / "results_lr.csv")
gpt_params = {str(r["size"]): int(r["params"]) for r in summary if r["entry"] == "gpt"}
gpt_id = results.query("entry == 'gpt' and status == 'ok'")["run_id"].iloc[0]
gpt_run = json.loads((final.runs_dir / gpt_id / "metrics.json").read_text())
gpt_row = rows[0]
main = {
    "model": "gpt",
    "params": gpt_row["params"],
    "steps": steps,
    "tokens_seen": gpt_row["tokens_seen"],
    "val_loss": gpt_row["val_loss"],
    "val_bpc": gpt_row["val_bpc"],
    "bpc_unit": gpt_row["bpc_unit"],
    **{k: gpt_run.get(k) for k in ("corpus", "tokenizer", "device", "torch_version", "git_sha")},
}
path = write_metrics(
    out_dir,
    main,
    notebook="06_leaderboard",
    preset=preset,
    protocol={
        "name": protocol,
        "sizes": final.sizes,
        "params": gpt_params,
        "stages": [
            {
                "name": s.name,
                "seeds": list(s.seeds),
                "lrs": s.lrs if s.lrs == "best" else list(s.lrs),
                "steps": list(s.steps),
            }
            for s in specs
        ],
        "session_wall_s": protocol_wall_s,
        "runs_wall_s": float(lr_results["wall_s"].sum() + results["wall_s"].sum()),
        "runs": pm["runs"],
    },  # fmt: skip
    batch_size=configs["gpt"].batch_size,
    block_size=block,
    param_tolerance=lb.PARAM_TOLERANCE,
    best_lr=pm["best_lr"],
    gaps=pm["gaps"],
    lr_at_edge=pm["lr_at_edge"],
    summary=summary,
    leaderboard=rows,
    sweep=sweep_rows,
    sweep_config=dataclasses.asdict(sweep_cfg) if sweep_cfg else {},
)
print("wrote", path.name, "results.csv", "results_lr.csv")
print("\n".join(rd.entry_sentences(json.loads(path.read_text()))))
