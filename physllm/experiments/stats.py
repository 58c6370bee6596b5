"""The paired gap to a baseline, with a 95% Student-t interval over seeds.

Seed ``s`` of an entry and seed ``s`` of the baseline see the same data order
and initialisation stream, so their difference cancels much of the seed noise.
For ``n`` seeds run by both, with per-seed differences ``d_s = x_s - b_s``::

    mean  = (1/n) sum_s d_s
    sd    = sqrt( sum_s (d_s - mean)^2 / (n - 1) )
    CI95  = mean -/+ t_{0.975, n-1} * sd / sqrt(n)

The verdict says "better" or "worse" only when the interval excludes 0 (for a
loss, lower is better); otherwise "not resolved". Fewer than two paired seeds
give no interval and "not resolved". scipy is not a dependency: the t
quantiles for 1..30 degrees of freedom are tabulated (:data:`T975`), and
above 30 the Cornish-Fisher expansion around the normal quantile is used
(within 2e-6 of the exact value).

Results are a ``results.csv`` read by :func:`physllm.experiments.sweep.read_results`
(a list of dicts) or the same table as a pandas DataFrame.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

from physllm.errors import PhysllmError

# t_{0.975, df} for df = 1..30: the two-sided 95% quantile of Student's t (any statistics
# table, e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2; scipy.stats.t.ppf(0.975, df) to 4 places).
T975: tuple[float, ...] = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip

BETTER, WORSE, NOT_RESOLVED = "better", "worse", "not resolved"


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise PhysllmError(f"a t quantile needs df >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    # Cornish-Fisher: t = z + g1(z)/df + g2(z)/df^2 + g3(z)/df^3 (Abramowitz & Stegun 26.7.5)
    z = NormalDist().inv_cdf(0.975)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def as_rows(results: Any) -> list[dict[str, Any]]:
    """Rows as dicts from a list of dicts or a pandas DataFrame (NaN cells become None)."""
    if hasattr(results, "to_dict") and hasattr(results, "columns"):  # a DataFrame
        results = results.reset_index(drop=results.index.name is None).to_dict("records")
    rows = []
    for row in results:
        rows.append(
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        )
    return rows


def _only(rows: Sequence[Mapping[str, Any]], column: str, what: str) -> Any:
    """The single value of ``column`` in ``rows``; a PhysllmError naming them if several."""
    values = sorted({r[column] for r in rows}, key=str)
    if len(values) > 1:
        raise PhysllmError(
            f"{what} has several {column} values ({', '.join(map(str, values))}); pass {column}="
        )
    return values[0] if values else None


def _select(rows: Iterable[Mapping[str, Any]], **where: Any) -> list[Mapping[str, Any]]:
    """The rows whose columns equal ``where``'s values (a None value matches anything)."""
    return [r for r in rows if all(v is None or r.get(k) == v for k, v in where.items())]


def per_seed(
    rows: Sequence[Mapping[str, Any]], entry: str, metric: str, what: str
) -> dict[int, float]:
    """``{seed: metric}`` of ``entry``'s rows (empty cells skipped); one learning rate only."""
    mine = [r for r in rows if r["entry"] == entry]
    _only(mine, "lr", what)
    values: dict[int, float] = {}
    for r in mine:
        if r["seed"] in values:
            raise PhysllmError(f"{what}: seed {r['seed']} appears twice")
        if r.get(metric) is not None and r.get(metric) != "":
            values[int(r["seed"])] = float(r[metric])
    return values


def interval(diffs: Sequence[float]) -> tuple[float, float, float]:
    """(mean, ci95_low, ci95_high) of ``diffs`` by Student's t; NaN bounds under 2 values."""
    n = len(diffs)
    mean = sum(diffs) / n if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def interval_cell(values: Sequence[float]) -> dict[str, Any]:
    """:func:`interval` as a table cell: ``{mean, ci95_low, ci95_high, n_seeds}``."""
    mean, low, high = interval(values) if len(values) else (math.nan, math.nan, math.nan)
    return {"mean": mean, "ci95_low": low, "ci95_high": high, "n_seeds": len(values)}


def verdict(low: float, high: float, lower_is_better: bool = True) -> str:
    """ "better"/"worse" only when [low, high] excludes 0, else "not resolved"."""
    if math.isnan(low) or math.isnan(high) or low <= 0 <= high:
        return NOT_RESOLVED
    below = high < 0  # the entry's metric is below the baseline's
    return BETTER if below == lower_is_better else WORSE


def paired_gap(
    results: Any,
    entry: str,
    baseline: str = "gpt",
    size: str | None = None,
    steps: int | None = None,
    metric: str = "val_loss",
    lr: float | None = None,
    lower_is_better: bool = True,
) -> dict[str, Any]:
    """The gap ``entry - baseline`` in ``metric``, paired by seed, at one size and budget.

    ``results``: rows (dicts) or a DataFrame with columns entry, size, seed, lr, steps and
    ``metric``. ``size``/``steps`` may be left out when the rows hold one value. Each side
    must have one learning rate per (size, steps) (``lr`` picks the entry's). Returns
    ``{mean, ci95_low, ci95_high, n_seeds, verdict, entry, baseline, size, steps, metric}``.
    """
    rows = as_rows(results)
    where = dict(size=size, steps=steps)
    both = _select([r for r in rows if r.get("entry") in (entry, baseline)], **where)
    if not any(r["entry"] == baseline for r in both):
        raise PhysllmError(f"no results for the baseline {baseline!r} at {where}")
    if not any(r["entry"] == entry for r in both):
        raise PhysllmError(f"no results for entry {entry!r} at {where}")
    size = _only(both, "size", "the results")
    steps = _only(both, "steps", "the results")
    ours = per_seed(_select(both, lr=lr), entry, metric, f"entry {entry!r}")
    base = per_seed(both, baseline, metric, f"baseline {baseline!r}")
    seeds = sorted(set(ours) & set(base))
    cell = interval_cell([ours[s] - base[s] for s in seeds])
    return {
        "entry": entry,
        "baseline": baseline,
        "size": size,
        "steps": steps,
        "metric": metric,
        **cell,
        "verdict": verdict(cell["ci95_low"], cell["ci95_high"], lower_is_better),
    }


def gap_table(
    results: Any, baseline: str = "gpt", metric: str = "val_loss"
) -> list[dict[str, Any]]:
    """:func:`paired_gap` of every entry against ``baseline`` at every (size, steps) where
    each side ran one learning rate (an lr sweep's rows are left out)."""
    rows = as_rows(results)
    out = []
    cells = sorted({(r["size"], r["steps"]) for r in rows}, key=lambda c: (str(c[0]), c[1]))
    entries = list(dict.fromkeys(r["entry"] for r in rows if r["entry"] != baseline))
    for size, steps in cells:
        for entry in entries:
            try:
                out.append(paired_gap(rows, entry, baseline, size, steps, metric))
            except PhysllmError:  # absent here, or several learning rates: no single gap
                continue
    return out


def format_gaps(gaps: Sequence[Mapping[str, Any]]) -> str:
    """The gaps as a plain-text table, one line each."""
    lines = [f"{'entry':<22} {'size':<8} {'steps':>6}  {'gap (95% CI)':<32} seeds  verdict"]
    for g in gaps:
        ci = f"{g['mean']:+.4f} [{g['ci95_low']:+.4f}, {g['ci95_high']:+.4f}]"
        lines.append(
            f"{g['entry']:<22} {g['size']!s:<8} {g['steps']:>6}  {ci:<32} {g['n_seeds']:>5}  {g['verdict']}"
        )
    return "\n".join(lines)


__all__ = [
    "BETTER",
    "NOT_RESOLVED",
    "T975",
    "WORSE",
    "as_rows",
    "format_gaps",
    "gap_table",
    "interval",
    "interval_cell",
    "paired_gap",
    "t975",
    "verdict",
]
