"""Reading text lines with a word model (issue #5): word gaps found in deslanted ink
(``data.segment``), each word read by the recognizer, the words joined (``recognize(lines=True)``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from data import segment
from data.segment import split_words, word_gap
from recognizers import InputError
from recognizers.handwriting.recognizer import HandwritingImage, HandwritingRecognizer
from tests.handwriting_fixtures import line_pixels, tiny_model, tiny_vocab

XH = 30  # x-height of the drawn lines, px


def _slanted_line(words: list[int], *, slant: float, letter_gap: float, word_gap_: float) -> np.ndarray:
    """Words of ``n`` strokes each: slanted bars two x-heights tall (ascender-like), dark on light."""
    height, stroke = 3 * XH, 5
    width = 40 + int(sum(n * (stroke + letter_gap * XH) + word_gap_ * XH for n in words) + slant * 2 * XH)
    image = Image.new("L", (width, height), 235)
    draw = ImageDraw.Draw(image)
    base, x = 2.5 * XH, 20.0
    for n in words:
        for _ in range(n):
            top = base - 2 * XH
            draw.polygon([(x, base), (x + stroke, base), (x + stroke + slant * 2 * XH, top),
                          (x + slant * 2 * XH, top)], fill=25)
            x += stroke + letter_gap * XH
        x += word_gap_ * XH - letter_gap * XH
    return np.asarray(image, dtype=np.uint8)


def test_word_gaps_are_found_in_slanted_writing(monkeypatch):
    line = _slanted_line([3, 5, 2], slant=0.6, letter_gap=0.25, word_gap_=1.0)
    words = split_words(line)
    assert len(words) == 3
    widths = [w.shape[1] for w in words]
    assert widths[1] > widths[0] > widths[2]  # 5, 3 and 2 strokes, left to right
    assert all(w.dtype == np.uint8 and w.min() < 100 < w.max() for w in words)
    # upright, the ascenders lean over every gap: the deslant is what finds them
    monkeypatch.setattr(segment, "_SHEARS", np.array([0.0]))
    assert len(split_words(line)) == 1


def test_letter_gaps_do_not_split_a_word_and_blank_lines_pass_through():
    word = _slanted_line([6], slant=0.0, letter_gap=0.3, word_gap_=1.0)
    assert len(split_words(word)) == 1
    blank = np.full((40, 200), 230, dtype=np.uint8)
    (out,) = split_words(blank)
    assert out is blank or np.array_equal(out, blank)


def test_a_full_stop_after_a_word_is_a_word_of_its_own():
    line = _slanted_line([4, 3], slant=0.3, letter_gap=0.25, word_gap_=1.2)
    image = Image.fromarray(line)
    # a dot on the baseline a letter gap after the last bar (at 20 + 7 bars of 5 + 7.5 px, a word gap
    # of 1.2 x-heights in between)
    x = 20 + 7 * (5 + 0.25 * XH) + (1.2 - 0.25) * XH
    ImageDraw.Draw(image).rectangle((x, 2.5 * XH - 6, x + 5, 2.5 * XH), fill=25)
    dotted = np.asarray(image)
    words = split_words(dotted)
    assert len(words) == 3
    assert max(words[2].shape) <= 8
    assert len(split_words(dotted, marks=False)) == 2
    assert len(split_words(line)) == 2  # no mark, nothing extra


def test_the_word_gap_is_where_the_gaps_split_into_two_groups():
    assert word_gap(np.array([1.1, 0.9, 0.8, 0.3, 0.25, 0.2, 0.0])) == pytest.approx(0.8)
    assert word_gap(np.array([0.62, 0.58, 0.55, 0.5])) == segment.WORD_GAP  # one group: the fixed gap
    assert word_gap(np.array([2.5, 1.9, 0.1])) <= 1.9  # gaps wider than MAX_GAP are always word gaps
    assert word_gap(np.array([2.5, 1.9, 0.1]), fallback=3.0) == segment.MAX_GAP
    assert word_gap(np.array([], dtype=float)) == segment.WORD_GAP


def test_a_neighbours_ink_is_painted_out_along_the_slant():
    line = _slanted_line([2, 2], slant=0.6, letter_gap=0.25, word_gap_=1.0)
    first, second = split_words(line)
    # each crop holds only its own two strokes: two dark runs along its middle row, no more
    for crop in (first, second):
        row = crop[crop.shape[0] // 2] < 100
        assert np.count_nonzero(np.diff(row.astype(np.int8)) == 1) + int(row[0]) == 2


@pytest.fixture(scope="module")
def recognizer():
    return HandwritingRecognizer(tiny_model(max_seq_len=10), tiny_vocab())


def test_a_line_reads_as_its_wordsline_pixels(recognizer, single_thread):
    line = line_pixels("the", "fox", "over")
    words = split_words(line)
    assert len(words) == 3
    each = [r.text for r in recognizer.recognize(words)]
    (result,) = recognizer.recognize([line], lines=True)
    assert result.text == " ".join(t for t in each if t)
    assert result.nbest == ((result.text, result.score),)
    grey = HandwritingImage(recognizer.load_input(line).pixels, line)
    both = recognizer.recognize([grey, line], lines=True)  # batched with each other's words
    assert [r.text for r in both] == [result.text] * 2
    assert [r.score for r in both] == pytest.approx([result.score] * 2, abs=1e-4)


def test_bad_lines_name_the_input(recognizer, tmp_path):
    blank = tmp_path / "blank-line.png"
    Image.new("L", (300, 40), 240).save(blank)
    for path in (blank, tmp_path / "missing-line.png"):
        with pytest.raises(InputError, match=path.name):
            recognizer.recognize([path], lines=True)
    with pytest.raises(InputError, match="grey"):
        recognizer.recognize([HandwritingImage(recognizer.load_input(line_pixels("the")).pixels)], lines=True)


# ----- command line ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(recognizer, tmp_path_factory):
    from recognizers.checkpoint import save_bundle

    folder = tmp_path_factory.mktemp("line-model")
    return save_bundle(folder / "handwriting.safetensors", recognizer.to_bundle())


def test_transcribe_lines_reads_word_by_word(recognizer, model_file, tmp_path, capsys, single_thread):
    import json

    from recognizers.cli import main

    line = tmp_path / "line.png"
    Image.fromarray(line_pixels("the", "fox", "over")).save(line)
    assert main(["transcribe", str(line), "--model", str(model_file), "--lines", "-q"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["text"] == recognizer.recognize([line], lines=True)[0].text
    assert record["error"] is None
    assert main(["transcribe", str(line), "--task", "math", "--lines", "-q"]) == 2
    assert "--lines is for handwriting" in capsys.readouterr().err


def test_evaluate_lines_splits_them_unless_asked_not_to(model_file, tiny_text_corpus, capsys, single_thread):
    import json

    from recognizers.cli import main

    args = ["evaluate", "--task", "text", "--data", str(tiny_text_corpus), "--level", "lines",
            "--model", str(model_file), "--limit", "3"]
    reports = []
    for extra in ([], ["--whole-lines"]):
        assert main([*args, *extra]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert [r["lines_read"] for r in reports] == ["word by word", "whole"]
    assert all(r["n"] == 3 and r["level"] == "lines" for r in reports)
