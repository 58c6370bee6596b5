"""HF transformers wrapper for the context-vector model (New-LLM).

Identical to :class:`physllm.context_vector.model.ContextVectorModel`
except that it speaks transformers' language: a ``PreTrainedConfig``, a
``PreTrainedModel`` + ``GenerationMixin`` whose ``forward`` takes
``input_ids``/``labels`` and returns ``logits``/``loss``, and the recurrent
state as its cache. ``generate`` feeds the prompt once, then one token per
step with the state (n_layer vectors of n_context numbers), so the 1000th
token costs what the first did. Like RWKV in transformers, the cache is a
plain ``state`` argument, not a key/value ``Cache``.

Registered with ``AutoConfig``/``AutoModelForCausalLM`` on import, so

    import physllm.context_vector.hf
    model = AutoModelForCausalLM.from_pretrained(path)   # no trust_remote_code

works for folders written by ``save_pretrained`` (or :func:`export_hf`).
The tokenizer is saved beside the weights as a ``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.utils import ModelOutput

from physllm.context_vector.model import ContextVectorConfig, ContextVectorModel
from physllm.errors import PhysllmError
from physllm.tokenization import BPETokenizer, CharTokenizer, Tokenizer


class ContextVectorHFConfig(PreTrainedConfig):
    """The fields of :class:`ContextVectorConfig`, as a transformers config."""

    model_type = "physllm_context_vector"
    attribute_map = {"hidden_size": "n_hidden", "num_hidden_layers": "n_layer"}

    vocab_size: int = 256
    block_size: int = 256
    n_embd: int = 128
    n_hidden: int = 256
    n_context: int = 128
    n_layer: int = 1
    ffn_depth: int = 1
    dropout: float = 0.0
    form: str = "fixed"
    gates: str = "hidden"
    clamp: float = 10.0
    forget_bias: float = 1.0
    carry_state: bool = False  # how it was trained (truncated BPTT); generation always carries
    use_cache: bool = True
    tie_word_embeddings: bool = False

    def physllm_config(self) -> ContextVectorConfig:
        return ContextVectorConfig(
            **{f.name: getattr(self, f.name) for f in fields(ContextVectorConfig)}
        )


@dataclass
class ContextVectorCausalLMOutput(ModelOutput):
    """``logits`` (B, T, V), ``loss`` if labels were given, ``state`` the cache (one (B, C) per layer)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    state: list[torch.Tensor] | None = None


class ContextVectorForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = ContextVectorHFConfig
    base_model_prefix = "model"
    _is_stateful = True  # the cache is a recurrent state: no assisted decoding, no cache cropping

    def __init__(self, config: ContextVectorHFConfig):
        super().__init__(config)
        self.model = ContextVectorModel(config.physllm_config())
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        # The physllm model initialises itself (normal 0.02, open forget gates).
        if isinstance(module, ContextVectorModel):
            module.init_weights()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our cache is the state, not a key/value DynamicCache

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.wte

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.model.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor,
        state: list[torch.Tensor] | None = None,
        labels: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ContextVectorCausalLMOutput:
        """Read ``input_ids`` (B, T) from ``state`` (None: the empty context).

        ``labels`` follow transformers (shifted inside, -100 ignored). There are
        no positions and no padding: an ``attention_mask`` with zeros is refused.
        """
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("context_vector has no padding support: pass unpadded prompts")
        logits, new_state = self.model.run(input_ids, state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        use_cache = self.config.use_cache if use_cache is None else use_cache
        return ContextVectorCausalLMOutput(
            loss=loss, logits=logits, state=new_state if use_cache else None
        )

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs) -> dict:
        # The cache has a non-standard name (as in RWKV): hand the new state to the next step.
        model_kwargs["state"] = outputs.get("state")
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, state=None, **kwargs) -> dict:
        """The whole prompt first; afterwards only the newest token (the state holds the rest).

        The attention mask ``generate`` builds is not passed on: it guesses
        padding from ``pad_token_id``, which may be a real token of an
        unpadded prompt. Batched prompts must have equal lengths.
        """
        if state is not None:
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, "state": state, "use_cache": kwargs.get("use_cache")}


AutoConfig.register(ContextVectorHFConfig.model_type, ContextVectorHFConfig)
AutoModelForCausalLM.register(ContextVectorHFConfig, ContextVectorForCausalLM)


# --------------------------------------------------------------------------- conversion


def to_hf(model: ContextVectorModel) -> ContextVectorForCausalLM:
    """A transformers model holding a copy of ``model``'s weights."""
    if not isinstance(model, ContextVectorModel):
        raise PhysllmError(f"only context_vector models convert to HF, not {type(model).__name__}")
    hf = ContextVectorForCausalLM(ContextVectorHFConfig(**model.config.to_dict()))
    hf.model.load_state_dict(model.state_dict())
    return hf.eval()


def hf_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """Our tokenizer as a ``PreTrainedTokenizerFast`` (BPE as is; char as a one-char WordLevel)."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    if isinstance(tokenizer, BPETokenizer):
        return PreTrainedTokenizerFast(tokenizer_object=tokenizer.hf, eos_token=BPETokenizer.EOS)
    if isinstance(tokenizer, CharTokenizer):
        tok = HFTokenizer(models.WordLevel(vocab=dict(tokenizer.stoi), unk_token=None))
        # every character is its own token; decoding glues them back without spaces
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return PreTrainedTokenizerFast(tokenizer_object=tok)
    raise PhysllmError(f"no HF tokenizer for {tokenizer.name!r} (char and bpe are supported)")


def export_hf(model: ContextVectorModel, tokenizer: Tokenizer, out_dir: str | Path) -> Path:
    """Write ``model`` and ``tokenizer`` as an HF folder (weights, config, tokenizer) that
    ``AutoModelForCausalLM.from_pretrained`` reads; a checkpoint on disk is first loaded with
    :func:`physllm.training.load_checkpoint`."""
    hf = to_hf(model)
    hf.save_pretrained(out_dir)
    hf_tokenizer(tokenizer).save_pretrained(out_dir)
    return Path(out_dir)


__all__ = [
    "ContextVectorCausalLMOutput",
    "ContextVectorForCausalLM",
    "ContextVectorHFConfig",
    "export_hf",
    "hf_tokenizer",
    "to_hf",
]
