"""Small helpers every notebook uses, so no notebook carries its own copy.

* :func:`setup` seeds, picks the device and the preset (``auto`` is
  ``$PHYSLLM_PRESET`` when set, else ``gpu`` when CUDA is there, else
  ``cpu``), sets CPU threads. The test suite sets ``PHYSLLM_PRESET=cpu`` so
  nbval and papermill never start a GPU-scale run.
* :func:`corpus_notice` is the line a notebook prints first about its data
  (TinyShakespeare, or the ``pydocs`` fallback and why).
* :func:`resolve_out_dir` makes relative output folders relative to the
  repository root, so papermill from the root, nbval from ``notebooks/`` and
  Jupyter all write to the same place.
* :func:`show_source` prints the real code of a physllm object, so a
  walk-through never duplicates (and never drifts from) the package.
* :func:`write_metrics` writes the notebook's ``metrics.json`` (what reports read).
* :func:`headline_gaps` turns a notebook's single-seed comparison into the protocol's
  (:func:`physllm.experiments.gaps.seed_gaps`: tuned rates, new seeds, a paired interval),
  and :func:`headline_metrics` gives its keys for ``metrics.json``.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from physllm.data import default_corpus_notice, repo_root
from physllm.env import resolve_device
from physllm.errors import PhysllmError
from physllm.experiments.gaps import gap_rows, seed_gaps, seed_list

IN_COLAB = "google.colab" in sys.modules


PRESET_ENV = "PHYSLLM_PRESET"


def pick_preset(preset: str) -> str:
    """Resolve ``auto``: ``$PHYSLLM_PRESET`` when set, else ``gpu`` with CUDA, else ``cpu``.

    An explicit ``cpu`` or ``gpu`` always wins over the environment.
    """
    if preset == "auto":
        forced = os.environ.get(PRESET_ENV, "").strip()
        if forced:
            if forced not in ("cpu", "gpu"):
                raise PhysllmError(f"{PRESET_ENV} must be cpu or gpu, got {forced!r}")
            return forced
        return "gpu" if torch.cuda.is_available() else "cpu"
    if preset not in ("cpu", "gpu"):
        raise PhysllmError(f"preset must be auto, cpu or gpu, got {preset!r}")
    return preset


def setup(
    seed: int = 1337, preset: str = "auto", device: str = "auto", threads: int = 0
) -> tuple[str, str]:
    """Seed everything; return ``(preset, device)`` resolved from ``auto``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    return pick_preset(preset), str(resolve_device(device))


def corpus_notice(corpus: str = "default") -> str:
    """One line saying what ``corpus`` reads; for ``default``, TinyShakespeare's path or
    ``TinyShakespeare not found, using pydocs (<why>)``.

    Notebooks print it in their setup cell, whose output nbval does not compare:
    the fallback is then said there, once per kernel, and never reaches stderr in
    a later cell whose output is compared.
    """
    return default_corpus_notice() if corpus == "default" else f"corpus: {corpus}"


def resolve_out_dir(out_dir: str | os.PathLike) -> Path:
    """A relative ``out_dir`` is taken from the repository root (from the cwd outside a checkout)."""
    path = Path(out_dir)
    if not path.is_absolute():
        path = (repo_root() or Path.cwd()) / path
    path.mkdir(parents=True, exist_ok=True)
    return path


def show_source(obj: Any) -> None:
    """Display the source of a physllm function or class (as a code block in Jupyter)."""
    source = inspect.getsource(obj)
    try:
        from IPython.display import Markdown, display

        display(Markdown(f"```python\n{source}\n```"))
    except ImportError:
        print(source)


def write_metrics(
    out_dir: str | os.PathLike,
    main: dict[str, Any],
    runs: dict[str, dict] | None = None,
    **extra: Any,
) -> Path:
    """Write ``out_dir/metrics.json``: the main run's metrics at the top level (what the
    reports index shows), every run of the notebook under ``runs``, and ``extra`` keys."""
    payload = {**main, **extra}
    if runs:
        payload["runs"] = runs
    path = Path(out_dir) / "metrics.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def headline_gaps(
    configs: dict[str, Any],
    n_seeds: int,
    lrs: str,
    out_dir: str | os.PathLike,
    threads: int = 0,
    baseline: str = "gpt",
) -> dict[str, Any] | None:
    """The notebook's gaps to ``baseline`` over ``n_seeds`` new seeds, each config (name ->
    the TrainConfig the notebook trained) at the rate of ``lrs`` it picks by the protocol's
    rule (:func:`physllm.experiments.gaps.seed_gaps`; runs under ``out_dir/gaps``). Prints
    the table. ``n_seeds`` 0: None, and a line saying the notebook's gap is one seed's."""
    if not n_seeds:
        print(
            "gap_seeds = 0: the gaps above are one seed's at the preset's learning rate, "
            "not evidence (the committed reports run -p gap_seeds 5)"
        )
        return None
    result = seed_gaps(
        configs,
        baseline,
        lrs,
        seed_list(n_seeds),
        Path(out_dir) / "gaps",
        threads=threads or None,
    )
    print(pd.DataFrame(gap_rows(result)).round(4).to_string(index=False))
    return result


def headline_metrics(result: dict[str, Any] | None) -> dict[str, Any]:
    """``metrics.json`` keys of :func:`headline_gaps`' result (the README's rows read
    ``headline_gaps``); none without one."""
    if result is None:
        return {}
    grid = {k: result[k] for k in ("lrs", "seeds", "lr_seed", "steps")}
    return {
        "headline_gaps": result["gaps"],
        "headline_best_lr": result["best_lr"],
        "headline_grid": grid,
    }
