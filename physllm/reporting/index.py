"""The reports' indexes: ``reports/README.md`` (the committed reference runs) and
``reports/local/README.md`` (a user's own runs), one table row per run folder.

Both are rebuilt from every ``run.json`` and ``metrics.json`` after each report
command (:func:`rebuild_index`); they are generated, never edited. Rebuilding the
reference index also regenerates the README's result tables
(:func:`physllm.reporting.readme.update_readme`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from physllm.data import repo_root
from physllm.fmt import format_seconds, millions, read_json
from physllm.reporting.readme import reproducibility, update_readme

INDEX_NAME = "README.md"
LOCAL_DIR = "local"  # reports/local/: a user's own runs, gitignored (physllm.reporting.runner)


def default_reports_dir() -> Path:
    """``<repo>/reports`` (``./reports`` outside a checkout)."""
    root = repo_root()
    return (root or Path.cwd()) / "reports"


def local_reports_dir(reports_dir: str | os.PathLike) -> Path:
    """Where local (gitignored) runs of ``reports_dir`` go: ``reports_dir/local``."""
    return Path(reports_dir) / LOCAL_DIR


def collect_runs(reports_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every run under ``reports_dir`` (a folder with ``run.json`` or ``metrics.json``),
    sorted by notebook then run: ``run.json``'s fields plus ``metrics`` (the dict), and
    ``html``, ``ipynb``, ``json`` (paths relative to ``reports_dir``, or None). The local
    runs' folder (:data:`LOCAL_DIR`) is not a notebook: its runs have their own index."""
    root = Path(reports_dir)
    rows = []
    for folder in sorted(root.glob("*/*")):
        if not folder.is_dir() or folder.name.startswith(".") or folder.parent.name.startswith("."):
            continue
        if folder.parent.name == LOCAL_DIR:
            continue
        run = read_json(folder / "run.json")
        metrics = read_json(folder / "metrics.json")
        if not run and not metrics:
            continue
        notebook = folder.parent.name
        row = {
            "notebook": notebook,
            "run": folder.name,
            "status": "ok",
            "parameters": {},
            **run,
            "metrics": metrics,
        }
        row["run"] = folder.name  # the folder is the truth (a failed rerun was renamed)
        for kind in ("html", "ipynb"):
            path = folder / f"{notebook}.{kind}"
            row[kind] = path.relative_to(root).as_posix() if path.exists() else None
        has_metrics = (folder / "metrics.json").exists()
        row["json"] = (
            (folder / "metrics.json").relative_to(root).as_posix() if has_metrics else None
        )
        rows.append(row)
    return rows


def latest_runs(reports_dir: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The newest successful run of each notebook (by ``run.json``'s start time), for
    README tables that link each notebook to its latest report."""
    latest: dict[str, dict[str, Any]] = {}
    for row in collect_runs(reports_dir or default_reports_dir()):
        if row["status"] != "ok" or not row.get("html"):
            continue
        best = latest.get(row["notebook"])
        if best is None or (row.get("started") or "") > (best.get("started") or ""):
            latest[row["notebook"]] = row
    return latest


def _cell(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def commit_cell(row: dict[str, Any]) -> str:
    """The commit a run was built from, and why it is not reproducible from it when not
    (a folder with no ``run.json``, such as a CLI run's, by its ``metrics.json``)."""
    if not row.get("git_sha"):
        row = {"git_sha": row["metrics"].get("git_sha")}
    why = reproducibility(row)
    sha = _cell(row.get("git_sha") or "unknown")
    return f"{sha}: **{why}**" if why else sha


def index_row(row: dict[str, Any]) -> list[str]:
    m = row["metrics"]
    val = m.get("val_loss")
    bpc = m.get("val_bpc")
    unit = m.get("bpc_unit", "token")
    status = "ok" if row["status"] == "ok" else "**FAILED**"
    targets = {"html": row.get("html"), "ipynb": row.get("ipynb"), "metrics.json": row.get("json")}
    links = " · ".join(f"[{label}]({path})" for label, path in targets.items() if path)
    started = row.get("started") or ""
    return [
        row["notebook"],
        row["run"],
        status,
        _cell(m.get("model")),
        millions(m.get("params")),
        _cell(m.get("corpus")),
        _cell(m.get("steps")),
        f"{val:.4f}" if isinstance(val, (int, float)) else "",
        f"{bpc:.3f} /{unit}" if isinstance(bpc, (int, float)) else "",
        f"{m['tokens_per_sec']:,.0f}" if isinstance(m.get("tokens_per_sec"), (int, float)) else "",
        _cell(m.get("device") or row.get("hardware")),
        started[:10],
        format_seconds(row.get("wall_s", m.get("wall_s"))),
        commit_cell(row),
        links,
    ]


INDEX_COLUMNS = [
    "notebook",
    "run",
    "status",
    "model",
    "params",
    "corpus",
    "steps",
    "val loss",
    "bits per char/byte",
    "tokens/s",
    "hardware",
    "date",
    "wall time",
    "commit",
    "report",
]


def write_index(root: Path, local: bool = False) -> Path:
    """Write ``root/README.md`` alone: one table row per run (see :func:`collect_runs`)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = collect_runs(root)
    if local:
        intro = [
            "# Local report runs",
            "",
            "<!-- Generated by `python -m physllm report`; do not edit by hand. -->",
            "",
            "Your own runs of `python -m physllm report NOTEBOOK`, each in a new folder "
            "`<notebook>/<hardware>-<UTC time>-<commit>/`. This folder is gitignored; the "
            "committed reference runs are indexed in [../README.md](../README.md). Generated "
            "from every `run.json` and `metrics.json` here: **do not edit by hand**.",
        ]
    else:
        intro = [
            "# Reports",
            "",
            "<!-- Generated by `python -m physllm report`; do not edit by hand. -->",
            "",
            "Generated by `python -m physllm report` from every `<notebook>/<run>/run.json` and "
            "`metrics.json` in this folder: **do not edit by hand**. These are the committed "
            "reference runs, written by `python -m physllm report NOTEBOOK --reference "
            "[--replace] [-p key value ...]` from a clean git checkout (`--allow-dirty`: marked "
            "not reproducible); a plain `python -m physllm report NOTEBOOK` "
            "writes a new local run under `local/` (gitignored) instead. Rebuild this page "
            "alone with `python -m physllm report`.",
        ]
    lines = [
        *intro,
        "",
        "Each run folder holds the executed notebook, a self-contained HTML copy, the notebook's "
        "`metrics.json` and figures, and `run.json` (parameters, status, hardware, wall time). "
        "Model, params, steps, losses and tokens/s are the notebook's main run (its `metrics.json`); "
        "wall time is the whole notebook's. Checkpoints are not kept. Commit: what `run.json` "
        "records of the checkout; a run built from uncommitted changes (or outside a git "
        "checkout) is marked not reproducible.",
        "",
    ]
    if rows:
        lines.append("| " + " | ".join(INDEX_COLUMNS) + " |")
        lines.append("|" + "|".join("---" for _ in INDEX_COLUMNS) + "|")
        lines.extend("| " + " | ".join(index_row(r)) + " |" for r in rows)
        failed = [r for r in rows if r["status"] != "ok"]
        if failed:
            lines += ["", "Failed runs:", ""]
            lines += [f"- `{r['notebook']}/{r['run']}`: {_cell(r.get('error'))}" for r in failed]
    else:
        lines.append("No runs yet.")
    path = root / INDEX_NAME
    tmp = path.with_name(f".{INDEX_NAME}.{os.getpid()}.tmp")  # atomic: reports may run side by side
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def rebuild_index(reports_dir: str | os.PathLike | None = None, local: bool = False) -> Path:
    """Write ``reports_dir/README.md`` (:func:`write_index`).

    The reference index (``local=False``) also regenerates the README beside
    ``reports_dir``; a local index (``reports/local/``) touches nothing else.
    """
    root = Path(reports_dir) if reports_dir else default_reports_dir()
    path = write_index(root, local)
    if local:
        return path
    # The README beside the reports folder has its result tables regenerated from
    # the reports (a README without the markers is left alone).
    update_readme(root.parent / "README.md", root)
    return path
