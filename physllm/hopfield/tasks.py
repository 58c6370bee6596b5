"""Tasks that need a memory across calls, the loss that trains it, and recall.

An *episode* is two calls. Call 1 (``write_ids``) is written into the memory;
call 2 (``read_ids``) starts from an empty context and is scored only where
the answer is (``read_targets``, -1 elsewhere). Nothing of call 1 is in call
2's tokens: whatever call 2 knows about it came through the memory.

* :class:`FactsTask`: "the code of bolek is xqzt." facts, then questions
  "the code of bolek is" answered with the code. Names (CVCVC) and codes (4
  letters) come from a seeded RNG; a fixed fifth of each (by CRC32) is held
  out, so evaluation uses names and codes training never saw. Chance exact
  match is 26^-4.

  :class:`TemplateSplit` writes and asks the same facts in several wordings
  (:data:`FACT_TEMPLATES`, :data:`QUESTION_TEMPLATES`), some for training and the
  rest held out, so evaluation can use wordings training never saw;
  :func:`generated_templates` draws many more training wordings (random words
  and marks around the name), none with a held-out template's connector.
* :class:`NarrativeQATask`: the story summary is call 1, "Question: ...
  Answer:" call 2 (the GPU preset; records from :func:`load_narrativeqa_records`).

:func:`memory_parameters`, :func:`draw_episode` and :func:`episode_loss` are the
pieces the memory stage trains with (the loop is ``physllm.training.train_memory``,
on the trainer's schedule, step and progress bar); :func:`recall` scores any
reader of :mod:`physllm.hopfield.baselines` (the memory, no memory, an n-gram
cache, a kNN-LM) on the same facts and questions (:func:`compare_readers`), and
:func:`capacity_curve` measures recall against the facts stored, with the FIFO
bank or a bank that holds everything.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from physllm.data import HUB_CORPORA, iter_hub_rows
from physllm.errors import PhysllmError
from physllm.hopfield.baselines import KNNLM, MemoryReader, NGramCache, Reader
from physllm.hopfield.model import HopfieldLM, HopfieldMemory, MemoryBank

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
CODE_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class Episode:
    """One batch of two-call episodes; read rows are grouped by episode (g rows each)."""

    write_ids: torch.Tensor  # (B, Tw)
    read_ids: torch.Tensor  # (B * g, Tr)
    read_targets: torch.Tensor  # (B * g, Tr), -1 where not scored
    write_valid: torch.Tensor | None = None  # (B, Tw) False on padding
    items: list = field(default_factory=list)


def is_heldout(text: str, every: int = 5) -> bool:
    """A fixed 1/every of all strings, by CRC32: never drawn for training."""
    return zlib.crc32(text.encode()) % every == 0


# Paraphrase templates: every fact and question puts the name right before a short
# connector and the code, so the name is inside the memory's 12-token key window. No
# question's connector ("? ", "! ", "; ", " is " only after "the code of") ends the
# same way as a fact other than fact 0, so an exact-context lookup cannot bridge them.
FACT_TEMPLATES: tuple[str, ...] = (
    "the code of {name} is {code}.\n",  # 0: the original wording
    "code for {name}: {code}.\n",  # 1
    "{name} has code {code}.\n",  # 2
    "{name}, code {code}.\n",  # 3: held out
    "and {name} gets {code}.\n",  # 4: held out
)
QUESTION_TEMPLATES: tuple[str, ...] = (
    "the code of {name} is ",  # 0: fact 0's wording
    "what is the code of {name}? ",  # 1
    "tell me the code of {name}! ",  # 2
    "which code has {name}? ",  # 3: held out
    "code of {name}; ",  # 4: held out
)
SETTINGS = ("train", "heldout_ask", "heldout_write", "heldout_both")

Templates = str | tuple[str, ...]


def _pad(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids, right-padded: (ids (B, T), valid (B, T))."""
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    valid = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)], valid[i, : len(r)] = torch.tensor(r, dtype=torch.long), True
    return ids, valid


@dataclass
class FactsTask:
    """Synthetic facts "the code of NAME is CODE." with held-out names and codes.

    ``fact`` and ``question`` are one template or several (each fact and each question
    then gets one drawn from the RNG, so a question's wording need not be its fact's).
    """

    encode: Callable[[str], list[int]]
    code_len: int = 4
    fact: Templates = FACT_TEMPLATES[0]
    question: Templates = QUESTION_TEMPLATES[0]
    heldout_every: int = 5

    def _draw(self, rng: random.Random, make: Callable[[], str], split: str) -> str:
        want = split == "heldout"
        while True:
            s = make()
            if is_heldout(s, self.heldout_every) == want:
                return s

    def name(self, rng: random.Random, split: str = "train") -> str:
        c, v = CONSONANTS, VOWELS
        return self._draw(
            rng, lambda: "".join(rng.choice(x) for x in (c, v, c, v, c)), split
        )  # 14*5*14*5*14 = 68,600 names

    def code(self, rng: random.Random, split: str = "train") -> str:
        return self._draw(
            rng, lambda: "".join(rng.choice(CODE_LETTERS) for _ in range(self.code_len)), split
        )

    def facts(self, n: int, rng: random.Random, split: str = "train") -> list[tuple[str, str]]:
        """``n`` facts with distinct names."""
        names: dict[str, str] = {}
        while len(names) < n:
            names.setdefault(self.name(rng, split), self.code(rng, split))
        return list(names.items())

    @staticmethod
    def _choose(templates: Templates, rng: random.Random | None, i: int) -> str:
        """One template: the only one, else drawn from ``rng`` (None: the i-th in turn)."""
        if isinstance(templates, str):
            return templates
        if len(templates) == 1 or rng is None:
            return templates[i % len(templates)]
        return rng.choice(templates)

    def write_text(self, facts: list[tuple[str, str]], rng: random.Random | None = None) -> str:
        """Call 1: the facts, one line each (a single template never draws from ``rng``)."""
        return "".join(
            self._choose(self.fact, rng, i).format(name=n, code=c) for i, (n, c) in enumerate(facts)
        )

    def questions(
        self, facts: list[tuple[str, str]], rng: random.Random | None = None
    ) -> list[str]:
        """Call 2's question texts, one per fact, each ending where the code starts."""
        return [
            self._choose(self.question, rng, i).format(name=n) for i, (n, _) in enumerate(facts)
        ]

    def prompts(
        self, facts: list[tuple[str, str]], rng: random.Random | None = None
    ) -> torch.Tensor:
        """Call 2 prompts, one row per fact (they must be of one length): (n, Tq)."""
        return torch.tensor([self.encode(q) for q in self.questions(facts, rng)])

    def fact_tokens(self) -> int:
        """Tokens (= memory slots) the longest fact template writes."""
        templates = (self.fact,) if isinstance(self.fact, str) else self.fact
        name, code = CONSONANTS[0] * 5, CODE_LETTERS[0] * self.code_len
        return max(len(self.encode(t.format(name=name, code=code))) for t in templates)

    def episode(self, batch_size: int, n_facts: int, rng: random.Random, split: str = "train"):
        """``batch_size`` episodes of ``n_facts`` facts; call 2 asks each one (shuffled).
        Rows of different lengths are right-padded (``write_valid``; targets -1)."""
        write, read, items = [], [], []
        for _ in range(batch_size):
            facts = self.facts(n_facts, rng, split)
            write.append(self.encode(self.write_text(facts, rng)))
            asked = rng.sample(facts, len(facts))
            questions = self.questions(asked, rng)
            read += [self.encode(q + c) for q, (_, c) in zip(questions, asked)]
            items.append(facts)
        write_ids, write_valid = _pad(write)
        read_ids, _ = _pad(read)
        targets = torch.full_like(read_ids, -1)  # (B * n, Tq + code_len)
        for i, r in enumerate(read):  # score the code only: position j predicts token j + 1
            targets[i, len(r) - 1 - self.code_len : len(r) - 1] = read_ids[
                i, len(r) - self.code_len : len(r)
            ]
        valid = None if bool(write_valid.all()) else write_valid
        return Episode(write_ids, read_ids[:, :-1], targets[:, :-1], valid, items)


@dataclass(frozen=True)
class TemplateSplit:
    """Which fact and question templates train and which are held out for evaluation.

    ``task(encode, setting)``: ``train`` writes and asks with the training templates
    only; ``heldout_ask`` writes with training templates and asks with held-out ones;
    ``heldout_write`` the reverse; ``heldout_both`` uses held-out templates for both.
    """

    facts: tuple[str, ...] = FACT_TEMPLATES
    questions: tuple[str, ...] = QUESTION_TEMPLATES
    train_facts: tuple[int, ...] = (0, 1, 2)
    train_questions: tuple[int, ...] = (0, 1, 2)

    def templates(self, kind: str, heldout: bool) -> tuple[str, ...]:
        """The fact (``kind="fact"``) or question templates of one side of the split."""
        every, train = (
            (self.facts, self.train_facts)
            if kind == "fact"
            else (self.questions, self.train_questions)
        )
        chosen = tuple(t for i, t in enumerate(every) if (i in train) != heldout)
        if not chosen:
            raise PhysllmError(
                f"the template split leaves no {'held-out' if heldout else 'training'} {kind} template"
            )
        return chosen

    def task(self, encode: Callable[[str], list[int]], setting: str = "train", **kw) -> FactsTask:
        if setting not in SETTINGS:
            raise PhysllmError(
                f"template setting must be one of {', '.join(SETTINGS)}, got {setting!r}"
            )
        write_out = setting in ("heldout_write", "heldout_both")
        ask_out = setting in ("heldout_ask", "heldout_both")
        fact, question = self.templates("fact", write_out), self.templates("question", ask_out)
        return FactsTask(encode, fact=fact, question=question, **kw)


# Generated wordings: stage 2b can train on many fact and question wordings whose only
# constant part is the name before the code, so the memory's key learns to rest on the
# name and not on one template's connector. None of them may use a held-out template's
# connector (checked by :func:`generated_templates`), so held-out stays unseen.
HELDOUT_PHRASES: tuple[str, ...] = (
    "gets",
    ", code",
    "which code has",
    "code of {name}; ",
    "and {name}",  # held-out fact 4's word before the name, too
)
WORDING_WORDS: tuple[str, ...] = (
    "a", "an", "as", "at", "be", "by", "do", "for", "go", "if", "in", "is", "it",
    "key", "my", "no", "now", "on", "or", "our", "so", "the", "to", "up", "we", "yes",
    "you", "all", "any", "but", "can", "new", "one", "own", "say", "see", "set", "tag",
    "use", "was", "way", "got", "pin", "word", "name", "mark", "sign", "note", "here",
    "then", "this", "that", "with", "from", "will", "take", "keep", "give", "call",
)  # fmt: skip
# Marks in every char vocabulary of the corpora (TinyShakespeare has no "=", "/" or ">").
FACT_MARKS: tuple[str, ...] = ("", ":", " -", " &", "'s", " --")
QUESTION_MARKS: tuple[str, ...] = ("?", "!", ":", " -", " &", "")


def _wording_word(rng: random.Random) -> str:
    """A short English word, or (a third of the time) a random 2-4 letter string."""
    if rng.random() < 1 / 3:
        return "".join(rng.choice(CODE_LETTERS) for _ in range(rng.randint(2, 4)))
    return rng.choice(WORDING_WORDS)


def _words(rng: random.Random, low: int, high: int) -> list[str]:
    return [_wording_word(rng) for _ in range(rng.randint(low, high))]


def _generated_fact(rng: random.Random) -> str:
    prefix = "".join(w + " " for w in _words(rng, 0, 2))
    connector = rng.choice(FACT_MARKS) + "".join(" " + w for w in _words(rng, 0, 2))
    return f"{prefix}{{name}}{connector} {{code}}.\n"


def _generated_question(rng: random.Random) -> str:
    prefix = "".join(w + " " for w in _words(rng, 0, 3))
    ending = "".join(" " + w for w in _words(rng, 0, 1)) + rng.choice(QUESTION_MARKS)
    return f"{prefix}{{name}}{ending} "


# the default split's held-out fact and question templates, once (the generator asks often)
_HELDOUT_TEMPLATES = sum((TemplateSplit().templates(k, True) for k in ("fact", "question")), ())


def uses_heldout_wording(template: str) -> bool:
    """True where ``template`` is a held-out template or holds one's connector."""
    return template in _HELDOUT_TEMPLATES or any(p in template for p in HELDOUT_PHRASES)


def generated_templates(
    kind: str, n: int, seed: int = 0, max_connector: int = 10
) -> tuple[str, ...]:
    """``n`` distinct procedurally generated fact (``kind="fact"``) or question
    templates, reproducible from ``seed``: optional prefix words, ``{name}``, a
    connector of punctuation and words (facts: then `` {code}.``), all drawn from
    :data:`WORDING_WORDS` or random letters. Never a held-out template and never one
    of :data:`HELDOUT_PHRASES` (:func:`uses_heldout_wording`). The text between the
    name and the code (the question's end) is at most ``max_connector`` characters,
    as in the hand-written templates, so the name stays inside the key window."""
    if kind not in ("fact", "question"):
        raise PhysllmError(f"template kind must be 'fact' or 'question', got {kind!r}")
    make = _generated_fact if kind == "fact" else _generated_question
    rng, found = random.Random(f"{kind}:{seed}"), {}
    for _ in range(100 * n + 1000):
        if len(found) == n:
            break
        t = make(rng)
        after = t.split("{name}")[1].split("{code}")[0]  # connector: inside the key window
        if len(after) <= max_connector and not uses_heldout_wording(t):
            found.setdefault(t, None)
    if len(found) < n:
        raise PhysllmError(f"could not generate {n} distinct {kind} templates")
    return tuple(found)


# --------------------------------------------------------------------------- NarrativeQA


def load_narrativeqa_records(split: str = "validation", limit: int = 0) -> list[dict]:
    """NarrativeQA rows as ``{"summary", "question", "answers"}`` (local parquet first, else the hub)."""
    records = []
    for row in iter_hub_rows("narrativeqa", HUB_CORPORA["narrativeqa"], split):
        records.append(
            {
                "summary": row["document"]["summary"]["text"].strip(),
                "question": row["question"]["text"].strip(),
                "answers": [a["text"].strip() for a in row["answers"]],
            }
        )
        if limit and len(records) >= limit:
            break
    if not records:
        raise PhysllmError(f"narrativeqa split {split!r} is empty")
    return records


@dataclass
class NarrativeQATask:
    """Summary in memory (call 1), question in the prompt (call 2), first answer scored."""

    encode: Callable[[str], list[int]]
    records: list[dict]
    max_summary_tokens: int = 1024
    pad_id: int = 0

    def prompt(self, record: dict) -> str:
        return f"Question: {record['question']}\nAnswer:"

    def episode(self, batch_size: int, n_facts: int, rng: random.Random, split: str = "train"):
        chosen = [rng.choice(self.records) for _ in range(batch_size)]
        writes = [self.encode(r["summary"])[: self.max_summary_tokens] for r in chosen]
        reads, answer_lens = [], []
        for r in chosen:
            q, a = self.encode(self.prompt(r)), self.encode(" " + r["answers"][0])
            reads.append(q + a)
            answer_lens.append(len(a))
        Tw, Tr = max(map(len, writes)), max(map(len, reads))
        write_ids = torch.full((batch_size, Tw), self.pad_id)
        valid = torch.zeros(batch_size, Tw, dtype=torch.bool)
        read_ids = torch.full((batch_size, Tr), self.pad_id)
        targets = torch.full((batch_size, Tr), -1)
        for i, (w, r, n) in enumerate(zip(writes, reads, answer_lens)):
            write_ids[i, : len(w)], valid[i, : len(w)] = torch.tensor(w), True
            read_ids[i, : len(r)] = torch.tensor(r)
            targets[i, len(r) - n - 1 : len(r) - 1] = torch.tensor(r[len(r) - n :])
        return Episode(write_ids, read_ids[:, :-1], targets[:, :-1], valid, chosen)


# --------------------------------------------------------------------------- training


def memory_parameters(model, lora_rank: int | None = None) -> list[torch.nn.Parameter]:
    """Freeze the backbone for memory training; return what trains (the memory layer, and
    with ``lora_rank`` > 0 (default: the model config's) new LoRA adapters on the backbone)."""
    lora_rank = model.config.lora_rank if lora_rank is None else lora_rank
    if lora_rank:
        model.add_lora(lora_rank)
    for name, p in model.backbone.named_parameters():
        p.requires_grad_(bool(lora_rank) and "lora_" in name)
    return [p for p in model.parameters() if p.requires_grad]


def episode_loss(model, ep: Episode, backbone_grad: bool = False) -> torch.Tensor:
    """Call 1 written into a fresh per-episode memory, the cross-entropy of call 2's
    answers read through it (a scalar). ``backbone_grad``: LoRA adapters train too."""
    device = next(model.parameters()).device
    write_ids, read_ids = ep.write_ids.to(device), ep.read_ids.to(device)
    with torch.set_grad_enabled(backbone_grad):  # frozen backbone: hidden states are inputs
        h = model.hidden(write_ids)
        emb = model.backbone.embed(write_ids[:, 1:])
    valid = None if ep.write_valid is None else ep.write_valid.to(device)
    mask = None if valid is None else valid[:, :-1] & valid[:, 1:]
    entries = model.memory_layer.entries(h, emb, mask)
    _, loss = model(read_ids, ep.read_targets.to(device), memory=entries)
    return loss


def draw_episode(task, batch_size: int, max_facts: int, rng: random.Random) -> Episode:
    """A training episode of ``batch_size`` rows with 1..``max_facts`` facts (uniform)."""
    return task.episode(batch_size, rng.randint(1, max_facts), rng, "train")


# --------------------------------------------------------------------------- recall


def _groups(texts: list[str], chunk: int) -> list[list[int]]:
    """Indices of ``texts`` grouped by length (one tensor each), at most ``chunk`` per group."""
    by_len: dict[int, list[int]] = {}
    for i, t in enumerate(texts):
        by_len.setdefault(len(t), []).append(i)
    return [ids[j : j + chunk] for ids in by_len.values() for j in range(0, len(ids), chunk)]


@torch.no_grad()
def recall(
    model,
    task: FactsTask,
    n_facts: int,
    trials: int = 1,
    seed: int = 0,
    use_memory: bool = True,
    split: str = "heldout",
    reader: Reader | None = None,
    max_questions: int | None = None,
    chunk: int = 64,
) -> dict:
    """Exact-match recall across calls: call 1 writes ``n_facts`` facts, call 2 asks each.

    Call 2 gets only the questions (its prompt holds no token of call 1); with
    ``use_memory=False`` the bank is reset between the calls. Greedy decoding.
    ``reader`` (default: :class:`MemoryReader` on ``model``) answers instead, e.g. a
    baseline of :mod:`physllm.hopfield.baselines`, on the same facts and questions.
    ``max_questions``: ask a random subset of that many per trial (None: all).
    Returns exact match, per-character accuracy and ``answer_loss`` (teacher-forced
    nats per answer token) over the questions asked.
    """
    rng = random.Random(seed)
    reader = reader if reader is not None else MemoryReader(model, use_memory)
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    exact = chars = total = 0
    nll = 0.0
    for _ in range(trials):
        reader.reset()
        facts = task.facts(n_facts, rng, split)
        reader.write(torch.tensor([task.encode(task.write_text(facts, rng))], device=device))
        if max_questions is not None and max_questions < len(facts):
            facts = rng.sample(facts, max_questions)
        questions = task.questions(facts, rng)
        for rows in _groups(questions, chunk):
            prompts = torch.tensor([task.encode(questions[i]) for i in rows], device=device)
            want = torch.tensor([task.encode(facts[i][1]) for i in rows], device=device)
            got = reader.answer(prompts, task.code_len).to(device)
            nll += float(reader.answer_nll(prompts, want).sum())
            exact += int((got == want).all(1).sum())
            chars += int((got == want).sum())
            total += len(rows)
    reader.reset()
    return {
        "n_facts": n_facts,
        "questions": total,
        "exact_match": exact / total,
        "char_accuracy": chars / (total * task.code_len),
        "answer_loss": nll / (total * task.code_len),
    }


def readers(model, ngram_n: int = 12, knn: dict | None = None) -> dict[str, Reader]:
    """The memory and its baselines, by the names the notebook's tables use."""
    return {
        "memory": MemoryReader(model, True),
        "no_memory": MemoryReader(model, False),
        "ngram_cache": NGramCache(ngram_n, model.config.vocab_size),
        "knn_lm": KNNLM(model, **(knn or {})),
    }


def compare_readers(
    model,
    tasks: dict[str, FactsTask],
    n_facts: int,
    trials: int = 8,
    seed: int = 0,
    ngram_n: int = 12,
    knn: dict | None = None,
) -> dict[str, dict[str, dict]]:
    """``{task: {reader: recall}}``: every reader of :func:`readers` on the same facts and
    questions of every task (one ``seed``: the same draws for each reader)."""
    found = readers(model, ngram_n, knn)
    return {
        name: {r: recall(model, task, n_facts, trials, seed, reader=rd) for r, rd in found.items()}
        for name, task in tasks.items()
    }


def fresh_memory(model: HopfieldLM, seed: int) -> HopfieldLM:
    """A copy of ``model`` (same backbone) with a new memory layer initialised from ``seed``
    and an empty bank: what a further seed of the memory stage starts from."""
    other = copy.deepcopy(model)
    other.memory.reset()
    torch.manual_seed(seed)
    other.memory_layer = HopfieldMemory(model.config, model.backbone.n_embd).to(
        next(model.parameters()).device
    )
    return other


def token_f1(prediction: str, answers: list[str]) -> float:
    """SQuAD-style token F1 against the best-matching reference answer."""
    import re
    from collections import Counter

    def norm(text: str) -> list[str]:
        text = re.sub(r"\b(a|an|the)\b", " ", re.sub(r"[^\w\s]", " ", text.lower()))
        return text.split()

    best, pred = 0.0, norm(prediction)
    for answer in answers:
        ref = norm(answer)
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            p, r = common / len(pred), common / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best


@torch.no_grad()
def narrativeqa_eval(
    model,
    task: NarrativeQATask,
    decode: Callable[[list[int]], str],
    records: list[dict],
    use_memory: bool = True,
    max_new_tokens: int = 16,
    eos_id: int | None = None,
) -> dict:
    """Mean token F1 of greedy answers: summary written in call 1, the question alone in call 2."""
    device = next(model.parameters()).device
    f1 = []
    for record in records:
        model.memory.reset()
        summary = task.encode(record["summary"])[: task.max_summary_tokens]
        if use_memory:
            model.memorize(torch.tensor([summary], device=device))
        prompt = torch.tensor([task.encode(task.prompt(record))], device=device)
        out = model.call(prompt, max_new_tokens, write=False, temperature=0, eos_id=eos_id)
        answer = decode(out[0, prompt.size(1) :].tolist()).split("\n")[0]
        f1.append(token_f1(answer, record["answers"]))
    model.memory.reset()
    return {"questions": len(f1), "token_f1": sum(f1) / max(1, len(f1))}


def load_hf_hopfield(model_config, device: str = "cpu"):
    """GPU preset: ``HopfieldLM`` on the pretrained ``hf:`` backbone and its tokenizer (no stage 1)."""
    from transformers import AutoTokenizer

    name = model_config.backbone[3:]
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise PhysllmError(f"cannot load the tokenizer of {name!r}: {err}") from None
    model_config.vocab_size = len(tokenizer)
    model = HopfieldLM(model_config).to(device)
    return model, tokenizer


@contextmanager
def bank_of(model: HopfieldLM, n_slots: int):
    """Within the block, ``model`` has an empty bank of ``n_slots`` slots (then its own back)."""
    old, cfg = model.memory, model.config
    model.memory = MemoryBank(
        n_slots, cfg.mem_heads, cfg.mem_head_dim, old.values.size(-1), cfg.replacement
    ).to(old.keys.device)
    try:
        yield model
    finally:
        model.memory = old


def capacity_curve(
    model,
    task: FactsTask,
    sizes: list[int],
    questions: int = 64,
    seed: int = 0,
    evict: bool = True,
    no_eviction: list[dict] | None = None,
) -> list[dict]:
    """Recall against the number of facts stored, ``questions`` questions per point.

    ``evict=True``: the model's own bank (FIFO past ``n_slots``); ``evict=False``: a
    bank of n * (slots per fact) slots, so nothing written is ever evicted.
    ``no_eviction`` (with ``evict=True``): that curve's rows for the same ``task``,
    ``questions`` and ``seed``. Where n facts fit in the model's bank, FIFO has evicted
    nothing and a read scans the filled slots only, so the measurement is the same:
    its row is reused (``from_no_eviction``) instead of run again.
    """
    per_fact, rows = task.fact_tokens(), []
    shared = {r["n_facts"]: r for r in no_eviction or []} if evict else {}
    for n in sizes:
        trials = max(1, math.ceil(questions / n))
        n_slots = model.memory.n_slots if evict else n * per_fact
        if n in shared and n * per_fact <= n_slots:
            rows.append({**shared[n], "n_slots": n_slots, "evict": True, "from_no_eviction": True})
            continue
        with contextlib.nullcontext(model) if evict else bank_of(model, n_slots):
            row = recall(model, task, n, trials, seed + n, max_questions=questions)
        extra = {"n_slots": n_slots, "slots_per_fact": per_fact, "evict": evict}
        rows.append({**row, **extra, "from_no_eviction": False})
    return rows


__all__ = [
    "FACT_TEMPLATES",
    "QUESTION_TEMPLATES",
    "SETTINGS",
    "Episode",
    "FactsTask",
    "TemplateSplit",
    "HELDOUT_PHRASES",
    "generated_templates",
    "uses_heldout_wording",
    "bank_of",
    "compare_readers",
    "fresh_memory",
    "readers",
    "NarrativeQATask",
    "capacity_curve",
    "is_heldout",
    "load_hf_hopfield",
    "load_narrativeqa_records",
    "narrativeqa_eval",
    "recall",
    "token_f1",
    "draw_episode",
    "episode_loss",
    "memory_parameters",
]
