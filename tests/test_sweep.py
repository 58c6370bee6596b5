"""The experiment runner (``python -m physllm sweep``): the spec, the grid, results.csv,
skipping and resuming, the learning-rate rule, and the paired gap with its t interval."""

from __future__ import annotations

import json
import math
import random
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from physllm import cli
from physllm.errors import PhysllmError
from physllm.experiments import stats, sweep
from physllm.experiments.leaderboard import PARAM_TOLERANCE
from physllm.models import count_params
from physllm.training import make_config

from .conftest import REPO

ISSUE_COLUMNS = (
    "entry size params seed lr steps tokens flops val_loss val_loss_reset val_loss_carried "
    "bits_per_unit train_tokens_per_sec wall_s git_sha"
).split()

TINY = dict(n_layer=1, n_head=2, block_size=16, batch_size=4, eval_iters=2, threads=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small local text file (55 kB): every run's corpus."""
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while waves carry energy".split()
    text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(800))
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(text)
    return path


def tiny_spec(corpus: Path, out_dir: Path, **changes) -> sweep.SweepSpec:
    values = dict(
        entries=["gpt", "hamiltonian"],
        sizes={"tiny": {"n_embd": 16}},
        seeds=[1, 2],
        lrs=[1e-3],
        steps=[4],
        corpus=str(corpus),
        out_dir=str(out_dir),
        overrides=dict(TINY),
    )
    values.update(changes)
    return sweep.SweepSpec.from_dict(values)


def folders(spec: sweep.SweepSpec) -> dict[str, float]:
    """Each run folder's metrics.json modification time (rewritten only by a run)."""
    return {p.parent.name: p.stat().st_mtime_ns for p in spec.runs_dir.glob("*/metrics.json")}


# --------------------------------------------------------------------------- the grid, run


def test_a_tiny_grid_runs_once_then_skips_then_readds_a_lost_row(corpus, tmp_path, capsys):
    spec = tiny_spec(corpus, tmp_path / "out")
    first = sweep.run_sweep_grid(spec)
    assert first["planned"] == 4 and first["ran"] == 4 and first["failed"] == 0
    # what notebooks and the README read; round_trip: pandas' fast parser can miss the last bit
    table = pd.read_csv(spec.results_path, float_precision="round_trip")
    assert set(ISSUE_COLUMNS) <= set(table.columns)
    assert len(table) == 4 and set(table["status"]) == {"ok"}
    assert sorted(zip(table["entry"], table["seed"])) == [
        ("gpt", 1), ("gpt", 2), ("hamiltonian", 1), ("hamiltonian", 2)
    ]  # fmt: skip
    assert (table["steps"] == 4).all() and (table["tokens"] == 4 * 4 * 16).all()
    assert table["val_loss"].between(0, 10).all() and table["git_sha"].notna().all()
    # each row is its run's metrics.json, in the run's own folder
    for row in table.itertuples():
        metrics = json.loads((spec.runs_dir / row.run_id / "metrics.json").read_text())
        assert metrics["val_loss"] == row.val_loss and metrics["params"] == row.params
        assert metrics["seed"] == row.seed
    assert table.groupby("entry")["params"].nunique().eq(1).all()  # seeds share a model

    # again: nothing runs, no folder or file changes, and it says so
    before, csv_bytes = folders(spec), spec.results_path.read_bytes()
    capsys.readouterr()
    second = sweep.run_sweep_grid(spec)
    assert second["ran"] == 0 and second["skipped"] == 4
    assert "skipped 4" in capsys.readouterr().out
    assert folders(spec) == before and spec.results_path.read_bytes() == csv_bytes

    # a grid killed after a run finished but before its row was written: only that run
    # is redone (from its last checkpoint), and its row comes back the same
    rows = sweep.read_results(spec.results_path)
    lost = rows[2]
    sweep.write_results(spec.results_path, [r for r in rows if r is not lost])
    (spec.runs_dir / lost["run_id"] / "metrics.json").unlink()
    third = sweep.run_sweep_grid(spec)
    assert third["ran"] == 1 and third["resumed"] == 1 and third["skipped"] == 3
    again = {r["run_id"]: r for r in sweep.read_results(spec.results_path)}
    assert set(again) == {r["run_id"] for r in rows}
    assert again[lost["run_id"]]["val_loss"] == lost["val_loss"]  # the same weights, evaluated
    assert {k: v for k, v in folders(spec).items() if k != lost["run_id"]} == {
        k: v for k, v in before.items() if k != lost["run_id"]
    }


def test_two_sweeps_cannot_write_one_results_csv(corpus, tmp_path):
    spec = tiny_spec(corpus, tmp_path / "out", entries=["gpt"], seeds=[1])
    with sweep.sweep_lock(spec.results_path):  # another sweep, running in that out_dir
        with pytest.raises(PhysllmError, match="another sweep is writing"):
            sweep.run_sweep_grid(spec, log=None)
    assert not spec.results_path.exists() and not list(spec.runs_dir.glob("*/metrics.json"))
    assert sweep.run_sweep_grid(spec, log=None)["ran"] == 1  # free again once it is done
    assert not (spec.results_path.parent / sweep.LOCK).exists()  # nothing left behind


def test_a_run_killed_midway_resumes_from_its_checkpoint(corpus, tmp_path):
    spec = tiny_spec(corpus, tmp_path / "out", entries=["gpt"], seeds=[3], overrides=TINY)
    [(run, cfg)] = sweep.plan_runs(spec, 256)
    # the run's own command, stopped halfway: a checkpoint at step 2, no row
    proc = subprocess.run(
        [*sweep.train_command(cfg), "--stop-after=2"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    summary = sweep.run_sweep_grid(spec, log=None)
    assert summary["resumed"] == 1 and summary["ran"] == 1
    [row] = sweep.read_results(spec.results_path)
    assert row["status"] == "ok" and row["steps"] == 4
    assert "resumed" in (Path(cfg.out_dir) / "train.log").read_text()


def test_the_train_command_rebuilds_the_run_config_exactly():
    spec = sweep.SweepSpec(entries=["context_vector-fixed"], sizes={"s": {"n_embd": 64}})
    for _, cfg in sweep.plan_runs(spec, 256):
        argv = sweep.train_command(cfg)[4:]  # after "python -m physllm train"
        args = cli.train_parser(cfg.model).parse_args(argv)
        values = {k: v for k, v in vars(args).items() if v is not None and k != "preset"}
        assert make_config(values.pop("model"), None, **values).to_dict() == cfg.to_dict()


def test_a_recorded_run_of_another_model_config_is_refused_but_not_for_a_later_stage(tmp_path):
    """A run folder whose record holds another model config is an error (the spec changed
    under the same out_dir), except in the Hopfield memory's own training settings, which
    `train` never reads: the language-model run is the same."""
    spec = sweep.SweepSpec(entries=["hopfield"], sizes={"s": {"n_embd": 32, "n_layer": 1}})
    run, cfg = next((r, c) for r, c in sweep.plan_runs(spec, 256) if r.entry == "hopfield")
    record = {"config": sweep.comparable(cfg)}
    run_dir = tmp_path / run.run_id
    run_dir.mkdir()

    def saved_with(**model) -> None:
        config = {**record["config"], "model_config": {**cfg.model_config.to_dict(), **model}}
        (run_dir / sweep.RUN_RECORD).write_text(json.dumps({"config": config}))

    saved_with()
    sweep.check_record(run_dir, cfg)
    saved_with(memory_steps=cfg.model_config.memory_steps + 50, memory_lr=0.5)
    sweep.check_record(run_dir, cfg)
    saved_with(n_slots=cfg.model_config.n_slots * 2)
    with pytest.raises(PhysllmError, match="n_slots"):
        sweep.check_record(run_dir, cfg)


def test_the_sweep_sets_seed_lr_and_the_same_schedule_rule_for_every_entry():
    spec = sweep.SweepSpec(entries="all", seeds=[5], lrs=[3e-4, 3e-3], steps=[100, 2000])
    plan = sweep.plan_runs(spec, 256)
    assert len(plan) == len(spec.entries) * 2 * 2
    for run, cfg in plan:
        assert (cfg.seed, cfg.lr, cfg.steps) == (run.seed, run.lr, run.steps)
        assert cfg.min_lr == pytest.approx(run.lr / 10)
        assert cfg.warmup_steps == min(40, run.steps // 10)  # the cpu recipe's 40
        assert Path(cfg.out_dir).name == run.run_id
    assert len({run.run_id for run, _ in plan}) == len(plan)


def test_parameter_matching_reapplies_per_size():
    sizes = {"small": {"n_embd": 64}, "large": {"n_embd": 128}}
    spec = sweep.SweepSpec(entries=["context_vector-fixed"], sizes=sizes)
    params = {
        (run.entry, run.size): count_params(cfg.model, cfg.model_config.to_dict())
        for run, cfg in sweep.plan_runs(spec, 256)
    }
    for size in sizes:
        ratio = params[("context_vector-fixed", size)] / params[("gpt", size)]
        assert abs(ratio - 1) <= PARAM_TOLERANCE, (size, ratio)
    assert params[("gpt", "large")] > 3 * params[("gpt", "small")]


# --------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(entries=["gpt", "nosuch"]), "unknown leaderboard entries nosuch"),
        (dict(entries=[]), "entries must not be empty"),
        (dict(seeds=[]), "seeds must not be empty"),
        (dict(seeds=[1, 1]), "seeds has duplicates"),
        (dict(seeds=[-1]), "seeds must be integers"),
        (dict(seeds=[1.5]), "seeds must be integers"),
        (dict(lrs=[0.0]), "lrs must be positive numbers"),
        (dict(lrs=[float("nan")]), "lrs must be positive numbers"),
        (dict(lrs="fast"), "lrs must be positive numbers"),
        (dict(lrs="best"), "needs lr_from"),
        (dict(lr_from="x.csv"), "lr_from is read only"),
        (dict(steps=[0]), "steps must be positive integers"),
        (dict(sizes={}), "sizes must be a non-empty table"),
        (dict(sizes={"a_b": {}}), "size name 'a_b'"),
        (dict(sizes={"s": {"n_hidden": 3}}), "unknown field.*n_hidden"),
        (dict(overrides={"lr": 0.1}), "may not set lr"),
        (dict(overrides={"stop_after": 2}), "may not set stop_after"),
        (dict(preset="tpu"), "no preset 'tpu'"),
        (dict(resume="yes"), "resume must be true or false"),
        (dict(colour="red"), "unknown key.*colour"),
    ],
)
def test_a_bad_spec_is_one_clear_error(changes, message):
    with pytest.raises(PhysllmError, match=message):
        sweep.SweepSpec.from_dict(changes)


def test_a_bad_override_value_fails_before_anything_runs(corpus, tmp_path):
    spec = tiny_spec(corpus, tmp_path / "out", overrides={**TINY, "batch_size": 0})
    with pytest.raises(PhysllmError, match="--batch-size"):
        sweep.run_sweep_grid(spec, log=None)
    assert not (tmp_path / "out").exists()


def test_stages_share_keys_and_the_picked_rate_flows_to_the_next(tmp_path):
    staged = {
        "entries": ["gpt", "qllm"],
        "out_dir": str(tmp_path),
        "sizes": {"s": {}},
        "stages": {
            "lr": {"seeds": [0], "lrs": [1e-3, 3e-3], "steps": [50]},
            "seeds": {"seeds": [1, 2], "lrs": "best", "lr_from": "lr", "steps": [50, 200]},
        },
    }
    lr_stage, seed_stage = sweep.load_specs(staged)
    assert lr_stage.results_path == tmp_path / "lr" / "results.csv"
    assert seed_stage.lr_from == str(lr_stage.results_path) and seed_stage.entries == (
        "gpt",
        "qllm",
    )
    with pytest.raises(PhysllmError, match="does not exist yet"):
        sweep.plan_runs(seed_stage, 256)
    # made-up lr-sweep results: gpt is best at 1e-3, qllm at 3e-3
    losses = {("gpt", 1e-3): 2.0, ("gpt", 3e-3): 2.1, ("qllm", 1e-3): 2.3, ("qllm", 3e-3): 2.2}
    rows = [
        dict(entry=e, size="s", seed=0, lr=lr, steps=50, val_loss=v, run_id=f"{e}{lr}", status="ok")
        for (e, lr), v in losses.items()
    ]
    lr_stage.results_path.parent.mkdir(parents=True)
    sweep.write_results(lr_stage.results_path, rows)
    plan = sweep.plan_runs(seed_stage, 256)
    assert {(r.entry, r.lr) for r, _ in plan} == {("gpt", 1e-3), ("qllm", 3e-3)}
    assert len(plan) == 2 * 2 * 2  # entries x seeds x budgets
    assert [s.name for s in sweep.load_specs(staged, stage="seeds")] == ["seeds"]
    backwards = {**staged, "stages": {"a": {"lrs": "best", "lr_from": "b"}, "b": {}}}
    with pytest.raises(PhysllmError, match="does not come before it"):
        sweep.load_specs(backwards)


def test_the_example_protocol_spec_loads():
    lr_stage, seed_stage = sweep.load_specs(REPO / "experiments" / "protocol_cpu.toml")
    assert len(lr_stage.lrs) >= 3 and lr_stage.steps == (400,)
    ratios = [b / a for a, b in zip(lr_stage.lrs, lr_stage.lrs[1:])]
    assert all(r == pytest.approx(ratios[0], rel=0.15) for r in ratios)  # ~log-spaced
    assert len(seed_stage.seeds) >= 3 and seed_stage.steps == (400, 2000)
    assert seed_stage.lrs == "best" and seed_stage.lr_from == str(lr_stage.results_path)
    assert set(lr_stage.sizes) == {"0.2M", "0.8M"} and len(lr_stage.entries) >= 8


# --------------------------------------------------------------------------- the lr rule and the gap


def row(entry, seed, val_loss, lr=1e-3, steps=400, size="s"):
    return dict(entry=entry, size=size, seed=seed, lr=lr, steps=steps, val_loss=val_loss)


def test_pick_lr_takes_the_lowest_mean_at_the_short_budget_among_complete_rates():
    rows = [
        row("gpt", 1, 2.0, lr=1e-3), row("gpt", 2, 2.2, lr=1e-3),  # mean 2.1
        row("gpt", 1, 2.0, lr=3e-3), row("gpt", 2, 2.1, lr=3e-3),  # mean 2.05: best
        row("gpt", 1, 1.0, lr=1e-4, steps=2000), row("gpt", 2, 1.0, lr=1e-4, steps=2000),
        row("gpt", 1, 1.5, lr=1e-2), row("gpt", 2, None, lr=1e-2),  # a seed failed
    ]  # fmt: skip
    assert sweep.pick_lr(rows, "gpt", "s") == 3e-3
    assert sweep.pick_lr(rows, "gpt", "s", steps=2000) == 1e-4
    tie = [row("gpt", 1, 2.0, lr=3e-3), row("gpt", 1, 2.0, lr=1e-3)]
    assert sweep.pick_lr(tie, "gpt", "s") == 1e-3
    with pytest.raises(PhysllmError, match="no results for entry 'qllm'"):
        sweep.pick_lr(rows, "qllm", "s")


def test_paired_gap_matches_a_hand_computation():
    base = {1: 2.50, 2: 2.60, 3: 2.55}
    diffs = {1: -0.10, 2: -0.05, 3: -0.12}  # entry minus gpt, per seed
    rows = [row("gpt", s, v) for s, v in base.items()]
    rows += [row("ngt", s, base[s] + d) for s, d in diffs.items()]
    rows += [row("ngt", 4, 1.0)]  # a seed gpt lacks is not paired
    gap = stats.paired_gap(rows, "ngt")
    # by hand: mean -0.09; deviations -0.01, 0.04, -0.03; sd = sqrt(0.0026 / 2);
    # t_{0.975, 2} = 4.303; half width = 4.303 * sd / sqrt(3) = 0.08958
    half = 4.303 * math.sqrt(0.0026 / 2) / math.sqrt(3)
    assert gap["n_seeds"] == 3 and gap["mean"] == pytest.approx(-0.09)
    # (the table's 4.3027 against the rounded 4.303: 6e-6 apart here)
    assert gap["ci95_low"] == pytest.approx(-0.09 - half, abs=2e-5)
    assert gap["ci95_high"] == pytest.approx(-0.09 + half, abs=2e-5)
    assert gap["ci95_high"] < 0 and gap["verdict"] == "better"
    # the same table as a DataFrame gives the same gap
    assert stats.paired_gap(pd.DataFrame(rows), "ngt") == gap

    worse = [row("gpt", s, v) for s, v in base.items()] + [
        row("ngt", s, base[s] - d) for s, d in diffs.items()
    ]
    assert stats.paired_gap(worse, "ngt")["verdict"] == "worse"
    noisy = [row("gpt", s, v) for s, v in base.items()] + [
        row("ngt", 1, 2.40), row("ngt", 2, 2.70), row("ngt", 3, 2.55)
    ]  # fmt: skip
    gap = stats.paired_gap(noisy, "ngt")
    assert gap["ci95_low"] < 0 < gap["ci95_high"] and gap["verdict"] == "not resolved"
    one = stats.paired_gap([row("gpt", 1, 2.5), row("ngt", 1, 1.0)], "ngt")
    assert one["n_seeds"] == 1 and one["verdict"] == "not resolved"
    assert math.isnan(one["ci95_low"])


def test_paired_gap_refuses_an_ambiguous_table():
    rows = [row("gpt", 1, 2.5), row("ngt", 1, 2.4), row("ngt", 1, 2.3, lr=3e-3)]
    with pytest.raises(PhysllmError, match="several lr values"):
        stats.paired_gap(rows, "ngt")
    assert stats.paired_gap(rows, "ngt", lr=3e-3)["mean"] == pytest.approx(-0.2)
    two_budgets = [row("gpt", 1, 2.5), row("ngt", 1, 2.4), row("gpt", 1, 2.0, steps=2000)]
    with pytest.raises(PhysllmError, match="several steps values"):
        stats.paired_gap(two_budgets, "ngt")
    assert stats.paired_gap(two_budgets, "ngt", steps=400)["n_seeds"] == 1


def test_t_quantiles():
    assert stats.t975(1) == 12.7062 and stats.t975(2) == 4.3027 and stats.t975(30) == 2.0423
    assert stats.t975(60) == pytest.approx(2.0003, abs=1e-4)  # tables: 2.000
    assert stats.t975(120) == pytest.approx(1.9799, abs=1e-4)  # tables: 1.980
    assert stats.t975(10**6) == pytest.approx(1.95996, abs=1e-4)  # the normal's
    assert all(a > b for a, b in zip(stats.T975, stats.T975[1:]))


# --------------------------------------------------------------------------- the command


def physllm(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m physllm ARGS`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        cli.main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def test_sweep_command_bad_spec_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    for text, message in [
        ('entries = ["gpt", "nosuch"]\n', "unknown leaderboard entries nosuch"),
        ("seeds = [\n", "not valid TOML"),
        ('colour = "red"\n', "unknown key(s) colour"),
        ('[stages.a]\nlrs = "best"\n', "needs lr_from"),
    ]:
        bad.write_text(text)
        code, _, err = physllm(capsys, "sweep", str(bad))
        assert code == 2 and err.count("\n") == 1 and message in err, err
    code, _, err = physllm(capsys, "sweep", str(tmp_path / "missing.toml"))
    assert code == 2 and "no such file" in err


def test_sweep_command_dry_run_lists_the_grid_and_writes_nothing(corpus, tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    out = tmp_path / "out"
    spec.write_text(
        f'entries = ["gpt", "qllm"]\nseeds = [1, 2]\nlrs = [1e-3, 3e-3]\nsteps = [4]\n'
        f'corpus = "{corpus}"\nout_dir = "{out}"\n[sizes]\ntiny = {{ n_embd = 16 }}\n'
        "[overrides]\nn_layer = 1\nn_head = 2\nblock_size = 16\n"
    )
    code, stdout, err = physllm(capsys, "sweep", str(spec), "--dry-run")
    assert code == 0, err
    listed = [line.split()[-1] for line in stdout.splitlines() if line.startswith("  new")]
    assert len(listed) == 2 * 2 * 2 and "qllm_tiny_seed2_lr0.003_steps4" in listed
    assert not out.exists()
