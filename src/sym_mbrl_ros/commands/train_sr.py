"""sym-mbrl train-sr: train the symbolic-regression transformer on generated expressions."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..errors import UserError

HELP = "train the transformer of the `transformer` SR backend on generated expressions"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--generator",
        default="mechanics",
        choices=("general", "mechanics"),
        help="training data: random expressions as in Kamienny et al. 2022 (general) or "
        "increments of random mechanical systems (mechanics, default)",
    )
    parser.add_argument(
        "--hours", type=float, default=0.5, help="wall-clock budget of the run (default 0.5)"
    )
    parser.add_argument(
        "--out", default="weights.pt", help="weights file to write (default weights.pt)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the weights")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="expressions per step (default 32)"
    )
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 5e-4)")
    parser.add_argument(
        "--eval-seconds",
        type=float,
        default=None,
        help="seconds between validations, each saving the best weights so far (default 180)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1; the CPU is shared)"
    )


def run(args) -> int:
    from ..dynamics.transformer.train import TrainConfig, config_path, train

    if not args.hours > 0:
        raise UserError(f"--hours must be positive, got {args.hours}")
    if args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as weights.pt")
    overrides = {
        "batch_size": args.batch_size,
        "lr": args.lr,
        "eval_seconds": args.eval_seconds,
    }
    config = TrainConfig(
        generator=args.generator,
        hours=args.hours,
        seed=args.seed,
        threads=args.threads,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    command = (
        f"sym-mbrl train-sr --generator {args.generator} --hours {args.hours:g} "
        f"--seed {args.seed} --out {shlex.quote(str(out))}"
    )
    for flag, value in (
        ("--batch-size", args.batch_size),
        ("--lr", args.lr),
        ("--eval-seconds", args.eval_seconds),
    ):
        if value is not None:
            command += f" {flag} {value:g}"
    if args.threads != 1:
        command += f" --threads {args.threads}"
    print(
        f"training the SR transformer on the {args.generator} generator for {args.hours:g} h; "
        f"best weights go to {out}, progress to {config_path(out)}",
        flush=True,
    )
    summary = train(config, out, command=command, log=lambda s: print(s, flush=True))
    print(
        f"done: {summary['steps']} steps, {summary['samples']} expressions, "
        f"{summary['parameters']:,} parameters, best validation loss "
        f"{summary['best_val_loss']:.4f}; weights {out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sym_mbrl_ros.commands.train_sr``: the same as ``sym-mbrl train-sr``."""
    parser = argparse.ArgumentParser(prog="sym-mbrl train-sr", description=HELP)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except UserError as exc:
        print(f"sym-mbrl train-sr: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
