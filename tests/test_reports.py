"""``python -m physllm report``: papermill runs into reports/<notebook>/<run>/ and the index."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from physllm.errors import PhysllmError
from physllm.reports import (
    collect_runs,
    default_run_name,
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
                'steps = 3\nfail = False\nout_dir = "runs/tiny"', metadata={"tags": ["parameters"]}
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
    import os

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
    run = reports / "00_foundations" / "test"

    metrics = json.loads((run / "metrics.json").read_text())
    record = json.loads((run / "run.json").read_text())
    assert metrics["steps"] == 20 and metrics["model"] == "gpt"
    assert record["status"] == "ok" and record["parameters"] == {"steps": 20}
    assert record["hardware"] == metrics["device"]

    # the executed notebook: every code cell ran, with the injected parameters
    nb = nbformat.read(run / "00_foundations.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    injected = next(c for c in code if "injected-parameters" in c.metadata.get("tags", []))
    assert "steps = 20" in injected.source and "reports/00_foundations/test" in injected.source
    assert all(c.execution_count for c in code)
    assert "Report `00_foundations` / `test`" in nb.cells[0].source

    # the HTML: the same run, figures embedded
    html = (run / "00_foundations.html").read_text()
    assert "data:image/png;base64" in html
    assert f"{metrics['val_loss']:.4f}" in html or f"{metrics['val_loss']:.3f}" in html
    assert list(run.glob("*.png")), "the notebook's figures land in the report"
    assert not heavy_files(run), "checkpoints must not be kept in reports"

    # the index row agrees with metrics.json
    row = index_rows(reports)["00_foundations", "test"]
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
    good_dir = reports / "01_tiny" / "r1"
    good_metrics = (good_dir / "metrics.json").read_text()
    assert json.loads(good_metrics)["steps"] == 4
    assert not heavy_files(good_dir) and (good_dir / "curve.png").exists()

    # a failing rerun under the same name: report beside it, the good run untouched
    bad = cli("01_tiny", "-p", "fail", "True", "--run-name", "r1", *args)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("physllm report: error: 1 of 1")
    assert "deliberate failure" in bad.stderr
    failed_dir = reports / "01_tiny" / "r1-failed"
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
    rows = index_rows(reports)
    assert rows["01_tiny", "r1"]["status"] == "ok"
    assert rows["01_tiny", "r1"]["val loss"] == f"{json.loads(good_metrics)['val_loss']:.4f}"
    assert rows["01_tiny", "r1-failed"]["status"] == "**FAILED**"
    assert rows["01_tiny", "r2"]["status"] == "**FAILED**"
    assert sorted(p.name for p in (reports / "01_tiny").iterdir()) == ["r1", "r1-failed", "r2"]


def test_rerun_replaces_a_run_of_the_same_name(tmp_path):
    notebooks = tmp_path / "nbs"
    write_tiny_notebook(notebooks)
    reports = tmp_path / "reports"
    first = run_report(["01_tiny"], {"steps": 2}, "same", reports, notebooks)
    second = run_report(["01_tiny"], {"steps": 5}, "same", reports, notebooks)
    assert first[0]["status"] == second[0]["status"] == "ok"
    metrics = json.loads((reports / "01_tiny" / "same" / "metrics.json").read_text())
    assert metrics["steps"] == 5
    assert [p.name for p in (reports / "01_tiny").iterdir()] == ["same"]  # no backup left behind
    assert latest_runs(reports)["01_tiny"]["html"] == "01_tiny/same/01_tiny.html"
    record = json.loads((reports / "01_tiny" / "same" / "run.json").read_text())
    assert record["load_avg_1m"] >= 0 and record["cpu_count"] >= 1  # context for speed numbers


@pytest.mark.parametrize(
    "args",
    [
        ("no_such_notebook",),
        ("01_tiny", "-p", "steps"),  # -p needs KEY VALUE
        ("01_tiny", "-p", "stepz", "3"),  # not a parameter of the notebook
        ("01_tiny", "-p", "out_dir", "x"),  # set by the command
        ("01_tiny", "--run-name", "../escape"),
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


# --------------------------------------------------------------------------- pieces


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
