"""The probe suite (physllm.probes, notebook 07): generators against plain-Python solvers,
the scoring rule, the trainer fed a task, a trained GPT against itself with attention
ablated, state sizes, the grid's table and resume, recall at distance (streaming equal to
the forward pass, a carried state against a zeroed one, CHopT's bank written or not),
the repetition measures, and the notebook at 20 steps."""

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
    DISTANCE_CLAIMS,
    IGNORE,
    MQAR,
    DistanceEpisodes,
    DistanceRecall,
    Induction,
    NoisyRecall,
    ProbeData,
    SelectiveCopy,
    accuracy_gaps,
    capability_matrix,
    claim_findings,
    common_perplexity,
    distance_findings,
    distance_matrix,
    distinct_n,
    make_task,
    matched_perplexity,
    matrix_table,
    probe_configs,
    repeated_ngram_rate,
    repetition_findings,
    repetition_summary,
    run_grid,
    run_probe,
    sample_metrics,
    sample_with_nll,
    score,
    score_at_distance,
    state_bytes,
    stream_logits,
)
from physllm.probes import runner as probe_runner
from physllm.sampling import value_at_perplexity
from physllm.training import train, train_memory

TASKS = [
    MQAR(vocab_size=16, seq_len=12, n_pairs=2),
    MQAR(vocab_size=64, seq_len=64, n_pairs=8),
    SelectiveCopy(vocab_size=16, seq_len=12, n_tokens=3),
    SelectiveCopy(vocab_size=32, seq_len=64, n_tokens=8),
    NoisyRecall(vocab_size=16, seq_len=16, n_keys=2),
    NoisyRecall(vocab_size=64, seq_len=64, n_keys=8, noise=0.5),
    Induction(vocab_size=16, seq_len=16, segment=4),
    Induction(vocab_size=8, seq_len=64, segment=16),
    DistanceRecall(vocab_size=32, seq_len=40, n_facts=3),
    DistanceRecall(vocab_size=16, seq_len=12, n_facts=1),
    DistanceRecall(vocab_size=16, seq_len=12, n_facts=2).at_distance(96),
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
    with pytest.raises(PhysllmError, match="at_distance"):
        DistanceRecall(vocab_size=16, seq_len=12, distance=5)
    with pytest.raises(PhysllmError, match="n_facts"):
        DistanceRecall(vocab_size=16, seq_len=32, n_facts=6)
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
    monkeypatch.undo()
    # scored at more factors, the length runs are another experiment (a longer block):
    # they run again and their rows replace the old ones, none left twice
    longer = run_grid(
        tasks, "gpt", seeds=(0, 1), length_task="mqar", length_factors=(1, 2, 3), **kw
    )
    assert sorted(r["task"] for r in longer if r["seed"] == 0) == [
        "mqar",
        "mqar@1x",
        "mqar@2x",
        "mqar@3x",
    ]
    assert {r["seq_len"] for r in longer if r["task"] == "mqar@3x"} == {36}
    on_disk = probe_runner.read_rows(tmp_path / "results.csv")
    assert len(on_disk) == 2 * 4


def test_run_probe_rows_carry_settings_and_state(tmp_path):
    cfg = probe_configs(TINY_MQAR, "gpt", steps=2, out_dir=str(tmp_path), threads=1, progress=False)
    (row,) = run_probe("gpt", cfg["gpt"], TINY_MQAR, "mqar", n_eval=16)
    assert row["entry"] == "gpt" and row["task"] == "mqar" and row["n_scored"] == 32
    assert json.loads(row["settings"])["n_pairs"] == 2 and row["state_bytes"] > 0


TINY_DISTANCE = DistanceRecall(vocab_size=16, seq_len=8, n_facts=1)  # chance 1/5


def test_distance_recall_puts_the_gap_between_the_facts_and_the_queries():
    P, d = 2, 40
    task = DistanceRecall(vocab_size=16, seq_len=12, n_facts=P).at_distance(d)
    assert task.seq_len == 4 * P + d - 1 and task.settings()["distance"] == d
    x, y = task.generate(50, 0)
    K = task.key_range
    for row, targets in zip(x.tolist(), y.tolist()):
        facts = dict(zip(row[0 : 2 * P : 2], row[1 : 2 * P : 2]))
        assert all(tok > 2 * K for tok in row[2 * P : 2 * P + d])  # filler: no key, no value
        assert row[2 * P + d] in facts  # the first query, exactly d after the last fact
        assert targets[2 * P + d] == facts[row[2 * P + d]]
    # training samples: the gap varies and every sample keeps the task's length
    gaps = set()
    for row in TINY_DISTANCE.generate(200, 1)[0].tolist():
        keys = [t for t, tok in enumerate(row) if 1 <= tok <= TINY_DISTANCE.key_range]
        gaps.add(keys[1] - keys[0] - 2)
    assert len(gaps) > 3


@pytest.mark.parametrize("entry", ["context_vector-fixed", "qllm", "gpt"])
def test_streaming_through_decode_step_equals_the_forward_pass_in_the_block(entry):
    task = DistanceRecall(vocab_size=16, seq_len=16)
    cfg = probe_configs(task, entry, steps=1)[entry]
    if entry == "qllm":  # segments of half the training length: the memory is carried
        assert cfg.model_config.segment_len == 8
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.model_config).eval()
    x, _ = task.at_distance(10).generate(3, 0)  # 13 tokens, inside the block of 16
    with torch.no_grad():
        full = model(x)[0]
    assert torch.allclose(stream_logits(model, x, 2, 5), full[:, 5:], atol=1e-4)


class ZeroedState(nn.Module):
    """A model whose decoding state is zeroed after its first call (the facts)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def decode_step(self, idx, state=None):
        logits, new = self.model.decode_step(idx, state)
        if state is None:
            new = [torch.zeros_like(c) for c in new]
        return logits, new


def test_a_carried_state_recalls_past_the_block_and_a_zeroed_one_does_not(tmp_path):
    """A context vector trained briefly at length 8 (a fact and its query inside it) recalls
    the fact 16 tokens back (2x, past anything it trained on) through its state; the same
    weights with the state zeroed after the facts score chance."""
    cfg = probe_configs(
        TINY_DISTANCE,
        "context_vector-fixed",
        steps=150,
        out_dir=str(tmp_path),
        batch_size=32,
        threads=1,
        progress=False,
    )["context_vector-fixed"]
    model = train(cfg, data=ProbeData(TINY_DISTANCE)).model
    far = TINY_DISTANCE.at_distance(16)
    carried = score_at_distance(model, far, n=128)["accuracy"]
    zeroed = score_at_distance(ZeroedState(model), far, n=128)["accuracy"]
    assert carried > 0.8, carried
    assert zeroed < 0.35, zeroed
    # the probe's own control is the same thing: a context vector's empty state is zeros
    assert score_at_distance(model, far, n=128, carry=False)["accuracy"] == zeroed


def test_hopfield_probe_writes_the_fact_into_the_bank_and_recalls_only_then(tmp_path):
    """CHopT trained briefly (backbone on the task, then its memory on two-call episodes):
    the probe's first call writes the fact (the bank is non-empty after it), later calls
    hold no fact token, and recall falls to chance when that write is disabled."""
    cfg = probe_configs(
        TINY_DISTANCE,
        "hopfield",
        steps=100,
        out_dir=str(tmp_path),
        batch_size=32,
        threads=1,
        progress=False,
    )["hopfield"]
    model = train(cfg, data=ProbeData(TINY_DISTANCE)).model
    train_memory(
        model,
        DistanceEpisodes(TINY_DISTANCE),
        100,
        batch_size=16,
        max_facts=1,
        lr=1e-2,
        seed=0,
        progress=False,
    )
    far = TINY_DISTANCE.at_distance(16)
    written = score_at_distance(model, far, n=64)
    unwritten = score_at_distance(model, far, n=64, carry=False)
    assert written["bank_after_write"] == 1.0  # "k v": one key (k) with its value (v)
    assert unwritten["bank_after_write"] == 0.0
    assert len(model.memory) == 0  # the probe leaves the bank empty
    assert written["accuracy"] > 0.8, written
    assert unwritten["accuracy"] < 0.35, unwritten


def test_distance_episodes_split_the_facts_from_their_queries():
    import random

    ep = DistanceEpisodes(DistanceRecall(vocab_size=16, seq_len=16, n_facts=2)).episode(
        8, 2, random.Random(0)
    )
    for write, read, targets, facts in zip(
        ep.write_ids.tolist(), ep.read_ids.tolist(), ep.read_targets.tolist(), ep.items
    ):
        value = dict(facts)
        assert all(k in write for k in value)  # both facts in call 1 ...
        asked = [t for t, tok in enumerate(read) if tok in value]
        assert len(asked) == 2 and all(targets[t] == value[read[t]] for t in asked)
        assert sum(t != IGNORE for t in targets) == 2  # ... and only their answers scored


def test_repetition_measures_on_a_loop_and_on_distinct_tokens():
    loop, fresh = [7] * 256, list(range(256))
    for n in (1, 2, 3, 4):
        assert distinct_n(loop, n) == pytest.approx(1 / (256 - n + 1))
        assert distinct_n(fresh, n) == 1.0
    assert repeated_ngram_rate(loop, 4) == pytest.approx(252 / 253)
    assert repeated_ngram_rate(fresh, 4) == 0.0
    assert repeated_ngram_rate([1, 2, 1, 2, 1, 2], 2) == pytest.approx(3 / 5)
    assert math.isnan(distinct_n([1, 2], 4)) and math.isnan(repeated_ngram_rate([1], 2))
    m = sample_metrics(loop, [2.0] * 64 + [1.0] * 128 + [0.5] * 64)
    assert m["drift"] == pytest.approx(-1.5) and m["repeated_4"] > 0.99
    assert m["ppl"] == pytest.approx(math.exp(1.125))
    assert value_at_perplexity([(10.0, 0.2), (2.0, 0.8), (4.0, 0.6)], 7.0) == pytest.approx(0.4)
    assert value_at_perplexity([(2.0, 0.8), (4.0, 0.6)], 9.0) is None


def test_samples_carry_the_models_own_untempered_loss():
    cfg = probe_configs(TINY_MQAR, "gpt", steps=1)["gpt"]
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.model_config).eval()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    tokens, nll = sample_with_nll(model, prompt, 5, 0.5, torch.Generator().manual_seed(0))
    assert tokens.shape == nll.shape == (2, 5)
    with torch.no_grad():
        logits = model(torch.cat([prompt, tokens], 1)[:, :-1])[0][:, -5:]
    want = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")
    assert torch.allclose(nll, want, atol=1e-5)


def _repetition_rows():
    """Two entries x three seeds x three temperatures; hamiltonian repeats less at every
    perplexity by 0.1 (seed noise +-0.01)."""
    rows = []
    for entry, shift in (("gpt", 0.0), ("hamiltonian", -0.1)):
        for seed in (0, 1, 2):
            for t, ppl, rep in ((0.5, 2.0, 0.8), (0.8, 8.0, 0.4), (1.1, 20.0, 0.1)):
                noise = 0.01 * (seed - 1)
                rows.append(
                    dict(
                        entry=entry,
                        seed=seed,
                        temperature=t,
                        ppl=ppl * (1 + 0.1 * seed),
                        repeated_4=rep + shift + noise,
                        distinct_1=0.1,
                        distinct_2=0.3,
                        distinct_3=0.5,
                        distinct_4=0.7 - shift,
                        drift=0.0,
                        params=10,
                        steps=5,
                        corpus="pydocs",
                        n_tokens=256,
                    )
                )
    return rows


def test_repetition_is_compared_at_one_perplexity_paired_by_seed():
    rows = _repetition_rows()
    # every curve spans [2 * 1.2, 20]: the geometric middle of the common range
    assert common_perplexity(rows) == pytest.approx(math.sqrt(2.4 * 20.0))
    at8 = {(r["entry"], r["seed"]): r for r in matched_perplexity(rows, ppl=8.0)}
    assert at8["gpt", 0]["repeated_4"] == pytest.approx(0.39)
    summary = repetition_summary(rows, ppl=8.0)
    ham = summary["hamiltonian"]
    assert ham["matched"]["ppl"] == 8.0 and ham["matched"]["repeated_4"]["n_seeds"] == 3
    gap = ham["gap"]["repeated_4"]
    assert gap["mean"] == pytest.approx(-0.1) and gap["verdict"] == "better"
    assert ham["gap"]["distinct_4"]["verdict"] == "better"  # more distinct: higher is better
    assert len(ham["temperatures"]) == 3 and summary["gpt"]["gap"] == {}
    (line,) = repetition_findings(summary, steps=5)
    assert "row `hamiltonian`" in line and "row `gpt`" in line and "better" in line
    none = repetition_summary(rows, ppl=100.0)
    assert none["gpt"]["matched"]["repeated_4"]["n_seeds"] == 0


def test_distance_rows_become_cells_per_distance_and_sentences():
    task = TINY_DISTANCE
    base = {"chance": 0.2, "params": 100, "state_bytes": 8, "state_how": "x", "steps": 5}
    rows = []
    for entry, acc in (("gpt", 0.2), ("context_vector-fixed", 0.9)):
        for seed in (0, 1, 2):
            a = acc + 0.01 * seed
            rows.append(
                {
                    **base,
                    "entry": entry,
                    "task": "recall_at_distance",
                    "seed": seed,
                    "accuracy": 1.0,
                    "exact": 1.0,
                    "n_scored": 128,
                    "settings": json.dumps(task.settings()),
                }
            )
            for k in (1, 16):
                at = task.at_distance(8 * k)
                rows.append(
                    {
                        **base,
                        "entry": entry,
                        "task": f"recall_at_distance@{k}x",
                        "seed": seed,
                        "accuracy": a,
                        "exact": a,
                        "n_scored": 128,
                        "control_accuracy": 0.2,
                        "settings": json.dumps(at.settings()),
                    }
                )
    cells = distance_matrix(rows)
    assert list(cells["gpt"]) == ["in_block", "1x", "16x"]
    far = cells["context_vector-fixed"]["16x"]
    assert far["distance"] == 128 and far["factor"] == 16 and far["n_seeds"] == 3
    assert far["control_mean"] == pytest.approx(0.2) and far["mean"] == pytest.approx(0.91)
    lines = distance_findings(cells, steps=5)
    assert len(lines) == len(DISTANCE_CLAIMS)
    assert (
        "above chance and its control at d=8, d=128" in lines[0]
        and "row `context_vector-fixed`" in lines[0]
    )
    assert "Reference `gpt`" in lines[0] and "above chance at no distance" in lines[0]
    assert "not in this grid" in lines[1]


def test_grid_runs_the_distance_task_with_its_memory_stage_and_resumes(tmp_path, monkeypatch):
    tasks = {"mqar": TINY_MQAR, "recall_at_distance": TINY_DISTANCE}
    kw = dict(steps=3, out_dir=tmp_path, threads=1, progress=False, log=None, n_eval=8)
    kw.update(distance_task="recall_at_distance", distance_factors=(1, 2), memory_steps=2)
    rows = run_grid(tasks, "hopfield", seeds=(0,), **kw)
    labels = {r["task"] for r in rows}
    assert labels == {
        "mqar",
        "recall_at_distance",
        "recall_at_distance@1x",
        "recall_at_distance@2x",
    }
    far = [r for r in rows if r["task"] == "recall_at_distance@2x"]
    assert {r["entry"] for r in far} == {"gpt", "hopfield"}
    assert all(r["distance"] == 16 and 0 <= r["control_accuracy"] <= 1 for r in far)
    hop = next(r for r in far if r["entry"] == "hopfield")
    assert hop["bank_after_write"] == 1.0 and hop["memory_steps"] == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run ran again")

    monkeypatch.setattr(probe_runner, "run_distance_probe", no_training)
    monkeypatch.setattr(probe_runner, "run_probe", no_training)
    assert len(run_grid(tasks, "hopfield", seeds=(0,), **kw)) == len(rows)


def test_notebook_runs_at_20_steps(run_notebook):
    _, out_dir = run_notebook("07_probes", steps=20)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    probes = metrics["probes"]
    assert {"gpt", "context_vector-seed"} <= set(probes)
    cell_keys = {"mean", "ci95_low", "ci95_high", "n_seeds", "settings"}
    for tasks in probes.values():
        for task, cell in tasks.items():
            if task == "recall_at_distance":  # per distance
                assert "in_block" in cell and "16x" in cell
                assert all(cell_keys | {"distance"} <= set(c) for c in cell.values())
            elif task == "mqar_curve":  # per width and pair count
                assert set(cell) == {"w32_p2", "w32_p4", "w64_p2", "w64_p4"}
                assert all(cell_keys | {"width", "n_pairs"} <= set(c) for c in cell.values())
            elif task == "repetition":  # per temperature, and at the matched perplexity
                assert cell["temperatures"] and "ppl" in cell["matched"]
                assert {"mean", "ci95_low", "ci95_high", "n_seeds"} <= set(
                    cell["matched"]["repeated_4"]
                )
            else:
                assert cell_keys <= set(cell)
    assert {"hopfield", "qllm"} <= {e for e, t in probes.items() if "recall_at_distance" in t}
    assert {"gpt", "hamiltonian"} <= {e for e, t in probes.items() if "repetition" in t}
    assert {"gpt", "context_vector-fixed"} == {e for e, t in probes.items() if "mqar_curve" in t}
    assert metrics["mqar_curve"]["widths"] == [32, 64]


def test_mqar_curve_runs_each_width_and_pair_count_and_tabulates_them(tmp_path, monkeypatch):
    """Zoology's plot: one grid per width (GPT that wide, the others matched to it), the
    pair counts as tasks; cells keyed by width and pairs; a rerun trains nothing."""
    from physllm.probes import curve_findings, curve_matrix, curve_table, mqar_curve

    kw = dict(steps=3, out_dir=tmp_path, threads=1, progress=False, log=None, n_eval=16)
    rows = mqar_curve("context_vector-fixed", (24, 32), (1, 3), 12, 16, seeds=(0, 1), **kw)
    assert len(rows) == 2 * 2 * 2 * 2  # widths x pairs x entries (gpt too) x seeds
    curve = curve_matrix(rows)
    assert set(curve) == {"gpt", "context_vector-fixed"}
    assert set(curve["gpt"]) == {"w24_p1", "w24_p3", "w32_p1", "w32_p3"}
    cell = curve["gpt"]["w32_p3"]
    assert (cell["width"], cell["n_pairs"], cell["n_seeds"]) == (32, 3, 2)
    assert curve["gpt"]["w24_p1"]["params"] < cell["params"]  # a narrower GPT
    for w in (24, 32):  # each entry matched to GPT's parameters at each width
        ratio = (
            curve["context_vector-fixed"][f"w{w}_p1"]["params"] / curve["gpt"][f"w{w}_p1"]["params"]
        )
        assert 0.85 < ratio < 1.15
    lines = curve_findings(curve, 3)
    assert len(lines) == 2 and all("width 24:" in x and "width 32:" in x for x in lines)
    table = curve_table(curve)
    assert list(table.columns) == ["1 pairs", "3 pairs"] and ("gpt", 24) in table.index

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run ran again")

    monkeypatch.setattr(probe_runner, "run_probe", no_training)
    assert (
        len(mqar_curve("context_vector-fixed", (24, 32), (1, 3), 12, 16, seeds=(0, 1), **kw)) == 16
    )
