"""physllm: physics-inspired language models on one small, tested package.

The package holds every piece of logic; the notebooks in ``notebooks/`` import
it, explain it and run it. Start with :mod:`physllm.models` (the architectures),
:mod:`physllm.training` (one trainer) and :mod:`physllm.sampling` (decoding).
"""

from physllm.errors import PhysllmError

__version__ = "0.1.0"
__all__ = ["PhysllmError", "__version__"]
