"""Synthetic capability probes (notebook 07; layer 7, beside ``experiments``): seeded tasks
that isolate one skill each, with exact answers (:mod:`.tasks`), a task as the trainer's
data (:mod:`.data`), the runner that trains every architecture on every task over seeds
and scores it (:mod:`.runner`), recall at distances past the training block, streamed
through each model's state (:mod:`.distance`), and repetition and drift in free generation
at matched perplexity (:mod:`.repetition`)."""

from physllm.probes.claims import (
    CLAIMS,
    DISTANCE_CLAIMS,
    REPETITION_CLAIM,
    claim_findings,
    distance_findings,
    repetition_findings,
)
from physllm.probes.data import ProbeData, ProbeTokenizer
from physllm.probes.distance import (
    DistanceEpisodes,
    has_memory,
    memory_logits,
    score_at_distance,
    stream_logits,
)
from physllm.probes.repetition import (
    common_perplexity,
    matched_perplexity,
    matched_table,
    repetition_summary,
    run_repetition,
    sample_metrics,
    sample_with_nll,
    temperature_sweep,
    temperature_table,
    text_configs,
)
from physllm.probes.runner import (
    PROBE_BUDGET,
    accuracy_gaps,
    capability_matrix,
    distance_matrix,
    distance_table,
    matrix_table,
    probe_configs,
    run_distance_probe,
    run_grid,
    run_probe,
    score,
    state_bytes,
)
from physllm.probes.tasks import (
    IGNORE,
    MQAR,
    TASKS,
    DistanceRecall,
    Induction,
    NoisyRecall,
    SelectiveCopy,
    Task,
    make_task,
)
from physllm.sampling import distinct_n, repeated_ngram_rate

__all__ = [
    "CLAIMS",
    "DISTANCE_CLAIMS",
    "IGNORE",
    "MQAR",
    "PROBE_BUDGET",
    "REPETITION_CLAIM",
    "TASKS",
    "DistanceEpisodes",
    "DistanceRecall",
    "Induction",
    "NoisyRecall",
    "ProbeData",
    "ProbeTokenizer",
    "SelectiveCopy",
    "Task",
    "accuracy_gaps",
    "capability_matrix",
    "claim_findings",
    "common_perplexity",
    "distance_findings",
    "distance_matrix",
    "distance_table",
    "distinct_n",
    "has_memory",
    "make_task",
    "matched_perplexity",
    "matched_table",
    "matrix_table",
    "memory_logits",
    "probe_configs",
    "repeated_ngram_rate",
    "repetition_findings",
    "repetition_summary",
    "run_distance_probe",
    "run_grid",
    "run_probe",
    "run_repetition",
    "sample_metrics",
    "sample_with_nll",
    "score",
    "score_at_distance",
    "state_bytes",
    "stream_logits",
    "temperature_sweep",
    "temperature_table",
    "text_configs",
]
