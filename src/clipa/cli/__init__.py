"""`clipa train | eval | export | flops | plan | show-masks | data`.

Every subcommand is one module of this package with the same two functions:
``add_parser(subparsers)`` declares its arguments and ``run(args) -> int`` does the work by
calling the library. This file only collects them and turns a user's mistake into one line.
Experiments are configured by YAML files plus ``key.sub=value`` overrides, not by flags.
"""

from __future__ import annotations

import argparse
import signal
import sys

from ..data.stream import EmptySourceError
from ..distributed import StalledRankError
from ..train.trainer import NonFiniteLossError
from . import data, export, flops, plan, show_masks, train
from . import eval as evaluate

SUBCOMMANDS = (train, evaluate, export, flops, plan, show_masks, data)

# Mistakes in what the user gave (a config key, a path, a model name, an unusable file) and
# failures of the environment (a full disk, a stalled rank): one line naming it and exit status
# 2, as argparse does for a bad flag. ValueError covers the library's ConfigError, ExportError,
# damaged or unsafe checkpoints; KeyError an unknown registry name; OSError missing files and
# full disks; the rest a run the data or the settings made impossible.
USER_ERRORS = (OSError, ValueError, KeyError, EmptySourceError, NonFiniteLossError, StalledRankError)


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on a subcommand and its own subcommands, so it may follow the arguments too."""
    # SUPPRESS: a subcommand that does not see the flag leaves the global one as it was.
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_debug(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipa", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        _add_debug(command.add_parser(sub))
    return parser


def error_message(e: BaseException) -> str:
    """One line: a KeyError's message without the quotes ``str()`` adds, newlines folded."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e) or type(e).__name__
    return " ".join(text.split("\n"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"clipa: error: {error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before training started (during it, train saves first)
        if args.debug:
            raise
        print("clipa: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
