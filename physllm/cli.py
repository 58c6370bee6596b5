"""``python -m physllm <command>``: train, sample, bench, corpora, steer, report, chat.

The commands are the :data:`COMMANDS` table below; ``python -m physllm --help``
lists them with one line each. steer, report and chat live beside the code
they drive (:mod:`physllm.hamiltonian.steering`, :mod:`physllm.reports`, :mod:`physllm.context_vector.chat`).

Every field of :class:`~physllm.training.TrainConfig` and of the chosen model's
config is a flag (``n_embd`` -> ``--n-embd``). Bad input ends with one line on
stderr and exit status 2; nothing on disk is touched before the input is
known to be good.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

from physllm.errors import PhysllmError
from physllm.validation import NON_NEGATIVE, POSITIVE, check_fields, check_values, in_range


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2), like every other error,
    and flags are never abbreviated: ``--mode`` must not quietly mean ``--model``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_flags(
    parser: argparse.ArgumentParser, cls: type, skip: set[str] = frozenset()
) -> None:
    """One ``--flag`` per dataclass field; defaults are None so only given flags override."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if kind is bool:
            parser.add_argument(
                flag(f.name),
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"(default: {default})",
            )
        elif kind in (int, float, str):
            parser.add_argument(
                flag(f.name),
                type=kind,
                default=None,
                metavar=kind.__name__.upper(),
                help=f"(default: {default})",
            )


def given(args: argparse.Namespace, names: set[str]) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


# --------------------------------------------------------------------------- train


def train_parser(model: str) -> ArgumentParser:
    from physllm.models import get_model_classes
    from physllm.training import TrainConfig

    parser = ArgumentParser(
        prog="physllm train", description="Train a model; writes OUT/metrics.json and checkpoints."
    )
    parser.add_argument(
        "--preset", default=None, help="a named configuration (physllm/training/presets.py), e.g. cpu or gpu"
    )
    add_dataclass_flags(parser.add_argument_group("training"), TrainConfig, skip={"model_config"})
    add_dataclass_flags(parser.add_argument_group(f"model ({model})"), get_model_classes(model)[0])
    return parser


def cmd_train(argv: Sequence[str]) -> None:
    from physllm.models import MODELS
    from physllm.training import make_config, train

    pre = ArgumentParser(add_help=False)
    pre.add_argument("--model", default="gpt")
    known, _ = pre.parse_known_args(argv)
    if known.model not in MODELS:
        raise PhysllmError(f"unknown model {known.model!r}; choose from {', '.join(MODELS)}")
    parser = train_parser(known.model)
    args = parser.parse_args(argv)
    overrides = {
        k: v for k, v in vars(args).items() if v is not None and k not in ("preset", "model")
    }
    cfg = make_config(known.model, args.preset, **overrides)
    result = train(cfg)
    m = result.metrics
    print(
        f"{m['model']}: {m['params'] / 1e6:.2f}M params, {m['steps']} steps, val loss {m['val_loss']:.4f} "
        f"({m['val_bpc']:.3f} bits/{m['bpc_unit']}), {m['ms_per_step']:.1f} ms/step -> {cfg.out_dir}/metrics.json"
    )


# --------------------------------------------------------------------------- sample

SAMPLE_RULES = {
    "max_new_tokens": NON_NEGATIVE,
    "num_samples": POSITIVE,
    "seed": in_range(0, 2**32, high_open=True),  # as TrainConfig's
}


def cmd_sample(argv: Sequence[str]) -> None:
    import torch

    from physllm.training.checkpoint import load_checkpoint
    from physllm.sampling import SamplingConfig, TextStream, stream_generate
    from physllm.training import resolve_device

    parser = ArgumentParser(
        prog="physllm sample", description="Continue a prompt with a trained model."
    )
    parser.add_argument(
        "--ckpt", required=True, help="a run folder (uses best/) or a checkpoint folder"
    )
    parser.add_argument("--prompt", default="\n")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cpu")
    add_dataclass_flags(parser.add_argument_group("sampling"), SamplingConfig)
    args = parser.parse_args(argv)
    knobs = SamplingConfig(**given(args, {f.name for f in dataclasses.fields(SamplingConfig)}))
    check_fields(knobs)  # finite numbers (an inf temperature or penalty is nonsense too)
    knobs.validate()
    check_values(vars(args), SAMPLE_RULES)
    device = resolve_device(args.device)
    model, tokenizer, _ = load_checkpoint(args.ckpt, device)
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise PhysllmError("the prompt encodes to no tokens")
    generator = torch.Generator(device=device).manual_seed(args.seed)
    for i in range(args.num_samples):
        if i:
            print("\n" + "-" * 40)
        sys.stdout.write(args.prompt)
        idx = torch.tensor([ids], device=device)
        stream = TextStream(tokenizer)  # holds back a character split over byte tokens
        for token in stream_generate(
            model,
            idx,
            args.max_new_tokens,
            generator=generator,
            eos_id=tokenizer.eos_id,
            **dataclasses.asdict(knobs),
        ):
            if piece := stream.push(token):
                sys.stdout.write(piece)
                sys.stdout.flush()
        sys.stdout.write(stream.flush() + "\n")


# --------------------------------------------------------------------------- bench, corpora


def cmd_bench(argv: Sequence[str]) -> None:
    from physllm.bench import BenchConfig, format_table, run_bench
    from physllm.models import MODELS

    parser = ArgumentParser(
        prog="physllm bench",
        description=(
            "Forward+backward tokens/s and peak memory of registered models at one shape, "
            "measured in one run, with ratios against gpt. Without --models: every "
            "leaderboard entry (each registered model, both context_vector forms, both ngt "
            "kernels) at the leaderboard's training shape and matched parameter counts."
        ),
    )
    parser.add_argument(
        "--models", default=None, help="comma-separated names (default: every leaderboard entry)"
    )
    parser.add_argument(
        "--all", action="store_true", help="every leaderboard entry (the default without --models)"
    )
    parser.add_argument(
        "--preset",
        default="auto",
        help="--all: the leaderboard recipe whose shape is used (cpu, gpu; auto: gpu with CUDA)",
    )
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    add_dataclass_flags(parser, BenchConfig, skip={"models"})
    args = parser.parse_args(argv)
    if args.json:  # written after the (long) run: make sure it can be
        check_writable_file(args.json, "--json")
    changes = given(args, {f.name for f in dataclasses.fields(BenchConfig)} - {"models"})
    labels: dict[str, str] = {}
    if args.all or not args.models:
        from physllm.leaderboard import bench_all_config
        from physllm.notebook import pick_preset

        cfg, labels = bench_all_config(pick_preset(args.preset), **changes)
    else:
        names = [m.strip() for m in args.models.split(",")]
        unknown = [
            n for n in names if n.partition(":")[0] not in MODELS
        ]  # "ngt:kernel=seed" is ngt
        if unknown:
            raise PhysllmError(
                f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}"
            )
        cfg = BenchConfig(models=names, **changes)
    if cfg.mode == "generate":  # streaming decode at several lengths (physllm.bench)
        from physllm.bench import format_generation_table, run_generation_bench

        rows = run_generation_bench(cfg)
        table = format_generation_table
    elif cfg.mode == "lengths":  # training and decoding at each of --lengths
        from physllm.bench import format_length_table, run_length_bench

        rows = run_length_bench(cfg)
        table = format_length_table
    elif cfg.mode == "train":
        rows = run_bench(cfg)
        table = format_table
    else:
        raise PhysllmError(f"--mode must be train, generate or lengths, got {cfg.mode!r}")
    for row in rows:
        row["label"] = labels.get(row["model"], row["model"])
        if "reference" in row:
            row["reference"] = labels.get(row["reference"], row["reference"])
    print(table(rows, cfg))
    if labels:
        print("# entries (physllm.leaderboard):")
        for spec, name in labels.items():
            print(f"#   {name:<22} {spec}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": dataclasses.asdict(cfg), "rows": rows}, fh, indent=2)


def check_writable_file(path: str, what: str) -> None:
    """``path`` can be (over)written: not a folder, and its folder exists."""
    from pathlib import Path

    target = Path(path)
    if target.is_dir():
        raise PhysllmError(f"{what} {path} is a folder, not a file")
    if not target.parent.is_dir():
        raise PhysllmError(f"{what} {path}: folder {target.parent} does not exist")


def cmd_corpora(argv: Sequence[str]) -> None:
    from physllm.data import cache_dir, list_corpora

    parser = ArgumentParser(
        prog="physllm corpora", description="List corpora, where each comes from, what is cached."
    )
    parser.parse_args(argv)
    rows = list_corpora()
    width = max(len(r["corpus"]) for r in rows)
    print(f"{'corpus':<{width}}  source  [cached tokenizers]   (cache: {cache_dir()})")
    for r in rows:
        cached = f"  [{r['cached']}]" if r["cached"] else ""
        print(f"{r['corpus']:<{width}}  {r['source']}{cached}")
    print(
        "also: any UTF-8 text file, a folder (every text file in it), a glob like "
        "'docs/**/*.md', and hf:<id>[:<config>]"
    )


# name -> ("module:function", help). Commands live beside the code they drive
# (steering in the Hamiltonian model, chat with the context-vector model...) and
# are imported only when called, so `--help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("physllm.cli:cmd_train", "train a model (every config field is a --flag)"),
    "sample": ("physllm.cli:cmd_sample", "continue a prompt with a trained model"),
    "bench": ("physllm.cli:cmd_bench", "speed and memory of models side by side"),
    "corpora": ("physllm.cli:cmd_corpora", "list corpora and cache state"),
    "steer": (
        "physllm.hamiltonian.steering:cmd_steer",
        "steer generation toward or away from a word (Hamiltonian)",
    ),
    "report": (
        "physllm.reports:cmd_report",
        "run notebooks with papermill into reports/ and rebuild the index",
    ),
    "chat": ("physllm.context_vector.chat:cmd_chat", "chat with a chat-trained model (REPL)"),
}


def resolve_command(name: str) -> Callable[[Sequence[str]], None]:
    import importlib

    module, _, func = COMMANDS[name][0].partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m physllm <command> [--help]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<9} {help_text}")
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"physllm: error: unknown command {command!r}; choose from {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        resolve_command(command)(rest)
    except PhysllmError as err:
        print(f"physllm {command}: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print(f"physllm {command}: interrupted", file=sys.stderr)
        sys.exit(130)
