"""Corpora, the fixed split, token caches and batches; hub loaders on local files."""

from __future__ import annotations

import json

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


def test_folder_corpus_concatenates_txt_files(tmp_path):
    (tmp_path / "a.txt").write_text("alpha " * 100)
    (tmp_path / "b.txt").write_text("beta " * 100)
    (tmp_path / "skip.md").write_text("not me")
    text = "".join(pdata.load_corpus(str(tmp_path)).values())
    assert "alpha" in text and "beta" in text and "not me" not in text


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


def test_shakespeare_missing_and_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PHYSLLM_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(pdata, "data_dirs", lambda: [tmp_path])

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(pdata.urllib.request, "urlopen", offline)
    with pytest.raises(PhysllmError, match="PHYSLLM_DATA_DIR"):
        pdata.load_corpus("shakespeare")
    assert pdata.resolve_default_corpus() == "pydocs"


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
