"""Synthetic handwriting corpus in the IAM layout (``recognizers synth text``; writer-htr.md §10).

Output (writer-htr.md §3.1), readable by the IAM loaders: ``ascii/{forms,lines,sentences,words}.txt``
with the official ``#`` headers and field order, ``xml/<form>.xml``, 8-bit grey PNG crops in
``words/``, ``lines/`` and ``sentences/`` (``<level>/a01/a01-000u/<id>.png``), optionally the pages in
``formsA-D/`` etc., Aachen-style form-id lists ``splits/aachen/{train,validation,test}.uttlist``,
LWITLRT-style line-id lists ``splits/lwitlrt/{trainset,validationset1,validationset2,testset}.txt``,
``writers.json`` (each writer's split, font face and style) and ``synth.json`` (settings, counts,
faces, the planted quirks).

Writers: ids ``000``, ``001``, ... (train, then val, then test; from version 5 a second block of
training writers follows the test ones, see ``TextConfig.blocks``); a writer is a font face plus a
style (:mod:`data.synth.hands`), and the faces of a split are never used by another, so writers and
hands are disjoint across splits. Each writer fills whole forms (the preset's forms per writer and
words per form) with sentences from the split's share of :func:`data.synth.sentences.corpus_sentences`
(fortunes plus wamerican word sequences; the ``dev`` share for val), so no sentence is in two splits.
The last training writer is *sparse*: one short form of fewer than 32 words, which the adaptation
filter (writer-htr.md §3.3) must drop.

Planted quirks, by the position of a form among the split's regular forms, so that every corpus
holds them: every third form (from the first) has a struck-out word labelled ``#``; forms 1, 5, 9,
... have an ``err`` line (its last word flagged ``er``); forms 2, 6, 10, ... an ``er`` word in an
``ok`` line; the first training form has the corpus's one 0-byte word image. Punctuation-only words
(``.``, ``,``, ``"``) come with every sentence.

Form ``i`` of writer ``w`` gets its own generator seeded with ``(seed, split code, 2, w, i)``, so the
corpus is byte-identical for a seed whatever the number of workers. A form's XML is written after its
images, and finished forms are journaled (:mod:`data.synth.runner`): a rerun with the same settings
redoes only what is missing; the ASCII files and lists are rewritten at the end.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .hands import (
    FACES,
    Face,
    GlyphStyle,
    WriterStyle,
    accepted_faces,
    draw_glyph_style,
    draw_style,
    face_stroke,
    npm_faces,
)
from .iam_layout import HEADERS, form_record, line_record, sentence_record, tokenize, word_record
from .math import MissingFontError
from .runner import JOURNAL, read_journal, run_chunks, write_text
from .sentences import corpus_sentences
from .text_forms import FormJob, render_form

__all__ = ["MIN_WORDS", "PRESETS", "SPLITS", "VERSION", "VERSIONS", "Preset", "TextConfig", "TextConfigError",
           "TextSummary", "Writer", "plan_corpus", "synthesize_text"]

# Bump when the output for a given seed changes (2: six more training hands; 3: glyph variation and
# borrowed letters for the training writers; 4: 87 Fontsource training hands (data.synth.npm_fonts);
# 5: twice the training writers, so that every training face is drawn (version 4's 70 writers leave
# 43 of the 113 faces unused); validation and test images the same since version 2).
VERSIONS = (2, 3, 4, 5)
# 4 stays the default: the recipes that read corpora/text (MetaHTR, writer codes, the base's earlier
# stages) were measured on it, and version 5's new writers write a character ("X") that models trained
# on version 4 cannot spell; htr_synth_hands.yaml reads a version-5 corpus from corpora/text_v5.
VERSION = 4
SPLITS = ("train", "val", "test")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
POOLS = {"train": "train", "val": "dev", "test": "test"}  # sentence pools of data.synth.sentences
HELD_OUT_SHARE = 0.15  # of the writers, for val and for test (at least 2 each)
MIN_WORDS = 32  # writers with fewer words are dropped for adaptation (2 x 16 shots)
CHUNK = 2  # forms per worker task
_PREFIXES = "abcdefghijklmnopqr"  # IAM's form-id letters

logger = logging.getLogger(__name__)


class TextConfigError(ValueError):
    """Bad sizes, or an output folder made with other settings."""


@dataclass(frozen=True)
class Preset:
    """Corpus shape: sizes that the CLI does not expose one by one."""

    writers: int  # default number of writers
    forms_per_writer: int
    words_per_form: int  # at least this many IAM words per form (whole sentences)
    sparse_words: int  # at least this many words in the sparse writer's single form (fewer than 32)


PRESETS = {
    "tiny": Preset(writers=13, forms_per_writer=1, words_per_form=48, sparse_words=12),
    "dev": Preset(writers=100, forms_per_writer=3, words_per_form=60, sparse_words=12),
}


@dataclass(frozen=True)
class TextConfig:
    """Everything that decides the content of a corpus (the number of workers does not)."""

    writers: int
    seed: int
    preset: str = "dev"
    form_images: bool = False
    version: int = VERSION

    def counts(self) -> dict[str, int]:
        """Writers per split: 15 % (at least 2) each for val and test, the rest train.

        Raises:
            TextConfigError: unknown preset or corpus version, negative seed, or fewer than 6 or more than
                1000 writers.
        """
        if self.preset not in PRESETS:
            raise TextConfigError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if self.seed < 0:
            raise TextConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.version not in VERSIONS:
            raise TextConfigError(f"corpus version must be one of {VERSIONS}, got {self.version}")
        if not 6 <= self.writers <= 1000:
            raise TextConfigError(f"--writers must lie in 6..1000 (3-digit ids, 2 per held-out split and "
                                  f"2 in train), got {self.writers}")
        held = max(2, round(HELD_OUT_SHARE * self.writers))
        train = self.writers - 2 * held
        if self.version >= 5:  # a second block of training writers (see blocks); ids must stay 3-digit
            if self.writers + train > 1000:
                raise TextConfigError(f"corpus version 5 doubles the {train} training writers: "
                                      f"{self.writers + train} writers, more than 1000")
            train *= 2
        return {"train": train, "val": held, "test": held}

    def blocks(self) -> list[tuple[str, int, int]]:
        """(split, first, end) index ranges of the writers in id order: train, val, test and, from
        version 5, the second half of the training writers after the test ones, so that the held-out
        writers keep the ids (and form ids) of versions 2-4 and the first training writers stay those
        of version 4."""
        counts = self.counts()
        if self.version < 5:
            return [(split, 0, counts[split]) for split in SPLITS]
        half = counts["train"] // 2
        return [("train", 0, half), ("val", 0, counts["val"]), ("test", 0, counts["test"]),
                ("train", half, counts["train"])]


@dataclass(frozen=True)
class Writer:
    """One synthetic writer (a row of writers.json)."""

    id: str  # "000"
    split: str
    face: Face
    font: str  # the face's file on this machine
    style: WriterStyle
    sparse: bool  # the one writer with fewer than MIN_WORDS words
    glyphs: GlyphStyle | None = None  # per-glyph variation: training writers only (version 3)
    donor: str | None = None  # the font file of ``glyphs.donor``


@dataclass
class TextSummary:
    """Outcome of :func:`synthesize_text`."""

    counts: dict[str, dict[str, int]]  # per split: forms, lines, words written
    failed: list[str]  # form ids whose rendering failed
    writers: list[Writer]


def _faces(version: int) -> dict[str, tuple[tuple[Face, str], ...]]:
    faces = accepted_faces(extra_hands=version >= 4)
    for split, found in faces.items():
        if not found:
            packages = " ".join(sorted({f.package for f in FACES if f.split == split}))
            raise MissingFontError(f"no usable handwriting font for the {split} writers; install the Debian "
                                   f"packages {packages} (make system-deps)")
    if version >= 4:  # every pinned hand, or the corpus would depend on what happened to download
        have = {f.file for f, _ in faces["train"]}
        missing = [f.package for f in npm_faces() if f.file not in have]
        if missing:
            more = " ..." if len(missing) > 5 else ""
            raise MissingFontError(f"corpus version 4 needs the Fontsource training hands; missing or "
                                   f"unusable: {', '.join(missing[:5])}{more} ({len(missing)}); fetch them "
                                   f"with `recognizers synth fonts` (make fonts)")
    return faces


def _take(pool: list[str], order: np.ndarray, cursor: int, target: int, limit: int) -> tuple[list[str], int]:
    """Sentences from ``cursor`` on (wrapping) until ``target`` words; longer ones are skipped."""
    texts: list[str] = []
    total = tries = 0
    while total < target:
        tries += 1
        if tries > len(pool):
            raise TextConfigError(f"no sentence of at most {limit - total} words in a pool of {len(pool)}")
        sentence = pool[int(order[cursor % len(pool)])]
        cursor += 1
        size = len(tokenize(sentence))
        if total + size <= limit:
            texts.append(sentence)
            total += size
    return texts, cursor


def _quirks(texts: list[str], split: str, ordinal: int) -> dict:
    """The planted quirks of a regular form (see the module docstring)."""
    words = [t.text for s in texts for t in tokenize(s)]
    alpha = [i for i, w in enumerate(words) if w.isalpha()]
    return {"struck": alpha[2] if ordinal % 3 == 0 else None,
            "empty_image": alpha[1] if split == "train" and ordinal == 0 else None,
            "err_line": ordinal % 4 == 1, "er_word": ordinal % 4 == 2}


def _form_id(writer: int, form: int) -> str:
    """IAM-shaped form ids (``a01-000u``): a letter and number per writer, a number per form."""
    suffix = ("", "u", "x")[writer % 3]
    return f"{_PREFIXES[writer % len(_PREFIXES)]}{writer // len(_PREFIXES) + 1:02d}-{form:03d}{suffix}"


def _glyph_style(faces: dict[str, tuple[tuple[Face, str], ...]], split: str, face: Face,
                 rng: np.random.Generator) -> tuple[GlyphStyle | None, str | None]:
    """A training writer's glyph variation and its donor's font file; (None, None) for held-out writers,
    whose hands stay plain fonts (the unseen hands of every corpus version are the same images)."""
    if split != "train":
        return None, None
    paths = {f.file: path for f, path in faces["train"]}
    own = face_stroke(paths[face.file])
    # A donor's letters are thickened towards the pen but never thinned: keep donors of similar weight.
    donors = [f for f, path in faces["train"] if face_stroke(path) < 1.5 * own]
    glyphs = draw_glyph_style(rng, face, donors)
    return glyphs, paths.get(glyphs.donor)


def plan_corpus(out: str | Path, config: TextConfig) -> tuple[list[Writer], list[FormJob]]:
    """Writers and form jobs of the whole corpus; nothing is drawn.

    Args:
        out: corpus root.
        config: size, seed, preset.

    Returns:
        Writers (in id order, ``TextConfig.blocks``) and their forms, in order.

    Raises:
        TextConfigError: bad sizes.
        math.MissingFontError: a split has no usable font (names the Debian packages).
        sentences.SourceError: ``fortunes`` or ``wamerican`` is missing.
    """
    preset = PRESETS[config.preset]
    faces, pools = _faces(config.version), corpus_sentences()
    writers: list[Writer] = []
    jobs: list[FormJob] = []
    cursors = {split: [0, 0] for split in SPLITS}  # per split: sentence cursor, regular-form ordinal
    blocks = config.blocks()
    sparse_index = blocks[0][2] - 1  # the last writer of the first training block, as in version 4
    for split, first, end in blocks:
        code = SPLIT_CODES[split]
        pool = pools[POOLS[split]]
        face_order = np.random.default_rng([config.seed, code, 0]).permutation(len(faces[split]))
        order = np.random.default_rng([config.seed, code, 3]).permutation(len(pool))
        for i in range(first, end):
            face, font = faces[split][int(face_order[i % len(face_order)])]
            sparse = split == "train" and i == sparse_index
            glyphs = (None, None)  # version 2: every writer draws the plain face
            if config.version >= 3:
                glyphs = _glyph_style(faces, split, face, np.random.default_rng([config.seed, code, 4, i]))
            writer = Writer(f"{len(writers):03d}", split, face, font,
                            draw_style(np.random.default_rng([config.seed, code, 1, i])), sparse, *glyphs)
            for j in range(1 if sparse else preset.forms_per_writer):
                target = preset.sparse_words if sparse else preset.words_per_form
                texts, cursors[split][0] = _take(pool, order, cursors[split][0], target,
                                                 MIN_WORDS - 8 if sparse else target + 30)
                quirks = {"struck": None, "empty_image": None, "err_line": False, "er_word": False}
                if not sparse:
                    quirks = _quirks(texts, split, cursors[split][1])
                    cursors[split][1] += 1
                jobs.append(FormJob(_form_id(len(writers), j), writer.id, font, writer.style, tuple(texts),
                                    seed=(config.seed, code, 2, i, j), root=str(out),
                                    form_image=config.form_images, glyphs=writer.glyphs, donor=writer.donor,
                                    **quirks))
            writers.append(writer)
    return writers, jobs


def _run_chunk(jobs: list[FormJob]) -> list[tuple[str, dict | None, str]]:
    """Worker task: ``(form id, metadata or None, error)`` per form."""
    results = []
    for job in jobs:
        try:
            results.append((job.form_id, render_form(job), ""))
        except Exception as exc:  # one broken form must not end the run; it is reported
            results.append((job.form_id, None, f"{type(exc).__name__}: {exc}"))
    return results


def _ascii_files(forms: list[dict]) -> dict[str, str]:
    """The four ASCII ground-truth files of the finished forms, in form order."""
    rows: dict[str, list[str]] = {name: [HEADERS[name]] for name in HEADERS}
    for form in forms:
        rows["forms"].append(form_record(form) + "\n")
        for line in form["lines"]:
            rows["lines"].append(line_record(line) + "\n")
            rows["words"] += [word_record(word, line["grey"]) + "\n" for word in line["words"]]
        rows["sentences"] += [sentence_record(part) + "\n" for part in form["sentences"]]
    return {name: "".join(lines) for name, lines in rows.items()}


def _split_lists(forms: list[dict], split_of: dict[str, str], writers: list[Writer]) -> dict[str, list[str]]:
    """Aachen-style form lists and LWITLRT-style line lists (val writers halved into two sets)."""
    val = [w.id for w in writers if w.split == "val"]
    first_val = set(val[:(len(val) + 1) // 2])
    names = {"train": "trainset", "test": "testset"}
    lists: dict[str, list[str]] = {f"aachen/{s}.uttlist": [] for s in ("train", "validation", "test")}
    sets = ("trainset", "validationset1", "validationset2", "testset")
    lists.update({f"lwitlrt/{n}.txt": [] for n in sets})
    for form in forms:
        split = split_of[form["writer"]]
        lists[f"aachen/{'validation' if split == 'val' else split}.uttlist"].append(form["id"])
        name = names.get(split) or ("validationset1" if form["writer"] in first_val else "validationset2")
        lists[f"lwitlrt/{name}.txt"] += [line["id"] for line in form["lines"]]
    return lists


def _quirk_ids(forms: list[dict], writers: list[Writer]) -> dict[str, list[str]]:
    lines = [line for form in forms for line in form["lines"]]
    words = [word for line in lines for word in line["words"]]
    return {"err_lines": [line["id"] for line in lines if line["segmentation"] == "err"],
            "er_words": [w["id"] for w in words if w["segmentation"] == "er"],
            "struck_words": [w["id"] for w in words if w["text"] == "#"],
            "empty_images": [f["empty_image"] for f in forms if f["empty_image"]],
            "sparse_writers": [w.id for w in writers if w.sparse]}


def _write_index(out: Path, config: TextConfig, writers: list[Writer], forms: list[dict],
                 failed: list[str]) -> dict[str, dict[str, int]]:
    """ASCII files, split lists, writers.json and synth.json; returns counts per split."""
    (out / "ascii").mkdir(parents=True, exist_ok=True)
    for name, text in _ascii_files(forms).items():
        write_text(out / "ascii" / f"{name}.txt", text)
    split_of = {w.id: w.split for w in writers}
    for name, ids in _split_lists(forms, split_of, writers).items():
        (out / "splits" / name).parent.mkdir(parents=True, exist_ok=True)
        write_text(out / "splits" / name, "".join(f"{i}\n" for i in ids))
    counts = {s: {"forms": 0, "lines": 0, "words": 0} for s in SPLITS}
    for form in forms:
        c = counts[split_of[form["writer"]]]
        c["forms"] += 1
        c["lines"] += len(form["lines"])
        c["words"] += sum(len(line["words"]) for line in form["lines"])
    rows = [{"id": w.id, "split": w.split, "face": asdict(w.face), "sparse": w.sparse,
             "style": asdict(w.style), "glyphs": asdict(w.glyphs) if w.glyphs else None} for w in writers]
    write_text(out / "writers.json", json.dumps({"writers": rows}, indent=1) + "\n")
    faces = {s: sorted({w.face.file for w in writers if w.split == s}) for s in SPLITS}
    info = {**asdict(config), "preset_sizes": asdict(PRESETS[config.preset]), "counts": counts,
            "failed": failed, "faces": faces,
            "quirks": _quirk_ids(forms, writers), "min_words": MIN_WORDS, "held_out": held_out_rule()}
    write_text(out / "synth.json", json.dumps(info, indent=2) + "\n")
    return counts


def held_out_rule() -> str:
    """The hold-out in one paragraph (recorded in ``synth.json``)."""
    return ("Writers are disjoint between train, val and test, and so are their font faces (split by family: "
            "see data/synth/hands.py); styles come from the same ranges in every split. Sentences come from "
            "the train/dev/test shares of a BLAKE2b hash of their transcript (data/synth/sentences.py; val "
            "uses dev), so no sentence is in two splits.")


def synthesize_text(out: str | Path, config: TextConfig, *, jobs: int | None = None,
                    progress: bool = True) -> TextSummary:
    """Write a synthetic IAM-layout handwriting corpus (see the module docstring).

    Args:
        out: corpus root; rerunning with the same config resumes an interrupted run.
        config: writers, seed, preset, form images.
        jobs: worker processes (default: all CPU cores); the output does not depend on it.
        progress: show a progress bar on stderr (when it is a terminal).

    Workers are spawned, so a script calling this with ``jobs > 1`` needs the usual
    ``if __name__ == "__main__":`` guard.

    Returns:
        Forms, lines and words per split, the failed form ids and the writers.

    Raises:
        TextConfigError: bad sizes, or ``out`` holds a corpus made with other settings.
        math.MissingFontError, math.RendererError: fonts or matplotlib (which finds them) missing.
        sentences.SourceError: ``fortunes`` or ``wamerican`` is missing.
    """
    from tqdm import tqdm

    out = Path(out)
    config.counts()  # validate before any slow step
    writers, plan = plan_corpus(out, config)
    entries = read_journal(out, asdict(config), TextConfigError)
    journaled = {entry["form"]["id"]: entry["form"] for entry in entries}
    done = {j.form_id: journaled[j.form_id] for j in plan
            if j.form_id in journaled and (out / "xml" / f"{j.form_id}.xml").is_file()}
    pending = [j for j in plan if j.form_id not in done]
    failed: list[str] = []
    with (out / JOURNAL).open("a") as journal, \
            tqdm(total=len(plan), initial=len(done), unit="form", file=sys.stderr,
                 disable=None if progress else True, desc="synth text") as bar:

        def record(results: list[tuple[str, dict | None, str]]) -> None:
            for form_id, form, error in results:
                if form is None:
                    logger.warning("%s failed: %s", form_id, error)
                    failed.append(form_id)
                else:
                    done[form_id] = form
                    journal.write(json.dumps({"form": form}) + "\n")
            journal.flush()
            bar.update(len(results))

        chunks = [pending[i:i + CHUNK] for i in range(0, len(pending), CHUNK)]
        run_chunks(_run_chunk, chunks, jobs or os.cpu_count() or 1, record)
    forms = [done[j.form_id] for j in sorted(plan, key=lambda j: j.form_id) if j.form_id in done]
    counts = _write_index(out, config, writers, forms, sorted(failed))
    return TextSummary(counts, sorted(failed), writers)
