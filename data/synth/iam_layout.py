"""IAM conventions for the synthetic text corpus: word tokens, POS tags, ASCII records and form XML.

Tokens follow IAM's ground truth (writer-htr.md §3.2): punctuation and contractions are separate
words (``he 's``, ``do n't``, ``said ,``) while the XML line text keeps the original spacing
(``he's``, ``said,``), so each token remembers whether a space preceded it. Hyphenated words stay one
token; a free-standing dash (``--``) is the token ``-``; a run of periods (``...``) is one token.

Part-of-speech tags (the words.txt field IAM takes from the tagged LOB corpus) come from a small
lexicon of function words plus suffix rules, with punctuation tagged as itself: plausible Brown-style
tags, not a tagger's output; no recognizer uses them.

The ASCII headers are the official ones (their ``# format:`` example lines included); records are
one line each with the fields in the official order. XML is written as IAM's: an ISO-8859-1
declaration, attributes in alphabetical order, ``&quot;``, ``&amp;``, ``&apos;`` entities. A line's
``asx asy dsx dsy`` (from IAM's own preprocessing, undocumented) are here the corners of its box.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["HEADERS", "Token", "form_record", "form_xml", "line_record", "pos_tag", "sentence_record",
           "tokenize", "word_record"]


class Token(NamedTuple):
    """One IAM word of a sentence."""

    text: str
    space_before: bool  # the original text has a space before it (XML line text)


_OPENING = "\"'("
_CLOSING = ".,;:!?\"')"
_SUFFIXES = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
_TAGS = {
    "a": "AT", "an": "AT", "the": "ATI", "and": "CC", "or": "CC", "but": "CC", "of": "IN", "in": "IN",
    "on": "IN", "at": "IN", "for": "IN", "with": "IN", "from": "IN", "by": "IN", "to": "TO", "is": "BEZ",
    "'s": "BEZ", "was": "BEDZ", "are": "BER", "'re": "BER", "be": "BE", "been": "BEN", "not": "XNOT",
    "n't": "XNOT", "i": "PP1A", "you": "PP2", "he": "PP3A", "she": "PP3A", "it": "PP3", "we": "PP1AS",
    "they": "PP3AS", "that": "CS", "this": "DT", "his": "PP$", "her": "PP$", "have": "HV", "'ve": "HV",
    "will": "MD", "'ll": "MD", "would": "MD", "'d": "MD", "can": "MD", "'m": "BEM",
}


def _split_core(core: str) -> list[str]:
    """A word without edge punctuation, with a contraction split off (``don't`` -> ``do``, ``n't``)."""
    lower = core.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix) and len(core) > len(suffix):
            return [core[:-len(suffix)], core[-len(suffix):]]
    return [core] if core else []


def _split_chunk(chunk: str) -> list[str]:
    """The IAM words of one whitespace-separated chunk, in order."""
    if set(chunk) <= set("-"):
        return ["-"]
    lead = []
    while chunk and chunk[0] in _OPENING:
        lead.append(chunk[0])
        chunk = chunk[1:]
    trail: list[str] = []
    while chunk and chunk[-1] in _CLOSING:
        if chunk[-1] == "." and trail and set(trail[0]) == {"."}:
            trail[0] = "." + trail[0]  # "..." stays one word
        else:
            trail.insert(0, chunk[-1])
        chunk = chunk[:-1]
    return lead + _split_core(chunk) + trail


def tokenize(sentence: str) -> list[Token]:
    """Split a sentence into IAM words.

    Args:
        sentence: cleaned text (letters, spaces and ``.,;:!?"'()-``), e.g. ``"Don't," he said.``

    Returns:
        e.g. ``"`` ``Do`` ``n't`` ``,`` ``"`` ``he`` ``said`` ``.``, each with ``space_before`` as in
        the original (False for the first token).
    """
    tokens: list[Token] = []
    for chunk in re.sub(r"-{2,}", " - ", sentence).split():
        for k, text in enumerate(_split_chunk(chunk)):
            tokens.append(Token(text, bool(tokens) and k == 0))
    return tokens


def pos_tag(text: str, sentence_start: bool) -> str:
    """A plausible Brown-style tag for an IAM word (see the module docstring)."""
    if not any(ch.isalpha() for ch in text):
        return text if text != "#" else "NN"
    lower = text.lower()
    if lower in _TAGS:
        return _TAGS[lower]
    if text[0].isupper() and not sentence_start:
        return "NP"
    for suffix, tag in (("ly", "RB"), ("ing", "VBG"), ("ed", "VBN"), ("s", "NNS")):
        if lower.endswith(suffix) and len(lower) > len(suffix) + 2:
            return tag
    return "NN"


HEADERS = {
    "forms": """#--- forms.txt ---------------------------------------------------------------#
#
# iam database form information
#
# format: a01-000u 000 2 prt 7 5 52 36
#
#     a01-000u  -> form id
#     000       -> writer id
#     2         -> number of sentences
#     prt       -> word segmentation
#                     prt: some lines correctly segmented
#                     all: all lines correctly segmented
#
#     7 5       -> 5 of 7 lines are correctly segmented into words
#     52 36     -> the form contains 52 words, 36 are in lines which
#                  have been correctly segmented
#
""",
    "lines": """#--- lines.txt ---------------------------------------------------------------#
#
# iam database line information
#
# format: a01-000u-00 ok 154 19 408 746 1663 91 A|MOVE|to|stop|Mr.|Gaitskell|from
#
#     a01-000u-00  -> line id for form a01-000u
#     ok              -> result of word segmentation
#                            ok: line is correctly segmented
#                            err: segmentation of line has one or more errors
#
#                        notice: if the line could not be properly segmented
#                                the transcription and extraction of the whole
#                                line should not be affected negatively
#
#     154             -> graylevel to binarize line
#     19              -> number of components for this line
#     408 746 1663 91 -> bounding box around this line in x,y,w,h format
#
#     A|MOVE|to|stop|Mr.|Gaitskell|from
#                     -> transcription for this line. word tokens are separated
#                        by the character |
#
""",
    "sentences": """#--- sentences.txt -----------------------------------------------------------#
#
# iam database sentence information
#
# format: a01-000u-s0-00 0 ok 154 19 408 746 1663 91 A|MOVE|to|stop|Mr.|Gaitskell|from
#
#     a01-000u-s0-00  -> sentence/line id for form a01-000u
#     0               -> sentence number within this form
#     ok              -> result of word segmentation
#                            ok: line is correctly segmented
#                            er: segmentation of line has one or more errors
#
#                        warning: if a sentence starts or ends in the middle of
#                                 a line which is not correctly segmeted, a
#                                 correct extraction of the sentence can fail.
#
#     154             -> graylevel to binarize line
#     19              -> number of components for this part of the sentence
#     408 746 1663 91 -> bounding box around for this part of the sentence
#                        in the x,y,w,h format
#
#     A|MOVE|to|stop|Mr.|Gaitskell|from
#                     -> transcription for this part of the sentence. word
#                        tokens are separated by the character |
#
""",
    "words": """#--- words.txt ---------------------------------------------------------------#
#
# iam database word information
#
# format: a01-000u-00-00 ok 154 1 408 768 27 51 AT A
#
#     a01-000u-00-00  -> word id for line 00 in form a01-000u
#     ok              -> result of word segmentation
#                            ok: word was correctly
#                            er: segmentation of word can be bad
#
#     154             -> graylevel to binarize the line containing this word
#     1               -> number of components for this word
#     408 768 27 51   -> bounding box around this word in x,y,w,h format
#     AT              -> the grammatical tag for this word, see the
#                        file tagset.txt for an explanation
#     A               -> the transcription for this word
#
""",
}


def _box(box) -> str:
    return " ".join(str(int(v)) for v in box)


def form_record(form: dict) -> str:
    """The forms.txt line of a rendered form (see ``text_forms.render_form``)."""
    lines = form["lines"]
    ok = [line for line in lines if line["segmentation"] == "ok"]
    words = sum(len(line["words"]) for line in lines)
    words_ok = sum(len(line["words"]) for line in ok)
    segmentation = "all" if len(ok) == len(lines) else "prt"
    return (f"{form['id']} {form['writer']} {form['num_sentences']} {segmentation} {len(lines)} {len(ok)} "
            f"{words} {words_ok}")


def line_record(line: dict) -> str:
    """The lines.txt line of a rendered line."""
    text = "|".join(word["text"] for word in line["words"])
    return (f"{line['id']} {line['segmentation']} {line['grey']} {line['components']} {_box(line['box'])} "
            f"{text}")


def sentence_record(part: dict) -> str:
    """The sentences.txt line of the part of a sentence on one line."""
    return (f"{part['id']} {part['number']} {part['segmentation']} {part['grey']} {part['components']} "
            f"{_box(part['box'])} {'|'.join(part['words'])}")


def word_record(word: dict, grey: int) -> str:
    """The words.txt line of a word; ``grey`` is its line's grey level."""
    return (f"{word['id']} {word['segmentation']} {grey} {len(word['cmps'])} {_box(word['box'])} "
            f"{word['tag']} {word['text']}")


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("'", "&apos;"))


def _element(name: str, attrs: dict, close: bool = False) -> str:
    body = " ".join(f'{key}="{_escape(str(value))}"' for key, value in sorted(attrs.items()))
    return f"<{name} {body}{'/' if close else ''}>"


def form_xml(form: dict, size: tuple[int, int]) -> str:
    """IAM's ``xml/<form>.xml`` for a rendered form.

    Args:
        form: as returned by ``text_forms.render_form``.
        size: the page (width, height) in pixels.

    Returns:
        The document, ASCII text with an ISO-8859-1 declaration as in IAM.
    """
    out = ['<?xml version="1.0" encoding="ISO-8859-1"?>',
           _element("form", {"id": form["id"], "writer-id": form["writer"], "width": size[0],
                             "height": size[1], "created": "synthetic"}),
           "<machine-printed-part>"]
    out += [_element("machine-print-line", {"text": text}, close=True) for text in form["printed"]]
    out += ["</machine-printed-part>", "<handwritten-part>"]
    for line in form["lines"]:
        x, y, w, h = line["box"]
        attrs = {"id": line["id"], "text": line["text"], "segmentation": line["segmentation"],
                 "threshold": line["grey"], "asx": x, "asy": y, "dsx": x + w, "dsy": y + h}
        out.append(_element("line", attrs))
        for word in line["words"]:
            out.append(_element("word", {"id": word["id"], "text": word["text"], "tag": word["tag"]}))
            out += [_element("cmp", {"x": cx, "y": cy, "width": cw, "height": ch}, close=True)
                    for cx, cy, cw, ch in word["cmps"]]
            out.append("</word>")
        out.append("</line>")
    out += ["</handwritten-part>", "</form>"]
    return "\n".join(out) + "\n"
