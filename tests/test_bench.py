"""bench --mode generate: speeds from one process where every model decodes in turn."""

from __future__ import annotations

import pytest

from physllm import bench
from physllm.bench import BenchConfig, interleaved_decode_speeds, run_generation_bench

SPECS = ["gpt", "context_vector:gates=input"]


def tiny(**kw) -> BenchConfig:
    shape = dict(n_layer=1, n_head=1, n_embd=16, vocab_size=32, timed_tokens=6, threads=1)
    return BenchConfig(models=SPECS, repeats=1, **{"lengths": "16,40", **shape, **kw})


def test_interleaved_speeds_cover_every_model_and_length_and_take_each_models_steps():
    """Every model decodes timed_tokens - 1 timed steps at every length, in turns of
    DECODE_TURN steps: the decode calls alternate between the models and the lengths."""
    cfg = bench.generation_config(tiny())
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        for spec in SPECS:
            name = spec.split(":")[0]
            cls = bench.get_model_classes(name)[1]
            original = cls.decode_step

            def counted(self, idx, state=None, _name=name, _original=original):
                calls.append((_name, idx.size(1)))
                return _original(self, idx, state)

            mp.setattr(cls, "decode_step", counted)
        mp.setattr(bench, "DECODE_TURN", 2)
        speeds = interleaved_decode_speeds(cfg)
    assert set(speeds) == {(s, n) for s in SPECS for n in (16, 40)}
    assert all(v > 0 for v in speeds.values())
    one_token = [name for name, n in calls if n == 1]
    # a warm-up step for each (model, length), then 5 timed steps each: two rounds of turns
    # of 2 steps, each (model, length) once a round in some order, then one of 1 step
    timed = one_token[4:]
    assert len(timed) == 2 * 8 + 4
    turns = [timed[i : i + 2] for i in range(0, 16, 2)] + [[name] for name in timed[16:]]
    assert all(len(set(turn)) == 1 for turn in turns)
    for round_turns in (turns[:4], turns[4:8], turns[8:]):
        assert sorted(turn[0] for turn in round_turns) == ["context_vector"] * 2 + ["gpt"] * 2


def test_a_short_context_is_timed_again_from_a_fresh_start_while_longer_ones_run():
    """A length whose timed steps run out first (here 1 step at length 2, 5 at 40) starts
    again from a fresh context, untimed, so it is timed beside the others all round."""
    cfg = bench.generation_config(tiny(lengths="2,40"))
    prefilled = []
    original = bench._prefill
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "DECODE_TURN", 2)
        mp.setattr(
            bench,
            "_prefill",
            lambda model, length, c: prefilled.append(length) or original(model, length, c),
        )
        speeds = interleaved_decode_speeds(cfg)
    assert set(speeds) == {(s, n) for s in SPECS for n in (2, 40)}
    # 3 turns (5 steps of length 40 in turns of 2): length 2's pairs start 3 times each
    assert prefilled.count(40) == len(SPECS)
    assert prefilled.count(2) == 3 * len(SPECS)


def test_the_table_speeds_are_the_interleaved_ones_and_memory_the_isolated_ones():
    """run_generation_bench takes tokens/s (and x gpt) from the interleaved process and keeps
    what each fresh process timed beside it."""
    cfg = tiny()

    def isolated(spec, cfg, queue):
        queue.put(bench.measure_generation(spec, cfg))

    def fixed(specs, cfg, queue):
        queue.put({"speeds": {(s, n): 100.0 * (i + 1) for i, s in enumerate(SPECS)
                              for n in (16, 40)}})  # fmt: skip

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "run_isolated", lambda f, spec, c: _inline(f, spec, c))
        rows = run_generation_bench(cfg, child=isolated, speeds=fixed)
    by = {(r["model"], r["length"]): r for r in rows}
    assert by["gpt", 16]["tokens_per_sec"] == 100.0 and by["gpt", 40]["reference_ratio"] == 1.0
    cv = by["context_vector:gates=input", 40]
    assert cv["tokens_per_sec"] == 200.0 and cv["reference_ratio"] == 2.0
    assert cv["tokens_per_sec_isolated"] > 0 and cv["peak_mem_mb"] > 0


def _inline(func, spec, cfg):
    """run_isolated without the fresh process (the test's functions are local)."""

    class Queue(list):
        put = list.append

    queue = Queue()
    func(spec, cfg, queue)
    return queue[0]


def test_training_speeds_come_from_one_process_taking_turns():
    """run_bench keeps memory and FLOPs from each model's own process and takes tokens/s
    (and so speed x, ms/step, GFLOP/s) from the interleaved process."""
    cfg = BenchConfig(models=SPECS, n_layer=1, n_head=1, n_embd=16, vocab_size=32,
                      block_size=16, batch_size=2, steps=3, repeats=1, threads=1)  # fmt: skip
    speeds = bench.interleaved_train_speeds(cfg)
    assert set(speeds) == set(SPECS) and all(v > 0 for v in speeds.values())

    def fixed(specs, cfg, queue):
        queue.put({"speeds": {"gpt": 1000.0, SPECS[1]: 1500.0}})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "run_isolated", lambda f, spec, c: _inline(f, spec, c))
        rows = bench.run_bench(cfg, child=lambda s, c, q: q.put(bench.measure_training(s, c)),
                               speeds=fixed)  # fmt: skip
    gpt, cv = rows
    assert gpt["tokens_per_sec"] == 1000.0 and cv["speed_ratio"] == 1.5
    assert cv["ms_per_step"] == pytest.approx(1000 * 32 / 1500.0)
    assert cv["achieved_flops"] == pytest.approx(cv["flops_per_token"] * 1500.0)
    assert cv["tokens_per_sec_isolated"] > 0 and cv["peak_mem_mb"] >= 0
