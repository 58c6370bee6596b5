"""The leaderboard protocol (notebook 06 v2): best_lr and gaps from a results table, seed
bands, and the README section that states each gap with its interval and verdict."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from physllm.analysis import seed_band
from physllm.errors import PhysllmError
from physllm.experiments import protocol as pr
from physllm.experiments import stats
from physllm.experiments.leaderboard import NOTEBOOK
from physllm.fmt import format_seconds
from physllm.reporting import readme as rd

from .conftest import REPO

# Hand-made seeds-stage losses: hamiltonian sits ~0.1 below GPT on every seed (resolved),
# qllm scatters around GPT (not resolved). Differences per seed are written out below.
GPT = {1: 2.00, 2: 2.10, 3: 2.05}
HAM = {1: 1.90, 2: 1.99, 3: 1.96}  # d = -0.10, -0.11, -0.09
QLLM = {1: 2.10, 2: 2.00, 3: 2.08}  # d = +0.10, -0.10, +0.03


def row(entry, seed, loss, lr=1e-3, size="0.2M", steps=400, status="ok", params=200_000):
    return {
        "entry": entry, "size": size, "params": params, "seed": seed, "lr": lr, "steps": steps,
        "tokens": steps * 768, "flops": 1e9, "val_loss": loss if status == "ok" else None,
        "bits_per_unit": None if loss is None else loss / math.log(2), "train_tokens_per_sec": 1e4,
        "wall_s": 10.0, "run_id": f"{entry}_{size}_seed{seed}_lr{lr:g}_steps{steps}",
        "model": entry, "unit": "byte", "status": status,
    }  # fmt: skip


@pytest.fixture
def results():
    rows = [row("gpt", s, v, lr=3e-3) for s, v in GPT.items()]
    rows += [row("hamiltonian", s, v) for s, v in HAM.items()]
    rows += [row("qllm", s, v) for s, v in QLLM.items()]
    rows.append(row("qllm", 4, None, status="failed"))  # a failed run is no seed
    return rows


@pytest.fixture
def lr_results():
    return [
        row("gpt", 0, 2.5, lr=1e-3), row("gpt", 0, 2.4, lr=3e-3),
        row("hamiltonian", 0, 2.3, lr=1e-3), row("hamiltonian", 0, 2.35, lr=3e-3),
        row("qllm", 0, 2.2, lr=1e-3), row("qllm", 0, None, lr=3e-3, status="failed"),
    ]  # fmt: skip


def test_protocol_metrics_best_lr_and_gaps_by_hand(results, lr_results):
    m = pr.protocol_metrics(results, lr_results)
    assert m["best_lr"] == {
        "gpt": {"0.2M": 3e-3},
        "hamiltonian": {"0.2M": 1e-3},
        "qllm": {"0.2M": 1e-3},
    }
    assert set(m["gaps"]) == {"hamiltonian", "qllm"}  # the baseline has no gap to itself
    ham = m["gaps"]["hamiltonian"]["0.2M"]["400"]
    d = [HAM[s] - GPT[s] for s in (1, 2, 3)]
    mean = sum(d) / 3
    half = 4.3027 * math.sqrt(sum((x - mean) ** 2 for x in d) / 2) / math.sqrt(3)
    assert ham["mean"] == pytest.approx(mean)
    assert ham["ci95_low"] == pytest.approx(mean - half)
    assert ham["ci95_high"] == pytest.approx(mean + half)
    assert ham["n_seeds"] == 3 and ham["verdict"] == "better"
    qllm = m["gaps"]["qllm"]["0.2M"]["400"]
    assert qllm["n_seeds"] == 3 and qllm["ci95_low"] < 0 < qllm["ci95_high"]
    assert qllm["verdict"] == "not resolved"
    assert set(ham) == set(pr.GAP_KEYS)
    json.dumps(m, allow_nan=False)  # strict JSON: metrics.json holds no NaN


def test_a_picked_rate_at_an_end_of_the_grid_is_named(results, lr_results):
    m = pr.protocol_metrics(results, lr_results)
    assert m["lr_at_edge"] == {
        "gpt": {"0.2M": "highest"},
        "hamiltonian": {"0.2M": "lowest"},
        "qllm": {"0.2M": "lowest"},  # its failed 3e-3 run still marks the grid's end
    }
    assert m["runs"] == 9 + 5  # finished runs of both stages
    wider = lr_results + [row("gpt", 0, 2.6, lr=1e-2), row("hamiltonian", 0, 2.4, lr=3e-4)]
    assert "gpt" not in pr.protocol_metrics(results, wider)["lr_at_edge"]  # bracketed now
    assert "hamiltonian" not in pr.protocol_metrics(results, wider)["lr_at_edge"]


def test_best_lr_without_the_lr_stage_and_a_single_seed(results):
    assert pr.best_lrs(results)["gpt"] == {"0.2M": 3e-3}  # the one rate the stage ran
    with pytest.raises(PhysllmError, match="several learning rates"):
        pr.best_lrs(results + [row("gpt", 9, 2.0, lr=1e-2)])
    one = [row("gpt", 1, 2.0), row("hamiltonian", 1, 1.5)]
    gap = pr.gap_tree(one)["hamiltonian"]["0.2M"]["400"]
    assert gap["n_seeds"] == 1 and gap["ci95_low"] is None and gap["verdict"] == "not resolved"


def test_summary_rows_mean_and_sd_over_finished_seeds(results):
    by = {r["entry"]: r for r in pr.summary_rows(results)}
    assert by["qllm"]["n_seeds"] == 3  # the failed seed is left out
    assert by["gpt"]["val_loss_mean"] == pytest.approx(sum(GPT.values()) / 3)
    assert by["gpt"]["val_loss_sd"] == pytest.approx(0.05)
    assert by["hamiltonian"]["lr"] == 1e-3
    assert pr.headline_cell(results) == ("0.2M", 400)


def test_run_curve_scales_steps_to_tokens_and_flops(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    history = [{"step": 1, "train_loss": 5.0, "time_s": 0.1},
               {"step": 11, "train_loss": 4.0, "time_s": 1.1}, {"step": 20, "val_loss": 3.9}]  # fmt: skip
    (run / "history.json").write_text(json.dumps(history))
    (run / "metrics.json").write_text(
        json.dumps({"tokens_seen": 20 * 96, "steps": 20, "flops_per_token": 1000})
    )
    assert pr.run_curve(run, "tokens") == ([96.0, 1056.0], [5.0, 4.0])
    assert pr.run_curve(run, "flops")[0] == [96_000.0, 1_056_000.0]
    assert pr.run_curve(run, "time_s")[0] == [0.1, 1.1]
    with pytest.raises(PhysllmError):
        pr.run_curve(run, "steps")


def test_seed_band_spans_the_common_range():
    runs = [([0, 10], [4.0, 2.0]), ([0, 5, 8], [6.0, 4.0, 3.0])]
    grid, mean, low, high = seed_band(runs, points=9)
    assert grid[0] == 0 and grid[-1] == 8  # where every seed has data
    assert mean[0] == pytest.approx(5.0) and low[0] == 4.0 and high[0] == 6.0
    assert (low <= mean).all() and (mean <= high).all()


def test_load_protocol_stages_and_errors(tmp_path):
    smoke = pr.load_protocol("smoke", tmp_path, corpus="pydocs", threads=1)
    assert [s.name for s in smoke] == ["lr", "seeds"]
    assert smoke[1].lrs == "best" and smoke[1].lr_from == str(tmp_path / "lr" / "results.csv")
    assert all(s.corpus == "pydocs" and s.overrides["threads"] == 1 for s in smoke)
    for name in ("cpu", "gpu"):
        specs = pr.load_protocol(name, tmp_path)
        assert [s.name for s in specs] == ["lr", "seeds"] and len(specs[1].seeds) >= 3
    with pytest.raises(PhysllmError, match="no protocol"):
        pr.load_protocol("huge", tmp_path)


# --------------------------------------------------------------------------- the README


def protocol_report(reports, results, lr_results, lie=False):
    m = pr.protocol_metrics(results, lr_results)
    if lie:  # a stored verdict that contradicts its interval must not reach the README
        m["gaps"]["qllm"]["0.2M"]["400"]["verdict"] = "better"
    metrics = {
        "corpus": "shakespeare", "tokenizer": "byte", "batch_size": 12, "block_size": 64,
        "device": "cpu (test box)", "torch_version": "2.x", "git_sha": "abc1234",
        "protocol": {"name": "cpu", "params": {"0.2M": 217_664},
                     "stages": [{"name": "lr", "seeds": [0], "lrs": [1e-3, 3e-3], "steps": [400]},
                                {"name": "seeds", "seeds": [1, 2, 3], "lrs": "best", "steps": [400]}],
                     "runs": m["runs"], "runs_wall_s": 5000.0},
        **m, "summary": pr.summary_rows(results), "leaderboard": pr.leaderboard_rows(results),
    }  # fmt: skip
    folder = reports / NOTEBOOK / "cpu"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    run = {"status": "ok", "wall_s": 4000.0, "started": "2026-12-01T10:00:00Z", "git_sha": "abc1234", "reproducible": True}  # fmt: skip
    (folder / "run.json").write_text(json.dumps(run))


@pytest.mark.parametrize("lie", [False, True])
def test_readme_states_gaps_with_intervals_and_words_only_when_resolved(
    tmp_path, results, lr_results, lie
):
    protocol_report(tmp_path, results, lr_results, lie)
    section = rd.render_section("cpu", tmp_path)
    lines = section.splitlines()
    ham = [ln for ln in lines if ln.startswith("| hamiltonian | 0.2M | 400 |")]
    qllm = [ln for ln in lines if ln.startswith("| qllm | 0.2M | 400 |")]
    assert len(ham) == 1 and len(qllm) == 1
    assert "| 0.001 |" in ham[0] and "-0.100 [" in ham[0] and ham[0].endswith("| 3 | better |")
    assert qllm[0].endswith("| 3 | not resolved |")
    sentences = {ln.split("**")[1]: ln for ln in lines if ln.startswith("- **")}
    assert set(sentences) == {"hamiltonian", "qllm"}  # one sentence per entry
    assert "better than GPT at 0.2M, 400 steps" in sentences["hamiltonian"]
    assert "not resolved at 0.2M, 400 steps" in sentences["qllm"]
    # "better"/"worse" appear only with an interval that excludes 0: nowhere near qllm
    for ln in lines:
        if "qllm" in ln.split("|")[1:2] or ln.startswith("- **qllm"):
            assert "better" not in ln and "worse" not in ln
    words = sum(ln.count("better") + ln.count("worse") for ln in lines)
    assert words == 2  # hamiltonian's table row and its sentence, nothing else
    assert "results.csv" in section and "loss_vs_flops.png" in section
    assert "217,664" in section and format_seconds(4000.0) in section
    assert f"14 runs, {format_seconds(5000.0)} of training summed over them" in section
    assert (
        "The picked learning rate is the grid's highest rate for gpt (0.2M); the grid's lowest "
        "rate for hamiltonian (0.2M), qllm (0.2M): their optimum may lie outside" in section
    )
    assert rd.leaderboard_text(
        rd.leaderboard_text(README, tmp_path), tmp_path
    ) == rd.leaderboard_text(README, tmp_path)  # idempotent


README = "# t\n\n<!-- leaderboard:cpu:start -->\nold\n<!-- leaderboard:cpu:end -->\n"


def test_a_report_without_gaps_still_renders_the_v1_table(tmp_path):
    """The committed report is a protocol (v2) one: the same report without its gaps (what
    a v1 report held) renders the one-budget table."""
    committed = REPO / "reports" / NOTEBOOK / "cpu"
    v1 = tmp_path / NOTEBOOK / "cpu"
    v1.mkdir(parents=True)
    metrics = json.loads((committed / "metrics.json").read_text())
    del metrics["gaps"]
    (v1 / "metrics.json").write_text(json.dumps(metrics))
    shutil.copy(committed / "run.json", v1 / "run.json")
    section = rd.render_section("cpu", tmp_path)
    assert "Every model at one budget, CPU" in section and "| gpt |" in section
    assert "gap to GPT" not in section
    assert "gap to GPT" in rd.render_section("cpu", REPO / "reports")


def test_gap_verdict_reads_the_interval_not_the_stored_word():
    assert rd.gap_verdict({"mean": -0.1, "ci95_low": -0.2, "ci95_high": -0.05, "n_seeds": 3,
                           "verdict": "worse"}) == stats.BETTER  # fmt: skip
    assert (
        rd.gap_verdict({"mean": 0.3, "ci95_low": 0.1, "ci95_high": 0.5, "n_seeds": 5})
        == stats.WORSE
    )
    assert rd.gap_verdict({"mean": -0.1, "ci95_low": None, "ci95_high": None, "n_seeds": 1}) == (
        stats.NOT_RESOLVED
    )
