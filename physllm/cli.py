"""``python -m physllm <command>``: the command line.

Core commands (this module, :mod:`physllm.reporting` for report):

- ``train``    train a model; every field of :class:`~physllm.training.TrainConfig` and of
  the chosen model's config is a flag (``n_embd`` -> ``--n-embd``)
- ``sample``   continue a prompt with a trained model
- ``bench``    speed and memory of models side by side (every leaderboard entry by default)
- ``corpora``  list corpora and what is cached
- ``sweep``    run a grid of training runs from a TOML spec into one results.csv
  (:mod:`physllm.experiments.sweep`; resumable: finished runs are skipped)
- ``choose``   pick between two forms of a leaderboard entry by validation loss at equal
  wall-clock, over seeds (:mod:`physllm.experiments.choices`)
- ``report``   run notebooks with papermill into reports/ and rebuild the index
- ``plan``     estimate a run's parameters, memory, FLOPs and time on common GPUs before
  training (:mod:`physllm.plan`; the ``train`` flags)

Architecture commands, declared by each architecture's ``ARCH.commands``
(:class:`~physllm.arch.Command`) and collected from the registry:

- ``steer``    steer generation toward or away from a word (:mod:`physllm.hamiltonian.steering`)
- ``chat``     chat with a chat-trained model (:mod:`physllm.context_vector.chat`)

``python -m physllm --help`` lists them all with one line each. Bad input ends
with one line on stderr and exit status 2; nothing on disk is touched before
the input is known to be good.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from physllm.arch import Command
from physllm.args import (
    ArgumentParser,
    add_dataclass_flags,
    check_writable_file,
    dataclass_values,
)
from physllm.bench import (
    BenchConfig,
    format_generation_table,
    format_length_table,
    format_table,
    run_bench,
    run_generation_bench,
    run_length_bench,
)
from physllm.data import cache_dir, list_corpora, resolve_default_corpus
from physllm.env import device_description, resolve_device, set_threads
from physllm.errors import PhysllmError
from physllm.experiments.choices import equal_time_choice, form_configs, write_choice
from physllm.experiments.gaps import DEFAULT_LRS
from physllm.experiments.leaderboard import bench_all_config
from physllm.experiments.sweep import load_specs, run_stages
from physllm.models import ARCHITECTURES, MODELS, get_model_classes
from physllm.notebook import pick_preset
from physllm.plan import DEFAULT_MFU, format_plan, plan, vocab_size_of, with_vocab
from physllm.reporting import cmd_report
from physllm.sampling import SamplingConfig, TextStream, stream_generate
from physllm.training import TrainConfig, load_checkpoint, make_config, train
from physllm.training.trainer import git_sha
from physllm.validation import NON_NEGATIVE, POSITIVE, check_fields, check_values, in_range

# --------------------------------------------------------------------------- train


def train_parser(model: str) -> ArgumentParser:
    """The ``train`` flags: TrainConfig's fields, then model ``model``'s config fields."""
    parser = ArgumentParser(
        prog="physllm train", description="Train a model; writes OUT/metrics.json and checkpoints."
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="a named configuration (the architecture's presets.py), e.g. cpu or gpu",
    )
    add_dataclass_flags(parser.add_argument_group("training"), TrainConfig, skip={"model_config"})
    add_dataclass_flags(parser.add_argument_group(f"model ({model})"), get_model_classes(model)[0])
    return parser


def model_flag(argv: Sequence[str]) -> str:
    """The ``--model`` of a train-style command line (it decides which config's fields are
    flags, so it is read first); an unknown name is a PhysllmError."""
    pre = ArgumentParser(add_help=False)
    pre.add_argument("--model", default="gpt")
    model = pre.parse_known_args(argv)[0].model
    if model not in MODELS:
        raise PhysllmError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    return model


def cmd_train(argv: Sequence[str]) -> None:
    model = model_flag(argv)
    args = train_parser(model).parse_args(argv)
    overrides = {
        k: v for k, v in vars(args).items() if v is not None and k not in ("preset", "model")
    }
    cfg = make_config(model, args.preset, **overrides)
    m = train(cfg).metrics
    print(
        f"{m['model']}: {m['params'] / 1e6:.2f}M params, {m['steps']} steps, val loss {m['val_loss']:.4f} "
        f"({m['val_bpc']:.3f} bits/{m['bpc_unit']}), {m['ms_per_step']:.1f} ms/step -> {cfg.out_dir}/metrics.json"
    )


# --------------------------------------------------------------------------- plan


def cmd_plan(argv: Sequence[str]) -> None:
    """``python -m physllm plan --model M --preset P [train flags]``: size, memory and time."""
    model = model_flag(argv)
    parser = train_parser(model)
    parser.prog = "physllm plan"
    parser.description = (
        "Estimate a training run before it starts: parameters, memory per GPU, FLOPs, "
        "and time on T4, L4, A100 and H100 (the train command's flags; nothing is trained)."
    )
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="fraction of peak")
    parser.add_argument("--world-size", type=int, default=1, help="GPUs (DDP)")
    args = parser.parse_args(argv)
    if args.world_size < 1:
        raise PhysllmError(f"--world-size must be at least 1, got {args.world_size}")
    skip = ("preset", "model", "mfu", "world_size", "vocab_size")
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in skip}
    cfg = make_config(model, args.preset, **overrides)
    cfg = with_vocab(cfg, vocab_size_of(cfg.tokenizer, args.vocab_size or 0))
    print(format_plan(plan(cfg, args.mfu, args.world_size)))


# --------------------------------------------------------------------------- sample

SAMPLE_RULES = {
    "max_new_tokens": NON_NEGATIVE,
    "num_samples": POSITIVE,
    "seed": in_range(0, 2**32, high_open=True),  # as TrainConfig's
}


def sample_parser() -> ArgumentParser:
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
    return parser


def cmd_sample(argv: Sequence[str]) -> None:
    args = sample_parser().parse_args(argv)
    knobs = SamplingConfig(**dataclass_values(args, SamplingConfig))
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


# --------------------------------------------------------------------------- bench

BENCH_MODES = {  # --mode -> (run, table)
    "train": (run_bench, format_table),
    "generate": (run_generation_bench, format_generation_table),  # streaming decode
    "lengths": (run_length_bench, format_length_table),  # training and decoding per length
}


def bench_parser() -> ArgumentParser:
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
    return parser


def bench_config(args: argparse.Namespace) -> tuple[BenchConfig, dict[str, str]]:
    """The bench's config and its spec -> leaderboard-name labels (none with --models)."""
    changes = dataclass_values(args, BenchConfig)
    changes.pop("models", None)
    if args.all or not args.models:
        return bench_all_config(pick_preset(args.preset), **changes)
    names = [m.strip() for m in args.models.split(",")]
    unknown = [n for n in names if n.partition(":")[0] not in MODELS]  # "ngt:kernel=seed" is ngt
    if unknown:
        raise PhysllmError(
            f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}"
        )
    return BenchConfig(models=names, **changes), {}


def cmd_bench(argv: Sequence[str]) -> None:
    args = bench_parser().parse_args(argv)
    if args.json:  # written after the (long) run: make sure it can be
        check_writable_file(args.json, "--json")
    cfg, labels = bench_config(args)
    if cfg.mode not in BENCH_MODES:
        raise PhysllmError(f"--mode must be train, generate or lengths, got {cfg.mode!r}")
    run, table = BENCH_MODES[cfg.mode]
    rows = run(cfg)
    for row in rows:
        row["label"] = labels.get(row["model"], row["model"])
        if "reference" in row:
            row["reference"] = labels.get(row["reference"], row["reference"])
    print(table(rows, cfg))
    if labels:
        print("# entries (physllm.experiments.leaderboard):")
        for spec, name in labels.items():
            print(f"#   {name:<22} {spec}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": dataclasses.asdict(cfg), "rows": rows}, fh, indent=2)


# --------------------------------------------------------------------------- corpora


def cmd_corpora(argv: Sequence[str]) -> None:
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


# --------------------------------------------------------------------------- sweep


def sweep_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="physllm sweep",
        description=(
            "Train every entry x size x seed x learning rate x budget of a TOML spec, each run "
            "in its own process, one row per run in OUT/results.csv; runs already there are "
            "skipped, a killed run resumes. Then the paired gap to gpt with its 95%% interval."
        ),
    )
    parser.add_argument("spec", help="a TOML spec, e.g. experiments/protocol_cpu.toml")
    parser.add_argument("--out-dir", default=None, help="replaces the spec's out_dir")
    parser.add_argument("--stage", default=None, help="run only this stage of a staged spec")
    parser.add_argument("--dry-run", action="store_true", help="say what would run; train nothing")
    parser.add_argument(
        "--retry-failed", action="store_true", help="run again the runs whose row says failed"
    )
    return parser


def cmd_sweep(argv: Sequence[str]) -> None:
    args = sweep_parser().parse_args(argv)
    specs = load_specs(args.spec, out_dir=args.out_dir, stage=args.stage)
    run_stages(specs, dry_run=args.dry_run, retry_failed=args.retry_failed)


# --------------------------------------------------------------------------- choose


def choose_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="physllm choose",
        description=(
            "Train a leaderboard entry in two forms (one config field, two values) by the "
            "evidence protocol, and keep the candidate only if its validation loss at equal "
            "wall-clock is better over seeds; writes OUT/choice.json and OUT/choice.txt."
        ),
    )
    parser.add_argument("entry", help="a leaderboard entry, e.g. hamiltonian")
    parser.add_argument("--field", required=True, help="the model config field, e.g. integrator")
    parser.add_argument("--reference", required=True, help="the field's value now")
    parser.add_argument("--candidate", required=True, help="the value to try")
    parser.add_argument("--preset", default="cpu", help="the leaderboard recipe (cpu or gpu)")
    parser.add_argument("--steps", type=int, default=400, help="the reference's budget")
    parser.add_argument("--n-embd", type=int, default=None, help="the size (GPT's width)")
    parser.add_argument("--seeds", default="1,2,3", help="the seeds stage's seeds")
    parser.add_argument("--lrs", default=",".join(f"{r:g}" for r in DEFAULT_LRS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    parser.add_argument("--runs-dir", default=None, help="default: runs/choices/ENTRY_FIELD")
    parser.add_argument("--out", default=None, help="default: reports/choices/ENTRY_FIELD")
    return parser


def cmd_choose(argv: Sequence[str]) -> None:
    args = choose_parser().parse_args(argv)
    if args.steps < 10:
        raise PhysllmError(f"--steps must be at least 10, got {args.steps}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise PhysllmError(
            f"--seeds must be integers separated by commas, got {args.seeds!r}"
        ) from None
    if len(seeds) < 3:
        raise PhysllmError(f"a choice needs at least 3 seeds, got {args.seeds!r}")
    budget = {"steps": args.steps, "progress": False, "tensorboard": False}
    if args.n_embd:
        budget["n_embd"] = args.n_embd
    values = (args.reference, args.candidate)
    configs = form_configs(args.entry, args.field, values, args.preset, **budget)
    name = f"{args.entry}_{args.field}"
    runs = args.runs_dir or f"runs/choices/{name}"
    result = equal_time_choice(configs, args.lrs, seeds, runs, threads=args.threads)
    what = {"entry": args.entry, "field": args.field, "reference": args.reference}
    what.update(candidate=args.candidate, preset=args.preset, steps=args.steps, size=args.n_embd)
    set_threads(args.threads or 0)  # so the description names the runs' threads
    what.update(
        corpus=resolve_default_corpus()
        if configs["reference"].corpus == "default"
        else configs["reference"].corpus,
        hardware=device_description(resolve_device(configs["reference"].device)),
        git_sha=git_sha(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    print(write_choice(result, what, Path(args.out or f"reports/choices/{name}")))


# --------------------------------------------------------------------------- architecture commands


def checkpoint_kind(model_class: type | tuple[type, ...]) -> str:
    """The registered architectures whose models are ``model_class``, for a message."""
    names = [a.name for a in ARCHITECTURES.values() if issubclass(a.model_class, model_class)]
    if names:
        return " or ".join(names)
    classes = model_class if isinstance(model_class, tuple) else (model_class,)
    return " or ".join(c.__name__ for c in classes)


def run_architecture_command(command: Command, argv: Sequence[str]) -> None:
    """Parse (``--ckpt``, ``--device`` and the command's own flags), check, load, run."""
    parser = ArgumentParser(
        prog=f"physllm {command.name}", description=command.description or command.help
    )
    parser.add_argument(
        "--ckpt", required=True, help="a run folder (uses best/) or a checkpoint folder"
    )
    parser.add_argument("--device", default="cpu")
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    command.check(args)  # bad input fails before any file is read
    device = resolve_device(args.device)
    model, tokenizer, _ = load_checkpoint(args.ckpt, device)
    if command.model_class is not None and not isinstance(model, command.model_class):
        raise PhysllmError(
            f"{command.name} needs a {checkpoint_kind(command.model_class)} checkpoint; "
            f"{args.ckpt} holds a {type(model).__name__}"
        )
    command.run(args, model, tokenizer, device)


# --------------------------------------------------------------------------- dispatch

CoreCommand = Callable[[Sequence[str]], None]

# name -> (function, help): the commands every install has
CORE: dict[str, tuple[CoreCommand, str]] = {
    "train": (cmd_train, "train a model (every config field is a --flag)"),
    "sample": (cmd_sample, "continue a prompt with a trained model"),
    "bench": (cmd_bench, "speed and memory of models side by side"),
    "corpora": (cmd_corpora, "list corpora and cache state"),
    "sweep": (cmd_sweep, "run a grid of training runs from a spec into results.csv"),
    "plan": (cmd_plan, "estimate a run's memory and time on common GPUs before training"),
    "choose": (cmd_choose, "pick between two forms of an entry by loss at equal wall-clock"),
    "report": (cmd_report, "run notebooks with papermill into reports/ and rebuild the index"),
}


def commands() -> dict[str, tuple[CoreCommand, str]]:
    """Every command: the core ones, then each registered architecture's, in registry order
    (read at call time, so an architecture registered from outside the package shows up)."""
    table = dict(CORE)
    for arch in ARCHITECTURES.values():
        for command in arch.commands:
            if command.name in table:
                raise PhysllmError(
                    f"architecture {arch.name!r} adds command {command.name!r}, "
                    "which is already taken"
                )
            run = functools.partial(run_architecture_command, command)
            table[command.name] = (run, f"{command.help} ({arch.name})")
    return table


def print_usage(table: dict[str, tuple[CoreCommand, str]]) -> None:
    print("usage: python -m physllm <command> [--help]\n\ncommands:")
    width = max(9, *(len(name) for name in table))
    for name, (_, help_text) in table.items():
        print(f"  {name:<{width}} {help_text}")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        table = commands()
    except PhysllmError as err:
        print(f"physllm: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    if not argv or argv[0] in ("-h", "--help"):
        print_usage(table)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in table:
        print(
            f"physllm: error: unknown command {command!r}; choose from {', '.join(table)}",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        table[command][0](rest)
    except PhysllmError as err:
        print(f"physllm {command}: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print(f"physllm {command}: interrupted", file=sys.stderr)
        sys.exit(130)
