"""The IAM Handwriting Database (real or synthetic) as word or line samples with writer ids.

Layout (writer-htr.md §3.1, interfaces.md)::

    ROOT/ascii/{forms,lines,sentences,words}.txt    (each optional; words.txt and/or lines.txt needed)
    ROOT/xml/<form>.xml                              (optional when forms.txt gives the writers)
    ROOT/words/a01/a01-000u/a01-000u-00-00.png       ROOT/lines/a01/a01-000u/a01-000u-00.png

:func:`read_iam` reads every metadata file into an :class:`IAMCorpus` (formats in :mod:`.iam_format`
and :mod:`.iam_xml`). :func:`select_samples` applies the thesis filters (van der Werff, MetaHTR
reproduction; writer-htr.md §3.3, §9.1) and :func:`read_splits` the split lists; :class:`IAMDataset`
puts the three together and loads the images with Pillow as 8-bit grey, dark ink on light paper.

Filters, in order, each one counted in a logged summary:

1. words of lines whose segmentation is ``err`` (XML attribute or ``lines.txt``) are dropped; the
   ``er`` flag of a word is ignored, as the thesis does. Whole lines are kept at line level: ``err``
   describes the word segmentation, not the line image.
2. the split: all words (lines) of the forms (lines) a split list names.
3. missing and 0-byte images (IAM has two broken word images, ``a01-117-05-02`` and ``r06-022-03-05``)
   are skipped with a logged warning each.
4. writers with fewer than ``min_words`` words (default 2K = 32) are dropped, within each split.

Split lists hold one id per line: Aachen/RWTH lists (``train.uttlist``, ...) hold **form** ids, IAM's
own task lists (LWITLRT ``trainset.txt``, ...) hold **line** ids. Mixing them up is the pitfall of
§16.7, so a list is read as the kind it is declared to be and refused when its ids are of the other.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .iam_format import (
    CorpusError,
    FormRecord,
    LineRecord,
    SentenceRecord,
    WordRecord,
    form_of,
    image_path,
    line_of,
    parse_forms,
    parse_lines,
    parse_sentences,
    parse_words,
)
from .iam_splits import SplitKind, Splits, read_split_list, read_splits
from .iam_xml import XMLForm, read_xml_dir

__all__ = [
    "MIN_WORDS",
    "CorpusError",
    "IAMCorpus",
    "IAMDataset",
    "IAMSample",
    "SampleLevel",
    "SplitKind",
    "Splits",
    "read_iam",
    "read_split_list",
    "read_splits",
    "select_samples",
    "xml_disagreements",
]

MIN_WORDS = 32  # 2K with K = 16 shots: writers with fewer words are dropped from every split (§3.3)

SampleLevel = Literal["words", "lines"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IAMCorpus:
    """Every metadata file of an IAM-layout folder, parsed and cross-checked; no images are read."""

    root: Path
    forms: Mapping[str, FormRecord]  # forms.txt (empty without it)
    lines: Mapping[str, LineRecord]  # lines.txt
    sentences: Mapping[str, SentenceRecord]  # sentences.txt
    words: Mapping[str, WordRecord]  # words.txt
    xml: Mapping[str, XMLForm]  # xml/*.xml, form id -> form
    writers: Mapping[str, str]  # form id -> writer id, from forms.txt and/or the XML (they must agree)
    err_lines: frozenset[str]  # line ids segmented with errors per the XML or lines.txt

    def writer_of(self, item_id: str) -> str:
        """Writer id of a form, line, word or sentence id."""
        return self.writers[form_of(item_id)]

    def line_ids(self) -> frozenset[str]:
        """Every line id the corpus knows, from lines.txt, words.txt and the XML."""
        xml_lines = (line.id for form in self.xml.values() for line in form.lines)
        return frozenset(self.lines) | {line_of(w) for w in self.words} | frozenset(xml_lines)


@dataclass(frozen=True)
class IAMSample:
    """One word or line image with its transcription and writer."""

    id: str  # a01-000u-00-00 (word) or a01-000u-00 (line)
    text: str  # IAM's ASCII ground truth; at line level the |-separated words joined by spaces
    writer: str  # "000"
    image: Path

    @property
    def form(self) -> str:
        return form_of(self.id)


def _writers(forms: Mapping[str, FormRecord], xml: Mapping[str, XMLForm], root: Path) -> dict[str, str]:
    writers = {form_id: record.writer for form_id, record in forms.items()}
    for form_id, form in xml.items():
        known = writers.setdefault(form_id, form.writer)
        if known != form.writer:
            raise CorpusError(f"{root / 'ascii' / 'forms.txt'}: form {form_id} has writer {known!r} but "
                              f"{root / 'xml' / f'{form_id}.xml'} says writer-id={form.writer!r}")
    return writers


def _optional(path: Path, parse: Callable[[Path], dict]) -> dict:
    """Each ASCII file is optional (interfaces.md: words.txt and/or lines.txt)."""
    return parse(path) if path.is_file() else {}


def read_iam(root: str | Path, *, read_xml: bool = True) -> IAMCorpus:
    """Read the ASCII files and (optionally) the XML of an IAM-layout folder.

    Args:
        root: the folder holding ``ascii/`` (and ``xml/``, ``words/``, ``lines/``).
        read_xml: also parse ``xml/*.xml`` when present (1,539 files on IAM; about a second).

    Returns:
        The parsed corpus.

    Raises:
        CorpusError: naming the file (and line): no ``words.txt`` nor ``lines.txt``, no writer source
            (``forms.txt`` or ``xml/``), a malformed file, forms.txt and the XML disagreeing on a writer,
            or a word or line whose form has no writer.
    """
    root = Path(root)
    ascii_dir = root / "ascii"
    if not root.is_dir():
        raise CorpusError(f"{root}: not a folder")
    forms = _optional(ascii_dir / "forms.txt", parse_forms)
    lines = _optional(ascii_dir / "lines.txt", parse_lines)
    sentences = _optional(ascii_dir / "sentences.txt", parse_sentences)
    words = _optional(ascii_dir / "words.txt", parse_words)
    if not words and not lines:
        raise CorpusError(f"{ascii_dir}: neither words.txt nor lines.txt (IAM layout)")
    xml = read_xml_dir(root / "xml") if read_xml and (root / "xml").is_dir() else {}
    if not forms and not xml:
        raise CorpusError(f"{root}: no writer ids: neither ascii/forms.txt nor xml/*.xml")
    writers = _writers(forms, xml, root)
    for name, records in (("words.txt", words), ("lines.txt", lines), ("sentences.txt", sentences)):
        orphan = next((i for i in records if form_of(i) not in writers), None)
        if orphan is not None:
            raise CorpusError(f"{ascii_dir / name}: {orphan}: its form {form_of(orphan)} has no writer "
                              "in forms.txt or xml/")
    err = {i for i, r in lines.items() if r.segmentation == "err"}
    err |= {line.id for form in xml.values() for line in form.lines if line.segmentation == "err"}
    return IAMCorpus(root, forms, lines, sentences, words, xml, writers, frozenset(err))


def xml_disagreements(corpus: IAMCorpus) -> list[str]:
    """Where the ASCII files and the XML disagree: word text or tag, line segmentation, and words that
    only one of them lists (among forms that have an XML file).

    Returns:
        One readable line per disagreement; empty when they agree (as on the synthetic corpus).
    """
    xml_words = {w.id: w for form in corpus.xml.values() for line in form.lines for w in line.words}
    xml_lines = {line.id: line for form in corpus.xml.values() for line in form.lines}
    found = []
    if corpus.words:
        found += [f"{i}: in words.txt, not in xml/{form_of(i)}.xml" for i in corpus.words
                  if form_of(i) in corpus.xml and i not in xml_words]
        found += [f"{i}: in xml/{form_of(i)}.xml, not in words.txt" for i in xml_words
                  if i not in corpus.words]
    for word_id in xml_words.keys() & corpus.words.keys():
        ascii_word, xml_word = corpus.words[word_id], xml_words[word_id]
        if (ascii_word.text, ascii_word.tag) != (xml_word.text, xml_word.tag):
            found.append(f"{word_id}: words.txt has {ascii_word.text!r} ({ascii_word.tag}), "
                         f"the XML {xml_word.text!r} ({xml_word.tag})")
    for line_id in xml_lines.keys() & corpus.lines.keys():
        if corpus.lines[line_id].segmentation != xml_lines[line_id].segmentation:
            found.append(f"{line_id}: lines.txt says {corpus.lines[line_id].segmentation}, "
                         f"the XML {xml_lines[line_id].segmentation}")
    return sorted(found)


# ---- filters ----


def _candidates(corpus: IAMCorpus, level: SampleLevel) -> list[tuple[str, str, int]]:
    """(id, text, number of words) of every word or line, in file order."""
    if level == "words":
        if not corpus.words:
            raise CorpusError(f"{corpus.root / 'ascii' / 'words.txt'}: missing, needed for level='words'")
        return [(w.id, w.text, 1) for w in corpus.words.values()]
    if level == "lines":
        if not corpus.lines:
            raise CorpusError(f"{corpus.root / 'ascii' / 'lines.txt'}: missing, needed for level='lines'")
        return [(r.id, r.text, len(r.words)) for r in corpus.lines.values()]
    raise ValueError(f"level must be 'words' or 'lines', got {level!r}")


def _image_ok(path: Path) -> bool:
    try:
        size = path.stat().st_size
    except OSError:
        _log.warning("skipped %s: image missing", path)
        return False
    if size == 0:
        _log.warning("skipped %s: empty (0-byte) image", path)
        return False
    return True


def _drop_small_writers(samples: list[IAMSample], counts: list[int], min_words: int) -> list[IAMSample]:
    per_writer: Counter[str] = Counter()
    for sample, count in zip(samples, counts, strict=True):
        per_writer[sample.writer] += count
    small = {w for w, n in per_writer.items() if n < min_words}
    if small:
        _log.info("dropped %d writer(s) with fewer than %d words: %s", len(small), min_words,
                  " ".join(sorted(small)))
    return [s for s in samples if s.writer not in small]


def select_samples(corpus: IAMCorpus, level: SampleLevel = "words", *, units: Collection[str] | None = None,
                   min_words: int = MIN_WORDS) -> list[IAMSample]:
    """The samples of one split after the thesis filters (module docstring), in file order.

    Args:
        corpus: from :func:`read_iam`.
        level: ``"words"`` (``words.txt``, ``words/``) or ``"lines"`` (``lines.txt``, ``lines/``).
        units: the form ids or line ids of the split (``Splits.ids[name]``); None keeps everything.
        min_words: writers with fewer words are dropped (at line level, the words of their lines).

    Returns:
        The kept samples.

    Raises:
        CorpusError: the level's ASCII file or image folder is missing.
    """
    candidates = _candidates(corpus, level)
    folder = corpus.root / level
    if not folder.is_dir():
        raise CorpusError(f"{folder}: image folder missing (IAM layout: {level}/a01/a01-000u/<id>.png)")
    counts = [len(candidates)]  # after each filter, for the summary
    kept = [c for c in candidates if level != "words" or line_of(c[0]) not in corpus.err_lines]
    counts.append(len(kept))
    if units is not None:
        units = frozenset(units)
        kept = [c for c in kept if form_of(c[0]) in units or line_of(c[0]) in units]
    counts.append(len(kept))
    kept = [c for c in kept if _image_ok(image_path(corpus.root, c[0], level))]
    counts.append(len(kept))
    samples = [IAMSample(i, text, corpus.writer_of(i), image_path(corpus.root, i, level))
               for i, text, _ in kept]
    result = _drop_small_writers(samples, [n for _, _, n in kept], min_words)
    counts.append(len(result))
    drops = [a - b for a, b in itertools.pairwise(counts)]
    _log.info("IAM %s: kept %d of %d (dropped %d in err lines, %d outside the split, %d without image, "
              "%d of writers under %d words)", level, counts[-1], counts[0], *drops, min_words)
    return result


class IAMDataset(Dataset):
    """IAM words or lines as ``(image (H, W) uint8, text, writer id)``.

    The image is the stored 8-bit grey PNG as is (dark ink on light paper; colour files are converted
    to grey with Pillow's ``L`` mode). Normalisation and resizing belong to the model's input pipeline.

    Args:
        source: an IAM-layout folder, or an :class:`IAMCorpus` already read (to share it between splits).
        level: ``"words"`` or ``"lines"``.
        split: the split to keep, a key of ``split_files``; None keeps every sample.
        split_files: split name -> list file; all of them are read so writer disjointness is checked.
        split_kind: ``"forms"`` (Aachen lists) or ``"lines"`` (IAM task lists).
        min_words: writers with fewer words in the split are dropped.

    Raises:
        CorpusError: see :func:`read_iam`, :func:`read_splits`, :func:`select_samples`; also a split
            that ``split_files`` does not name, and no sample left after filtering.
    """

    def __init__(self, source: str | Path | IAMCorpus, *, level: SampleLevel = "words",
                 split: str | None = None, split_files: Mapping[str, str | Path] | None = None,
                 split_kind: SplitKind = "forms", min_words: int = MIN_WORDS) -> None:
        self.corpus = source if isinstance(source, IAMCorpus) else read_iam(source)
        self.level = level
        units = None
        if split is not None:
            if not split_files or split not in split_files:
                raise CorpusError(f"{self.corpus.root}: split {split!r} has no list file "
                                  f"(split_files names {sorted(split_files or {})})")
            units = read_splits(self.corpus, split_files, split_kind).ids[split]
        self.samples = select_samples(self.corpus, level, units=units, min_words=min_words)
        if not self.samples:
            raise CorpusError(f"{self.corpus.root}: no {level} left in split {split!r} after filtering")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def writers(self) -> list[str]:
        """Writer id of each sample, for :mod:`data.episodes`."""
        return [s.writer for s in self.samples]

    @property
    def ids(self) -> list[str]:
        """Word or line id of each sample."""
        return [s.id for s in self.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str]:
        sample = self.samples[index]
        try:
            with Image.open(sample.image) as image:
                pixels = np.array(image.convert("L"))  # (H, W) uint8; a copy, so the tensor is writable
        except (OSError, Image.DecompressionBombError) as exc:
            raise CorpusError(f"{sample.image}: not a readable image ({exc})") from exc
        return torch.from_numpy(pixels), sample.text, sample.writer
