"""CROHME InkML reading and rasterisation (interfaces.md: InkML files are accepted and rasterised)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data.datasets.inkml import InkMLDataset, InkMLError, find_inkml, rasterize_traces, read_inkml
from data.vocab import crohme_vocab

# "x^2" as CROHME writes it: an x of two crossing strokes, a 2 of one stroke up and to the right,
# screen coordinates (y down), three channels (X Y T) as in CROHME 2019 files.
INKML = """<?xml version="1.0" encoding="UTF-8"?>
<ink xmlns="http://www.w3.org/2003/InkML">
  <traceFormat><channel name="X" type="decimal"/><channel name="Y" type="decimal"/>
    <channel name="T" type="integer"/></traceFormat>
  <annotation type="truth">$x^2$</annotation>
  <annotation type="writer">w1</annotation>
  <trace id="0">10 20 0, 20 30 1, 30 40 2</trace>
  <trace id="1">10 40 3, 30 20 4</trace>
  <trace id="2">
    40 0 5, 48 0 6,
    48 5 7, 40 10 8, 48 10 9
  </trace>
  <traceGroup xml:id="10">
    <annotation type="truth">Segmentation</annotation>
    <traceGroup xml:id="11">
      <annotation type="truth">x</annotation>
      <traceView traceDataRef="0"/>
      <traceView traceDataRef="1"/>
      <annotationXML href="x_1"/>
    </traceGroup>
    <traceGroup xml:id="12">
      <annotation type="truth">2</annotation>
      <traceView traceDataRef="2"/>
    </traceGroup>
  </traceGroup>
</ink>
"""


def test_reads_traces_groups_and_truth(tmp_path):
    path = tmp_path / "UN19_1041_em_595.inkml"
    path.write_text(INKML, encoding="utf-8")
    ink = read_inkml(path)
    assert ink.name == "UN19_1041_em_595"
    assert ink.latex == "x^2"
    assert list(ink.traces) == ["0", "1", "2"]
    assert ink.traces["2"].shape == (5, 2)
    np.testing.assert_array_equal(ink.traces["1"], [[10, 40], [30, 20]])
    assert [(g.label, g.trace_ids) for g in ink.groups] == [("x", ("0", "1")), ("2", ("2",))]
    assert read_inkml(INKML.encode(), name="mem").name == "mem"


def _ink_at(image: np.ndarray, x: float, y: float) -> bool:
    """Any stroke pixel within one pixel of (x, y)."""
    col, row = round(x), round(y)
    return bool((image[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2] == 255).any())


def test_rasterises_ink_where_the_strokes_are():
    ink = read_inkml(INKML.encode())
    image = np.asarray(rasterize_traces(ink.traces.values(), height=64, stroke_width=3, margin=4))
    # ink spans x 10..48, y 0..40: scale = (64 - 2 * 5.5) / 40, strokes start 5.5 px from the edges
    scale, pad = (64 - 11) / 40, 5.5
    assert image.shape == (64, math.ceil(38 * scale + 11))
    assert set(np.unique(image)) == {0, 255}

    def at(x, y):  # pixel centres sit at integer coordinates
        return _ink_at(image, (x - 10) * scale + pad - 0.5, y * scale + pad - 0.5)

    assert all(at(x, y) for x, y in [(20, 30), (15, 25), (25, 25), (12, 38)])  # centre and arms of the x
    assert all(at(x, y) for x, y in [(44, 0), (48, 3), (44, 10)])  # the 2
    assert not any(at(x, y) for x, y in [(20, 21), (12, 30), (40, 30), (35, 5)])  # empty spots
    rows, cols = np.nonzero(image)
    margins = [rows.min(), 63 - rows.max(), cols.min(), image.shape[1] - 1 - cols.max()]
    assert all(3 <= m <= 5 for m in margins), margins  # 4 px of background all round (+-1: rounding)


def test_stroke_width_and_degenerate_ink():
    line = [np.array([[0.0, 5.0], [100.0, 5.0]])]  # a minus sign: no height at all
    thin = np.asarray(rasterize_traces(line, height=32, stroke_width=1, max_width=200))
    thick = np.asarray(rasterize_traces(line, height=32, stroke_width=5, max_width=200))
    assert thin.shape == (32, 200)
    assert thick.shape == (32, 200)
    assert (thin == 255).sum() < (thick == 255).sum()
    assert (thick[16] == 255).any()  # centred vertically
    dot = np.asarray(rasterize_traces([np.array([[3.0, 4.0]])], height=16))
    assert (dot == 255).any()
    with pytest.raises(ValueError, match="no points"):
        rasterize_traces([np.zeros((0, 2))])


def test_dataset_normalises_the_truth_and_returns_ids(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.inkml").write_text(INKML, encoding="utf-8")
    (tmp_path / "two.inkml").write_text(INKML.replace("$x^2$", "$\\frac{x}{2}$"), encoding="utf-8")
    assert [p.name for p in find_inkml(tmp_path)] == ["one.inkml", "two.inkml"]
    dataset = InkMLDataset(tmp_path, height=64)
    image, ids, name = dataset[0]
    assert name == "one"
    assert crohme_vocab().decode(ids) == ["x", "^", "{", "2", "}"]
    assert image.shape[:2] == (1, 64)
    assert float(image.max()) == 1.0
    assert float(image[0, 0, 0]) == 0.0
    assert crohme_vocab().decode(dataset[1][1]) == ["\\frac", "{", "x", "}", "{", "2", "}"]


@pytest.mark.parametrize(("text", "message"), [
    (INKML.replace("</ink>", ""), "not well-formed InkML"),
    ("<svg><trace>1 2</trace></svg>", "root element is <svg>, not <ink>"),
    (INKML.replace('traceDataRef="2"', 'traceDataRef="7"'),
     r"traceGroup '12' refers to unknown traces \['7'\]"),
    (INKML.replace("30 20 4", "30 oops 4"), r"trace '1', point 1: cannot read '30 oops 4'"),
    (INKML.replace("10 40 3", "10"), r"trace '1', point 0: .*fewer than 2 coordinates"),
    (INKML.replace('<trace id="1">', '<trace id="0">'), "duplicate trace id '0'"),
    ('<ink xmlns="http://www.w3.org/2003/InkML"><trace id="0"> </trace></ink>', "no trace with points"),
    ('<?xml version="1.0"?><!DOCTYPE ink [<!ENTITY a "aaaa">]><ink><trace>&a;</trace></ink>',
     "EntitiesForbidden"),
])
def test_malformed_inkml_names_the_file(tmp_path, text, message):
    path = tmp_path / "broken.inkml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InkMLError, match=message) as caught:
        read_inkml(path)
    assert str(caught.value).startswith(str(path))


def test_dataset_errors_name_the_file(tmp_path):
    path = tmp_path / "nolabel.inkml"
    path.write_text(INKML.replace('<annotation type="truth">$x^2$</annotation>', ""), encoding="utf-8")
    with pytest.raises(InkMLError, match=r"nolabel\.inkml: no <annotation type=\"truth\">"):
        InkMLDataset([path])
    path.write_text(INKML.replace("$x^2$", "$\\hat{x}$"), encoding="utf-8")
    with pytest.raises(InkMLError, match=r"nolabel\.inkml: .*tokens not in the vocabulary: \\hat"):
        InkMLDataset([path])
    with pytest.raises(InkMLError, match=r"no \.inkml files"):
        find_inkml(tmp_path / "empty")
    with pytest.raises(InkMLError, match="cannot read"):
        read_inkml(tmp_path / "missing.inkml")
