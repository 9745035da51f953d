"""The ``recognizers`` command (architecture.md §4).

Plain argparse, with nothing heavy imported at module level, so ``recognizers --help`` is instant.
Subcommands (transcribe, evaluate, adapt, synth, export and the LightningCLI verbs) are added by the
issues that build them, each through its own small parser-building function.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser."""
    parser = argparse.ArgumentParser(
        prog="recognizers",
        description="Handwritten math to LaTeX, handwriting to text, speech to text.",
    )
    parser.add_argument("--version", action="version", version=f"recognizers {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (0 ok, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0
