"""Corpora, token caches and batches.

A corpus is a name that :func:`load_corpus` turns into two strings, ``train``
and ``val``. :func:`prepare` tokenizes them once into ``uint16``/``uint32``
memmaps under the cache folder, keyed by corpus and tokenizer, with a
``meta.json`` beside them; :class:`TokenData` serves random windows from them,
and :class:`StreamSampler` consecutive blocks (for models that carry a state).

The split is fixed so that every model sees the same validation text:

* single-file corpora (``shakespeare``, ``pydocs``, local files): the first
  90% of the characters train, the last 10% validate (nanoGPT's rule);
* hub datasets with their own validation split use it;
* streamed or single-split hub datasets: the first 90% of the documents train,
  the last 10% validate.

Corpus names: ``shakespeare``, ``pydocs``, ``wikitext2``, ``wikitext103``,
``tinystories``, ``fineweb-edu``, ``ultrachat``, ``narrativeqa``, a path to a
``.txt`` file or a folder of them, or ``hf:<id>[:<config>]``. Hub datasets are
read from ``$PHYSLLM_DATA_DIR/<name>/`` first when that folder holds local
parquet/jsonl files in the hub's format (how the tests exercise the loaders,
and how to use a pre-downloaded copy offline), else through
``datasets.load_dataset``.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from physllm.errors import PhysllmError
from physllm.tokenization import Tokenizer, build_tokenizer, load_tokenizer

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_FILE = "tinyshakespeare.txt"
TRAIN_FRACTION = 0.9
DOC_SEPARATOR = "\n\n"
# Chat turns are plain text so any tokenizer (char, byte, bpe) can learn them.
CHAT_ROLES = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
CHAT_END = "<|end|>"

Splits = dict[str, str]  # {"train": text, "val": text}


# --------------------------------------------------------------------------- paths


def repo_root() -> Path | None:
    """The source checkout this package runs from, if it runs from one."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").exists() else None


def data_dirs() -> list[Path]:
    """Where local data files are looked for, in order."""
    dirs = []
    if os.environ.get("PHYSLLM_DATA_DIR"):
        dirs.append(Path(os.environ["PHYSLLM_DATA_DIR"]))
    root = repo_root()
    dirs.append(root / "data" if root else Path("data"))
    return dirs


def cache_dir() -> Path:
    """Where token memmaps go: ``$PHYSLLM_CACHE_DIR``, else ``<repo>/data/cache``."""
    if os.environ.get("PHYSLLM_CACHE_DIR"):
        return Path(os.environ["PHYSLLM_CACHE_DIR"])
    root = repo_root()
    return (root / "data" / "cache") if root else Path.home() / ".cache" / "physllm"


# --------------------------------------------------------------------------- corpora


def split_text(text: str, train_fraction: float = TRAIN_FRACTION) -> Splits:
    """First ``train_fraction`` of the characters train, the rest validate."""
    n = int(len(text) * train_fraction)
    return {"train": text[:n], "val": text[n:]}


def split_documents(docs: list[str], train_fraction: float = TRAIN_FRACTION) -> Splits:
    """First ``train_fraction`` of the documents train, the rest validate."""
    n = max(1, int(len(docs) * train_fraction)) if len(docs) > 1 else len(docs)
    return {"train": DOC_SEPARATOR.join(docs[:n]), "val": DOC_SEPARATOR.join(docs[n:])}


def find_local_file(filename: str) -> Path | None:
    for d in data_dirs():
        if (d / filename).is_file():
            return d / filename
    return None


def load_shakespeare() -> Splits:
    """TinyShakespeare: ``$PHYSLLM_DATA_DIR``, then ``data/``, then its public URL."""
    path = find_local_file(SHAKESPEARE_FILE)
    if path is None:
        target = data_dirs()[-1] / SHAKESPEARE_FILE
        try:
            with urllib.request.urlopen(SHAKESPEARE_URL, timeout=20) as response:
                text = response.read().decode("utf-8")
        except OSError as err:
            raise PhysllmError(
                f"{SHAKESPEARE_FILE} not found in {', '.join(map(str, data_dirs()))} and the "
                f"download failed ({err.__class__.__name__}); set PHYSLLM_DATA_DIR to its folder"
            ) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        path = target
    return split_text(path.read_text(encoding="utf-8"))


def load_pydocs() -> Splits:
    """The Python docs' topic pages shipped with CPython: always there, offline."""
    from pydoc_data.topics import topics

    return split_text(DOC_SEPARATOR.join(topics[k] for k in sorted(topics)))


def load_text_path(path: str | Path) -> Splits:
    """A ``.txt`` file, or every ``.txt`` file under a folder (sorted, concatenated)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise PhysllmError(f"folder {path} holds no .txt files")
        return split_text(DOC_SEPARATOR.join(f.read_text(encoding="utf-8") for f in files))
    if not path.is_file():
        raise PhysllmError(f"corpus file {path} does not exist")
    try:
        return split_text(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PhysllmError(f"corpus file {path} is not UTF-8 text") from None


# ----- hub datasets: one HubSpec each; the formatter turns rows into documents.


def format_chat(messages: list[dict]) -> str:
    """``[{"role", "content"}, ...]`` -> ``<|user|>\\n...<|end|>\\n<|assistant|>\\n...<|end|>``."""
    return "".join(
        f"{CHAT_ROLES.get(m['role'], '<|' + m['role'] + '|>')}\n{m['content'].strip()}{CHAT_END}\n"
        for m in messages
    )


def format_narrativeqa(row: dict) -> str:
    """One NarrativeQA item as text: the story's summary, a question and its first answer."""
    return (
        f"Summary: {row['document']['summary']['text'].strip()}\n"
        f"Question: {row['question']['text'].strip()}\n"
        f"Answer: {row['answers'][0]['text'].strip()}"
    )


def _text_column(row: dict) -> str:
    if "text" in row:
        return row["text"]
    for value in row.values():
        if isinstance(value, str):
            return value
    raise PhysllmError(f"dataset rows have no text column (columns: {', '.join(row)})")


@dataclass(frozen=True)
class HubSpec:
    """Where a hub corpus lives and how its rows become text."""

    path: str
    config: str | None
    splits: tuple[str, str | None]  # (train split, validation split or None)
    to_text: Callable[[dict], str] = _text_column
    join_lines: bool = False  # wikitext: rows are lines, keep them as one text
    streaming: bool = False
    default_max_chars: int = 0  # 0: no cap


HUB_CORPORA: dict[str, HubSpec] = {
    "wikitext2": HubSpec(
        "Salesforce/wikitext", "wikitext-2-raw-v1", ("train", "validation"), join_lines=True
    ),
    "wikitext103": HubSpec(
        "Salesforce/wikitext", "wikitext-103-raw-v1", ("train", "validation"), join_lines=True
    ),
    "tinystories": HubSpec(
        "roneneldan/TinyStories", None, ("train", "validation"), default_max_chars=200_000_000
    ),
    "fineweb-edu": HubSpec(
        "HuggingFaceFW/fineweb-edu",
        "sample-10BT",
        ("train", None),
        streaming=True,
        default_max_chars=100_000_000,
    ),
    "ultrachat": HubSpec(
        "HuggingFaceH4/ultrachat_200k",
        None,
        ("train_sft", "test_sft"),
        to_text=lambda r: format_chat(r["messages"]),
    ),
    "narrativeqa": HubSpec(
        "deepmind/narrativeqa", None, ("train", "validation"), to_text=format_narrativeqa
    ),
}


def _local_dataset_files(name: str) -> dict[str, list[str]] | None:
    """Parquet/jsonl files of a hub corpus under ``$PHYSLLM_DATA_DIR/<name>/``, by split."""
    for d in data_dirs():
        folder = d / name
        if not folder.is_dir():
            continue
        files: dict[str, list[str]] = {}
        for f in sorted(folder.rglob("*")):
            if f.suffix in (".parquet", ".jsonl", ".json"):
                split = f.stem.split("-")[0]  # train-00000-of-00001.parquet -> train
                files.setdefault(split, []).append(str(f))
        if files:
            return files
    return None


def iter_hub_rows(name: str, spec: HubSpec, split: str) -> Iterable[dict]:
    """Rows of one split: local files in the hub's format if present, else the hub."""
    from datasets import load_dataset

    local = _local_dataset_files(name)
    try:
        if local is not None:
            if split not in local:
                raise PhysllmError(
                    f"local copy of {name} has no {split!r} split ({', '.join(local)})"
                )
            builder = "parquet" if local[split][0].endswith(".parquet") else "json"
            return load_dataset(builder, data_files={split: local[split]}, split=split)
        return load_dataset(spec.path, spec.config, split=split, streaming=spec.streaming)
    except PhysllmError:
        raise
    except Exception as err:
        raise PhysllmError(
            f"cannot load {name} ({spec.path}): {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        ) from None


def _collect_documents(rows: Iterable[dict], spec: HubSpec, max_chars: int) -> list[str]:
    docs, total = [], 0
    for row in rows:
        doc = spec.to_text(row)
        docs.append(doc)
        total += len(doc)
        if max_chars and total >= max_chars:
            break
    return docs


def load_hub_corpus(name: str, spec: HubSpec, max_chars: int = 0) -> Splits:
    max_chars = max_chars or spec.default_max_chars
    train_split, val_split = spec.splits
    join = "".join if spec.join_lines else DOC_SEPARATOR.join
    train_docs = _collect_documents(iter_hub_rows(name, spec, train_split), spec, max_chars)
    if val_split is None:
        return split_documents(train_docs)
    val_docs = _collect_documents(iter_hub_rows(name, spec, val_split), spec, max_chars)
    return {"train": join(train_docs), "val": join(val_docs)}


def load_hf_id(ref: str, max_chars: int = 0) -> Splits:
    """``hf:<id>[:<config>]``: its train split, and validation/test if it has one."""
    from datasets import get_dataset_split_names

    dataset_id, _, config = ref.partition(":")
    try:
        names = get_dataset_split_names(dataset_id, config or None)
    except Exception as err:
        raise PhysllmError(f"cannot reach dataset {dataset_id!r}: {type(err).__name__}") from None
    val = next((s for s in ("validation", "valid", "test") if s in names), None)
    spec = HubSpec(dataset_id, config or None, ("train", val))
    return load_hub_corpus("hf:" + ref, spec, max_chars)


CORPORA: dict[str, Callable[[], Splits]] = {
    "shakespeare": load_shakespeare,
    "pydocs": load_pydocs,
    **{name: (lambda name=name: load_hub_corpus(name, HUB_CORPORA[name])) for name in HUB_CORPORA},
}


def load_corpus(name: str, max_chars: int = 0) -> Splits:
    """Text of corpus ``name`` as ``{"train": str, "val": str}``."""
    if name == "default":
        name = resolve_default_corpus()
    if name in ("shakespeare", "pydocs"):
        return CORPORA[name]()
    if name in HUB_CORPORA:
        return load_hub_corpus(name, HUB_CORPORA[name], max_chars)
    if name.startswith("hf:"):
        return load_hf_id(name[3:], max_chars)
    if name.endswith(".txt") or os.sep in name or Path(name).exists():
        return load_text_path(name)
    raise PhysllmError(
        f"unknown corpus {name!r}; choose from {', '.join(CORPORA)}, a .txt file or folder, or hf:<id>"
    )


def resolve_default_corpus() -> str:
    """``default`` means TinyShakespeare when it is on disk, else the offline ``pydocs``."""
    return "shakespeare" if find_local_file(SHAKESPEARE_FILE) else "pydocs"


# --------------------------------------------------------------------------- token caches


def _cache_key(corpus: str, tokenizer: str, max_chars: int) -> str:
    if corpus in CORPORA or corpus.startswith("hf:"):
        tag = corpus.replace("/", "_").replace(":", "_")
    else:  # a local path: its identity is its absolute path, size and mtime
        p = Path(corpus).resolve()
        stamp = f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" if p.is_file() else str(p)
        tag = p.stem + "-" + hashlib.sha1(stamp.encode()).hexdigest()[:10]
    suffix = f"__max{max_chars}" if max_chars else ""
    return f"{tag}__{tokenizer.replace(':', '-')}{suffix}"


def encode_in_chunks(tokenizer: Tokenizer, text: str, chunk_chars: int = 1 << 20) -> np.ndarray:
    """Encode a long text in newline-aligned pieces (bounded memory for big corpora)."""
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + chunk_chars)
        if end < len(text):  # cut after a newline so BPE merges never straddle chunks
            nl = text.rfind("\n", start, end)
            end = nl + 1 if nl > start else end
        pieces.append(np.asarray(tokenizer.encode(text[start:end]), dtype=dtype))
        start = end
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def prepare(corpus: str, tokenizer: str = "char", max_chars: int = 0) -> Path:
    """Tokenize ``corpus`` once; return the cache folder (``train.bin``, ``val.bin``, ``meta.json``)."""
    if corpus == "default":
        corpus = resolve_default_corpus()
    folder = cache_dir() / _cache_key(corpus, tokenizer, max_chars)
    if (folder / "meta.json").exists():
        return folder
    splits = load_corpus(corpus, max_chars)
    if not splits["val"]:
        raise PhysllmError(f"corpus {corpus!r} has an empty validation split")
    tok = build_tokenizer(
        tokenizer, splits["train"] + splits["val"] if tokenizer == "char" else splits["train"]
    )
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "corpus": corpus,
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "unit": tok.unit,
        "split_rule": "first 90% train / last 10% val (characters or documents) unless the dataset has a validation split",
        "splits": {},
    }
    for split, text in splits.items():
        ids = encode_in_chunks(tok, text)
        _write_atomic(folder / f"{split}.bin", ids.tobytes())
        meta["dtype"] = ids.dtype.name
        meta["splits"][split] = {
            "tokens": int(ids.size),
            "chars": len(text),
            "bytes": len(text.encode("utf-8")),
        }
    tok.save(folder)
    _write_atomic(
        folder / "meta.json", json.dumps(meta, indent=1).encode()
    )  # written last: marks done
    return folder


class TokenData:
    """The train/val memmaps of one prepared corpus, and random-window batches.

    ``get_batch`` draws ``batch_size`` windows of ``block_size + 1`` tokens at
    uniformly random offsets; ``x`` is the window without its last token and
    ``y`` without its first: (B, T) each, int64.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        dtype = np.dtype(self.meta["dtype"])
        self.splits = {
            s: np.memmap(self.folder / f"{s}.bin", dtype=dtype, mode="r")
            for s in self.meta["splits"]
        }
        self.tokenizer = load_tokenizer(self.folder)

    @classmethod
    def load(cls, corpus: str, tokenizer: str = "char", max_chars: int = 0) -> TokenData:
        return cls(prepare(corpus, tokenizer, max_chars))

    @property
    def corpus(self) -> str:
        return self.meta["corpus"]

    def units_per_token(self, split: str = "val") -> float:
        """Characters (or bytes, for byte tokenizers) per token: converts nats/token to bits/unit."""
        info = self.meta["splits"][split]
        units = info["bytes"] if self.tokenizer.unit == "byte" else info["chars"]
        return units / max(1, info["tokens"])

    def check_block(self, block_size: int) -> None:
        for split, data in self.splits.items():
            if len(data) <= block_size + 1:
                raise PhysllmError(
                    f"corpus {self.corpus!r}: the {split} split has {len(data)} tokens, "
                    f"fewer than one block of {block_size}+1"
                )

    def get_batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.splits[split]
        ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator).numpy()
        window = data[ix[:, None] + np.arange(block_size + 1)].astype(np.int64)  # (B, T+1)
        window = torch.from_numpy(window)
        return window[:, :-1], window[:, 1:]


class StreamSampler:
    """Consecutive blocks for truncated backpropagation through time.

    The split is cut into ``n_streams`` equal segments, one per batch row
    (under DDP, ``rank`` picks this process's rows out of ``n_streams *
    world_size``). Each call returns the next block of every row, so row r of
    call k+1 continues exactly where row r of call k stopped, and a model can
    hand its recurrent state from one call to the next. A row that has read
    its whole segment starts it again and is flagged in ``reset``: its state
    must go back to zero, since the text it reads no longer follows on.

    ``next()`` -> x, y (B, T) int64 and reset (B,) bool. ``state_dict`` /
    ``load_state_dict`` carry the read positions across ``--resume``.
    """

    def __init__(
        self,
        data: TokenData,
        split: str,
        n_streams: int,
        block_size: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.tokens = data.splits[split]
        self.block_size = block_size
        total_rows = n_streams * world_size
        self.segment = len(self.tokens) // total_rows
        if self.segment < block_size + 1:
            raise PhysllmError(
                f"corpus {data.corpus!r}: the {split} split ({len(self.tokens)} tokens) is too short "
                f"for {total_rows} streams of at least one block of {block_size}+1 tokens"
            )
        rows = np.arange(rank * n_streams, (rank + 1) * n_streams)
        self.starts = rows * self.segment  # (B,) each row's segment start
        self.offsets = np.zeros(n_streams, dtype=np.int64)  # read position within the segment
        self.blocks_per_segment = (self.segment - 1) // block_size

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reset = self.offsets == 0
        ix = self.starts + self.offsets
        window = self.tokens[ix[:, None] + np.arange(self.block_size + 1)].astype(np.int64)
        window = torch.from_numpy(window)  # (B, T+1)
        self.offsets += self.block_size
        # the next block would run past the segment: that row starts over
        self.offsets[self.offsets + self.block_size + 1 > self.segment] = 0
        return window[:, :-1], window[:, 1:], torch.from_numpy(reset)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"offsets": torch.from_numpy(self.offsets.copy())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        offsets = state["offsets"].numpy().astype(np.int64)
        if offsets.shape != self.offsets.shape:
            raise PhysllmError(
                f"cannot resume: the saved stream positions are for {offsets.size} rows, not {self.offsets.size}"
            )
        self.offsets = offsets.copy()


def list_corpora() -> list[dict]:
    """Each registered corpus with where it comes from and what is cached."""
    rows = []
    cached = sorted(p.name for p in cache_dir().glob("*") if (p / "meta.json").exists())
    for name in CORPORA:
        if name == "shakespeare":
            local = find_local_file(SHAKESPEARE_FILE)
            source = str(local) if local else f"download {SHAKESPEARE_URL}"
        elif name == "pydocs":
            source = "pydoc_data.topics (standard library, offline)"
        else:
            spec = HUB_CORPORA[name]
            local = _local_dataset_files(name)
            source = (
                f"local files ({sum(map(len, local.values()))})" if local else f"hub {spec.path}"
            )
        caches = [c for c in cached if c.split("__")[0] == name.replace("/", "_")]
        rows.append(
            {
                "corpus": name,
                "source": source,
                "cached": ", ".join(c.split("__", 1)[1] for c in caches),
            }
        )
    return rows
