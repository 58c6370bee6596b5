"""pytest settings for nbval runs of these notebooks (not a notebook itself).

``python -m pytest --nbval notebooks/03_ngt.ipynb`` loads this file and not
``tests/conftest.py``; either way the notebooks' kernels, which inherit this
process's environment, must run the CPU preset: ``preset="auto"`` would pick
the GPU preset (the seeds' 124M-parameter runs) on any CUDA machine. An
explicit ``PHYSLLM_PRESET`` is kept.
"""

from __future__ import annotations

import os

os.environ.setdefault("PHYSLLM_PRESET", "cpu")
