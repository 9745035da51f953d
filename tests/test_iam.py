"""IAM-format reading: ASCII files, XML, image paths, thesis filters, split lists (writer-htr.md §17, 1-6)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from data.datasets.iam import (
    CorpusError,
    IAMDataset,
    read_iam,
    read_split_list,
    read_splits,
    select_samples,
    xml_disagreements,
)
from data.datasets.iam_format import (
    Box,
    form_of,
    image_path,
    line_of,
    parse_forms,
    parse_lines,
    parse_sentences,
    parse_words,
)
from data.datasets.iam_xml import parse_form_xml
from tests.iam_fixtures import ERR_LINE, MISSING, ZERO_BYTE, write_iam_tree


@pytest.fixture(scope="module")
def iam(tmp_path_factory):
    return write_iam_tree(tmp_path_factory.mktemp("iam") / "IAM")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- 1. words.txt ----


def test_words_txt_official_example(tmp_path):
    path = _write(tmp_path, "words.txt", "# format: a01-000u-00-00 ok 154 1 408 768 27 51 AT A\n#\n"
                  "a01-000u-00-00 ok 154 1 408 768 27 51 AT A\n"
                  "a01-000u-00-01 er 154 2 507 766 213 48 NN MOVE\n"
                  "a01-000u-00-02 ok 154 2 796 764 70 50 NPT M Ps\n"
                  "a01-000u-00-03 ok 154 1 919 757 166 78 VB #\n")
    words = parse_words(path)
    assert list(words) == ["a01-000u-00-00", "a01-000u-00-01", "a01-000u-00-02", "a01-000u-00-03"]
    first = words["a01-000u-00-00"]
    assert (first.id, first.segmentation, first.grey, first.components) == ("a01-000u-00-00", "ok", 154, 1)
    assert first.box == (408, 768, 27, 51)
    assert first.box == Box(x=408, y=768, width=27, height=51)
    assert (first.tag, first.text) == ("AT", "A")
    assert words["a01-000u-00-01"].segmentation == "er"
    assert words["a01-000u-00-02"].text == "M Ps"  # an IAM word may hold a space
    assert words["a01-000u-00-03"].text == "#"  # an unreadable word, not a comment


@pytest.mark.parametrize("line", [
    "a01-000u-00-00 ok 154 408 768 27 51 AT A",  # component count missing
    "a01-000u-00-00 ok 154 408 768 27 51 NPT M Ps",  # the same with a two-token text
    "a01-000u-00-00 ok 154 1 408 768 27 51 A",  # tag missing
    "a01-000u-00-00 err 154 1 408 768 27 51 AT A",  # lines.txt's flag in words.txt
    "a01-000u-00-00 ok 300 1 408 768 27 51 AT A",  # grey level out of range
    "a01-000u-00 ok 154 1 408 768 27 51 AT A",  # a line id
])
def test_words_txt_rejects_bad_line_naming_file_and_line(tmp_path, line):
    good = "a01-000u-00-01 ok 154 1 507 766 213 48 NN MOVE"
    path = _write(tmp_path, "words.txt", f"# header\n{good}\n{line}\n")
    with pytest.raises(CorpusError, match=r"words\.txt:3: "):
        parse_words(path)


def test_words_txt_rejects_duplicate_id(tmp_path):
    path = _write(tmp_path, "words.txt", "a01-000u-00-00 ok 154 1 408 768 27 51 AT A\n"
                  "a01-000u-00-00 ok 154 1 408 768 27 51 AT A\n")
    with pytest.raises(CorpusError, match=r"words\.txt:2: .*already listed on line 1"):
        parse_words(path)


# ---- 2. lines.txt, forms.txt, sentences.txt ----


def test_lines_txt(tmp_path):
    path = _write(tmp_path, "lines.txt", "#--- lines.txt ---#\n"
                  "a01-000u-00 ok 154 19 408 746 1661 89 A|MOVE|to|stop|Mr.|Gaitskell|from\n"
                  "a01-000u-03 err 156 9 430 1290 733 66 M Ps|tomorrow|.\n")
    lines = parse_lines(path)
    ok, err = lines["a01-000u-00"], lines["a01-000u-03"]
    assert ok.text == "A MOVE to stop Mr. Gaitskell from"
    assert ok.words == ("A", "MOVE", "to", "stop", "Mr.", "Gaitskell", "from")
    assert (ok.segmentation, err.segmentation) == ("ok", "err")
    assert (ok.grey, ok.components, ok.box) == (154, 19, (408, 746, 1661, 89))
    assert all(isinstance(v, int) for v in (ok.grey, ok.components, *ok.box))
    assert err.words == ("M Ps", "tomorrow", ".")


@pytest.mark.parametrize("line", [
    "a01-000u-00 ok 154 408 746 1661 89 A|MOVE",  # component count missing: box would shift
    "a01-000u-00 er 154 19 408 746 1661 89 A|MOVE",  # words.txt's flag in lines.txt
    "a01-000u-00 ok 154 19 408 746 1661 89",  # no text
])
def test_lines_txt_rejects_bad_line(tmp_path, line):
    path = _write(tmp_path, "lines.txt", f"{line}\n")
    with pytest.raises(CorpusError, match=r"lines\.txt:1: "):
        parse_lines(path)


def test_forms_txt_keeps_writer_string(tmp_path):
    path = _write(tmp_path, "forms.txt", "# format: a01-000u 000 2 prt 7 5 52 36\n"
                  "a01-000u 000 2 prt 7 5 52 36\na01-003 012 3 all 9 9 70 70\n")
    forms = parse_forms(path)
    first = forms["a01-000u"]
    assert first.writer == "000"
    assert forms["a01-003"].writer == "012"
    assert (first.num_sentences, first.segmentation, first.num_lines, first.num_lines_ok) == (2, "prt", 7, 5)
    assert (first.num_words, first.num_words_ok) == (52, 36)
    bad = _write(tmp_path, "bad_forms.txt", "a01-000u 000 2 prt 7 5 52\n")
    with pytest.raises(CorpusError, match=r"bad_forms\.txt:1: expected 8 fields"):
        parse_forms(bad)


def test_sentences_txt(tmp_path):
    path = _write(tmp_path, "sentences.txt", "a01-000u-s00-03 0 err 156 9 430 1290 733 66 M Ps|tomorrow|.\n")
    sentence = parse_sentences(path)["a01-000u-s00-03"]
    assert (sentence.number, sentence.segmentation, sentence.grey, sentence.box) == (
        0, "err", 156, (430, 1290, 733, 66))
    assert sentence.text == "M Ps tomorrow ."


# ---- 3. XML ----


def test_xml_fields_and_entities(iam):
    xml_text = (iam.root / "xml" / "a01-000u.xml").read_text(encoding="latin-1")
    assert "&quot;" in xml_text
    assert "&amp;" in xml_text
    assert "&apos;" in xml_text
    form = parse_form_xml(iam.root / "xml" / "a01-000u.xml")
    assert (form.id, form.writer) == ("a01-000u", "000")
    assert [line.segmentation for line in form.lines[:2]] == ["ok", "err"]
    first = form.lines[0]
    assert first.threshold == 154
    assert [w.text for w in first.words] == ["A", "MOVE", "to", "#", '"', "&", "'s", "M Ps"]
    assert first.words[0].id == "a01-000u-00-00"
    assert first.words[0].tag == "AT"
    assert first.words[0].components == ((408, 768, 27, 51),)
    assert first.words[2].components == ((796, 764, 35, 50), (831, 764, 35, 50))
    assert first.text == "A MOVE to # \" & 's M Ps"


def test_xml_agrees_with_ascii(iam):
    corpus = read_iam(iam.root)
    assert xml_disagreements(corpus) == []
    assert corpus.err_lines == iam.err_lines
    assert {i: (w.segmentation, w.text, corpus.writer_of(i)) for i, w in corpus.words.items()} == iam.words


@pytest.mark.parametrize(("text", "message"), [
    ('<!DOCTYPE form [<!ENTITY x "boom">]><form id="a01-000u" writer-id="000"/>', "not usable XML"),
    ('<form id="a01-999" writer-id="000"><handwritten-part/></form>', "does not match the file name"),
    ('<form id="a01-000u"><handwritten-part/></form>', "'writer-id'"),
    ('<form id="a01-000u" writer-id="000"><handwritten-part><line id="a01-000u-00" text="x" '
     'segmentation="bad"/></handwritten-part></form>', "segmentation must be ok/err"),
    ('<form id="a01-000u" writer-id="000"><handwritten-part><line id="b01-000-00" text="x" '
     'segmentation="ok"/></handwritten-part></form>', "does not extend"),
    ('<form id="a01-000u" writer-id="000"><handwritten-part><line id="a01-000u-00" text="x" '
     'segmentation="ok"><word id="a01-000u-00-00" text="x"><cmp x="1" y="a" width="1" height="1"/>'
     '</word></line></handwritten-part></form>', "is not an integer"),
    ("<form", "not usable XML"),
])
def test_xml_errors_name_file(tmp_path, text, message):
    path = _write(tmp_path, "a01-000u.xml", text)
    with pytest.raises(CorpusError, match=message) as info:
        parse_form_xml(path)
    assert str(path) in str(info.value)


def test_writer_conflict_between_forms_txt_and_xml(tmp_path):
    root = write_iam_tree(tmp_path / "IAM")
    forms = root.root / "ascii" / "forms.txt"
    forms.write_text(forms.read_text().replace("a01-003 000", "a01-003 099"))
    with pytest.raises(CorpusError, match=r"form a01-003 has writer '099' but .*a01-003\.xml says"):
        read_iam(root.root)


# ---- 4. paths ----


def test_image_paths():
    assert image_path("IAM", "a01-000u-00-00", "words") == Path("IAM/words/a01/a01-000u/a01-000u-00-00.png")
    assert image_path("IAM", "a01-000u-00", "lines") == Path("IAM/lines/a01/a01-000u/a01-000u-00.png")
    assert image_path("IAM", "a01-000u-s00-00", "sentences") == Path(
        "IAM/sentences/a01/a01-000u/a01-000u-s00-00.png")
    assert (form_of("a01-000u-00-00"), line_of("a01-000u-00-00")) == ("a01-000u", "a01-000u-00")
    with pytest.raises(ValueError, match="level"):
        image_path("IAM", "a01-000u-00", "forms")


# ---- 5. filters ----


def test_filters(iam, caplog):
    corpus = read_iam(iam.root)
    with caplog.at_level(logging.WARNING, logger="data.datasets.iam"):
        samples = select_samples(corpus, "words")
    kept = {s.id: s for s in samples}
    assert not any(line_of(i) == ERR_LINE for i in kept)  # words of the err line are dropped
    assert kept["a01-000u-00-02"].text == "to"  # an er word is kept
    assert kept["a01-000u-00-03"].text == "#"
    for word_id in (*ZERO_BYTE, *MISSING):
        assert word_id not in kept
        assert any(word_id in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    writers = {s.writer for s in samples}
    assert writers == {"000", "001", "002", "003"}  # 004 (8 words) and 005 (31 after the 0-byte) dropped
    counts = {w: sum(s.writer == w for s in samples) for w in writers}
    assert counts == {"000": 48, "001": 38, "002": 40, "003": 40}
    assert all(s.image == image_path(iam.root, s.id, "words") for s in samples)
    assert [s.id for s in samples] == [i for i in corpus.words if i in kept]  # file order


def test_err_line_from_either_source(tmp_path):
    root = write_iam_tree(tmp_path / "IAM").root
    (root / "ascii" / "lines.txt").unlink()  # only the XML flags the err line now
    assert ERR_LINE in read_iam(root).err_lines
    without_xml = read_iam(root, read_xml=False)  # forms.txt gives the writers; no lines.txt, no XML
    assert without_xml.err_lines == frozenset()


def test_min_words_zero_keeps_small_writers(iam):
    writers = {s.writer for s in select_samples(read_iam(iam.root), "words", min_words=0)}
    assert writers == {"000", "001", "002", "003", "004", "005"}


def test_line_level_keeps_err_lines(iam):
    samples = select_samples(read_iam(iam.root), "lines")
    by_id = {s.id: s for s in samples}
    assert ERR_LINE in by_id  # err describes the word segmentation, not the line image
    assert by_id["a01-000u-00"].text == "A MOVE to # \" & 's M Ps"
    assert "004" not in {s.writer for s in samples}


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CorpusError, match=r"neither words\.txt nor lines\.txt"):
        read_iam(tmp_path)
    root = write_iam_tree(tmp_path / "IAM").root
    (root / "ascii" / "forms.txt").unlink()
    with pytest.raises(CorpusError, match="no writer ids"):
        read_iam(root, read_xml=False)


# ---- 6. split lists ----


def test_aachen_splits_assign_whole_forms(iam):
    corpus = read_iam(iam.root)
    splits = read_splits(corpus, iam.split_files, "forms")
    assert splits.writers == {"train": {"000", "001"}, "val": {"002", "005"}, "test": {"003", "004"}}
    for _name, forms in splits.ids.items():
        samples = select_samples(corpus, "words", units=forms)
        expected = {i for i in select_samples(corpus, "words") if i.form in forms}
        assert set(samples) == expected
        assert {s.form for s in samples} <= forms
    test_writers = {s.writer for s in select_samples(corpus, "words", units=splits.ids["test"])}
    assert test_writers == {"003"}  # 004 is under 32 words in its split


def test_line_id_list_where_form_ids_expected(iam):
    corpus = read_iam(iam.root)
    with pytest.raises(CorpusError, match=r"trainset\.txt:1: 'a01-000u-00' is a line id.*form ids"):
        read_split_list(iam.line_list, corpus, "forms")
    files = {**iam.split_files, "train": iam.line_list}
    with pytest.raises(CorpusError, match="is a line id"):
        IAMDataset(corpus, split="train", split_files=files)


def test_line_id_list_read_as_lines(iam):
    corpus = read_iam(iam.root)
    lines = read_split_list(iam.line_list, corpus, "lines")
    samples = select_samples(corpus, "words", units=lines)
    assert {s.writer for s in samples} == {"000", "001"}
    with pytest.raises(CorpusError, match=r"train\.uttlist:1: 'a01-000u' is a form id"):
        read_split_list(iam.split_files["train"], corpus, "lines")


def test_split_writers_must_be_disjoint(iam, tmp_path):
    corpus = read_iam(iam.root)
    val = _write(tmp_path, "val.uttlist", "b01-000\na01-003\n")  # a01-003 is writer 000's, like train's
    files = {"train": iam.split_files["train"], "val": val}
    with pytest.raises(CorpusError, match="both list a01-003"):
        read_splits(corpus, files)
    train = _write(tmp_path, "train.uttlist", "a01-000u\n")
    with pytest.raises(CorpusError, match=r"share writer '000'.*writer-disjoint"):
        read_splits(corpus, {"train": train, "val": val})


@pytest.mark.parametrize(("text", "message"), [
    ("z99-000\n", r"x\.uttlist:1: form z99-000 is not in the corpus"),
    ("a01-000u\n\na01-000u\n", r"x\.uttlist:3: a01-000u already listed on line 1"),
    ("a01-000u extra\n", r"x\.uttlist:1: expected one id per line"),
    ("a01-000u-00-00\n", r"x\.uttlist:1: 'a01-000u-00-00' is not a form id"),
    ("\n", r"x\.uttlist: empty split list"),
])
def test_split_list_errors(iam, tmp_path, text, message):
    with pytest.raises(CorpusError, match=message):
        read_split_list(_write(tmp_path, "x.uttlist", text), read_iam(iam.root), "forms")


# ---- the Dataset ----


def test_dataset_items(iam):
    corpus = read_iam(iam.root)
    train = IAMDataset(corpus, split="train", split_files=iam.split_files)
    val = IAMDataset(corpus, split="val", split_files=iam.split_files)
    assert set(train.writers) == {"000", "001"}
    assert set(val.writers) == {"002"}  # 005 fell under 32 words
    assert not set(train.writers) & set(val.writers)
    image, text, writer = train[0]
    assert train.ids[0] == "a01-000u-00-00"
    assert (text, writer) == ("A", "000")
    assert image.dtype == torch.uint8
    assert image.shape == (12, 9)
    assert image[0, 0] == 250
    assert image[5, 4] == 30


def test_dataset_lines_from_path(iam):
    lines = IAMDataset(iam.root, level="lines")
    image, text, writer = lines[lines.ids.index("a01-000u-00")]
    assert image.shape == (12, 60)
    assert writer == "000"
    assert text == "A MOVE to # \" & 's M Ps"


def test_dataset_split_errors(iam):
    with pytest.raises(CorpusError, match="split 'dev' has no list file"):
        IAMDataset(iam.root, split="dev", split_files=iam.split_files)
    with pytest.raises(CorpusError, match="no words left"):
        IAMDataset(iam.root, min_words=10_000)
