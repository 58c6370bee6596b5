"""Story tasks a lookup table cannot pass (physllm.hopfield.stories): the reference solver
is always right, the n-gram cache fails on held-out templates, splits never mix."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from physllm.errors import PhysllmError
from physllm.experiments.stats import interval
from physllm.hopfield.analysis import seed_summary, story_conclusion
from physllm.hopfield.baselines import KNNLM, MemoryReader
from physllm.hopfield.stories import (
    DISTRACTOR_POOL,
    STORY_VARIANTS,
    TEMPLATES,
    VALUES,
    StoryEpisodes,
    StoryTask,
    _score,
    compare_story_readers,
    draw_stories,
    generated_story_templates,
    heldout_bigrams,
    lookup_baselines,
    ngram_cache_answer,
    parse_story,
    pydoc_sentences,
    solve,
    story_episode,
    story_recall,
    story_variants,
    template_ids,
    templates,
    uses_heldout_frame,
    uses_heldout_template,
    uses_train_template,
)
from physllm.hopfield.tasks import episode_loss, is_heldout, readers
from physllm.models import build_model
from physllm.training import train_memory

from .conftest import SpyReader

CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz .\n:?"))
STOI = {c: i for i, c in enumerate(CHARS)}

# Every knob at both settings: the solver must be right on all of them.
GRID = [
    StoryTask(n_entities=4, templates=split, distractors=d, distractor_source=src, interference=i, ask=ask)
    for split, d, src, i, ask in itertools.product(
        ("train", "heldout"), (0, 3), ("pool", "pydoc"), (False, True), ("question", "cloze")
    )
]  # fmt: skip


def encode(text: str) -> list[int]:
    return [STOI[c] for c in text]


def stories(task: StoryTask, n: int, seed: int = 0):
    rng = random.Random(seed)
    return [task.story(rng) for _ in range(n)]


# --------------------------------------------------------------------------- templates


def test_templates_are_split_and_each_line_matches_only_its_own():
    for attr, kind in itertools.product(VALUES, ("write", "update", "ask")):
        train, heldout = templates(attr, kind, "train"), templates(attr, kind, "heldout")
        assert train and heldout and not {t.text for t in train} & {t.text for t in heldout}
        if kind != "update":
            assert len(train) + len(heldout) >= 4
    for t in TEMPLATES:  # a sentence, a prompt, a prompt with its answer: one template each
        for line in (t.fill("mara", VALUES[t.attribute][0]), t.fill("mara")):
            assert template_ids(line) == {t.id}, line
    assert not any(template_ids(s) for s in DISTRACTOR_POOL + pydoc_sentences())
    longest = max(max(map(len, VALUES[t.attribute])) + len(t.fill("mara")) + 1 for t in TEMPLATES)
    assert longest <= 44  # a question row fits the char backbone's 64-token block


def test_training_never_uses_heldout_templates_and_evaluation_never_training_ones():
    for task in GRID:
        for story in stories(task, 10):
            lines = story.write_text + "".join(p + "\n" for p, _ in story.questions)
            if task.templates == "train":
                assert not uses_heldout_template(lines)
            else:
                assert not uses_train_template(lines)
                assert all(uses_heldout_template(p) for p, _ in story.questions)
            names = {f[0] for f in story.facts}
            assert all(is_heldout(n) == (task.templates == "heldout") for n in names)
    # Held-out questions about a story written in training templates.
    task = StoryTask(n_entities=3, ask_templates="heldout")
    for story in stories(task, 10):
        assert not uses_heldout_template(story.write_text)
        assert not any(uses_train_template(p) for p, _ in story.questions)


def test_generated_story_wordings_never_hold_a_piece_of_a_heldout_frame():
    """The rule of stage 2c's generated wordings: single words of held-out templates may
    appear, two adjacent tokens of a held-out frame (that no training template has) never."""
    heldout = [t for t in TEMPLATES if t.split == "heldout"]
    assert all(uses_heldout_frame(t.text) for t in heldout)  # the rule bites on every one
    assert not any(uses_heldout_frame(t.text) for t in TEMPLATES if t.split == "train")
    assert ("belongs", "to") in heldout_bigrams() and ("?", "the") in heldout_bigrams()
    words = set()
    for attr, kind in itertools.product(VALUES, ("write", "update", "ask")):
        made = generated_story_templates(attr, kind, 64)
        assert len({t.text for t in made}) == 64 and made == generated_story_templates(
            attr, kind, 64
        )
        for t in made:
            assert not uses_heldout_frame(t.text), t.text
            assert not template_ids(t.fill("mara", VALUES[attr][0])) and not template_ids(
                t.fill("mara")
            )
            assert len(t.fill("mara", max(VALUES[attr], key=len))) <= 44
            words |= set(t.text.split())
    assert {"thing", "belongs", "place"} <= words  # single held-out cue words do appear


def test_generated_wordings_are_drawn_in_training_stories_only():
    rng = random.Random(0)
    task = StoryTask(n_entities=3, interference=True, wordings=16)
    drawn = [task.story(rng) for _ in range(20)]
    lines = [line for s in drawn for line in s.write_text.split("\n") if line]
    assert any(not template_ids(line) for line in lines)  # generated lines are used
    assert not any(
        uses_heldout_template(s.write_text) or uses_heldout_frame(s.write_text) for s in drawn
    )
    held = StoryTask(n_entities=3, templates="heldout", wordings=16)
    for s in stories(held, 10):  # a held-out story: the table's templates only
        assert all(template_ids(line) for line in s.write_text.split("\n") if line)
        assert all(solve(s.write_text, p) == a for p, a in s.questions)


# --------------------------------------------------------------------------- readers


def test_solver_answers_every_question():
    for task in GRID:
        for story in stories(task, 10, seed=7):
            for prompt, answer in story.questions:
                assert solve(story.write_text, prompt) == answer, (story.write_text, prompt)
    assert solve("mara is in the barn.\n", "where is maro? in the ") is None


def test_ngram_cache_fails_heldout_templates_but_passes_the_storys_own_words():
    for d, interference in itertools.product((0, 3), (False, True)):
        heldout = StoryTask(
            n_entities=4, templates="heldout", distractors=d, interference=interference
        )
        scores = lookup_baselines(heldout, episodes=20, seed=1)
        assert scores["questions"] >= 200 and scores["solver"] == 1.0
        assert scores["ngram_cache"] <= 0.10, scores  # chance is 1/12
        cloze = lookup_baselines(
            StoryTask(n_entities=4, distractors=d, interference=interference, ask="cloze"),
            20,
            seed=1,
        )
        assert cloze["ngram_cache"] >= 0.95, cloze
    text = "mara is in the barn.\nkilo is in the mill.\n"
    assert ngram_cache_answer(text, "mara is in the ") == "barn"
    assert ngram_cache_answer(text, "is in the ") == "mill"  # the latest occurrence
    assert ngram_cache_answer(text, "what? ") is None


def test_same_seed_same_stories():
    task = StoryTask(n_entities=4, distractors=2, interference=True, seed=5)
    assert task.episode() == task.episode() == StoryTask(**vars(task)).episode()
    assert task.episode(random.Random(9)) == task.episode(random.Random(9))
    assert task.episode() != StoryTask(**{**vars(task), "seed": 6}).episode()
    a, b = stories(task, 5, seed=3), stories(task, 5, seed=3)
    assert a == b


def test_interference_near_duplicates_and_the_latest_update_wins():
    task = StoryTask(n_entities=4, interference=True, updates=2, distractors=1)
    for story in stories(task, 50, seed=2):
        names = sorted({f[0] for f in story.facts})
        assert any(
            sum(x != y for x, y in zip(a, b)) == 1 for a, b in itertools.combinations(names, 2)
        )
        updated = 0
        for (prompt, answer), pair in zip(story.questions, story.asked):
            values = [f[2] for f in story.facts if f[:2] == pair]
            got = solve(story.write_text, prompt)
            assert got == answer == values[-1]
            if len(values) > 1:
                assert got != values[0]
                updated += 1
        assert updated >= 1
    trimmed = StoryTask(n_entities=4, interference=True, updates=1, questions=2)
    for story in stories(trimmed, 20):
        assert len(story.questions) == 2
        assert any(sum(f[:2] == pair for f in story.facts) > 1 for pair in story.asked)


def test_bad_configs_are_refused():
    for bad in (
        dict(n_entities=0),
        dict(attributes=("age",)),
        dict(templates="test"),
        dict(ask="x"),
    ):
        with pytest.raises(PhysllmError):
            StoryTask(**bad)


# --------------------------------------------------------------------------- episodes


def tiny_model():
    torch.manual_seed(0)
    cfg = dict(vocab_size=len(CHARS), block_size=64, n_layer=1, n_head=2, n_embd=32)
    cfg.update(mem_heads=2, mem_head_dim=16, key_window=8, n_slots=512)
    return build_model("hopfield", cfg).eval()


def test_story_episode_rows_score_the_answer_and_train_the_memory():
    task = StoryTask(n_entities=2, attributes=("in", "colour"), distractors=1, interference=True)
    ep = story_episode(task, encode, batch_size=3, rng=random.Random(0))
    assert ep.write_ids.shape[0] == 3 and ep.write_valid.shape == ep.write_ids.shape
    assert ep.read_ids.shape == ep.read_targets.shape and ep.read_ids.shape[0] == 3 * 4
    rows = [q for questions in ep.items for q in questions]
    for (prompt, answer), ids, target in zip(rows, ep.read_ids, ep.read_targets):
        assert "".join(CHARS[i] for i in target[target >= 0].tolist()) == answer + "."
        assert "".join(CHARS[i] for i in ids[: len(prompt)].tolist()) == prompt
    model = tiny_model()
    assert torch.isfinite(episode_loss(model, ep))
    hist = train_memory(
        model, StoryEpisodes(task, encode), 2, batch_size=2, max_facts=2, progress=False
    )
    assert len(hist) == 2
    result = story_recall(model.eval(), task, encode, episodes=1)
    assert result["questions"] == 4 and 0 <= result["exact_match"] <= 1
    assert len(model.memory) == 0


# --------------------------------------------------------------------------- notebook 05's readers


def decode_chars(ids: list[int]) -> str:
    return "".join(CHARS[i] for i in ids)


def test_story_readers_answer_the_same_questions_with_every_field():
    model = tiny_model()
    tasks = story_variants(n_entities=2, distractors=2)
    assert set(tasks) == set(STORY_VARIANTS)
    per_seed = [compare_story_readers(readers(model, 12), tasks, encode, 2, s) for s in (0, 1)]
    every = {"memory", "no_memory", "ngram_cache", "knn_lm", "ngram_words", "solver"}
    for out, seed in zip(per_seed, (0, 1)):
        assert set(out) == set(tasks)
        for name, rows in out.items():
            assert set(rows) == every
            asked = sum(len(q) for _, q in draw_stories(tasks[name], 2, seed))
            assert {r["questions"] for r in rows.values()} == {asked}
            assert all(r["n_facts"] == 2 and r["episodes"] == 2 for r in rows.values())
            for reader in ("memory", "no_memory", "ngram_cache", "knn_lm"):
                r = rows[reader]
                assert 0 <= r["exact_match"] <= r["char_accuracy"] <= 1 and r["answer_loss"] > 0
            # the text lookups are lookup_baselines on the same stories
            looked = lookup_baselines(tasks[name], 2, seed)
            assert rows["solver"]["exact_match"] == looked["solver"] == 1.0
            assert rows["ngram_words"]["exact_match"] == looked["ngram_cache"]
            # the memory's teacher-forced exact match is greedy generation's (story_recall)
            greedy = story_recall(model, tasks[name], encode, 2, seed)["exact_match"]
            assert rows["memory"]["exact_match"] == greedy
    assert len(model.memory) == 0
    summary = seed_summary(per_seed, interval)
    row = summary["heldout_ask"]["memory"]
    assert row["n_seeds"] == 2 and row["ci95_low"] <= row["exact_match"] <= row["ci95_high"]
    assert "answer_loss" not in summary["heldout_ask"]["solver"]  # a lookup: exact match only
    assert "heldout_ask" in story_conclusion(summary)


def test_teacher_forced_exact_match_is_greedy_generation():
    model = tiny_model()
    story = "mara has a key.\nmara is in the barn.\n"
    prompts = [encode("what does mara have? a "), encode("where is mara? in the ")]
    for reader in (MemoryReader(model), KNNLM(model, k=4)):
        reader.write(torch.tensor([encode(story)]))
        greedy = [reader.answer(torch.tensor([p]), 5)[0].tolist() for p in prompts]
        exact, right, nats = _score(reader, prompts, greedy, torch.device("cpu"))
        assert exact == [True, True] and right == 10 and nats > 0
        wrong = [g[:-1] + [(g[-1] + 1) % len(CHARS)] for g in greedy]
        exact, right, _ = _score(reader, prompts, [greedy[0], wrong[1]], torch.device("cpu"))
        assert exact == [True, False] and right == 9
        reader.reset()


def test_heldout_story_variants_never_use_a_training_template():
    tasks = story_variants(n_entities=3, distractors=2)
    for name, task in tasks.items():
        spy = SpyReader(decode_chars)
        compare_story_readers({"spy": spy}, {name: task}, encode, episodes=6, seed=3)
        assert len(spy.written) == 6 and spy.asked
        held_story = name == "heldout_both"
        for text in spy.written:  # distractor lines match no template at all
            assert uses_heldout_template(text) == held_story != uses_train_template(text)
        for prompt in spy.asked:  # every variant but "train" asks in held-out templates only
            assert uses_heldout_template(prompt) == (name != "train") != uses_train_template(prompt)
        if held_story:
            names = {f[0] for text in spy.written for f in parse_story(text)}
            assert names and all(is_heldout(n) for n in names)


class ScriptedReader:
    """Answers each question from the story it was given by ``policy(story, index)``."""

    def __init__(self, task, episodes, seed, policy):
        rng = random.Random(seed)
        self.stories = {s.write_text: s for s in (task.story(rng) for _ in range(episodes))}
        self.policy, self.story = policy, None

    def reset(self):
        self.story = None

    def write(self, ids):
        self.story = self.stories["".join(CHARS[i] for i in ids[0].tolist())]

    def answer(self, prompts, n):
        prompt = "".join(CHARS[i] for i in prompts[0].tolist())
        index = [p for p, _ in self.story.questions].index(prompt)
        text = (self.policy(self.story, index) + ".").ljust(n)[:n]
        return torch.tensor([encode(text)])


class CharCodec:
    encode = staticmethod(encode)

    @staticmethod
    def decode(ids):
        return "".join(CHARS[i] for i in ids)


def test_story_errors_name_what_a_wrong_answer_is():
    """Readers that always pick the latest value, an earlier one, another attribute of the
    person, the attribute of another person, a value the story never wrote, or no value
    each get all of their answers under that label, in stories with updates."""
    from physllm.hopfield.stories import ERROR_KINDS, classify_answer, story_errors

    task = StoryTask(n_entities=3, interference=True, updates=2, questions=1)  # updated pairs

    def pick(kind):
        def policy(story, i):
            name, attr = story.asked[i]
            facts = story.facts
            return {
                "right": lambda: [f[2] for f in facts if f[:2] == (name, attr)][-1],
                "stale": lambda: [f[2] for f in facts if f[:2] == (name, attr)][0],
                "other_attribute": lambda: next(f[2] for f in facts if f[0] == name and f[1] != attr),
                "other_person": lambda: next(f[2] for f in facts if f[0] != name and f[1] == attr),
                "not_in_story": lambda: next(v for v in VALUES[attr] if v not in {f[2] for f in facts}),
                "not_a_value": lambda: "zzz",
            }[kind]()  # fmt: skip

        return policy

    for kind in ERROR_KINDS:
        reader = ScriptedReader(task, 6, 3, pick(kind))
        shares = story_errors(reader, task, CharCodec, episodes=6, seed=3)
        assert shares == {k: float(k == kind) for k in ERROR_KINDS}, kind
    story = task.story(random.Random(0))
    assert classify_answer(story, 0, story.questions[0][1]) == "right"
