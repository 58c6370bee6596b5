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
* :class:`NarrativeQATask`: the story summary is call 1, "Question: ...
  Answer:" call 2 (the GPU preset; records from :func:`load_narrativeqa_records`).

:func:`memory_parameters`, :func:`draw_episode` and :func:`episode_loss` are the
pieces the memory stage trains with (the loop is ``physllm.training.train_memory``,
on the trainer's schedule, step and progress bar); :func:`recall` and
:func:`capacity_curve` measure exact-match recall with and without memory.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from physllm.data import HUB_CORPORA, iter_hub_rows
from physllm.errors import PhysllmError
from physllm.hopfield.model import HopfieldLM

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


@dataclass
class FactsTask:
    """Synthetic facts "the code of NAME is CODE." with held-out names and codes."""

    encode: Callable[[str], list[int]]
    code_len: int = 4
    fact: str = "the code of {name} is {code}.\n"
    question: str = "the code of {name} is "
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

    def write_text(self, facts: list[tuple[str, str]]) -> str:
        return "".join(self.fact.format(name=n, code=c) for n, c in facts)

    def prompts(self, facts: list[tuple[str, str]]) -> torch.Tensor:
        """Call 2 prompts, one row per fact (all the same length): (n, Tq)."""
        return torch.tensor([self.encode(self.question.format(name=n)) for n, _ in facts])

    def episode(self, batch_size: int, n_facts: int, rng: random.Random, split: str = "train"):
        """``batch_size`` episodes of ``n_facts`` facts; call 2 asks each one (shuffled)."""
        write, read, items = [], [], []
        for _ in range(batch_size):
            facts = self.facts(n_facts, rng, split)
            write.append(self.encode(self.write_text(facts)))
            asked = rng.sample(facts, len(facts))
            read += [self.encode(self.question.format(name=n) + c) for n, c in asked]
            items.append(facts)
        read_t = torch.tensor(read)  # (B * n, Tq + code_len)
        targets = read_t[:, 1:].clone()
        targets[:, : -self.code_len] = -1  # score the code only
        return Episode(torch.tensor(write), read_t[:, :-1], targets, None, items)


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


@torch.no_grad()
def recall(
    model,
    task: FactsTask,
    n_facts: int,
    trials: int = 1,
    seed: int = 0,
    use_memory: bool = True,
    split: str = "heldout",
) -> dict:
    """Exact-match recall across calls: call 1 writes ``n_facts`` facts, call 2 asks each.

    Call 2 gets only the questions (its prompt holds no token of call 1); with
    ``use_memory=False`` the bank is reset between the calls. Greedy decoding.
    Returns exact-match and per-character accuracy over ``trials * n_facts`` questions.
    """
    rng = random.Random(seed)
    device = next(model.parameters()).device
    exact = chars = total = 0
    for _ in range(trials):
        model.memory.reset()
        facts = task.facts(n_facts, rng, split)
        model.call(torch.tensor([task.encode(task.write_text(facts))], device=device))  # call 1
        if not use_memory:
            model.memory.reset()
        prompts = task.prompts(facts).to(device)
        out = model.call(prompts, max_new_tokens=task.code_len, write=False, temperature=0)
        answers = out[:, prompts.size(1) :].tolist()
        for (_, code), got in zip(facts, answers):
            want = task.encode(code)
            exact += got == want
            chars += sum(a == b for a, b in zip(got, want))
            total += 1
    model.memory.reset()
    return {
        "n_facts": n_facts,
        "questions": total,
        "exact_match": exact / total,
        "char_accuracy": chars / (total * task.code_len),
    }


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


def capacity_curve(
    model, task: FactsTask, sizes: list[int], questions: int = 64, seed: int = 0
) -> list[dict]:
    """Recall against the number of facts stored (about ``questions`` questions per point)."""
    return [
        recall(model, task, n, trials=max(1, math.ceil(questions / n)), seed=seed + n)
        for n in sizes
    ]


__all__ = [
    "Episode",
    "FactsTask",
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
