"""LoRA: low-rank adapters on frozen linear layers (Hu et al. 2021).

A frozen weight W (out x in) gets a trainable low-rank correction:

    y = x W^T + b + (alpha / r) * x A^T B^T          A: (r, in), B: (out, r)

B starts at zero, so an adapted model computes exactly what the base model
did until training moves B; only A and B (r * (in + out) numbers per layer)
are trained. Merging folds the correction into the weight once,

    W' = W + (alpha / r) * B A,

after which the adapted layer is a plain ``nn.Linear`` again and costs
nothing extra at inference.

Generic over models: :func:`apply_lora` replaces any ``nn.Linear`` whose name
matches, so the same code adapts QLLM's ``q``/``k``/``v``/``o`` and an HF
Llama's ``q_proj``/``k_proj``/``v_proj``/``o_proj``. :class:`LoRALinear` *is*
an ``nn.Linear`` that keeps the base layer's parameter names (``weight``,
``bias``) and adds ``lora_A``/``lora_B``, so a base checkpoint loads into an
adapted model unchanged (only the adapters are missing from it).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from physllm.errors import PhysllmError

LORA_MARK = "lora_"  # every adapter parameter's name contains this


def is_lora_name(name: str) -> bool:
    """Whether a parameter name belongs to an adapter."""
    return LORA_MARK in name


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a rank-``r`` update scaled by ``alpha / r``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        r: int = 32,
        alpha: float = 64.0,
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if r <= 0:
            raise PhysllmError(f"LoRA rank r must be positive, got {r}")
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r  # alpha / r: changing r does not change the update's scale
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(
            self.lora_A, a=math.sqrt(5)
        )  # A random, B zero: update starts at 0
        self.lora_dropout = nn.Dropout(dropout)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, r: int = 32, alpha: float = 64.0, dropout: float = 0.0
    ) -> LoRALinear:
        """Wrap an existing layer; its weight and bias are shared, not copied."""
        w = linear.weight
        new = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            r=r,
            alpha=alpha,
            dropout=dropout,
            device=w.device,
            dtype=w.dtype,
        )
        new.weight = linear.weight
        new.bias = linear.bias
        return new

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) B A: what merging adds to the weight, (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # y = x W^T + b + (alpha / r) (x A^T) B^T   (never forms B A: r << in, out)
        base = F.linear(x, self.weight, self.bias)
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return base + self.scaling * update

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha}"


def effective_weight(linear: nn.Linear) -> torch.Tensor:
    """The weight ``linear`` applies in eval mode: W, or for a :class:`LoRALinear`
    W + (alpha / r) B A (what merging would store)."""
    if isinstance(linear, LoRALinear):
        return linear.weight + linear.delta_weight().to(linear.weight.dtype)
    return linear.weight


def _matches(name: str, targets: Iterable[str]) -> bool:
    """A target matches a module's last name component exactly, or its full dotted
    name as a glob pattern (``"blocks.0.*"``, ``"*.self_attn.q_proj"``)."""
    last = name.rsplit(".", 1)[-1]
    return any(last == t or fnmatch.fnmatchcase(name, t) for t in targets)


def apply_lora(
    model: nn.Module,
    target_names: Iterable[str] = ("q", "k", "v", "o"),
    r: int = 32,
    alpha: float = 64.0,
    dropout: float = 0.0,
) -> list[str]:
    """Replace every ``nn.Linear`` whose name matches ``target_names`` by a :class:`LoRALinear`.

    Returns the adapted modules' names. Raises if nothing matched (a typo in the
    targets would otherwise fine-tune nothing).
    """
    targets = tuple(target_names)
    chosen = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not isinstance(module, LoRALinear)
        and _matches(name, targets)
    ]
    if not chosen:
        raise PhysllmError(f"apply_lora: no nn.Linear module matches {list(targets)}")
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear.from_linear(getattr(parent, child), r, alpha, dropout))
    return chosen


def mark_only_lora_trainable(model: nn.Module) -> int:
    """Freeze everything but the adapters; return the number of trainable parameters."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_lora_name(name))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters' tensors: what a fine-tune needs to ship on top of its base."""
    return {k: v for k, v in model.state_dict().items() if LORA_MARK in k}


def lora_parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"total", "trainable", "lora"}`` parameter counts (tied tensors counted once)."""
    params = list(model.named_parameters())
    return {
        "total": sum(p.numel() for _, p in params),
        "trainable": sum(p.numel() for _, p in params if p.requires_grad),
        "lora": sum(p.numel() for n, p in params if LORA_MARK in n),
    }


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (W += (alpha/r) B A) and turn the layer back
    into a plain ``nn.Linear``; in place, returns ``model``.

    If ``model.config`` has a ``lora_rank`` field it is set to 0, so a checkpoint of
    the merged model describes (and reloads as) a model without adapters.
    """
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, module in found:
        plain = nn.Linear(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            device="meta",  # no allocation: the parameters are set just below
        )
        module.weight.add_(module.delta_weight().to(module.weight.dtype))
        plain.weight = module.weight
        plain.bias = module.bias
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, plain)
    config = getattr(model, "config", None)
    if found and config is not None and hasattr(config, "lora_rank"):
        config.lora_rank = 0
    return model


__all__ = [
    "LoRALinear",
    "apply_lora",
    "effective_weight",
    "is_lora_name",
    "lora_parameter_counts",
    "lora_state_dict",
    "mark_only_lora_trainable",
    "merge_lora",
]
