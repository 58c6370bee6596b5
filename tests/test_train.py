"""The trainer: schedule, metrics, checkpoints, exact resume, NaN guard, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from physllm.data import TokenData
from physllm.errors import PhysllmError, TrainingDivergedError
from physllm.training import lr_at, make_config, train
from physllm.training.checkpoint import load_checkpoint

from .conftest import REPO, TINY_GPT

DESIGN_KEYS = {
    "model",
    "params",
    "corpus",
    "tokenizer",
    "steps",
    "tokens_seen",
    "train_loss",
    "val_loss",
    "val_bpc",
    "val_loss_reset",
    "val_tokens",
    "val_bits_per_unit",
    "val_perplexity",
    "eval_protocol",
    "flops_per_token",
    "tokens_per_sec",
    "ms_per_step",
    "wall_s",
    "peak_mem_mb",
    "device",
    "torch_version",
    "seed",
    "git_sha",
}


def test_warmup_then_cosine_to_min_lr():
    cfg = make_config("gpt", steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    lrs = [lr_at(s, cfg) for s in range(101)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warmup
    assert lrs[100] == pytest.approx(0.1)


def test_run_writes_metrics_checkpoints_and_learns(tiny_run, small_text_file):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert DESIGN_KEYS <= set(metrics)
    assert metrics["steps"] == 20 and metrics["tokens_seen"] == 20 * 4 * 32
    # the final numbers score the whole val split in blocks of 32 (targets shifted by one)
    n_val = len(TokenData.load(str(small_text_file)).splits["val"])
    assert metrics["val_tokens"] == (n_val - 1) // 32 * 32
    assert metrics["val_bpc"] == metrics["val_bits_per_unit"]
    for folder in ("best", "last"):
        assert (tiny_run / folder / "model.safetensors").exists()
        assert (tiny_run / folder / "config.json").exists()
    assert (tiny_run / "last" / "trainer_state.pt").exists()
    history = json.loads((tiny_run / "history.json").read_text())
    train_losses = [h["train_loss"] for h in history if "train_loss" in h]
    assert train_losses[-1] < train_losses[0] - 0.3  # it learns


def test_make_config_rejects_unknown_options():
    with pytest.raises(PhysllmError, match="unknown option"):
        make_config("gpt", n_layers=3)
    with pytest.raises(PhysllmError, match="unknown model"):
        make_config("gtp")


def run(small_text_file, out, **kw):
    cfg = make_config("gpt", corpus=str(small_text_file), out_dir=str(out), **{**TINY_GPT, **kw})
    return train(cfg)


def test_deterministic_on_cpu(small_text_file, tmp_path):
    a = run(small_text_file, tmp_path / "a", steps=8, eval_interval=4)
    b = run(small_text_file, tmp_path / "b", steps=8, eval_interval=4)
    untimed = lambda r: [{k: v for k, v in h.items() if k != "time_s"} for h in r.history]  # noqa: E731
    assert untimed(a) == untimed(b)
    assert a.metrics["val_loss"] == b.metrics["val_loss"]


def test_resume_gives_the_same_losses(small_text_file, tmp_path):
    kw = dict(
        steps=12, eval_interval=4, log_interval=1, dropout=0.1
    )  # dropout: the RNG state must resume too
    whole = run(small_text_file, tmp_path / "whole", **kw)
    run(
        small_text_file, tmp_path / "split", stop_after=8, **kw
    )  # "killed" after the step-8 checkpoint
    resumed = run(small_text_file, tmp_path / "split", resume=True, **kw)
    losses = lambda r: [(h["step"], h["train_loss"]) for h in r.history if "train_loss" in h]  # noqa: E731
    assert losses(resumed) == losses(whole)
    assert resumed.metrics["val_loss"] == whole.metrics["val_loss"]


TINY_CONTEXT = dict(
    n_embd=16,
    n_hidden=32,
    n_context=12,
    block_size=16,
    batch_size=3,
    eval_iters=2,
    warmup_steps=2,
    carry_state=True,
    progress=False,
    tensorboard=False,
)


def run_context(small_text_file, out, **kw):
    cfg = make_config(
        "context_vector", corpus=str(small_text_file), out_dir=str(out), **{**TINY_CONTEXT, **kw}
    )
    return train(cfg)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_truncated_bptt_hands_each_row_its_state(
    small_text_file, tmp_path, monkeypatch, grad_accum
):
    """carry_state: each step's block continues the last one and starts from its final state."""
    from physllm.context_vector.model import ContextVectorModel

    calls = []
    forward = ContextVectorModel.forward

    def spy(self, idx, targets=None, state=None):
        logits, loss = forward(self, idx, targets, state)
        if self.training:
            calls.append((idx.clone(), targets.clone(), state, self.last_state))
        return logits, loss

    monkeypatch.setattr(ContextVectorModel, "forward", spy)
    run_context(small_text_file, tmp_path, steps=4, grad_accum=grad_accum, eval_interval=100)
    assert len(calls) == 4 * grad_accum
    assert all(state is None for _, _, state, _ in calls[:grad_accum])  # the first block: zeros
    for step in range(1, 4):
        for part in range(grad_accum):
            _, y_prev, _, state_after = calls[(step - 1) * grad_accum + part]
            x, _, state_in, _ = calls[step * grad_accum + part]
            assert torch.equal(x[:, 0], y_prev[:, -1])  # the text goes on where it stopped
            for given, left in zip(state_in, state_after):
                assert torch.equal(given, left)  # ...and so does the context
                assert not given.requires_grad  # detached: backprop stops at the block


def test_truncated_bptt_scores_streams_and_resumes(small_text_file, tmp_path):
    kw = dict(steps=12, eval_interval=4, log_interval=1, dropout=0.1)
    whole = run_context(small_text_file, tmp_path / "whole", **kw)
    run_context(small_text_file, tmp_path / "split", stop_after=8, **kw)
    resumed = run_context(small_text_file, tmp_path / "split", resume=True, **kw)
    losses = lambda r: [(h["step"], h["train_loss"]) for h in r.history if "train_loss" in h]  # noqa: E731
    assert losses(resumed) == losses(whole)  # stream positions and carried state resumed
    m = whole.metrics
    # val_loss: each block from the zero state (comparable); carried: the state handed on
    assert m["val_loss_reset"] == m["val_loss"] and m["val_loss_carried"] != m["val_loss"]
    windows = run_context(small_text_file, tmp_path / "windows", carry_state=False, **kw)
    assert "val_loss_carried" not in windows.metrics
    assert windows.metrics["val_tokens"] == m["val_tokens"]  # the same tokens either way


def test_resume_with_another_config_is_refused(small_text_file, tiny_run):
    with pytest.raises(PhysllmError, match="cannot resume"):
        run(small_text_file, tiny_run, steps=30, resume=True, n_embd=64)


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(small_text_file, tmp_path, monkeypatch):
    import physllm.gpt.model as gpt_module

    real = gpt_module.F.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 12 else loss

    run(small_text_file, tmp_path, steps=4, eval_interval=4)  # a good checkpoint first
    before = (tmp_path / "last" / "model.safetensors").read_bytes()
    monkeypatch.setattr(gpt_module.F, "cross_entropy", poisoned)
    with pytest.raises(TrainingDivergedError, match="last good checkpoint"):
        run(small_text_file, tmp_path, steps=20, eval_interval=100, resume=True)
    assert (tmp_path / "last" / "model.safetensors").read_bytes() == before
    load_checkpoint(tmp_path)  # still loadable


DDP_SCRIPT = """
import hashlib, os, sys, torch
from physllm.training import make_config, train
corpus, out, model = sys.argv[1], sys.argv[2], sys.argv[3]
from physllm.data import StreamSampler
init = StreamSampler.__init__
def spy(self, data, split, *args, **kw):  # which stream rows this rank reads in training
    init(self, data, split, *args, **kw)
    path = os.path.join(out, f"rank{os.environ['RANK']}.rows")
    if split == "train" and not os.path.exists(path):  # the trainer's (the first) sampler
        open(path, "w").write(
            " ".join(str(int(s)) for s in self.starts))
StreamSampler.__init__ = spy
shape = dict(n_layer=1, n_head=2, n_embd=32) if model == "gpt" else dict(
    n_embd=16, n_hidden=32, n_context=12, carry_state=True)  # truncated BPTT: rows split by rank
cfg = make_config(model, corpus=corpus, out_dir=out, steps=6, eval_interval=3, block_size=32,
                  batch_size=4, eval_iters=2, progress=False, tensorboard=False, **shape)
result = train(cfg)
digest = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in result.model.parameters())).hexdigest()
open(os.path.join(out, f"rank{os.environ['RANK']}.sha1"), "w").write(digest)
"""


@pytest.mark.parametrize("model", ["gpt", "context_vector"])
def test_ddp_two_processes_on_cpu(small_text_file, tmp_path, model):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # a free port of its own: the two cases cannot collide
            "--nproc_per_node",
            "2",
            str(script),
            str(small_text_file),
            str(out),
            model,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    hashes = {p.read_text() for p in out.glob("rank*.sha1")}
    assert (
        len(list(out.glob("rank*.sha1"))) == 2 and len(hashes) == 1
    )  # both ranks hold the same weights
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name == "tb") == [
        "best",
        "last",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["tokens_seen"] == 6 * 4 * 32 * 2
    assert ("val_loss_carried" in metrics) == (model == "context_vector")
    if model == "context_vector":  # the ranks read different streams of the same text
        rows = [(out / f"rank{r}.rows").read_text().split() for r in (0, 1)]
        assert len(rows[0]) == len(rows[1]) == 4 and not set(rows[0]) & set(rows[1])
    loaded, _, _ = load_checkpoint(out)
    assert isinstance(loaded, torch.nn.Module)


def test_checkpoint_folder_survives_an_interrupted_save(tiny_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run, run_dir)
    # A save killed between its two renames leaves last.old and no last: loading still works.
    os.replace(run_dir / "last", run_dir / "last.old")
    shutil.rmtree(run_dir / "best")
    model, _, meta = load_checkpoint(run_dir)
    assert meta["step"] == 20 and Path(run_dir / "last.old").exists()


def test_split_overrides_sorts_fields_and_rejects_unknown():
    from physllm.errors import PhysllmError
    from physllm.training import split_overrides

    assert split_overrides("gpt", {"steps": 3, "n_layer": 2}) == ({"steps": 3}, {"n_layer": 2})
    with pytest.raises(PhysllmError, match="unknown option"):
        split_overrides("gpt", {"stepz": 3})


def test_matched_baseline_keeps_budget_and_matches_params():
    from physllm.models import count_params
    from physllm.training import matched_baseline

    cfg = make_config("hamiltonian", "cpu", steps=7, seed=5, out_dir="runs/h", vocab_size=65)
    base = matched_baseline(cfg)
    assert (base.model, base.steps, base.seed, base.out_dir) == ("gpt", 7, 5, "runs/h_gpt")
    assert base.model_config.n_layer == cfg.model_config.n_layer
    matched = matched_baseline(cfg, match="n_embd", step=8, out_dir="runs/b")
    assert matched.out_dir == "runs/b" and matched.model_config.n_embd % 8 == 0
    target = count_params("hamiltonian", cfg.model_config.to_dict())
    got = count_params("gpt", matched.model_config.to_dict())
    worse = count_params(
        "gpt", {**matched.model_config.to_dict(), "n_embd": matched.model_config.n_embd + 8}
    )
    assert abs(got - target) <= abs(worse - target)


@pytest.mark.parametrize("model", ["gpt", "context_vector"])
def test_batch_source_state_round_trip(model, small_text_file):
    """A source restored from its state_dict continues with the same batches (exact resume)."""
    from physllm.data import TokenData
    from physllm.models import build_model
    from physllm.training import batch_source, evaluate_loss

    data = TokenData.load(str(small_text_file), "char")
    net = build_model(
        model, {"vocab_size": data.tokenizer.vocab_size, "block_size": 16, "n_layer": 1}
    )
    source = batch_source(net, data, "train", 4, seed=3)
    assert source.kind == ("streams" if net.carries_state() else "windows")
    for _ in range(2):
        x, y, _ = source.next_batch()
        net(x, y, **source.model_inputs(slice(None)))
        source.observe(net)
    saved = source.state_dict()
    expected = source.next_batch()[0]
    again = batch_source(net, data, "train", 4, seed=99)
    again.load_state_dict(saved)
    assert torch.equal(again.next_batch()[0], expected)
    loss, _ = evaluate_loss(net, data, 2, "val", batch_size=2)
    assert loss == evaluate_loss(net, data, 2, "val", batch_size=2)[0]  # the same batches


def test_the_cpu_is_described_by_its_model_name(tmp_path):
    """Reports and benches name the processor, not just the architecture: two x86_64 boxes
    can differ several-fold in speed."""
    import platform

    from physllm.env import cpu_model

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: Acme\nmodel name\t: Acme Fast 9000\n")
    assert cpu_model(str(info)) == f"Acme Fast 9000, {platform.machine()}"
    missing = cpu_model(str(tmp_path / "absent"))
    assert missing == (platform.processor() or platform.machine())
