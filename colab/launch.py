# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     gpuType: T4
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator,colab
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # physllm on a Colab GPU: run a notebook, keep its report
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/physllm/physllm/blob/main/colab/launch.ipynb)
#
# This notebook installs the repository, lets you pick one of its notebooks and
# its parameters, runs it headless with papermill through
# `python -m physllm report`, and copies the report (executed notebook,
# self-contained HTML, `metrics.json`, figures) to your Google Drive.
#
# 1. **Runtime → Change runtime type → GPU** (a T4 works; an A100/L4 is much faster).
# 2. Run the cells down to the form (click into the "Run" cell, then
#    **Runtime → Run before**), pick the notebook and type its parameters
#    there, then **Runtime → Run after**. Without the form, edit the settings
#    cell below and **Runtime → Run all**.
# 3. The report lands in `MyDrive/physllm-reports/<notebook>/<run>/`, with an
#    index `MyDrive/physllm-reports/README.md` of every run saved there.
#
# The `gpu` presets are the seed projects' scale and take hours; `-p steps N`
# shortens any run (try `steps 200` first to see the pipeline end to end).
# A Colab session ends after some hours of use: the report is copied to
# Drive when the run ends, failed or not.

# %% tags=["parameters"]
# Settings: the plain-code way (the form below sets the same variables).
REPO_URL = "https://github.com/physllm/physllm"
BRANCH = "main"
NOTEBOOKS = "00_foundations"  # one or more stems separated by spaces, or "all"
PARAMETERS = (
    "preset gpu"  # notebook parameters as "key value key value ...", e.g. "preset gpu steps 500"
)
RUN_NAME = ""  # empty: gpu[-keyvalue...] from the parameters
DRIVE_FOLDER = "physllm-reports"  # under MyDrive; empty: keep the report in this session only
STREAM_OUTPUT = True  # print the notebook's cell outputs (training progress) while it runs
USE_FORM = True  # False: use the values above as they are

# %%
# ruff: noqa: E402 (a notebook: each cell imports what it uses)
# Install: clone the repository (the report command needs its notebooks) and
# install it editable. Colab's own CUDA build of torch is kept: requirements.txt
# pins the CPU build used by the tests, so its torch line is skipped here.
import os
import subprocess
import sys
from pathlib import Path

IN_COLAB = "google.colab" in sys.modules


def sh(cmd: str, cwd: str | os.PathLike | None = None) -> None:
    """Run a shell command, streaming its output; stop the notebook if it fails."""
    print("$", cmd)
    subprocess.run(cmd, shell=True, check=True, cwd=cwd)


if IN_COLAB:
    REPO = Path("/content/physllm")
    if not (REPO / ".git").exists():
        sh(f"git clone --depth 1 --branch {BRANCH} {REPO_URL} {REPO}")
    else:
        sh("git pull --ff-only", cwd=REPO)
    sh(
        "grep -v -E '^(torch([=<>~ ]|$)|-e )' requirements.txt > /tmp/requirements-colab.txt",
        cwd=REPO,
    )
    sh("pip install -q -r /tmp/requirements-colab.txt && pip install -q -e .", cwd=REPO)
else:  # running locally from a checkout: use it as it is
    REPO = Path.cwd().resolve()
    while not (REPO / "pyproject.toml").exists() and REPO != REPO.parent:
        REPO = REPO.parent
print("repository:", REPO)

# %%
# The GPU this session got (the report records it too).
import torch

if torch.cuda.is_available():
    print(
        torch.cuda.get_device_name(0),
        f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB",
    )
else:
    print(
        "No GPU: Runtime -> Change runtime type -> GPU (or pass 'preset cpu' to run the CPU preset)"
    )

# %%
# The form: a dropdown of the repository's notebooks and text fields for the
# parameters. It only sets the variables; the next cell runs.
available = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))
print("notebooks:", ", ".join(available))
choice = {
    "notebooks": NOTEBOOKS,
    "parameters": PARAMETERS,
    "run_name": RUN_NAME,
    "drive_folder": DRIVE_FOLDER,
}
try:
    if not USE_FORM:
        raise ImportError("form turned off")
    import ipywidgets as widgets
    from IPython.display import display

    dropdown = widgets.Dropdown(
        options=[*available, "all"],
        value=NOTEBOOKS if NOTEBOOKS in [*available, "all"] else available[0],
        description="notebook",
    )
    fields = {
        "parameters": widgets.Text(value=PARAMETERS, description="parameters"),
        "run_name": widgets.Text(value=RUN_NAME, description="run name", placeholder="auto"),
        "drive_folder": widgets.Text(value=DRIVE_FOLDER, description="Drive folder"),
    }

    def _bind(key):
        def update(change):
            choice[key] = change["new"]

        return update

    dropdown.observe(_bind("notebooks"), names="value")
    choice["notebooks"] = dropdown.value
    for key, field in fields.items():
        field.observe(_bind(key), names="value")
    display(widgets.VBox([dropdown, *fields.values()]))
except ImportError as err:
    print(f"no form ({err}): using the settings cell's values:", choice)

# %%
# Run: `python -m physllm report NOTEBOOKS -p key value ... [--run-name NAME]`.
import shlex

words = shlex.split(choice["parameters"])
if len(words) % 2:
    raise ValueError(f"parameters must be key value pairs, got {choice['parameters']!r}")
command = [sys.executable, "-m", "physllm", "report", *choice["notebooks"].split()]
for key, value in zip(words[::2], words[1::2]):
    command += ["-p", key, value]
if choice["run_name"].strip():
    command += ["--run-name", choice["run_name"].strip()]
if STREAM_OUTPUT:
    command.append("--log-output")
print("$ python", shlex.join(command[1:]))
result = subprocess.run(command, cwd=REPO)
print(
    "exit status",
    result.returncode,
    "(0: every notebook ran; 1: a notebook failed, see its report)",
)

# %%
# Save to Drive: the whole reports/ folder (every run of this session and the index).
import shutil

reports = REPO / "reports"
if choice["drive_folder"].strip() and IN_COLAB:
    from google.colab import drive

    drive.mount("/content/drive")
    target = Path("/content/drive/MyDrive") / choice["drive_folder"].strip()
    shutil.copytree(reports, target, dirs_exist_ok=True)
    # the index on Drive lists every run saved there, from earlier sessions too
    subprocess.run(
        [sys.executable, "-m", "physllm", "report", "--reports-dir", str(target)], check=True
    )
    print("saved to", target)
else:
    print("reports are in", reports, "(not copied to Drive)")

# %%
# The index of this machine's runs (links are relative to its folder). The
# launcher's runs are local runs (`reports/local/`); committed reference runs
# are written with `--reference` (see colab/README.md).
from IPython.display import Markdown, display

display(Markdown((reports / "local" / "README.md").read_text()))
if result.returncode != 0:
    raise RuntimeError("a notebook failed: its report shows the failing cell (see above)")
