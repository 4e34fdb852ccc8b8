"""The ``vimcan`` command line.

Each subcommand lives in its own module here and exposes ``register(subparsers)``, which
adds its parser and sets ``func`` to a function ``(args) -> int``. Qt is never imported by
the command line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from vimcan_core import __version__

#: subcommand modules, in the order ``--help`` lists them
SUBCOMMANDS = ("devices", "monitor", "record", "train", "eval", "export", "model_info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vimcan",
        description="VIMCAN Studio command line: sensors, recording, training, evaluation and export.",
    )
    parser.add_argument("--version", action="version", version=f"vimcan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"app.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # user-facing: one clear line, the traceback with -v
        from vimcan_core.errors import VimcanError

        if isinstance(exc, VimcanError) and not args.verbose:
            print(f"vimcan {args.command}: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
