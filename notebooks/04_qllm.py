# ---
# jupyter:
#   jupytext:
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
# # 04 · QLLM: phases, global memory tokens and LoRA on a byte-level transformer
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/physllm/physllm/blob/main/notebooks/04_qllm.ipynb)
#
# The seed project "QLLM" is a byte-level transformer with three additions
# that borrow the language of quantum physics: a **PhaseRotator** that
# multiplies hidden channels by a phase-dependent factor, **16 global
# tokens** prepended to every sequence, and a **coherence loss** on the
# phases; it is fine-tuned with **LoRA**. This notebook works out what each
# piece really computes, fixes the ones that do not do what their name says,
# and measures everything against a byte-level vanilla GPT with the same
# number of parameters trained for the same number of steps.
#
# The seed reports a byte perplexity of 3.425 (1.78 bits per byte) on
# WikiText-2 at 768 wide, 12 layers, 12 heads, sequence 256, with no baseline.
# `preset="gpu"` is that configuration (`papermill notebooks/04_qllm.ipynb
# out.ipynb -p preset gpu`) and reports ours and the baseline's.
#
# **Budget.** At the defaults (`preset="cpu"`) the notebook trains 11 models
# and runs in about 3 minutes on 2 quiet CPU cores: QLLM and GPT at
# nanoGPT's Shakespeare shape for 400 steps each (about 35 s each), a LoRA
# fine-tune (100 steps, about 10 s), and eight ablation runs at a tiny shape
# (2 layers, width 64, batch 16, 250 steps, about 8 s each). `-p steps 20` caps every
# run at 20 steps (a smoke test).

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
steps = None  # None: the preset's number of optimizer steps (caps the ablation and fine-tune too)
preset = "auto"  # "cpu" (about 3 minutes on 2 cores), "gpu" (the seed's WikiText-2 run); auto: gpu when CUDA is available
corpus = "default"  # "default": TinyShakespeare if on disk, else the offline pydocs corpus
tokenizer = "byte"
device = "auto"
seed = 1337
out_dir = "runs/04_qllm"
phase = "rotation"  # gain (the seed's PhaseRotator) | rotation | none
phase_per_position = True  # rotation: one phase per (position, channel pair)
global_tokens = "recurrent"  # seed (constant prefix) | recurrent (memory across segments) | off
coherence = 0.1  # lambda, weight of the coherence loss
finetune_corpus = (
    "pydocs"  # LoRA fine-tune: from `corpus` to this one (Python source if `corpus` is this one)
)
finetune_steps = 100
lora_rank = 32
lora_alpha = 64.0
ablation_steps = 250
sample_tokens = 200
threads = 0  # torch CPU threads of this kernel and of the gap grid's runs (0: torch's default)
gap_seeds = 0  # > 0: the gap over this many new seeds at tuned rates (the committed report: 5)
gap_lrs = "3e-4,1e-3,3e-3,1e-2"  # the learning rates both models of the gap grid are tried at

# %%
# NBVAL_IGNORE_OUTPUT
import copy
import dataclasses
import inspect
import math
import time
from pathlib import Path

import pandas as pd
import torch

from physllm.analysis import loss_table, plot_loss_curves, save_figure
from physllm.data import TokenData, resolve_default_corpus
from physllm.experiments.gaps import paired_gaps
from physllm.lora import LoRALinear, lora_parameter_counts, merge_lora
from physllm.models import build_model
from physllm.notebook import (
    corpus_notice,
    headline_gaps,
    headline_metrics,
    resolve_out_dir,
    setup,
    show_source,
    write_metrics,
)
from physllm.qllm.model import (
    QLLM,
    PhaseGain,
    PhaseRotation,
    QLLMConfig,
    coherence_loss,
    window_mask,
)
from physllm.sampling import generate
from physllm.training import (
    autocast_context,
    evaluate_loss,
    get_preset,
    make_config,
    matched_baseline,
    resolve_device,
    train,
)

notebook_start = time.perf_counter()
preset, device = setup(seed=seed, preset=preset, device=device, threads=threads)
out_dir = resolve_out_dir(out_dir)
print(
    f"preset={preset} device={device} torch={torch.__version__} threads={torch.get_num_threads()}"
)
print(corpus_notice(corpus))

# %% [markdown]
# ## 1. Derivation
#
# ### 1.1 What the seed's PhaseRotator computes
#
# For each hidden channel $c$ the seed keeps a parameter $p_c$, sets a phase
# $\varphi_c = \pi \tanh p_c \in (-\pi, \pi)$ and outputs
#
# $$ y_c = x_c\,(\cos\varphi_c - \sin\varphi_c) = \sqrt2\,\cos\!\left(\varphi_c + \tfrac{\pi}{4}\right) x_c . $$
#
# That is a real **gain** $g_c \in [-\sqrt2, \sqrt2]$ per channel, equal to
# 1 at $p_c = 0$ (so the module starts as the identity). Writing $z = x + ix$
# and rotating it, $e^{i\varphi} z = x(\cos\varphi - \sin\varphi) + i\,x(\cos\varphi + \sin\varphi)$:
# the seed keeps the real part of a rotation of a complex number whose
# imaginary part is a copy of its real part, and throws the imaginary part
# away. Nothing is rotated.
#
# ### 1.2 Why a per-channel gain is not a rotation
#
# A rotation $R$ is orthogonal ($R^\top R = I$, so $|Rx| = |x|$) and has
# determinant 1. A diagonal gain $D = \mathrm{diag}(g)$ is orthogonal only if
# every $g_c = \pm 1$; otherwise it stretches some directions and shrinks
# others, and it never mixes two channels. A true rotation needs pairs:
# treat $(x_{2j}, x_{2j+1})$ as $z_j = x_{2j} + i x_{2j+1}$ and multiply by a
# unit complex number,
#
# $$ z_j' = e^{i\theta_j} z_j, \qquad |z_j'| = |z_j| . $$
#
# Two consequences for a transformer (both checked numerically below):
#
# * The gain sits right after a LayerNorm, whose learned weight $w$ already
#   scales each channel: $g \odot \mathrm{LN}_w(x) = \mathrm{LN}_{g \odot w}(x)$.
#   The seed's module is a reparameterisation of LayerNorm's weight: it adds
#   no function the plain transformer cannot compute.
# * A rotation with one phase per channel pair, feeding the linear maps
#   $W_Q, W_K, W_V$, is absorbed by them too: $W(Rx) = (WR)x$. Only a
#   **per-position** phase $\theta_{t,j}$ escapes: then $q_t \cdot k_s$
#   depends on $R_t^\top W_Q^\top W_K R_s$, a learned function of both
#   positions, the way RoPE makes attention depend on relative position.
#   That is why this notebook's main model uses `phase_per_position=True`.
#
# ### 1.3 What global tokens can and cannot carry
#
# The seed prepends $G = 16$ learned vectors that attend only to each other.
# Nothing they compute depends on the text, so after every layer they are the
# same vectors for every input: a **learned constant prefix**. They can hold
# a bias that every byte may attend to (a place to park attention, a
# summary of the training corpus); they cannot carry anything about *this*
# text, and they cannot extend the context.
#
# `globals="recurrent"` makes them memory, as in the Recurrent Memory
# Transformer: the block is cut into segments; segment $k$ reads memory $m_k$
# ($G$ vectors), its bytes attend to $m_k$ and to earlier bytes of the
# segment, and a write copy of the globals attends to the whole segment;
# the write copy's final hidden state is $m_{k+1}$. Positions restart at 0 in
# every segment, so a byte sees earlier segments **only** through $m_k$: at
# most $G \times C$ numbers, written before the byte's segment began.
# Information flows forward (segment $k$ to $k+1$) and never backward, so
# causality holds; during generation the memory keeps going past the training
# block at constant cost per byte.
#
# ### 1.4 The coherence loss
#
# The seed penalises phases that disagree. We define it on the phases of
# every layer (per channel for the gain, per pair for rotations, along the
# channel axis at each position for per-position phases) as
#
# $$ \mathcal L_\text{coh} = \operatorname{mean}_j \bigl(1 - \cos(\varphi_{j+1} - \varphi_j)\bigr), \qquad \mathcal L = \mathcal L_\text{LM} + \lambda\,\mathcal L_\text{coh} , $$
#
# zero when neighbouring channels share a phase, and periodic in $2\pi$ as a
# penalty on phases must be. It is a training objective only: validation bits
# per byte are the cross-entropy alone, comparable across $\lambda$.

# %% [markdown]
# The gain as a function of the raw parameter, and the norm test: the
# seed's module changes the length of a vector, a rotation does not.

# %%
torch.manual_seed(seed)
gain, rot = PhaseGain(64), PhaseRotation(64)
with torch.no_grad():
    gain.p.normal_(0, 1)
    rot.theta.normal_(0, 1)
x = torch.randn(1000, 64)
print("gain is identity at p=0:", torch.equal(PhaseGain(64)(x), x))
phi = math.pi * torch.tanh(gain.p.detach())
print("gain == x (cos phi - sin phi):", torch.allclose(gain(x), x * (phi.cos() - phi.sin())))
print(
    "gain == sqrt2 cos(phi + pi/4) x:",
    torch.allclose(gain(x), math.sqrt(2) * torch.cos(phi + math.pi / 4) * x, atol=1e-6),
)
print("rotation preserves |x|:", torch.allclose(rot(x).norm(dim=-1), x.norm(dim=-1), atol=1e-5))
print("gain preserves |x|:", torch.allclose(gain(x).norm(dim=-1), x.norm(dim=-1), atol=1e-5))

# %%
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt

p_grid = torch.linspace(-3, 3, 301)
phi_grid = math.pi * torch.tanh(p_grid)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].plot(p_grid, phi_grid.cos() - phi_grid.sin())
axes[0].axhline(math.sqrt(2), ls=":", c="gray")
axes[0].axhline(-math.sqrt(2), ls=":", c="gray")
axes[0].set(
    xlabel="p",
    ylabel="gain cos(phi) - sin(phi)",
    title="the seed's 'rotator' is a gain in [-sqrt2, sqrt2]",
)
ratio_gain = (gain(x).norm(dim=-1) / x.norm(dim=-1)).detach()
ratio_rot = (rot(x).norm(dim=-1) / x.norm(dim=-1)).detach()
axes[1].hist(ratio_gain, bins=40, alpha=0.7, label="gain (seed)")
axes[1].axvline(1.0, c="C1", lw=3, label="rotation: exactly 1")
axes[1].set(xlabel="|y| / |x|", title="norm ratio on random vectors (random phases)")
axes[1].legend()
fig.tight_layout()
save_figure(fig, out_dir, "phase_forms")

# %% [markdown]
# The absorption arguments of 1.2, checked on whole models: a QLLM with the
# seed's gain equals a phase-free QLLM whose LayerNorm weights absorbed the
# gains; a QLLM with one rotation per channel pair equals a phase-free QLLM
# whose $W_Q, W_K, W_V$ absorbed the rotations. A per-position rotation has
# no such equivalent.


# %%
def small(**kw):
    torch.manual_seed(seed)
    values = dict(
        block_size=32, n_layer=2, n_head=2, n_embd=32, n_global=4, segment_len=16, globals="seed"
    )
    model = QLLM(QLLMConfig(**{**values, **kw})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("phase.p", "phase.theta")):
                p.normal_(0, 1)
    return model


idx = torch.randint(0, 256, (2, 32))
with torch.no_grad():
    seeded = small(phase="gain")
    plain = small(phase="none")
    plain.load_state_dict({k: v for k, v in seeded.state_dict().items() if "phase" not in k})
    for b_seed, b_plain in zip(seeded.blocks, plain.blocks):
        g = b_seed.phase.phases().cos() - b_seed.phase.phases().sin()
        b_plain.ln_1.weight.mul_(g)  # g * LN_w(x) = LN_{g w}(x)
    print("gain absorbed into LayerNorm:", torch.allclose(seeded(idx)[0], plain(idx)[0], atol=1e-5))

    rotated = small(phase="rotation")
    plain = small(phase="none")
    plain.load_state_dict({k: v for k, v in rotated.state_dict().items() if "phase" not in k})
    for b_rot, b_plain in zip(rotated.blocks, plain.blocks):
        R = b_rot.phase(torch.eye(32)[None])[0].T  # columns: R e_i
        for name in ("q", "k", "v"):
            getattr(b_plain.attn, name).weight.copy_(
                getattr(b_plain.attn, name).weight @ R
            )  # W' = W R
    print(
        "constant rotation absorbed into W_Q, W_K, W_V:",
        torch.allclose(rotated(idx)[0], plain(idx)[0], atol=1e-5),
    )

# %% [markdown]
# ## 2. Implementation walk-through
#
# `physllm/qllm/model.py` reads top to bottom: config, the three phase
# forms, the coherence loss, attention and block, the attention mask that
# places the globals, and the model. The phase forms:

# %%
show_source(PhaseGain)
show_source(PhaseRotation)
show_source(coherence_loss)

# %% [markdown]
# Who may attend to whom in one window `[read globals | bytes | write globals]`:

# %%
show_source(window_mask)
print(window_mask(2, 4, write=True).int())

# %% [markdown]
# One segment through the blocks, then the loop that carries the memory
# from segment to segment (the generic trainer sees an ordinary
# `forward(idx, targets)`: the segmentation lives inside the model):

# %%
show_source(QLLM.segment)
show_source(QLLM.hidden_states)
show_source(QLLM.forward)

# %% [markdown]
# Causality, checked on a small model in both global modes: changing byte
# $t+1$ leaves every logit at positions $\le t$ unchanged. With recurrent
# globals, a change in segment 1 leaves segment 0 alone, while a change in
# segment 0 reaches the first byte of segment 1, which can see segment 0 only
# through the memory.


# %%
def causal(model, idx):
    logits = model(idx)[0]
    ok = True
    for t in range(idx.size(1) - 1):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 256
        ok &= torch.allclose(model(changed)[0][:, : t + 1], logits[:, : t + 1], atol=1e-6)
    return ok


with torch.no_grad():
    for mode in ("seed", "recurrent", "off"):
        print(
            f"globals={mode}: no byte sees a later byte:",
            causal(
                small(globals=mode, phase_per_position=mode == "recurrent", phase="rotation"), idx
            ),
        )
    rec = small(globals="recurrent")
    S = rec.config.segment_len
    base_logits = rec(idx)[0]
    later, earlier = idx.clone(), idx.clone()
    later[:, S + 2] = (later[:, S + 2] + 9) % 256
    earlier[:, 3] = (earlier[:, 3] + 9) % 256
    print(
        "change in segment 1 leaves segment 0 unchanged:",
        torch.allclose(rec(later)[0][:, :S], base_logits[:, :S], atol=1e-6),
    )
    print(
        "change in segment 0 reaches segment 1 through the memory:",
        not torch.allclose(rec(earlier)[0][:, S], base_logits[:, S], atol=1e-4),
    )

# %% [markdown]
# ## 3. QLLM against a byte-level GPT at matched parameters and steps
#
# Both models train through the same `physllm.training.train` on bytes, with the
# preset's shape, batch, schedule and steps; QLLM's extra parameters (the
# globals, the phases, the memory norm) are about 1% of the total.


# %%
def capped(n):
    return n if steps is None else min(n, steps)


values = get_preset("qllm", preset)
if steps is not None:
    values["steps"] = steps
common = dict(corpus=corpus, tokenizer=tokenizer, device=device, seed=seed, progress=False)
qcfg = make_config(
    "qllm",
    **{**values, **common},
    phase=phase,
    phase_per_position=phase_per_position,
    globals=global_tokens,
    coherence=coherence,
    out_dir=str(out_dir / "qllm"),
)
gcfg = matched_baseline(qcfg, out_dir=str(out_dir / "gpt"))  # QLLM's shape, data and schedule
print(qcfg.model_config)
print(gcfg.model_config)
print(
    "steps",
    qcfg.steps,
    "batch",
    qcfg.batch_size,
    "block",
    qcfg.model_config.block_size,
    "corpus",
    qcfg.corpus,
)

# %%
# NBVAL_IGNORE_OUTPUT
q_run = train(qcfg)
g_run = train(gcfg)
runs = {"qllm": q_run.metrics, "gpt": g_run.metrics}
for name, m in runs.items():
    print(
        f"{name:5} {m['params']:>9,} params  val {m['val_loss']:.4f} nats = {m['val_bpc']:.3f} bits/byte  {m['ms_per_step']:.0f} ms/step"
    )

# %%
print(
    "parameter ratio qllm/gpt within 3%:",
    abs(q_run.metrics["params"] / g_run.metrics["params"] - 1) < 0.03,
)
assert abs(q_run.metrics["params"] / g_run.metrics["params"] - 1) < 0.03

# %%
# NBVAL_IGNORE_OUTPUT
fig = plot_loss_curves(
    {"qllm": q_run.history, "gpt": g_run.history},
    title=f"QLLM vs GPT on {q_run.metrics['corpus']} bytes ({q_run.metrics['steps']} steps, {q_run.metrics['device']})",
)
save_figure(fig, out_dir, "loss_curves")

# %% [markdown]
# ### The gap over seeds
#
# The two runs above are one seed each at the preset's learning rate. With
# `-p gap_seeds N` (the committed report runs 5), `physllm.experiments.gaps`
# puts both configs through the protocol of notebook 06: each model at every
# rate of `gap_lrs` (seed 0), the rate with the lowest validation loss kept
# (one rule for both), then N new seeds at that rate, each run in its own
# process and scored on the whole validation split. The gap is paired by seed
# with a Student-t 95% interval ("better" or "worse" only when it excludes 0);
# this row is the README's. It says whether QLLM beats GPT at this budget, not
# why: QLLM also computes about 1.4x GPT's FLOPs per byte (its global tokens),
# and it cuts each block into 32-byte segments whose positions restart.
#
# **Controls**, through the same grid (tuned rate each, the same seeds), so a
# gain can be attributed:
#
# * `qllm_reset`: QLLM with its memory reset for every segment
#   (`segment_memory="reset"`): the same tokens and compute, no memory of the
#   text. QLLM minus this is what carrying the memory is worth.
# * `segments`: no memory tokens and no phases (`segment_memory="none"`,
#   `phase="none"`): a GPT on the same 32-byte segments with restarted
#   positions. `qllm_reset` minus this is what the (constant) memory tokens and
#   phases are worth; `segments` minus GPT what cutting the block costs.
# * `gpt_flops`: GPT whose MLP is widened until its training FLOPs per token
#   equal QLLM's (`matched_baseline(..., by="flops")`). QLLM minus this asks
#   whether QLLM beats GPT at equal compute.
#
# "Memory helps" is said only if `qllm - qllm_reset` excludes 0; a constant
# phase rotation is absorbed by the next linear layer (section 2), so phases
# are credited only through these rows.

# %%
# NBVAL_IGNORE_OUTPUT
gap_configs = {"qllm": qcfg, "gpt": gcfg}
if gap_seeds and global_tokens == "recurrent":
    gap_configs.update(
        qllm_reset=dataclasses.replace(
            qcfg, model_config=dataclasses.replace(qcfg.model_config, segment_memory="reset")
        ),
        segments=dataclasses.replace(
            qcfg,
            model_config=dataclasses.replace(
                qcfg.model_config, segment_memory="none", phase="none", phase_per_position=False
            ),
        ),
        gpt_flops=matched_baseline(
            qcfg, match="mlp_hidden", by="flops", out_dir=str(out_dir / "gpt_flops")
        ),
    )
headline = headline_gaps(gap_configs, gap_seeds, gap_lrs, out_dir, threads)
control_pairs = [
    ("qllm", "qllm_reset"),
    ("qllm_reset", "segments"),
    ("segments", "gpt"),
    ("qllm", "gpt_flops"),
]
controls = paired_gaps(headline, control_pairs)
if controls:
    print(
        pd.DataFrame(controls).T[["mean", "ci95_low", "ci95_high", "n_seeds", "verdict"]].round(4)
    )

# %% [markdown]
# Both models must have learned to use context: a unigram model of bytes
# (no context at all) is the floor to beat.

# %%
unigram_loss = q_run.data.unigram_loss()
learned = all(m["val_loss"] < unigram_loss - 0.3 for m in runs.values())
print("both beat the unigram baseline by > 0.3 nats:", learned or qcfg.steps < 300)
assert learned or qcfg.steps < 300

# %%
# NBVAL_IGNORE_OUTPUT
print(
    f"unigram {unigram_loss / math.log(2):.3f} bits/byte; qllm {q_run.metrics['val_bpc']:.3f}, gpt {g_run.metrics['val_bpc']:.3f}; "
    f"qllm - gpt = {q_run.metrics['val_bpc'] - g_run.metrics['val_bpc']:+.3f} bits/byte; "
    f"speed ratio qllm/gpt {q_run.metrics['tokens_per_sec'] / g_run.metrics['tokens_per_sec']:.2f}"
)

# %% [markdown]
# What the phases learned, per layer (for a per-position rotation: position
# down, channel pair across; the rows past the bytes are the globals'):

# %%
# NBVAL_IGNORE_OUTPUT
phases = [p.detach().cpu() for p in q_run.model.phases()]
if phases:
    fig, axes = plt.subplots(1, len(phases), figsize=(3 * len(phases), 3), squeeze=False)
    for i, (ax, ph) in enumerate(zip(axes[0], phases)):
        ph2 = ph if ph.dim() == 2 else ph[None]
        im = ax.imshow(ph2, aspect="auto", cmap="twilight", vmin=-math.pi, vmax=math.pi)
        ax.set_title(f"layer {i}")
    fig.colorbar(im, ax=axes[0].tolist(), label="phase (rad)")
    save_figure(fig, out_dir, "phases")
    print("coherence loss after training:", float(coherence_loss([p for p in phases])))

# %% [markdown]
# Samples, through the shared sampler (repetition penalty, temperature,
# top-k, top-p, min-p). With recurrent globals, generation carries the
# memory from segment to segment, past the training block:

# %%
# NBVAL_IGNORE_OUTPUT
tok = q_run.tokenizer
gen = torch.Generator().manual_seed(seed)
prompt = torch.tensor(
    [tok.encode("ROMEO:" if q_run.metrics["corpus"] == "shakespeare" else "The ")],
    device=q_run.model.wte.weight.device,
)
out = generate(
    q_run.model,
    prompt,
    sample_tokens,
    temperature=0.8,
    top_k=50,
    top_p=0.95,
    min_p=0.02,
    repetition_penalty=1.1,
    generator=gen if prompt.device.type == "cpu" else None,
)
print(tok.decode(out[0].tolist()))

# %% [markdown]
# ## 4. LoRA: fine-tune from one corpus to another
#
# LoRA freezes every base weight $W$ and trains a low-rank update,
# $W x + \frac{\alpha}{r} B A x$ with $A \in \mathbb R^{r \times d_\text{in}}$
# random and $B \in \mathbb R^{d_\text{out} \times r}$ zero at the start (so
# the adapted model starts exactly at the base model). Here $r = 32$,
# $\alpha = 64$ on $W_Q, W_K, W_V, W_O$ of every layer. `physllm.lora` is
# generic: the Hopfield notebook uses the same code on HF Llama's
# `q_proj ... o_proj`.

# %%
show_source(LoRALinear)
show_source(merge_lora)

# %% [markdown]
# The fine-tune is an ordinary training run: the same config with
# `lora_rank=32`, a new corpus, and `init_from` pointing at the trained QLLM
# (its weights load into the base; the adapters, which the checkpoint lacks,
# keep their init). The loss on the new corpus's validation split is
# measured on the same batches before and after. The new corpus is the
# Python documentation (`pydocs`) after TinyShakespeare; where the main run
# read `pydocs` already (offline, without TinyShakespeare), it is Python
# code: the standard library's `inspect.py`, which every Python install
# carries, a shift from English prose to source code.

# %%
ft_corpus = finetune_corpus
if ft_corpus == q_run.metrics["corpus"]:
    ft_corpus = inspect.getsourcefile(inspect)  # about 120 KB of Python, always on disk
ft_name = Path(ft_corpus).name if Path(ft_corpus).is_file() else ft_corpus
ft_cfg = copy.deepcopy(qcfg)
ft_cfg.corpus, ft_cfg.out_dir, ft_cfg.init_from = (
    ft_corpus,
    str(out_dir / "qllm_lora"),
    str(q_run.out_dir / "best"),
)
ft_cfg.steps, ft_cfg.warmup_steps, ft_cfg.eval_interval = (
    capped(finetune_steps),
    10,
    max(1, capped(finetune_steps) // 2),
)
ft_cfg.lr, ft_cfg.min_lr, ft_cfg.weight_decay = 2e-3, 2e-4, 0.0
ft_cfg.model_config.lora_rank, ft_cfg.model_config.lora_alpha = lora_rank, lora_alpha
adapted = build_model("qllm", ft_cfg.model_config)
counts = lora_parameter_counts(adapted)
print(
    f"LoRA fine-tune: {counts['lora']:,} adapter parameters "
    f"({counts['lora'] / counts['total']:.1%} of {counts['total']:,}); trainable {counts['trainable']:,}"
)
assert (
    counts["trainable"]
    == counts["lora"]
    == q_run.model.config.n_layer * 4 * lora_rank * 2 * q_run.model.config.n_embd
)

# %%
# NBVAL_IGNORE_OUTPUT
print(f"fine-tune {q_run.metrics['corpus']} -> {ft_name}")
ft_data = TokenData.load(ft_corpus, tokenizer)
dev = resolve_device(device)
ctx, _ = autocast_context(dev, ft_cfg.dtype)
eval_seed, eval_iters = (
    ft_cfg.seed + 20_000,
    max(ft_cfg.eval_iters, 20),
)  # the trainer's final-eval batches
loss_before, _ = evaluate_loss(
    q_run.model, ft_data, eval_iters, "val", ft_cfg.batch_size, eval_seed, dev, ctx
)
ft_run = train(ft_cfg)
loss_after = ft_run.metrics["val_loss"]
print(
    f"{ft_name} val loss: base {loss_before:.4f} -> LoRA {loss_after:.4f} nats "
    f"({loss_before / math.log(2):.3f} -> {ft_run.metrics['val_bpc']:.3f} bits/byte) after {ft_cfg.steps} steps"
)

# %%
print("fine-tuning lowered the new corpus's loss:", loss_after < loss_before)
assert loss_after < loss_before

# %% [markdown]
# Only the adapters changed, and merging them into the weights
# ($W' = W + \frac{\alpha}{r} BA$) gives the same logits as the unmerged
# model, with plain linear layers again:

# %%
base_sd, tuned_sd = q_run.model.state_dict(), ft_run.model.state_dict()
print("base weights untouched:", all(torch.equal(tuned_sd[k], v) for k, v in base_sd.items()))
probe = torch.tensor(ft_data.splits["val"][:64].astype("int64"))[None].to(dev)
with torch.no_grad():
    unmerged = ft_run.model(probe)[0]
    merged_model = merge_lora(copy.deepcopy(ft_run.model))
    merged = merged_model(probe)[0]
print("merged == unmerged (1e-5):", torch.allclose(merged, unmerged, atol=1e-5))
print(
    "no adapters left after merging:",
    not any(isinstance(m, LoRALinear) for m in merged_model.modules()),
)
assert torch.allclose(merged, unmerged, atol=1e-5)

# %% [markdown]
# ## 5. Ablations
#
# One factor at a time around this notebook's QLLM, and the seed's own
# combination (gain + constant-prefix globals + coherence), each a real
# training run. On the CPU preset they use a tiny shape (2 layers, width 64,
# 4 heads, block 64 = two 32-byte segments, 8 globals, batch 16, lr 2e-3)
# and `ablation_steps` steps so that eight runs fit in the budget; the `gpu`
# preset runs them at 6 layers, width 384, for 2000 steps. Two seeds of
# the main combination show how much of a difference is noise: at this
# budget, differences smaller than that are not resolved.

# %%
if preset == "cpu":
    # lr 2e-3 and batch 16: a tiny model tolerates both, and leaves the unigram plateau sooner
    tiny_shape = dict(
        n_layer=2,
        n_head=4,
        n_embd=64,
        batch_size=16,
        lr=2e-3,
        min_lr=2e-4,
        eval_interval=10_000,
        eval_iters=10,
        warmup_steps=25,
    )
else:  # a GPU box: a medium shape, 2000 steps per cell
    tiny_shape = dict(
        n_layer=6, n_head=6, n_embd=384, grad_accum=1, lr=6e-4, min_lr=6e-5, warmup_steps=100
    )
main = dict(
    phase=phase, phase_per_position=phase_per_position, globals=global_tokens, coherence=coherence
)
variants = {
    "main": {},
    "main, seed 2": {"seed": seed + 1},
    "phase gain": dict(phase="gain", phase_per_position=False),
    "phase none": dict(phase="none", phase_per_position=False),
    "globals off": dict(globals="off"),
    "globals seed": dict(globals="seed"),
    "globals recurrent": dict(globals="recurrent"),
    "coherence off": dict(coherence=0.0),
    "seed's QLLM (gain, seed globals)": dict(
        phase="gain", phase_per_position=False, globals="seed"
    ),
}
ablation_n = capped(ablation_steps if preset == "cpu" else 2000)
ablation_cfgs = {}
for label, change in variants.items():
    knobs = {**main, **change}
    if knobs == main and label not in ("main", "main, seed 2"):
        continue  # the main combination already
    run_seed = knobs.pop("seed", seed)
    ablation_cfgs[label] = make_config(
        "qllm",
        **{**values, **common, **tiny_shape, **knobs, "seed": run_seed, "steps": ablation_n},
        tensorboard=False,
        out_dir=str(
            out_dir
            / "ablation"
            / label.replace(" ", "_")
            .replace(",", "")
            .replace("'", "")
            .replace("(", "")
            .replace(")", "")
        ),
    )
print(len(ablation_cfgs), "ablation runs:", ", ".join(ablation_cfgs))

# %%
# NBVAL_IGNORE_OUTPUT
ablation = {}
for label, cfg in ablation_cfgs.items():
    ablation[label] = train(cfg).metrics
    m = ablation[label]
    print(f"{label:34} {m['val_bpc']:.3f} bits/byte  {m['ms_per_step']:.0f} ms/step")

# %%
# NBVAL_IGNORE_OUTPUT

noise = abs(ablation["main"]["val_bpc"] - ablation["main, seed 2"]["val_bpc"])
rows = {}
for label, m in ablation.items():
    diff = m["val_bpc"] - ablation["main"]["val_bpc"]
    mc = m["model_config"]
    rows[label] = {
        "phase": mc.get("phase", "-") + (" per position" if mc.get("phase_per_position") else ""),
        "globals": mc.get("globals", "-"),
        "coherence": mc.get("coherence", "-"),
        "params": m["params"],
        "val bits/byte": round(m["val_bpc"], 4),
        "vs main": round(diff, 4),
        "beyond seed noise": "-" if label.startswith("main") else abs(diff) > noise,
        "coherence loss": round(m.get("aux_coherence", float("nan")), 4),
        "ms/step": round(m["ms_per_step"], 1),
    }
ablation_table = pd.DataFrame(rows).T
print(f"seed-to-seed difference of the main combination: {noise:.4f} bits/byte")
ablation_table

# %%
# NBVAL_IGNORE_OUTPUT
fig, ax = plt.subplots(figsize=(8, 4))
labels = list(ablation)
ax.barh(
    labels,
    [ablation[k]["val_bpc"] for k in labels],
    color=["C1" if k.startswith("main") else "C0" for k in labels],
)
lo = min(ablation[k]["val_bpc"] for k in labels)
ax.set_xlim(lo - 0.1, max(ablation[k]["val_bpc"] for k in labels) + 0.05)
ax.invert_yaxis()
ax.set_xlabel("validation bits per byte (lower is better)")
ax.set_title(f"ablations ({next(iter(ablation.values()))['steps']} steps each, tiny shape)")
fig.tight_layout()
save_figure(fig, out_dir, "ablation")

# %% [markdown]
# ## 6. Results

# %%
# NBVAL_IGNORE_OUTPUT
main_table = loss_table(
    {"qllm": q_run.metrics, "gpt": g_run.metrics, f"qllm + LoRA on {ft_name}": ft_run.metrics}
)
main_table["val bits/byte"] = main_table["val_bpc"]
main_table

# %%
# NBVAL_IGNORE_OUTPUT
metrics = dict(q_run.metrics)
extra = dict(
    notebook="04_qllm",
    gpt_val_bpc=g_run.metrics["val_bpc"],
    bpc_delta_vs_gpt=q_run.metrics["val_bpc"] - g_run.metrics["val_bpc"],
    speed_ratio_vs_gpt=q_run.metrics["tokens_per_sec"] / g_run.metrics["tokens_per_sec"],
    unigram_bpc=unigram_loss / math.log(2),
    lora={
        "corpus": ft_corpus,
        "adapter_params": counts["lora"],
        "loss_before": loss_before,
        "loss_after": loss_after,
    },
    ablation={
        k: {"val_bpc": m["val_bpc"], "params": m["params"], "ms_per_step": m["ms_per_step"]}
        for k, m in ablation.items()
    },
    ablation_seed_noise_bpc=noise,
    seed_claim_bpc=math.log2(3.425),
    notebook_wall_s=time.perf_counter() - notebook_start,
    **headline_metrics(headline),
    controls=controls,
)
print(
    f"QLLM ({phase}{' per position' if phase_per_position else ''}, globals {global_tokens}, lambda {coherence}) "
    f"vs byte GPT at {q_run.metrics['params']:,} / {g_run.metrics['params']:,} parameters and {q_run.metrics['steps']} steps: "
    f"{q_run.metrics['val_bpc']:.3f} vs {g_run.metrics['val_bpc']:.3f} bits/byte ({extra['bpc_delta_vs_gpt']:+.3f}), "
    f"{extra['speed_ratio_vs_gpt']:.2f}x GPT's tokens/s. Seed's claim at its GPU scale: {extra['seed_claim_bpc']:.2f} bits/byte."
)
path = write_metrics(
    out_dir,
    metrics,
    runs={
        "qllm": q_run.metrics,
        "gpt": g_run.metrics,
        "qllm_lora": ft_run.metrics,
        **{f"ablation/{k}": m for k, m in ablation.items()},
    },
    **extra,
)
print(f"wrote {path}; notebook wall time {extra['notebook_wall_s']:.0f} s")
