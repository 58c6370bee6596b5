#!/usr/bin/env bash
# Run the `gpu` presets of physllm notebooks on any CUDA box (RunPod, Lambda,
# a workstation) and pack the reports into one tarball.
#
#   bash colab/run_gpu.sh                       # every notebook that has a preset
#   bash colab/run_gpu.sh 00_foundations 03_ngt # just these
#   EXTRA="-p steps 200" bash colab/run_gpu.sh 03_ngt   # a short smoke run first
#
# Environment (all optional):
#   REPO_URL   clone from here when the script is not run inside a checkout
#              (default https://github.com/physllm/physllm)
#   BRANCH     branch to clone (default main)
#   WORKDIR    where to clone (default ./physllm)
#   EXTRA      more report arguments, e.g. "-p steps 2000 --run-name gpu-short" or "--replace"
#   ALLOW_CPU  1: run even without a GPU (for trying the script; the presets are huge)
#   SKIP_INSTALL 1: the environment is ready (a rerun on the same box)
#   REPORTS_DIR where reports go (default reports/ in the repository)
#   PHYSLLM_DATA_DIR, HF_TOKEN, HF_HOME: data location and Hugging Face access,
#              passed through to the notebooks
# Exit status: 0 when every notebook ran, 1 when one failed (its report shows
# where; the others still ran and are in the tarball).
set -euo pipefail

REPO_URL="${REPO_URL:-https://github.com/physllm/physllm}"
BRANCH="${BRANCH:-main}"
EXTRA="${EXTRA:-}"
PYTHON="${PYTHON:-python3}"

# 1. The repository: this checkout if the script lives in one, else a fresh clone.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -f "$here/pyproject.toml" && -d "$here/notebooks" ]]; then
    repo="$here"
else
    repo="${WORKDIR:-$PWD/physllm}"
    if [[ ! -d "$repo/.git" ]]; then
        git clone --depth 1 --branch "$BRANCH" "$REPO_URL" "$repo"
    fi
fi
cd "$repo"
echo "== repository: $repo ($(git rev-parse --short HEAD 2>/dev/null || echo 'no git'))"

# 2. The GPU.
if command -v nvidia-smi >/dev/null && nvidia-smi; then
    :
elif [[ "${ALLOW_CPU:-0}" == "1" ]]; then
    echo "== no GPU found; ALLOW_CPU=1, continuing on the CPU"
else
    echo "error: nvidia-smi finds no GPU (set ALLOW_CPU=1 to run anyway)" >&2
    exit 2
fi

# 3. Install. requirements.txt pins the CPU torch build the tests use; when the
#    box already has a CUDA torch (RunPod's PyTorch images do), keep it.
if [[ "${SKIP_INSTALL:-0}" == "1" ]]; then
    echo "== SKIP_INSTALL=1: using the environment as it is"
elif "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "== keeping the installed CUDA torch: $("$PYTHON" -c 'import torch; print(torch.__version__)')"
    grep -v -E '^(torch([=<>~ ]|$)|-e )' requirements.txt > /tmp/physllm-requirements.txt
    "$PYTHON" -m pip install -q -r /tmp/physllm-requirements.txt
    "$PYTHON" -m pip install -q -e .
else
    "$PYTHON" -m pip install -q -r requirements.txt
fi
if [[ "${SKIP_INSTALL:-0}" != "1" ]]; then  # papermill's kernel "python3" = this python
    "$PYTHON" -m ipykernel install --user --name python3 >/dev/null
fi

# 4. Which notebooks: the arguments, else every notebook with a `preset` parameter.
if [[ $# -gt 0 ]]; then
    notebooks=("$@")
else
    mapfile -t notebooks < <("$PYTHON" - <<'EOF'
import os
from pathlib import Path
import papermill as pm
folder = Path(os.environ.get("PHYSLLM_NOTEBOOKS_DIR") or "notebooks")
for nb in sorted(folder.glob("*.ipynb")):
    if "preset" in pm.inspect_notebook(str(nb)):
        print(nb.stem)
EOF
)
fi
echo "== notebooks: ${notebooks[*]}"

# 5. Run them as reference runs (the ones to commit): one report per notebook
#    under reports/<notebook>/gpu/ (checkpoints are not kept), the index
#    reports/README.md and the README tables rebuilt. An existing gpu run is
#    kept unless EXTRA says --replace. A failure does not stop the others.
reports="$(mkdir -p "${REPORTS_DIR:-reports}" && cd "${REPORTS_DIR:-reports}" && pwd)"
status=0
# shellcheck disable=SC2086  # EXTRA is meant to split into words
"$PYTHON" -m physllm report "${notebooks[@]}" -p preset gpu --reports-dir "$reports" \
    --reference --log-output $EXTRA || status=$?

# 6. Collect: one tarball of the reports to copy home (scp, runpodctl send, ...).
tarball="$(dirname "$reports")/reports-gpu-$(date -u +%Y%m%d-%H%M).tar.gz"
tar czf "$tarball" -C "$(dirname "$reports")" "$(basename "$reports")"
echo "== reports packed into $tarball ($(du -h "$tarball" | cut -f1))"
echo "   at home: tar xzf $(basename "$tarball") && python -m physllm report   # rebuilds the index"
exit "$status"
