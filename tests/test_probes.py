"""The probe suite (physllm.probes, notebook 07): generators against plain-Python solvers,
the scoring rule, the trainer fed a task, a trained GPT against itself with attention
ablated, state sizes, the grid's table and resume, and the notebook at 20 steps."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from physllm.errors import PhysllmError
from physllm.models import build_model
from physllm.probes import (
    CLAIMS,
    IGNORE,
    MQAR,
    Induction,
    NoisyRecall,
    ProbeData,
    SelectiveCopy,
    accuracy_gaps,
    capability_matrix,
    claim_findings,
    make_task,
    matrix_table,
    probe_configs,
    run_grid,
    run_probe,
    score,
    state_bytes,
)
from physllm.probes import runner as probe_runner
from physllm.training import train

TASKS = [
    MQAR(vocab_size=16, seq_len=12, n_pairs=2),
    MQAR(vocab_size=64, seq_len=64, n_pairs=8),
    SelectiveCopy(vocab_size=16, seq_len=12, n_tokens=3),
    SelectiveCopy(vocab_size=32, seq_len=64, n_tokens=8),
    NoisyRecall(vocab_size=16, seq_len=16, n_keys=2),
    NoisyRecall(vocab_size=64, seq_len=64, n_keys=8, noise=0.5),
    Induction(vocab_size=16, seq_len=16, segment=4),
    Induction(vocab_size=8, seq_len=64, segment=16),
]
TINY_MQAR = MQAR(vocab_size=16, seq_len=12, n_pairs=2)
TORCH_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(TORCH_THREADS)


def _answers(y_row: torch.Tensor) -> dict[int, int]:
    return {t: int(v) for t, v in enumerate(y_row.tolist()) if v != IGNORE}


@pytest.mark.parametrize("task", TASKS, ids=lambda t: f"{t.name}-{t.seq_len}")
def test_solver_answers_every_scored_position_and_nothing_else(task):
    x, y = task.generate(300, seed=5)
    assert x.shape == y.shape == (300, task.seq_len) and x.dtype == torch.long
    assert int(x.min()) >= 0 and int(x.max()) < task.vocab_size
    for i in range(300):
        assert task.solve(x[i].tolist()) == _answers(y[i])
    assert int((y != IGNORE).sum()) > 0


@pytest.mark.parametrize("task", TASKS[::2], ids=lambda t: t.name)
def test_generation_is_seeded_and_longer_lengths_keep_the_rule(task):
    a, b, c = task.generate(8, 1), task.generate(8, 1), task.generate(8, 2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    longer = task.at_length(task.seq_len * 4)
    x, y = longer.generate(50, 3)
    assert x.shape == (50, task.seq_len * 4)
    assert all(longer.solve(x[i].tolist()) == _answers(y[i]) for i in range(50))


def test_bad_settings_are_one_clear_error():
    with pytest.raises(PhysllmError, match="n_pairs"):
        MQAR(vocab_size=16, seq_len=12, n_pairs=9)
    with pytest.raises(PhysllmError, match="4 \\* n_pairs"):
        MQAR(vocab_size=64, seq_len=12, n_pairs=4)
    with pytest.raises(PhysllmError, match="segment"):
        Induction(vocab_size=16, seq_len=8, segment=4)
    with pytest.raises(PhysllmError, match="unknown probe task"):
        make_task("parity")
    with pytest.raises(PhysllmError, match="no knob"):
        make_task("mqar", n_keys=3)
    assert make_task("induction", segment=2, seq_len=8) == Induction(seq_len=8, segment=2)


class Predictor(nn.Module):
    """Logits from a rule: the solver's answers (an oracle) or one constant token."""

    def __init__(self, task, constant: int | None = None):
        super().__init__()
        self.task, self.constant = task, constant
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None):
        logits = torch.zeros(*idx.shape, self.task.vocab_size)
        for i, row in enumerate(idx.tolist()):
            if self.constant is not None:
                logits[i, :, self.constant] = 1.0
                continue
            for t, tok in self.task.solve(row).items():
                logits[i, t, tok] = 1.0
        return logits, None


@pytest.mark.parametrize("task", TASKS[::2], ids=lambda t: t.name)
def test_score_is_one_for_an_oracle_and_chance_for_a_constant(task):
    assert score(Predictor(task), task, n=128)["accuracy"] == 1.0
    assert score(Predictor(task), task, n=128)["exact"] == 1.0
    # a constant answer, one of the answer tokens: right about 1 / answer_count of the time
    answer_token = int(task.generate(1, 0)[1][0][task.generate(1, 0)[1][0] != IGNORE][0])
    result = score(Predictor(task, constant=answer_token), task, n=2000)
    assert abs(result["accuracy"] - task.chance()) < 0.05 + task.chance() / 2
    assert result["n_scored"] > 2000


def test_probe_data_feeds_the_trainer_with_masked_targets(tmp_path):
    data = ProbeData(TINY_MQAR, block_size=24)
    x, y = data.get_batch("train", 4, 24, torch.Generator().manual_seed(0))
    assert x.shape == (4, TINY_MQAR.seq_len) and int((y != IGNORE).sum()) == 4 * 2
    xv, _ = data.get_batch("val", 4, 24, torch.Generator().manual_seed(0))
    assert not torch.equal(x, xv)  # the splits draw from different seed streams
    with pytest.raises(PhysllmError, match="do not fit"):
        data.get_batch("train", 4, 8, torch.Generator())
    cfg = probe_configs(TINY_MQAR, "gpt", steps=3, out_dir=str(tmp_path), threads=1, progress=False)
    result = train(cfg["gpt"], data=ProbeData(TINY_MQAR))
    metrics = json.loads((tmp_path / "gpt" / "metrics.json").read_text())
    assert metrics["corpus"] == "probe:mqar" and metrics["tokenizer"] == "probe:16"
    assert result.metrics["steps"] == 3 and math.isfinite(metrics["val_loss"])


def test_probe_configs_match_gpt_and_drop_carried_state():
    cfgs = probe_configs(TINY_MQAR, "context_vector-seed,hopfield", steps=10)
    assert set(cfgs) == {"gpt", "context_vector-seed", "hopfield"}
    params = {n: build_model(c.model, c.model_config).num_params() for n, c in cfgs.items()}
    assert abs(params["context_vector-seed"] / params["gpt"] - 1) < 0.10, params
    # the memory layer at its smallest (mem_head_dim 4) is 10% of this 2x64 GPT on its own
    assert abs(params["hopfield"] / params["gpt"] - 1) < 0.15, params
    assert cfgs["context_vector-seed"].model_config.carry_state is False
    assert all(
        c.model_config.vocab_size == 16 and c.model_config.block_size == 12 for c in cfgs.values()
    )


def test_trained_gpt_solves_tiny_mqar_and_not_with_attention_ablated(tmp_path):
    """The acceptance test of the suite: a GPT trained briefly on MQAR (vocab 16, 2 pairs,
    length 12) recalls far above chance (1/8); the same weights with every attention
    output zeroed (no token can read another) fall to chance."""
    cfg = probe_configs(
        TINY_MQAR, "gpt", steps=300, out_dir=str(tmp_path), batch_size=32, threads=1, progress=False
    )["gpt"]
    model = train(cfg, data=ProbeData(TINY_MQAR)).model
    trained = score(model, TINY_MQAR, n=512)["accuracy"]
    with torch.no_grad():
        for block in model.blocks:
            block.attn.c_proj.weight.zero_()
            if block.attn.c_proj.bias is not None:
                block.attn.c_proj.bias.zero_()
    ablated = score(model, TINY_MQAR, n=512)["accuracy"]
    assert trained > 0.45, trained
    assert ablated < 0.25, ablated


def test_state_bytes_kv_cache_and_recurrent_state():
    cfgs = probe_configs(TINY_MQAR, "context_vector-seed,hamiltonian", steps=10, block_size=32)
    gpt = build_model("gpt", cfgs["gpt"].model_config)
    c = cfgs["gpt"].model_config
    got = state_bytes(gpt, 20)
    # keys and values of 20 positions in each layer (fp32), plus the 20-token window (int64)
    assert got == {
        "state_bytes": 2 * c.n_layer * 20 * c.n_embd * 4 + 20 * 8,
        "state_how": "kv cache (measured)",
    }
    cv_cfg = cfgs["context_vector-seed"].model_config
    cv = build_model("context_vector", cv_cfg)
    for T in (20, 32):  # the same whatever the length
        assert state_bytes(cv, T) == {
            "state_bytes": cv_cfg.n_layer * cv_cfg.n_context * 4,
            "state_how": "recurrent state (measured)",
        }
    h = cfgs["hamiltonian"].model_config
    ham = build_model("hamiltonian", h)
    # its cache: keys and values, each layer's last K - 1 convolution inputs, the token
    # window and the last hidden state (read by the flow decoder)
    assert state_bytes(ham, 20) == {
        "state_bytes": (2 * 20 + h.decay_kernel - 1) * h.n_layer * h.n_embd * 4
        + 20 * 8
        + h.n_embd * 4,
        "state_how": "kv cache (measured)",
    }


def _rows():
    base = {"chance": 0.125, "params": 100, "state_bytes": 8, "state_how": "x", "steps": 5}
    base["n_scored"] = 512
    base["settings"] = json.dumps(TINY_MQAR.settings())
    accs = {("gpt", 0): 0.9, ("gpt", 1): 0.8, ("gpt", 2): 0.85, ("cv", 0): 0.1, ("cv", 1): 0.2}
    return [
        {**base, "entry": e, "task": "mqar", "seed": s, "accuracy": a, "exact": a / 2}
        for (e, s), a in accs.items()
    ]


def test_capability_matrix_has_a_t_interval_per_cell():
    m = capability_matrix(_rows())
    gpt = m["gpt"]["mqar"]
    assert gpt["n_seeds"] == 3 and gpt["mean"] == pytest.approx(0.85)
    half = 4.3027 * 0.05 / math.sqrt(3)  # t_{0.975,2} x sd / sqrt(n)
    assert gpt["ci95_low"] == pytest.approx(0.85 - half) and gpt["ci95_high"] == pytest.approx(
        0.85 + half
    )
    assert gpt["settings"]["n_pairs"] == 2 and m["cv"]["mqar"]["n_seeds"] == 2
    assert gpt["chance_high"] == pytest.approx(0.125 + 1.96 * math.sqrt(0.125 * 0.875 / 512))
    lines = claim_findings(m, accuracy_gaps(_rows(), baseline="gpt"), steps=5)
    assert len(lines) == len(CLAIMS) and "not in this grid" in lines[1]
    table = matrix_table(m)
    assert table.loc["gpt", "mqar"].startswith("0.85 [")


def test_grid_writes_results_and_resumes(tmp_path, monkeypatch):
    tasks = {"mqar": TINY_MQAR}
    kw = dict(steps=4, out_dir=tmp_path, threads=1, progress=False, log=None, n_eval=32)
    rows = run_grid(tasks, "gpt", seeds=(0, 1), length_task="mqar", length_factors=(1, 2), **kw)
    assert sorted({r["task"] for r in rows}) == ["mqar", "mqar@1x", "mqar@2x"]
    assert len(rows) == 2 * 3 and (tmp_path / "results.csv").exists()
    assert {r["seq_len"] for r in rows if r["task"] == "mqar@2x"} == {24}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run ran again")

    monkeypatch.setattr(probe_runner, "run_probe", no_training)
    again = run_grid(tasks, "gpt", seeds=(0, 1), length_task="mqar", length_factors=(1, 2), **kw)
    assert len(again) == len(rows)


def test_run_probe_rows_carry_settings_and_state(tmp_path):
    cfg = probe_configs(TINY_MQAR, "gpt", steps=2, out_dir=str(tmp_path), threads=1, progress=False)
    (row,) = run_probe("gpt", cfg["gpt"], TINY_MQAR, "mqar", n_eval=16)
    assert row["entry"] == "gpt" and row["task"] == "mqar" and row["n_scored"] == 32
    assert json.loads(row["settings"])["n_pairs"] == 2 and row["state_bytes"] > 0


def test_notebook_runs_at_20_steps(run_notebook):
    _, out_dir = run_notebook("07_probes", steps=20)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    probes = metrics["probes"]
    assert {"gpt", "context_vector-seed"} <= set(probes)
    for tasks in probes.values():
        for cell in tasks.values():
            assert {"mean", "ci95_low", "ci95_high", "n_seeds", "settings"} <= set(cell)
