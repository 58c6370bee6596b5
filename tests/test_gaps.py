"""A notebook's headline gap over seeds (:func:`physllm.experiments.gaps.seed_gaps`): the
rate each config picks by the one rule, new seeds at that rate, the paired interval, and a
second call that runs nothing."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from physllm.errors import PhysllmError
from physllm.experiments import gaps, stats, sweep
from physllm.training import make_config, matched_baseline

TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, threads=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = random.Random(1)
    words = "a symplectic step keeps the energy of the oscillator near its start".split()
    text = "\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(700))
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(text)
    return path


def notebook_configs(corpus: Path, out: Path) -> dict:
    """What a notebook hands over: its variant and the matched GPT, both as it trained them."""
    common = dict(corpus=str(corpus), steps=6, warmup_steps=1, progress=False, tensorboard=False)
    ham = make_config("hamiltonian", "cpu", **TINY, **common, out_dir=str(out / "symplectic"))
    return {"symplectic": ham, "gpt": matched_baseline(ham, out_dir=str(out / "gpt"))}


def test_seed_gaps_picks_rates_pairs_seeds_and_skips_on_a_second_call(corpus, tmp_path, capsys):
    configs = notebook_configs(corpus, tmp_path / "nb")
    out = tmp_path / "gaps"
    result = gaps.seed_gaps(configs, lrs="1e-3,1e-2", seeds=(1, 2), out_dir=out)
    lr_rows = sweep.read_results(out / "lr" / "results.csv")
    seed_rows = sweep.read_results(out / "seeds" / "results.csv")
    assert len(lr_rows) == 2 * 2 and {r["seed"] for r in lr_rows} == {0}
    assert len(seed_rows) == 2 * 2 and {r["seed"] for r in seed_rows} == {1, 2}
    for name in configs:  # the same rule for both: the lower seed-0 loss
        mine = {r["lr"]: r["val_loss"] for r in lr_rows if r["entry"] == name}
        assert result["best_lr"][name] == min(mine, key=mine.get)
        assert {r["lr"] for r in seed_rows if r["entry"] == name} == {result["best_lr"][name]}
    assert {r["tokens"] for r in seed_rows} == {6 * 4 * 16}  # the same training budget
    scored = {json.loads(p.read_text())["val_tokens"] for p in out.glob("runs/*/metrics.json")}
    assert len(scored) == 1 and scored.pop() > 0  # every run on the same validation tokens
    loss = {(r["entry"], r["seed"]): r["val_loss"] for r in seed_rows}
    diffs = [loss[("symplectic", s)] - loss[("gpt", s)] for s in (1, 2)]
    mean = sum(diffs) / 2
    half = 12.7062047 * math.sqrt(sum((d - mean) ** 2 for d in diffs)) / math.sqrt(2)
    gap = result["gaps"]["symplectic"]
    assert gap["n_seeds"] == 2 and gap["baseline"] == "gpt"
    assert gap["mean"] == pytest.approx(mean) and gap["ci95_high"] == pytest.approx(mean + half)
    assert gap["val_loss"] == pytest.approx((loss[("symplectic", 1)] + loss[("symplectic", 2)]) / 2)
    assert gap["verdict"] == stats.verdict(gap["ci95_low"], gap["ci95_high"])
    rows = gaps.gap_rows(result)
    assert [r["variant"] for r in rows] == ["symplectic"]
    # a candidate against another config than the baseline: the same pairing, reversed here
    other = gaps.paired_gaps(result, [("gpt", "symplectic")])["gpt - symplectic"]
    assert other["mean"] == pytest.approx(-mean) and other["n_seeds"] == 2
    assert other["ci95_low"] == pytest.approx(-gap["ci95_high"])
    # a pair naming a config the grid never ran is left out; no grid, no gaps
    assert list(gaps.paired_gaps(result, [("gpt", "symplectic"), ("gpt", "absent")])) == [
        "gpt - symplectic"
    ]
    assert gaps.paired_gaps(None, [("gpt", "symplectic")]) == {}

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    capsys.readouterr()
    again = gaps.seed_gaps(configs, lrs="1e-3,1e-2", seeds=(1, 2), out_dir=out)
    assert "0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")} == stamps
    assert again["gaps"] == result["gaps"]


@pytest.mark.parametrize(
    "text, message",
    [("", "positive"), ("1e-3,x", "numbers"), ("-1e-3", "positive"), ("1e-3,1e-3", "differ")],
)
def test_bad_rates_are_one_clear_error(text, message):
    with pytest.raises(PhysllmError, match=message):
        gaps.parse_rates(text)


def test_rates_come_as_text_one_number_or_a_list():
    """papermill's `-p gap_lrs 1e-3` hands the notebook a float, `-p gap_lrs 1e-3,1e-2` a str."""
    assert gaps.parse_rates("3e-4, 1e-3") == (3e-4, 1e-3)
    assert gaps.parse_rates(1e-3) == (1e-3,)
    assert gaps.parse_rates([1e-3, 1e-2]) == (1e-3, 1e-2)


def test_bad_grids_fail_before_anything_runs(corpus, tmp_path):
    configs = notebook_configs(corpus, tmp_path / "nb")
    with pytest.raises(PhysllmError, match="no baseline"):
        gaps.seed_gaps({"symplectic": configs["symplectic"]}, out_dir=tmp_path / "g")
    with pytest.raises(PhysllmError, match="must be new"):
        gaps.seed_gaps(configs, seeds=(0, 1), out_dir=tmp_path / "g")
    with pytest.raises(PhysllmError, match="at least 2 seeds"):
        gaps.seed_list(1)
    assert not (tmp_path / "g").exists()
