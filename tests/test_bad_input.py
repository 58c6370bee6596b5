"""Every bad input is one line on stderr and exit status 2, from the CLI and the Python API.

Issue 18 item 5. Each case below either ended in a traceback or did something
silently wrong before configs were validated in one place
(:mod:`physllm.validation`). From the CLI: exit 2, exactly one non-empty
stderr line, no traceback, the ``--out-dir`` not created, an existing run
folder byte-identical. From Python: :class:`PhysllmError` at construction
(or from ``train`` where only the data can tell).

Most CLI cases run in-process through ``physllm.cli.main`` (importing torch
in a fresh process costs 2-3 s a case); a handful run as real subprocesses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from physllm.errors import PhysllmError

from .conftest import REPO

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16"]
TINY += ["--steps", "2", "--eval-iters", "1", "--warmup-steps", "0"]
TINY += ["--no-progress", "--no-tensorboard"]


# --------------------------------------------------------------------------- helpers


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> its SHA-256 (what "untouched" means)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_subprocess(*args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "physllm", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},  # PHYSLLM_CACHE_DIR: the test session's temp cache (conftest)
    )
    return proc.returncode, proc.stderr


def run_in_process(capsys, *args: str) -> tuple[int, str]:
    from physllm.cli import main

    capsys.readouterr()  # drop what came before
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code, capsys.readouterr().err


def assert_one_line_error(code: int, stderr: str, pattern: str) -> None:
    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), stderr
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="session")
def existing_run(tmp_path_factory, small_text_file) -> Path:
    """A run folder (best/, last/, metrics) from a 4-step tiny GPT: what bad input must not touch."""
    from physllm.training import train

    out = tmp_path_factory.mktemp("existing") / "run"
    train(_tiny_config(small_text_file, out, steps=4, eval_interval=2, batch_size=4))
    assert (out / "best" / "config.json").exists() and (out / "last" / "config.json").exists()
    return out


# --------------------------------------------------------------------------- train


# (flags, what the one line must say); each with a fresh --out-dir that must not appear
TRAIN_CASES = [
    # measured in the issue
    (["--model", "hamiltonian", "--variant", "x"], "--variant must be one of symplectic, seed"),
    (["--n-head", "3", "--n-embd", "16"], "--n-embd (16) must be a multiple of --n-head (3)"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["--eval-interval", "0"], "--eval-interval must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--grad-accum", "0"], "--grad-accum must be >= 1"),
    (["--n-layer", "0"], "--n-layer must be >= 1"),
    (["--block-size", "100000"], "fewer than one block of 100000+1"),
    # the training fields, adversarially
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--lr=-1e-3"], "--lr must be > 0"),  # "=": argparse reads -1e-3 as a flag
    (["--lr", "1e-5"], "--min-lr (0.0001) must not exceed --lr (1e-05)"),
    (["--min-lr", "-1"], "--min-lr must be >= 0"),
    (["--steps", "0"], "--steps must be >= 1 to train"),
    (["--steps", "-3"], "--steps must be >= 0"),
    (["--warmup-steps", "-1"], "--warmup-steps must be >= 0"),
    (["--lr-decay-steps", "-1"], "--lr-decay-steps must be >= 0"),
    (["--eval-iters", "0"], "--eval-iters must be >= 1"),
    (["--log-interval", "0"], "--log-interval must be >= 1"),
    (["--stop-after", "-1"], "--stop-after must be >= 0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be >= 0"),
    (["--beta1", "1"], "--beta1 must be in [0, 1)"),
    (["--beta2", "nan"], "--beta2 must be a finite number"),
    (["--grad-clip=-inf"], "--grad-clip must be a finite number"),
    (["--dropout", "-0.1"], "--dropout must be in [0, 1)"),
    (["--block-size", "0"], "--block-size must be >= 1"),
    (["--n-embd", "-16"], "--n-embd must be >= 1"),
    (["--vocab-size", "-1"], "--vocab-size must be >= 0"),
    (["--seed", "-1"], "--seed must be in [0, 4294967296)"),
    (["--threads", "-2"], "--threads must be >= 0"),
    (["--max-chars", "-1"], "--max-chars must be >= 0"),
    (["--device", "gpu"], "--device must be auto, cpu, cuda, cuda:<index> or mps"),
    (["--dtype", "fp8"], "--dtype must be one of auto, float32, bfloat16, float16"),
    (["--tokenizer", "bpe:many"], "--tokenizer must be char, byte, bpe"),
    (["--corpus", " "], "--corpus must not be empty"),
    # each model's fields ("--mode" was read as an abbreviation of "--model")
    (["--model", "hamiltonian", "--mode", "x"], "--mode must be one of direct, conservative"),
    (["--model", "hamiltonian", "--mass", "0"], "--mass must be > 0"),
    (["--model", "hamiltonian", "--decay-init", "0"], "--decay-init must be > 0"),
    (["--model", "hamiltonian", "--variant", "seed", "--n-head", "16"], "even head size"),
    (["--model", "ngt", "--kernel", "newton"], "--kernel must be one of gaussian, seed"),
    (["--model", "ngt", "--cutoff", "soft"], "--cutoff soft is the seed's"),
    (["--model", "ngt", "--dist-eps", "0"], "--dist-eps must be > 0"),
    (["--model", "qllm", "--phase", "twist"], "--phase must be one of gain, rotation, none"),
    (["--model", "qllm", "--segment-len", "0"], "--segment-len must be >= 1"),
    (["--model", "qllm", "--lora-dropout", "1"], "--lora-dropout must be in [0, 1)"),
    (["--model", "context_vector", "--form", "x"], "--form must be one of fixed, seed"),
    (["--model", "context_vector", "--ffn-depth", "0"], "--ffn-depth must be >= 1"),
    (["--model", "hopfield", "--combine", "multiply"], "--combine must be one of add"),
    (["--model", "hopfield", "--mem-layer", "5"], "--mem-layer must be a block index"),
    (["--model", "hopfield", "--beta-init", "0"], "--beta-init must be > 0"),
    (["--model", "hopfield", "--backbone", "llama"], "--backbone must be 'gpt' or 'hf:"),
    # only the data can tell: carried-state evaluation reads the val split (6,000
    # tokens) as --batch-size streams of a block each; 500 x 17 do not fit
    (
        ["--model", "context_vector", "--carry-state", "--batch-size", "500"],
        "the val split (6000 tokens) is too short for 500 streams",
    ),
]

# A few through a real `python -m physllm` (the rest in-process, same code path).
SUBPROCESS_TRAIN = {0, 1, 2, 8}


@pytest.mark.parametrize(
    ("index", "flags", "pattern"),
    [(i, flags, pattern) for i, (flags, pattern) in enumerate(TRAIN_CASES)],
    ids=[" ".join(flags) for flags, _ in TRAIN_CASES],
)
def test_train_bad_input(index, flags, pattern, small_text_file, tmp_path, capsys):
    out = tmp_path / "out"
    # the case's flags come last: they override TINY's (argparse keeps the last value)
    tiny = list(TINY)
    if "context_vector" in flags:  # the one model without attention heads
        del tiny[2:4]  # --n-head 2
    args = ["train", "--corpus", str(small_text_file), "--out-dir", str(out), *tiny, *flags]
    run = run_subprocess if index in SUBPROCESS_TRAIN else run_in_process
    code, stderr = run(*args) if run is run_subprocess else run(capsys, *args)
    assert_one_line_error(code, stderr, pattern)
    assert not out.exists(), "the output folder was created for a run that never started"


def test_out_dir_that_is_a_file(small_text_file, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    for out in (target, target / "run"):
        args = ["train", "--corpus", str(small_text_file), "--out-dir", str(out), *TINY]
        assert_one_line_error(*run_in_process(capsys, *args), "is not a folder")
    assert target.read_text() == "mine\n"


def test_init_from_that_does_not_exist(small_text_file, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["train", "--corpus", str(small_text_file), "--out-dir", str(out), *TINY]
    args += ["--init-from", str(tmp_path / "nowhere")]
    assert_one_line_error(*run_in_process(capsys, *args), "--init-from: no checkpoint in")
    assert not out.exists()


def test_init_from_a_different_model(existing_run, small_text_file, tmp_path, capsys):
    """Weights that do not fit: found when the model is built, before --out-dir exists."""
    out = tmp_path / "out"
    before = fingerprint(existing_run)
    args = ["train", "--corpus", str(small_text_file), "--out-dir", str(out), *TINY]
    args += ["--model", "ngt", "--init-from", str(existing_run)]
    assert_one_line_error(*run_in_process(capsys, *args), "do not match its config")
    assert not out.exists()
    assert fingerprint(existing_run) == before


def test_flags_are_not_abbreviations(small_text_file, tmp_path, capsys):
    """``--mode`` is Hamiltonian's field, not a prefix of ``--model`` (it used to be read as
    ``--model conservative``): the error here must be about --lr, the real mistake."""
    args = ["train", "--corpus", str(small_text_file), "--out-dir", str(tmp_path / "o"), *TINY]
    args += ["--model", "hamiltonian", "--mode", "conservative", "--lr", "nan"]
    assert_one_line_error(*run_in_process(capsys, *args), "--lr must be a finite number")
    code, stderr = run_in_process(capsys, "train", "--n-lay", "3")
    assert_one_line_error(code, stderr, "unrecognized arguments: --n-lay 3")


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [
        (["--lr", "nan"], "--lr must be a finite number"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--block-size", "100000"], "fewer than one block"),  # the data check, with --resume
    ],
)
def test_bad_input_leaves_an_existing_run_byte_identical(
    existing_run, small_text_file, flags, pattern, capsys
):
    before = fingerprint(existing_run)
    args = ["train", "--corpus", str(small_text_file), "--out-dir", str(existing_run), *TINY]
    args += ["--steps", "8", *flags]
    if flags[0] == "--block-size":
        args.append("--resume")
        code, stderr = run_subprocess(*args)  # one real process touching a real run
    else:
        code, stderr = run_in_process(capsys, *args)
    assert_one_line_error(code, stderr, pattern)
    assert fingerprint(existing_run) == before


# --------------------------------------------------------------------------- sample


SAMPLE_CASES = [
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--temperature", "-0.5"], "temperature must be >= 0"),
    (["--temperature", "inf"], "--temperature must be a finite number"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--top-p", "1.01"], "top_p must be in (0, 1]"),
    (["--top-k", "-1"], "top_k must be >= 0"),
    (["--min-p", "1.5"], "min_p must be in [0, 1]"),
    (["--min-p", "-0.1"], "min_p must be in [0, 1]"),
    (["--repetition-penalty", "0"], "repetition_penalty must be > 0"),
    (["--repetition-penalty", "inf"], "--repetition-penalty must be a finite number"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    (["--seed", "-1"], "--seed must be in [0, 4294967296)"),
    (["--device", "gpu"], "unknown device 'gpu'"),
]


@pytest.mark.parametrize(("flags", "pattern"), SAMPLE_CASES, ids=lambda v: str(v))
def test_sample_bad_input(existing_run, flags, pattern, capsys):
    before = fingerprint(existing_run)
    code, stderr = run_in_process(capsys, "sample", "--ckpt", str(existing_run), *flags)
    assert_one_line_error(code, stderr, pattern)
    assert fingerprint(existing_run) == before


# --------------------------------------------------------------------------- a checkpoint's config


def _set_n_layer(meta: dict) -> None:
    meta["config"]["n_layer"] = 0


def _set_n_head(meta: dict) -> None:
    meta["config"]["n_head"] = 3  # 16 is not a multiple of 3


def _set_string(meta: dict) -> None:
    meta["config"]["n_embd"] = "sixteen"


def _set_list(meta: dict) -> None:
    meta["config"] = [1, 2]


def _set_model(meta: dict) -> None:
    meta["model"] = ["gpt"]


def _set_unknown(meta: dict) -> None:
    meta["config"]["n_experts"] = 8


def _set_dropout(meta: dict) -> None:
    meta["config"]["dropout"] = 2.0


CHECKPOINT_CASES = [
    (_set_n_layer, "bad gpt config: --n-layer must be >= 1, got 0"),
    (_set_n_head, "bad gpt config: --n-embd (16) must be a multiple of --n-head (3)"),
    (_set_string, "bad gpt config: --n-embd must be an integer, got 'sixteen'"),
    (_set_list, "bad gpt config: GPTConfig must be a JSON object, got list"),
    (_set_model, "unknown model ['gpt']"),
    (_set_unknown, "bad gpt config: unknown GPTConfig field(s): n_experts"),
    (_set_dropout, "bad gpt config: --dropout must be in [0, 1), got 2.0"),
]


@pytest.mark.parametrize(
    ("edit", "pattern"), CHECKPOINT_CASES, ids=[e.__name__ for e, _ in CHECKPOINT_CASES]
)
def test_checkpoint_config_with_bad_content(existing_run, tmp_path, edit, pattern, capsys):
    """Valid JSON, bad content: one line naming the checkpoint (was TypeError/AssertionError)."""
    run = tmp_path / "run"
    shutil.copytree(existing_run, run)
    config = run / "best" / "config.json"
    meta = json.loads(config.read_text())
    edit(meta)
    config.write_text(json.dumps(meta))
    before = fingerprint(run)
    if edit is _set_n_layer:
        code, stderr = run_subprocess("sample", "--ckpt", str(run))
    else:
        code, stderr = run_in_process(capsys, "sample", "--ckpt", str(run))
    assert_one_line_error(code, stderr, pattern)
    assert f"checkpoint {run / 'best'}:" in stderr
    assert fingerprint(run) == before


# --------------------------------------------------------------------------- bench


BENCH_CASES = [
    (["--models", "gpt", "--repeats", "0"], "--repeats must be >= 1"),
    (["--models", "gpt", "--steps", "0"], "--steps must be >= 1"),
    (["--models", "gpt", "--warmup", "-1"], "--warmup must be >= 0"),
    (["--models", "gpt", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--models", "gpt", "--mode", "fast"], "--mode must be one of train, generate, lengths"),
    (["--models", "gpt", "--lengths", "8,x"], "bad --lengths '8,x'"),
    (["--models", "gpt", "--timed-tokens", "1"], "--timed-tokens must be >= 2"),
    (["--models", "gpt", "--n-head", "3"], "--n-embd (128) must be a multiple of --n-head (3)"),
    (["--models", "gpt:n_layer=two"], "bad override 'n_layer=two'"),
    (["--models", "ngt:kernel=newton"], "--kernel must be one of gaussian, seed"),
    (["--models", "gpt", "--device", "tpu"], "--device must be auto, cpu"),
]


@pytest.mark.parametrize(("flags", "pattern"), BENCH_CASES, ids=lambda v: str(v))
def test_bench_bad_input(flags, pattern, capsys):
    if flags[-1] == "0" and flags[-2] == "--repeats":
        code, stderr = run_subprocess("bench", *flags)  # the KeyError case, for real
    else:
        code, stderr = run_in_process(capsys, "bench", *flags)
    assert_one_line_error(code, stderr, pattern)


def test_bench_json_into_a_missing_folder(tmp_path, capsys):
    target = tmp_path / "missing" / "rows.json"
    code, stderr = run_in_process(capsys, "bench", "--models", "gpt", "--json", str(target))
    assert_one_line_error(code, stderr, "does not exist")


# --------------------------------------------------------------------------- Python API


def _api_cases():
    from physllm.context_vector.model import ContextVectorConfig
    from physllm.gpt.model import GPTConfig
    from physllm.hamiltonian.model import HamiltonianConfig
    from physllm.hopfield.model import HopfieldConfig
    from physllm.ngt.model import NGTConfig
    from physllm.qllm.model import QLLMConfig
    from physllm.training import TrainConfig, make_config

    return [
        (TrainConfig, dict(lr=float("nan")), "--lr must be a finite number"),
        (TrainConfig, dict(batch_size=0), "--batch-size must be >= 1"),
        (TrainConfig, dict(steps="100"), "--steps must be an integer"),
        (TrainConfig, dict(grad_accum=2.0), "--grad-accum must be an integer"),
        (TrainConfig, dict(progress="yes"), "--progress must be true or false"),
        (TrainConfig, dict(eval_interval=True), "--eval-interval must be an integer"),
        (TrainConfig, dict(model="transformerx"), "unknown model 'transformerx'"),
        (TrainConfig, dict(model="ngt", model_config=GPTConfig()), "takes a NGTConfig"),
        (make_config, dict(model="gpt", min_lr=0.1), "--min-lr (0.1) must not exceed"),
        (make_config, dict(model="gpt", n_embd=30, n_head=4), "must be a multiple of --n-head"),
        (make_config, dict(model="gpt", n_layers=3), "unknown option(s)"),
        (make_config, dict(model="gpt", preset="huge"), "no preset 'huge'"),
        (GPTConfig, dict(dropout=1.0), "--dropout must be in [0, 1)"),
        (GPTConfig, dict(block_size=-4), "--block-size must be >= 1"),
        (HamiltonianConfig, dict(variant="x"), "--variant must be one of"),
        (HamiltonianConfig, dict(dt=float("inf")), "--dt must be a finite number"),
        (HamiltonianConfig, dict(ema_beta=1.5), "--ema-beta must be in [0, 1]"),
        (HamiltonianConfig, dict(eos_id=-2), "--eos-id must be >= -1"),
        (ContextVectorConfig, dict(form="seed", gates="input"), "variant of the fixed form"),
        (ContextVectorConfig, dict(clamp=0.0), "--clamp must be > 0"),
        (NGTConfig, dict(n_coord=0), "--n-coord must be >= 1"),
        (NGTConfig, dict(repulsion=-1.0), "--repulsion must be >= 0"),
        (QLLMConfig, dict(phase="gain", phase_per_position=True), "needs --phase rotation"),
        (QLLMConfig, dict(n_embd=15, n_head=3), "--n-embd must be even"),
        (QLLMConfig, dict(lora_alpha=0.0), "--lora-alpha must be > 0"),
        (HopfieldConfig, dict(n_updates=0), "--n-updates must be >= 1"),
        (HopfieldConfig, dict(n_embd=128, mem_heads=3), "multiple of --mem-heads (3)"),
        (HopfieldConfig, dict(memory_lr=0.0), "--memory-lr must be > 0"),
    ]


API_CASES = _api_cases()


@pytest.mark.parametrize(
    ("factory", "kwargs", "pattern"),
    API_CASES,
    ids=[f"{f.__name__}-{'-'.join(map(str, kw))}" for f, kw, _ in API_CASES],
)
def test_api_bad_config_raises(factory, kwargs, pattern):
    with pytest.raises(PhysllmError) as err:
        factory(**kwargs)
    assert pattern in str(err.value)
    assert "\n" not in str(err.value)  # one line from the CLI too


def test_config_errors_are_value_errors_too():
    """Python callers may catch the usual ValueError for a bad argument."""
    from physllm.gpt.model import GPTConfig

    with pytest.raises(ValueError, match="--n-layer"):
        GPTConfig(n_layer=0)


def test_build_model_rejects_bad_dicts_and_edited_configs():
    from physllm.gpt.model import GPTConfig
    from physllm.models import build_model

    with pytest.raises(PhysllmError, match="bad gpt config: --n-layer must be >= 1"):
        build_model("gpt", {"n_layer": 0})
    with pytest.raises(PhysllmError, match="unknown model"):
        build_model(["gpt"], {})  # type: ignore[arg-type]
    config = GPTConfig(vocab_size=8)
    config.n_head = 3  # edited after construction: caught when the model is built
    with pytest.raises(PhysllmError, match="multiple of --n-head"):
        build_model("gpt", config)


def _tiny_config(corpus: Path, out: Path, **changes):
    from physllm.training import make_config

    values = dict(
        corpus=str(corpus),
        out_dir=str(out),
        steps=2,
        eval_iters=1,
        warmup_steps=0,
        n_layer=1,
        n_head=2,
        n_embd=16,
        block_size=16,
        batch_size=2,
        progress=False,
        tensorboard=False,
    )
    return make_config("gpt", **{**values, **changes})


def test_train_rejects_a_block_longer_than_the_corpus(small_text_file, tmp_path):
    from physllm.training import train

    out = tmp_path / "out"
    with pytest.raises(PhysllmError, match="fewer than one block of 100000"):
        train(_tiny_config(small_text_file, out, block_size=100_000))
    assert not out.exists()


def test_train_revalidates_a_config_edited_in_place(small_text_file, tmp_path):
    """Notebooks set fields after make_config: train() checks them again before starting."""
    from physllm.training import train

    out = tmp_path / "out"
    cfg = _tiny_config(small_text_file, out)
    cfg.grad_accum = 0
    with pytest.raises(PhysllmError, match="--grad-accum must be >= 1"):
        train(cfg)
    cfg = _tiny_config(small_text_file, out)
    cfg.model_config.dropout = float("nan")
    with pytest.raises(PhysllmError, match="--dropout must be a finite number"):
        train(cfg)
    cfg = dataclasses.replace(_tiny_config(small_text_file, out), steps=0)  # valid as a config
    with pytest.raises(PhysllmError, match="--steps must be >= 1 to train"):
        train(cfg)
    with pytest.raises(PhysllmError, match="takes a TrainConfig"):
        train({"steps": 2})  # type: ignore[arg-type]
    assert not out.exists()


def test_every_preset_and_leaderboard_config_is_valid():
    """Validation must not reject what the project itself ships."""
    from physllm.experiments.leaderboard import build_configs
    from physllm.training import PRESETS, make_config

    for model, presets in PRESETS.items():
        for preset in presets:
            make_config(model, preset).validate()
    for preset in ("cpu", "gpu"):
        configs = build_configs(preset, 256)
        assert configs and all(c.validate() is c for c in configs.values())
