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
  generated from them (:func:`physllm.reporting.readme.update_readme`). Only
  ``--reference`` writes here, into ``<run>`` = the hardware (``cpu``, ``gpu``)
  plus any overridden parameters (``-p steps 20`` on a CPU: ``cpu-steps20``)
  unless ``--run-name`` says otherwise. A reference run that exists already is
  an error (exit 2, nothing touched) unless ``--replace`` is given too
  (``--replace`` implies ``--reference``). Only a reference run rebuilds the
  tracked index and the README tables. A reference run is built from a clean
  tree: when ``git status --porcelain`` lists anything (changed tracked files,
  untracked files git does not ignore) besides the folders and index the run
  itself writes, it refuses (exit 2, one line naming up to 5 paths, nothing
  written), and outside a git checkout too. ``--allow-dirty`` runs it anyway,
  recorded as not reproducible, which the index and the README tables say.
* **Local runs**, gitignored (``/reports/local/`` in ``.gitignore``):
  ``reports/local/<notebook>/<run>/``, indexed in ``reports/local/README.md``
  (:data:`physllm.reporting.index.LOCAL_DIR`). A plain ``python -m physllm report NB`` goes here, into
  a new folder ``<hardware>[-overrides]-<UTC time>-<commit>`` that no other run
  can have (:func:`claim_run_dir` creates it atomically and adds ``-2``,
  ``-3``... when two runs start in the same second). ``--run-name NAME`` names
  the local folder instead, and reruns into it.

The notebook gets ``out_dir=<run folder>`` as a papermill parameter, so
whatever it saves lands in the report. Checkpoints and data do not belong
there: after the run, every ``best/``, ``last/`` and ``tb/`` folder and every
``*.safetensors``, ``*.pt``, ``*.pth``, ``*.ckpt`` and ``*.bin`` file under the
run folder is deleted (:data:`HEAVY_DIRS`, :data:`HEAVY_SUFFIXES`).

Every run's ``run.json`` records the checkout it was built from
(:func:`tree_state`): ``git_sha`` (``unknown`` outside a checkout),
``reproducible`` (a commit and nothing uncommitted) and the uncommitted paths
(``dirty``, ``dirty_count``); a local run may come from a dirty tree, and says so.

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
command (:func:`physllm.reporting.index.rebuild_index`); they are generated, never edited.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from physllm.data import default_corpus_notice, repo_root
from physllm.env import device_description
from physllm.errors import PhysllmError
from physllm.fmt import clock, first_line, format_seconds, read_json
from physllm.progress import PROGRESS_ENV
from physllm.reporting.index import (
    INDEX_NAME,
    default_reports_dir,
    local_reports_dir,
    rebuild_index,
)
from physllm.reporting.readme import reproducibility
from physllm.training import git_sha

NOTEBOOKS_ENV = "PHYSLLM_NOTEBOOKS_DIR"  # where notebooks are looked up (tests point it elsewhere)
HEAVY_DIRS = ("best", "last", "tb")  # checkpoints and TensorBoard logs
HEAVY_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")  # weights, token memmaps
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}$")
NBVAL_MARKER = re.compile(r"#\s*NBVAL_")  # "# NBVAL_IGNORE_OUTPUT" says nothing about a cell
ENGINE_NAME = "physllm-report"  # the papermill engine that says which cell runs
DIRTY_NAMED = 5  # a refused reference run names this many uncommitted paths
DIRTY_KEPT = 50  # run.json lists this many (and counts them all)


# --------------------------------------------------------------------------- inputs


def default_notebooks_dir() -> Path:
    """``$PHYSLLM_NOTEBOOKS_DIR``, else the checkout's ``notebooks/``, else ``./notebooks``."""
    if os.environ.get(NOTEBOOKS_ENV):
        return Path(os.environ[NOTEBOOKS_ENV])
    root = repo_root()
    return (root or Path.cwd()) / "notebooks"


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
    return default_corpus_notice()


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


# --------------------------------------------------------------------------- the checkout


def _git(cwd: Path, *args: str) -> str | None:
    """``git args`` run in ``cwd``: its stdout, or None when git is missing or fails."""
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def checkout_of(path: str | os.PathLike) -> Path | None:
    """The git checkout (its top folder) holding ``path`` or its nearest existing parent."""
    folder = Path(path).resolve()
    while not folder.is_dir():
        folder = folder.parent
    top = _git(folder, "rev-parse", "--show-toplevel")
    return Path(top.strip()).resolve() if top and top.strip() else None


def _inside(path: str, folders: Sequence[str]) -> bool:
    return any(path == f or path.startswith(f + "/") for f in folders)


def dirty_paths(checkout: Path, exclude: Sequence[Path] = ()) -> list[str] | None:
    """What ``git status --porcelain`` lists in ``checkout`` (changed tracked files and untracked
    files git does not ignore; renames by their new path), relative to it and sorted, less
    anything in or equal to a path of ``exclude``. None when git cannot say."""
    out = _git(checkout, "status", "--porcelain", "-z", "--untracked-files=all")
    if out is None:
        return None
    skip = []
    for p in exclude:
        with contextlib.suppress(ValueError):  # outside the checkout: nothing there to skip
            skip.append(Path(p).resolve().relative_to(checkout).as_posix())
    paths, fields = [], iter(out.split("\0"))
    for entry in fields:
        if len(entry) < 4:
            continue
        if entry[0] in "RC":  # "R  new" is followed by the old path, which is gone
            next(fields, None)
        paths.append(entry[3:].rstrip("/"))
    return sorted(p for p in set(paths) if not _inside(p, skip))


def tree_state(reports_dir: str | os.PathLike, exclude: Sequence[Path] = ()) -> dict[str, Any]:
    """What ``run.json`` records about the checkout holding ``reports_dir`` (the one its
    reports are committed to): ``git_sha`` (short HEAD, or ``unknown`` outside a checkout
    or before its first commit), ``dirty`` (:func:`dirty_paths` less ``exclude``, the first
    :data:`DIRTY_KEPT`), ``dirty_count``, and ``reproducible``: a commit exists and nothing
    else is uncommitted, so checking out ``git_sha`` rebuilds the same run."""
    checkout = checkout_of(reports_dir)
    head = _git(checkout, "rev-parse", "--short", "HEAD") if checkout else None
    dirty = dirty_paths(checkout, exclude) if checkout else None
    sha = head.strip() if head and head.strip() else "unknown"
    return {
        "git_sha": sha,
        "reproducible": sha != "unknown" and dirty == [],
        "dirty": (dirty or [])[:DIRTY_KEPT],
        "dirty_count": len(dirty or []),
        "checkout": str(checkout) if checkout else None,
    }


def dirty_tree_error(state: dict[str, Any], reports_dir: Path) -> PhysllmError:
    """The one-line refusal of a reference run that :func:`tree_state` says is not
    reproducible (up to :data:`DIRTY_NAMED` uncommitted paths named)."""
    fix = "or add --allow-dirty to write it recorded as not reproducible"
    if state["checkout"] is None:
        return PhysllmError(
            f"{reports_dir} is not in a git checkout: a reference report names the commit it "
            f"was built from; run it from a clone, {fix}"
        )
    if state["git_sha"] == "unknown":
        return PhysllmError(f"{state['checkout']} has no commit yet: commit first, {fix}")
    named = state["dirty"][:DIRTY_NAMED]
    more = state["dirty_count"] - len(named)
    paths = ", ".join(named) + (f" and {more} more" if more else "")
    return PhysllmError(
        f"uncommitted changes in {state['checkout']} ({paths}): a reference report is built "
        f"from a clean tree, so that its commit rebuilds it; commit them first, {fix}"
    )


# --------------------------------------------------------------------------- one run


def first_source_line(source: str, limit: int = 80) -> str:
    """A cell's first non-blank line that is not an nbval marker, cut to ``limit`` characters."""
    lines = [ln.strip() for ln in source.splitlines()]
    line = next((ln for ln in lines if ln and not NBVAL_MARKER.match(ln)), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _announce_cells(nb_man: Any, stream: Any, label: str) -> None:
    """Make papermill's execution manager print ``label cell 3/24 [0:42] <first line>`` on
    ``stream`` as each code cell starts (papermill calls ``nb_man.cell_start`` per cell)."""
    code = [i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"]
    order = {index: n for n, index in enumerate(code, 1)}
    start, t0 = nb_man.cell_start, time.perf_counter()

    def cell_start(cell: Any, cell_index: int | None = None, **kwargs: Any) -> Any:
        if cell_index in order:
            print(
                f"{label} cell {order[cell_index]}/{len(code)} [{clock(time.perf_counter() - t0)}]"
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
    why = reproducibility(record)
    dirty = ", ".join(record.get("dirty") or [])
    provenance = f" (**{why}**" + (f": {dirty})" if dirty else ")") if why else ""
    return (
        f"> **Report `{record['notebook']}` / `{record['run']}`**, generated by "
        f"`{report_command(record)}` on {record['hardware']}{load}{steps}; notebook wall time "
        f"{format_seconds(record['wall_s'])}; started {record['started']}; "
        f"physllm {record['git_sha']}{provenance}. Status: {status}."
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


def _set_aside(final: Path, claimed: bool, resume: bool = False) -> Path:
    """Make ``final`` an empty folder for the run; an older run there is moved to the
    returned backup path (kept until the new run is known to be good). ``resume``: an
    existing ``final`` (a killed run's) stays as it is, for the notebook to continue."""
    backup = final.with_name(f".{final.name}.previous")
    if resume and final.exists():
        return backup
    if not claimed:
        _restore_interrupted(final, backup)
        if final.exists():
            final.rename(backup)
        final.mkdir(parents=True)
    return backup


def _out_dir_parameter(final: Path) -> str:
    """The notebook's ``out_dir``: a path inside the checkout is passed relative to its root,
    so reports read the same anywhere."""
    root = repo_root()
    try:
        return str(final.resolve().relative_to(root)) if root else str(final.resolve())
    except ValueError:
        return str(final.resolve())


def _run_record(
    name: str, final: Path, parameters: dict[str, Any], error: str | None, **fields: Any
) -> dict[str, Any]:
    """``run.json``'s content for a finished run; ``fields``: started, wall_s, kind, named,
    removed, hardware, tree (:func:`tree_state`: git_sha, reproducible, dirty, dirty_count)."""
    tree = fields["tree"]
    return {
        "notebook": name,
        "run": final.name,
        "kind": fields["kind"],
        "named": fields["named"],
        "parameters": parameters,
        "status": "failed" if error else "ok",
        "error": error,
        "started": fields["started"].isoformat(timespec="seconds").replace("+00:00", "Z"),
        "wall_s": round(fields["wall_s"], 1),
        "hardware": fields["hardware"] or hardware_description(),
        # speed numbers on a shared CPU depend on what else ran: say how busy the machine was
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
        "git_sha": tree["git_sha"],
        "reproducible": tree["reproducible"],
        "dirty": tree["dirty"],
        "dirty_count": tree["dirty_count"],
        "python": sys.version.split()[0],
        "removed": [str(p.relative_to(final)) for p in fields["removed"]],
    }


def _write_pages(
    final: Path, name: str, record: dict[str, Any], metrics: dict[str, Any], error: str | None
) -> None:
    """The header cell on the executed notebook and its HTML page (an error page when
    papermill left no notebook or nbconvert failed)."""
    executed = final / f"{name}.ipynb"
    if not executed.exists():
        error_html(final / f"{name}.html", name, error or "no output notebook")
        return
    add_header(executed, header_markdown(record, metrics))
    try:
        export_html(executed, final / f"{name}.html")
    except Exception as err:  # nbconvert trouble must not lose the run
        error_html(final / f"{name}.html", name, f"HTML export failed: {err}")


def _keep_good_run(final: Path, backup: Path, record: dict[str, Any]) -> Path:
    """Drop the older run, unless this one failed and the older one was good: then the
    older stays where it was and the failure goes beside it (``<run>-failed``, returned)."""
    older_ok = backup.exists() and read_json(backup / "run.json").get("status", "ok") == "ok"
    if record["error"] and older_ok:
        failed = final.with_name(f"{final.name}-failed")
        if failed.exists():
            shutil.rmtree(failed)
        final.rename(failed)
        backup.rename(final)
        record["run"] = failed.name
        return failed
    if backup.exists():
        shutil.rmtree(backup)
    return final


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
    tree: dict[str, Any] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Execute one notebook into the run folder ``final``; return its ``run.json`` record.

    ``claimed``: ``final`` was just created empty for this run (:func:`claim_run_dir`).
    Otherwise an existing ``final`` is replaced, and kept aside until the new run is
    known to be good; with ``resume`` it is run into as it is (what a killed run wrote
    stays, and an interrupted run leaves it so). ``kind`` (``reference`` or ``local``) and ``named`` (the folder
    name was asked for) go into ``run.json`` and its reproducing command; so does ``tree``,
    the checkout's state (:func:`tree_state`, measured here when not given).
    """
    tree = tree or tree_state(final, exclude=[final])
    backup = _set_aside(final, claimed, resume)
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    try:
        error = execute(
            notebooks_dir / f"{name}.ipynb",
            final / f"{name}.ipynb",
            {**parameters, "out_dir": _out_dir_parameter(final)},
            kernel_name=kernel_name,
            progress=progress,
            log_output=log_output,
        )
    except BaseException:  # Ctrl-C: drop the half-run (unless resuming), put the older back
        if resume:
            raise
        shutil.rmtree(final, ignore_errors=True)
        if backup.exists():
            backup.rename(final)
        raise
    wall_s = time.perf_counter() - t0
    removed = clean_run_dir(final)
    metrics = read_json(final / "metrics.json")
    record = _run_record(
        name,
        final,
        parameters,
        error,
        kind=kind,
        named=named,
        started=started,
        wall_s=wall_s,
        removed=removed,
        hardware=metrics.get("device"),
        tree=tree,
    )
    _write_pages(final, name, record, metrics, error)
    final = _keep_good_run(final, backup, record)
    (final / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    record["path"] = str(final)
    record["metrics"] = metrics
    record["size_mb"] = folder_mb(final)
    return record


def reference_targets(
    stems: Sequence[str],
    out_root: Path,
    run_name: str | None,
    parameters: dict[str, Any],
    replace: bool,
) -> dict[str, Path]:
    """``out_root/<stem>/<run>`` per notebook (``run_name``, else :func:`default_run_name`);
    an error, before anything is written, when one exists and ``replace`` is not given."""
    name = validate_run_name(run_name or default_run_name(parameters))
    targets = {stem: out_root / stem / name for stem in stems}
    existing = [p for p in targets.values() if p.exists()]
    if existing and not replace:
        raise PhysllmError(
            f"{', '.join(map(str, existing))} is a committed reference run; add --replace to "
            "overwrite it, or drop --reference to write a new local run"
        )
    return targets


def run_targets(
    stems: Sequence[str],
    index_root: Path,
    run_name: str | None,
    parameters: dict[str, Any],
    reference: bool,
    replace: bool,
) -> dict[str, Path]:
    """Each notebook's run folder when known before running: a reference run's
    (:func:`reference_targets`), a named local run's; a new local folder is claimed later."""
    if reference:
        return reference_targets(stems, index_root, run_name, parameters, replace)
    return {stem: index_root / stem / run_name for stem in stems} if run_name else {}


def written_by(targets: dict[str, Path], index_root: Path) -> list[Path]:
    """What a report command itself writes, left out of the clean-tree check: the run
    folders (with the ``<run>-failed`` and ``.<run>.previous`` folders beside them) and the
    index it rebuilds from the folders."""
    paths = [index_root / INDEX_NAME]
    for folder in targets.values():
        paths += [folder, folder.with_name(f"{folder.name}-failed")]
        paths.append(folder.with_name(f".{folder.name}.previous"))
    return paths


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
    allow_dirty: bool = False,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Run each notebook in ``names`` into a run folder and rebuild that folder's index.

    Without ``reference``: a local run, ``reports_dir/local/<name>/<run>/``, in a new
    folder (:func:`new_run_name`) unless ``run_name`` names one; only the local index
    is rebuilt. With ``reference``: ``reports_dir/<name>/<run>/`` (``run_name``, else
    :func:`default_run_name`), which must not exist yet unless ``replace``
    (``replace`` implies ``reference``); the tracked index and the README tables
    beside ``reports_dir`` are rebuilt. A reference run also needs a clean checkout
    (:func:`tree_state`: nothing uncommitted but what this command writes) unless
    ``allow_dirty``; every run records the checkout's state in ``run.json``. All input
    is checked before anything runs or is written; then ``announce`` (if given) gets
    the :func:`corpus_line`. ``resume``: run into an existing run folder as it is (a
    killed run's: notebook 06's protocol skips the runs it finished); implies ``replace``
    for a reference run, and needs ``run_name`` for a local one.

    Returns one record per notebook (``run.json``'s content plus ``path``,
    ``metrics`` and ``size_mb``); a failed notebook has ``status == "failed"``.
    """
    parameters = dict(parameters or {})
    reference = reference or replace
    if resume and not (reference or run_name):
        raise PhysllmError("--resume needs --run-name (the local run to continue) or --reference")
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

    index_root = out_root if reference else local_reports_dir(out_root)
    targets = run_targets(stems, index_root, run_name, parameters, reference, replace or resume)
    tree = tree_state(out_root, exclude=written_by(targets, index_root))
    if reference and not tree["reproducible"] and not allow_dirty:
        raise dirty_tree_error(tree, out_root)
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
            tree=tree,
            resume=resume,
        )
        records.append(record)
    rebuild_index(index_root, local=not reference)
    return records
