"""The ``recognizers`` command (architecture.md §4).

Plain argparse, with nothing heavy imported at module level, so ``recognizers --help`` is instant.
Subcommands (transcribe, evaluate, adapt, synth, export and the LightningCLI verbs) are added by the
issues that build them, each through its own small parser-building function.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser."""
    parser = argparse.ArgumentParser(
        prog="recognizers",
        description="Handwritten math to LaTeX, handwriting to text, speech to text.",
    )
    parser.add_argument("--version", action="version", version=f"recognizers {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_synth_parser(subparsers)
    return parser


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_synth_parser(subparsers) -> None:
    """``synth speech``: synthetic corpora in the real layouts (``math`` and ``text`` arrive later)."""
    synth = subparsers.add_parser("synth", help="write a synthetic corpus in the real corpus layout",
                                  description="Write a synthetic corpus in the layout of the real one.")
    kinds = synth.add_subparsers(dest="kind", metavar="KIND", required=True)
    speech = kinds.add_parser(
        "speech", help="multi-speaker TTS speech, LibriSpeech layout",
        description="Multi-speaker TTS speech (espeak-ng, flite, festival) in the LibriSpeech layout: "
                    "OUT/{train,dev,test}/<speaker>/<chapter>/, SPEAKERS.TXT and synth.json. Test and dev "
                    "speakers use voices never used in train (see data/synth/speech.py). Rerunning with "
                    "the same settings resumes an interrupted run.")
    speech.add_argument("--out", required=True, type=Path, help="corpus root folder")
    speech.add_argument("--num", required=True, type=_positive, help="number of utterances in all")
    speech.add_argument("--seed", required=True, type=int, help="random seed; same seed, same corpus")
    speech.add_argument("--jobs", type=_positive, default=None,
                        help="worker processes (default: all CPU cores); does not change the output")
    speech.add_argument("--dev-fraction", type=_fraction, default=0.05, help="share of dev utterances")
    speech.add_argument("--test-fraction", type=_fraction, default=0.05, help="share of test utterances")
    speech.set_defaults(handler=_run_synth_speech)


def _run_synth_speech(args: argparse.Namespace) -> int:
    """Exit code 0 when every utterance was written, 1 when some failed, 2 on usage errors."""
    from data.synth.sentences import SourceError
    from data.synth.speech import CorpusConfig, CorpusConfigError, synthesize_corpus
    from data.synth.voices import EngineError

    config = CorpusConfig(args.num, args.seed, args.dev_fraction, args.test_fraction)
    try:
        summary = synthesize_corpus(args.out, config, jobs=args.jobs)
    except (EngineError, SourceError, CorpusConfigError) as exc:
        print(f"recognizers synth speech: error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{split} {n}" for split, n in summary.counts.items())
    print(f"{sum(summary.counts.values())} ok, {len(summary.failed)} failed ({counts}; "
          f"{summary.seconds / 3600:.2f} h) in {args.out}", file=sys.stderr)
    return 1 if summary.failed else 0


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (0 ok, 1 some inputs failed, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return args.handler(args)
