"""``python -m physllm report``: run notebooks with papermill into ``reports/``, rebuild the index.

One run of one notebook is one folder::

    <run folder>/
        <notebook>.ipynb    the executed notebook (papermill), a header cell on top
        <notebook>.html     the same, self-contained (nbconvert, images embedded)
        metrics.json        written by the notebook itself (``out_dir`` points here)
        *.png, *.html       the notebook's figures
        run.json            what the report command knows: parameters, status, times, hardware

Two places hold run folders, so that a user's run never touches a tracked file:

* **Reference runs**, committed: ``reports/<notebook>/<run>/``, indexed in the
  tracked ``reports/README.md``; the repository README's result tables are
  generated from them (:func:`physllm.readme.update_readme`). Only
  ``--reference`` writes here, into ``<run>`` = the hardware (``cpu``, ``gpu``)
  plus any overridden parameters (``-p steps 20`` on a CPU: ``cpu-steps20``)
  unless ``--run-name`` says otherwise. A reference run that exists already is
  an error (exit 2, nothing touched) unless ``--replace`` is given too
  (``--replace`` implies ``--reference``). Only a reference run rebuilds the
  tracked index and the README tables.
* **Local runs**, gitignored (``/reports/local/`` in ``.gitignore``):
  ``reports/local/<notebook>/<run>/``, indexed in ``reports/local/README.md``
  (:data:`LOCAL_DIR`). A plain ``python -m physllm report NB`` goes here, into
  a new folder ``<hardware>[-overrides]-<UTC time>-<commit>`` that no other run
  can have (:func:`claim_run_dir` creates it atomically and adds ``-2``,
  ``-3``... when two runs start in the same second). ``--run-name NAME`` names
  the local folder instead, and reruns into it.

The notebook gets ``out_dir=<run folder>`` as a papermill parameter, so
whatever it saves lands in the report. Checkpoints and data do not belong
there: after the run, every ``best/``, ``last/`` and ``tb/`` folder and every
``*.safetensors``, ``*.pt``, ``*.pth``, ``*.ckpt`` and ``*.bin`` file under the
run folder is deleted (:data:`HEAVY_DIRS`, :data:`HEAVY_SUFFIXES`).

A failed notebook still leaves its executed notebook and HTML (papermill marks
the failing cell), ``run.json`` says ``failed``, and the command exits with
status 1. It never deletes an older good run: when a rerun into a named
folder fails, the failed report goes to ``<run>-failed`` and the good one stays.

What the command prints: its first line states the corpus the run trains on
(:func:`corpus_line`: ``corpus: TinyShakespeare (<path>)``, or
``TinyShakespeare not found, using pydocs (offline)`` where ``default`` falls
back). While a notebook runs, the command streams to stderr one line per code
cell (its position and first source line) and the cells' own stdout and
stderr, and sets ``PHYSLLM_PROGRESS=text`` for the kernel, so the trainer's
bar is plain text there instead of a widget no one sees (:mod:`physllm.progress`).

The indexes are rebuilt from every ``run.json`` and ``metrics.json`` after each
command (:func:`rebuild_index`); they are generated, never edited.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from physllm.data import repo_root
from physllm.errors import PhysllmError
from physllm.train import git_sha

NOTEBOOKS_ENV = "PHYSLLM_NOTEBOOKS_DIR"  # where notebooks are looked up (tests point it elsewhere)
HEAVY_DIRS = ("best", "last", "tb")  # checkpoints and TensorBoard logs
HEAVY_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")  # weights, token memmaps
WARN_MB = 10.0  # a report folder bigger than this gets a warning: reports are committed
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}$")
INDEX_NAME = "README.md"
LOCAL_DIR = "local"  # reports/local/: a user's own runs, gitignored (the module docstring)
NBVAL_MARKER = re.compile(r"#\s*NBVAL_")  # "# NBVAL_IGNORE_OUTPUT" says nothing about a cell
ENGINE_NAME = "physllm-report"  # the papermill engine that says which cell runs


class ReportFailedError(PhysllmError):
    """A notebook raised; its report is written and the command exits with status 1."""

    exit_code = 1


# --------------------------------------------------------------------------- inputs


def default_notebooks_dir() -> Path:
    """``$PHYSLLM_NOTEBOOKS_DIR``, else the checkout's ``notebooks/``, else ``./notebooks``."""
    if os.environ.get(NOTEBOOKS_ENV):
        return Path(os.environ[NOTEBOOKS_ENV])
    root = repo_root()
    return (root or Path.cwd()) / "notebooks"


def default_reports_dir() -> Path:
    root = repo_root()
    return (root or Path.cwd()) / "reports"


def available_notebooks(notebooks_dir: Path) -> list[str]:
    """Stems of the runnable notebooks (``NN_name`` for ``NN_name.ipynb``), sorted."""
    return sorted(p.stem for p in notebooks_dir.glob("*.ipynb") if not p.name.startswith("."))


def resolve_names(names: Sequence[str], notebooks_dir: Path) -> list[str]:
    """``all`` or stems (``00_foundations``; a path or ``.ipynb``/``.py`` suffix is dropped)."""
    known = available_notebooks(notebooks_dir)
    out: list[str] = []
    for raw in names:
        if raw == "all":
            out.extend(n for n in known if n not in out)
            continue
        stem = Path(raw).name.removesuffix(".ipynb").removesuffix(".py")
        if stem not in known:
            choices = ", ".join(known) or "none found"
            raise PhysllmError(
                f"unknown notebook {raw!r} in {notebooks_dir}; choose from {choices}, or all"
            )
        if stem not in out:
            out.append(stem)
    if not out:
        raise PhysllmError(f"no notebooks to run in {notebooks_dir}")
    return out


def parse_value(text: str) -> Any:
    """papermill's ``-p`` typing, YAML-tolerant: True/False/None (any case, also null), int, float, str."""
    low = text.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_parameters(pairs: Sequence[Sequence[str]]) -> dict[str, Any]:
    """``[["steps", "20"], ...]`` -> ``{"steps": 20}``; names must be Python identifiers."""
    params: dict[str, Any] = {}
    for key, value in pairs:
        if not key.isidentifier():
            raise PhysllmError(f"parameter name {key!r} is not a Python identifier (-p NAME VALUE)")
        if key == "out_dir":
            raise PhysllmError("out_dir is set by the report command (reports/<notebook>/<run>)")
        params[key] = parse_value(value)
    return params


def check_parameters(notebook: Path, parameters: dict[str, Any]) -> dict[str, Any]:
    """Unknown names are an error when the notebook has a ``parameters`` cell (a typo otherwise
    runs the defaults silently). Returns the declared parameters and their default values."""
    import papermill as pm

    # papermill warns about every parameters-cell line it cannot type; that is noise here,
    # and it would come before the corpus line the command prints first
    pm_log = logging.getLogger("papermill")
    level = pm_log.level
    pm_log.setLevel(logging.ERROR)
    try:
        declared = pm.inspect_notebook(str(notebook))
    finally:
        pm_log.setLevel(level)
    unknown = sorted(set(parameters) - set(declared))
    if declared and unknown:
        raise PhysllmError(
            f"{notebook.stem} has no parameter(s) {', '.join(unknown)}; "
            f"it takes {', '.join(declared)}"
        )
    defaults = {}
    for key, info in declared.items():
        try:
            defaults[key] = ast.literal_eval(str(info.get("default")))
        except (ValueError, SyntaxError):  # an expression: keep its source text
            defaults[key] = info.get("default")
    return defaults


def describe_corpus(corpus: Any) -> str:
    """One line naming a corpus; for ``default``, what it resolves to here (and why)."""
    if corpus != "default":
        return f"corpus: {corpus}"
    from physllm import data

    notice = getattr(data, "default_corpus_notice", None)
    if notice is not None:
        return notice()
    # an older physllm.data without the notice: say the same thing from the resolution
    if data.resolve_default_corpus() == "shakespeare":
        return "corpus: TinyShakespeare"
    return "TinyShakespeare not found, using pydocs (offline)"


def corpus_line(defaults: dict[str, dict[str, Any]], parameters: dict[str, Any]) -> str:
    """What the run trains on, one line: ``defaults`` maps each notebook to its declared
    parameter defaults; ``-p corpus X`` overrides them all."""
    corpora: dict[str, list[str]] = {}
    for stem, declared in defaults.items():
        if "corpus" in parameters:
            corpus = parameters["corpus"]
        elif "corpus" in declared:
            corpus = declared["corpus"]
        else:
            corpus = None
        corpora.setdefault(str(corpus) if corpus is not None else "", []).append(stem)
    parts = []
    for corpus, stems in corpora.items():
        text = describe_corpus(corpus) if corpus else "corpus: chosen inside the notebook"
        parts.append(text if len(corpora) == 1 else f"{text} [{', '.join(stems)}]")
    return "; ".join(parts)


def hardware_tag() -> str:
    """``gpu`` when CUDA is available to this process, else ``cpu``."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def hardware_description() -> str:
    """The same words as ``metrics.json``'s ``device`` (used when a notebook wrote none)."""
    import torch

    from physllm.train import device_description

    return device_description(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def default_run_name(parameters: dict[str, Any], hardware: str | None = None) -> str:
    """``cpu`` / ``gpu``, then ``-keyvalue`` per parameter (sorted); a preset equal to the
    hardware (or ``auto``) is implied and left out: ``{"steps": 20}`` -> ``cpu-steps20``."""
    hardware = hardware or hardware_tag()
    parts = [hardware]
    for key in sorted(parameters):
        value = parameters[key]
        if key == "preset" and str(value) in (hardware, "auto"):
            continue
        parts.append(re.sub(r"[^A-Za-z0-9.+=]", "_", f"{key}{value}"))
    return "-".join(parts)[:100]


def validate_run_name(name: str) -> str:
    if not RUN_NAME.match(name) or name.endswith(".previous"):
        raise PhysllmError(
            f"run name {name!r} must be a plain folder name (letters, digits, . _ + = -)"
        )
    return name


def utc_now() -> dt.datetime:
    """The clock new run names read (a function, so tests can stop it)."""
    return dt.datetime.now(dt.timezone.utc)


def new_run_name(parameters: dict[str, Any], hardware: str | None = None) -> str:
    """A local run's base name: ``cpu[-overrides]-20260101T120000Z-<commit>``."""
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    sha = re.sub(r"[^A-Za-z0-9.+=-]", "_", git_sha())
    tail = f"-{stamp}-{sha}"
    return default_run_name(parameters, hardware)[: 90 - len(tail)] + tail


def claim_run_dir(parent: Path, base: str) -> Path:
    """Create and return ``parent/base``, or ``base-2``, ``base-3``... : the first that did not
    exist. ``mkdir`` is atomic, so two runs started at once never share a folder."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = parent / (base if n == 1 else f"{base}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise PhysllmError(f"no free run folder name for {base} in {parent}")


# --------------------------------------------------------------------------- one run


def first_source_line(source: str, limit: int = 80) -> str:
    """A cell's first non-blank line that is not an nbval marker, cut to ``limit`` characters."""
    lines = [ln.strip() for ln in source.splitlines()]
    line = next((ln for ln in lines if ln and not NBVAL_MARKER.match(ln)), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, m, s = seconds // 3600, seconds % 3600 // 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _announce_cells(nb_man: Any, stream: Any, label: str) -> None:
    """Make papermill's execution manager print ``label cell 3/24 [0:42] <first line>`` on
    ``stream`` as each code cell starts (papermill calls ``nb_man.cell_start`` per cell)."""
    code = [i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"]
    order = {index: n for n, index in enumerate(code, 1)}
    start, t0 = nb_man.cell_start, time.perf_counter()

    def cell_start(cell: Any, cell_index: int | None = None, **kwargs: Any) -> Any:
        if cell_index in order:
            print(
                f"{label} cell {order[cell_index]}/{len(code)} [{_clock(time.perf_counter() - t0)}]"
                f" {first_source_line(cell.source)}",
                file=stream,
                flush=True,
            )
        return start(cell, cell_index, **kwargs)

    nb_man.cell_start = cell_start


def _register_engine() -> None:
    """papermill's nbclient engine, plus the per-cell lines of :func:`_announce_cells`."""
    from papermill.engines import NBClientEngine, papermill_engines

    class StreamingEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(
            cls, nb_man: Any, kernel_name: str, cell_log: Any = None, label: str = "", **kwargs: Any
        ) -> Any:
            if cell_log is not None:
                _announce_cells(nb_man, cell_log, label)
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(ENGINE_NAME, StreamingEngine)


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for what starts inside (the kernel inherits them), then
    restore them."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute(
    notebook: Path,
    output: Path,
    parameters: dict[str, Any],
    kernel_name: str = "python3",
    progress: bool = False,
    log_output: bool = False,
) -> str | None:
    """Run ``notebook`` with papermill into ``output`` from the repository root.

    ``progress`` draws papermill's bar over cells; ``log_output`` streams to stderr a
    line per code cell as it starts and the cells' stdout and stderr as they come,
    with the kernel's training bars made plain text (``PHYSLLM_PROGRESS=text``).
    Returns None on success, else one line saying where and why it failed
    (papermill has still written ``output``, with the failing cell marked).
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from physllm.progress import PROGRESS_ENV

    streaming: dict[str, Any] = {}
    env: dict[str, str] = {}
    if log_output:
        _register_engine()
        err = sys.stderr  # read now: tests capture it
        streaming = dict(
            engine_name=ENGINE_NAME,
            cell_log=err,
            label=notebook.stem,
            stdout_file=err,  # the command's stdout stays its own: corpus line, results
            stderr_file=err,
        )
        env = {PROGRESS_ENV: "text"}
    try:
        with _environ(**env):
            pm.execute_notebook(
                str(notebook),
                str(output),
                parameters=parameters,
                cwd=str(repo_root() or Path.cwd()),
                kernel_name=kernel_name,
                progress_bar=progress,
                **streaming,
            )
    except PapermillExecutionError as err:
        return f"cell In [{err.exec_count}]: {err.ename}: {first_line(err.evalue)}".rstrip(": ")
    except Exception as err:  # a dead kernel, a missing kernel spec, a timeout...
        return f"{type(err).__name__}: {first_line(err)}".rstrip(": ")
    return None


def first_line(text: Any, limit: int = 300) -> str:
    lines = str(text).strip().splitlines()
    return lines[0][:limit] if lines else ""


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def report_command(record: dict[str, Any]) -> str:
    """The command line that reproduces a run (a local run without ``--run-name`` gets a
    new folder again, so its name is left out)."""
    parts = ["python -m physllm report", record["notebook"]]
    parts += [f"-p {k} {v}" for k, v in record["parameters"].items()]
    if record.get("kind", "reference") == "reference":
        parts.append("--reference")
    if record.get("named", True):
        parts.append(f"--run-name {record['run']}")
    return " ".join(parts)


def header_markdown(record: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The cell put on top of an executed notebook: what ran, where, how long, how it ended."""
    status = (
        f"**FAILED** at {record['error']}"
        if record["status"] == "failed"
        else "finished without errors"
    )
    steps = f", {metrics['steps']} training steps" if "steps" in metrics else ""
    load = (
        f" (load average {record['load_avg_1m']} on {record['cpu_count']} cores at the end)"
        if record.get("load_avg_1m") is not None
        else ""
    )
    return (
        f"> **Report `{record['notebook']}` / `{record['run']}`**, generated by "
        f"`{report_command(record)}` on {record['hardware']}{load}{steps}; notebook wall time "
        f"{format_seconds(record['wall_s'])}; started {record['started']}; "
        f"physllm {record['git_sha']}. Status: {status}."
    )


def collapse_carriage_returns(text: str) -> str:
    """What a terminal shows of ``text``: each line keeps what follows its last ``\\r``
    (a text progress bar's redraws collapse to its final state)."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n"))


def coalesce_streams(outputs: list[Any]) -> list[Any]:
    """Merge each run of consecutive stream outputs of one name (stdout, stderr) into one,
    then collapse its carriage returns: the kernel sends every redraw of a text bar as its
    own output, and the report keeps what a terminal would show, the bar's final state."""
    merged: list[Any] = []
    for output in outputs:
        last = merged[-1] if merged else None
        if (
            output.get("output_type") == "stream"
            and last is not None
            and last.get("output_type") == "stream"
            and last.get("name") == output.get("name")
        ):
            last["text"] += output["text"]
        else:
            merged.append(output)
    for output in merged:
        if output.get("output_type") == "stream" and "\r" in output["text"]:
            output["text"] = collapse_carriage_returns(output["text"])
    return merged


def add_header(notebook_path: Path, text: str) -> None:
    """Put the report header cell on top; keep only the final state of text progress bars."""
    import nbformat

    nb = nbformat.read(notebook_path, as_version=4)
    for cell in nb.cells:
        if cell.get("outputs"):
            cell["outputs"] = coalesce_streams(cell["outputs"])
    cell = nbformat.v4.new_markdown_cell(text)
    cell.metadata["tags"] = ["report-header"]
    nb.cells.insert(0, cell)
    nbformat.write(nb, notebook_path)


def export_html(notebook_path: Path, html_path: Path) -> None:
    """A self-contained HTML page of the executed notebook (images embedded)."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(embed_images=True).from_filename(str(notebook_path))
    html_path.write_text(body, encoding="utf-8")


def error_html(html_path: Path, notebook: str, error: str) -> None:
    """Used when papermill could not even write the executed notebook."""
    import html

    html_path.write_text(
        f"<!doctype html><meta charset='utf-8'><title>{notebook}: failed</title>"
        f"<h1>{notebook}: FAILED</h1><pre>{html.escape(error)}</pre>",
        encoding="utf-8",
    )


def clean_run_dir(folder: Path) -> list[Path]:
    """Delete checkpoints, TensorBoard logs and data files under ``folder``; return what went."""
    removed: list[Path] = []
    for parent, dirs, files in os.walk(folder):
        for name in [d for d in dirs if d in HEAVY_DIRS]:
            shutil.rmtree(Path(parent) / name)
            removed.append(Path(parent) / name)
            dirs.remove(name)  # do not walk into what is gone
        for name in files:
            if name.endswith(HEAVY_SUFFIXES):
                (Path(parent) / name).unlink()
                removed.append(Path(parent) / name)
    return sorted(removed)


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _restore_interrupted(final: Path, backup: Path) -> None:
    """A previous command was killed mid-run: put the run it had moved aside back."""
    if not backup.exists():
        return
    if (final / "run.json").exists():
        shutil.rmtree(backup)
    else:
        if final.exists():
            shutil.rmtree(final)
        backup.rename(final)


def run_one(
    name: str,
    parameters: dict[str, Any],
    final: Path,
    notebooks_dir: Path,
    kernel_name: str = "python3",
    progress: bool = False,
    log_output: bool = False,
    claimed: bool = False,
    kind: str = "local",
    named: bool = True,
) -> dict[str, Any]:
    """Execute one notebook into the run folder ``final``; return its ``run.json`` record.

    ``claimed``: ``final`` was just created empty for this run (:func:`claim_run_dir`).
    Otherwise an existing ``final`` is replaced, and kept aside until the new run is
    known to be good. ``kind`` (``reference`` or ``local``) and ``named`` (the folder
    name was asked for) go into ``run.json`` and its reproducing command.
    """
    run_name = final.name
    backup = final.with_name(f".{run_name}.previous")
    if not claimed:
        _restore_interrupted(final, backup)
        if final.exists():  # keep the older run aside until this one is known to be good
            final.rename(backup)
        final.mkdir(parents=True)

    root = repo_root()
    try:  # a path inside the checkout is passed relative to its root: reports read the same anywhere
        out_dir = str(final.resolve().relative_to(root)) if root else str(final.resolve())
    except ValueError:
        out_dir = str(final.resolve())
    executed = final / f"{name}.ipynb"
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    try:
        error = execute(
            notebooks_dir / f"{name}.ipynb",
            executed,
            {**parameters, "out_dir": out_dir},
            kernel_name=kernel_name,
            progress=progress,
            log_output=log_output,
        )
    except BaseException:  # Ctrl-C: drop the half-run, put the older run back
        shutil.rmtree(final, ignore_errors=True)
        if backup.exists():
            backup.rename(final)
        raise
    wall_s = time.perf_counter() - t0
    removed = clean_run_dir(final)

    metrics = read_json(final / "metrics.json")
    record = {
        "notebook": name,
        "run": run_name,
        "kind": kind,
        "named": named,
        "parameters": parameters,
        "status": "failed" if error else "ok",
        "error": error,
        "started": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "wall_s": round(wall_s, 1),
        "hardware": metrics.get("device") or hardware_description(),
        # speed numbers on a shared CPU depend on what else ran: say how busy the machine was
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "removed": [str(p.relative_to(final)) for p in removed],
    }
    if executed.exists():
        add_header(executed, header_markdown(record, metrics))
        try:
            export_html(executed, final / f"{name}.html")
        except Exception as err:  # nbconvert trouble must not lose the run
            error_html(final / f"{name}.html", name, f"HTML export failed: {err}")
    else:
        error_html(final / f"{name}.html", name, error or "no output notebook")

    if error and backup.exists() and read_json(backup / "run.json").get("status", "ok") == "ok":
        # the older run was good: it stays where it was, the failure goes beside it
        failed = final.with_name(f"{run_name}-failed")
        if failed.exists():
            shutil.rmtree(failed)
        final.rename(failed)
        backup.rename(final)
        final = failed
        record["run"] = failed.name
    elif backup.exists():
        shutil.rmtree(backup)
    (final / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    record["path"] = str(final)
    record["metrics"] = metrics
    record["size_mb"] = folder_mb(final)
    return record


def local_reports_dir(reports_dir: str | os.PathLike) -> Path:
    """Where local (gitignored) runs of ``reports_dir`` go: ``reports_dir/local``."""
    return Path(reports_dir) / LOCAL_DIR


def run_report(
    names: Sequence[str],
    parameters: dict[str, Any] | None = None,
    run_name: str | None = None,
    reports_dir: str | os.PathLike | None = None,
    notebooks_dir: str | os.PathLike | None = None,
    kernel_name: str = "python3",
    progress: bool = False,
    log_output: bool = False,
    reference: bool = False,
    replace: bool = False,
    announce: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run each notebook in ``names`` into a run folder and rebuild that folder's index.

    Without ``reference``: a local run, ``reports_dir/local/<name>/<run>/``, in a new
    folder (:func:`new_run_name`) unless ``run_name`` names one; only the local index
    is rebuilt. With ``reference``: ``reports_dir/<name>/<run>/`` (``run_name``, else
    :func:`default_run_name`), which must not exist yet unless ``replace``
    (``replace`` implies ``reference``); the tracked index and the README tables
    beside ``reports_dir`` are rebuilt. All input is checked before anything runs or
    is written; then ``announce`` (if given) gets the :func:`corpus_line`.

    Returns one record per notebook (``run.json``'s content plus ``path``,
    ``metrics`` and ``size_mb``); a failed notebook has ``status == "failed"``.
    """
    parameters = dict(parameters or {})
    reference = reference or replace
    if "out_dir" in parameters:
        raise PhysllmError("out_dir is set by the report command (reports/<notebook>/<run>)")
    nb_dir = Path(notebooks_dir) if notebooks_dir else default_notebooks_dir()
    out_root = Path(reports_dir) if reports_dir else default_reports_dir()
    if out_root.exists() and not out_root.is_dir():
        raise PhysllmError(f"reports folder {out_root} is a file")
    stems = resolve_names(names, nb_dir)
    defaults = {stem: check_parameters(nb_dir / f"{stem}.ipynb", parameters) for stem in stems}
    if run_name is not None:
        validate_run_name(run_name)

    if reference:
        name = validate_run_name(run_name or default_run_name(parameters))
        targets = {stem: out_root / stem / name for stem in stems}
        existing = [p for p in targets.values() if p.exists()]
        if existing and not replace:
            raise PhysllmError(
                f"{', '.join(map(str, existing))} is a committed reference run; add --replace to "
                "overwrite it, or drop --reference to write a new local run"
            )
        index_root = out_root
    else:
        index_root = local_reports_dir(out_root)
        targets = {stem: index_root / stem / run_name for stem in stems} if run_name else {}
    if announce is not None:
        announce(corpus_line(defaults, parameters))

    records = []
    base = None if run_name else new_run_name(parameters)
    for stem in stems:
        claimed = stem not in targets
        if claimed:  # a new local folder, claimed only now: a failed check above wrote nothing
            targets[stem] = claim_run_dir(index_root / stem, base)
        record = run_one(
            stem,
            parameters,
            targets[stem],
            nb_dir,
            kernel_name,
            progress,
            log_output,
            claimed=claimed,
            kind="reference" if reference else "local",
            named=run_name is not None or reference,
        )
        records.append(record)
    rebuild_index(index_root, local=not reference)
    return records


# --------------------------------------------------------------------------- the index


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


def _millions(n: float | None) -> str:
    """Parameter counts as papers write them: 0.80M, 12.5M, 124M."""
    if not isinstance(n, (int, float)):
        return ""
    m = n / 1e6
    return f"{m:.2f}M" if m < 10 else f"{m:.1f}M" if m < 100 else f"{m:.0f}M"


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
        _millions(m.get("params")),
        _cell(m.get("corpus")),
        _cell(m.get("steps")),
        f"{val:.4f}" if isinstance(val, (int, float)) else "",
        f"{bpc:.3f} /{unit}" if isinstance(bpc, (int, float)) else "",
        f"{m['tokens_per_sec']:,.0f}" if isinstance(m.get("tokens_per_sec"), (int, float)) else "",
        _cell(m.get("device") or row.get("hardware")),
        started[:10],
        format_seconds(row.get("wall_s", m.get("wall_s"))),
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
    "report",
]


def rebuild_index(reports_dir: str | os.PathLike | None = None, local: bool = False) -> Path:
    """Write ``reports_dir/README.md``: one table row per run (see :func:`collect_runs`).

    The reference index (``local=False``) also regenerates the README beside
    ``reports_dir``; a local index (``reports/local/``) touches nothing else.
    """
    root = Path(reports_dir) if reports_dir else default_reports_dir()
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
            "[--replace] [-p key value ...]`; a plain `python -m physllm report NOTEBOOK` "
            "writes a new local run under `local/` (gitignored) instead. Rebuild this page "
            "alone with `python -m physllm report`.",
        ]
    lines = [
        *intro,
        "",
        "Each run folder holds the executed notebook, a self-contained HTML copy, the notebook's "
        "`metrics.json` and figures, and `run.json` (parameters, status, hardware, wall time). "
        "Model, params, steps, losses and tokens/s are the notebook's main run (its `metrics.json`); "
        "wall time is the whole notebook's. Checkpoints are not kept.",
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
    if local:
        return path
    # The README beside the reports folder has its result tables regenerated from
    # the reports (a README without the markers is left alone).
    from physllm.readme import update_readme

    update_readme(root.parent / "README.md", root)
    return path


# --------------------------------------------------------------------------- CLI


def cmd_report(argv: Sequence[str]) -> None:
    from physllm.cli import ArgumentParser

    parser = ArgumentParser(
        prog="physllm report",
        description=(
            "Run notebooks with papermill (executed .ipynb, self-contained .html, metrics.json, "
            "figures; checkpoints removed). A plain run goes to a new folder "
            "reports/local/<notebook>/<hardware>-<UTC time>-<commit>/ (gitignored) indexed in "
            "reports/local/README.md, and changes no tracked file; --reference writes the "
            "committed run reports/<notebook>/<run>/ and rebuilds reports/README.md and the "
            "README tables. With no NAMES, only the indexes are rebuilt."
        ),
    )
    parser.add_argument("names", nargs="*", metavar="NAMES", help="notebook stems, or all")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="a notebook parameter (typed like papermill: int, float, True/False, None, str)",
    )
    parser.add_argument(
        "--run-name",
        default=None,
        help="run folder name (default: a new local folder; with --reference: cpu|gpu[-keyvalue...])",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="write the committed reference run reports/<notebook>/<run>/ (an error if it exists)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="overwrite an existing reference run (implies --reference)",
    )
    parser.add_argument("--reports-dir", default=None, help="default: <repo>/reports")
    parser.add_argument(
        "--notebooks-dir", default=None, help=f"default: ${NOTEBOOKS_ENV} or <repo>/notebooks"
    )
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="papermill's progress bar over cells (default: off; the per-cell lines say where it is)",
    )
    parser.add_argument(
        "--log-output",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stream to stderr a line per cell as it starts, the cells' output and the training "
        "bars (default: on)",
    )
    args = parser.parse_args(argv)
    reports_dir = Path(args.reports_dir) if args.reports_dir else default_reports_dir()
    if not args.names:
        if args.parameter or args.run_name or args.reference or args.replace:
            raise PhysllmError(
                "-p, --run-name, --reference and --replace need notebook NAMES (or all)"
            )
        print(f"index: {rebuild_index(reports_dir)}")
        if local_reports_dir(reports_dir).is_dir():
            print(f"index: {rebuild_index(local_reports_dir(reports_dir), local=True)}")
        return
    records = run_report(
        args.names,
        parse_parameters(args.parameter),
        run_name=args.run_name,
        reports_dir=reports_dir,
        notebooks_dir=args.notebooks_dir,
        kernel_name=args.kernel,
        progress=args.progress,
        log_output=args.log_output,
        reference=args.reference,
        replace=args.replace,
        announce=lambda line: print(line, flush=True),  # flushed: it must come first
    )
    for r in records:
        m = r["metrics"]
        numbers = (
            f", val loss {m['val_loss']:.4f}" if isinstance(m.get("val_loss"), (int, float)) else ""
        )
        print(
            f"{r['notebook']}/{r['run']}: {r['status']}{numbers}, {format_seconds(r['wall_s'])}, "
            f"{r['size_mb']:.1f} MB -> {r['path']}/{r['notebook']}.html"
        )
        if r["kind"] == "reference" and r["size_mb"] > WARN_MB:
            print(
                f"warning: {r['path']} holds {r['size_mb']:.1f} MB; reports are committed, keep "
                "them small (plotly: write_html(..., include_plotlyjs='cdn'))",
                file=sys.stderr,
            )
    reference = args.reference or args.replace
    index = reports_dir if reference else local_reports_dir(reports_dir)
    print(f"index: {index / INDEX_NAME}")
    if not reference:
        print("a local run (gitignored); --reference writes the committed reference run")
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        raise ReportFailedError(
            f"{len(failed)} of {len(records)} notebook(s) failed: "
            + "; ".join(f"{r['notebook']} at {r['error']} (report: {r['path']})" for r in failed)
        )
