"""A writer's labelled handwriting samples for ``recognizers adapt`` and the app (interfaces.md ``adapt``).

Two folder layouts:

* **labels file**: images plus ``labels.tsv``, one ``file<TAB>text`` line per sample (file names relative
  to the folder; blank lines are skipped; the text is everything after the first tab, surrounding white
  space removed). Samples keep the file's order;
* **IAM layout** (a real IAM folder or ``recognizers synth text`` output): ``--writer ID`` selects that
  writer's word images (or line images with ``level="lines"``), in id order, after the loader's filters
  (``data.datasets.iam.select_samples``: words of ``err`` lines and 0-byte images dropped).

``limit`` keeps the first N samples. :func:`pair_uploads` pairs the app's uploaded images with their
transcriptions (text lines in upload order, or a labels.tsv among the uploads). Nothing here imports
torch until an IAM folder is read.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["LABELS", "SamplesError", "pair_uploads", "parse_labels", "read_samples"]

LABELS = "labels.tsv"


class SamplesError(ValueError):
    """A samples folder or labels file that cannot be used; the message names it."""


def parse_labels(text: str, origin: str = LABELS) -> list[tuple[str, str]]:
    """``file<TAB>text`` lines → ``(file, text)`` pairs in order.

    Raises:
        SamplesError: a line without a tab, without a file name or text, a repeated file, or no line.
    """
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, tab, label = line.partition("\t")
        name, label = name.strip(), label.strip()
        if not tab:
            raise SamplesError(f"{origin}, line {number}: expected 'file<TAB>text', found no tab")
        if not name or not label:
            raise SamplesError(f"{origin}, line {number}: empty {'file name' if not name else 'text'}")
        if any(name == seen for seen, _ in pairs):
            raise SamplesError(f"{origin}, line {number}: {name} is listed twice")
        pairs.append((name, label))
    if not pairs:
        raise SamplesError(f"{origin}: no samples (one 'file<TAB>text' line per image)")
    return pairs


def _from_labels(folder: Path) -> list[tuple[Path, str]]:
    labels = folder / LABELS
    try:
        text = labels.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SamplesError(f"{labels}: cannot read ({exc})") from exc
    pairs = [(folder / name, label) for name, label in parse_labels(text, str(labels))]
    missing = [str(p.relative_to(folder)) for p, _ in pairs if not p.is_file()]
    if missing:
        raise SamplesError(f"{labels}: listed images missing from {folder}: {', '.join(missing[:5])}")
    return pairs


def _from_iam(folder: Path, writer: str | None, level: str | None) -> list[tuple[Path, str]]:
    from data.datasets.iam import read_iam, select_samples

    corpus = read_iam(folder)
    level = level or ("words" if corpus.words else "lines")
    samples = select_samples(corpus, level, min_words=0)  # type: ignore[arg-type]  (words | lines)
    writers = sorted({s.writer for s in samples})
    if writer is None:
        raise SamplesError(f"{folder}: an IAM-layout folder of {len(writers)} writers; choose one with "
                           f"--writer ID (e.g. {', '.join(writers[:5])})")
    chosen = sorted((s for s in samples if s.writer == writer), key=lambda s: s.id)
    if not chosen:
        raise SamplesError(f"{folder}: no {level} of writer {writer!r} (writers: {', '.join(writers[:10])}"
                           f"{' ...' if len(writers) > 10 else ''})")
    return [(s.image, s.text) for s in chosen]


def read_samples(folder: str | Path, *, writer: str | None = None, level: str | None = None,
                 limit: int | None = None) -> list[tuple[Path, str]]:
    """The ``(image path, text)`` samples of a folder (module docstring).

    Args:
        folder: a folder with ``labels.tsv``, or an IAM-layout folder.
        writer: IAM layout: the writer id (required there).
        level: IAM layout: "words" (default when ``ascii/words.txt`` exists) or "lines".
        limit: keep the first N samples.

    Raises:
        SamplesError: not a folder, neither layout, a bad labels file, missing images, or no such writer.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SamplesError(f"{folder}: not a folder")
    if (folder / LABELS).is_file():
        if writer is not None:
            raise SamplesError(f"{folder}: --writer selects a writer of an IAM-layout folder, but this "
                               f"folder has a {LABELS}")
        pairs = _from_labels(folder)
    elif (folder / "ascii").is_dir():
        pairs = _from_iam(folder, writer, level)
    else:
        raise SamplesError(f"{folder}: neither a {LABELS} (file<TAB>text per image) nor an IAM-layout "
                           "folder (ascii/words.txt, words/)")
    return pairs[:limit] if limit else pairs


def _pair_by_name(images: list[tuple[str, str]], table: tuple[str, str]) -> list[tuple[str, str]]:
    try:
        labels = parse_labels(Path(table[0]).read_text(encoding="utf-8"), table[1])
    except (OSError, UnicodeDecodeError) as exc:
        raise SamplesError(f"{table[1]}: cannot read ({exc})") from exc
    by_name = {name: path for path, name in images}
    missing = [name for name, _ in labels if name not in by_name]
    unlabelled = sorted(set(by_name) - {name for name, _ in labels})
    if missing or unlabelled:
        parts = [f"{what}: {', '.join(names[:5])}" for what, names in
                 (("listed but not uploaded", missing), ("uploaded but not listed", unlabelled)) if names]
        raise SamplesError(f"{table[1]} and the images do not match ({'; '.join(parts)})")
    return [(by_name[name], text) for name, text in labels]


def pair_uploads(files: list[tuple[str, str]], transcriptions: str | None) -> list[tuple[str, str]]:
    """Uploaded images and their texts → ``(path, text)`` pairs (the app's "My handwriting" form).

    Args:
        files: ``(path, original name)`` of every upload in upload order; a ``.tsv`` among them is a
            labels file (``file<TAB>text`` by original name), the others are images.
        transcriptions: one line per image in upload order (used without a labels file).

    Raises:
        SamplesError: no image, a count mismatch, an empty line, both or two labels files, or a labels
            file that does not match the images; the message names the problem.
    """
    tables = [f for f in files if f[1].lower().endswith(".tsv")]
    images = [f for f in files if not f[1].lower().endswith(".tsv")]
    text = (transcriptions or "").strip("\n")
    if not images:
        raise SamplesError("no samples: upload a few images of your handwriting (one word or line each)")
    if tables:
        if len(tables) > 1 or text.strip():
            raise SamplesError("give the transcriptions once: one labels.tsv, or the text lines, not both")
        return _pair_by_name(images, tables[0])
    lines = [line.strip() for line in text.splitlines()] if text.strip() else []
    if len(lines) != len(images):
        raise SamplesError(f"{len(images)} images but {len(lines)} transcription lines: write one line per "
                           "image, in upload order (or upload a labels.tsv)")
    for k, (line, (_, name)) in enumerate(zip(lines, images, strict=True), 1):
        if not line:
            raise SamplesError(f"transcription line {k} (for {name}) is empty")
    return [(path, line) for (path, _), line in zip(images, lines, strict=True)]
