"""Corpora, the fixed split, token caches and batches; hub loaders on local files."""

from __future__ import annotations

import io
import json
import os
import threading
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from physllm import data as pdata
from physllm.errors import PhysllmError


def test_split_is_first_90_percent_train(small_text_file):
    text = small_text_file.read_text()
    splits = pdata.load_corpus(str(small_text_file))
    assert splits["train"] + splits["val"] == text
    assert len(splits["train"]) == int(0.9 * len(text))


def test_pydocs_is_always_available():
    splits = pdata.load_corpus("pydocs")
    assert len(splits["train"]) > 300_000 and len(splits["val"]) > 30_000


def test_prepare_writes_memmaps_and_meta(small_text_file):
    folder = pdata.prepare(str(small_text_file), "char")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["dtype"] == "uint16"
    data = pdata.TokenData(folder)
    text = small_text_file.read_text()
    assert meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"] == len(text)
    assert (
        data.tokenizer.decode(data.splits["val"][:50].tolist()) == text[int(0.9 * len(text)) :][:50]
    )
    assert pdata.prepare(str(small_text_file), "char") == folder  # cached: same folder, no rework


def test_batches_are_shifted_windows(small_text_file):
    data = pdata.TokenData.load(str(small_text_file), "char")
    x, y = data.get_batch("train", 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, _ = data.get_batch("train", 4, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)  # the generator is the data position


def test_stream_sampler_rows_read_their_segment_in_order(small_text_file):
    data = pdata.TokenData.load(str(small_text_file), "char")
    tokens = torch.from_numpy(data.splits["train"][:].astype(np.int64))
    streams = pdata.StreamSampler(data, "train", n_streams=3, block_size=16)
    segment = len(tokens) // 3
    per_segment = (segment - 1) // 16
    xs, resets = [], []
    for _ in range(per_segment + 2):
        x, y, reset = streams.next()
        assert torch.equal(x[:, 1:], y[:, :-1])
        xs.append(x)
        resets.append(reset)
    # every row reads its own segment block after block, with nothing skipped
    for row in range(3):
        read = torch.cat([x[row] for x in xs[:per_segment]])
        start = row * segment
        assert torch.equal(read, tokens[start : start + per_segment * 16])
    # a row restarts (flagged) only at the very beginning and after its segment ends
    flags = torch.stack(resets)  # (calls, rows)
    assert flags[0].all() and flags[per_segment].all()
    assert not flags[1:per_segment].any() and not flags[per_segment + 1].any()
    assert torch.equal(xs[per_segment], xs[0])


def test_stream_sampler_ranks_and_resume(small_text_file):
    data = pdata.TokenData.load(str(small_text_file), "char")
    rank0 = pdata.StreamSampler(data, "train", 2, 16, rank=0, world_size=2)
    rank1 = pdata.StreamSampler(data, "train", 2, 16, rank=1, world_size=2)
    both = pdata.StreamSampler(data, "train", 4, 16)
    x0, x1, x = rank0.next()[0], rank1.next()[0], both.next()[0]
    assert torch.equal(torch.cat([x0, x1]), x)  # the ranks split the rows, no overlap
    for _ in range(5):
        both.next()
    saved = both.state_dict()
    expected = both.next()[0]
    fresh = pdata.StreamSampler(data, "train", 4, 16)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.next()[0], expected)
    with pytest.raises(PhysllmError, match="cannot resume"):
        pdata.StreamSampler(data, "train", 3, 16).load_state_dict(saved)
    with pytest.raises(PhysllmError, match="too short"):
        pdata.StreamSampler(data, "val", 1000, 16)


def test_bits_per_unit_conversion(small_text_file):
    char = pdata.TokenData.load(str(small_text_file), "char")
    assert char.units_per_token() == pytest.approx(1.0)
    bpe = pdata.TokenData.load(str(small_text_file), "bpe:400")
    assert bpe.units_per_token() > 1.5  # merges cover several characters per token


def test_unknown_corpus_and_missing_file():
    with pytest.raises(PhysllmError, match="unknown corpus"):
        pdata.load_corpus("no_such_corpus")
    with pytest.raises(PhysllmError, match="does not exist"):
        pdata.load_corpus("/nonexistent/file.txt")


def test_text_shorter_than_a_block(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("just a few words, far too short\n" * 3)
    data = pdata.TokenData.load(str(path), "char")
    with pytest.raises(PhysllmError, match="fewer than one block"):
        data.check_block(64)


def test_unigram_loss_on_a_known_distribution():
    # train frequencies 3:1, add-one smoothed: p = (4/6, 2/6); val reads one of each
    train = np.array([0, 0, 0, 1], dtype=np.uint16)  # a memmap's dtype
    loss = pdata.unigram_loss(train, torch.tensor([0, 1]), vocab_size=2)
    assert loss == pytest.approx(-(np.log(4 / 6) + np.log(2 / 6)) / 2)
    # an unseen token (smoothed count 1) costs log(N + V), finite; uniform train ids give log(V)
    assert pdata.unigram_loss([0, 1], [2], vocab_size=3) == pytest.approx(np.log(5))
    assert pdata.unigram_loss(list(range(8)), [3], vocab_size=8) == pytest.approx(np.log(8))


def test_a_corpus_unigram_loss_is_below_uniform(small_text_file):
    data = pdata.TokenData.load(str(small_text_file), "char")
    V = data.tokenizer.vocab_size
    loss = data.unigram_loss()
    assert loss == pdata.unigram_loss(data.splits["train"], data.splits["val"], V)
    assert 0 < loss < np.log(V)  # English letters are far from uniform


def test_unigram_loss_rejects_ids_outside_the_vocabulary():
    with pytest.raises(PhysllmError, match="in \\[0, 2\\)"):
        pdata.unigram_loss([0, 2], [0], vocab_size=2)
    with pytest.raises(PhysllmError, match="validation tokens"):
        pdata.unigram_loss([0, 1], [], vocab_size=2)


# ----- hub datasets, through the same loaders, from local files in the hub's format


def write_parquet(path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PHYSLLM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path


def test_wikitext_lines_are_joined(hub_dir):
    lines = [" = Title = \n", " Some text here .\n", "\n", " More text .\n"]
    write_parquet(
        hub_dir / "wikitext2" / "train-00000-of-00001.parquet", [{"text": t} for t in lines * 3]
    )
    write_parquet(
        hub_dir / "wikitext2" / "validation-00000-of-00001.parquet", [{"text": t} for t in lines]
    )
    splits = pdata.load_corpus("wikitext2")
    assert splits["val"] == "".join(lines)
    assert splits["train"] == "".join(lines * 3)


def test_tinystories_documents(hub_dir):
    write_parquet(
        hub_dir / "tinystories" / "train.parquet", [{"text": f"Story {i}."} for i in range(5)]
    )
    write_parquet(hub_dir / "tinystories" / "validation.parquet", [{"text": "Val story."}])
    splits = pdata.load_corpus("tinystories")
    assert splits["train"].split(pdata.DOC_SEPARATOR) == [f"Story {i}." for i in range(5)]
    assert splits["val"] == "Val story."


def test_fineweb_single_split_is_divided_by_documents(hub_dir):
    docs = [{"text": f"Document number {i}.", "id": str(i)} for i in range(20)]
    write_parquet(hub_dir / "fineweb-edu" / "train-00000.parquet", docs)
    splits = pdata.load_corpus("fineweb-edu")
    assert splits["train"].count("Document") == 18 and splits["val"].count("Document") == 2


def test_ultrachat_is_chat_formatted(hub_dir):
    conv = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    rows = [{"prompt": "Hi there", "prompt_id": "1", "messages": conv}]
    write_parquet(hub_dir / "ultrachat" / "train_sft-00000.parquet", rows * 4)
    write_parquet(hub_dir / "ultrachat" / "test_sft-00000.parquet", rows)
    splits = pdata.load_corpus("ultrachat")
    assert splits["val"] == "<|user|>\nHi there<|end|>\n<|assistant|>\nHello!<|end|>\n"


def test_narrativeqa_summary_question_answer(hub_dir):
    row = {
        "document": {"id": "d1", "summary": {"text": "A cat sails to sea."}},
        "question": {"text": "Where does the cat sail?"},
        "answers": [{"text": "To sea."}, {"text": "The sea."}],
    }
    write_parquet(hub_dir / "narrativeqa" / "train.parquet", [row] * 3)
    write_parquet(hub_dir / "narrativeqa" / "validation.parquet", [row])
    splits = pdata.load_corpus("narrativeqa")
    assert (
        splits["val"]
        == "Summary: A cat sails to sea.\nQuestion: Where does the cat sail?\nAnswer: To sea."
    )


def test_local_hub_copy_missing_split(hub_dir):
    write_parquet(hub_dir / "tinystories" / "train.parquet", [{"text": "x"}])
    with pytest.raises(PhysllmError, match="no 'validation' split"):
        pdata.load_corpus("tinystories")


def test_hf_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(PhysllmError, match="cannot"):
        pdata.load_corpus("hf:someone/some-dataset")


def test_uint32_for_large_vocabularies():
    class Big:
        vocab_size = 100_000

        def encode(self, text):
            return [99_999] * len(text)

    assert pdata.encode_in_chunks(Big(), "abc").dtype == np.uint32


# ----- default: TinyShakespeare from disk, else one checked download, else pydocs

FAKE_PLAY = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 200


@pytest.fixture
def no_play(tmp_path, monkeypatch):
    """No TinyShakespeare on disk, a fresh download attempt, and a fake file's checksum expected.

    ``data_dirs`` points at temp folders so nothing is ever written into the
    checkout's ``data/``. Returns the folder a download must be cached in.
    """
    env_dir, data_dir = tmp_path / "env", tmp_path / "data"
    env_dir.mkdir()
    monkeypatch.setenv("PHYSLLM_DATA_DIR", str(env_dir))
    monkeypatch.setattr(pdata, "data_dirs", lambda: [env_dir, data_dir])
    for var in pdata.OFFLINE_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(pdata, "_ATTEMPT", pdata._DownloadAttempt())
    monkeypatch.setattr(
        pdata, "SHAKESPEARE_SHA256", pdata.hashlib.sha256(FAKE_PLAY.encode()).hexdigest()
    )
    return data_dir


def serve(monkeypatch, body: bytes | Exception) -> list[str]:
    """Answer ``urlopen`` with ``body`` (or raise it); returns the URLs asked for."""
    calls: list[str] = []

    def urlopen(url, timeout=None):
        calls.append(url)
        assert timeout is not None and timeout <= 10  # a short timeout, offline fails fast
        if isinstance(body, Exception):
            raise body
        return io.BytesIO(body)

    monkeypatch.setattr(pdata.urllib.request, "urlopen", urlopen)
    return calls


def test_default_downloads_verifies_and_caches_the_play(no_play, monkeypatch, capsys):
    calls = serve(monkeypatch, FAKE_PLAY.encode())
    assert pdata.resolve_default_corpus() == "shakespeare"
    cached = no_play / pdata.SHAKESPEARE_FILE
    assert calls == [pdata.SHAKESPEARE_URL]
    assert cached.read_text() == FAKE_PLAY
    assert sorted(p.name for p in no_play.iterdir()) == [pdata.SHAKESPEARE_FILE]  # no temp left
    assert pdata.default_corpus_notice() == f"corpus: TinyShakespeare ({cached})"
    splits = pdata.load_corpus("default")
    assert splits["train"] + splits["val"] == FAKE_PLAY
    assert calls == [pdata.SHAKESPEARE_URL]  # found on disk from now on
    assert capsys.readouterr().err == ""  # nothing to warn about


def test_checksum_mismatch_is_never_cached_and_falls_back(no_play, monkeypatch, capsys):
    calls = serve(monkeypatch, FAKE_PLAY.encode() + b"tampered")
    assert pdata.resolve_default_corpus() == "pydocs"
    assert not no_play.exists() or list(no_play.iterdir()) == []
    notice = "TinyShakespeare not found, using pydocs (download failed its checksum)"
    assert capsys.readouterr().err == notice + "\n"
    assert pdata.resolve_default_corpus() == "pydocs"
    assert calls == [pdata.SHAKESPEARE_URL]  # tried once per process
    assert capsys.readouterr().err == ""  # said once per process
    assert pdata.default_corpus_notice() == notice
    with pytest.raises(PhysllmError, match="checksum.*PHYSLLM_DATA_DIR"):
        pdata.load_corpus("shakespeare")


def test_offline_falls_back_to_pydocs_with_one_notice(no_play, monkeypatch, capsys):
    calls = serve(monkeypatch, urllib.error.URLError("[Errno -2] Name or service not known"))
    folder = pdata.prepare("default", "char")
    assert json.loads((folder / "meta.json").read_text())["corpus"] == "pydocs"
    assert capsys.readouterr().err == "TinyShakespeare not found, using pydocs (offline)\n"
    assert pdata.default_corpus_notice() == "TinyShakespeare not found, using pydocs (offline)"
    with pytest.raises(PhysllmError, match="not downloaded \\(offline\\).*PHYSLLM_DATA_DIR"):
        pdata.load_corpus("shakespeare")
    assert calls == [pdata.SHAKESPEARE_URL]
    assert not no_play.exists()


@pytest.mark.parametrize("var", ["PHYSLLM_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_variables_skip_the_download(no_play, monkeypatch, capsys, var):
    monkeypatch.setenv(var, "1")
    calls = serve(monkeypatch, FAKE_PLAY.encode())
    assert pdata.resolve_default_corpus() == "pydocs"
    assert calls == []
    assert capsys.readouterr().err == "TinyShakespeare not found, using pydocs (offline)\n"


def test_a_hanging_download_gives_up_quickly(no_play, monkeypatch):
    release = threading.Event()

    def hang(url, timeout=None):  # DNS that never answers: not bounded by the socket timeout
        release.wait(30)
        raise urllib.error.URLError("late")

    monkeypatch.setattr(pdata.urllib.request, "urlopen", hang)
    monkeypatch.setattr(pdata, "DOWNLOAD_TOTAL_S", 0.3)
    start = time.perf_counter()
    try:
        assert pdata.resolve_default_corpus() == "pydocs"
        assert time.perf_counter() - start < 3
        assert pdata.default_corpus_notice().endswith("(offline)")
    finally:
        release.set()


def test_the_play_on_disk_needs_no_network(no_play, monkeypatch, capsys):
    local = Path(os.environ["PHYSLLM_DATA_DIR"]) / pdata.SHAKESPEARE_FILE
    local.write_text(FAKE_PLAY)
    calls = serve(monkeypatch, AssertionError("no download when the file is there"))
    assert pdata.resolve_default_corpus() == "shakespeare"
    assert pdata.default_corpus_notice() == f"corpus: TinyShakespeare ({local})"
    assert calls == [] and capsys.readouterr().err == ""


def test_the_notice_shown_by_a_caller_is_not_repeated(no_play, monkeypatch, capsys):
    serve(monkeypatch, urllib.error.URLError("offline"))
    assert pdata.default_corpus_notice() == "TinyShakespeare not found, using pydocs (offline)"
    assert pdata.resolve_default_corpus() == "pydocs"
    assert capsys.readouterr().err == ""


@pytest.mark.shakespeare
def test_checksum_constant_matches_the_real_play(shakespeare_file):
    body = shakespeare_file.read_bytes()
    assert len(body) == 1_115_394
    assert pdata.hashlib.sha256(body).hexdigest() == pdata.SHAKESPEARE_SHA256


# ----- local files, folders and globs

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))


@pytest.fixture
def mixed_folder(tmp_path):
    """A .md, a .py, a LICENSE without extension, a binary .png, and folders never read."""
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "guide.md").write_text("# Guide\n" + "markdown words " * 50)
    (root / "tool.py").write_text("def tool():\n    return 'python source'\n" * 30)
    (root / "LICENSE").write_text("Permission is hereby granted, free of charge.\n" * 20)
    (root / "logo.png").write_bytes(PNG)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core] hidden git text\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "notes.txt").write_text("cached bytecode notes\n")
    return root


def test_folder_reads_every_text_file_and_counts_binaries(mixed_folder, capsys):
    splits = pdata.load_corpus(str(mixed_folder))
    text = splits["train"] + splits["val"]
    assert capsys.readouterr().err == (
        f"corpus {mixed_folder}: 3 text files read, 1 skipped (not UTF-8 text)\n"
    )
    # sorted by path: LICENSE, sub/guide.md, tool.py
    assert text.index("Permission") < text.index("markdown") < text.index("python source")
    assert "PNG" not in text and "hidden git" not in text and "bytecode" not in text


def test_invalid_utf8_in_a_folder_is_skipped(tmp_path, capsys):
    (tmp_path / "good.txt").write_text("plain words " * 50)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me ".encode("latin-1") * 50)
    text = "".join(pdata.load_corpus(str(tmp_path)).values())
    assert "plain words" in text and "caf" not in text
    assert capsys.readouterr().err == (
        f"corpus {tmp_path}: 1 text file read, 1 skipped (not UTF-8 text)\n"
    )


def test_glob_narrows_a_folder(mixed_folder, monkeypatch, capsys):
    splits = pdata.load_corpus(f"{mixed_folder}/**/*.md")
    text = splits["train"] + splits["val"]
    assert "markdown" in text and "python source" not in text and "Permission" not in text
    assert "1 text file read, 0 skipped" in capsys.readouterr().err
    monkeypatch.chdir(mixed_folder.parent)  # relative to the current folder
    text = "".join(pdata.load_corpus("docs/*.py").values())
    assert "python source" in text and "markdown" not in text
    with pytest.raises(PhysllmError, match="no files match"):
        pdata.load_corpus("docs/**/*.rst")
    # what ** matches skips hidden folders and __pycache__, though a named hidden folder is read
    assert "hidden git" not in "".join(pdata.load_corpus("docs/**").values())
    with pytest.raises(PhysllmError, match="no files match"):  # only __pycache__ holds a .txt
        pdata.load_corpus("docs/**/*.txt")
    assert "hidden git" in "".join(pdata.load_corpus("docs/.git/*").values())


def test_folder_without_text_and_binary_file_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PhysllmError, match="no files"):
        pdata.load_corpus(str(tmp_path / "empty"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "logo.png").write_bytes(PNG)
    with pytest.raises(PhysllmError, match="1 file, none UTF-8 text"):
        pdata.prepare(str(tmp_path / "bin"), "char")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(PhysllmError, match="not UTF-8 text"):
        pdata.prepare(str(latin1), "char")
    with pytest.raises(PhysllmError, match="not UTF-8 text"):
        pdata.load_corpus(str(tmp_path / "bin" / "logo.png"))


def _all_text(folder: Path) -> str:
    data = pdata.TokenData(folder)
    return "".join(data.tokenizer.decode(data.splits[s][:].tolist()) for s in ("train", "val"))


def test_token_cache_notices_edited_added_and_removed_files(tmp_path):
    corpus = tmp_path / "notes"
    corpus.mkdir()
    first = corpus / "a.txt"
    first.write_text("alpha beta " * 100)
    (corpus / "b.md").write_text("delta epsilon " * 100)
    before = pdata.prepare(str(corpus), "char")
    assert "alpha" in _all_text(before)
    assert pdata.prepare(str(corpus), "char") == before  # unchanged: the cache is reused

    stat = first.stat()
    first.write_text("gamma beta " * 100)  # same size: only the mtime tells
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    edited = pdata.prepare(str(corpus), "char")
    assert edited != before
    assert "gamma" in _all_text(edited) and "alpha" not in _all_text(edited)

    extra = corpus / "c.txt"
    extra.write_text("zeta eta " * 100)
    added = pdata.prepare(str(corpus), "char")
    assert added not in (before, edited) and "zeta" in _all_text(added)
    extra.unlink()
    removed = pdata.prepare(str(corpus), "char")
    assert "zeta" not in _all_text(removed)


def test_token_cache_of_a_glob_follows_its_matches(mixed_folder):
    pattern = f"{mixed_folder}/**/*.md"
    before = pdata.prepare(pattern, "char")
    (mixed_folder / "more.md").write_text("another markdown page " * 40)
    after = pdata.prepare(pattern, "char")
    assert after != before and "another markdown page" in _all_text(after)
    assert pdata.prepare(pattern, "byte") != after  # the tokenizer is part of the key
