"""Image loading, polarity, the size limits and user-image preprocessing (posformer.md §2.4; §13 R4, R6)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from data.images import (
    ImageError,
    PreprocessConfig,
    detect_polarity,
    image_to_tensor,
    load_image,
    otsu_threshold,
    preprocess_image,
    scale_to_limit_range,
    to_white_on_black,
)


def _formula(height=300, width=400, box=(100, 80, 150, 100), value=255, seed=0):
    """White strokes on black: the outline of a ``box`` (top, left, height, width) and a diagonal."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    top, left, box_height, box_width = box
    pixels[top:top + 4, left:left + box_width] = value
    pixels[top + box_height - 4:top + box_height, left:left + box_width] = value
    pixels[top:top + box_height, left:left + 4] = value
    pixels[top:top + box_height, left + box_width - 4:left + box_width] = value
    for k in range(min(box_height, box_width)):
        pixels[top + k, left + k] = value
    return pixels


def _png(pixels, **save_args):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **save_args)
    return buffer.getvalue()


def _stroke_box(tensor):
    rows, cols = np.nonzero(tensor[0].numpy() > 0.5)
    return rows.min(), rows.max(), cols.min(), cols.max()


def test_polarity_detection_and_inversion():
    dark = _formula()
    assert detect_polarity(dark) == "white_on_black"
    assert detect_polarity(255 - dark) == "black_on_white"
    assert detect_polarity(np.full((8, 8), 250, np.uint8)) == "black_on_white"  # blank paper
    paper = Image.fromarray(255 - dark)
    assert np.array_equal(np.asarray(to_white_on_black(paper)), dark)
    assert np.array_equal(np.asarray(to_white_on_black(Image.fromarray(dark))), dark)
    assert np.array_equal(np.asarray(to_white_on_black(paper, "white_on_black")), 255 - dark)  # forced
    assert 0 < otsu_threshold(np.array([10, 10, 200, 200], np.uint8)) < 200


def test_preprocess_inverts_paper_and_crops_to_the_strokes():
    on_paper = preprocess_image(_png(255 - _formula()))  # black on white, like a scan
    dark_mode = preprocess_image(_png(_formula()))  # white on black, like a dark-mode screenshot
    assert torch.equal(on_paper, dark_mode)
    assert on_paper.shape == (1, 150 + 4, 100 + 4)  # the 150 x 100 (H x W) strokes plus a 2 px margin
    assert on_paper.dtype == torch.float32
    assert _stroke_box(on_paper) == (2, 151, 2, 101)
    assert float(on_paper[0, 0, 0]) == 0.0  # background black
    assert float(on_paper.max()) == 1.0  # strokes white


def test_preprocess_keeps_the_aspect_ratio_within_the_limits():
    big = _formula(height=900, width=2600, box=(50, 100, 500, 2400))  # a large photo: scaled down
    tensor = preprocess_image(_png(255 - big))
    _, height, width = tensor.shape
    assert width == 1024  # the width limit binds: 2400 px of strokes -> 1020, plus the margins
    assert (height - 4) / (width - 4) == pytest.approx(500 / 2400, rel=0.01)
    small = preprocess_image(_png(_formula(height=40, width=60, box=(10, 10, 8, 20))))  # enlarged
    assert small.shape == (1, 12 + 4, 30 + 4)  # 8 x 20 strokes -> h = 16 - 2 * margin
    line = preprocess_image(_png(_formula(height=50, width=1500, box=(20, 10, 6, 1400))))
    assert line.shape[1:] == (16, 1024)  # too thin for the ratio limits: padded, not distorted


def test_preprocess_follows_exif_orientation_and_transparency():
    pixels = 255 - _formula(box=(100, 80, 150, 60))  # a tall box: 150 high, 60 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated = preprocess_image(_png(pixels, exif=exif.tobytes()))
    assert rotated.shape == (1, 60 + 4, 150 + 4)
    rgba = np.zeros((300, 400, 4), np.uint8)  # black strokes on a transparent canvas (a sketch pad)
    rgba[..., 3] = _formula()
    assert torch.equal(preprocess_image(Image.fromarray(rgba, "RGBA")), preprocess_image(_png(_formula())))


def test_preprocess_accepts_arrays_and_tensors():
    pixels = 255 - _formula()
    reference = preprocess_image(pixels)
    assert torch.equal(preprocess_image(torch.from_numpy(pixels).float() / 255), reference)
    rgb = np.repeat(pixels[..., None], 3, axis=2)
    assert torch.equal(preprocess_image(rgb), reference)
    assert torch.equal(preprocess_image(torch.from_numpy(rgb).permute(2, 0, 1)), reference)  # (C, H, W)


@pytest.mark.parametrize("pixels", [
    np.full((120, 200), 255, np.uint8),
    np.full((120, 200), 0, np.uint8),
    np.random.default_rng(0).integers(235, 245, size=(120, 200)).astype(np.uint8),  # paper texture only
])
def test_blank_images_are_rejected(pixels, tmp_path):
    path = tmp_path / "blank.png"
    Image.fromarray(pixels).save(path)
    with pytest.raises(ValueError, match=r"blank\.png: blank image"):
        preprocess_image(path)


def test_unreadable_and_oversized_inputs_name_the_file(tmp_path):
    with pytest.raises(ImageError, match=r"missing\.png: no such file"):
        load_image(tmp_path / "missing.png")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageError, match=r"junk\.jpg: not a readable image"):
        preprocess_image(junk)
    big = tmp_path / "big.png"
    Image.fromarray(_formula()).save(big)
    with pytest.raises(ImageError, match=r"big\.png: 400x300 px is more than the 10,000 px limit"):
        preprocess_image(big, PreprocessConfig(max_pixels=10_000))
    with pytest.raises(ImageError, match="expected"):
        load_image(np.zeros((2, 3, 5, 7)))


@pytest.mark.parametrize(("size", "expected"), [
    ((100, 50), (100, 50)),  # (H, W) in range: untouched
    ((512, 100), (256, 50)),  # too tall: shrunk
    ((300, 3000), (102, 1024)),  # too wide: shrunk to the width limit
    ((8, 100), (16, 200)),  # too short: enlarged
    ((64, 4), (256, 16)),  # too narrow: enlarged
])
def test_scale_to_limit_range(size, expected):
    height, width = size
    image = scale_to_limit_range(Image.new("L", (width, height)))
    assert (image.height, image.width) == expected
    assert 16 <= image.height <= 256
    assert 16 <= image.width <= 1024


@pytest.mark.parametrize("size", [(1000, 10), (10, 2000)])
def test_scale_to_limit_range_rejects_impossible_aspect_ratios(size):
    height, width = size  # H/W = 100 > 16, or 0.005 < 1/64
    with pytest.raises(ImageError, match="aspect ratio"):
        scale_to_limit_range(Image.new("L", (width, height)))


def test_image_to_tensor_is_to_tensor():
    pixels = np.array([[0, 128, 255]], np.uint8)
    tensor = image_to_tensor(Image.fromarray(pixels))
    assert tensor.shape == (1, 1, 3)
    assert torch.allclose(tensor, torch.tensor([[[0.0, 128 / 255, 1.0]]]))
