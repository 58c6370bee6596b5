"""The command line: every bad input is one line on stderr and exit 2, and
leaves existing checkpoints byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import REPO


def physllm(
    *args: str, stdin: str | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "physllm", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        env={**os.environ},
    )


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and pattern in lines[0], lines[0]


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(tiny_run, dest)
    return dest


TRAIN_TINY = [
    "--n-layer",
    "1",
    "--n-head",
    "1",
    "--n-embd",
    "16",
    "--block-size",
    "16",
    "--steps",
    "2",
    "--eval-iters",
    "1",
    "--no-progress",
    "--no-tensorboard",
]


def test_unknown_model():
    assert_one_line_error(
        physllm("train", "--model", "transformerx"), "unknown model 'transformerx'"
    )


def test_unknown_corpus(tmp_path):
    assert_one_line_error(
        physllm("train", "--corpus", "nosuchcorpus", "--out-dir", str(tmp_path), *TRAIN_TINY),
        "unknown corpus",
    )


def test_missing_local_file(tmp_path):
    assert_one_line_error(
        physllm(
            "train",
            "--corpus",
            str(tmp_path / "missing.txt"),
            "--out-dir",
            str(tmp_path),
            *TRAIN_TINY,
        ),
        "does not exist",
    )


def test_text_shorter_than_one_block(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short to hold a block of sixty-four characters\n")
    assert_one_line_error(
        physllm(
            "train",
            "--corpus",
            str(short),
            "--out-dir",
            str(tmp_path / "o"),
            "--block-size",
            "64",
            "--steps",
            "2",
        ),
        "fewer than one block",
    )


def test_unknown_flag():
    assert_one_line_error(physllm("train", "--n-layers", "3"), "unrecognized arguments")


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--prompt", "\u2603 snowman"], "outside this char vocabulary"),
        (["--top-p", "0"], "top_p must be in (0, 1]"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--temperature", "-1"], "temperature must be >= 0"),
    ],
)
def test_bad_sampling_input(run_copy, args, pattern):
    before = fingerprint(run_copy)
    assert_one_line_error(physllm("sample", "--ckpt", str(run_copy), *args), pattern)
    assert fingerprint(run_copy) == before


def test_truncated_checkpoint(run_copy):
    weights = run_copy / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = fingerprint(run_copy)
    assert_one_line_error(physllm("sample", "--ckpt", str(run_copy)), "corrupt or truncated")
    assert fingerprint(run_copy) == before


def test_checkpoint_from_a_different_model_config(run_copy):
    config = run_copy / "best" / "config.json"
    meta = json.loads(config.read_text())
    meta["config"]["n_embd"] = 64  # the weights were trained at 32
    config.write_text(json.dumps(meta))
    before = fingerprint(run_copy)
    assert_one_line_error(physllm("sample", "--ckpt", str(run_copy)), "do not match its config")
    assert fingerprint(run_copy) == before


def test_resume_with_a_mismatched_config_leaves_the_run_alone(run_copy, small_text_file):
    before = fingerprint(run_copy)
    proc = physllm(
        "train",
        "--corpus",
        str(small_text_file),
        "--out-dir",
        str(run_copy),
        "--resume",
        "--n-layer",
        "3",
        "--steps",
        "30",
        "--no-progress",
    )
    assert_one_line_error(proc, "cannot resume")
    assert fingerprint(run_copy) == before


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(physllm("sample", "--ckpt", str(tmp_path)), "no checkpoint")


def test_train_then_sample_end_to_end(small_text_file, tmp_path):
    out = tmp_path / "run"
    proc = physllm("train", "--corpus", str(small_text_file), "--out-dir", str(out), *TRAIN_TINY)
    assert proc.returncode == 0, proc.stderr
    assert "val loss" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["model_config"]["n_embd"] == 16 and metrics["steps"] == 2
    )  # the flags reached the config
    knobs = dict(temperature=0.8, top_k=10, top_p=0.9, min_p=0.05, repetition_penalty=1.2)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in knobs.items()]
    proc = physllm(
        "sample", "--ckpt", str(out), "--prompt", "The ", "--max-new-tokens", "20",
        "--seed", "7", *flags,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # The same sampling in this process: a char model has no end token, so exactly 20
    # new characters, and from the same seed exactly the characters the command printed.
    import torch

    from physllm.sampling import generate
    from physllm.training.checkpoint import load_checkpoint

    model, tokenizer, _ = load_checkpoint(out)
    prompt = torch.tensor([tokenizer.encode("The ")])

    def expected(seed: int) -> str:
        gen = torch.Generator().manual_seed(seed)
        new = generate(model, prompt, 20, generator=gen, **knobs)[0, prompt.size(1) :]
        return tokenizer.decode(new.tolist())

    assert tokenizer.eos_id is None and len(expected(7)) == 20
    assert proc.stdout == "The " + expected(7) + "\n"
    assert expected(7) != expected(1337)  # so the output above is --seed 7's, not the default's


def test_every_command_has_help_and_is_in_the_docstring():
    """Core commands and every registered architecture's: one line each in --help, their
    own --help, and a line in cli.py's docstring."""
    from physllm import cli
    from physllm.models import ARCHITECTURES

    names = list(cli.commands())
    arch_commands = [c.name for a in ARCHITECTURES.values() for c in a.commands]
    assert {"train", "sample", "bench", "corpora", "report", "steer", "chat"} <= set(names)
    assert set(arch_commands) <= set(names)
    top = physllm("--help")
    assert top.returncode == 0
    listed = [line.split()[0] for line in top.stdout.splitlines() if line.startswith("  ")]
    assert listed == names  # each once, core first, then the architectures'
    for name in names:
        assert f"``{name}``" in cli.__doc__, name
        proc = physllm(name, "--help")
        assert proc.returncode == 0 and "usage" in proc.stdout, name
    assert "--n-embd" in physllm("train", "--help").stdout  # model fields are flags too
    assert "--ckpt" in physllm("steer", "--help").stdout  # the CLI adds it to arch commands


def test_unknown_command_and_no_command():
    assert_one_line_error(physllm("nosuch"), "unknown command 'nosuch'")
    proc = physllm()
    assert proc.returncode == 2 and "commands:" in proc.stdout


def test_corpora_lists_the_registry():
    proc = physllm("corpora")
    assert proc.returncode == 0
    for name in ("shakespeare", "pydocs", "wikitext103", "fineweb-edu", "ultrachat", "narrativeqa"):
        assert name in proc.stdout


def test_bench_prints_ratios_against_gpt(tmp_path):
    out = tmp_path / "bench.json"
    proc = physllm(
        "bench",
        "--models",
        "gpt,gpt:n_layer=2",
        "--block-size",
        "32",
        "--batch-size",
        "2",
        "--n-layer",
        "1",
        "--n-embd",
        "32",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["gpt", "gpt:n_layer=2"]
    assert rows[0]["speed_ratio"] == 1.0 and rows[1]["params"] > rows[0]["params"]
    assert "speed x" in proc.stdout and "ratios against gpt" in proc.stdout
    # FLOPs per token: two layers about twice one (the head and embeddings aside)
    assert 1.3 < rows[1]["flops_per_token"] / rows[0]["flops_per_token"] < 2.0
    for r in rows:
        assert r["achieved_flops"] == pytest.approx(r["flops_per_token"] * r["tokens_per_sec"])
    assert "MFLOP/tok" in proc.stdout and "GFLOP/s" in proc.stdout


def test_bench_all_is_every_leaderboard_entry_with_ratios_against_gpt(tmp_path):
    from physllm.experiments.leaderboard import all_entries
    from physllm.models import MODELS

    out = tmp_path / "bench.json"
    tiny = ["--block-size", "16", "--batch-size", "2", "--n-layer", "1", "--n-embd", "16"]
    proc = physllm(
        "bench", "--all", *tiny, "--steps", "1", "--warmup", "0", "--repeats", "1",
        "--threads", "1", "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["label"] for r in rows] == [e.name for e in all_entries()]
    assert {r["model"].partition(":")[0] for r in rows} == set(MODELS)
    assert rows[0]["model"] == "gpt" and rows[0]["speed_ratio"] == 1.0
    assert all(r["speed_ratio"] > 0 and r["mem_ratio"] > 0 for r in rows)
    assert "ratios against gpt" in proc.stdout and "mem x" in proc.stdout
    for e in all_entries():  # one table line per entry, by its leaderboard name
        assert any(line.startswith(e.name + " ") for line in proc.stdout.splitlines()), e.name


def test_bench_lengths_mode(tmp_path):
    out = tmp_path / "bench.json"
    proc = physllm(
        "bench", "--models", "gpt,context_vector:n_layer=1", "--mode", "lengths",
        "--lengths", "16,8", "--timed-tokens", "2", "--batch-size", "2", "--n-layer", "1",
        "--n-embd", "16", "--steps", "1", "--warmup", "0", "--repeats", "1", "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["length"]) for r in rows] == [
        ("gpt", 8), ("gpt", 16), ("context_vector:n_layer=1", 8), ("context_vector:n_layer=1", 16)
    ]  # fmt: skip
    assert all(r["decode_tokens_per_sec"] > 0 for r in rows) and rows[1]["decode_ratio"] == 1.0
    assert "decode x" in proc.stdout


def test_bench_unknown_model():
    assert_one_line_error(physllm("bench", "--models", "gpt,nosuch"), "unknown model")


def test_bench_tables_name_the_threads_the_measuring_processes_used():
    """`--threads 1` measures in one-thread processes: the table's hardware line says so,
    not the parent's thread count."""
    from physllm.bench import BenchConfig, hardware

    assert "1 threads" in hardware(BenchConfig(threads=1, device="cpu"))
    assert f"{torch.get_num_threads()} threads" in hardware(BenchConfig(threads=0, device="cpu"))


def test_bench_compile_times_the_compiled_model_after_compiling_it(monkeypatch):
    """--compile wraps each model in torch.compile before the untimed warmup (a recording
    stand-in here: compiling for real takes half a minute), and the table says so."""
    import torch

    from physllm.bench import BenchConfig, format_table, measure_training

    compiled, calls = [], []

    def fake_compile(model):
        compiled.append(type(model).__name__)

        def run(*args):
            calls.append(1)
            return model(*args)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    shape = dict(block_size=16, batch_size=2, n_layer=1, n_head=2, n_embd=16, steps=2, repeats=1)
    cfg = BenchConfig(models=["gpt"], warmup=0, compile=True, **shape)
    row = measure_training("gpt", cfg)
    assert compiled == ["GPT"] and len(calls) == 1 + 2  # one untimed step, then the timed two
    assert row["tokens_per_sec"] > 0
    row.update(speed_ratio=1.0, mem_ratio=1.0, reference="gpt")
    assert "torch.compile'd" in format_table([row], cfg)
    assert "torch.compile'd" not in format_table([row], BenchConfig(models=["gpt"], **shape))
