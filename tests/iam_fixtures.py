"""A small hand-written IAM tree for the IAM-format and episodic-sampler tests (writer-htr.md §17, 1-9).

Six writers on seven forms. Form ``a01-000u`` holds the hand-written special cases: the official
example word, an ``er`` word, a ``#`` word, quote / ampersand / apostrophe words (XML entities), a word
whose text holds a space (``M Ps``) and an ``err`` line. Other lines are filler of eight words each.

* writer 001 has one 0-byte and one missing word image and keeps 38 of 40 words;
* writer 005 has exactly 32 words, one of them 0-byte, so it falls under the 32-word filter;
* writer 004 has 8 words, under the filter from the start.

Aachen-style lists put writers 000 and 001 in train, 002 and 005 in val, 003 and 004 in test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

WORDS_HEADER = """\
#--- words.txt ---------------------------------------------------------------#
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
"""
LINES_HEADER = "#--- lines.txt ---#\n# format: a01-000u-00 ok 154 19 408 746 1661 89 A|MOVE|to|stop\n#\n"
FORMS_HEADER = "#--- forms.txt ---#\n# format: a01-000u 000 2 prt 7 5 52 36\n#\n"
SENTENCES_HEADER = "#--- sentences.txt ---#\n# format: a01-000u-s0-00 0 ok 154 19 408 746 1663 91 A|MOVE\n#\n"

# (word id, flag, grey, components, box, tag, text): line a01-000u-00, written out by hand
SPECIAL_WORDS = [
    ("a01-000u-00-00", "ok", 154, 1, (408, 768, 27, 51), "AT", "A"),
    ("a01-000u-00-01", "ok", 154, 1, (507, 766, 213, 48), "NN", "MOVE"),
    ("a01-000u-00-02", "er", 154, 2, (796, 764, 70, 50), "TO", "to"),
    ("a01-000u-00-03", "ok", 154, 1, (919, 757, 166, 78), "VB", "#"),
    ("a01-000u-00-04", "ok", 154, 1, (1185, 754, 26, 31), '"', '"'),
    ("a01-000u-00-05", "ok", 154, 1, (1220, 754, 40, 61), "CC", "&"),
    ("a01-000u-00-06", "ok", 154, 1, (1270, 754, 50, 61), "BEZ", "'s"),
    ("a01-000u-00-07", "ok", 154, 2, (1330, 754, 90, 61), "NPT", "M Ps"),
]
SPECIAL_LINE = "a01-000u-00 ok 154 19 408 746 1661 89 A|MOVE|to|#|\"|&|'s|M Ps"
ERR_LINE = "a01-000u-01"  # err in lines.txt and in the XML; its three words are flagged ok
ERR_WORDS = ("nominating", "any", "more")
FILLER = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dogs")

# form -> (writer, number of filler lines after the hand-written ones)
FORMS = {
    "a01-000u": ("000", 3),
    "a01-003": ("000", 2),
    "a02-000": ("001", 5),
    "b01-000": ("002", 5),
    "b02-000": ("005", 4),
    "c01-000": ("003", 5),
    "c02-000": ("004", 1),
}
SPLITS = {"train": ("a01-000u", "a01-003", "a02-000"), "val": ("b01-000", "b02-000"),
          "test": ("c01-000", "c02-000")}
ZERO_BYTE = ("a02-000-00-01", "b02-000-00-00")
MISSING = ("a02-000-00-02",)


@dataclass(frozen=True)
class FakeIAM:
    """The written tree and what the tests expect of it."""

    root: Path
    words: dict[str, tuple[str, str, str]]  # word id -> (flag, text, writer), every word in words.txt
    err_lines: frozenset[str]
    split_files: dict[str, Path]  # Aachen-style form-id lists
    line_list: Path  # an IAM task-style line-id list (lines of the train forms)


def _xml_escape(text: str) -> str:
    # written by hand so the files hold the literal entities IAM uses
    return (text.replace("&", "&amp;").replace('"', "&quot;").replace("'", "&apos;")
            .replace("<", "&lt;").replace(">", "&gt;"))


def _png(path: Path, width: int, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("L", (width, 12), 250)
    image.paste(shade, (2, 4, width - 2, 8))  # a dark bar: ink on light paper
    image.save(path)


def _form_lines(form: str, fillers: int) -> list[tuple[str, str, list[tuple]]]:
    """(line id, flag, word tuples) of one form."""
    lines = []
    if form == "a01-000u":
        lines.append((f"{form}-00", "ok", SPECIAL_WORDS))
        err_words = [(f"{ERR_LINE}-{k:02d}", "ok", 156, 1, (400 + 90 * k, 932, 80, 50), "NN", text)
                     for k, text in enumerate(ERR_WORDS)]
        lines.append((ERR_LINE, "err", err_words))
    for n in range(len(lines), len(lines) + fillers):
        line_id = f"{form}-{n:02d}"
        words = [(f"{line_id}-{k:02d}", "ok", 170 + n, 1, (300 + 100 * k, 700 + 150 * n, 90, 40), "NN", text)
                 for k, text in enumerate(FILLER)]
        lines.append((line_id, "ok", words))
    return lines


def _xml(form: str, writer: str, lines: list) -> str:
    out = ['<?xml version="1.0" encoding="ISO-8859-1"?>',
           f'<form created="2000-06-28" height="3542" id="{form}" width="2479" writer-id="{writer}">',
           "<machine-printed-part>", '<machine-print-line text="A MOVE to stop Mr. Gaitskell"/>',
           "</machine-printed-part>", "<handwritten-part>"]
    for line_id, flag, words in lines:
        text = _xml_escape(" ".join(w[6] for w in words))
        out.append(f'<line asx="1" asy="2" dsx="3" dsy="4" id="{line_id}" segmentation="{flag}" '
                   f'text="{text}" threshold="{words[0][2]}">')
        for word_id, _, _, components, (x, y, w, h), tag, word_text in words:
            out.append(f'<word id="{word_id}" tag="{_xml_escape(tag)}" text="{_xml_escape(word_text)}">')
            out += [f'<cmp height="{h}" width="{w // components}" x="{x + c * (w // components)}" y="{y}"/>'
                    for c in range(components)]
            out.append("</word>")
        out.append("</line>")
    out += ["</handwritten-part>", "</form>"]
    return "\n".join(out) + "\n"


def _word_png(root: Path, word_id: str) -> Path:
    # spelled out rather than data.datasets.iam_format.image_path, so the tests check that function
    form = "-".join(word_id.split("-")[:2])
    return root / "words" / form.split("-")[0] / form / f"{word_id}.png"


def write_iam_tree(root: Path) -> FakeIAM:
    """Write the tree under ``root`` and return the expectations."""
    (root / "ascii").mkdir(parents=True)
    (root / "xml").mkdir()
    words_txt, lines_txt, forms_txt = [WORDS_HEADER], [LINES_HEADER], [FORMS_HEADER]
    expected: dict[str, tuple[str, str, str]] = {}
    for form, (writer, fillers) in FORMS.items():
        lines = _form_lines(form, fillers)
        count = sum(len(w) for _, _, w in lines)
        forms_txt.append(f"{form} {writer} 1 prt {len(lines)} {len(lines) - 1} {count} {count - 3}\n")
        for line_id, flag, words in lines:
            text = "|".join(w[6] for w in words)
            if line_id == f"{form}-00" and form == "a01-000u":
                lines_txt.append(SPECIAL_LINE + "\n")
            else:
                lines_txt.append(f"{line_id} {flag} {words[0][2]} 9 300 700 1500 90 {text}\n")
            _png(root / "lines" / form.split("-")[0] / form / f"{line_id}.png", 60, 20)
            for word_id, wflag, grey, components, (x, y, w, h), tag, word_text in words:
                words_txt.append(f"{word_id} {wflag} {grey} {components} {x} {y} {w} {h} {tag} {word_text}\n")
                expected[word_id] = (wflag, word_text, writer)
                _png(_word_png(root, word_id), 8 + len(word_text), 30)
        (root / "xml" / f"{form}.xml").write_text(_xml(form, writer, lines), encoding="latin-1")
    for word_id in ZERO_BYTE:
        _word_png(root, word_id).write_bytes(b"")
    for word_id in MISSING:
        _word_png(root, word_id).unlink()
    (root / "ascii" / "words.txt").write_text("".join(words_txt), encoding="utf-8")
    (root / "ascii" / "lines.txt").write_text("".join(lines_txt), encoding="utf-8")
    (root / "ascii" / "forms.txt").write_text("".join(forms_txt), encoding="utf-8")
    (root / "ascii" / "sentences.txt").write_text(
        SENTENCES_HEADER + "a01-000u-s00-00 0 ok 154 19 408 746 1661 89 A|MOVE|to\n"
        "a01-000u-s00-01 0 err 156 9 430 1290 733 66 M Ps|tomorrow|.\n", encoding="utf-8")
    split_files = {}
    for name, forms in SPLITS.items():
        split_files[name] = root / f"{name}.uttlist"
        split_files[name].write_text("".join(f"{f}\n" for f in forms), encoding="utf-8")
    line_list = root / "trainset.txt"
    line_list.write_text("".join(f"{line_id}\n" for form in SPLITS["train"]
                                 for line_id, _, _ in _form_lines(form, FORMS[form][1])), encoding="utf-8")
    return FakeIAM(root, expected, frozenset({ERR_LINE}), split_files, line_list)
