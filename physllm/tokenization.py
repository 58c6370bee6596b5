"""Tokenizers: ``char``, ``byte``, ``bpe`` and ``tiktoken:<encoding>``.

All four share one small interface (:class:`Tokenizer`): ``encode(str) ->
list[int]``, ``decode(list[int]) -> str``, ``vocab_size``, ``save(dir)`` and
:func:`load_tokenizer` to read it back from a checkpoint folder. Names are what
the CLI's ``--tokenizer`` takes; :func:`build_tokenizer` fits the ones that
need fitting (``char`` and ``bpe``) on the training text.
"""

from __future__ import annotations

import json
from pathlib import Path

from physllm.errors import PhysllmError

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
    """Base class. ``name`` is the string that rebuilds it (``char``, ``bpe:8192``...)."""

    name: str
    vocab_size: int
    unit: str = "char"  # what bits-per-unit is measured in: "char" or "byte"
    eos_id: int | None = None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    """One id per distinct character of the corpus (nanoGPT's shakespeare_char)."""

    def __init__(self, chars: list[str]):
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.name = "char"
        self.vocab_size = len(self.chars)

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        return cls(list(set(text)))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise PhysllmError(
                f"text has {len(unknown)} character(s) outside this char vocabulary "
                f"({len(self.chars)} chars): {''.join(unknown)[:20]!r}"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, directory: str | Path) -> None:
        payload = {"type": "char", "chars": self.chars}
        Path(directory, TOKENIZER_FILE).write_text(json.dumps(payload, ensure_ascii=False))


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes, vocabulary 256: nothing to fit, nothing unknown."""

    name = "byte"
    vocab_size = 256
    unit = "byte"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        # A sampled byte sequence can cut a multi-byte character in half.
        return bytes(ids).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        Path(directory, TOKENIZER_FILE).write_text(json.dumps({"type": "byte"}))


class BPETokenizer(Tokenizer):
    """Byte-level BPE trained with HF ``tokenizers`` (GPT-2's pre-tokenizer)."""

    EOS = "<|endoftext|>"

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        self.vocab_size = hf_tokenizer.get_vocab_size()
        self.name = f"bpe:{self.vocab_size}"
        self.eos_id = hf_tokenizer.token_to_id(self.EOS)

    @classmethod
    def fit(cls, text: str, vocab_size: int = 8192) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[cls.EOS],
            # Every byte is in the alphabet, so no text is ever unknown.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        # The trainer takes an iterator of strings: feed it ~1 MB chunks.
        size = 1 << 20
        chunks = (text[i : i + size] for i in range(0, len(text), size))
        tok.train_from_iterator(chunks, trainer=trainer, length=len(text) // size + 1)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(list(ids))

    def save(self, directory: str | Path) -> None:
        self.hf.save(str(Path(directory, TOKENIZER_FILE)))


class TiktokenTokenizer(Tokenizer):
    """A fixed OpenAI encoding (``gpt2`` for the 124M presets)."""

    def __init__(self, encoding):
        self.enc = encoding
        self.name = f"tiktoken:{encoding.name}"
        self.vocab_size = encoding.n_vocab
        self.eos_id = encoding.eot_token

    @classmethod
    def from_name(cls, encoding_name: str) -> TiktokenTokenizer:
        import tiktoken

        try:
            return cls(tiktoken.get_encoding(encoding_name))
        except ValueError as err:
            raise PhysllmError(f"unknown tiktoken encoding {encoding_name!r}: {err}") from None
        except Exception as err:  # network errors come in many types
            raise PhysllmError(
                f"tiktoken encoding {encoding_name!r} is not cached and cannot be fetched "
                f"offline ({type(err).__name__}); set TIKTOKEN_CACHE_DIR to a folder holding it"
            ) from None

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(list(ids))

    def save(self, directory: str | Path) -> None:
        payload = {"type": "tiktoken", "encoding": self.enc.name}
        Path(directory, TOKENIZER_FILE).write_text(json.dumps(payload))


TOKENIZERS = ("char", "byte", "bpe", "bpe:<vocab_size>", "tiktoken:<encoding>")


def build_tokenizer(name: str, train_text: str | None = None) -> Tokenizer:
    """Make tokenizer ``name``, fitting it on ``train_text`` where it needs fitting."""
    kind, _, arg = name.partition(":")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "tiktoken":
        return TiktokenTokenizer.from_name(arg or "gpt2")
    if kind in ("char", "bpe"):
        if train_text is None:
            raise PhysllmError(f"tokenizer {name!r} needs text to be fitted on")
        if kind == "char":
            return CharTokenizer.fit(train_text)
        try:
            vocab_size = int(arg) if arg else 8192
        except ValueError:
            raise PhysllmError(f"bad BPE vocabulary size in {name!r}") from None
        return BPETokenizer.fit(train_text, vocab_size)
    raise PhysllmError(f"unknown tokenizer {name!r}; choose from {', '.join(TOKENIZERS)}")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Read the tokenizer saved in ``directory`` (a checkpoint or cache folder)."""
    path = Path(directory, TOKENIZER_FILE)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise PhysllmError(f"no {TOKENIZER_FILE} in {directory}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PhysllmError(f"{path} is corrupt (not valid JSON)") from None
    kind = payload.get("type")
    if kind == "char":
        return CharTokenizer(payload["chars"])
    if kind == "byte":
        return ByteTokenizer()
    if kind == "tiktoken":
        return TiktokenTokenizer.from_name(payload["encoding"])
    if "model" in payload:  # an HF tokenizers file
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_file(str(path)))
    raise PhysllmError(f"{path} holds no tokenizer physllm knows")
