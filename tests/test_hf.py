"""The HF transformers wrapper: Auto classes, the state as cache, save/load, sampling knobs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from physllm.context_vector.hf import (  # noqa: E402
    ContextVectorForCausalLM,
    ContextVectorHFConfig,
    export_hf,
    hf_tokenizer,
    to_hf,
)
from physllm.context_vector.model import ContextVectorConfig, ContextVectorModel  # noqa: E402
from physllm.errors import PhysllmError  # noqa: E402
from physllm.gpt import GPT, GPTConfig  # noqa: E402
from physllm.sampling import generate  # noqa: E402
from physllm.tokenization import BPETokenizer, CharTokenizer  # noqa: E402
from physllm.training import load_checkpoint, save_checkpoint  # noqa: E402

TINY = dict(vocab_size=30, n_embd=16, n_hidden=24, n_context=8, n_layer=2)


@pytest.fixture(params=["hidden", "input"])
def pair(request) -> tuple[ContextVectorModel, ContextVectorForCausalLM]:
    torch.manual_seed(0)
    model = ContextVectorModel(ContextVectorConfig(gates=request.param, **TINY)).eval()
    return model, to_hf(model)


def test_registered_with_the_auto_classes():
    cfg = AutoConfig.for_model("physllm_context_vector", **TINY)
    assert isinstance(cfg, ContextVectorHFConfig)
    model = AutoModelForCausalLM.from_config(cfg)
    assert isinstance(model, ContextVectorForCausalLM)
    # the physllm model initialises itself: forget gates start open
    assert torch.all(model.model.layers[0].update.bias[:8] == 1.0)


def test_same_logits_and_loss_as_the_physllm_model(pair):
    model, hf = pair
    x = torch.randint(0, 30, (2, 11))
    out = hf(input_ids=x, labels=x)
    logits, loss = model(x[:, :-1], x[:, 1:])
    assert torch.equal(out.logits, model(x)[0])
    assert out.loss.item() == pytest.approx(loss.item(), abs=1e-6)
    assert len(out.state) == 2 and out.state[0].shape == (2, 8)


def test_generate_feeds_one_new_token_per_step(pair):
    _, hf = pair
    lengths = []
    hf.register_forward_pre_hook(
        lambda mod, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    prompt = torch.randint(0, 30, (1, 9))
    out = hf.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 21)
    # the prompt once, then one token per step: the state carries everything else
    assert lengths == [9] + [1] * 11


def test_greedy_generate_matches_physllm_sampling(pair):
    model, hf = pair
    prompt = torch.randint(0, 30, (1, 5))
    ours = generate(model, prompt, 15, temperature=0)
    theirs = hf.generate(prompt, max_new_tokens=15, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)


KNOBS = dict(top_p=0.9, top_k=20, temperature=0.7, repetition_penalty=1.3)


def test_generate_with_sampling_knobs_matches_physllm_sampling(pair):
    """HF's sampler and physllm's apply the same knobs in the same order and draw with
    one ``torch.multinomial`` per step: from the same seed, the same tokens."""
    model, hf = pair
    torch.manual_seed(0)
    prompt = torch.randint(0, 30, (2, 4))
    runs = {}
    for seed in (5, 6):
        torch.manual_seed(seed)
        theirs = hf.generate(prompt, max_new_tokens=24, do_sample=True, pad_token_id=0, **KNOBS)
        torch.manual_seed(seed)
        ours = generate(model, prompt, 24, **KNOBS)
        assert torch.equal(theirs, ours), (seed, theirs, ours)
        runs[seed] = theirs
    assert runs[5].shape == (2, 28) and torch.equal(runs[5][:, :4], prompt)
    assert not torch.equal(runs[5], runs[6])  # it samples: another seed, other tokens
    greedy = hf.generate(prompt, max_new_tokens=24, do_sample=False, pad_token_id=0)
    assert not torch.equal(runs[5], greedy)


def test_save_pretrained_then_from_pretrained_reproduces_logits(pair, tmp_path):
    _, hf = pair
    tokenizer = CharTokenizer.fit("abcdefghijklmnopqrstuvwxyz ,.\n")
    hf.save_pretrained(tmp_path)
    hf_tokenizer(tokenizer).save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # no trust_remote_code
    assert isinstance(loaded, ContextVectorForCausalLM)
    x = torch.randint(0, 30, (2, 13))
    assert torch.equal(loaded(input_ids=x).logits, hf(input_ids=x).logits)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "hello, world.\n"
    assert tok(text)["input_ids"] == tokenizer.encode(text)
    assert tok.decode(tokenizer.encode(text)) == text


def test_bpe_tokenizer_converts():
    bpe = BPETokenizer.fit("the cat sat on the mat. " * 40, vocab_size=280)
    tok = hf_tokenizer(bpe)
    assert tok("the cat")["input_ids"] == bpe.encode("the cat")
    assert tok.eos_token_id == bpe.eos_id


def test_export_a_physllm_checkpoint(tmp_path):
    tokenizer = CharTokenizer.fit("abc de\n")
    torch.manual_seed(0)
    model = ContextVectorModel(ContextVectorConfig(**{**TINY, "vocab_size": tokenizer.vocab_size}))
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    export_hf(*load_checkpoint(tmp_path / "ckpt")[:2], tmp_path / "hf")  # a checkpoint on disk
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tok("abc d", return_tensors="pt")["input_ids"]
    assert ids.tolist() == [tokenizer.encode("abc d")]
    assert (hf(input_ids=ids).logits - model.eval()(ids)[0]).abs().max() < 1e-6
    greedy = hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(greedy, generate(model, ids, 8, temperature=0))
    torch.manual_seed(3)
    out = hf.generate(ids, max_new_tokens=8, do_sample=True, top_p=0.95, pad_token_id=0)
    torch.manual_seed(3)
    ours = generate(model, ids, 8, top_p=0.95)
    assert torch.equal(out, ours), (out, ours)
    # the exported tokenizer decodes to physllm's text, character for character
    for row in (greedy[0], out[0]):
        text = tok.decode(row)
        assert text == tokenizer.decode(row.tolist()) and text.startswith("abc d")
        assert len(text) == ids.shape[1] + 8


def test_only_context_vector_converts_and_padding_is_refused(pair):
    with pytest.raises(PhysllmError):
        to_hf(GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8)))
    _, hf = pair
    x = torch.randint(0, 30, (2, 5))
    with pytest.raises(ValueError, match="padding"):
        hf(input_ids=x, attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]))
