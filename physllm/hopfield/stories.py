"""Story tasks a lookup table cannot pass: paraphrase, distractors, interference.

:class:`~physllm.hopfield.tasks.FactsTask` writes and asks a fact in the same
words, so copying "the word after the longest matching context" passes it.
Each knob of :class:`StoryTask` takes one such shortcut away:

* **Held-out templates.** Every attribute (``has`` an object, is ``in`` a
  place, wears a ``colour``) is written with one of several sentence
  templates, updated with others and asked with others again; each set is
  split into ``train`` and ``heldout`` (:data:`TEMPLATES`). Training episodes
  use only train templates, evaluation only held-out ones, so the words
  around the answer at question time never preceded it in the story: an
  exact n-gram lookup (:func:`ngram_cache_answer`) is near chance there, while
  it answers a question put in the story's own words (``ask="cloze"``).
  Names are split like FactsTask's (:func:`~physllm.hopfield.tasks.is_heldout`).
* **Stories.** Several entities, each with several attributes, in shuffled
  order: the answer depends on the name *and* the attribute asked.
* **Distractors.** Unrelated sentences (a fixed pool, or sentences of the
  offline ``pydoc_data.topics``) written after the story, so the story is not
  the last thing in memory and "the most recent text" is no answer.
* **Interference.** Near-duplicate names (mara/maro, with different values)
  and updates ("mara moved to the mill." after "mara is in the barn."): the
  latest fact must win, and a lookup keyed on the first sentence gives the
  stale value.

Text is lowercase letters, space, ``.``, ``?``, ``:`` and ``\\n`` (one sentence
a line), which the char tokenizer of any default corpus encodes. A question row
(prompt, answer, full stop) is at most 44 characters: it fits the char
backbone's 64-token block, which call 2 must (call 1 is written in windows).
:func:`solve` is the plain-Python reference reader (100% by construction);
:func:`story_episode` builds the repo's :class:`~physllm.hopfield.tasks.Episode`
(so ``episode_loss`` takes it), :class:`StoryEpisodes` plugs a StoryTask into
``train_memory``, and :func:`story_recall` measures a model across two calls.
:func:`compare_story_readers` scores notebook 05's readers (the memory, no memory,
the n-gram cache, the kNN-LM) and the word-level lookups on the same stories of
each of :data:`STORY_VARIANTS`.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from physllm.errors import PhysllmError
from physllm.hopfield.baselines import Reader
from physllm.hopfield.tasks import CONSONANTS, VOWELS, Episode, is_heldout

ATTRIBUTES = ("has", "in", "colour")
VALUES = {
    "has": ("key", "lamp", "rope", "coin", "book", "map", "drum", "bell", "cup", "hat", "box", "sword"),
    "in": ("barn", "mill", "forge", "shop", "yard", "hall", "cave", "dock", "farm", "tower", "church", "garden"),
    "colour": ("red", "blue", "green", "black", "white", "grey", "pink", "brown", "gold", "purple", "orange", "yellow"),
}  # fmt: skip
SPLITS = ("train", "heldout")

# Every template ends with "{value}." so that the text before {value} is the prompt
# (ask) or the cloze prompt (write, update). Kinds: "write" states a fact, "update"
# overrides it later, "ask" is call 2's question.
_TABLE: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "has": {
        "write": {
            "train": ("{name} has a {value}.", "{name} carries a {value}.", "{name} keeps a {value}."),
            "heldout": ("in the bag of {name} there is a {value}.", "{name} is holding a {value}."),
        },
        "update": {
            "train": ("{name} swapped it for a {value}.", "{name} now has a {value}."),
            "heldout": ("later {name} picked up a {value}.", "{name} traded it for a {value}."),
        },
        "ask": {
            "train": ("what does {name} have? a {value}.", "what is {name} carrying? a {value}.",
                      "{name} has got a {value}."),
            "heldout": ("which thing belongs to {name}? the {value}.",
                        "name the object that {name} holds: {value}."),
        },
    },
    "in": {
        "write": {
            "train": ("{name} is in the {value}.", "{name} waits in the {value}.", "{name} sits by the {value}."),
            "heldout": ("you can find {name} at the {value}.", "{name} stays near the {value}."),
        },
        "update": {
            "train": ("{name} moved to the {value}.", "{name} went to the {value}."),
            "heldout": ("then {name} walked over to the {value}.", "{name} left for the {value}."),
        },
        "ask": {
            "train": ("where is {name}? in the {value}.", "where can {name} be found? at the {value}.",
                      "{name} is at the {value}."),
            "heldout": ("tell me where {name} is: the {value}.", "which place is {name} in? {value}."),
        },
    },
    "colour": {
        "write": {
            "train": ("{name} wears {value}.", "{name} is dressed in {value}.", "the coat of {name} is {value}."),
            "heldout": ("the colour {name} likes to wear is {value}.", "{name} always dresses in {value}."),
        },
        "update": {
            "train": ("{name} now wears {value}.", "{name} changed into {value}."),
            "heldout": ("after that {name} switched to {value}.", "{name} dyed the coat {value}."),
        },
        "ask": {
            "train": ("what colour does {name} wear? {value}.", "which colour is {name} wearing? {value}.",
                      "the colour of {name} is {value}."),
            "heldout": ("say the colour of the coat of {name}: {value}.",
                        "{name} is dressed in what colour? {value}."),
        },
    },
}  # fmt: skip


@dataclass(frozen=True)
class Template:
    """One sentence template; ``prompt`` is its text before ``{value}``."""

    attribute: str
    kind: str  # write | update | ask
    split: str  # train | heldout
    index: int
    text: str
    pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.text.endswith("{value}.") or self.text.count("{name}") != 1:
            raise ValueError(
                f"template {self.text!r} must hold one {{name}} and end with {{value}}."
            )
        head, tail = (re.escape(p) for p in self.prompt.split("{name}"))
        # The prompt alone (a question), or the prompt and its answer (a fact, a read row).
        regex = f"{head}(?P<name>[a-z]+){tail}(?:(?P<value>[a-z]+)\\.)?"
        object.__setattr__(self, "pattern", re.compile(regex))

    @property
    def id(self) -> str:
        return f"{self.attribute}/{self.kind}/{self.split}/{self.index}"

    @property
    def prompt(self) -> str:
        return self.text[: -len("{value}.")]

    def fill(self, name: str, value: str = "") -> str:
        """The sentence, or with no ``value`` the prompt that ``value + "."`` completes."""
        return self.prompt.format(name=name) + (f"{value}." if value else "")


TEMPLATES: tuple[Template, ...] = tuple(
    Template(attr, kind, split, i, text)
    for attr, kinds in _TABLE.items()
    for kind, splits in kinds.items()
    for split, texts in splits.items()
    for i, text in enumerate(texts)
)


def templates(attribute: str, kind: str, split: str) -> tuple[Template, ...]:
    """The templates of one attribute, kind and split, in table order."""
    return tuple(t for t in TEMPLATES if (t.attribute, t.kind, t.split) == (attribute, kind, split))


def _matches(line: str) -> list[tuple[Template, re.Match]]:
    return [(t, m) for t in TEMPLATES if (m := t.pattern.fullmatch(line))]


def template_ids(text: str) -> set[str]:
    """Ids (``attribute/kind/split/index``) of the templates any line of ``text`` is
    written in: a story, a question prompt, or a prompt with its answer."""
    return {t.id for line in text.split("\n") for t, _ in _matches(line)}


def uses_heldout_template(text: str) -> bool:
    """Whether any line of ``text`` is in a held-out template."""
    return any(tid.split("/")[2] == "heldout" for tid in template_ids(text))


def uses_train_template(text: str) -> bool:
    """Whether any line of ``text`` is in a training template."""
    return any(tid.split("/")[2] == "train" for tid in template_ids(text))


# --------------------------------------------------------------------------- generated wordings

# Stage 2c can train on many generated wordings per attribute and kind (like stage 2b's
# ``generated_templates`` for facts), so the memory learns the frame-free signal: the
# name, a word that says which attribute, and the value after it. The rule that keeps
# the held-out templates unseen: a generated wording may use any *single* word, a cue
# word of a held-out template included ("thing", "belongs", "place": a paraphrase
# reuses known words in a new frame), but never two adjacent tokens (words, marks, the
# name or the value slot) that stand together in a held-out template and in no training
# one (:func:`heldout_bigrams`): no piece of a held-out frame is ever trained on.
CUE_WORDS: dict[str, tuple[str, ...]] = {
    "has": ("has", "have", "carries", "carrying", "keeps", "holds", "holding", "owns", "got",
            "took", "bought", "found", "thing", "object", "item", "bag", "belongs", "swapped",
            "traded", "picked"),
    "in": ("in", "at", "by", "near", "place", "where", "found", "find", "stays", "waits",
           "sits", "moved", "went", "walked", "left", "lives", "spot", "be"),
    "colour": ("wears", "wear", "wearing", "dressed", "dresses", "coat", "colour", "dyed",
               "switched", "changed", "shade", "likes", "clothes"),
}  # fmt: skip
_ARTICLES = {"has": ("a ", "the ", "one "), "in": ("the ", "a ", ""), "colour": ("",)}
_FILLERS = ("then", "later", "so", "and", "yes", "also", "still", "once", "soon", "today",
            "it", "is", "was", "to", "of", "all", "now")  # fmt: skip
_ASKS = ("what", "which", "who", "tell", "say", "name", "guess", "and")
_MARKS = ("?", ":", "", " -", ".")


def _tokens(text: str) -> list[str]:
    return re.findall(r"\{name\}|\{value\}|[a-z]+|[^a-z\s]", text)


@functools.cache
def heldout_bigrams() -> frozenset[tuple[str, str]]:
    """Adjacent token pairs of the held-out templates that no training template has."""

    def pairs(split: str) -> set[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for t in TEMPLATES:
            if t.split == split:
                w = _tokens(t.text)
                out |= set(zip(w, w[1:]))
        return out

    return frozenset(pairs("heldout") - pairs("train"))


def uses_heldout_frame(text: str) -> bool:
    """Whether a wording holds a piece of a held-out frame (:func:`heldout_bigrams`)."""
    w = _tokens(text)
    return bool(set(zip(w, w[1:])) & heldout_bigrams())


def _generated_story(rng: random.Random, attribute: str, kind: str) -> str:
    cues, art = CUE_WORDS[attribute], rng.choice(_ARTICLES[attribute])
    words = rng.sample(cues, rng.randint(1, 2))
    if rng.random() < 0.3:
        words.insert(rng.randint(0, len(words)), rng.choice(_FILLERS))
    if kind == "ask" and rng.random() < 0.7:  # a question: the cue before and after the name
        cut = rng.randint(0, len(words))
        before = " ".join([rng.choice(_ASKS), *words[:cut]])
        after = "".join(" " + w for w in words[cut:])
        return f"{before} {{name}}{after}{rng.choice(_MARKS[:4])} {art}{{value}}."
    prefix = "".join(w + " " for w in rng.sample(_FILLERS, rng.randint(0, 1)))
    mark = rng.choice(_MARKS[:4]) if kind == "ask" else ""
    return f"{prefix}{{name}} {' '.join(words)}{mark} {art}{{value}}."


@functools.cache
def generated_story_templates(
    attribute: str, kind: str, n: int, seed: int = 0
) -> tuple[Template, ...]:
    """``n`` distinct generated templates (split ``"generated"``) of one attribute and
    kind: a few of :data:`CUE_WORDS` (and filler words, question words, a mark) around
    the name, then the value. Never a held-out frame (:func:`uses_heldout_frame`), never
    a line a table template matches, and a question row fits 44 characters."""
    if attribute not in ATTRIBUTES or kind not in ("write", "update", "ask"):
        raise PhysllmError(f"no generated wordings for {attribute!r}/{kind!r}")
    rng, found = random.Random(f"{attribute}:{kind}:{seed}"), {}
    longest = max(map(len, VALUES[attribute]))
    for _ in range(100 * n + 1000):
        if len(found) == n:
            break
        text = _generated_story(rng, attribute, kind)
        line = text.format(name="mara", value=VALUES[attribute][0])
        fits = len(text.format(name="mara", value="x" * longest)) <= 44
        if fits and not uses_heldout_frame(text) and not _matches(line):
            found.setdefault(text, None)
    if len(found) < n:
        raise PhysllmError(f"could not generate {n} distinct {attribute}/{kind} wordings")
    return tuple(Template(attribute, kind, "generated", i, t) for i, t in enumerate(found))


# --------------------------------------------------------------------------- distractors

DISTRACTOR_POOL = (
    "the river was cold that morning.",
    "a dog barked somewhere far away.",
    "rain fell on the roofs all night.",
    "the market opens early on fridays.",
    "nobody remembers who built the old bridge.",
    "the wind turned and the clouds grew dark.",
    "bread is cheaper after the harvest.",
    "a cart lost a wheel on the north road.",
    "the bells rang twice before noon.",
    "snow closed the pass for a week.",
    "the baker sings while the ovens heat.",
    "two geese crossed the road at dusk.",
    "the fishing boats came back late.",
    "an old song was sung at the wedding.",
    "the path up the hill is steep and narrow.",
    "smoke rose from every chimney in town.",
    "the children counted stars until midnight.",
    "a letter arrived with no name on it.",
    "the frost came early this year.",
    "the teacher read a long story aloud.",
    "the horses were tired after the journey.",
    "someone left the gate open again.",
    "the lake froze over in january.",
    "the price of salt went up.",
)


@functools.cache
def pydoc_sentences() -> tuple[str, ...]:
    """Lowercased sentences of 5 to 14 words from the offline ``pydoc_data.topics``."""
    from pydoc_data.topics import topics  # stdlib, ~1 MB of text: loaded on first use only

    seen: dict[str, None] = {}
    for text in topics.values():
        for raw in re.split(r"[.!?]\s+|\n\s*\n", text.lower()):
            words = re.sub(r"[^a-z]+", " ", raw).split()
            if 5 <= len(words) <= 14 and max(map(len, words)) <= 12:
                seen.setdefault(" ".join(words) + ".", None)
    return tuple(s for s in seen if not _matches(s))  # never a sentence the solver would read


# --------------------------------------------------------------------------- the task


@dataclass
class Story:
    """One generated story: call 1's text, call 2's questions and what they ask."""

    write_text: str
    questions: list[tuple[str, str]]  # (prompt, answer word); the row is prompt + answer + "."
    facts: list[tuple[str, str, str]]  # (name, attribute, value) in written order, updates included
    asked: list[tuple[str, str]]  # (name, attribute) of each question


@dataclass
class StoryTask:
    """Stories of ``n_entities`` people with ``attributes``, asked in a later call.

    ``templates`` picks the template split of the story (and of the names);
    ``ask_templates`` that of the questions (default: the same). ``ask="cloze"``
    asks in the story's own words (the lookup-friendly control). ``distractors``
    unrelated sentences from ``distractor_source`` ("pool" or "pydoc") follow the
    story. ``interference``: near-duplicate name pairs and ``updates`` updates.
    ``questions`` > 0 asks that many (updated attributes first), else every
    (entity, attribute) pair; the count is the same in every episode. ``wordings``:
    generated wordings (:func:`generated_story_templates`) added to the training
    templates of each attribute and kind (training stories only; never held out).
    """

    n_entities: int = 3
    attributes: tuple[str, ...] = ATTRIBUTES
    seed: int = 0
    templates: str = "train"
    ask_templates: str | None = None
    ask: str = "question"
    distractors: int = 0
    distractor_source: str = "pool"
    interference: bool = False
    updates: int = 2
    questions: int = 0
    wordings: int = 0

    def __post_init__(self) -> None:
        self.attributes = tuple(self.attributes)
        bad = [a for a in self.attributes if a not in ATTRIBUTES]
        checks = {
            "n_entities must be in 1..64 (names stay two letters apart)": not 1 <= self.n_entities <= 64,
            f"attributes must be a non-empty subset of {ATTRIBUTES}, got {bad}": bad or not self.attributes,
            f"templates must be one of {SPLITS}": self.templates not in SPLITS,
            f"ask_templates must be None or one of {SPLITS}": self.ask_templates not in (None, *SPLITS),
            "ask must be 'question' or 'cloze'": self.ask not in ("question", "cloze"),
            "distractor_source must be 'pool' or 'pydoc'": self.distractor_source not in ("pool", "pydoc"),
            "distractors, updates, questions and wordings must be >= 0":
                min(self.distractors, self.updates, self.questions, self.wordings) < 0,
        }  # fmt: skip
        for message, failed in checks.items():
            if failed:
                raise PhysllmError(f"StoryTask: {message}")

    # ------------------------------------------------------------------ drawing

    def _templates(self, attribute: str, kind: str, split: str) -> tuple[Template, ...]:
        """The table's templates of ``split``; the training split adds ``wordings`` generated ones."""
        extra = split == "train" and self.wordings
        found = templates(attribute, kind, split)
        return found + generated_story_templates(attribute, kind, self.wordings) if extra else found

    def _name(self, rng: random.Random, taken: list[str]) -> str:
        """A CVCV name of this split, at least two letters away from every taken one
        (so only the deliberate near-duplicates of ``interference`` are near)."""
        want = self.templates == "heldout"
        while True:
            c, v = CONSONANTS, VOWELS
            name = "".join(rng.choice(x) for x in (c, v, c, v))
            if is_heldout(name) == want and all(_distance(name, t) >= 2 for t in taken):
                return name

    def names(self, rng: random.Random) -> list[str]:
        """``n_entities`` names; with ``interference`` in pairs differing in the last vowel."""
        names: list[str] = []
        while len(names) < self.n_entities:
            name = self._name(rng, names)
            names.append(name)
            twins = [
                twin
                for twin in (name[:3] + v for v in VOWELS if v != name[3])
                if is_heldout(twin) == (self.templates == "heldout")
                and all(_distance(twin, t) >= 2 for t in names[:-1])
            ]
            if self.interference and twins and len(names) < self.n_entities:
                names.append(rng.choice(twins))
        return names

    def _values(self, names: list[str], attribute: str, rng: random.Random) -> list[str]:
        """One value per name: all distinct while the pool lasts, a twin never shares."""
        pool, out = VALUES[attribute], []
        for i, name in enumerate(names):
            avoid = set(out) if len(out) < len(pool) else set()
            if i and _distance(name, names[i - 1]) == 1:
                avoid.add(out[-1])
            out.append(rng.choice([v for v in pool if v not in avoid]))
        return out

    def _lines(self, names: list[str], rng: random.Random) -> list[tuple[tuple, Template]]:
        """The story: (fact, template) per sentence, facts shuffled, updates after what they change."""
        split = self.templates
        facts = [
            (name, attr, value)
            for attr in self.attributes
            for name, value in zip(names, self._values(names, attr, rng))
        ]
        rng.shuffle(facts)
        lines = [(f, rng.choice(self._templates(f[1], "write", split))) for f in facts]
        for _ in range(self.updates if self.interference else 0):
            name, attr, _ = rng.choice(facts)
            last = max(i for i, (f, _) in enumerate(lines) if f[:2] == (name, attr))
            seen = {f[2] for f, _ in lines if f[:2] == (name, attr)}  # an update is news
            value = rng.choice([v for v in VALUES[attr] if v not in seen] or VALUES[attr])
            update = ((name, attr, value), rng.choice(self._templates(attr, "update", split)))
            lines.insert(rng.randint(last + 1, len(lines)), update)
        return lines

    def _distractors(self, rng: random.Random) -> list[str]:
        pool = DISTRACTOR_POOL if self.distractor_source == "pool" else pydoc_sentences()
        if self.distractors <= len(pool):
            return rng.sample(pool, self.distractors)
        return [rng.choice(pool) for _ in range(self.distractors)]

    def _asked(
        self, lines: list[tuple[tuple, Template]], rng: random.Random
    ) -> list[tuple[str, str]]:
        """The (name, attribute) pairs asked: updated ones first when ``questions`` trims."""
        pairs = list(dict.fromkeys(f[:2] for f, _ in lines))
        counts = {p: sum(f[:2] == p for f, _ in lines) for p in pairs}
        updated = [p for p in pairs if counts[p] > 1]
        rest = [p for p in pairs if counts[p] == 1]
        asked = rng.sample(updated, len(updated)) + rng.sample(rest, len(rest))
        asked = asked[: self.questions] if self.questions else asked
        return rng.sample(asked, len(asked))

    def story(self, rng: random.Random | None = None) -> Story:
        """One story (``rng`` default: ``random.Random(seed)``, the same story every time)."""
        rng = random.Random(self.seed) if rng is None else rng
        lines = self._lines(self.names(rng), rng)
        text = [t.fill(f[0], f[2]) for f, t in lines] + self._distractors(rng)
        latest = {f[:2]: (f[2], t) for f, t in lines}  # later lines overwrite: the latest wins
        asked = self._asked(lines, rng)
        split = self.ask_templates or self.templates
        questions = []
        for name, attr in asked:
            value, written = latest[(name, attr)]
            template = (
                written if self.ask == "cloze" else rng.choice(self._templates(attr, "ask", split))
            )
            questions.append((template.fill(name), value))
        return Story("\n".join(text) + "\n", questions, [f for f, _ in lines], asked)

    def episode(self, rng: random.Random | None = None) -> tuple[str, list[tuple[str, str]]]:
        """``(write_text, [(prompt, answer), ...])`` of one :meth:`story`."""
        story = self.story(rng)
        return story.write_text, story.questions


def _distance(a: str, b: str) -> int:
    """Hamming distance of two names (a different length counts as far)."""
    return sum(x != y for x, y in zip(a, b)) if len(a) == len(b) else len(a) + len(b)


# --------------------------------------------------------------------------- readers


def parse_story(write_text: str) -> dict[tuple[str, str], str]:
    """``{(name, attribute): value}`` after reading every fact and update in order."""
    state: dict[tuple[str, str], str] = {}
    for line in write_text.split("\n"):
        for template, m in _matches(line):
            if template.kind != "ask" and m["value"]:
                state[(m["name"], template.attribute)] = m["value"]
    return state


def solve(write_text: str, prompt: str) -> str | None:
    """The reference reader: the latest value the story gives for what ``prompt`` asks
    (a question or a cloze prompt in any template); None if it cannot tell."""
    state = parse_story(write_text)
    for template, m in _matches(prompt):
        if m["value"] is None and (m["name"], template.attribute) in state:
            return state[(m["name"], template.attribute)]
    return None


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+|[^a-z\s]", text)


def ngram_cache_answer(write_text: str, prompt: str, n: int = 8) -> str | None:
    """The zero-parameter baseline: the longest suffix (at most ``n`` words, punctuation
    counting as words) of ``prompt`` that occurs in ``write_text``, and the word that
    followed its latest occurrence there; None when no suffix is ever followed by a word."""
    text, tail = _words(write_text), _words(prompt)
    for k in range(min(n, len(tail)), 0, -1):
        suffix = tail[-k:]
        for i in range(len(text) - k - 1, -1, -1):  # latest first: a cache favours recent text
            if text[i : i + k] == suffix and text[i + k].isalpha():
                return text[i + k]
    return None


# --------------------------------------------------------------------------- episodes and recall


def _encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    """A tokenizer's ``encode``, or ``tokenizer`` itself when it is the function."""
    return getattr(tokenizer, "encode", tokenizer)


def story_episode(
    task: StoryTask, tokenizer: Any, batch_size: int, rng: random.Random, pad_id: int = 0
) -> Episode:
    """``batch_size`` stories as an :class:`Episode` (what ``episode_loss`` takes).

    ``write_ids`` (B, Tw) right-padded with ``write_valid``; ``read_ids`` and
    ``read_targets`` (B * g, Tr), g questions per story grouped by story, each row
    prompt + answer + "." scored on the answer and its full stop (-1 elsewhere);
    ``items[b]`` the story's (prompt, answer) list.
    """
    encode = _encoder(tokenizer)
    writes, reads, answer_lens, items = [], [], [], []
    for _ in range(batch_size):
        write_text, questions = task.episode(rng)
        writes.append(encode(write_text))
        for prompt, answer in questions:
            a = encode(answer + ".")  # the full stop is scored: it tells generation to stop
            reads.append(encode(prompt) + a)
            answer_lens.append(len(a))
        items.append(questions)
    Tw, Tr = max(map(len, writes)), max(map(len, reads))
    write_ids = torch.full((batch_size, Tw), pad_id)
    valid = torch.zeros(batch_size, Tw, dtype=torch.bool)
    read_ids = torch.full((len(reads), Tr), pad_id)
    targets = torch.full((len(reads), Tr), -1)
    for i, w in enumerate(writes):
        write_ids[i, : len(w)], valid[i, : len(w)] = torch.tensor(w), True
    for i, (r, n) in enumerate(zip(reads, answer_lens)):
        read_ids[i, : len(r)] = torch.tensor(r)
        targets[i, len(r) - n - 1 : len(r) - 1] = torch.tensor(r[len(r) - n :])
    return Episode(write_ids, read_ids[:, :-1], targets[:, :-1], valid, items)


@dataclass
class StoryEpisodes:
    """A StoryTask for ``train_memory``: ``episode(batch_size, n_facts, rng, split)``
    draws stories of ``n_facts`` entities in ``split``'s templates."""

    task: StoryTask
    tokenizer: Any
    pad_id: int = 0

    def episode(
        self, batch_size: int, n_facts: int, rng: random.Random, split: str = "train"
    ) -> Episode:
        task = dataclasses.replace(
            self.task, n_entities=n_facts, templates=split, ask_templates=None
        )
        return story_episode(task, self.tokenizer, batch_size, rng, self.pad_id)


Drawn = list[tuple[str, list[tuple[str, str]]]]  # (write_text, [(prompt, answer), ...]) per story


def draw_stories(task: StoryTask, episodes: int, seed: int = 0) -> Drawn:
    """The ``episodes`` stories that :func:`story_recall`, :func:`lookup_baselines` and
    :func:`compare_story_readers` ask with the same ``seed`` (in that order)."""
    rng = random.Random(seed)
    return [task.episode(rng) for _ in range(episodes)]


def _lookup_hits(drawn: Drawn) -> tuple[int, int, int]:
    """(questions, solved by :func:`solve`, answered by :func:`ngram_cache_answer`)."""
    solved = cached = total = 0
    for write_text, questions in drawn:
        for prompt, answer in questions:
            solved += solve(write_text, prompt) == answer
            cached += ngram_cache_answer(write_text, prompt) == answer
            total += 1
    return total, solved, cached


def lookup_baselines(task: StoryTask, episodes: int = 8, seed: int = 0) -> dict:
    """Exact-match accuracy of :func:`solve` and :func:`ngram_cache_answer` on the
    questions :func:`story_recall` asks with the same arguments (no model needed)."""
    total, solved, cached = _lookup_hits(draw_stories(task, episodes, seed))
    return {"questions": total, "solver": solved / total, "ngram_cache": cached / total}


# --------------------------------------------------------------------------- notebook 05's readers

# The variants notebook 05 asks (all with ``n_entities`` people, three attributes):
# training templates; questions in held-out templates; story, questions and names
# held out; held-out questions after unrelated pydoc sentences; held-out questions
# with near-duplicate names and two updates (the latest value is the answer).
STORY_VARIANTS: dict[str, dict[str, Any]] = {
    "train": dict(templates="train"),
    "heldout_ask": dict(templates="train", ask_templates="heldout"),
    "heldout_both": dict(templates="heldout"),
    "distractors": dict(templates="train", ask_templates="heldout", distractor_source="pydoc"),
    "interference": dict(templates="train", ask_templates="heldout", interference=True),
}


def story_variants(
    names: tuple[str, ...] | list[str] = tuple(STORY_VARIANTS),
    n_entities: int = 3,
    distractors: int = 4,
) -> dict[str, StoryTask]:
    """``{variant: StoryTask}`` of :data:`STORY_VARIANTS` (``distractors``: sentences
    after the story in the ``distractors`` variant)."""
    unknown = [n for n in names if n not in STORY_VARIANTS]
    if unknown or not names:
        raise PhysllmError(
            f"story variants must be among {', '.join(STORY_VARIANTS)}, got {unknown}"
        )
    tasks = {}
    for name in names:
        extra = {"distractors": distractors} if name == "distractors" else {}
        tasks[name] = StoryTask(n_entities=n_entities, **STORY_VARIANTS[name], **extra)
    return tasks


def _device(reader: Reader) -> torch.device:
    model = getattr(reader, "model", None)
    return next(model.parameters()).device if model is not None else torch.device("cpu")


def _score(reader: Reader, prompts: list[list[int]], answers: list[list[int]], device):
    """Per question: whether the greedy answer is exact; summed right answer tokens and nats.

    A reader with ``log_probs`` scores every row in one teacher-forced pass (rows
    right-padded; causal, so padding changes nothing before it): greedy decoding
    returns the answer exactly when the argmax is the answer token at each of its
    positions given the right prefix, so exact match is the same as generating.
    Others (the n-gram cache) answer greedily row by row.
    """
    if not hasattr(reader, "log_probs"):
        exact, right, nats = [], 0, 0.0
        for p, a in zip(prompts, answers):
            prompt, want = torch.tensor([p], device=device), torch.tensor([a], device=device)
            hit = reader.answer(prompt, len(a)).to(device) == want
            exact.append(bool(hit.all()))
            right, nats = (
                right + int(hit.sum()),
                nats + float(reader.answer_nll(prompt, want).sum()),
            )
        return exact, right, nats
    rows = [p + a[:-1] for p, a in zip(prompts, answers)]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    logp = reader.log_probs(ids.to(device)).float().cpu()
    exact, right, nats = [], 0, 0.0
    for i, (p, a) in enumerate(zip(prompts, answers)):
        at, want = logp[i, len(p) - 1 : len(p) - 1 + len(a)], torch.tensor(a)
        hit = at.argmax(-1) == want
        exact.append(bool(hit.all()))
        right, nats = right + int(hit.sum()), nats - float(at.gather(-1, want[:, None]).sum())
    return exact, right, nats


def _reader_recall(reader: Reader, drawn: Drawn, encode: Callable[[str], list[int]]) -> dict:
    """One reader on drawn stories: call 1 written, then every question from an empty context."""
    device, exact, right, tokens, nats = _device(reader), 0, 0, 0, 0.0
    for write_text, questions in drawn:
        reader.reset()
        reader.write(torch.tensor([encode(write_text)], device=device))
        prompts = [encode(p) for p, _ in questions]
        answers = [encode(a + ".") for _, a in questions]  # the full stop is scored too
        hits, r, n = _score(reader, prompts, answers, device)
        exact, right, nats = exact + sum(hits), right + r, nats + n
        tokens += sum(map(len, answers))
    reader.reset()
    total = sum(len(q) for _, q in drawn)
    return {
        "questions": total,
        "exact_match": exact / total,
        "char_accuracy": right / tokens,
        "answer_loss": nats / tokens,
    }


@torch.no_grad()
def compare_story_readers(
    found: dict[str, Reader],
    tasks: dict[str, StoryTask],
    tokenizer: Any,
    episodes: int = 4,
    seed: int = 0,
) -> dict[str, dict[str, dict]]:
    """``{variant: {reader: recall}}``: every reader of ``found`` (e.g.
    :func:`physllm.hopfield.tasks.readers`: memory, no memory, n-gram cache, kNN-LM) on
    the same ``episodes`` stories of each task (:func:`draw_stories` with ``seed``), plus
    ``ngram_words`` (:func:`ngram_cache_answer`) and ``solver`` (:func:`solve`), which
    read the text and have exact match only.

    A reader's answer is the greedy continuation of the question; it must be the
    answer word and its full stop exactly (``char_accuracy``: per answer token;
    ``answer_loss``: teacher-forced nats per answer token). ``n_facts``: the stories'
    entities. The same keys as :func:`~physllm.hopfield.tasks.compare_readers`, so
    :func:`~physllm.hopfield.analysis.seed_summary` summarises seeds of either.
    """
    encode, out = _encoder(tokenizer), {}
    for name, task in tasks.items():
        drawn = draw_stories(task, episodes, seed)
        base = {"n_facts": task.n_entities, "episodes": episodes}
        out[name] = {r: {**base, **_reader_recall(rd, drawn, encode)} for r, rd in found.items()}
        total, solved, cached = _lookup_hits(drawn)
        out[name]["ngram_words"] = {**base, "questions": total, "exact_match": cached / total}
        out[name]["solver"] = {**base, "questions": total, "exact_match": solved / total}
    return out


# What a wrong answer is, in the order the labels are tried (the first that fits).
ERROR_KINDS = ("right", "stale", "other_attribute", "other_person", "not_in_story", "not_a_value")


def classify_answer(story: Story, index: int, word: str) -> str:
    """Which of :data:`ERROR_KINDS` ``word`` is for question ``index`` of ``story``: the
    latest value asked (right), an earlier value of the same person and attribute (stale,
    an update lost), a value of the same person's other attribute, the same attribute of
    another person, a value of the attribute that the story never wrote, or not a value."""
    name, attr = story.asked[index]
    latest = {f[:2]: f[2] for f in story.facts}
    if word == latest[(name, attr)]:
        return "right"
    if any(f[:2] == (name, attr) and f[2] == word for f in story.facts):
        return "stale"
    if any(f[0] == name and f[1] != attr and f[2] == word for f in story.facts):
        return "other_attribute"
    if any(f[0] != name and f[1] == attr and f[2] == word for f in story.facts):
        return "other_person"
    return "not_in_story" if word in VALUES[attr] else "not_a_value"


@torch.no_grad()
def story_errors(
    reader: Reader, task: StoryTask, tokenizer: Any, episodes: int = 4, seed: int = 0
) -> dict[str, float]:
    """The share of each of :data:`ERROR_KINDS` among ``reader``'s greedy answers to the
    questions :func:`compare_story_readers` asks (the same stories: ``seed``), each a story
    written in call 1 and a question asked from an empty context in call 2. Why a reader
    fails: the wrong person (names not bound to their facts), the wrong attribute, a
    stale value (the latest update not winning), or no value at all."""
    encode, decode = _encoder(tokenizer), tokenizer.decode
    rng, device = random.Random(seed), _device(reader)
    stories = [task.story(rng) for _ in range(episodes)]  # draw_stories' stories, with facts
    longest = max(len(encode(v)) for values in VALUES.values() for v in values) + 1
    counts = dict.fromkeys(ERROR_KINDS, 0)
    for story in stories:
        reader.reset()
        reader.write(torch.tensor([encode(story.write_text)], device=device))
        for i, (prompt, _) in enumerate(story.questions):
            ids = reader.answer(torch.tensor([encode(prompt)], device=device), longest)
            word = decode(ids[0].tolist()).split(".")[0]  # "right" iff answer + "." exactly
            counts[classify_answer(story, i, word)] += 1
    reader.reset()
    total = sum(counts.values())
    return {kind: n / total for kind, n in counts.items()}


@torch.no_grad()
def story_recall(
    model,
    task: StoryTask,
    tokenizer: Any,
    episodes: int = 8,
    seed: int = 0,
    use_memory: bool = True,
) -> dict:
    """Exact-match recall across calls: call 1 writes a story, call 2 asks each question
    from an empty context (greedy; the answer and its full stop must match exactly).
    ``use_memory=False`` resets the bank between the calls."""
    encode, rng = _encoder(tokenizer), random.Random(seed)
    device = next(model.parameters()).device
    exact = total = 0
    for _ in range(episodes):
        model.memory.reset()
        write_text, questions = task.episode(rng)
        model.call(torch.tensor([encode(write_text)], device=device))  # call 1
        if not use_memory:
            model.memory.reset()
        for prompt, answer in questions:
            ids = torch.tensor([encode(prompt)], device=device)
            want = encode(answer + ".")
            out = model.call(ids, max_new_tokens=len(want), write=False, temperature=0)
            exact += out[0, ids.size(1) :].tolist() == want
            total += 1
    model.memory.reset()
    return {"episodes": episodes, "questions": total, "exact_match": exact / total}


__all__ = [
    "ATTRIBUTES",
    "ERROR_KINDS",
    "DISTRACTOR_POOL",
    "TEMPLATES",
    "STORY_VARIANTS",
    "VALUES",
    "Story",
    "StoryEpisodes",
    "StoryTask",
    "Template",
    "compare_story_readers",
    "draw_stories",
    "lookup_baselines",
    "ngram_cache_answer",
    "parse_story",
    "pydoc_sentences",
    "solve",
    "classify_answer",
    "story_episode",
    "story_errors",
    "story_recall",
    "story_variants",
    "template_ids",
    "templates",
    "uses_heldout_template",
    "uses_train_template",
]
