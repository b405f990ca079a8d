"""`clipa train | eval | flops | plan | show-masks | data | export`.

Each subcommand's arguments live next to the code that runs it; this file only
collects them. Experiments are configured by YAML files plus ``key.sub=value``
overrides, not by flags.
"""

from __future__ import annotations

import argparse
import sys


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train.trainer import Trainer

    config = args.config
    overrides = list(args.overrides)
    if config is not None and "=" in config:  # `clipa train key=value ...` without a file
        overrides.insert(0, config)
        config = None
    cfg = load_config(config, overrides)
    results = Trainer(cfg).fit()
    final = [r for r in results if "acc1" in r]
    if final:
        print(f"zero-shot top-1: {100 * final[-1]['acc1']:.1f}%")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a CLIP model (default: a small CLIP on the built-in digits)")
    p.add_argument("config", nargs="?", help="a run config YAML (see configs/); omitted = built-in default")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. stage.lr=1e-3 train.seed=1")
    p.set_defaults(func=_train)


def build_parser() -> argparse.ArgumentParser:
    from .data.tools import add_data_subcommands
    from .eval.cli import add_eval_subcommand
    from .export import add_export_subcommand
    from .flops import add_flops_subcommand
    from .plan import add_plan_subcommand
    from .viz import add_show_masks_subcommand

    parser = argparse.ArgumentParser(prog="clipa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    add_eval_subcommand(sub)
    add_export_subcommand(sub)
    add_flops_subcommand(sub)
    add_plan_subcommand(sub)
    add_show_masks_subcommand(sub)
    add_data_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .config import ConfigError

    try:
        return args.func(args) or 0
    except (ConfigError, FileNotFoundError) as e:
        print(f"clipa: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
