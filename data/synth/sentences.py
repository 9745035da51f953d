"""Text sources for the synthetic corpora: English sentences from Debian ``fortunes``, word sequences
from ``wamerican`` (platform.md §13), LibriSpeech-style transcripts and a stable train/dev/test split.

Sentences are cleaned so that what a TTS engine (or a handwriting font) receives and the transcript
say the same words:

- entries are separated by ``%`` lines; ``art``, ``ascii-art``, ``translate-me`` (mostly Latin) and any
  ``off/`` (offensive) folder are skipped, as are attribution lines (``-- Mark Twain``);
- backspace overstrikes (``_\\bx``, ``x\\bx``) keep the printed character; accents are transliterated;
  any other non-ASCII character poisons only the sentence it sits in;
- periods of abbreviations (``Mr.``, ``e.g.``, ``J. Smith``) are not sentence ends, and a sentence
  holding one is dropped: an engine would read ``Dr.`` as "doctor" while the transcript says ``DR``;
- a kept sentence has 3-20 words, only letters, apostrophes and the punctuation in ``_PUNCTUATION``
  (stripped from the transcript), no digits, no word with two capitals (acronyms are spelled out by
  some engines), no single-letter word but ``a``/``I``, no word without a vowel (``Mr``, ``hmm``: read
  as "mister" or spelled) and no word an engine expands (``etc``, ``iv``).

The split is a hash of the transcript (BLAKE2b, not Python's salted ``hash()``), so it is the same
on every machine, for every corpus seed and size: a test sentence is never a train sentence in any
corpus made by the same version.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from pathlib import Path

import numpy as np

__all__ = [
    "FORTUNES_DIR",
    "SPLITS",
    "WORDS_FILE",
    "SourceError",
    "assign_split",
    "corpus_sentences",
    "dictionary_words",
    "fortune_sentences",
    "sentences_from_entry",
    "split_sentences",
    "to_transcript",
    "word_sequences",
]

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDS_FILE = Path("/usr/share/dict/american-english")
SPLITS = ("train", "dev", "test")
# Share of the hash space per held-out split: fixed, so that the sentence split does not move with
# the corpus size or the --dev/--test fractions (those choose how many utterances, not which text).
SENTENCE_SPLIT = {"dev": 0.1, "test": 0.1}
MIN_WORDS, MAX_WORDS = 3, 20

_SKIPPED_FILES = {"art", "ascii-art", "translate-me"}
_PUNCTUATION = ".,;:!?\"'()-"
_ALLOWED = re.compile(r"[A-Za-z\s" + re.escape(_PUNCTUATION) + r"]+")
_POISON = "\x7f"  # replaces what must not reach a kept sentence; outside _ALLOWED, so it drops it
_ABBREVIATIONS = ("Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Gen|Col|Lt|Sgt|Capt|Gov|Rev|Hon|Inc|Ltd|Co|Corp|Dept|Mt|Ft"
                  "|No|Vol|vs|etc|approx|ca|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec")
_ABBREVIATION_PERIOD = re.compile(rf"\b(?:{_ABBREVIATIONS}|[A-Za-z])\.|(?<=\w)\.(?=\w)")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')]*\s+")
# Words the engines expand or spell although they are written as plain words ("etc" is read as
# "et cetera", "iv" as "four"); words without a vowel ("Mr", "hmm", "ltd") are refused by a rule.
_EXPANDED_WORDS = frozenset(("etc", "inc", "ok", "prof", "ii", "iii", "iv", "vi", "vii", "viii", "ix", "xi",
                             "xii", "xiii", "xiv", "xv", "xvi", "xx"))
_VOWEL = re.compile(r"[aeiouy]")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
_TYPOGRAPHIC = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"}


class SourceError(RuntimeError):
    """A text source is missing; the message names the Debian package that provides it."""


def _clean_entry(entry: str) -> str:
    """One fortune as a single line: overstrikes resolved, ASCII only, attributions dropped."""
    entry = _to_ascii(re.sub(r".\x08", "", entry))  # "x\bx" (bold) and "_\bx" (underline) print "x"
    lines = [line for line in entry.splitlines() if not line.lstrip().startswith("--")]
    text = " ".join(lines).replace("`", "'")  # old fortunes quote `like this'
    text = _ABBREVIATION_PERIOD.sub(_POISON, text)  # no sentence break at "Mr." or "e.g."
    return re.sub(r"\s+", " ", text).strip()


def _to_ascii(text: str) -> str:
    """Accented letters lose their accents (``café`` -> ``cafe``), typographic quotes, dashes and
    spaces become ASCII; anything else (mojibake, symbols) becomes ``_POISON``."""
    if text.isascii():
        return text
    out = []
    for ch in text:
        if ch.isascii() or unicodedata.combining(ch):  # a lone accent mark just goes
            out.append(ch if ch.isascii() else "")
        elif ch in _TYPOGRAPHIC:
            out.append(_TYPOGRAPHIC[ch])
        else:
            plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode("ascii")
            out.append(plain if plain.isalpha() or plain == " " else _POISON)
    return "".join(out)


def to_transcript(sentence: str) -> str:
    """LibriSpeech-style transcript: upper case, letters, apostrophes and single spaces.

    Hyphens and dashes separate words; other punctuation and apostrophes at word edges (quotes)
    are removed.

    Args:
        sentence: a sentence as spoken or rendered, e.g. ``"Don't panic," he said -- twice.``

    Returns:
        e.g. ``DON'T PANIC HE SAID TWICE``.
    """
    words = re.sub(r"[^A-Za-z']+", " ", sentence.replace("-", " ")).split()
    return " ".join(w.strip("'").upper() for w in words if w.strip("'"))


def _acceptable(sentence: str) -> bool:
    """The rules of the module docstring for one candidate sentence."""
    if not sentence[:1].isupper() or _ALLOWED.fullmatch(sentence) is None:
        return False
    words = to_transcript(sentence).lower().split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    raw_words = re.sub(r"[^A-Za-z']+", " ", sentence.replace("-", " ")).split()
    if any(sum(ch.isupper() for ch in w) > 1 for w in raw_words):
        return False
    return all(_speakable(w) for w in words)


def _speakable(word: str) -> bool:
    """A lower-case word that every engine reads as written (the last rules of the docstring)."""
    return (_WORD.fullmatch(word) is not None and (len(word) > 1 or word in "ai")
            and word not in _EXPANDED_WORDS and _VOWEL.search(word) is not None)


def sentences_from_entry(entry: str) -> list[str]:
    """Acceptable sentences of one fortune entry, in order.

    Args:
        entry: the raw text between two ``%`` lines.

    Returns:
        Cleaned sentences with their punctuation (for TTS or rendering), whitespace collapsed.
    """
    return [s for s in _SENTENCE_END.split(_clean_entry(entry)) if _acceptable(s)]


def _fortune_files(root: Path) -> list[Path]:
    files = [p for p in sorted(root.rglob("*"))
             if p.is_file() and not p.is_symlink() and p.suffix not in {".dat", ".u8"}
             and p.name not in _SKIPPED_FILES and "off" not in p.relative_to(root).parts[:-1]]
    return files


@functools.cache
def fortune_sentences(root: Path = FORTUNES_DIR) -> tuple[str, ...]:
    """Every acceptable sentence of the fortunes files, de-duplicated by transcript.

    Args:
        root: the fortunes folder (Debian package ``fortunes``).

    Returns:
        Sentences in file-name then file order; the first spelling of a transcript wins.

    Raises:
        SourceError: the folder or its files are missing.
    """
    files = _fortune_files(root) if root.is_dir() else []
    if not files:
        raise SourceError(f"{root}: no fortunes files; install the Debian package 'fortunes'")
    seen: set[str] = set()
    sentences = []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        for entry in re.split(r"^%\s*$", text, flags=re.MULTILINE):
            for sentence in sentences_from_entry(entry):
                key = to_transcript(sentence)
                if key not in seen:
                    seen.add(key)
                    sentences.append(sentence)
    return tuple(sentences)


@functools.cache
def dictionary_words(path: Path = WORDS_FILE) -> tuple[str, ...]:
    """The lower-case a-z words of ``wamerican`` (no names, no possessives), sorted.

    Raises:
        SourceError: the word list is missing.
    """
    if not path.is_file():
        raise SourceError(f"{path}: word list missing; install the Debian package 'wamerican'")
    words = {w for w in path.read_text(encoding="utf-8", errors="replace").split()
             if re.fullmatch(r"[a-z]{2,}", w) and _speakable(w)}
    return tuple(sorted(words))


def word_sequences(words: tuple[str, ...] | list[str], count: int, seed: int = 0,
                   min_words: int = 4, max_words: int = 10) -> list[str]:
    """Random word sequences for vocabulary coverage (no grammar), e.g. ``Gravel sonnet unwise``.

    Args:
        words: vocabulary to draw from.
        count: how many sequences.
        seed: seed of the draw.
        min_words, max_words: length range, inclusive.

    Returns:
        ``count`` sequences, capitalised, ending with a period.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        picks = rng.choice(len(words), size=int(rng.integers(min_words, max_words + 1)))
        text = " ".join(words[i] for i in picks)
        out.append(text[0].upper() + text[1:] + ".")
    return out


def assign_split(sentence: str, fractions: dict[str, float] | None = None) -> str:
    """The split of a sentence: a stable hash of its transcript, the same on every machine.

    Args:
        sentence: any sentence; only its transcript counts, so spellings of it agree.
        fractions: share of the hash space for ``dev`` and ``test`` (default 10 % each).

    Returns:
        ``"train"``, ``"dev"`` or ``"test"``.
    """
    fractions = SENTENCE_SPLIT if fractions is None else fractions
    digest = hashlib.blake2b(to_transcript(sentence).encode("ascii"), digest_size=8).digest()
    position = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    if position < fractions["test"]:
        return "test"
    if position < fractions["test"] + fractions["dev"]:
        return "dev"
    return "train"


def split_sentences(sentences: tuple[str, ...] | list[str],
                    fractions: dict[str, float] | None = None) -> dict[str, list[str]]:
    """Partition sentences into disjoint ``train``/``dev``/``test`` lists (order kept)."""
    parts: dict[str, list[str]] = {name: [] for name in SPLITS}
    for sentence in sentences:
        parts[assign_split(sentence, fractions)].append(sentence)
    return parts


@functools.cache
def corpus_sentences(word_fraction: float = 0.1) -> dict[str, list[str]]:
    """The sentence pools of the synthetic corpora: fortunes plus word sequences, split.

    Args:
        word_fraction: word sequences to add, as a share of the number of fortune sentences. They are
            drawn with a fixed seed, so the pools never depend on a corpus seed.

    Returns:
        ``{"train": [...], "dev": [...], "test": [...]}``, disjoint by transcript.

    Raises:
        SourceError: ``fortunes`` or ``wamerican`` is missing.
    """
    sentences = list(fortune_sentences())
    if word_fraction > 0:
        sentences += word_sequences(dictionary_words(), round(word_fraction * len(sentences)))
    seen: set[str] = set()
    unique = []
    for sentence in sentences:  # a word sequence may repeat a fortune's transcript: keep the first
        key = to_transcript(sentence)
        if key not in seen:
            seen.add(key)
            unique.append(sentence)
    return split_sentences(unique)
