"""A killed run resumes: SIGKILL mid-run and mid-checkpoint-swap, then ``--resume``
ends exactly where an uninterrupted run ends; resume's bad inputs are one line.

Every run here is a real ``physllm train`` process (the CLI's ``main``) with one
thread, so the reference and the resumed runs compute bit-identical losses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from physllm.training.checkpoint import (
    CRASH_ENV,
    MARKER,
    TRAINER_STATE,
    find_checkpoint,
    load_trainer_state,
    recover_checkpoint,
    resolve_checkpoint_dir,
)

from .conftest import REPO

STEPS = 60
# dropout > 0: the torch RNG state must survive the kill too; eval every 10 steps:
# a checkpoint every 10 steps to be killed around.
TRAIN_ARGS = [
    "--model", "gpt", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
    "--block-size", "32", "--batch-size", "4", "--dropout", "0.1",
    "--steps", str(STEPS), "--eval-interval", "10", "--eval-iters", "2",
    "--warmup-steps", "2", "--log-interval", "1", "--threads", "1",
    "--no-progress", "--no-tensorboard",
]  # fmt: skip

# `python -m physllm train ...`, but every optimizer step first sleeps SLOW seconds
# (through the schedule function, which the loop calls once per step): the run is
# slow enough to be killed mid-way on any machine, and its numbers are unchanged.
LAUNCH = """
import os, sys, time
import physllm.training.trainer as train_module
schedule, pause = train_module.lr_at, float(os.environ.get("SLOW", "0"))
def slowed(step, cfg):
    time.sleep(pause)
    return schedule(step, cfg)
train_module.lr_at = slowed
from physllm.cli import main
main(sys.argv[1:])
"""


def _command(corpus: Path, out: Path, extra: tuple[str, ...]) -> list[str]:
    return [
        sys.executable, "-c", LAUNCH, "train", *TRAIN_ARGS,
        "--corpus", str(corpus), "--out-dir", str(out), *extra,
    ]  # fmt: skip


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    return {**env, "PHYSLLM_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def launch(tmp_path_factory, small_text_file):
    """``launch(out, *flags, env=...)`` -> the finished CompletedProcess;
    ``launch.start(...)`` -> a running Popen."""
    cache = tmp_path_factory.getbasetemp() / "physllm-cache"

    class Launcher:
        def __call__(self, out: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                _command(small_text_file, out, extra),
                cwd=REPO,
                env=_env(cache, **env),
                capture_output=True,
                text=True,
                timeout=600,
            )

        def start(self, out: Path, *extra: str, **env: str) -> subprocess.Popen:
            return subprocess.Popen(
                _command(small_text_file, out, extra),
                cwd=REPO,
                env=_env(cache, **env),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

    return Launcher()


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def reference(tmp_path_factory, launch) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    _ok(launch(out))
    return out


@pytest.fixture(scope="module")
def half_run(tmp_path_factory, launch) -> Path:
    """The same run stopped cleanly after 30 steps (copy it before changing it)."""
    out = tmp_path_factory.mktemp("half")
    _ok(launch(out, "--stop-after", "30"))
    assert _step(out / "last") == 30
    return out


def _step(checkpoint: Path) -> int:
    return json.loads((checkpoint / "config.json").read_text())["step"]


def _untimed_history(out: Path) -> list[dict]:
    history = json.loads((out / "history.json").read_text())
    return [{k: v for k, v in h.items() if k != "time_s"} for h in history]


def assert_same_run(out: Path, reference: Path) -> None:
    """Same loss history (every step's train loss, lr, every eval), same final metrics,
    same weights in last/ and best/: exact equality, the runs are deterministic."""
    history = _untimed_history(out)
    assert [h["step"] for h in history if "train_loss" in h] == list(range(1, STEPS + 1))
    assert history == _untimed_history(reference)
    metrics = json.loads((out / "metrics.json").read_text())
    expected = json.loads((reference / "metrics.json").read_text())
    for key in ("steps", "val_loss", "train_loss", "val_bpc", "tokens_seen"):
        assert metrics[key] == expected[key], key
    for folder in ("last", "best"):
        ours, theirs = (
            load_file(out / folder / "model.safetensors"),
            load_file(reference / folder / "model.safetensors"),
        )
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), folder
        assert _step(out / folder) == _step(reference / folder)
    leftovers = sorted(p.name for p in out.iterdir() if p.suffix in (".tmp", ".old", ".trash"))
    assert leftovers == []


def snapshot(out: Path) -> dict[str, str]:
    """Every file and folder under ``out`` with a digest of its bytes."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(out.rglob("*"))
    }


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- kills


def test_sigkill_mid_run_then_resume_matches_the_uninterrupted_run(tmp_path, launch, reference):
    out = tmp_path / "run"
    proc = launch.start(out, SLOW="0.05")  # >= 2 s between the step-20 checkpoint and the end
    try:
        deadline, step = time.monotonic() + 300, 0
        while step < 20:
            assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint past step 20 within 300 s"
            time.sleep(0.01)
            try:
                step = _step(out / "last")
            except (OSError, ValueError, KeyError):  # not written yet, or mid-swap
                pass
        os.kill(proc.pid, signal.SIGKILL)  # wherever it is: mid-step, mid-eval or mid-save
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    found = find_checkpoint(out / "last")
    assert found is not None and 20 <= _step(found) < STEPS  # killed mid-run
    assert not (out / "metrics.json").exists()

    resumed = _ok(launch(out, "--resume"))
    assert "Traceback" not in resumed.stderr
    assert_same_run(out, reference)


def test_kill_between_the_two_renames_then_resume(tmp_path, launch, reference):
    out = tmp_path / "run"
    # The 3rd save of last/ (step 30) dies after last -> last.old, before last.tmp -> last.
    crashed = launch(out, **{CRASH_ENV: "between_renames:last:3"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert not (out / "last").exists()
    assert _step(out / "last.old") == 20 and _step(out / "last.tmp") == 30
    assert (out / "last.tmp" / MARKER).is_file()
    assert find_checkpoint(out / "last") == out / "last.tmp"  # the newest complete one
    assert load_trainer_state(out / "last")["step"] == 30  # loaders recover too, read-only
    assert not (out / "last").exists()

    _ok(launch(out, "--resume"))
    assert_same_run(out, reference)


def test_resume_from_last_old_left_by_hand(tmp_path, launch, reference, half_run):
    out = tmp_path / "run"
    shutil.copytree(half_run, out)
    os.replace(out / "last", out / "last.old")  # what a pre-marker kill mid-swap leaves
    assert resolve_checkpoint_dir(out / "last") == out / "last.old"
    _ok(launch(out, "--resume"))
    assert_same_run(out, reference)


def test_recovery_rule_prefers_the_newest_complete_checkpoint(tmp_path, half_run):
    last, tmp, old = (tmp_path / n for n in ("last", "last.tmp", "last.old"))
    shutil.copytree(half_run / "last", last)
    shutil.copytree(half_run / "last", tmp)

    (tmp / MARKER).unlink()  # a save killed while writing: no marker yet
    assert find_checkpoint(last) == last
    shutil.rmtree(tmp)
    shutil.copytree(half_run / "last", tmp)
    with open(tmp / TRAINER_STATE, "r+b") as fh:  # marker present, a file cut short
        fh.truncate(100)
    assert find_checkpoint(last) == last
    shutil.rmtree(tmp)

    shutil.copytree(half_run / "last", tmp)  # complete and newer than last/
    assert find_checkpoint(last) == tmp
    os.replace(last, old)  # killed between the renames
    assert find_checkpoint(last) == tmp
    shutil.rmtree(tmp)
    assert find_checkpoint(last) == old and resolve_checkpoint_dir(last) == old

    # a leftover last/ without its config does not hide last.old; recovery restores it
    last.mkdir()
    assert recover_checkpoint(last) == last
    assert _step(last) == 30 and sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    shutil.rmtree(last)
    assert find_checkpoint(last) is None and recover_checkpoint(last) is None


# --------------------------------------------------------------------------- bad input on resume


def test_resume_with_fewer_steps_than_done_is_one_line(tmp_path, launch, reference):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = snapshot(out)
    line = one_error_line(launch(out, "--resume", "--steps", "30"))
    assert "nothing to do" in line and "step 60" in line and "--steps is 30" in line, line
    assert snapshot(out) == before


def test_resume_at_exactly_the_steps_done_reports_and_changes_nothing(tmp_path, launch, reference):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = snapshot(out)
    proc = _ok(launch(out, "--resume"))  # --steps 60, and the run is at step 60
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"nothing to do: {out / 'last'} is already at step 60 (--steps 60); "
        f"{out / 'metrics.json'} unchanged"
    ]
    [summary] = proc.stdout.strip().splitlines()
    val_loss = json.loads((out / "metrics.json").read_text())["val_loss"]
    assert f"val loss {val_loss:.4f}" in summary and "60 steps" in summary, summary
    assert snapshot(out) == before


def test_resume_killed_after_its_final_checkpoint_writes_the_metrics(tmp_path, launch, reference):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "metrics.json").unlink()  # killed between the last checkpoint and metrics.json
    _ok(launch(out, "--resume"))
    metrics = json.loads((out / "metrics.json").read_text())
    expected = json.loads((reference / "metrics.json").read_text())
    assert metrics["val_loss"] == expected["val_loss"] and metrics["steps"] == STEPS
    assert metrics["ms_per_step"] > 0  # the timing of the run that did the steps


def test_truncated_history_is_rebuilt_from_the_checkpoint(tmp_path, launch, reference, half_run):
    out = tmp_path / "run"
    shutil.copytree(half_run, out)
    text = (out / "history.json").read_text()
    (out / "history.json").write_text(text[: len(text) // 2])
    _ok(launch(out, "--resume"))
    assert_same_run(out, reference)  # the whole loss curve, the first 30 steps included


def test_truncated_history_without_a_saved_copy_is_one_line(tmp_path, launch, half_run):
    out = tmp_path / "run"
    shutil.copytree(half_run, out)
    # a checkpoint from before the trainer state kept the history: history.json is all there is
    path = out / "last" / TRAINER_STATE
    state = torch.load(path, weights_only=True)
    del state["history"]
    torch.save(state, path)
    text = (out / "history.json").read_text()
    (out / "history.json").write_text(text[: len(text) // 2])
    before = snapshot(out)
    line = one_error_line(launch(out, "--resume"))
    assert str(out / "history.json") in line and "corrupt or truncated" in line, line
    assert snapshot(out) == before


def test_json_outputs_are_written_atomically(tmp_path, monkeypatch):
    from physllm.training.checkpoint import write_json_atomic

    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"a": 1})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for a kill between writing and the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, {"a": 2, "long": "x" * 10_000})
    assert json.loads(path.read_text()) == {"a": 1}  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temp left


def test_what_a_kill_leaves_of_a_json_write_is_gone_after_the_next_write(tmp_path):
    """SIGKILL skips the cleanup above: the half-written sibling stays until the next write
    of the same file, which reuses its name and renames it away (a resumed run leaves none)."""
    from physllm.training.checkpoint import write_json_atomic

    path = tmp_path / "history.json"
    write_json_atomic(path, [{"step": 1}])
    (tmp_path / ".history.json.tmp").write_text('[{"step": 1}, {"st')  # killed mid-write
    write_json_atomic(path, [{"step": 1}, {"step": 2}])
    assert json.loads(path.read_text()) == [{"step": 1}, {"step": 2}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]
