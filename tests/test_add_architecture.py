"""Adding an architecture touches no package file (CONTRIBUTING.md, "Adding an architecture").

A throwaway architecture is defined here: a config, a model, a preset, a
leaderboard entry and a CLI command, all in one :class:`~physllm.arch.Architecture`.
Registered from outside the package, it is built by name, trained through the
CLI, found by the preset lookup and the leaderboard, and its command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from physllm.arch import Architecture, Command, Entry, LanguageModel, ModelConfig, Preset
from physllm.cli import main
from physllm.errors import PhysllmError
from physllm.experiments.leaderboard import all_entries, bench_all_config, select_entries
from physllm.models import ARCHITECTURES, build_model, register, unregister
from physllm.training import get_preset
from physllm.validation import PROBABILITY, Rule

NAME = "toy_running_mean"


@dataclass
class ToyConfig(ModelConfig):
    n_embd: int = 16
    mix: float = 0.5  # a field no other model has: becomes --mix

    field_rules: ClassVar[dict[str, Rule]] = {"mix": PROBABILITY}


class ToyLM(LanguageModel):
    """Each position reads its own embedding plus ``mix`` times the running mean before it."""

    config_class = ToyConfig

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, V); loss if targets (B, T) given."""
        x = self.wte(idx)  # (B, T, C)
        counts = torch.arange(1, idx.size(1) + 1, device=idx.device)[None, :, None]
        logits = self.head(x + self.config.mix * x.cumsum(1) / counts)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--greeting", default="hello")


def _check(args: argparse.Namespace) -> None:
    if not args.greeting:
        raise PhysllmError("--greeting must not be empty")


def _run(args: argparse.Namespace, model, tokenizer, device) -> None:
    print(f"{args.greeting} from {type(model).__name__}, mix={model.config.mix}")


ARCH = Architecture(
    name=NAME,
    config_class=ToyConfig,
    model_class=ToyLM,
    presets={"cpu": Preset(model={"n_embd": 8, "block_size": 16}, train={"batch_size": 4})},
    leaderboard=(Entry(NAME, NAME, "running mean (test only)", match="n_embd", match_step=8),),
    commands=(
        Command(
            name="toy-hello",
            help="greet from a toy checkpoint",
            add_arguments=_add_arguments,
            check=_check,
            run=_run,
            model_class=ToyLM,
        ),
    ),
)


@pytest.fixture(scope="module")
def toy() -> Iterator[Architecture]:
    register(ARCH)
    try:
        yield ARCH
    finally:
        unregister(NAME)
    assert NAME not in ARCHITECTURES


def test_built_by_name(toy):
    model = build_model(NAME, {"vocab_size": 11, "n_embd": 4, "mix": 0.25})
    assert isinstance(model, ToyLM) and model.config.mix == 0.25
    logits, _ = model(torch.zeros(2, 5, dtype=torch.long))
    assert logits.shape == (2, 5, 11)
    with pytest.raises(PhysllmError, match="mix"):
        build_model(NAME, {"mix": 2.0})  # its own rules apply


def test_preset_and_leaderboard_find_it(toy):
    assert get_preset(NAME, "cpu") == {"batch_size": 4, "n_embd": 8, "block_size": 16}
    assert [e.name for e in select_entries(NAME)] == ["gpt", NAME]  # gpt: the reference
    assert all_entries()[-1].name == NAME  # registered after import, still there
    assert NAME in bench_all_config("cpu")[1].values()  # and in bench --all


def test_train_help_shows_its_fields_and_top_help_its_command(toy, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", NAME, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"model ({NAME})" in out and "--mix" in out and "--n-embd" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "toy-hello" in capsys.readouterr().out


@pytest.fixture(scope="module")
def toy_run(toy, small_text_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy_run")
    main(
        ["train", "--model", NAME, "--preset", "cpu", "--corpus", str(small_text_file),
         "--out-dir", str(out), "--mix", "0.75", "--steps", "2", "--eval-iters", "1",
         "--no-progress", "--no-tensorboard"]
    )  # fmt: skip
    return out


def test_trained_through_the_cli_and_its_command_runs(toy_run, capsys, tiny_run):
    assert (toy_run / "metrics.json").exists()
    capsys.readouterr()
    main(["toy-hello", "--ckpt", str(toy_run), "--greeting", "hi"])
    assert capsys.readouterr().out == "hi from ToyLM, mix=0.75\n"
    # bad input is one line and exit 2, before the checkpoint is read...
    with pytest.raises(SystemExit) as exit_:
        main(["toy-hello", "--ckpt", str(toy_run / "missing"), "--greeting", ""])
    assert exit_.value.code == 2
    assert "--greeting must not be empty" in capsys.readouterr().err
    # ...and a checkpoint of another architecture is refused
    with pytest.raises(SystemExit) as exit_:
        main(["toy-hello", "--ckpt", str(tiny_run)])
    assert exit_.value.code == 2
    assert f"toy-hello needs a {NAME} checkpoint" in capsys.readouterr().err
