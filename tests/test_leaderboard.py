"""The leaderboard: entries, parameter matching, one shared budget, the table, the
README section generated from a report's metrics.json, and notebook 06 itself."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from physllm.bench import BenchConfig, measure_lengths, model_config_for
from physllm.errors import PhysllmError
from physllm.experiments import leaderboard as lb
from physllm.experiments import protocol as pr
from physllm.experiments import stats
from physllm.models import MODELS, build_model
from physllm.reporting import readme as rd
from physllm.reporting import rebuild_index

from .conftest import shakespeare_available

BUDGET_FIELDS = (
    "corpus",
    "tokenizer",
    "steps",
    "batch_size",
    "grad_accum",
    "lr",
    "min_lr",
    "warmup_steps",
    "weight_decay",
    "beta2",
    "seed",
    "threads",
    "dtype",
    "compile",
)


# --------------------------------------------------------------------------- entries and configs


def test_entries_cover_every_registered_model_and_both_forms():
    entries = lb.select_entries("all")
    assert {e.model for e in entries} == set(MODELS)
    assert entries[0].name == "gpt"
    forms = {e.overrides.get("form") for e in entries if e.model == "context_vector"}
    kernels = {e.overrides.get("kernel") for e in entries if e.model == "ngt"}
    assert forms == {"seed", "fixed"} and kernels == {"seed", "gaussian"}


def test_select_entries_keeps_the_reference_and_rejects_unknown_names():
    assert [e.name for e in lb.select_entries("qllm")] == ["gpt", "qllm"]
    assert [e.name for e in lb.select_entries(["ngt-seed", "gpt"])] == ["gpt", "ngt-seed"]
    with pytest.raises(PhysllmError, match="unknown leaderboard entries nosuch"):
        lb.select_entries("gpt,nosuch")
    with pytest.raises(PhysllmError, match="no leaderboard preset"):
        lb.recipe("tpu")


def test_match_field_finds_the_nearest_multiple():
    def count(model, config):  # a count that grows linearly with the field
        return 1000 + 7 * config["width"]

    assert lb.match_field("any", {}, "width", 1000 + 7 * 160, step=16, count=count) == 160
    assert lb.match_field("any", {}, "width", 1000 + 7 * 165, step=16, count=count) == 160
    assert lb.match_field("any", {}, "width", 1000 + 7 * 170, step=16, count=count) == 176
    assert lb.match_field("any", {}, "width", 10, step=16, count=count) == 16  # at least one step


def test_count_params_equals_a_real_model():
    config = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)
    assert lb.count_params("gpt", config) == build_model("gpt", config).num_params()


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_every_entry_shares_the_budget_and_matches_gpt(preset):
    configs = lb.build_configs(preset, 256, threads=1)
    assert list(configs) == [e.name for e in lb.all_entries()]
    gpt = configs["gpt"]
    ref = lb.count_params("gpt", gpt.model_config.to_dict())
    for name, cfg in configs.items():
        n = lb.count_params(cfg.model, cfg.model_config.to_dict())
        assert abs(n / ref - 1) <= lb.PARAM_TOLERANCE, (name, n, ref)
        for key in BUDGET_FIELDS:
            assert getattr(cfg, key) == getattr(gpt, key), (name, key)
        mc = cfg.model_config
        assert (mc.vocab_size, mc.block_size, mc.dropout) == (256, gpt.model_config.block_size, 0.0)
        assert cfg.out_dir.endswith(name)
    assert configs["context_vector-seed"].model_config.form == "seed"
    assert configs["context_vector-fixed"].model_config.form == "fixed"
    assert configs["ngt-seed"].model_config.kernel == "seed"
    assert configs["hopfield"].model_config.backbone == "gpt"  # never the gpu preset's Llama
    assert configs["hamiltonian"].model_config.n_layer == gpt.model_config.n_layer
    assert configs["gpt"].tokenizer == "byte" and configs["gpt"].compile is False


def test_budget_overrides_and_the_model_preset_layer():
    configs = lb.build_configs("cpu", 256, out_dir="x", threads=1, **lb.smoke_budget(20, "cpu"))
    assert all(c.steps == 20 and c.warmup_steps == 2 and c.threads == 1 for c in configs.values())
    # the model's own preset comes first: QLLM's globals and segments, the context
    # vector's widths (its shape is its own), NGT's coordinate sizes
    assert configs["qllm"].model_config.segment_len == 32
    assert configs["context_vector-fixed"].model_config.n_layer == 1
    assert configs["ngt-gaussian"].model_config.n_coord == 32
    assert lb.smoke_budget(None, "cpu") == {}
    with pytest.raises(PhysllmError, match="unknown leaderboard budget field"):
        lb.build_configs("cpu", 256, stepz=3)


def test_bench_spec_rebuilds_the_entry_config():
    configs = lb.build_configs("cpu", 256, threads=1)
    cfg = BenchConfig(block_size=64, vocab_size=256)
    for name, tcfg in configs.items():
        spec = lb.bench_spec(tcfg.model, tcfg.model_config.to_dict(), cfg)
        model, built = model_config_for(spec, cfg)
        assert model == tcfg.model
        assert built.to_dict() == tcfg.model_config.to_dict(), name
    assert lb.bench_spec("gpt", configs["gpt"].model_config.to_dict(), cfg) == "gpt"


def test_bench_all_config_labels_every_entry():
    cfg, labels = lb.bench_all_config("cpu", n_embd=32, n_layer=1, block_size=16)
    assert sorted(labels.values()) == sorted(e.name for e in lb.all_entries())
    assert cfg.models == list(labels) and (cfg.block_size, cfg.n_embd) == (16, 32)
    assert cfg.batch_size == lb.recipe("cpu")["batch_size"]


# --------------------------------------------------------------------------- measuring


def test_inference_speed_streams_the_model_and_times_one_token():
    """A decode step made to cost a known 50 ms (the prompt 1 s): the measured time per
    token must be that (plus a tiny model's step, however busy the machine), not the
    prompt's, not a pass's total over its tokens (175 ms), not another unit."""
    torch.manual_seed(0)
    model = build_model("gpt", dict(vocab_size=20, block_size=16, n_layer=1, n_head=1, n_embd=16))
    model.train()
    fed, step = [], model.decode_step

    def slow_step(idx, state=None):
        fed.append(tuple(idx.shape))
        time.sleep(1.0 if idx.size(1) > 1 else 0.05)
        return step(idx, state)

    model.decode_step = slow_step
    speed = lb.inference_speed(model, torch.randint(20, (1, 4)), new_tokens=8, repeats=2)
    assert fed == ([(1, 4)] + [(1, 1)] * 8) * 2  # per pass: the prompt once, then one token a call
    assert 50 <= speed["decode_ms_per_token"] < 100, speed
    assert speed["decode_tokens_per_sec"] == pytest.approx(1000 / speed["decode_ms_per_token"])
    assert model.training  # left as it was found


def test_measure_lengths_one_row_per_length_ascending():
    """A large vocabulary makes the logits dominate the memory: at batch 4 x 512 they
    are 64 MiB (float32), allocated fresh (above glibc's 32 MiB mmap threshold) and
    held at once, so the peak at 512 must exceed them and exceed the peak at 32 by at
    least the difference in logits."""
    B, V = 4, 8192
    cfg = BenchConfig(
        batch_size=B, n_layer=1, n_head=1, n_embd=16, vocab_size=V, steps=1, warmup=0,
        lengths="512,32", timed_tokens=4, threads=1,
    )  # fmt: skip
    out = measure_lengths("context_vector:n_layer=1+n_hidden=16+n_context=8", cfg)
    rows = out["rows"]
    assert [r["length"] for r in rows] == [32, 512]
    for r in rows:
        assert r["tokens_per_sec"] > 0 and r["decode_tokens_per_sec"] > 0
    logits_mb = {L: B * L * V * 4 / 2**20 for L in (32, 512)}
    short, long = rows[0]["peak_mem_mb"], rows[1]["peak_mem_mb"]
    assert long >= logits_mb[512], rows
    assert long - short >= logits_mb[512] - logits_mb[32], rows


# --------------------------------------------------------------------------- the table and the README


def fake_metrics(device: str = "cpu (test box)") -> dict:
    runs = {}
    for i, e in enumerate(lb.all_entries()):
        runs[e.name] = {
            "model": e.model, "params": 800_000 + 1000 * i, "steps": 400, "tokens_seen": 307_200,
            "val_loss": 2.0 + 0.01 * i, "val_bpc": 2.9 + 0.01 * i, "bpc_unit": "byte",
            "tokens_per_sec": 20_000.0 - 100 * i, "infer_tokens_per_sec": 500.0 + i,
            "wall_s": 15.0 + i, "carries_state": e.model == "context_vector",
        }  # fmt: skip
    sweep = [
        {"label": name, "model": name, "length": L, "peak_mem_mb": 100.0 + i, "speed_ratio": 1 - 0.05 * i,
         "mem_ratio": 1 + 0.01 * i}
        for i, name in enumerate(runs) for L in (64, 128)
    ]  # fmt: skip
    rows = lb.leaderboard_rows(runs, sweep, 64)
    return {
        **runs["gpt"], "corpus": "shakespeare", "tokenizer": "byte", "block_size": 64,
        "batch_size": 12, "seed": 1337, "device": device, "torch_version": "2.x",
        "git_sha": "abc1234", "runs": runs, "leaderboard": rows, "sweep_config": {"batch_size": 12},
    }  # fmt: skip


def write_report(reports: Path, tag: str, metrics: dict, status: str = "ok") -> Path:
    folder = reports / lb.NOTEBOOK / tag
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    run = {"notebook": lb.NOTEBOOK, "run": tag, "status": status, "wall_s": 201.0,
           "started": "2026-12-01T10:00:00Z", "hardware": metrics["device"], "parameters": {}}  # fmt: skip
    (folder / "run.json").write_text(json.dumps(run))
    return folder


def test_rows_take_peak_and_ratios_at_the_training_length():
    m = fake_metrics()
    rows = m["leaderboard"]
    assert [r["entry"] for r in rows] == [e.name for e in lb.all_entries()]
    assert rows[0]["params_vs_gpt"] == 1.0 and rows[2]["peak_mem_mb"] == 102.0
    frame = lb.leaderboard_frame(rows)
    assert set(frame["model"]) == set(MODELS)
    assert {"bits/byte", "infer tok/s", "peak MB", "speed x gpt"} <= set(frame.columns)


README = """# title

intro

<!-- leaderboard:cpu:start -->
old text
<!-- leaderboard:cpu:end -->

## next section
"""


def test_readme_section_placeholder_table_and_gpu_block(tmp_path):
    reports = tmp_path / "reports"
    text = rd.leaderboard_text(README, reports)
    assert "No CPU leaderboard report yet" in text and "old text" not in text
    assert "leaderboard:gpu" not in text and text.endswith("## next section\n")

    write_report(reports, "cpu", fake_metrics())
    text = rd.leaderboard_text(text, reports)
    start, end = rd.markers("cpu")
    section = text.split(start)[1].split(end)[0]
    assert "cpu (test box)" in section and "400 steps of 12 x 64 tokens" in section
    assert "| ngt (seed) |" in section and "| context_vector (fixed) |" in section
    assert "2.010" in section and "3m 21s" in section and "abc1234" in section
    assert "| 2.020 † |" in section and "† Trained on consecutive blocks" in section
    assert "leaderboard:gpu" not in text
    assert rd.leaderboard_text(text, reports) == text  # idempotent

    write_report(reports, "gpu", fake_metrics("cuda (Test GPU)"))
    text = rd.leaderboard_text(text, reports)
    assert text.index("leaderboard:cpu:end") < text.index("leaderboard:gpu:start")
    assert "cuda (Test GPU)" in text and "Every model at one budget, GPU" in text
    assert rd.leaderboard_text(text, reports) == text

    write_report(reports, "gpu", fake_metrics("cuda (Test GPU)"), status="failed")
    text = rd.leaderboard_text(text, reports)  # a failed GPU run: no GPU table
    assert "leaderboard:gpu" not in text and text.endswith("## next section\n")
    assert rd.leaderboard_text("no markers here\n", reports) == "no markers here\n"


def test_rebuild_index_regenerates_the_readme_beside_the_reports(tmp_path):
    reports = tmp_path / "reports"
    write_report(reports, "cpu", fake_metrics())
    (tmp_path / "README.md").write_text(README)
    rebuild_index(reports)
    text = (tmp_path / "README.md").read_text()
    assert "| hopfield |" in text and "old text" not in text
    assert (reports / "README.md").exists()


# --------------------------------------------------------------------------- the notebook


def test_notebook_runs_the_smoke_protocol(run_notebook, tmp_path):
    # both worlds: TinyShakespeare where it is on disk, else pydocs
    _, out_dir = run_notebook("06_leaderboard", sweep_lengths="64", threads=1)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    corpus = "shakespeare" if shakespeare_available() else "pydocs"
    assert metrics["corpus"] == corpus
    smoke = pr.SMOKE
    entries, sizes = smoke["entries"], list(smoke["sizes"])
    # best_lr per entry and size, one of the lr stage's rates, and the seeds stage ran at it
    lrs = smoke["stages"]["lr"]["lrs"]
    assert {e: set(v) for e, v in metrics["best_lr"].items()} == {e: set(sizes) for e in entries}
    results = pd.read_csv(out_dir / "results.csv")  # the report folder holds the table
    for e in entries:
        for s in sizes:
            assert metrics["best_lr"][e][s] in lrs
            ran = set(results.query("entry == @e and size == @s")["lr"])
            assert ran == {metrics["best_lr"][e][s]}
    assert (out_dir / "results_lr.csv").exists()
    # gaps[entry][size][steps] with an interval and the verdict of that interval
    steps = str(smoke["stages"]["seeds"]["steps"][-1])
    assert set(metrics["gaps"]) == set(entries) - {"gpt"}
    for e in set(entries) - {"gpt"}:
        g = metrics["gaps"][e][sizes[0]][steps]
        assert g["n_seeds"] == len(smoke["stages"]["seeds"]["seeds"])
        assert g["ci95_low"] <= g["mean"] <= g["ci95_high"]
        assert g["verdict"] == stats.verdict(g["ci95_low"], g["ci95_high"])
    rows = metrics["leaderboard"]
    assert [r["entry"] for r in rows] == entries
    for r in rows:
        assert r["val_loss"] > 0 and r["n_seeds"] == 3 and r["peak_mem_mb"] > 0, r["entry"]
    for name in ("loss_vs_tokens", "loss_vs_flops", "loss_vs_time", "speed_memory_vs_length"):
        assert (out_dir / f"{name}.png").exists()
    # the README section renders from this very file, gaps and sentences included
    reports = tmp_path / "reports"
    folder = write_report(reports, "cpu", metrics)
    shutil.copy(out_dir / "metrics.json", folder / "metrics.json")
    section = rd.render_section("cpu", reports)
    assert "gap to GPT [95% CI]" in section and "| hamiltonian | " in section
    assert sum(line.startswith("- **") for line in section.splitlines()) == len(entries) - 1
