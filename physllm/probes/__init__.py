"""Synthetic capability probes (notebook 07; layer 7, beside ``experiments``): seeded tasks
that isolate one skill each, with exact answers (:mod:`.tasks`), a task as the trainer's
data (:mod:`.data`), and the runner that trains every architecture on every task over seeds
and scores it (:mod:`.runner`)."""

from physllm.probes.claims import CLAIMS, claim_findings
from physllm.probes.data import ProbeData, ProbeTokenizer
from physllm.probes.runner import (
    PROBE_BUDGET,
    accuracy_gaps,
    capability_matrix,
    matrix_table,
    probe_configs,
    run_grid,
    run_probe,
    score,
    state_bytes,
)
from physllm.probes.tasks import (
    IGNORE,
    MQAR,
    TASKS,
    Induction,
    NoisyRecall,
    SelectiveCopy,
    Task,
    make_task,
)

__all__ = [
    "CLAIMS",
    "IGNORE",
    "MQAR",
    "PROBE_BUDGET",
    "TASKS",
    "Induction",
    "NoisyRecall",
    "ProbeData",
    "ProbeTokenizer",
    "SelectiveCopy",
    "Task",
    "accuracy_gaps",
    "capability_matrix",
    "claim_findings",
    "make_task",
    "matrix_table",
    "probe_configs",
    "run_grid",
    "run_probe",
    "score",
    "state_bytes",
]
