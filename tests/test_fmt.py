"""physllm.fmt: the formatting and reading helpers reports, README tables and the leaderboard share."""

from __future__ import annotations

from physllm.fmt import clock, first_line, format_seconds, millions, num, read_json


def test_format_seconds_reads_like_a_person_writes_it():
    assert format_seconds(None) == ""
    assert format_seconds(42.4) == "42s"
    assert format_seconds(185) == "3m 05s"
    assert format_seconds(3725) == "1h 02m"


def test_clock_and_millions():
    assert clock(42) == "0:42" and clock(725) == "12:05" and clock(3723) == "1:02:03"
    assert millions(800_000) == "0.80M" and millions(12_500_000) == "12.5M"
    assert millions(124_000_000) == "124M" and millions(None) == ""


def test_num_and_first_line():
    assert num(3.14159, ".2f") == "3.14" and num(None, ".2f") == "" and num("x", ".2f") == ""
    assert first_line("  boom\nmore") == "boom" and first_line("") == ""
    assert first_line("x" * 500, limit=10) == "x" * 10


def test_read_json_is_empty_for_missing_or_broken_files(tmp_path):
    assert read_json(tmp_path / "missing.json") == {}
    (tmp_path / "half.json").write_text('{"a": ')
    assert read_json(tmp_path / "half.json") == {}
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_json(tmp_path / "ok.json") == {"a": 1}
