"""LoRA adapters: zero update at init, only adapters train, merge is exact, generic targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from physllm.errors import PhysllmError
from physllm.lora import (
    LoRALinear,
    apply_lora,
    lora_parameter_counts,
    lora_state_dict,
    mark_only_lora_trainable,
    merge_lora,
)


class TinyAttention(nn.Module):
    """HF Llama's attention projection names, to show the adapters are generic."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=True)
        self.gate = nn.Linear(d, d)

    def forward(self, x):
        return self.o_proj(self.q_proj(x) * self.k_proj(x) + self.v_proj(x)) + self.gate(x)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([TinyAttention(), TinyAttention()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_lora_update_starts_at_zero_and_keeps_names():
    torch.manual_seed(0)
    base = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    ref = base(x)
    lora = LoRALinear.from_linear(base, r=2, alpha=4)
    assert lora.weight is base.weight  # shared, not copied
    torch.testing.assert_close(lora(x), ref)
    assert set(dict(lora.named_parameters())) == {"weight", "bias", "lora_A", "lora_B"}
    assert lora.scaling == 2.0


def test_apply_lora_on_llama_names_and_trainability():
    torch.manual_seed(0)
    model = Tiny()
    names = apply_lora(model, ("q_proj", "k_proj", "v_proj", "o_proj"), r=4, alpha=8)
    assert len(names) == 8 and all("gate" not in n for n in names)
    trainable = mark_only_lora_trainable(model)
    counts = lora_parameter_counts(model)
    assert trainable == counts["trainable"] == counts["lora"] == 8 * 4 * (16 + 16)
    assert set(lora_state_dict(model)) == {f"{n}.lora_{ab}" for n in names for ab in "AB"}
    # glob patterns select by full name
    other = Tiny()
    assert apply_lora(other, ("layers.1.*_proj",)) == [
        f"layers.1.{p}_proj" for p in ("q", "k", "v", "o")
    ]
    with pytest.raises(PhysllmError):
        apply_lora(Tiny(), ("nothing_here",))


def test_merge_equals_unmerged():
    torch.manual_seed(0)
    model = Tiny()
    apply_lora(model, ("q_proj", "v_proj"), r=4, alpha=8)
    with torch.no_grad():  # a trained-looking, non-zero update
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    x = torch.randn(5, 16)
    before = model(x)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)
