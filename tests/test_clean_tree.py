"""Reports from a clean tree only (issue 15): a reference report refuses uncommitted changes
unless --allow-dirty, and every run records what it was built from (run.json, index, README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from physllm.reporting import readme, rebuild_index, run_report
from physllm.reporting.runner import (
    checkout_of,
    dirty_paths,
    dirty_tree_error,
    header_markdown,
    tree_state,
    written_by,
)

from .test_reports import cli, fake_checkout, git, index_rows, report_line, write_tiny_notebook


def files_outside_git(repo: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}


@pytest.fixture
def outside_git(tmp_path: Path) -> Path:
    """``tmp_path``, which must not be inside a git checkout for these tests to mean anything."""
    if checkout_of(tmp_path) is not None:
        pytest.skip(f"{tmp_path} is inside a git checkout")
    return tmp_path


# --------------------------------------------------------------------------- git status


def test_dirty_paths_lists_changed_and_untracked_files_not_ignored_ones(tmp_path):
    repo = fake_checkout(tmp_path, "cpu")
    assert dirty_paths(repo) == []
    (repo / "README.md").write_text("changed\n")
    (repo / "new dir" / "deep").mkdir(parents=True)
    (repo / "new dir" / "deep" / "a file.py").write_text("x = 1\n")
    (repo / "reports" / "local" / "01_tiny").mkdir(parents=True)  # gitignored: not dirty
    (repo / "reports" / "local" / "01_tiny" / "run.json").write_text("{}")
    git(repo, "mv", "reports/01_tiny/cpu/01_tiny.html", "reports/01_tiny/cpu/moved.html")
    assert dirty_paths(repo) == [
        "README.md",
        "new dir/deep/a file.py",
        "reports/01_tiny/cpu/moved.html",
    ]
    # what the run itself writes is left out: its folder (and anything in it), its index
    assert dirty_paths(repo, exclude=[repo / "reports" / "01_tiny" / "cpu"]) == [
        "README.md",
        "new dir/deep/a file.py",
    ]
    assert dirty_paths(repo, exclude=[repo / "new dir", repo / "README.md"]) == [
        "reports/01_tiny/cpu/moved.html"
    ]


def test_tree_state_names_the_commit_and_what_is_uncommitted(tmp_path):
    repo = fake_checkout(tmp_path, "cpu")
    head = git(repo, "rev-parse", "--short", "HEAD").strip()
    reports = repo / "reports"
    clean = tree_state(reports)
    assert clean["git_sha"] == head and clean["reproducible"] is True
    assert clean["dirty"] == [] and clean["dirty_count"] == 0

    # the run folder being replaced and the index it rebuilds do not make the tree dirty
    target = reports / "01_tiny" / "cpu"
    (target / "metrics.json").write_text("{}")
    (reports / "README.md").write_text("stale index\n")
    (target.with_name("cpu-failed")).mkdir()
    (target.with_name("cpu-failed") / "run.json").write_text("{}")
    assert tree_state(reports, exclude=written_by({"01_tiny": target}, reports))["reproducible"]
    # ... but they do for a run into another folder
    other = tree_state(reports, exclude=written_by({"01_tiny": target.with_name("x")}, reports))
    assert other["reproducible"] is False and other["git_sha"] == head
    assert other["dirty"] == [
        "reports/01_tiny/cpu-failed/run.json",
        "reports/01_tiny/cpu/metrics.json",
    ]


def test_many_dirty_paths_name_five_and_count_the_rest(tmp_path):
    repo = fake_checkout(tmp_path, "cpu")
    for i in range(8):
        (repo / f"scratch{i}.py").write_text("")
    state = tree_state(repo / "reports")
    assert state["dirty_count"] == 8 and len(state["dirty"]) == 8
    message = str(dirty_tree_error(state, repo / "reports"))
    assert "\n" not in message
    assert "scratch0.py, scratch1.py, scratch2.py, scratch3.py, scratch4.py and 3 more" in message
    assert "scratch5.py" not in message and "--allow-dirty" in message


def test_no_checkout_or_no_commit_is_not_reproducible(outside_git):
    state = tree_state(outside_git / "reports")  # not there yet: its nearest parent is asked
    assert state == {
        "git_sha": "unknown",
        "reproducible": False,
        "dirty": [],
        "dirty_count": 0,
        "checkout": None,
    }
    assert "not in a git checkout" in str(dirty_tree_error(state, outside_git / "reports"))

    repo = outside_git / "fresh"
    repo.mkdir()
    git(repo, "init", "-q")
    state = tree_state(repo / "reports")
    assert state["git_sha"] == "unknown" and state["reproducible"] is False
    assert "no commit yet" in str(dirty_tree_error(state, repo / "reports"))


# --------------------------------------------------------------------------- the command


def test_reference_report_from_a_dirty_tree_is_refused_and_writes_nothing(tmp_path):
    notebooks = tmp_path / "nbs"
    write_tiny_notebook(notebooks)
    repo = fake_checkout(tmp_path, "cpu")
    (repo / "README.md").write_text((repo / "README.md").read_text() + "\nan edit\n")
    (repo / "notes.txt").write_text("untracked")
    before = files_outside_git(repo)
    args = ("--notebooks-dir", str(notebooks), "--reports-dir", str(repo / "reports"))

    refused = cli("01_tiny", "--reference", "--run-name", "new", *args)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "README.md, notes.txt" in refused.stderr and "--allow-dirty" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stdout == ""
    assert files_outside_git(repo) == before, "a refused reference run must write nothing"

    # --allow-dirty runs it, and every record says it is not reproducible and why
    allowed = cli("01_tiny", "--reference", "--run-name", "new", "--allow-dirty", *args)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert readme.UNCOMMITTED in allowed.stderr  # the warning
    run = repo / "reports" / "01_tiny" / "new"
    record = json.loads((run / "run.json").read_text())
    head = git(repo, "rev-parse", "--short", "HEAD").strip()
    assert record["git_sha"] == head and record["reproducible"] is False
    assert record["dirty"] == ["README.md", "notes.txt"] and record["dirty_count"] == 2
    assert index_rows(repo / "reports")["01_tiny", "new"]["commit"] == (
        f"{head}: **{readme.UNCOMMITTED}**"
    )
    assert index_rows(repo / "reports")["01_tiny", "cpu"]["commit"].endswith(
        f"**{readme.NO_COMMIT}**"  # the fixture's run.json records no commit
    )
    assert report_line(run).endswith("--reference --run-name new")
    header = (run / "01_tiny.ipynb").read_text()
    assert f"physllm {head} (**{readme.UNCOMMITTED}**: README.md, notes.txt)" in header


def test_reference_report_outside_a_checkout_is_refused(outside_git):
    notebooks = outside_git / "nbs"
    write_tiny_notebook(notebooks)
    reports = outside_git / "reports"
    proc = cli(
        "01_tiny", "--reference", "--notebooks-dir", str(notebooks), "--reports-dir", str(reports)
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "not in a git checkout" in proc.stderr
    assert not reports.exists()


def test_a_local_run_from_a_dirty_tree_runs_and_records_it(tmp_path):
    notebooks = tmp_path / "nbs"
    write_tiny_notebook(notebooks)
    repo = fake_checkout(tmp_path, "cpu")
    (repo / "scratch.py").write_text("")
    head = git(repo, "rev-parse", "--short", "HEAD").strip()
    record = run_report(["01_tiny"], {"steps": 2}, "mine", repo / "reports", notebooks)[0]
    assert record["status"] == "ok"
    saved = json.loads((repo / "reports" / "local" / "01_tiny" / "mine" / "run.json").read_text())
    assert saved["git_sha"] == head and saved["reproducible"] is False
    assert saved["dirty"] == ["scratch.py"]
    assert index_rows(repo / "reports" / "local")["01_tiny", "mine"]["commit"].endswith(
        f"**{readme.UNCOMMITTED}**"
    )

    # from a clean tree the same run is reproducible, and nothing is marked
    (repo / "scratch.py").unlink()
    run_report(["01_tiny"], {"steps": 2}, "mine", repo / "reports", notebooks)
    saved = json.loads((repo / "reports" / "local" / "01_tiny" / "mine" / "run.json").read_text())
    assert saved["reproducible"] is True and saved["dirty"] == []
    assert index_rows(repo / "reports" / "local")["01_tiny", "mine"]["commit"] == head


def test_index_marks_runs_by_what_their_run_json_records(tmp_path):
    for run, record in {
        "clean": {"git_sha": "abc1234", "reproducible": True},
        "dirty": {"git_sha": "abc1234", "reproducible": False},
        "old": {"git_sha": "abc1234-dirty"},
    }.items():
        folder = tmp_path / "02_x" / run
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({"status": "ok", **record}))
    cli_run = tmp_path / "cli" / "recipe"  # a CLI run: metrics.json alone, with the trainer's sha
    cli_run.mkdir(parents=True)
    (cli_run / "metrics.json").write_text(json.dumps({"git_sha": "def5678"}))
    rebuild_index(tmp_path, local=True)
    rows = index_rows(tmp_path)
    assert rows["cli", "recipe"]["commit"] == "def5678"
    assert rows["02_x", "clean"]["commit"] == "abc1234"
    assert rows["02_x", "dirty"]["commit"] == f"abc1234: **{readme.UNCOMMITTED}**"
    assert rows["02_x", "old"]["commit"] == f"abc1234-dirty: **{readme.UNCOMMITTED}**"


def test_the_report_header_says_when_a_run_is_not_reproducible():
    record = {"notebook": "01_tiny", "run": "cpu", "kind": "reference", "parameters": {}}
    record |= {"status": "ok", "hardware": "cpu (x)", "wall_s": 1.0, "started": "2026-12-01"}
    clean = header_markdown(record | {"git_sha": "abc1234", "reproducible": True}, {})
    assert "physllm abc1234. Status" in clean
    dirty = record | {"git_sha": "abc1234", "reproducible": False, "dirty": ["a.py", "b.py"]}
    assert f"physllm abc1234 (**{readme.UNCOMMITTED}**: a.py, b.py). Status" in header_markdown(
        dirty, {}
    )
    nowhere = record | {"git_sha": "unknown", "reproducible": False, "dirty": []}
    assert f"physllm unknown (**{readme.NO_COMMIT}**). Status" in header_markdown(nowhere, {})
