"""pytest settings for every test run from this checkout: ``tests/`` and the notebooks alike.

At the repository root so that it is loaded whatever the command names:
``python -m pytest --nbval``, ``pytest tests``, or one notebook
(``pytest --nbval notebooks/03_ngt.ipynb``, which would not load
``tests/conftest.py``). The notebooks' kernels inherit this process's
environment and must run the CPU preset: ``preset="auto"`` would pick the GPU
preset (the seeds' 124M-parameter runs) on any CUDA machine. An explicit
``PHYSLLM_PRESET`` is kept.
"""

from __future__ import annotations

import os

os.environ.setdefault("PHYSLLM_PRESET", "cpu")
