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
import torch

from physllm.data import default_corpus_notice, repo_root
from physllm.env import resolve_device
from physllm.errors import PhysllmError

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
