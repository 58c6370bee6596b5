"""CHopT: the Hopfield update, the persistent memory, the HF backbone, the tasks, the notebook."""

from __future__ import annotations

import json
import math
import random
import re

import pytest
import torch

from physllm.errors import PhysllmError
from physllm.hopfield import functional as hopfield_fn
from physllm.hopfield.analysis import seed_summary
from physllm.hopfield.baselines import KNNLM, MemoryReader, NGramCache
from physllm.hopfield.model import (
    CausalWindow,
    HopfieldConfig,
    HopfieldLM,
    MemoryBank,
    MemoryState,
    PooledWindow,
)
from physllm.hopfield.tasks import (
    HELDOUT_PHRASES,
    FactsTask,
    NarrativeQATask,
    TemplateSplit,
    bank_of,
    capacity_curve,
    generated_templates,
    is_heldout,
    load_narrativeqa_records,
    narrativeqa_eval,
    recall,
    token_f1,
    uses_heldout_wording,
)
from physllm.models import build_model
from physllm.sampling import generate
from physllm.training import train_memory
from physllm.training.memory import train_gate

from .conftest import SpyReader

CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz .\nQA:?"))
STOI = {c: i for i, c in enumerate(CHARS)}


def encode(text: str) -> list[int]:
    return [STOI[c] for c in text]


def tiny_model(**overrides) -> HopfieldLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=len(CHARS), block_size=32, n_layer=1, n_head=2, n_embd=32)
    cfg.update(mem_heads=2, mem_head_dim=16, key_window=8, n_slots=256)
    cfg.update(overrides)
    return build_model("hopfield", cfg).eval()


# --------------------------------------------------------------------------- functional core


def test_energy_never_increases_over_updates():
    gen = torch.Generator().manual_seed(0)
    stored = torch.randn(2, 3, 40, 16, generator=gen, dtype=torch.float64)
    state = torch.randn(2, 3, 5, 16, generator=gen, dtype=torch.float64)
    beta = torch.tensor([0.1, 1.0, 4.0], dtype=torch.float64)
    mask = torch.rand(2, 40, generator=gen) > 0.3
    _, _, energies = hopfield_fn.retrieve(state, stored, beta, update_steps_max=12, mask=mask)
    assert energies.shape == (13, 2, 3, 5)
    steps = energies[1:] - energies[:-1]
    assert steps.max() <= 1e-9, steps.max()
    assert steps.min() < -1e-3  # and it does descend


def test_one_update_is_attention():
    gen = torch.Generator().manual_seed(1)
    keys, values = torch.randn(1, 2, 9, 8, generator=gen), torch.randn(1, 2, 9, 4, generator=gen)
    q = torch.randn(1, 2, 3, 8, generator=gen)
    out, _, _ = hopfield_fn.retrieve(q, keys, 0.5, 1, pattern_projection=values)
    ref = torch.nn.functional.scaled_dot_product_attention(q, keys, values, scale=0.5)
    torch.testing.assert_close(out, ref)


def test_noisy_pattern_retrieves_stored_pattern_with_large_beta():
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(1, 1, 64, 32, generator=gen)
    noisy = X[:, :, 17:18] + 0.5 * torch.randn(1, 1, 1, 32, generator=gen)
    out, _, _ = hopfield_fn.retrieve(noisy, X, beta=8.0, update_steps_max=1)
    torch.testing.assert_close(out, X[:, :, 17:18], atol=1e-4, rtol=0)
    blurred, _, _ = hopfield_fn.retrieve(
        noisy, X, beta=1e-3, update_steps_max=1
    )  # small beta: an average
    assert (blurred - X[:, :, 17:18]).abs().max() > 0.5


# --------------------------------------------------------------------------- memory bank


def test_a_bias_term_keeps_the_energy_descent_and_tilts_the_read():
    gen = torch.Generator().manual_seed(1)
    stored = torch.randn(1, 2, 30, 8, generator=gen, dtype=torch.float64)
    state = torch.randn(1, 2, 4, 8, generator=gen, dtype=torch.float64)
    bias = torch.linspace(0, 3, 30, dtype=torch.float64).view(1, 1, 1, 30)
    _, assoc, E = hopfield_fn.retrieve(state, stored, 0.3, 6, bias=bias)
    assert (E[1:] - E[:-1] <= 1e-9).all()  # CCCP with a linear term: still a descent
    _, plain, _ = hopfield_fn.retrieve(state, stored, 0.3, 1)
    late = slice(15, None)  # the bias favours the later half
    assert assoc[..., late].sum(-1).mean() > plain[..., late].sum(-1).mean()


def test_recency_makes_the_latest_of_two_equal_writes_win():
    """A stale fact and its update with the same key: the read returns the update's value
    once gamma > 0 (from a constructed state and from the bank), an even mix at gamma = 0."""
    layer = tiny_model(recency=True).memory_layer
    H, dk, dv = layer.H, layer.dk, layer.dv
    key = torch.randn(1, H, 1, dk).expand(1, H, 2, dk)
    values = torch.stack([torch.full((dv,), -1.0), torch.full((dv,), 1.0)]).expand(1, H, 2, dv)
    mem = MemoryState(
        key, values, torch.ones(1, 2, dtype=torch.bool), order=torch.tensor([[0.0, 40.0]])
    )
    h = torch.randn(1, 3, 32)
    with torch.no_grad():
        layer.recency.zero_()
        _, even = layer.read(h, mem)
        layer.recency.fill_(20.0)
        _, tilted = layer.read(h, mem)
    assert torch.allclose(even["association"], torch.full_like(even["association"], 0.5), atol=1e-5)
    assert (tilted["association"][..., 1] > 0.99).all()  # the later write
    bank = MemoryBank(8, H, dk, dv)
    bank.write(MemoryState(key[:, :, :1], values[:, :, :1], torch.ones(1, 1, dtype=torch.bool)))
    bank.write(MemoryState(key[:, :, 1:], values[:, :, 1:], torch.ones(1, 1, dtype=torch.bool)))
    state = bank.state()
    assert state.order.tolist() == [[0, 1]]  # the bank's write order is the state's order
    assert layer.recency_bias(state)[..., 1].gt(layer.recency_bias(state)[..., 0]).all()
    assert tiny_model().memory_layer.recency_bias(state) is None  # off by default


def test_bound_heads_pick_the_slot_that_matches_in_every_head():
    """Slot 0 matches the probe in head 0 only (the name), slot 1 in head 1 only (the
    attribute), slot 2 partly in both. Heads read alone go to slots 0 and 1; bound
    (``bind_heads``) every head reads slot 2, with one distribution and a falling energy."""
    h = torch.randn(1, 1, 32, generator=torch.Generator().manual_seed(3))
    reads = {}
    for bind in (False, True):
        layer = tiny_model(bind_heads=bind, n_updates=3).memory_layer
        with torch.no_grad():
            layer.log_beta.fill_(math.log(10.0))
            q = layer.state_pattern(h)[0, :, 0]  # (H, dk), unit RMS per head
            other = torch.randn(2, 2, 16)  # (slot, H, dk), made orthogonal to q per head
            other = other - (other * q).sum(-1, keepdim=True) / q.pow(2).sum(-1, keepdim=True) * q
            other = torch.nn.functional.rms_norm(other, (16,))
            both = torch.nn.functional.rms_norm(0.6 * q + 0.8 * other[1], (16,))
            keys = torch.stack(
                [torch.stack([q[0], other[0, 1]]), torch.stack([other[0, 0], q[1]]), both]
            )
            values = torch.randn(3, 2, 16)  # (slot, H, dv)
            mem = MemoryState(keys.transpose(0, 1)[None], values.transpose(0, 1)[None],
                              torch.ones(1, 3, dtype=torch.bool))  # fmt: skip
            _, reads[bind] = layer.read(h, mem)
    alone, bound = reads[False]["association"][0, :, 0], reads[True]["association"][0, :, 0]
    assert alone[0].argmax() == 0 and alone[1].argmax() == 1  # (H, S): each head its own slot
    assert (bound[:, 2] > 0.99).all() and torch.equal(bound[0], bound[1])
    energies = reads[True]["energies"][:, 0, 0, 0]  # (steps + 1,)
    assert (energies[1:] <= energies[:-1] + 1e-5).all()
    assert not tiny_model().config.bind_heads  # off by default


def test_writes_persist_across_calls_and_reset_empties():
    model = tiny_model()
    x = torch.tensor([encode("the code of bolek is xqzt.\n")])
    prompt = torch.tensor([encode("the code of bolek is ")])
    baseline, _ = model(prompt)
    assert len(model.memory) == 0
    n = model.memorize(x)
    assert n == x.size(1) - 1 and len(model.memory) == n
    with_memory, _ = model(prompt)  # a separate call: only the prompt, the memory read
    assert not torch.allclose(with_memory, baseline)
    assert model.last_aux["energy_read"] <= model.last_aux["energy_probe"] + 1e-5
    model.memory.reset()
    assert len(model.memory) == 0
    after_reset, _ = model(prompt)
    torch.testing.assert_close(after_reset, baseline)  # exactly the no-memory model


def test_fifo_replaces_oldest_and_least_used_keeps_read_slots():
    model = tiny_model(n_slots=30)
    a = torch.tensor([encode("the code of bolek is xqzt.\n")])  # 26 slots
    model.memorize(a)
    first_keys = model.memory.keys.clone()
    model.memorize(torch.tensor([encode("abcdefghijk")]))  # 10 more: 6 evictions
    assert len(model.memory) == 30
    evicted = (model.memory.keys != first_keys).flatten(1).any(-1)
    assert evicted.sum() == 10  # 4 free slots filled, then the 6 oldest replaced
    assert evicted[:6].all() and not evicted[6:26].any()

    model = tiny_model(n_slots=30, replacement="least_used")
    model.memorize(a)
    model(torch.tensor([encode("the code of bolek is ")]))  # reading marks slots as used
    usage = model.memory.usage.clone()
    model.memorize(torch.tensor([encode("abcdefghijk")]))
    kept = usage[:26].argsort(descending=True)[:20]
    assert (model.memory.age[kept] < 26).all()  # the most read slots survived


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    model.memorize(torch.tensor([encode("the code of bolek is xqzt.\n")]))
    prompt = torch.tensor([encode("the code of bolek is ")])
    logits, _ = model(prompt)
    path = model.memory.save(tmp_path / "memory.safetensors")
    other = tiny_model()  # same weights (same seed), empty bank
    other.memory.load(path)
    assert len(other.memory) == len(model.memory)
    torch.testing.assert_close(other(prompt)[0], logits)
    with pytest.raises(PhysllmError):
        tiny_model(n_slots=64).memory.load(path)  # shapes do not fit
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PhysllmError):
        other.memory.load(tmp_path / "bad.safetensors")


def test_long_call_hidden_matches_windows():
    model = tiny_model()
    x = torch.randint(0, len(CHARS), (2, 100))
    h = model.hidden(x)
    assert h.shape == (2, 100, 32)
    torch.testing.assert_close(h[:, :32], model.backbone(x[:, :32])[1])
    torch.testing.assert_close(h[:, 64:80], model.backbone(x[:, 48:80])[1][:, 16:])


def offset_keys(enc, name: torch.Tensor, other: torch.Tensor, filler: torch.Tensor) -> tuple:
    """Distances of ``enc``'s key at the last of 12 positions: the name ending 3 positions
    before it vs 5 before (the rest filler), and the name vs another name, both 3 before."""

    def key(who: torch.Tensor, offset: int) -> torch.Tensor:
        rows = [filler] * (7 - offset) + list(who) + [filler] * offset
        return enc(torch.stack(rows).unsqueeze(0))[0, -1]

    return (key(name, 3) - key(name, 5)).norm(), (key(name, 3) - key(other, 3)).norm()


@pytest.mark.parametrize("ngram", [1, 3])
def test_pooled_key_of_a_name_is_one_at_two_offsets_and_the_conv_key_is_not(ngram):
    """A name 3 or 5 positions back, the rest of the window alike (at least ngram - 1 filler
    each side, so the window holds the same n-grams), pools to one key; another name to
    another. The conv keys the name by offset: moved, it is about as far from itself as
    from another name."""
    torch.manual_seed(0)
    C, w = 16, 12
    pool, conv = PooledWindow(C, 2, 8, w, ngram), CausalWindow(C, 16, w)
    with torch.no_grad():
        pool.score.weight.normal_()  # a trained scorer: not the uniform mean it starts as
    name, other, filler = torch.randn(5, C), torch.randn(5, C), torch.randn(C)
    moved, another = offset_keys(pool, name, other, filler)
    assert moved < 1e-5 < 0.1 < another
    moved, another = offset_keys(conv, name, other, filler)
    assert moved > 0.5 * another


@pytest.mark.parametrize("combine", ["add", "gated", "concat"])
def test_combine_modes_and_placement(combine):
    model = tiny_model(combine=combine, n_layer=2, mem_layer=0, n_updates=3)
    model.memorize(torch.tensor([encode("the code of bolek is xqzt.\n")]))
    logits, loss = model(
        torch.tensor([encode("the code of")]), torch.zeros(1, 11, dtype=torch.long)
    )
    assert logits.shape == (1, 11, len(CHARS)) and torch.isfinite(loss)


# --------------------------------------------------------------------------- calls and tasks


def backbone_inputs(model: HopfieldLM, prompts: torch.Tensor, n_new: int):
    """Call 2 (greedy, no write) with a spy on the backbone's decoding step: the output, the
    tokens of every step (the prompt, then each token alone: the cache holds the rest) and
    whether each step started without a cache."""
    chunks: list[torch.Tensor] = []
    fresh: list[bool] = []
    step = model.backbone.decode_step

    def spy(idx, state, read=None):
        chunks.append(idx)
        fresh.append(state is None)
        return step(idx, state, read)

    model.backbone.decode_step = spy
    try:
        out = model.call(prompts, max_new_tokens=n_new, write=False, temperature=0)
    finally:
        del model.backbone.decode_step  # the class's method again
    return out, chunks, fresh


def leaked_codes(rows: list[list[int]], facts, prompt_len: int) -> set[str]:
    """The codes of ``facts`` found in the part of ``rows`` the model did not generate
    (the first ``prompt_len`` tokens): what a prompt could have leaked from call 1."""
    found = set()
    for row in rows:
        given = row[:prompt_len]
        for _, code in facts:
            ids = encode(code)
            if any(given[i : i + len(ids)] == ids for i in range(len(given) - len(ids) + 1)):
                found.add(code)
    return found


def test_second_call_never_sees_first_calls_tokens():
    model = tiny_model(block_size=128)  # the leaky prompts below fit in one block
    task = FactsTask(encode)
    model.memory.reset()
    facts = task.facts(3, random.Random(0), "heldout")
    write = torch.tensor([encode(task.write_text(facts))])
    model.call(write)  # call 1
    prompts = task.prompts(facts)
    out, chunks, fresh = backbone_inputs(model, prompts, task.code_len)  # call 2
    assert out.shape == (3, prompts.size(1) + task.code_len)
    # the backbone ran on the questions from an empty cache, then on each generated token
    assert len(chunks) == 1 + task.code_len and fresh == [True] + [False] * task.code_len
    assert torch.equal(chunks[0], prompts) and all(c.size(1) == 1 for c in chunks[1:])
    # so all it read, row by row, is its question plus the model's own answer ...
    seen = torch.cat(chunks, dim=1)
    assert torch.equal(seen, out)
    # ... and no question holds a code of call 1
    assert leaked_codes(seen.tolist(), facts, prompts.size(1)) == set()

    # The search finds a leak where there is one: questions that repeat call 1's
    # facts before asking (as a prompt carrying the context would) hand over every code.
    leaky = torch.tensor([encode(task.write_text(facts)) + row for row in prompts.tolist()])
    model.memory.reset()
    _, chunks, _ = backbone_inputs(model, leaky, task.code_len)
    seen = torch.cat(chunks, dim=1).tolist()
    assert leaked_codes(seen, facts, leaky.size(1)) == {code for _, code in facts}


def test_facts_task_heldout_split_is_disjoint():
    task = FactsTask(encode)
    rng = random.Random(0)
    train = task.facts(200, rng, "train")
    held = task.facts(200, rng, "heldout")
    assert all(not is_heldout(n) and not is_heldout(c) for n, c in train)
    assert all(is_heldout(n) and is_heldout(c) for n, c in held)
    ep = task.episode(3, 4, rng)
    assert ep.write_ids.shape == (3, 4 * 27)
    assert ep.read_ids.shape == (12, 24) and ep.read_targets.shape == (12, 24)
    assert ((ep.read_targets >= 0).sum(1) == 4).all()  # the code's 4 characters are scored


def test_memory_training_learns_recall_and_reset_drops_it():
    """Sixty steps on a tiny random backbone: recall with memory beats without."""
    torch.manual_seed(0)
    model = tiny_model()
    task = FactsTask(encode)
    hist = train_memory(model, task, steps=60, batch_size=8, max_facts=4, progress=False)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert all(not p.requires_grad for p in model.backbone.parameters())
    with_memory = recall(model, task, 4, trials=8)
    without = recall(model, task, 4, trials=8, use_memory=False)
    assert with_memory["char_accuracy"] > without["char_accuracy"] + 0.3, (with_memory, without)
    assert without["exact_match"] < 0.05
    assert len(model.memory) == 0  # recall resets after itself


class _Text:
    """A stand-in for TokenData: random windows of one fixed text (what get_batch returns)."""

    def __init__(self, text: str):
        self.ids = torch.tensor(encode(text))

    def get_batch(self, split, batch_size, block_size, generator):
        ix = torch.randint(len(self.ids) - block_size - 1, (batch_size,), generator=generator)
        rows = torch.stack([self.ids[i : i + block_size + 1] for i in ix.tolist()])
        return rows[:, :-1], rows[:, 1:]


def test_train_gate_lowers_the_cost_of_a_filled_bank_on_ordinary_text():
    """Stage 2d: a bank of unrelated facts costs ordinary text less after it, the backbone
    is untouched and every parameter's requires_grad comes back as it was."""
    torch.manual_seed(0)
    model, task = tiny_model(), FactsTask(encode)
    train_memory(model, task, steps=30, batch_size=8, max_facts=4, progress=False)
    text = _Text("the river was cold that morning. a dog barked far away. " * 20)
    x, y = text.get_batch("train", 16, 32, torch.Generator().manual_seed(1))
    bank = model.entries_for(
        torch.tensor([encode(task.write_text(task.facts(20, random.Random(2))))])
    )

    def cost() -> float:
        with torch.no_grad():
            return model(x, y, memory=bank)[1].item()

    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    before = cost()
    hist = train_gate(
        model, text, task, steps=40, bank_facts=20, batch_size=8, lr=1e-2, only_gate=False
    )
    assert cost() < before - 0.05, (before, cost())
    assert hist[-1]["text_loss"] < hist[0]["text_loss"]
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone.items())
    assert flags == [p.requires_grad for p in model.parameters()]


# --------------------------------------------------------------------------- baselines


def test_ngram_cache_answers_the_written_wording_and_not_a_paraphrase():
    """By hand: the 12-gram before each code ("of bolek is ") occurs once in call 1,
    so the cache copies the code; "bolek? " never occurs, so it backs off to " "."""
    cache = NGramCache(12, len(CHARS))
    cache.write(torch.tensor([encode("the code of bolek is xqzt.\nthe code of fimar is ohjd.\n")]))
    asked = torch.tensor([encode("the code of bolek is ")])
    assert cache.answer(asked, 4).tolist() == [encode("xqzt")]
    paraphrase = torch.tensor([encode("what is the code of bolek? ")])
    # after " " came c, o, b, i, x, c, o, f, i, o: "o" (3 times) wins; " o" -> "f" (2 of 3),
    # " of" -> " ", " of " -> b or f once each: the first stored, "b". "of b", not the code
    assert cache.answer(paraphrase, 4).tolist() == [encode("of b")]
    # through recall, on the same questions as the model: 100% same wording, 0% paraphrased
    task = FactsTask(encode)
    same = recall(None, task, 16, trials=4, reader=cache)
    para = recall(
        None, FactsTask(encode, question="what is the code of {name}? "), 16, 4, reader=cache
    )
    assert same["exact_match"] == 1.0 and same["answer_loss"] < 0.05
    assert para["exact_match"] == 0.0


def test_knn_lm_returns_the_stored_next_token_for_an_identical_context():
    model = tiny_model()
    knn = KNNLM(model, k=4, temperature=1e-3, lam=1.0)  # lambda 1: the neighbours alone
    text = encode("the code of bolek is xqzt.\n")
    knn.write(torch.tensor([text]))
    assert knn.keys.shape == (len(text) - 1, 32) and knn.values.tolist() == text[1:]
    prompt = torch.tensor(
        [encode("the code of bolek is ")]
    )  # the same tokens at the same positions
    assert knn.answer(prompt, 4).tolist() == [encode("xqzt")]
    nll = knn.answer_nll(prompt, torch.tensor([encode("xqzt")]))
    assert nll.item() < 1.0  # distance 0 to the stored state: its token dominates
    backbone = KNNLM(model, k=4, lam=0.0)  # lambda 0: the untrained backbone, no recall
    backbone.write(torch.tensor([text]))
    assert backbone.answer(prompt, 4).tolist() != [encode("xqzt")]


def test_memory_reader_writes_the_bank_and_no_memory_does_not():
    model = tiny_model()
    text = torch.tensor([encode("the code of bolek is xqzt.\n")])
    prompt, code = torch.tensor([encode("the code of bolek is ")]), torch.tensor([encode("xqzt")])
    reader, blank = MemoryReader(model, True), MemoryReader(model, False)
    blank.write(text)
    assert len(model.memory) == 0
    without = blank.answer_nll(prompt, code)
    reader.write(text)  # disabled writing would leave the bank empty and the loss unchanged
    assert len(model.memory) == text.size(1) - 1
    assert not torch.allclose(reader.answer_nll(prompt, code), without)


WIDE = sorted(set(CHARS) | set(",;!&'-"))  # the paraphrase templates' punctuation too


def wide_encode(text: str) -> list[int]:
    return [WIDE.index(c) for c in text]


def wide_decode(ids: list[int]) -> str:
    return "".join(WIDE[i] for i in ids)


def _template_pattern(template: str) -> re.Pattern:
    body = re.escape(template).replace(r"\{name\}", "[a-z]{5}").replace(r"\{code\}", "[a-z]{4}")
    return re.compile(body)


def _templates_used(texts: list[str], templates: tuple[str, ...]) -> set[str]:
    """Which of ``templates`` the lines/questions match exactly (each must match one)."""
    used = set()
    for text in texts:
        found = {t for t in templates if _template_pattern(t).fullmatch(text)}
        assert len(found) == 1, (text, found)
        used |= found
    return used


def test_template_split_keeps_heldout_templates_out_of_training_and_in_evaluation():
    split = TemplateSplit()
    every_fact, every_question = split.facts, split.questions
    train_f, held_f = split.templates("fact", False), split.templates("fact", True)
    train_q, held_q = split.templates("question", False), split.templates("question", True)
    assert not set(train_f) & set(held_f) and not set(train_q) & set(held_q)
    # training episodes: every line written and every question asked uses a training template
    ep = split.task(wide_encode, "train").episode(8, 6, random.Random(0))
    decode = wide_decode
    lines = []
    for b in range(8):
        n = int(ep.write_valid[b].sum()) if ep.write_valid is not None else ep.write_ids.size(1)
        lines += decode(ep.write_ids[b, :n].tolist()).splitlines(keepends=True)
    questions = []
    for row, target in zip(ep.read_ids.tolist(), ep.read_targets):
        questions.append(decode(row[: int((target >= 0).nonzero()[0]) + 1]))  # j predicts j + 1
    assert _templates_used(lines, every_fact) == set(train_f)
    assert _templates_used(questions, every_question) == set(train_q)
    # evaluation (through recall itself): the held-out side never uses a training template
    for setting, facts_from, questions_from in [
        ("heldout_ask", train_f, held_q),
        ("heldout_write", held_f, train_q),
        ("heldout_both", held_f, held_q),
    ]:
        spy = SpyReader(wide_decode)
        recall(None, split.task(wide_encode, setting), 8, trials=4, reader=spy)
        lines = [line for text in spy.written for line in text.splitlines(keepends=True)]
        assert _templates_used(lines, every_fact) == set(facts_from), setting
        assert _templates_used(spy.asked, every_question) == set(questions_from), setting


def test_generated_templates_never_use_a_heldout_wording_and_are_reproducible():
    split = TemplateSplit()
    heldout = split.templates("fact", True) + split.templates("question", True)
    assert all(uses_heldout_wording(t) for t in heldout)  # the check catches each one
    shakespeare = set("abcdefghijklmnopqrstuvwxyz :-&'!?.\n")  # chars TinyShakespeare has
    for kind in ("fact", "question"):
        drawn = generated_templates(kind, 200, seed=3)
        assert len(set(drawn)) == 200
        assert drawn == generated_templates(kind, 200, seed=3)  # reproducible from the seed
        assert drawn != generated_templates(kind, 200, seed=4)
        assert drawn[:50] == generated_templates(kind, 50, seed=3)
        for t in drawn:
            assert t not in heldout and not any(p in t for p in HELDOUT_PHRASES), t
            assert t.count("{name}") == 1 and t.count("{code}") == (kind == "fact"), t
            after = t.split("{name}")[1].split("{code}")[0]
            assert len(after) <= 10 and after.endswith(" "), t  # the name stays in the key window
            assert set(t.replace("{name}", "").replace("{code}", "")) <= shakespeare, t
    with pytest.raises(PhysllmError, match="kind"):
        generated_templates("story", 4)
    # a task on them still scores exactly the code after each question
    task = FactsTask(
        wide_encode,
        fact=generated_templates("fact", 32, seed=3),
        question=generated_templates("question", 32, seed=3),
    )
    ep = task.episode(4, 5, random.Random(0))
    codes = [c for facts in ep.items for _, c in facts]
    for target in ep.read_targets:
        assert wide_decode(target[target >= 0].tolist()) in codes


def test_capacity_without_eviction_sizes_the_bank_to_hold_every_fact():
    model = tiny_model(n_slots=64)  # the model's own bank: about two facts
    task = FactsTask(encode)
    with bank_of(model, 10 * 27) as m:
        m.memorize(torch.tensor([encode(task.write_text(task.facts(10, random.Random(0))))]))
        assert len(m.memory) == 10 * 27 - 1 == m.memory.n_slots - 1  # nothing evicted
    assert model.memory.n_slots == 64 and len(model.memory) == 0  # its own bank is back
    rows = capacity_curve(model, task, [4, 8], questions=4, evict=False)
    assert [(r["n_slots"], r["slots_per_fact"], r["questions"]) for r in rows] == [
        (4 * 27, 27, 4),
        (8 * 27, 27, 4),
    ]
    fifo = capacity_curve(model, task, [4], questions=4)
    assert fifo[0]["n_slots"] == 64 and fifo[0]["evict"]


def test_fifo_curve_reuses_no_eviction_points_only_where_every_fact_fits():
    model = tiny_model(n_slots=8 * 27)  # the model's own bank: 8 facts
    task = FactsTask(encode)
    no_eviction = capacity_curve(model, task, [4, 16], questions=4, evict=False)
    fresh = capacity_curve(model, task, [4, 16], questions=4)
    shared = capacity_curve(model, task, [4, 16], questions=4, no_eviction=no_eviction)
    assert [r["from_no_eviction"] for r in shared] == [True, False]
    for a, b in zip(shared, fresh):  # the reused point is the measurement FIFO makes
        assert (a["n_slots"], a["evict"], a["questions"]) == (b["n_slots"], True, b["questions"])
        for key in ("exact_match", "char_accuracy", "answer_loss"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key


def test_seed_summary_uses_the_student_t_interval():
    from physllm.experiments.stats import interval

    runs = [{"t": {"m": {"exact_match": x, "char_accuracy": x, "answer_loss": 1 - x, "questions": 8, "n_facts": 4}}}
            for x in (0.5, 0.75, 1.0)]  # fmt: skip
    row = seed_summary(runs, interval)["t"]["m"]
    half = 4.3027 * 0.25 / 3**0.5  # t_{0.975, 2} * sd / sqrt(3)
    assert row["exact_match"] == pytest.approx(0.75) and row["n_seeds"] == 3
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((0.75 - half, 0.75 + half))
    assert row["answer_loss_ci95_low"] == pytest.approx(0.25 - half)
    assert row["questions"] == 24 and row["per_seed"] == [0.5, 0.75, 1.0]


def test_recall_findings_say_the_goal_from_the_numbers():
    from physllm.experiments.stats import interval
    from physllm.hopfield.analysis import recall_findings

    def seeds(memory: float, cache: float) -> list[dict]:
        readers = {"memory": memory, "ngram_cache": cache, "knn_lm": 0.1, "no_memory": 0.0}
        return [{r: {"exact_match": v + d, "questions": 16, "n_facts": 16} for r, v in readers.items()}
                for d in (-0.02, 0.0, 0.02)]  # fmt: skip

    def findings(heldout: dict[str, tuple[float, float]]) -> str:
        tasks = {"same_template": seeds(0.98, 0.98), **{t: seeds(*v) for t, v in heldout.items()}}
        per_seed = [{t: rows[i] for t, rows in tasks.items()} for i in range(3)]
        curve = [{"n_facts": 16, "exact_match": 0.95}, {"n_facts": 32, "exact_match": 0.5}]
        text = recall_findings(
            seed_summary(per_seed, interval), {"no eviction": curve}, (2.3, 2.5, 100)
        )
        assert "up to 16 facts" in text and "2.300 with the bank empty, 2.500 holding 100" in text
        return text

    passing = {t: (0.9, 0.02) for t in ("heldout_ask", "heldout_write", "heldout_both")}
    assert "**heldout_write**: memory 90% [85, 95]" in findings(passing)
    assert "<= 5%): reached." in findings(passing)
    low_write = {**passing, "heldout_write": (0.42, 0.02)}
    assert "not reached on heldout_write." in findings(low_write)
    cache_high = {**passing, "heldout_both": (0.9, 0.2)}  # a lookup table passing fails the goal
    assert "not reached on heldout_both." in findings(cache_high)


# --------------------------------------------------------------------------- HF backbone


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(CHARS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def test_hf_backbone_forward_generate_and_memory():

    model = HopfieldLM.from_hf(tiny_llama(), mem_heads=2, mem_head_dim=8, key_window=4).eval()
    x = torch.tensor([encode("the code of bolek is ")])
    logits, loss = model(x, x)
    assert logits.shape == (1, x.size(1), len(CHARS)) and torch.isfinite(loss)
    reference = model.backbone.model(input_ids=x).logits
    torch.testing.assert_close(logits, reference)  # empty memory: the HF model unchanged
    out = generate(model, x, 5, temperature=0)
    assert out.shape == (1, x.size(1) + 5)
    model.memorize(torch.tensor([encode("the code of bolek is xqzt.\n")]))
    assert not torch.allclose(model(x)[0], reference)
    records = [{"summary": "abc def.", "question": "what", "answers": ["def"]}]
    task = NarrativeQATask(encode, records)
    hist = train_memory(model, task, steps=2, batch_size=2, progress=False, lora_rank=2)
    assert len(hist) == 2 and any("lora_" in n for n, _ in model.backbone.named_parameters())
    decode = lambda ids: "".join(CHARS[i] for i in ids)  # noqa: E731
    scores = narrativeqa_eval(model, task, decode, records, max_new_tokens=3)
    # the same answer worked out by hand: summary in memory, greedy from the question alone
    model.memory.reset()
    model.memorize(torch.tensor([encode(records[0]["summary"])]))
    prompt = torch.tensor([encode(task.prompt(records[0]))])
    answer = decode(generate(model, prompt, 3, temperature=0)[0, prompt.size(1) :].tolist())
    expected = token_f1(answer.split("\n")[0], records[0]["answers"])
    assert scores == {"questions": 1, "token_f1": pytest.approx(expected)}
    model.memory.reset()
    assert len(model.memory) == 0


class ScriptedReader(torch.nn.Module):
    """Answers "an old man" when its bank holds something, "a boat" when it is empty;
    the answer's second line is noise that the evaluation must cut off."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.memory = MemoryStub()

    def memorize(self, idx):
        self.memory.n += idx.size(1)

    def call(self, prompt, max_new_tokens, write=False, **_):
        text = (" an old man" if self.memory.n else " a boat") + "\nold old"
        return torch.cat([prompt, torch.tensor([encode(text)])[:, :max_new_tokens]], dim=1)


class MemoryStub:
    def __init__(self):
        self.n = 0

    def reset(self):
        self.n = 0


def test_narrativeqa_eval_scores_the_answer_line_by_hand():
    records = [
        {"summary": "a story.", "question": "who", "answers": ["the old man"]},  # F1 1
        {"summary": "a story.", "question": "who", "answers": ["old man", "man in a boat"]},
        {"summary": "a story.", "question": "who", "answers": ["a fisherman"]},  # F1 0
    ]
    task = NarrativeQATask(encode, records)
    decode = lambda ids: "".join(CHARS[i] for i in ids)  # noqa: E731
    reader = ScriptedReader()
    with_memory = narrativeqa_eval(reader, task, decode, records, max_new_tokens=30)
    # "an old man" -> {old, man}: 1 against "the old man"; 1 against "old man"; 0 against "a fisherman"
    assert with_memory == {"questions": 3, "token_f1": pytest.approx((1 + 1 + 0) / 3)}
    without = narrativeqa_eval(reader, task, decode, records, use_memory=False, max_new_tokens=30)
    # "a boat" -> {boat}: 0; against "man in a boat" -> {man, in, boat}: p 1, r 1/3, F1 1/2
    assert without == {"questions": 3, "token_f1": pytest.approx((0 + 0.5 + 0) / 3)}
    assert with_memory["token_f1"] > without["token_f1"]
    # max_new_tokens cuts the answer: " an ol" -> {ol}: no overlap anywhere
    short = narrativeqa_eval(reader, task, decode, records, max_new_tokens=6)
    assert short["token_f1"] == 0.0


def test_hf_backbone_from_local_checkpoint(tmp_path):
    llama = tiny_llama()
    llama.save_pretrained(tmp_path / "llama")
    cfg = dict(vocab_size=len(CHARS), block_size=64, backbone=f"hf:{tmp_path / 'llama'}")
    model = build_model("hopfield", {**cfg, "mem_heads": 2, "mem_head_dim": 8}).eval()
    x = torch.tensor([encode("abc")])
    torch.testing.assert_close(model(x)[0], llama(input_ids=x).logits)
    with pytest.raises(PhysllmError):
        build_model("hopfield", {**cfg, "backbone": f"hf:{tmp_path / 'missing'}"})


def test_token_f1():
    assert token_f1("The old Man", ["an old man"]) == 1.0
    assert token_f1("old", ["an old man", "x"]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert token_f1("", ["a b"]) == 0.0


# --------------------------------------------------------------------------- NarrativeQA


def test_narrativeqa_records_from_local_parquet(tmp_path, monkeypatch):
    import pandas as pd

    folder = tmp_path / "narrativeqa"
    folder.mkdir()
    rows = [
        {
            "document": {"id": str(i), "summary": {"text": f" story {i} summary. "}},
            "question": {"text": f"who is {i}? "},
            "answers": [{"text": f"answer {i}"}, {"text": "other"}],
        }
        for i in range(3)
    ]
    pd.DataFrame(rows).to_parquet(folder / "validation-00000-of-00001.parquet")
    monkeypatch.setenv("PHYSLLM_DATA_DIR", str(tmp_path))
    records = load_narrativeqa_records("validation")
    assert records[1] == {
        "summary": "story 1 summary.",
        "question": "who is 1?",
        "answers": ["answer 1", "other"],
    }
    chars = sorted(set("".join(json.dumps(r) for r in records)) | {" ", "\n", ":", "Q", "A"})
    enc = {c: i for i, c in enumerate(chars)}
    task = NarrativeQATask(lambda s: [enc[c] for c in s], records, pad_id=0)
    ep = task.episode(2, 0, random.Random(0))
    for b, record in enumerate(ep.items):
        summary = [enc[c] for c in record["summary"]]
        row = ep.read_ids[b].tolist()
        assert not any(row[i : i + len(summary)] == summary for i in range(len(row)))
        scored = ep.read_targets[b][ep.read_targets[b] >= 0].tolist()
        assert scored == [enc[c] for c in " " + record["answers"][0]]
    assert ep.write_valid.sum(1).tolist() == [len(r["summary"]) for r in ep.items]


# --------------------------------------------------------------------------- cached decoding

FACTS = "the code of bolek is xqzt.\nthe code of fimar is ohjd.\n"


def cropped_logits(model: HopfieldLM, idx: torch.Tensor) -> torch.Tensor:
    """Uncached logits (B, T, V) at every position: the forward pass on the last block_size
    tokens, reading the bank (what uncached sampling computes)."""
    block = model.config.block_size
    rows = [model(idx[:, max(0, t + 1 - block) : t + 1])[0][:, -1] for t in range(idx.size(1))]
    return torch.stack(rows, 1)


def decode_all(model, idx: torch.Tensor, prefill: int, chunk: int) -> tuple[torch.Tensor, list]:
    """Logits of decode_step after the prefill and after each chunk, and the positions fed."""
    logits, state = model.decode_step(idx[:, :prefill], None)
    steps, ends = [logits], [prefill]
    for t in range(prefill, idx.size(1), chunk):
        logits, state = model.decode_step(idx[:, t : t + chunk], state)
        steps.append(logits)
        ends.append(min(t + chunk, idx.size(1)))
    return torch.stack(steps, 1), [e - 1 for e in ends]


@pytest.mark.parametrize(
    "kw",
    [
        dict(),  # pool: content-pooled trigrams
        dict(n_layer=2, mem_layer=0, combine="concat", n_updates=2),  # blocks after the read
        dict(key_window=1, key_ngram=1, combine="add"),
        dict(key_encoder="conv"),  # weights per offset
        dict(bind_heads=True, n_updates=2),  # one read for all heads
        dict(key_encoder="conv", key_window=1, n_layer=2, mem_layer=0),
    ],
)
@pytest.mark.parametrize("facts", [False, True], ids=["bank-empty", "facts-written"])
@pytest.mark.parametrize("prefill, chunk", [(1, 1), (5, 1), (3, 4)])
def test_cached_decoding_equals_the_forward_pass(kw, facts, prefill, chunk):
    """Token by token and in chunks over 45 tokens (past block_size 32): the logits of the
    forward pass at every position fed, with the bank empty and with facts written."""
    model = tiny_model(**kw)
    if facts:
        model.memorize(torch.tensor([encode(FACTS)]))
    x = torch.randint(0, len(CHARS), (2, 45), generator=torch.Generator().manual_seed(1))
    got, ends = decode_all(model, x, prefill, chunk)
    torch.testing.assert_close(got, cropped_logits(model, x)[:, ends], atol=1e-5, rtol=0)


def test_a_cached_step_reads_the_new_position_only():
    """After the prefill the memory reads one position per step (with the w - 1 normed hidden
    states before it), the backbone attends with one query, and each position's read
    counts once in the bank's usage: H heads x B rows x positions, in all."""
    model = tiny_model(replacement="least_used")
    model.memorize(torch.tensor([encode(FACTS)]))
    x = torch.randint(0, len(CHARS), (2, 20), generator=torch.Generator().manual_seed(2))
    reads: list[tuple[int, tuple | None]] = []
    read = model.memory_layer.read

    def spy(h, memory, past=None):
        reads.append((h.size(1), None if past is None else tuple(past.shape)))
        return read(h, memory, past)

    model.memory_layer.read = spy
    _, state = model.decode_step(x[:, :6])
    for t in range(6, 20):
        _, state = model.decode_step(x[:, t : t + 1], state)
    w = model.config.key_window
    assert reads == [(6, (2, w - 1, 32))] + [(1, (2, w - 1, 32))] * 14
    assert all(c.length == 20 for c in state["backbone"]["caches"])
    usage = model.memory.usage.sum().item()
    assert usage == pytest.approx(model.config.mem_heads * 2 * 20, rel=1e-5)


def test_a_bank_changed_mid_decode_is_read_from_the_next_step():
    """Writing (or resetting) the bank between steps re-encodes the context: the next
    logits are the forward pass's with the new bank."""
    model = tiny_model()
    x = torch.randint(0, len(CHARS), (1, 12), generator=torch.Generator().manual_seed(3))
    _, state = model.decode_step(x[:, :8])
    model.memorize(torch.tensor([encode(FACTS)]))
    logits, state = model.decode_step(x[:, 8:9], state)
    torch.testing.assert_close(logits, model(x[:, :9])[0][:, -1], atol=1e-5, rtol=0)
    logits, state = model.decode_step(x[:, 9:10], state)  # the new bank, cached
    torch.testing.assert_close(logits, model(x[:, :10])[0][:, -1], atol=1e-5, rtol=0)
    model.memory.reset()
    logits, _ = model.decode_step(x[:, 10:12], state)
    torch.testing.assert_close(logits, model(x)[0][:, -1], atol=1e-5, rtol=0)


def test_cached_greedy_generation_is_unchanged():
    """``generate`` through the cache picks the tokens greedy decoding on the forward pass
    picks, facts in the bank, past block_size."""
    model = tiny_model()
    model.memorize(torch.tensor([encode(FACTS)]))
    prompt = torch.tensor([encode("the code of bolek is "), encode("the code of fimar is ")])
    out = generate(model, prompt, 30, temperature=0)
    ids = prompt
    for _ in range(30):
        logits = model(ids[:, -model.config.block_size :])[0][:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)


@pytest.mark.parametrize("facts", [False, True], ids=["bank-empty", "facts-written"])
def test_hf_backbone_cached_decoding_equals_the_forward_pass(facts):
    """The HF model's own key/value cache, then the read on the new positions: the forward
    pass's logits, past its 64 positions too."""
    model = HopfieldLM.from_hf(tiny_llama(), mem_heads=2, mem_head_dim=8, key_window=4).eval()
    if facts:
        model.memorize(torch.tensor([encode(FACTS)]))
    x = torch.randint(0, len(CHARS), (2, 70), generator=torch.Generator().manual_seed(4))
    got, ends = decode_all(model, x, 5, 1)
    torch.testing.assert_close(got, cropped_logits(model, x)[:, ends], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- registry, notebook


def test_registry_presets_and_checkpoint(tmp_path):
    from physllm.training import get_preset, make_config
    from physllm.training.checkpoint import load_checkpoint, save_checkpoint

    assert get_preset("hopfield", "gpu")["backbone"].startswith("hf:")
    cfg = make_config("hopfield", "cpu", steps=1)
    assert isinstance(cfg.model_config, HopfieldConfig)
    model = tiny_model()
    model.memorize(torch.tensor([encode("abc def")]))
    from physllm.tokenization import CharTokenizer

    save_checkpoint(tmp_path / "ck", model, CharTokenizer(CHARS))
    loaded, _, meta = load_checkpoint(tmp_path / "ck")
    assert meta["model"] == "hopfield" and len(loaded.memory) == 0  # weights, not memories
    x = torch.tensor([encode("the code")])
    model.memory.reset()
    torch.testing.assert_close(loaded(x)[0], model(x)[0])
    with pytest.raises(ValueError):
        HopfieldConfig(combine="multiply")
    for bad in (dict(key_encoder="attention"), dict(key_window=2, key_ngram=3)):
        with pytest.raises(ValueError):
            HopfieldConfig(**bad)
    HopfieldConfig(key_encoder="conv", key_window=2, key_ngram=3)  # conv has no n-grams


def test_notebook_runs(run_notebook):
    from safetensors import safe_open

    _, out_dir = run_notebook("05_hopfield", steps=20, recall_trials=2, lm_facts=10)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["model"] == "hopfield" and metrics["steps"] == 20
    assert metrics["memory_steps"] == 20  # `steps` sets stage 2 too
    assert metrics["paraphrase_steps"] == 40 and metrics["paraphrase_wordings"] == 64
    gate = metrics["gate_stage"]  # stage 2d: its own steps, its loss with the bank full
    assert (
        gate["steps"] == 20
        and gate["bank_facts"] == 10
        and metrics["lm_loss_bank_100_facts_after_gate"] > 0
    )
    assert set(gate["recall_exact_match"]) == {
        "same_template",
        "heldout_ask",
        "heldout_write",
        "heldout_both",
    }
    errors = metrics["stories_errors"]  # what each wrong story answer is, per variant
    assert set(errors["shares"]) == set(metrics["stories"]) - {"train"}
    for variant, shares in errors["shares"].items():
        assert sum(shares.values()) == pytest.approx(1.0)
        right = metrics["stories"][variant]["memory"]["exact_match"]
        assert shares["right"] == pytest.approx(right, abs=1e-9)  # the same greedy answers
    # Twenty steps learn too little for recall to be asserted here (the recall test
    # above does that on a tiny model); what must hold is that each number is the
    # measurement it is named after: 3 seeds x 2 trials x 16 facts per reader and task.
    seeds = metrics["recall_seeds"]
    assert seeds == [1337, 1338, 1339]
    with_memory, without = metrics["recall_with_memory"], metrics["recall_without_memory"]
    for r in (with_memory, without):
        assert (r["n_facts"], r["n_seeds"], r["questions"]) == (16, 3, 3 * 2 * 16)
        assert r["ci95_low"] <= r["exact_match"] <= r["ci95_high"]
        assert 0 <= r["exact_match"] <= r["char_accuracy"] <= 1  # a whole match is 4 chars
    assert without["exact_match"] < 0.05  # no memory: a guess, chance 26^-4
    assert metrics["recall_exact_match"] == with_memory["exact_match"]
    tasks = {"same_template", "train", "heldout_ask", "heldout_write", "heldout_both"}
    assert set(metrics["baselines"]) == tasks == set(metrics["recall_with_memory_by_task"])
    for rows in metrics["baselines"].values():
        assert set(rows) == {"ngram_cache", "knn_lm", "no_memory"}
        assert all(r["n_seeds"] == 3 and "answer_loss" in r for r in rows.values())
    # the n-gram cache needs no training: every same-wording fact, 0% on held-out questions
    ngram = metrics["baselines"]["same_template"]["ngram_cache"]
    assert ngram["per_seed"] == [1.0, 1.0, 1.0]
    assert metrics["baselines"]["heldout_ask"]["ngram_cache"]["exact_match"] <= 0.05
    assert set(metrics["paraphrase_heldout"]) == {"heldout_ask", "heldout_write", "heldout_both"}
    # a smoke run's capacity curves: the first two sizes, 64 questions each
    for key, evict in (("capacity_no_eviction", False), ("capacity_fifo", True)):
        rows = metrics[key]
        assert [(r["n_facts"], r["questions"], r["evict"]) for r in rows] == [
            (16, 64, evict),
            (32, 64, evict),
        ]
        assert all(r["slots_per_fact"] == 27 for r in rows)
    assert [r["n_slots"] for r in metrics["capacity_no_eviction"]] == [16 * 27, 32 * 27]
    assert {r["n_slots"] for r in metrics["capacity_fifo"]} == {4096}
    assert all(r["from_no_eviction"] for r in metrics["capacity_fifo"])  # both fit in 4096 slots
    # stories: every variant, every reader over the 3 seeds, the solver always right
    stories = metrics["stories"]
    assert set(stories) == {"train", "heldout_ask", "heldout_both", "distractors", "interference"}
    for rows in stories.values():
        assert set(rows) == {
            "memory",
            "no_memory",
            "ngram_cache",
            "knn_lm",
            "ngram_words",
            "solver",
        }
        assert {r["n_seeds"] for r in rows.values()} == {3}
        assert len({r["questions"] for r in rows.values()}) == 1
        assert all(r["ci95_low"] <= r["mean"] <= r["ci95_high"] for r in rows.values())
        assert rows["solver"]["mean"] == 1.0
    assert metrics["stories_setup"]["steps"] == 20  # min(60, memory_steps)
    assert "heldout_ask" in metrics["stories_conclusion"]
    assert metrics["lm_loss_bank_empty"] > 0 and metrics["lm_loss_bank_100_facts"] > 0
    assert metrics["lm_loss_bank_facts"] == 10
    # stage 2 trained the memory: every head's beta moved from its initial value
    beta = metrics["learned_beta"]
    assert len(beta) == metrics["model_config"]["mem_heads"]
    assert all(b > 0 and abs(b - metrics["model_config"]["beta_init"]) > 1e-4 for b in beta)
    assert metrics["memory_train_loss"] > 0 and metrics["memory_train_s"] > 0
    # the saved memory holds call 1 of section 5: four facts, one slot per token but the last
    bank = safe_open(str(out_dir / "memory.safetensors"), "pt")
    assert int(bank.get_tensor("valid").sum()) == 4 * len("the code of bolek is xqzt.\n") - 1
    assert (out_dir / "energy_descent.png").exists()
