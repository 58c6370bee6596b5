"""The reporting layer: notebooks run into report folders (:mod:`.runner`), the reports'
indexes (:mod:`.index`), the README's generated tables (:mod:`.readme`) and the
``python -m physllm report`` command (:mod:`.command`)."""

from physllm.reporting.command import ReportFailedError, cmd_report
from physllm.reporting.index import (
    INDEX_NAME,
    LOCAL_DIR,
    collect_runs,
    default_reports_dir,
    latest_runs,
    local_reports_dir,
    rebuild_index,
)
from physllm.reporting.readme import HEADLINES, readme_text, update_readme
from physllm.reporting.runner import (
    corpus_line,
    default_run_name,
    hardware_tag,
    parse_parameters,
    parse_value,
    run_report,
)

__all__ = [
    "HEADLINES",
    "INDEX_NAME",
    "LOCAL_DIR",
    "ReportFailedError",
    "cmd_report",
    "collect_runs",
    "corpus_line",
    "default_reports_dir",
    "default_run_name",
    "hardware_tag",
    "latest_runs",
    "local_reports_dir",
    "parse_parameters",
    "parse_value",
    "readme_text",
    "rebuild_index",
    "run_report",
    "update_readme",
]
