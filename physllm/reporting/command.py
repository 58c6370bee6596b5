"""``python -m physllm report``: the command line over :func:`physllm.reporting.runner.run_report`
and :func:`physllm.reporting.index.rebuild_index` (what it does: the runner's docstring)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from physllm.args import ArgumentParser
from physllm.errors import PhysllmError
from physllm.fmt import format_seconds
from physllm.reporting.index import (
    INDEX_NAME,
    default_reports_dir,
    local_reports_dir,
    rebuild_index,
)
from physllm.reporting.readme import reproducibility
from physllm.reporting.runner import NOTEBOOKS_ENV, parse_parameters, run_report

WARN_MB = 10.0  # a report folder bigger than this gets a warning: reports are committed


class ReportFailedError(PhysllmError):
    """A notebook raised; its report is written and the command exits with status 1."""

    exit_code = 1


def report_parser() -> ArgumentParser:
    """The ``physllm report`` flags."""
    parser = ArgumentParser(
        prog="physllm report",
        description=(
            "Run notebooks with papermill (executed .ipynb, self-contained .html, metrics.json, "
            "figures; checkpoints removed). A plain run goes to a new folder "
            "reports/local/<notebook>/<hardware>-<UTC time>-<commit>/ (gitignored) indexed in "
            "reports/local/README.md, and changes no tracked file; --reference writes the "
            "committed run reports/<notebook>/<run>/ and rebuilds reports/README.md and the "
            "README tables, from a clean git checkout only (--allow-dirty: recorded as not "
            "reproducible). With no NAMES, only the indexes are rebuilt."
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
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run in its folder: what it wrote stays, and a notebook that "
        "skips finished work (06's protocol) picks up where it stopped (implies --replace "
        "with --reference; a local run needs --run-name)",
    )
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="with --reference: run even with uncommitted changes (or outside a git checkout); "
        "run.json, the index and the README mark the run not reproducible",
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
    return parser


def rebuild_indexes(reports_dir: Path) -> None:
    """``physllm report`` without NAMES: the reference index (and README tables), and the
    local index where local runs exist."""
    print(f"index: {rebuild_index(reports_dir)}")
    if local_reports_dir(reports_dir).is_dir():
        print(f"index: {rebuild_index(local_reports_dir(reports_dir), local=True)}")


def print_records(records: Sequence[dict[str, Any]]) -> None:
    """One line per run (status, val loss, wall time, size, page); a warning for a
    reference run that is not reproducible or too big to commit."""
    for r in records:
        m = r["metrics"]
        numbers = (
            f", val loss {m['val_loss']:.4f}" if isinstance(m.get("val_loss"), (int, float)) else ""
        )
        print(
            f"{r['notebook']}/{r['run']}: {r['status']}{numbers}, {format_seconds(r['wall_s'])}, "
            f"{r['size_mb']:.1f} MB -> {r['path']}/{r['notebook']}.html"
        )
        why = reproducibility(r)
        if r["kind"] == "reference" and why:
            dirty = ", ".join(r.get("dirty") or [])
            print(
                f"warning: {r['path']} is {why}" + (f" ({dirty})" if dirty else ""), file=sys.stderr
            )
        if r["kind"] == "reference" and r["size_mb"] > WARN_MB:
            print(
                f"warning: {r['path']} holds {r['size_mb']:.1f} MB; reports are committed, keep "
                "them small (plotly: write_html(..., include_plotlyjs='cdn'))",
                file=sys.stderr,
            )


def cmd_report(argv: Sequence[str]) -> None:
    """``python -m physllm report [NAMES] [-p KEY VALUE] [--reference [--replace]] ...``."""
    args = report_parser().parse_args(argv)
    reports_dir = Path(args.reports_dir) if args.reports_dir else default_reports_dir()
    if not args.names:
        if any(
            (
                args.parameter,
                args.run_name,
                args.reference,
                args.replace,
                args.allow_dirty,
                args.resume,
            )
        ):
            raise PhysllmError(
                "-p, --run-name, --reference, --replace, --resume and --allow-dirty need "
                "notebook NAMES (or all)"
            )
        rebuild_indexes(reports_dir)
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
        allow_dirty=args.allow_dirty,
        resume=args.resume,
        announce=lambda line: print(line, flush=True),  # flushed: it must come first
    )
    print_records(records)
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


__all__ = ["ReportFailedError", "cmd_report", "print_records", "rebuild_indexes", "report_parser"]
