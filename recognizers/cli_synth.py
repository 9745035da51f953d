"""``recognizers synth``: synthetic corpora in the real layouts (math, text, speech) and the extra
training hands of text corpus version 4 (``synth fonts``). Part of the ``recognizers`` command
(recognizers/cli.py); nothing heavy is imported until a subcommand runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_synth_parser", "fraction", "positive"]


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_corpus_options(p: argparse.ArgumentParser, items: str, count: str = "--num",
                        count_help: str | None = None) -> None:
    """The options every ``synth`` kind shares: output folder, size, seed and worker count.

    ``count`` names the size option (``--num``, or ``--writers`` for text); it is required unless
    ``count_help`` documents its default.
    """
    p.add_argument("--out", required=True, type=Path, help="corpus root folder")
    p.add_argument(count, required=count_help is None, type=positive, default=None,
                   help=count_help or f"number of {items} in all")
    p.add_argument("--seed", required=True, type=int, help="random seed; same seed, same corpus")
    p.add_argument("--jobs", "--workers", dest="jobs", type=positive, default=None,
                   help="worker processes (default: all CPU cores); does not change the output")


def add_synth_parser(subparsers) -> None:
    """``synth math``, ``synth text`` and ``synth speech``: synthetic corpora in the real layouts."""
    synth = subparsers.add_parser("synth", help="write a synthetic corpus in the real corpus layout",
                                  description="Write a synthetic corpus in the layout of the real one.")
    kinds = synth.add_subparsers(dest="kind", metavar="KIND", required=True)
    math = kinds.add_parser(
        "math", help="handwriting-font formula images, CROHME layout",
        description="Random formulas over the CROHME vocabulary drawn with handwriting fonts (matplotlib "
                    "mathtext, stroke/slant/wave/noise augmentation) in the CROHME layout: "
                    "OUT/{train,test}/caption.txt + img/<name>.png, and synth.json. Test images use fonts "
                    "and captions never used in train (see data/synth/math_corpus.py). Rerunning with the "
                    "same settings resumes an interrupted run.")
    _add_corpus_options(math, "images")
    math.add_argument("--test-fraction", type=fraction, default=0.1, help="share of test images")
    math.set_defaults(handler=_run_synth_math)
    _add_synth_text_parser(kinds)
    speech = kinds.add_parser(
        "speech", help="multi-speaker TTS speech, LibriSpeech layout",
        description="Multi-speaker TTS speech (espeak-ng, flite, festival) in the LibriSpeech layout: "
                    "OUT/{train,dev,test}/<speaker>/<chapter>/, SPEAKERS.TXT and synth.json. Test and dev "
                    "speakers use voices never used in train (see data/synth/speech.py). Rerunning with "
                    "the same settings resumes an interrupted run.")
    _add_corpus_options(speech, "utterances")
    speech.add_argument("--dev-fraction", type=fraction, default=0.05, help="share of dev utterances")
    speech.add_argument("--test-fraction", type=fraction, default=0.05, help="share of test utterances")
    speech.set_defaults(handler=_run_synth_speech)


def _add_synth_text_parser(kinds) -> None:
    text = kinds.add_parser(
        "text", help="handwriting-font writers, IAM layout",
        description="Synthetic writers (a handwriting font face plus a persistent style: slant, stroke "
                    "width, spacing, baseline wobble, ink, elastic distortion) write fortunes sentences and "
                    "wamerican words in the IAM layout: ascii/{forms,lines,sentences,words}.txt, xml/, "
                    "words/, lines/, sentences/, Aachen-style splits/aachen/*.uttlist, writers.json and "
                    "synth.json. Writers and font faces are disjoint between train, val and test (see "
                    "data/synth/text.py). Rerunning with the same settings resumes an interrupted run.")
    _add_corpus_options(text, "writers", "--writers", "number of writers in all (default: the preset's: "
                        "tiny 13, dev 100); 15%% each (at least 2) are val and test")
    text.add_argument("--preset", choices=("tiny", "dev"), default="dev",
                      help="tiny: 1 form of about 48 words per writer (unit tests, seconds); dev: 3 forms "
                           "of about 60 words per writer")
    text.add_argument("--form-images", action="store_true", help="also write the pages (formsA-D/ etc.)")
    text.add_argument("--corpus-version", type=int, choices=(2, 3, 4, 5), default=4,  # text.VERSION
                      help="5: version 4 with twice the training writers (every training face drawn; "
                           "the extra ones after the test writers, so val and test keep their ids); "
                           "4: training writers draw 87 more hands (Fontsource fonts: run `recognizers "
                           "synth fonts` first) besides the Debian ones, each glyph varied and some letters "
                           "borrowed from a second face; 3: the same on the Debian hands only; 2: plain "
                           "Debian faces (the corpus of the shipped base's first 10,000 steps); val and test "
                           "are the same images in all")
    text.set_defaults(handler=_run_synth_text)
    fonts = kinds.add_parser(
        "fonts", help="fetch the extra training hands of text corpus version 4 (npm registry)",
        description="Download the pinned Fontsource handwriting fonts (data/synth/npm_fonts.json) from the "
                    "npm registry, check their SHA-512, convert them to TrueType into the font folder. "
                    "Fetches only what is missing; setup-time only, nothing fetches fonts at run time.")
    fonts.add_argument("--out", type=Path, default=None,
                       help="font folder (default: $RECOGNIZERS_FONT_DIR, else ~/.cache/recognizers/fonts)")
    fonts.set_defaults(handler=_run_synth_fonts)


def _run_synth_fonts(args: argparse.Namespace) -> int:
    """Exit code 0 when every pinned font is in the folder, 1 when some failed."""
    from data.synth.npm_fonts import fetch_fonts

    summary = fetch_fonts(args.out)
    for package, why in summary.failed.items():
        print(f"recognizers synth fonts: {package}: {why}", file=sys.stderr)
    print(f"{len(summary.fetched)} fonts fetched, {len(summary.present)} already there, "
          f"{len(summary.failed)} failed, in {summary.folder}", file=sys.stderr)
    return 1 if summary.failed else 0


def _run_synth_text(args: argparse.Namespace) -> int:
    """Exit code 0 when every form was written, 1 when some failed, 2 on usage errors."""
    from data.synth.math import MissingFontError, RendererError
    from data.synth.sentences import SourceError
    from data.synth.text import PRESETS, TextConfig, TextConfigError, synthesize_text

    writers = args.writers or PRESETS[args.preset].writers
    config = TextConfig(writers, args.seed, args.preset, args.form_images, version=args.corpus_version)
    try:
        summary = synthesize_text(args.out, config, jobs=args.jobs)
    except (RendererError, MissingFontError, SourceError, TextConfigError) as exc:
        print(f"recognizers synth text: error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{split} {c['forms']} forms / {c['words']} words"
                       for split, c in summary.counts.items())
    print(f"{sum(c['forms'] for c in summary.counts.values())} forms ok, {len(summary.failed)} failed "
          f"({counts}; {len(summary.writers)} writers) in {args.out}", file=sys.stderr)
    return 1 if summary.failed else 0


def _run_synth_math(args: argparse.Namespace) -> int:
    """Exit code 0 when every image was written, 1 when some failed, 2 on usage errors."""
    from data.synth.math import MissingFontError, RendererError
    from data.synth.math_corpus import MathConfig, MathConfigError, synthesize_math

    config = MathConfig(args.num, args.seed, args.test_fraction)
    try:
        summary = synthesize_math(args.out, config, jobs=args.jobs)
    except (RendererError, MissingFontError, MathConfigError) as exc:
        print(f"recognizers synth math: error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{split} {n}" for split, n in summary.counts.items())
    print(f"{sum(summary.counts.values())} ok, {len(summary.failed)} failed ({counts}) in {args.out}",
          file=sys.stderr)
    return 1 if summary.failed else 0


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
