"""physllm.notebook's preset and corpus helpers, and what the test session sets for notebooks.

Under pytest every notebook (nbval's kernels, papermill's) must run the CPU
preset even on a CUDA machine; TinyShakespeare-only tests carry the
``shakespeare`` marker and skip, saying why, on a fresh offline clone.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from physllm import data as pdata
from physllm.errors import PhysllmError
from physllm.notebook import PRESET_ENV, corpus_notice, pick_preset, setup

from . import conftest
from .conftest import SHAKESPEARE_MISSING


@pytest.fixture
def cuda_everywhere(monkeypatch):
    """Pretend this is a CUDA machine: ``auto`` would otherwise pick the GPU preset."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_preset_follows_physllm_preset_before_cuda(monkeypatch, cuda_everywhere):
    monkeypatch.setenv(PRESET_ENV, "cpu")
    assert pick_preset("auto") == "cpu"
    monkeypatch.delenv(PRESET_ENV)
    assert pick_preset("auto") == "gpu"
    monkeypatch.setenv(PRESET_ENV, "")  # empty is unset
    assert pick_preset("auto") == "gpu"


def test_explicit_preset_wins_over_the_environment(monkeypatch, cuda_everywhere):
    monkeypatch.setenv(PRESET_ENV, "cpu")
    assert pick_preset("gpu") == "gpu"
    monkeypatch.setenv(PRESET_ENV, "gpu")
    assert pick_preset("cpu") == "cpu"
    assert pick_preset("auto") == "gpu"


@pytest.mark.parametrize("value", ["GPU", "tpu", "auto"])
def test_bad_physllm_preset_is_one_clear_error(monkeypatch, value):
    monkeypatch.setenv(PRESET_ENV, value)
    with pytest.raises(PhysllmError, match=PRESET_ENV):
        pick_preset("auto")


def test_setup_resolves_auto_through_the_environment(monkeypatch, cuda_everywhere):
    monkeypatch.setenv(PRESET_ENV, "cpu")
    preset, device = setup(seed=1, preset="auto", device="cpu")
    assert (preset, device) == ("cpu", "cpu")


def test_the_test_session_sets_the_cpu_preset_and_kernels_inherit_it():
    """conftest sets PHYSLLM_PRESET=cpu in os.environ; a child process (what nbval and
    papermill start for a kernel) picks the CPU preset even where CUDA is available."""
    assert os.environ.get(PRESET_ENV) in ("cpu", "gpu")  # set by conftest, or asked for
    code = (
        "import torch; torch.cuda.is_available = lambda: True\n"
        "from physllm.notebook import pick_preset; print(pick_preset('auto'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == os.environ[PRESET_ENV]


def test_corpus_notice_names_the_file_or_the_corpus(monkeypatch, tmp_path):
    (tmp_path / pdata.SHAKESPEARE_FILE).write_text("First Citizen:\nSpeak.\n" * 50)
    monkeypatch.setenv("PHYSLLM_DATA_DIR", str(tmp_path))
    line = corpus_notice("default")
    assert "TinyShakespeare" in line and str(tmp_path / pdata.SHAKESPEARE_FILE) in line
    assert "\n" not in line
    assert corpus_notice("pydocs") == "corpus: pydocs"


def test_shakespeare_marker_skips_with_the_reason_where_the_file_is_absent(monkeypatch, tmp_path):
    if (pdata.data_dirs()[-1] / pdata.SHAKESPEARE_FILE).is_file():
        pytest.skip("this checkout's data/ holds TinyShakespeare: absence cannot be simulated")
    monkeypatch.setenv("PHYSLLM_DATA_DIR", str(tmp_path))  # an empty data folder
    marked = SimpleNamespace(get_closest_marker=lambda name: name == "shakespeare" or None)
    with pytest.raises(
        pytest.skip.Exception, match=r"TinyShakespeare not on disk \(set PHYSLLM_DATA_DIR\)"
    ):
        conftest.pytest_runtest_setup(marked)
    unmarked = SimpleNamespace(get_closest_marker=lambda name: None)
    conftest.pytest_runtest_setup(unmarked)  # no marker: runs whatever the data
    (tmp_path / pdata.SHAKESPEARE_FILE).write_text("ROMEO:\n")
    conftest.pytest_runtest_setup(marked)  # the file is there: runs
    assert SHAKESPEARE_MISSING == "TinyShakespeare not on disk (set PHYSLLM_DATA_DIR)"


@pytest.mark.shakespeare
def test_default_corpus_is_tinyshakespeare_when_on_disk(shakespeare_file):
    """CI's second pass (PHYSLLM_DATA_DIR=../shared/data): `default` is the real file."""
    from physllm.tokenization import CharTokenizer

    assert pdata.resolve_default_corpus() == "shakespeare"
    assert corpus_notice("default") == f"corpus: TinyShakespeare ({shakespeare_file})"
    splits = pdata.load_corpus("default")
    text = splits["train"] + splits["val"]
    assert len(text) == 1_115_394 and len(splits["train"]) == int(0.9 * len(text))
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert CharTokenizer.fit(text).vocab_size == 65  # what notebook 00 and nanoGPT say


@pytest.mark.shakespeare
def test_foundations_notebook_runs_on_tinyshakespeare_with_20_steps(run_notebook):
    """Notebook 00's TinyShakespeare path, headless at 20 steps (CI's second pass). Its
    pydocs path is run by nbval and by the report test in the first pass."""
    _, out_dir = run_notebook("00_foundations", steps=20, sample_tokens=20)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["corpus"] == "shakespeare" and metrics["steps"] == 20
    assert metrics["runs"]["gpt"]["model_config"]["vocab_size"] == 65  # the char vocabulary
    assert metrics["notebook"] == "00_foundations" and metrics["tokenizer"] == "char"
    # the notebook's metrics.json carries the trainer's own record of the run
    trained = json.loads((out_dir / "gpt" / "metrics.json").read_text())
    assert metrics["val_loss"] == trained["val_loss"] and metrics["params"] == trained["params"]
    assert math.isfinite(metrics["val_loss"]) and 0 < metrics["unigram_loss"] < math.log(256)
    assert (out_dir / "loss_curves.png").exists()
    assert (out_dir / "gpt" / "best" / "model.safetensors").exists()


SHOW_SOURCE_CALL = re.compile(r"^show_source\((.+)\)$")


def _imports_of(nb) -> str:
    """Every `from physllm... import ...` statement of a notebook's code cells."""
    statements = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            tree = ast.parse(
                "\n".join(ln for ln in cell.source.splitlines() if not ln.startswith(("%", "!")))
            )
            statements += [
                ast.unparse(node)
                for node in tree.body
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("physllm")
            ]
    return "\n".join(statements)


@pytest.mark.parametrize("path", sorted(conftest.NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_stored_show_source_outputs_are_todays_code(path):
    """nbval compares each `show_source` cell's stored output with the code it shows today;
    this finds a stale one in a second, instead of half an hour into the nbval run."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    namespace: dict = {}
    exec(_imports_of(nb), namespace)
    for cell in nb.cells:
        lines = (
            [ln for ln in cell.source.splitlines() if ln.strip()]
            if cell.cell_type == "code"
            else []
        )
        calls = [SHOW_SOURCE_CALL.match(ln) for ln in lines]
        if not lines or not all(calls):
            continue
        shown = [
            o["data"]["text/markdown"] for o in cell.outputs if "text/markdown" in o.get("data", {})
        ]
        expected = [
            f"```python\n{inspect.getsource(eval(m.group(1), namespace))}\n```" for m in calls
        ]
        assert shown == expected, (
            f"{path.name}: stored output of {cell.source!r} is stale; re-execute it"
        )


@pytest.mark.parametrize("path", sorted(conftest.NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_parameter_is_its_own_assignment(path):
    """papermill and `physllm report -p` see only `name = value` lines: a knob in a tuple
    assignment (`a, b = 1, 2`) cannot be set from the command line."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.unparse(node)
        assert isinstance(node.targets[0], ast.Name), f"{path.name}: {ast.unparse(node)}"
