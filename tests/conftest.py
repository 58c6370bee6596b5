"""Shared fixtures: offline data, a temporary cache, and a papermill runner.

Two markers (registered in pyproject.toml) let CI choose subsets:

* ``shakespeare``: the test needs TinyShakespeare on disk and skips, saying
  so, where it is absent (a fresh offline clone has only ``pydocs``).
* ``notebook``: set here on every test that runs a notebook through
  papermill (``run_notebook``), so CI can rerun them with TinyShakespeare.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _share_cores_between_workers() -> None:
    """Give each pytest-xdist worker its share of the cores (the kernels it starts inherit it).

    Without this each of N workers and each notebook kernel would run torch on
    every core, and N processes fighting over the same cores run slower than one.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_cores_between_workers()
NOTEBOOKS = REPO / "notebooks"
SHAKESPEARE_MISSING = "TinyShakespeare not on disk (set PHYSLLM_DATA_DIR)"


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "run_notebook" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.notebook)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("shakespeare") and not shakespeare_available():
        pytest.skip(SHAKESPEARE_MISSING)


@pytest.fixture
def shakespeare_file() -> Path:
    """The TinyShakespeare file on disk; the test skips (saying why) where there is none."""
    from physllm.data import SHAKESPEARE_FILE, find_local_file

    path = find_local_file(SHAKESPEARE_FILE)
    if path is None:
        pytest.skip(SHAKESPEARE_MISSING)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Token caches go to a per-session temp folder, never into the checkout."""
    cache = tmp_path_factory.getbasetemp() / "physllm-cache"
    monkeypatch.setenv("PHYSLLM_CACHE_DIR", str(cache))


@pytest.fixture
def run_notebook(tmp_path):
    """Execute ``notebooks/<name>.ipynb`` with papermill and the given parameters.

    Returns ``(executed_notebook_path, out_dir)``; ``out_dir`` is a temp folder
    passed as the notebook's ``out_dir`` parameter.
    """
    import papermill as pm

    def _run(name: str, **parameters) -> tuple[Path, Path]:
        out_dir = tmp_path / "out"
        out_nb = tmp_path / f"{name}.ipynb"
        pm.execute_notebook(
            str(NOTEBOOKS / f"{name}.ipynb"),
            str(out_nb),
            parameters={"out_dir": str(out_dir), **parameters},
            cwd=str(REPO),
            kernel_name="python3",
            progress_bar=False,
        )
        return out_nb, out_dir

    return _run


def shakespeare_available() -> bool:
    from physllm.data import SHAKESPEARE_FILE, find_local_file

    return find_local_file(SHAKESPEARE_FILE) is not None


@pytest.fixture(scope="session")
def small_text_file(tmp_path_factory) -> Path:
    """About 60 KB of English (the stdlib's pydoc topics) as a local .txt corpus."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))[:60_000]
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(text, encoding="utf-8")
    return path


TINY_GPT = dict(
    n_layer=2,
    n_head=2,
    n_embd=32,
    block_size=32,
    batch_size=4,
    eval_iters=2,
    warmup_steps=2,
    progress=False,
    tensorboard=False,
)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, small_text_file) -> Path:
    """A tiny GPT trained for 20 steps on the small corpus: a run folder with best/ and last/."""
    from physllm.training import make_config, train

    os.environ.setdefault(
        "PHYSLLM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "physllm-cache")
    )
    out = tmp_path_factory.mktemp("tiny_run")
    train(
        make_config(
            "gpt",
            corpus=str(small_text_file),
            steps=20,
            eval_interval=10,
            out_dir=str(out),
            **TINY_GPT,
        )
    )
    return out


class SpyReader:
    """A notebook-05 reader that records what recall writes and asks (as text, through
    ``decode``) and answers nothing useful: which templates a task really used."""

    def __init__(self, decode):
        self.decode = decode
        self.written, self.asked = [], []

    def reset(self):
        pass

    def write(self, ids):
        self.written.append(self.decode(ids[0].tolist()))

    def answer(self, prompts, n):
        self.asked += [self.decode(row) for row in prompts.tolist()]
        return torch.zeros(prompts.size(0), n, dtype=torch.long)

    def answer_nll(self, prompts, answers):
        return torch.zeros(prompts.size(0))
