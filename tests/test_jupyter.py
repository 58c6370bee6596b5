"""`jupyter lab` opens both halves of a notebook pair as notebooks.

Jupytext's contents manager (enabled by installing jupytext, which the
requirements name) serves a paired ``NN_name.py`` as a notebook with the same
cells as ``NN_name.ipynb``. The test starts a real Jupyter server on the
loopback interface and asks it, as JupyterLab does when a file is opened.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest

from .conftest import NOTEBOOKS, REPO

NOTEBOOK = "00_foundations"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyter_server(tmp_path_factory):
    """A `jupyter lab` server on 127.0.0.1 rooted at the repository; yields (base url, token)."""
    port, token = free_port(), secrets.token_hex(16)
    runtime = tmp_path_factory.mktemp("jupyter-runtime")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={REPO}",
            "--ServerApp.port_retries=0",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("jupyter lab did not answer within 60 s")
    yield base, token
    proc.terminate()
    proc.wait(timeout=20)


def get_contents(server, path: str) -> dict:
    base, token = server
    url = f"{base}/api/contents/{path}?type=notebook&content=1&token={token}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("suffix", [".ipynb", ".py"])
def test_jupyter_lab_opens_both_halves_of_a_pair_as_the_same_notebook(jupyter_server, suffix):
    model = get_contents(jupyter_server, f"notebooks/{NOTEBOOK}{suffix}")
    assert model["type"] == "notebook"
    reference = nbformat.read(NOTEBOOKS / f"{NOTEBOOK}.ipynb", as_version=4)
    cells = model["content"]["cells"]
    assert [c["source"] for c in cells] == [c["source"] for c in reference.cells]
    # The .py half is served with the .ipynb's outputs: jupytext reads the pair.
    code = [c for c in cells if c["cell_type"] == "code"]
    assert any(c["outputs"] for c in code)
