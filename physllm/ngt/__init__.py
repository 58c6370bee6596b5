"""The Newton Gravity Transformer (notebook 03): attention from masses and distances
between learned coordinates that evolve through the layers."""

from physllm.arch import Architecture, Entry, Headline
from physllm.ngt.model import NGT, NGTConfig
from physllm.ngt.presets import PRESETS

ARCH = Architecture(
    name="ngt",
    config_class=NGTConfig,
    model_class=NGT,
    notebook="03_ngt",
    presets=PRESETS,
    # mlp_hidden=0: NGT's MLP widened until it matches GPT (it has no query/key projections)
    leaderboard=(
        Entry(
            "ngt-gaussian",
            "ngt",
            "attractive gaussian kernel through SDPA",
            {"kernel": "gaussian", "mlp_hidden": 0},
        ),
        Entry(
            "ngt-seed",
            "ngt",
            "the seed's repulsive kernel, hard cutoff",
            {"kernel": "seed", "mlp_hidden": 0},
        ),
    ),
    headlines=(Headline("03_ngt", "ngt", "attractive (gaussian) kernel"),),
)

__all__ = ["ARCH", "NGT", "NGTConfig"]
