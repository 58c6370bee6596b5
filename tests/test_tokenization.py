"""Every tokenizer gives back exactly the text it was given, and saves/loads."""

from __future__ import annotations

import pytest

from physllm.errors import PhysllmError
from physllm.tokenization import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    TiktokenTokenizer,
    build_tokenizer,
    load_tokenizer,
)

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\tcafé — naïve ☃ 123\n"


def offline_tiktoken_encoding():
    """A real tiktoken Encoding built offline: the 256 bytes plus a few merges."""
    import tiktoken

    ranks = {bytes([i]): i for i in range(256)}
    for merge in (b"th", b"he", b"the", b"in", b"er"):
        ranks[merge] = len(ranks)
    return tiktoken.Encoding(
        name="tiny_offline",
        pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": len(ranks)},
    )


@pytest.fixture(params=["char", "byte", "bpe", "tiktoken"])
def tokenizer(request):
    if request.param == "char":
        return CharTokenizer.fit(TEXT)
    if request.param == "byte":
        return ByteTokenizer()
    if request.param == "bpe":
        return BPETokenizer.fit(TEXT * 50, vocab_size=300)
    return TiktokenTokenizer(offline_tiktoken_encoding())


def test_round_trip(tokenizer):
    ids = tokenizer.encode(TEXT)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == TEXT


@pytest.mark.parametrize("name", ["char", "byte", "bpe:300"])
def test_save_load_round_trip(name, tmp_path):
    # (tiktoken saves only its encoding's name and refetches it: covered by the offline-failure test.)
    tokenizer = build_tokenizer(name, TEXT * 50)
    tokenizer.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode(TEXT) == tokenizer.encode(TEXT)
    assert again.vocab_size == tokenizer.vocab_size


def test_bpe_merges_shorten_text():
    tok = BPETokenizer.fit(TEXT * 50, vocab_size=300)
    assert len(tok.encode(TEXT)) < len(TEXT.encode("utf-8"))
    assert tok.name == "bpe:" + str(tok.vocab_size)


def test_char_unknown_character_is_a_clear_error():
    tok = CharTokenizer.fit("abc")
    with pytest.raises(PhysllmError, match="outside this char vocabulary"):
        tok.encode("abz")


def test_byte_decode_survives_a_cut_multibyte_character():
    ids = ByteTokenizer().encode("é")
    assert ByteTokenizer().decode(ids[:1]) == "\ufffd"


def test_unknown_tokenizer_name():
    with pytest.raises(PhysllmError, match="unknown tokenizer"):
        build_tokenizer("wordpiece", TEXT)


def test_tiktoken_offline_failure_is_clear(monkeypatch):
    import tiktoken

    def no_network(name):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    with pytest.raises(PhysllmError, match="cannot be fetched offline"):
        build_tokenizer("tiktoken:gpt2")
