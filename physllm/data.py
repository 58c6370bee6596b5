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

Corpus names: ``default``, ``shakespeare``, ``pydocs``, ``wikitext2``,
``wikitext103``, ``tinystories``, ``fineweb-edu``, ``ultrachat``,
``narrativeqa``, ``hf:<id>[:<config>]``, or a local path or glob:

* ``default`` is TinyShakespeare when it can be had (``$PHYSLLM_DATA_DIR``,
  then ``data/``, then one download from its public URL, SHA-256-checked and
  cached in ``data/``), else ``pydocs``; :func:`default_corpus_notice` says
  which in one line, and a fallback is said once per process on stderr. The
  download is tried at most once per process, with a short timeout, and never
  when ``PHYSLLM_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``.
* a file: its UTF-8 text (anything else is a :class:`PhysllmError`);
* a folder: every UTF-8 text file below it, whatever its extension (``.txt``,
  ``.md``, ``.py``, ``LICENSE``...), in sorted path order, joined by a blank
  line. Binaries (a NUL byte, or not valid UTF-8) are skipped and counted; hidden
  files and folders (``.git``) and ``__pycache__`` are never read;
* a glob, when the name holds ``*``, ``?`` or ``[`` and is not an existing
  path: the files it matches relative to the current folder (``**`` spans
  folders), e.g. ``docs/**/*.md``; a matched folder counts as a folder corpus.

Folder and glob corpora say on stderr how many files were read and skipped.
Local corpora are cached under a fingerprint of every file's path, size and
modification time, so editing, adding or removing a file gives new tokens.

Hub datasets are read from ``$PHYSLLM_DATA_DIR/<name>/`` first when that folder
holds local parquet/jsonl files in the hub's format (how the tests exercise
the loaders, and how to use a pre-downloaded copy offline), else through
``datasets.load_dataset``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import ArrayLike

from physllm.errors import PhysllmError
from physllm.tokenization import Tokenizer, build_tokenizer, load_tokenizer

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_FILE = "tinyshakespeare.txt"
# SHA-256 of the 1,115,394-character file at SHAKESPEARE_URL: a download that differs is not used.
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# Per socket operation; the whole attempt is also bounded (DNS can hang past a socket timeout).
DOWNLOAD_TIMEOUT_S = 5.0
DOWNLOAD_TOTAL_S = 15.0
DOWNLOAD_MAX_BYTES = 8 << 20  # the file is 1.1 MB; never read an unbounded answer
OFFLINE_ENV = ("PHYSLLM_OFFLINE", "HF_HUB_OFFLINE")
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
    """``filename`` in the first of :func:`data_dirs` that holds it, else None."""
    for d in data_dirs():
        if (d / filename).is_file():
            return d / filename
    return None


# ----- TinyShakespeare: on disk, else one checked download per process.


def offline() -> bool:
    """True when ``PHYSLLM_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1/true/yes/on."""
    return any(
        os.environ.get(var, "").strip().upper() in ("1", "TRUE", "YES", "ON") for var in OFFLINE_ENV
    )


@dataclass
class _DownloadAttempt:
    """The outcome of this process's one TinyShakespeare download, and whether the fallback was said."""

    tried: bool = False
    path: Path | None = None
    reason: str = ""  # why there is no path: "offline", "download failed its checksum"...
    said: bool = False


_ATTEMPT = _DownloadAttempt()


def _fetch(url: str) -> bytes:
    """``url``'s body, or OSError; bounded in time even where DNS hangs."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                result["body"] = response.read(DOWNLOAD_MAX_BYTES + 1)
        except Exception as err:  # urllib raises OSError subclasses, http.client others
            result["error"] = err

    worker = threading.Thread(target=run, daemon=True, name="physllm-download")
    worker.start()
    worker.join(DOWNLOAD_TOTAL_S)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {DOWNLOAD_TOTAL_S:.0f} s")
    if "error" in result:
        err = result["error"]
        raise err if isinstance(err, OSError) else OSError(f"{type(err).__name__}: {err}")
    return result["body"]  # type: ignore[return-value]


def download_shakespeare() -> Path | None:
    """Download TinyShakespeare into ``data/`` once per process; its path, or None.

    Not tried when :func:`offline`. The file is used only when its SHA-256 is
    :data:`SHAKESPEARE_SHA256`, and written atomically, so ``data/`` never holds
    a partial or foreign file. Why it failed is kept for
    :func:`default_corpus_notice`.
    """
    state = _ATTEMPT
    if state.tried:
        return state.path if state.path is not None and state.path.is_file() else None
    state.tried = True
    if offline():
        state.reason = "offline"
        return None
    try:
        body = _fetch(SHAKESPEARE_URL)
    except OSError:
        state.reason = "offline"
        return None
    if len(body) > DOWNLOAD_MAX_BYTES or hashlib.sha256(body).hexdigest() != SHAKESPEARE_SHA256:
        state.reason = "download failed its checksum"
        return None
    target = data_dirs()[-1] / SHAKESPEARE_FILE
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(target, body)
    except OSError as err:
        state.reason = f"cannot write {target}: {err.strerror or err}"
        return None
    state.path = target
    return target


def find_shakespeare(download: bool = True) -> Path | None:
    """TinyShakespeare's file: ``$PHYSLLM_DATA_DIR``, ``data/``, then (if ``download``) the URL."""
    path = find_local_file(SHAKESPEARE_FILE)
    if path is None and download:
        path = download_shakespeare()
    return path


def resolve_default_corpus() -> str:
    """What ``default`` means here: ``shakespeare`` if it can be had, else ``pydocs``.

    The fallback is said once per process on stderr (unless
    :func:`default_corpus_notice` has already been called to show it).
    """
    if find_shakespeare() is not None:
        return "shakespeare"
    if not _ATTEMPT.said:
        _ATTEMPT.said = True
        print(default_corpus_notice(), file=sys.stderr, flush=True)
    return "pydocs"


def default_corpus_notice() -> str:
    """One line saying what ``default`` is: ``corpus: TinyShakespeare (<path>)`` or the fallback.

    The fallback reads ``TinyShakespeare not found, using pydocs (offline)``
    (or another reason in the parentheses). Callers show this line themselves
    (a report's first line, a notebook's first output), so calling this counts
    as having said it: :func:`resolve_default_corpus` will not repeat it.
    """
    path = find_shakespeare()
    _ATTEMPT.said = True
    if path is not None:
        return f"corpus: TinyShakespeare ({path})"
    return f"TinyShakespeare not found, using pydocs ({_ATTEMPT.reason or 'offline'})"


def load_shakespeare() -> Splits:
    """TinyShakespeare: ``$PHYSLLM_DATA_DIR``, then ``data/``, then its public URL."""
    path = find_shakespeare()
    if path is None:
        raise PhysllmError(
            f"{SHAKESPEARE_FILE} not found in {', '.join(map(str, data_dirs()))} and not "
            f"downloaded ({_ATTEMPT.reason or 'offline'}); set PHYSLLM_DATA_DIR to its folder"
        )
    return split_text(_read_corpus_file(path))


def load_pydocs() -> Splits:
    """The Python docs' topic pages shipped with CPython: always there, offline."""
    from pydoc_data.topics import topics

    return split_text(DOC_SEPARATOR.join(topics[k] for k in sorted(topics)))


# ----- local files, folders and globs


_SKIPPED_DIRS = frozenset({"__pycache__"})


def is_glob(name: str) -> bool:
    """A corpus name read as a glob pattern: it holds ``*``, ``?`` or ``[``."""
    return glob.has_magic(name)


def _hidden(part: str) -> bool:
    return (part.startswith(".") and part not in (".", "..")) or part in _SKIPPED_DIRS


def _walk_files(folder: Path) -> list[Path]:
    """Every file under ``folder``, hidden files and folders and ``__pycache__`` left out, sorted."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not _hidden(d)]  # prune: never descend into .git
        files += [Path(root) / n for n in names if not _hidden(n)]
    return sorted(files, key=lambda f: f.relative_to(folder).as_posix())


def local_corpus_files(name: str) -> list[Path]:
    """The files a local corpus name stands for (a file, a folder, or a glob), sorted.

    Files only: which of them are text is decided when they are read. An
    empty list means a folder or glob with nothing in it; a name that is not
    a path and not a glob is a :class:`PhysllmError`.
    """
    path = Path(name)
    if path.is_file():
        return [path]
    if path.is_dir():
        return _walk_files(path)
    if not is_glob(name):
        raise PhysllmError(f"corpus file {name} does not exist")
    # only what the pattern matched is filtered: a hidden folder the user named is theirs
    literal = next(i for i, part in enumerate(path.parts) if glob.has_magic(part))
    files: set[Path] = set()
    for match in glob.glob(name, recursive=True):
        m = Path(match)
        if any(_hidden(part) for part in m.parts[literal:]):
            continue
        if m.is_dir():
            files.update(_walk_files(m))
        elif m.is_file():
            files.add(m)
    return sorted(files, key=lambda f: f.as_posix())


def _read_text(path: Path) -> str | None:
    """``path``'s text if it is UTF-8 text (a BOM is dropped), None for a binary or unreadable file."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8192)
            if b"\0" in head:  # a NUL byte: a binary that happens to decode
                return None
            data = head + fh.read()
    except OSError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def _read_corpus_file(path: Path) -> str:
    text = _read_text(path)
    if text is None:
        raise PhysllmError(
            f"corpus file {path} is not UTF-8 text (binary, another encoding, or unreadable)"
        )
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def load_text_path(path: str | Path) -> Splits:
    """A UTF-8 text file, or every text file of a folder or glob (sorted, joined by a blank line).

    For a folder or a glob, one line on stderr says how many files were read
    and how many skipped as not UTF-8 text; none read is a :class:`PhysllmError`.
    """
    name = str(path)
    files = local_corpus_files(name)
    if Path(name).is_file():
        return split_text(_read_corpus_file(files[0]))
    texts, skipped = [], 0
    for f in files:
        text = _read_text(f)
        if text is None:
            skipped += 1
        else:
            texts.append(text)
    what = "folder" if Path(name).is_dir() else "glob"
    if not texts:
        found = (
            f"{_count(len(files), 'file')}, none UTF-8 text"
            if files
            else "no files" + (" match" if what == "glob" else "")
        )
        raise PhysllmError(f"corpus {what} {name}: {found}")
    print(
        f"corpus {name}: {_count(len(texts), 'text file')} read, {skipped} skipped (not UTF-8 text)",
        file=sys.stderr,
        flush=True,
    )
    return split_text(DOC_SEPARATOR.join(t for t in texts if t))


def local_corpus_fingerprint(name: str) -> str:
    """A hash of every file of a local corpus: path, size and mtime (and the glob itself).

    Editing (size or mtime), adding or removing a file changes it, so the token
    cache never serves tokens of a text that is no longer there.
    """
    if is_glob(name) and not Path(name).exists():
        ident = f"glob {name!r} in {Path.cwd()}"  # a relative glob means other files elsewhere
    else:
        ident = f"path {Path(name).resolve()}"
    h = hashlib.sha256(ident.encode() + b"\n")
    for f in local_corpus_files(name):
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


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
    if _is_local(name):
        return load_text_path(name)
    raise PhysllmError(
        f"unknown corpus {name!r}; choose from default, {', '.join(CORPORA)}, a text file, "
        "a folder, a glob such as 'docs/**/*.md', or hf:<id>"
    )


def _is_local(name: str) -> bool:
    """A corpus name that means a path or a glob rather than a registered corpus."""
    return (
        Path(name).exists()
        or is_glob(name)
        or name.endswith(".txt")
        or os.sep in name
        or "/" in name
    )


# --------------------------------------------------------------------------- token caches


def _cache_key(corpus: str, tokenizer: str, max_chars: int) -> str:
    if corpus in CORPORA or corpus.startswith("hf:"):
        tag = corpus.replace("/", "_").replace(":", "_")
    elif _is_local(corpus):
        # a local corpus is known by what is in it now: every file's path, size and mtime
        try:
            stamp = local_corpus_fingerprint(corpus)
        except (PhysllmError, OSError):  # missing: load_corpus says so
            stamp = hashlib.sha256(corpus.encode()).hexdigest()
        base = Path(corpus.split("*")[0].split("?")[0].split("[")[0] or ".").resolve()
        stem = (base.stem or "root") + ("-glob" if is_glob(corpus) else "")
        tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) + "-" + stamp[:12]
    else:
        tag = corpus
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
    """Write to a temp file beside ``path``, then rename: readers see all or nothing."""
    # a unique temp name: two processes preparing the same file never share one
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

    def unigram_loss(self) -> float:
        """The context-free baseline of this corpus (:func:`unigram_loss`): nats per token
        on the val split of the train split's token frequencies."""
        return unigram_loss(self.splits["train"], self.splits["val"], self.tokenizer.vocab_size)

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


def unigram_loss(train_ids: ArrayLike, val_ids: ArrayLike, vocab_size: int) -> float:
    """The context-free baseline: cross-entropy (nats/token) on ``val_ids`` of the token
    frequencies of ``train_ids``, add-one smoothed so an unseen token costs a finite loss.

    ``train_ids``, ``val_ids``: 1-D token ids (arrays, memmaps or tensors), each in
    ``[0, vocab_size)``. A model whose validation loss is not clearly below this has
    learned nothing from context.
    """
    train = np.asarray(train_ids, dtype=np.int64).ravel()
    val = np.asarray(val_ids, dtype=np.int64).ravel()
    if vocab_size < 1 or val.size == 0:
        raise PhysllmError(
            f"unigram_loss needs vocab_size >= 1 and validation tokens, "
            f"got vocab_size {vocab_size} and {val.size} tokens"
        )
    for name, ids in (("train", train), ("val", val)):
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise PhysllmError(f"unigram_loss: {name} ids must be in [0, {vocab_size})")
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1  # add-one
    log_p = np.log(counts / counts.sum())  # (V,)
    return float(-log_p[val].mean())


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
    local_shakespeare = find_local_file(SHAKESPEARE_FILE)  # listing never downloads
    rows.append(
        {
            "corpus": "default",
            "source": "shakespeare"
            if local_shakespeare
            else "shakespeare (downloaded on first use), else pydocs",
            "cached": "",
        }
    )
    for name in CORPORA:
        if name == "shakespeare":
            source = (
                str(local_shakespeare)
                if local_shakespeare
                else f"download {SHAKESPEARE_URL} (sha256 {SHAKESPEARE_SHA256[:12]}...)"
            )
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
