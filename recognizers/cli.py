"""The ``recognizers`` command (architecture.md §4).

Plain argparse, with nothing heavy imported at module level, so ``recognizers --help`` is instant.
Subcommands: transcribe, evaluate, adapt, synth, export and the LightningCLI verbs, each built by its
own small parser-building function.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .cli_synth import add_synth_parser
from .cli_synth import positive as _positive  # also the type of the other subcommands' counts

__all__ = ["TRAINING_VERBS", "build_parser", "main"]

TRAINING_VERBS = ("fit", "validate", "test", "predict")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser."""
    parser = argparse.ArgumentParser(
        prog="recognizers",
        description="Handwritten math to LaTeX, handwriting to text, speech to text.",
    )
    parser.add_argument("--version", action="version", version=f"recognizers {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_transcribe_parser(subparsers)
    _add_evaluate_parser(subparsers)
    _add_adapt_parser(subparsers)
    add_synth_parser(subparsers)
    _add_export_parser(subparsers)
    for verb in TRAINING_VERBS:  # listed for --help; the arguments go to LightningCLI untouched
        subparsers.add_parser(verb, help=f"LightningCLI {verb} (--config training/configs/X.yaml)",
                              add_help=False)
    return parser


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="registry name or .safetensors/.ckpt file (default: the "
                   "bundled model of the task)")
    p.add_argument("--batch-size", type=_positive, default=16, help="inputs per forward pass")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--beam-size", type=_positive, default=None, help="beam width (1 = greedy)")
    p.add_argument("--ctc-weight", type=_unit_weight, default=None,
                   help="speech: weight λ of the CTC score in the joint CTC/attention beam search, in [0, 1) "
                        "(default 0.3; 0 = the decoder alone)")


def _unit_weight(text: str) -> float:
    """argparse type: a float in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def _add_transcribe_parser(subparsers) -> None:
    t = subparsers.add_parser(
        "transcribe", help="recognise files, folders, globs, @lists or stdin",
        description="Recognise many inputs with one model load. A bad input is reported and the run goes "
                    "on; exit 0 if all succeeded, 1 if any failed, 2 on usage errors.")
    t.add_argument("inputs", nargs="+",
                   help="files, folders, quoted globs, @list.txt, or - for a list on stdin")
    t.add_argument("-r", "--recursive", action="store_true", help="search folders recursively")
    t.add_argument("--task", choices=("auto", "math", "text", "speech"), default="auto",
                   help="auto: by file type (audio: speech)")
    t.add_argument("--format", choices=("jsonl", "txt", "tsv", "json", "srt", "vtt", "tex"), default="jsonl")
    t.add_argument("--output-dir", default=None, help="write one file per input, mirroring relative paths")
    t.add_argument("--overwrite", action="store_true", help="redo inputs whose output already exists")
    t.add_argument("--nbest", type=_positive, default=None, help="hypotheses per input in 'nbest'")
    t.add_argument("--num-groups", type=_positive, default=None,
                   help="diverse beam search: groups of the beam (must divide --beam-size)")
    t.add_argument("--diversity-penalty", type=float, default=None,
                   help="diverse beam search: penalty for a token an earlier group chose at the same step")
    t.add_argument("--writer-profile", default=None, help="handwriting: a writer profile from `adapt`")
    t.add_argument("--lines", action="store_true",
                   help="handwriting: each image is a line of text, split at the word gaps and read word "
                        "by word")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar, errors or summary")
    _add_model_options(t)
    t.set_defaults(handler=_run_transcribe)


def _add_evaluate_parser(subparsers) -> None:
    e = subparsers.add_parser(
        "evaluate", help="score a model on a labelled corpus (prints one JSON object)",
        description="Recognise a labelled corpus in its standard layout and print "
                    '{"task", "model", "n", "metrics", "seconds", "rtf"} as JSON.')
    e.add_argument("--task", choices=("math", "text", "speech"), required=True)
    e.add_argument("--data", required=True, help="corpus root (speech: a LibriSpeech split folder; "
                   "math: a CROHME folder with caption.txt and img/, or a .zip of one; text: an IAM-layout "
                   "folder with ascii/ and words/ or lines/)")
    e.add_argument("--limit", type=_positive, default=None,
                   help="only N items, spread evenly over the set (every speaker or writer represented)")
    e.add_argument("--level", choices=("words", "lines"), default=None,
                   help="text: word or line images (default: words if ascii/words.txt exists); a line is "
                        "split at its word gaps and read word by word, as `transcribe --lines`")
    e.add_argument("--whole-lines", action="store_true",
                   help="text, --level lines: give the model whole lines (a model trained on lines)")
    e.add_argument("--split", default=None, help="text: the split list to score (default: "
                   "DATA/splits/aachen/test.uttlist if present, else every sample)")
    e.add_argument("--split-kind", choices=("forms", "lines"), default="forms",
                   help="text: the list holds form ids (Aachen lists) or line ids (IAM task lists)")
    _add_model_options(e)
    _add_adaptation_options(e)
    e.set_defaults(handler=_run_evaluate)


def _add_adaptation_options(e: argparse.ArgumentParser) -> None:
    """``evaluate --task text``: a writer profile, or the writer-adaptation protocol (writer-htr.md §9.1)."""
    e.add_argument("--writer-profile", default=None, help="text: decode every image with this writer "
                   "profile (from `recognizers adapt`)")
    e.add_argument("--adaptation-protocol", action="store_true",
                   help="text: per test writer, adapt on the first --shots words of --permutations fixed "
                        "permutations and score the rest; prints the model's 'not adapted' and 'adapted' "
                        "rows on the same query words and the split digest (--limit: query words per split)")
    e.add_argument("--compare", nargs="+", default=[], metavar="MODEL",
                   help="protocol: more handwriting model files scored on the same splits after --model, "
                        "each adding its 'not adapted' and 'adapted' rows (e.g. --model base.safetensors "
                        "--compare metahtr.safetensors codes.safetensors: the table of writer-htr.md §9.1)")
    e.add_argument("--per-writer", action="store_true",
                   help="text: also CER and WER per writer id (\"per_writer\" in the JSON)")
    e.add_argument("--writers", type=_positive, default=None, help="protocol: only the first N writers by id")
    e.add_argument("--shots", type=_positive, default=16, help="protocol: support words K (default 16)")
    e.add_argument("--permutations", type=_positive, default=10,
                   help="protocol: fixed permutations per writer (default 10)")
    e.add_argument("--seed", type=int, default=0, help="protocol: seed of the permutations (default 0)")
    e.add_argument("--steps", type=_positive, default=None,
                   help="protocol: adaptation steps (default: the model file's)")


def _add_adapt_parser(subparsers) -> None:
    a = subparsers.add_parser(
        "adapt", help="adapt a handwriting model to one writer; writes a writer profile",
        description="Adapt a handwriting model to one writer from a few labelled samples and write a writer "
                    "profile (.safetensors) for `transcribe --writer-profile`, `evaluate --writer-profile` "
                    "and the app. The method is the model file's: MetaHTR, writer codes, or plain "
                    "fine-tuning of the classifier for a base model.")
    a.add_argument("--samples", required=True,
                   help="a folder of images with labels.tsv (one 'file<TAB>text' line per image), or an "
                        "IAM-layout folder (ascii/words.txt, words/) with --writer")
    a.add_argument("--out", required=True, help="the writer profile to write (.safetensors)")
    a.add_argument("--writer", default=None, help="IAM layout: the writer id whose words adapt (e.g. 000)")
    a.add_argument("--level", choices=("words", "lines"), default=None,
                   help="IAM layout: word or line images (default: words if ascii/words.txt exists)")
    a.add_argument("--limit", type=_positive, default=None, help="only the first N samples (IAM: by id)")
    a.add_argument("--steps", type=_positive, default=None,
                   help="gradient steps (default: the model file's; MetaHTR 1, fine-tuning 10)")
    a.add_argument("--model", default=None, help="registry name or .safetensors/.ckpt handwriting model "
                   "(default: the bundled one)")
    a.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    a.set_defaults(handler=_run_adapt)


def _add_export_parser(subparsers) -> None:
    x = subparsers.add_parser("export", help="Lightning checkpoint -> bundled .safetensors model",
                              description="Write the weights, config and tokenizer of a training checkpoint "
                                          "as a .safetensors model that `--model` and `load()` accept.")
    x.add_argument("ckpt", help="a .ckpt written by `recognizers fit`")
    x.add_argument("--out", required=True, help="the .safetensors file to write")
    x.set_defaults(handler=_run_export)


def _load_recognizer(name_or_task: str, device: str):
    """A recognizer for a task's bundled model, a registry name or a model file."""
    import recognizers
    from recognizers.registry import REGISTRY

    by_task = {spec.task: name for name, spec in reversed(REGISTRY.items())}
    name = by_task.get(name_or_task, name_or_task)
    if name_or_task in ("math", "text", "speech") and name_or_task not in by_task:
        raise ValueError(f"no recognizer for the task {name_or_task!r} in this version")
    return recognizers.load(name, device=None if device == "auto" else device)


def _run_transcribe(args: argparse.Namespace) -> int:
    from recognizers.batch import UsageError, run_transcribe
    from recognizers.checkpoint import CheckpointError

    # Checked here only against an explicit --beam-size: each recognizer has its own default beam
    # (speech 4, math 10) and widens it to hold an --nbest list larger than that default.
    beam = args.beam_size
    problems = [(beam is not None and args.num_groups is not None and beam % args.num_groups,
                 f"--num-groups {args.num_groups} must divide --beam-size {beam}"),
                (beam is not None and args.nbest is not None and args.nbest > beam,
                 f"--nbest {args.nbest} exceeds --beam-size {beam}")]
    for failed, message in problems:
        if failed:
            print(f"recognizers transcribe: error: {message}", file=sys.stderr)
            return 2
    try:
        return run_transcribe(args, _load_recognizer)
    except (UsageError, CheckpointError, ValueError) as exc:
        print(f"recognizers transcribe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C is a normal way to stop a long run: no traceback, the shell's 130
        resume = " (finished outputs are kept: the same command resumes)" if args.output_dir else ""
        print(f"recognizers transcribe: interrupted{resume}", file=sys.stderr)
        return 130


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from data.datasets.librispeech import CorpusError
    from recognizers.base import InputError
    from recognizers.batch import UsageError, run_evaluate
    from recognizers.checkpoint import CheckpointError

    text_only = [flag for flag, given in (("--writer-profile", args.writer_profile),
                                          ("--adaptation-protocol", args.adaptation_protocol)) if given]
    if (text_only and args.task != "text") or len(text_only) == 2:
        problem = "exclude each other" if len(text_only) == 2 else "is for --task text only"
        print(f"recognizers evaluate: error: {' and '.join(text_only)} {problem}", file=sys.stderr)
        return 2
    if args.compare and not args.adaptation_protocol:
        print("recognizers evaluate: error: --compare is for --adaptation-protocol", file=sys.stderr)
        return 2
    if args.per_writer and (args.task != "text" or args.adaptation_protocol):
        print("recognizers evaluate: error: --per-writer is for --task text, without --adaptation-protocol",
              file=sys.stderr)
        return 2
    try:
        report = run_evaluate(args, _load_recognizer)
    except (UsageError, CheckpointError, CorpusError, InputError, ValueError) as exc:
        print(f"recognizers evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


def _run_adapt(args: argparse.Namespace) -> int:
    import time

    from recognizers.base import InputError
    from recognizers.checkpoint import CheckpointError
    from recognizers.samples import read_samples

    try:
        samples = read_samples(args.samples, writer=args.writer, level=args.level, limit=args.limit)
        rec = _load_recognizer(args.model or "text", args.device)
        if rec.task != "text":
            raise ValueError(f"{args.model} is a {rec.task} model; adapt needs a handwriting model")
        start = time.perf_counter()
        profile = rec.adapt(samples, steps=args.steps).save(args.out)
    except (CheckpointError, InputError, ValueError, OSError) as exc:
        print(f"recognizers adapt: error: {exc}", file=sys.stderr)
        return 2
    size = profile.path.stat().st_size
    print(f"wrote {profile.path} ({profile.method}, {profile.num_support} samples, {size / 1e3:.1f} kB) in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from recognizers.checkpoint import CheckpointError, export_checkpoint

    try:
        out = export_checkpoint(args.ckpt, args.out)
    except CheckpointError as exc:
        print(f"recognizers export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (0 ok, 1 some inputs failed, 2 usage error)."""
    given = sys.argv[1:] if argv is None else argv
    if given and given[0] in TRAINING_VERBS:
        from training.cli import main as training_main  # Lightning is imported only here

        # From the console script LightningCLI reads sys.argv itself (passing both logs a warning).
        training_main(None if argv is None else list(given))
        return 0
    parser = build_parser()
    args = parser.parse_args(given)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return args.handler(args)
