"""``python -m physllm report``: papermill runs into run folders and their indexes.

A plain run writes a new local (gitignored) folder under ``reports/local/``; only
``--reference`` writes the committed ``reports/<notebook>/<run>/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import physllm.reporting.runner as reports_mod
from physllm.errors import PhysllmError
from physllm.reporting import (
    collect_runs,
    corpus_line,
    default_run_name,
    hardware_tag,
    latest_runs,
    parse_parameters,
    parse_value,
    rebuild_index,
    run_report,
)

REPO = Path(__file__).resolve().parents[1]

# A notebook small enough to run in seconds: it writes metrics.json, a fake
# checkpoint (which the report must delete) and fails on request.
TINY_BODY = """\
import json
from pathlib import Path
from physllm.notebook import resolve_out_dir
out = resolve_out_dir(out_dir)
(out / "best").mkdir(exist_ok=True)
(out / "best" / "model.safetensors").write_bytes(b"weights")
(out / "sub" / "last").mkdir(parents=True, exist_ok=True)
(out / "sub" / "state.pt").write_bytes(b"state")
(out / "curve.png").write_bytes(b"png")
if fail:
    raise ValueError("deliberate failure in cell three")
metrics = {"model": "gpt", "params": 804_161, "corpus": "pydocs", "steps": steps,
           "val_loss": 2.0 + 1.0 / steps, "val_bpc": 3.5, "bpc_unit": "char",
           "tokens_per_sec": 1234.5, "device": "cpu (test box)"}
json.dump(metrics, open(out / "metrics.json", "w"))
print("trained", steps)
"""


def write_tiny_notebook(folder: Path, name: str = "01_tiny") -> Path:
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell(f"# {name}"),
            nbformat.v4.new_code_cell(
                'steps = 3\nfail = False\ncorpus = "default"\nout_dir = "runs/tiny"',
                metadata={"tags": ["parameters"]},
            ),
            nbformat.v4.new_code_cell(TINY_BODY),
        ]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "physllm", "report", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=900,
    )


def index_rows(reports_dir: Path) -> dict[tuple[str, str], dict[str, str]]:
    """The index table parsed back: (notebook, run) -> {column: cell}."""
    lines = [
        ln for ln in (reports_dir / "README.md").read_text().splitlines() if ln.startswith("|")
    ]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        row = dict(zip(header, cells))
        rows[row["notebook"], row["run"]] = row
    return rows


def heavy_files(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.rglob("*")
        if p.name in ("best", "last", "tb") or p.suffix in (".safetensors", ".pt")
    ]


# --------------------------------------------------------------------------- the 00 notebook


@pytest.mark.skipif(
    not (REPO / "notebooks" / "00_foundations.ipynb").exists(), reason="notebook 00 not written"
)
def test_report_00_foundations_writes_agreeing_notebook_html_metrics_and_index(tmp_path):
    reports = tmp_path / "reports"
    proc = cli(
        "00_foundations", "-p", "steps", "20", "--run-name", "test", "--reports-dir", str(reports)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the first line says what it trains on; while it runs, cells and the training bar show
    first = proc.stdout.splitlines()[0]
    assert re.match(r"corpus: |TinyShakespeare not found, using pydocs \(", first), first
    assert re.search(r"^00_foundations cell 1/\d+ \[0:\d\d\] ", proc.stderr, re.M)
    assert re.search(r"gpt: 100%\|#+\| 20/20 \[", proc.stderr), proc.stderr[-2000:]
    run = reports / "local" / "00_foundations" / "test"  # a plain run: local, not the reference
    assert not (reports / "00_foundations").exists()

    metrics = json.loads((run / "metrics.json").read_text())
    record = json.loads((run / "run.json").read_text())
    assert metrics["steps"] == 20 and metrics["model"] == "gpt"
    assert record["status"] == "ok" and record["parameters"] == {"steps": 20}
    assert record["hardware"] == metrics["device"]

    # the executed notebook: every code cell ran, with the injected parameters
    nb = nbformat.read(run / "00_foundations.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    injected = next(c for c in code if "injected-parameters" in c.metadata.get("tags", []))
    assert "steps = 20" in injected.source and "local/00_foundations/test" in injected.source
    assert all(c.execution_count for c in code)
    assert "Report `00_foundations` / `test`" in nb.cells[0].source
    # the text bar's redraws are collapsed to its final state in the report
    streams = [o for c in code for o in c.outputs if o.output_type == "stream"]
    assert not any("\r" in o.text for o in streams)
    bars = [ln for o in streams for ln in o.text.splitlines() if re.match(r"gpt: +\d+%\|", ln)]
    assert len(bars) == 1 and re.match(r"gpt: 100%\|#+\| 20/20", bars[0]), bars

    # the HTML: the same run, figures embedded
    html = (run / "00_foundations.html").read_text()
    assert "data:image/png;base64" in html
    assert f"{metrics['val_loss']:.4f}" in html or f"{metrics['val_loss']:.3f}" in html
    assert list(run.glob("*.png")), "the notebook's figures land in the report"
    assert not heavy_files(run), "checkpoints must not be kept in reports"

    # the local index row agrees with metrics.json
    row = index_rows(reports / "local")["00_foundations", "test"]
    assert row["status"] == "ok"
    assert row["val loss"] == f"{metrics['val_loss']:.4f}"
    assert row["steps"] == "20"
    assert row["corpus"] == metrics["corpus"]
    assert row["hardware"] == metrics["device"]
    assert row["bits per char/byte"].startswith(f"{metrics['val_bpc']:.3f}")
    assert "(00_foundations/test/00_foundations.html)" in row["report"]
    assert "(00_foundations/test/00_foundations.ipynb)" in row["report"]


# --------------------------------------------------------------------------- failures


def test_failed_notebook_writes_report_exits_1_and_keeps_older_runs(tmp_path):
    notebooks = tmp_path / "nbs"
    write_tiny_notebook(notebooks)
    reports = tmp_path / "reports"
    args = ("--notebooks-dir", str(notebooks), "--reports-dir", str(reports))

    good = cli("01_tiny", "-p", "steps", "4", "--run-name", "r1", *args)
    assert good.returncode == 0, good.stderr
    local = reports / "local"
    good_dir = local / "01_tiny" / "r1"
    good_metrics = (good_dir / "metrics.json").read_text()
    assert json.loads(good_metrics)["steps"] == 4
    assert not heavy_files(good_dir) and (good_dir / "curve.png").exists()

    # a failing rerun under the same name: report beside it, the good run untouched
    bad = cli("01_tiny", "-p", "fail", "True", "--run-name", "r1", *args)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("physllm report: error: 1 of 1")
    assert "deliberate failure" in bad.stderr
    failed_dir = local / "01_tiny" / "r1-failed"
    assert (good_dir / "metrics.json").read_text() == good_metrics
    assert json.loads((good_dir / "run.json").read_text())["status"] == "ok"
    record = json.loads((failed_dir / "run.json").read_text())
    assert record["status"] == "failed" and "ValueError" in record["error"]
    html = (failed_dir / "01_tiny.html").read_text()
    assert "deliberate failure in cell three" in html and "FAILED" in html
    nb = nbformat.read(failed_dir / "01_tiny.ipynb", as_version=4)
    assert any(o.get("ename") == "ValueError" for c in nb.cells for o in c.get("outputs", []))
    assert not heavy_files(failed_dir)

    # a failure under a new name (through the env var this time) keeps both older folders
    other = cli(
        "01_tiny",
        "-p",
        "fail",
        "True",
        "--run-name",
        "r2",
        "--reports-dir",
        str(reports),
        PHYSLLM_NOTEBOOKS_DIR=str(notebooks),
    )
    assert other.returncode == 1
    rows = index_rows(local)
    assert rows["01_tiny", "r1"]["status"] == "ok"
    assert rows["01_tiny", "r1"]["val loss"] == f"{json.loads(good_metrics)['val_loss']:.4f}"
    assert rows["01_tiny", "r1-failed"]["status"] == "**FAILED**"
    assert rows["01_tiny", "r2"]["status"] == "**FAILED**"
    assert sorted(p.name for p in (local / "01_tiny").iterdir()) == ["r1", "r1-failed", "r2"]
    assert sorted(p.name for p in reports.iterdir()) == ["local"]  # no reference run written


def test_rerun_replaces_a_run_of_the_same_name(tmp_path):
    notebooks = tmp_path / "nbs"
    write_tiny_notebook(notebooks)
    reports = tmp_path / "reports"
    first = run_report(["01_tiny"], {"steps": 2}, "same", reports, notebooks)
    second = run_report(["01_tiny"], {"steps": 5}, "same", reports, notebooks)
    assert first[0]["status"] == second[0]["status"] == "ok"
    local = reports / "local"
    metrics = json.loads((local / "01_tiny" / "same" / "metrics.json").read_text())
    assert metrics["steps"] == 5
    assert [p.name for p in (local / "01_tiny").iterdir()] == ["same"]  # no backup left behind
    assert latest_runs(local)["01_tiny"]["html"] == "01_tiny/same/01_tiny.html"
    assert latest_runs(reports) == {}  # the reference index does not list local runs
    record = json.loads((local / "01_tiny" / "same" / "run.json").read_text())
    assert record["load_avg_1m"] >= 0 and record["cpu_count"] >= 1  # context for speed numbers


def test_resume_runs_into_a_killed_runs_folder_and_keeps_what_it_wrote(tmp_path):
    notebooks = tmp_path / "nbs"
    write_tiny_notebook(notebooks)
    reports = tmp_path / "reports"
    run_report(["01_tiny"], {"steps": 2}, "same", reports, notebooks)
    folder = reports / "local" / "01_tiny" / "same"
    # a run killed midway: its folder holds what it had written (a protocol's finished runs)
    # and no run.json; an older good run was moved aside before it started
    older = folder.with_name(".same.previous")
    older.mkdir()
    (folder / "run.json").rename(older / "run.json")
    (folder / "finished_work.csv").write_text("kept\n")
    with pytest.raises(PhysllmError, match="needs --run-name"):
        run_report(["01_tiny"], {"steps": 3}, None, reports, notebooks, resume=True)
    [record] = run_report(["01_tiny"], {"steps": 3}, "same", reports, notebooks, resume=True)
    assert record["status"] == "ok" and (folder / "finished_work.csv").read_text() == "kept\n"
    assert json.loads((folder / "metrics.json").read_text())["steps"] == 3
    assert [p.name for p in folder.parent.iterdir()] == ["same"]  # the older one dropped
    # without --resume the same folder starts empty
    run_report(["01_tiny"], {"steps": 3}, "same", reports, notebooks)
    assert not (folder / "finished_work.csv").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("no_such_notebook",),
        ("01_tiny", "-p", "steps"),  # -p needs KEY VALUE
        ("01_tiny", "-p", "stepz", "3"),  # not a parameter of the notebook
        ("01_tiny", "-p", "out_dir", "x"),  # set by the command
        ("01_tiny", "--run-name", "../escape"),
        ("--reference",),  # needs NAMES
        ("--replace",),
        ("--allow-dirty",),
        ("--resume",),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args):
    notebooks = tmp_path / "nbs"
    write_tiny_notebook(notebooks)
    reports = tmp_path / "reports"
    proc = cli(*args, "--notebooks-dir", str(notebooks), "--reports-dir", str(reports))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not reports.exists(), "bad input must not touch the reports folder"


# --------------------------------------------------------------------------- local and reference runs


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def fake_checkout(tmp_path: Path, reference_run: str) -> Path:
    """A git repository like the project's: its .gitignore and README, a committed reference
    run ``reports/01_tiny/<reference_run>/`` and the index and README tables built from it."""
    repo = tmp_path / "repo"
    ref = repo / "reports" / "01_tiny" / reference_run
    ref.mkdir(parents=True)
    (ref / "run.json").write_text(json.dumps({"status": "ok", "started": "2026-01-01T00:00:00Z"}))
    (ref / "metrics.json").write_text(json.dumps({"model": "gpt", "steps": 99, "val_loss": 1.5}))
    (ref / "01_tiny.html").write_text("<p>the reference run</p>")
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    shutil.copy(REPO / "README.md", repo / "README.md")  # has generated sections
    rebuild_index(repo / "reports")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "reference")
    return repo


def tracked_bytes(repo: Path) -> dict[str, bytes]:
    return {name: (repo / name).read_bytes() for name in git(repo, "ls-files").split()}


def test_plain_run_writes_a_new_local_folder_and_changes_no_tracked_file(tmp_path):
    notebooks = tmp_path / "nbs"
    write_tiny_notebook(notebooks)
    repo = fake_checkout(tmp_path, hardware_tag())
    before = tracked_bytes(repo)
    data = tmp_path / "data"
    data.mkdir()
    (data / "tinyshakespeare.txt").write_text("First Citizen:\nBefore we proceed any further.\n")

    proc = cli(
        "01_tiny",
        "--notebooks-dir",
        str(notebooks),
        "--reports-dir",
        str(repo / "reports"),
        PHYSLLM_DATA_DIR=str(data),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the first line printed states the corpus (the notebook's corpus is "default")
    first = proc.stdout.splitlines()[0]
    assert first.startswith("corpus: TinyShakespeare") and str(data) in first, first
    # progress while it ran: a line per code cell, and the cells' own output
    assert re.search(r"^01_tiny cell 3/3 \[0:\d\d\] import json$", proc.stderr, re.M)
    assert "trained 3" in proc.stderr

    # nothing tracked changed; the new run is ignored by git, not untracked clutter
    assert git(repo, "status", "--porcelain") == ""
    assert tracked_bytes(repo) == before
    assert "!! reports/local/" in git(repo, "status", "--porcelain", "--ignored")
    runs = list((repo / "reports" / "local" / "01_tiny").iterdir())
    assert len(runs) == 1
    assert re.fullmatch(rf"{hardware_tag()}-\d{{8}}T\d{{6}}Z-\S+", runs[0].name), runs[0].name
    record = json.loads((runs[0] / "run.json").read_text())
    assert record["status"] == "ok" and record["kind"] == "local"
    assert "--run-name" not in report_line(runs[0])  # a rerun gets a new folder again
    row = index_rows(repo / "reports" / "local")["01_tiny", runs[0].name]
    assert row["steps"] == "3"


def report_line(run: Path) -> str:
    """The command in the executed notebook's header cell."""
    nb = nbformat.read(run / f"{run.parent.name}.ipynb", as_version=4)
    return re.search(r"generated by `([^`]+)`", nb.cells[0].source).group(1)


def test_two_plain_runs_in_the_same_second_get_different_folders(tmp_path, monkeypatch):
    import datetime as dt

    notebooks = tmp_path / "nbs"
    write_tiny_notebook(notebooks)
    reports = tmp_path / "reports"
    frozen = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    monkeypatch.setattr(reports_mod, "utc_now", lambda: frozen)
    first = run_report(["01_tiny"], {"steps": 2}, None, reports, notebooks)[0]
    second = run_report(["01_tiny"], {"steps": 5}, None, reports, notebooks)[0]
    a, b = Path(first["path"]), Path(second["path"])
    assert a.parent == b.parent == reports / "local" / "01_tiny"
    assert "-steps2-20260102T030405Z-" in a.name and "-steps5-20260102T030405Z-" in b.name
    third = run_report(["01_tiny"], {"steps": 2}, None, reports, notebooks)[0]
    c = Path(third["path"])
    assert c.name == a.name + "-2"  # same parameters, same second: a suffix, not a clash
    assert json.loads((a / "metrics.json").read_text())["steps"] == 2
    assert json.loads((c / "metrics.json").read_text())["steps"] == 2
    assert set(index_rows(reports / "local")) == {("01_tiny", p.name) for p in (a, b, c)}
    assert not (reports / "01_tiny").exists() and not (reports / "README.md").exists()


def test_reference_run_is_written_or_replaced_only_when_asked(tmp_path):
    notebooks = tmp_path / "nbs"
    write_tiny_notebook(notebooks)
    hw = hardware_tag()
    repo = fake_checkout(tmp_path, hw)
    reports = repo / "reports"
    args = ("--notebooks-dir", str(notebooks), "--reports-dir", str(reports))
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}

    refused = cli("01_tiny", "--reference", *args)
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "--replace" in refused.stderr and "Traceback" not in refused.stderr
    after = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert after == before, "a refused reference run must touch nothing"

    replaced = cli("01_tiny", "--replace", *args)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    ref = reports / "01_tiny" / hw
    metrics = json.loads((ref / "metrics.json").read_text())
    assert metrics["steps"] == 3  # the notebook's run, not the old 99
    assert json.loads((ref / "run.json").read_text())["kind"] == "reference"
    assert report_line(ref).endswith(f"--reference --run-name {hw}")
    row = index_rows(reports)["01_tiny", hw]
    assert row["steps"] == "3" and row["val loss"] == f"{metrics['val_loss']:.4f}"
    status = git(repo, "status", "--porcelain")
    assert f" M reports/01_tiny/{hw}/metrics.json" in status and " M reports/README.md" in status
    assert not (reports / "local").exists()
    record = json.loads((ref / "run.json").read_text())  # built from the fixture's commit
    assert record["reproducible"] is True
    assert record["git_sha"] == git(repo, "rev-parse", "--short", "HEAD").strip()

    # the next reference run needs this one committed first (tests/test_clean_tree.py)
    assert cli("01_tiny", "--reference", "-p", "steps", "4", *args).returncode == 2
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "the replaced run")
    # a reference run that does not exist yet needs --reference only
    fresh = cli("01_tiny", "--reference", "-p", "steps", "4", *args)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert (
        json.loads((reports / "01_tiny" / f"{hw}-steps4" / "metrics.json").read_text())["steps"]
        == 4
    )
    assert ("01_tiny", f"{hw}-steps4") in index_rows(reports)


def test_first_line_for_an_offline_default_corpus_says_it_falls_back(tmp_path):
    if (REPO / "data" / "tinyshakespeare.txt").exists():
        pytest.skip("data/tinyshakespeare.txt is here: default does not fall back on this machine")
    script = "from physllm.reporting import corpus_line; print(corpus_line({'nb': {}}, {'corpus': 'default'}))"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PHYSLLM_DATA_DIR": str(tmp_path), "PHYSLLM_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "TinyShakespeare not found, using pydocs (offline)"


def test_corpus_line_names_explicit_corpora():
    assert corpus_line({"a": {"corpus": "default"}}, {"corpus": "pydocs"}) == "corpus: pydocs"
    line = corpus_line({"a": {"corpus": "hf:x/y"}, "b": {"corpus": "pydocs"}, "c": {}}, {})
    assert line == (
        "corpus: hf:x/y [a]; corpus: pydocs [b]; corpus: chosen inside the notebook [c]"
    )


TRAIN_SNIPPET = """
import sys
from physllm.training import make_config, train
cfg = make_config("gpt", corpus=sys.argv[1], out_dir=sys.argv[2], steps=4, n_layer=1, n_head=1,
                  n_embd=16, block_size=16, batch_size=2, eval_iters=1, warmup_steps=1,
                  progress=False, tensorboard=False)
train(cfg)
"""


@pytest.mark.parametrize("mode", ["text", "auto"])
def test_report_progress_mode_makes_the_training_bar_text_on_stderr(
    tmp_path, small_text_file, mode
):
    # notebooks pass progress=False; a report run (PHYSLLM_PROGRESS=text) still shows the bar
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN_SNIPPET, str(small_text_file), str(tmp_path / "out")],
        capture_output=True,  # bytes: text mode would turn the bar's \r into newlines
        env={**os.environ, "PHYSLLM_PROGRESS": mode},
        timeout=300,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr[-3000:]
    bar = re.search(r"\rgpt: 100%\|##########\| 4/4 \[[^\r\n]*", stderr)
    if mode == "text":
        assert bar, stderr
        assert bar.group(0).isascii()
    else:
        assert bar is None and "%|" not in stderr, stderr


def test_bad_progress_mode_is_a_physllm_error(monkeypatch):
    from physllm.progress import progress_bar

    monkeypatch.setenv("PHYSLLM_PROGRESS", "loud")
    with pytest.raises(PhysllmError, match="PHYSLLM_PROGRESS"):
        progress_bar(3, "x")


# --------------------------------------------------------------------------- pieces


def test_stream_outputs_keep_what_a_terminal_shows():
    def stream(name, text):
        return {"output_type": "stream", "name": name, "text": text}

    image = {"output_type": "display_data", "data": {"text/plain": "<Figure>"}}
    outputs = [
        stream("stderr", "corpus notice\n"),
        stream("stderr", "\rgpt:   0%|   | 0/4"),
        stream("stderr", "\rgpt:  50%|#  | 2/4"),
        stream("stderr", "\rgpt: 100%|## | 4/4\n"),
        stream("stdout", "done\n"),
        image,
        stream("stdout", "after\n"),
    ]
    assert reports_mod.coalesce_streams(outputs) == [
        stream("stderr", "corpus notice\ngpt: 100%|## | 4/4\n"),
        stream("stdout", "done\n"),
        image,
        stream("stdout", "after\n"),
    ]


def test_cell_lines_name_the_code_not_nbval_markers():
    source = "\n# NBVAL_IGNORE_OUTPUT\nresult = train(cfg)  # the main run\n"
    assert reports_mod.first_source_line(source) == "result = train(cfg)  # the main run"
    assert reports_mod.first_source_line("x = 1" * 40).endswith("...")


def test_parameters_are_typed_like_papermill():
    assert parse_value("20") == 20 and isinstance(parse_value("20"), int)
    assert parse_value("3e-4") == pytest.approx(3e-4)
    assert parse_value("True") is True and parse_value("false") is False
    assert parse_value("None") is None
    assert parse_value("shakespeare") == "shakespeare"
    assert parse_parameters([["steps", "20"], ["preset", "gpu"]]) == {"steps": 20, "preset": "gpu"}
    with pytest.raises(PhysllmError):
        parse_parameters([["not-a-name", "1"]])


def test_default_run_name_is_hardware_plus_overrides():
    assert default_run_name({}, "cpu") == "cpu"
    assert default_run_name({"steps": 20}, "cpu") == "cpu-steps20"
    assert default_run_name({"preset": "gpu"}, "gpu") == "gpu"
    assert default_run_name({"preset": "cpu", "lr": 0.001}, "gpu") == "gpu-lr0.001-presetcpu"
    assert default_run_name({"corpus": "hf:a/b"}, "cpu") == "cpu-corpushf_a_b"


def test_index_is_rebuilt_from_the_folders_alone(tmp_path):
    run = tmp_path / "02_x" / "cpu"
    run.mkdir(parents=True)
    metrics = {"model": "ngt", "params": 1_234_567, "corpus": "shakespeare", "steps": 100}
    metrics |= {"val_loss": 1.23456, "val_bpc": 1.781, "bpc_unit": "char", "device": "cpu (x)"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / ".hidden" / "run").mkdir(parents=True)
    path = rebuild_index(tmp_path)
    text = path.read_text()
    assert "do not edit by hand" in text
    row = index_rows(tmp_path)["02_x", "cpu"]
    assert row["val loss"] == "1.2346" and row["params"] == "1.23M" and row["model"] == "ngt"
    assert row["report"] == "[metrics.json](02_x/cpu/metrics.json)"  # no notebook ran there
    assert [r["notebook"] for r in collect_runs(tmp_path)] == ["02_x"]
    assert rebuild_index(tmp_path).read_text() == text  # deterministic: rebuilding changes nothing
