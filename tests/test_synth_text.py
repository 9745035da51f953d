"""`recognizers synth text`: IAM layout and formats, writer hold-out, planted quirks, determinism, resume."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from itertools import chain
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from data.synth import hands, npm_fonts
from data.synth.handwriting import components
from data.synth.iam_layout import form_xml, tokenize
from data.synth.math import MissingFontError, RendererError
from data.synth.sentences import SourceError, corpus_sentences
from data.synth.text import MIN_WORDS, TextConfig, TextConfigError, plan_corpus, synthesize_text
from data.synth.text_forms import PAGE_SIZE, form_image_path, render_form
from recognizers.cli import main
from tests.conftest import IN_CI

FORM_ID = re.compile(r"[a-r]\d\d-\d{3}[ux]?")
PUNCTUATION = set(".,;:!?\"'()-")


def _require_sources(fetched: bool = True) -> None:
    """Skip (fail under CI=true) without the text sources and Debian fonts, and unless ``fetched`` is
    False, without the Fontsource hands of the default corpus version 4 (`make fonts`)."""
    try:
        corpus_sentences()
        faces = hands.accepted_faces()
        if not all(faces.values()):
            raise MissingFontError(f"a split has no usable font: { {s: len(f) for s, f in faces.items()} }")
        missing = len(npm_fonts.manifest()) - len(npm_fonts.installed())
        if fetched and missing:
            raise MissingFontError(f"{missing} Fontsource hands of corpus version 4 not fetched "
                                   "(recognizers synth fonts)")
    except (SourceError, MissingFontError, RendererError) as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The tiny preset, made once through the CLI with two workers."""
    _require_sources()
    out = tmp_path_factory.mktemp("synth-text") / "iam"
    args = ["synth", "text", "--out", str(out), "--preset", "tiny", "--seed", "7", "--workers", "2"]
    assert main(args) == 0
    return out


def _records(path: Path, min_fields: int) -> list[list[str]]:
    """Data lines split on spaces; the file starts with a '#' header."""
    lines = path.read_text(encoding="ascii").splitlines()
    assert lines[0].startswith("#--- ")
    assert "# format:" in "\n".join(lines[:6])
    rows = [line.split(" ") for line in lines if not line.startswith("#")]
    assert all(len(row) >= min_fields for row in rows), path
    return rows


def _box(fields: list[str]) -> tuple[int, ...]:
    box = tuple(int(v) for v in fields)
    assert len(box) == 4
    assert box[2] > 0
    assert box[3] > 0
    return box


def _parse(root: Path) -> dict[str, dict]:
    """The four ASCII files, field by field in the official order."""
    forms = {}
    for f in _records(root / "ascii" / "forms.txt", 8):
        assert len(f) == 8
        assert FORM_ID.fullmatch(f[0])
        assert re.fullmatch(r"\d{3}", f[1])
        assert f[3] in ("all", "prt")
        forms[f[0]] = {"writer": f[1], "sentences": int(f[2]), "lines": int(f[4]), "lines_ok": int(f[5]),
                       "words": int(f[6]), "words_ok": int(f[7]), "segmentation": f[3]}
    lines = {}
    for f in _records(root / "ascii" / "lines.txt", 9):
        assert re.fullmatch(r"(.+)-\d\d", f[0]).group(1) in forms
        assert f[1] in ("ok", "err")
        lines[f[0]] = {"seg": f[1], "grey": int(f[2]), "cmps": int(f[3]), "box": _box(f[4:8]),
                       "words": " ".join(f[8:]).split("|")}
    words = {}
    for f in _records(root / "ascii" / "words.txt", 10):
        assert re.fullmatch(r"(.+)-\d\d", f[0]).group(1) in lines
        assert f[1] in ("ok", "er")
        assert 0 <= int(f[2]) <= 255
        assert int(f[3]) >= 1
        words[f[0]] = {"seg": f[1], "grey": int(f[2]), "cmps": int(f[3]), "box": _box(f[4:8]), "tag": f[8],
                       "text": " ".join(f[9:])}
    sentences = {}
    for f in _records(root / "ascii" / "sentences.txt", 10):
        assert re.fullmatch(r"(.+)-s\d\d-\d\d", f[0]).group(1) in forms
        assert f[2] in ("ok", "err")
        sentences[f[0]] = {"number": int(f[1]), "box": _box(f[5:9]), "words": " ".join(f[9:]).split("|")}
    return {"forms": forms, "lines": lines, "words": words, "sentences": sentences}


def _image(root: Path, level: str, item_id: str) -> Path:
    form = "-".join(item_id.split("-")[:2])
    return root / level / item_id.split("-")[0] / form / f"{item_id}.png"


# --- layout and formats ------------------------------------------------------------------------------


def test_ascii_files_agree_with_each_other_and_the_images(corpus):
    gt = _parse(corpus)
    assert len(gt["forms"]) == 13
    for line_id, line in gt["lines"].items():
        mine = {k: w for k, w in gt["words"].items() if k.startswith(line_id + "-")}
        assert [w["text"] for w in mine.values()] == line["words"]
        assert all(w["grey"] == line["grey"] for w in mine.values())
        assert sum(w["cmps"] for w in mine.values()) == line["cmps"]
        x0, y0, w0, h0 = line["box"]
        assert all(x0 <= w["box"][0] and w["box"][0] + w["box"][2] <= x0 + w0 and y0 <= w["box"][1]
                   and w["box"][1] + w["box"][3] <= y0 + h0 for w in mine.values())
    for form_id, form in gt["forms"].items():
        form_lines = [v for k, v in gt["lines"].items() if k.startswith(form_id + "-")]
        assert form["lines"] == len(form_lines)
        assert form["lines_ok"] == sum(v["seg"] == "ok" for v in form_lines)
        assert form["words"] == sum(len(v["words"]) for v in form_lines)
        assert form["segmentation"] == ("all" if form["lines_ok"] == form["lines"] else "prt")
    joined = Counter(w for s in gt["sentences"].values() for w in s["words"])
    assert joined == Counter(w["text"] for w in gt["words"].values())
    for level, items in (("lines", gt["lines"]), ("sentences", gt["sentences"]), ("words", gt["words"])):
        for item_id, item in items.items():
            path = _image(corpus, level, item_id)
            if path.stat().st_size == 0:
                continue
            with Image.open(path) as im:
                assert im.mode == "L"
                assert im.size == item["box"][2:]
                pixels = np.asarray(im)
                if min(pixels.shape) >= 8:  # a crop of a full stop can be ink edge to edge
                    assert pixels.max() > 150  # light paper...
                assert pixels.min() < max(pixels.max(), 150) - 60  # ...and dark ink
                if level == "lines":
                    assert np.median(pixels) > 150  # mostly paper
    heights = [w["box"][3] for w in gt["words"].values() if w["text"].isalpha() and len(w["text"]) > 3]
    assert 60 <= np.median(heights) <= 160  # 300 dpi: IAM-sized words


def test_xml_matches_the_ascii_files(corpus):
    gt = _parse(corpus)
    for form_id, form in gt["forms"].items():
        raw = (corpus / "xml" / f"{form_id}.xml").read_bytes()
        assert raw.startswith(b'<?xml version="1.0" encoding="ISO-8859-1"?>')
        root = ElementTree.fromstring(raw)
        assert root.tag == "form"
        assert root.get("id") == form_id
        assert root.get("writer-id") == form["writer"]
        assert root.find("machine-printed-part") is not None
        for line in root.find("handwritten-part").iter("line"):
            ascii_line = gt["lines"][line.get("id")]
            assert line.get("segmentation") == ascii_line["seg"]
            assert int(line.get("threshold")) == ascii_line["grey"]
            assert line.get("text").replace(" ", "") == "".join(ascii_line["words"])  # original spacing
            for word in line.iter("word"):
                ascii_word = gt["words"][word.get("id")]
                assert word.get("text") == ascii_word["text"]
                assert word.get("tag") == ascii_word["tag"]
                cmps = [[int(c.get(k)) for k in ("x", "y", "width", "height")] for c in word.iter("cmp")]
                assert len(cmps) == ascii_word["cmps"]
                x0, y0 = min(c[0] for c in cmps), min(c[1] for c in cmps)
                x1, y1 = max(c[0] + c[2] for c in cmps), max(c[1] + c[3] for c in cmps)
                assert (x0, y0, x1 - x0, y1 - y0) == ascii_word["box"]


def test_xml_escapes_entities_as_iam():
    word = {"id": "a01-000-00-00", "text": "\"'&", "tag": "X", "cmps": [[1, 2, 3, 4]]}
    form = {"id": "a01-000", "writer": "007", "printed": ['He said "A & B\'s".'],
            "lines": [{"id": "a01-000-00", "text": "said \"A&B's\"", "segmentation": "ok", "grey": 170,
                       "box": [1, 2, 3, 4], "words": [word]}]}
    text = form_xml(form, (2479, 3542))
    assert 'text="&quot;&apos;&amp;"' in text
    assert "A &amp; B&apos;s" in text
    root = ElementTree.fromstring(text.encode("ascii"))
    assert root.find("handwritten-part/line/word").get("text") == "\"'&"
    assert root.get("writer-id") == "007"


def test_tokens_follow_the_iam_convention():
    texts = [t.text for t in tokenize('"Don\'t panic," he said -- we\'ll see... (twice).')]
    assert texts == ['"', "Do", "n't", "panic", ",", '"', "he", "said", "-", "we", "'ll", "see", "...", "(",
                     "twice", ")", "."]
    assert [t.space_before for t in tokenize("Hi, you.")] == [False, False, True, False]


def test_components_are_8_connected():
    mask = np.zeros((6, 8), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # a diagonal: one component
    mask[4:6, 5:8] = True
    mask[0, 7] = True
    assert components(mask) == [(0, 0, 3, 3), (5, 4, 3, 2), (7, 0, 1, 1)]


# --- writers, splits, quirks -----------------------------------------------------------------------


def test_writers_and_faces_are_disjoint_across_splits(corpus):
    gt = _parse(corpus)
    writers = {w["id"]: w for w in json.loads((corpus / "writers.json").read_text())["writers"]}
    split_forms = {s: (corpus / "splits" / "aachen" / f"{s}.uttlist").read_text().split()
                   for s in ("train", "validation", "test")}
    assert sorted(chain.from_iterable(split_forms.values())) == sorted(gt["forms"])
    by_split = {s: {gt["forms"][f]["writer"] for f in forms} for s, forms in split_forms.items()}
    families = {s: {writers[w]["face"]["family"] for w in ids} for s, ids in by_split.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not by_split[a] & by_split[b]
        assert not families[a] & families[b]
    for split, ids in by_split.items():
        assert all(writers[w]["split"] == {"validation": "val"}.get(split, split) for w in ids)
    lwitlrt = {p.stem: p.read_text().split() for p in (corpus / "splits" / "lwitlrt").glob("*.txt")}
    assert sorted(chain.from_iterable(lwitlrt.values())) == sorted(gt["lines"])
    # the tiny preset's promise: >= 8 training writers with >= 32 usable words, >= 2 in val and test
    usable = Counter(gt["forms"]["-".join(k.split("-")[:2])]["writer"] for k, w in gt["words"].items()
                     if gt["lines"]["-".join(k.split("-")[:3])]["seg"] == "ok")
    assert sum(usable[w] >= MIN_WORDS for w in by_split["train"]) >= 8
    assert all(usable[w] >= MIN_WORDS for s in ("validation", "test") for w in by_split[s])
    assert len(by_split["validation"]) >= 2
    assert len(by_split["test"]) >= 2
    sparse = [w for w in writers.values() if w["sparse"]]
    assert len(sparse) == 1
    assert usable[sparse[0]["id"]] < MIN_WORDS
    assert sparse[0]["split"] == "train"


def test_planted_quirks_are_present(corpus):
    gt = _parse(corpus)
    quirks = json.loads((corpus / "synth.json").read_text())["quirks"]
    err = [k for k, v in gt["lines"].items() if v["seg"] == "err"]
    assert err
    assert err == quirks["err_lines"]
    er = [k for k, v in gt["words"].items() if v["seg"] == "er"]
    assert any("-".join(k.split("-")[:3]) not in err for k in er)  # er words in ok lines (kept by loaders)
    assert [k for k, v in gt["words"].items() if v["text"] == "#"] == quirks["struck_words"] != []
    assert any(set(v["text"]) <= PUNCTUATION for v in gt["words"].values())
    empty = [p for p in (corpus / "words").rglob("*.png") if p.stat().st_size == 0]
    assert [p.stem for p in empty] == quirks["empty_images"]
    assert len(empty) == 1
    assert empty[0].stem in gt["words"]


def test_every_accepted_face_draws_every_character():
    _require_sources()
    for split, faces in hands.accepted_faces().items():
        for face, path in faces:
            assert face.split == split
            font = hands.load_font(path, 80)
            notdef = hands._glyph(font, "\U0010fffd")
            for ch in hands.CHARSET:
                ink = hands._glyph(font, ch)
                assert ink.any(), (face.file, ch)
                assert not np.array_equal(ink, notdef), (face.file, ch)
    families = {s: {f.family for f, _ in faces} for s, faces in hands.accepted_faces().items()}
    assert not families["train"] & families["val"]
    assert not families["val"] & families["test"]
    assert not families["train"] & families["test"]


# --- determinism, resume, CLI ----------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".synth-journal.jsonl"}


def test_same_seed_same_bytes_in_one_process_and_after_an_interruption(corpus, tmp_path):
    config = TextConfig(13, 7, "tiny")
    out = tmp_path / "again"
    synthesize_text(out, config, jobs=1, progress=False)
    reference = _files(corpus)
    assert _files(out) == reference
    # a killed run: the last forms' XML (written last) gone, the journal cut mid-line, no index yet
    journal = out / ".synth-journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    lost = [json.loads(line)["form"]["id"] for line in lines[-3:]]
    journal.write_text("".join(lines[:-3]) + lines[-3][:40])
    for form_id in lost[1:]:
        (out / "xml" / f"{form_id}.xml").unlink()
    shutil.rmtree(out / "ascii")
    kept = next(p for p in (out / "lines").rglob("*.png") if p.parent.name not in lost)
    before = kept.stat().st_mtime_ns
    summary = synthesize_text(out, config, jobs=1, progress=False)
    assert not summary.failed
    assert _files(out) == reference
    assert kept.stat().st_mtime_ns == before  # finished forms are not redrawn
    with pytest.raises(TextConfigError, match="other settings"):
        synthesize_text(out, TextConfig(13, 8, "tiny"), jobs=1, progress=False)


def test_plan_depends_on_the_seed(tmp_path):
    _require_sources()
    _, a = plan_corpus(tmp_path, TextConfig(13, 7, "tiny"))
    writers, b = plan_corpus(tmp_path, TextConfig(13, 8, "tiny"))
    assert [j.sentences for j in a] != [j.sentences for j in b]
    assert [j.style for j in a] != [j.style for j in b]
    assert [w.split for w in writers] == ["train"] * 9 + ["val"] * 2 + ["test"] * 2


def test_version_5_adds_training_writers_after_the_held_out_ones(tmp_path):
    """Version 5 = version 4 plus a second block of training writers with ids after the test writers:
    every version-4 writer and form is planned identically (same ids, faces, styles, sentences, seeds),
    the new writers are training writers with forms and sentences of their own, and more training faces
    are drawn."""
    _require_sources()
    w4, j4 = plan_corpus(tmp_path, TextConfig(100, 3, "dev", version=4))
    w5, j5 = plan_corpus(tmp_path, TextConfig(100, 3, "dev", version=5))
    assert w5[:100] == w4
    assert j5[:len(j4)] == j4
    extra = w5[100:]
    assert len(extra) == 70
    assert {w.split for w in extra} == {"train"}
    assert [w.id for w in extra] == [f"{i:03d}" for i in range(100, 170)]
    assert not any(w.sparse for w in extra)
    assert sum(w.sparse for w in w5) == 1
    assert len({j.form_id for j in j5}) == len(j5)
    old = {s for j in j4 for s in j.sentences}
    new = [s for j in j5[len(j4):] for s in j.sentences]
    assert new
    assert len(set(new) & old) < 0.05 * len(new)
    faces = {v: {w.face.file for w in ws if w.split == "train"} for v, ws in ((4, w4), (5, w5))}
    assert faces[4] < faces[5]
    assert len(faces[5]) == len(hands.accepted_faces(extra_hands=True)["train"])  # every training face
    with pytest.raises(TextConfigError, match="version 5"):
        TextConfig(900, 0, version=5).counts()


def test_form_image_is_the_page_the_crops_come_from(tmp_path):
    _require_sources()
    _, jobs = plan_corpus(tmp_path, TextConfig(13, 7, "tiny", form_images=True))
    form = render_form(jobs[-1])
    with Image.open(form_image_path(tmp_path, form["id"])) as page:
        assert page.mode == "L"
        assert page.width >= PAGE_SIZE[0]
        assert page.height >= PAGE_SIZE[1]
        x, y, w, h = form["lines"][0]["box"]
        with Image.open(_image(tmp_path, "lines", form["lines"][0]["id"])) as line:
            assert np.array_equal(np.asarray(page.crop((x, y, x + w, y + h))), np.asarray(line))


def test_bad_sizes_are_usage_errors(tmp_path, capsys):
    with pytest.raises(TextConfigError):
        TextConfig(5, 0).counts()
    with pytest.raises(TextConfigError):
        TextConfig(13, -1).counts()
    assert main(["synth", "text", "--out", str(tmp_path / "x"), "--writers", "3", "--seed", "1"]) == 2
    assert "--writers" in capsys.readouterr().err


def test_help_does_not_import_torch():
    code = ("import sys\nfrom recognizers.cli import main\n"
            "try:\n    main(['synth', 'text', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert "--workers" in result.stdout
    assert "IAM" in result.stdout


def test_the_iam_reader_recovers_the_generator_metadata(corpus):
    """writer-htr.md §17 test 7: reading the generated corpus gives back exactly what the generator
    recorded in its journal (ids, writers, texts, flags, grey levels, boxes, components)."""
    from data.datasets.iam import read_iam, xml_disagreements

    read = read_iam(corpus)
    assert xml_disagreements(read) == []
    journal = [json.loads(line) for line in (corpus / ".synth-journal.jsonl").read_text().splitlines()]
    forms = [entry["form"] for entry in journal if "form" in entry]
    assert sorted(f["id"] for f in forms) == sorted(read.forms) == sorted(read.xml)
    for form in forms:
        assert read.writers[form["id"]] == form["writer"]
        xml_lines = {line.id: line for line in read.xml[form["id"]].lines}
        for line in form["lines"]:
            got = read.lines[line["id"]]
            assert (got.segmentation, got.grey, got.components) == (
                line["segmentation"], line["grey"], line["components"])
            assert tuple(got.box) == tuple(line["box"])
            assert got.words == tuple(word["text"] for word in line["words"])  # IAM's split punctuation
            assert xml_lines[line["id"]].text == line["text"]  # the original spacing
            assert xml_lines[line["id"]].segmentation == line["segmentation"]
            xml_words = {w.id: w for w in xml_lines[line["id"]].words}
            for word in line["words"]:
                record = read.words[word["id"]]
                assert (record.segmentation, record.tag, record.text) == (
                    word["segmentation"], word["tag"], word["text"])
                assert tuple(record.box) == tuple(word["box"])
                cmps = [tuple(c) for c in word["cmps"]]
                assert [tuple(b) for b in xml_words[word["id"]].components] == cmps


def test_a_mark_the_warp_fades_out_is_drawn_unwarped(monkeypatch):
    """A hairline '"' of a thin face can fade below the ink level in the bilinear warp; the word is then
    drawn without the warp instead of failing its whole form."""
    from PIL import Image as PILImage

    from data.synth import handwriting

    _require_sources()
    (_, path), *_ = hands.accepted_faces()["train"]
    style = hands.draw_style(np.random.default_rng(0))
    faded = lambda canvas, baseline, *args, **kwargs: (PILImage.new("L", canvas.size, 0), baseline)  # noqa: E731
    monkeypatch.setattr(handwriting, "_warp", faded)
    ink = handwriting.render_word('"', path, style, np.random.default_rng(1))
    assert ink.ink.max() > handwriting.INK_LEVEL
    assert ink.components
