"""CROHME-layout reading, filtering, area bucketing, scale augmentation, collate (posformer.md §13 R1-R5)."""

from __future__ import annotations

import itertools
import logging
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from data.datasets.crohme import (
    AreaBatchSampler,
    CorpusError,
    CrohmeDataset,
    MathSample,
    augmentation_scale,
    bucket_by_area,
    collate_math,
    filter_samples,
    scan_crohme,
)
from data.vocab import crohme_vocab

# name -> (file suffix, stored polarity, caption)
SAMPLES = {
    "18_em_0": (".bmp", "white_on_black", "x ^ { 2 }"),
    "18_em_1": (".png", "black_on_white", "\\frac { a } { b }"),
    "UN19_1041_em_595": (".bmp", "black_on_white", "\\sqrt { 2 } + 1"),
    "UN19_1041_em_596": (".png", "white_on_black", "\\sum \\limits _ { i } a _ { i }"),
}


def _drawing(seed: int, height: int = 40, width: int = 90) -> np.ndarray:
    """White strokes on black, about 10 % ink: a frame and a diagonal, shifted per sample."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[2:4, 2 + seed:width - 2] = 255
    pixels[height - 4:height - 2, 2:width - 2 - seed] = 255
    for k in range(min(height, width) - 4):
        pixels[2 + k, 10 + k + seed] = 255
    return pixels


def _write_tree(root, samples=SAMPLES, extra_lines=()):
    (root / "img").mkdir(parents=True)
    lines = []
    for k, (name, (suffix, polarity, caption)) in enumerate(samples.items()):
        pixels = _drawing(k)
        stored = pixels if polarity == "white_on_black" else 255 - pixels
        Image.fromarray(stored).save(root / "img" / f"{name}{suffix}")
        lines.append(f"{name}\t{caption}")
    (root / "caption.txt").write_text("\n".join([*lines, *extra_lines]) + "\n", encoding="utf-8")
    return root


def _zip_folder(folder, zip_path, prefix=""):
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return zip_path


def _check_dataset(dataset):
    vocab = crohme_vocab()
    assert [s.name for s in dataset.samples] == list(SAMPLES)
    for k, (name, (_, _, caption)) in enumerate(SAMPLES.items()):
        image, ids, got_name = dataset[k]
        assert got_name == name
        assert ids.dtype == torch.long
        assert ids.tolist() == vocab.encode(caption.split())
        assert image.shape == (1, 40, 90)
        assert image.dtype == torch.float32
        # both stored polarities come back white on black, pixel for pixel
        assert torch.equal(image[0], torch.from_numpy(_drawing(k) / 255.0).float())


def test_folder_of_bmp_and_png_both_polarities(tmp_path):
    root = _write_tree(tmp_path / "2014")
    _check_dataset(CrohmeDataset(root))
    _check_dataset(CrohmeDataset(tmp_path, split="2014"))  # a folder above the split
    samples = scan_crohme(root)
    assert (samples[0].width, samples[0].height, samples[0].tokens) == (90, 40, ("x", "^", "{", "2", "}"))
    assert samples[1].image.endswith("18_em_1.png")


def test_zip_read_in_place_with_split_selection(tmp_path):
    _write_tree(tmp_path / "tree" / "train")
    _write_tree(tmp_path / "tree" / "2014")
    archive = _zip_folder(tmp_path / "tree", tmp_path / "data.zip", prefix="data/")
    _check_dataset(CrohmeDataset(archive, split="2014"))
    assert len(scan_crohme(archive, split="data/train")) == 4
    with pytest.raises(CorpusError, match=r"data\.zip: caption\.txt in \['data/2014', 'data/train'\]; pass"):
        scan_crohme(archive)
    with pytest.raises(CorpusError, match="split '2019' matches 0"):
        scan_crohme(archive, split="2019")
    single = _zip_folder(tmp_path / "tree" / "2014", tmp_path / "single.zip")
    _check_dataset(CrohmeDataset(single))


def test_zip_errors_name_the_member_and_line(tmp_path):
    _write_tree(tmp_path / "t", extra_lines=["lonely_name"])
    archive = _zip_folder(tmp_path / "t", tmp_path / "bad.zip", prefix="data/2016/")
    with pytest.raises(CorpusError, match=r"bad\.zip:data/2016/caption\.txt:5: expected '<name> <tokens"):
        scan_crohme(archive)


@pytest.mark.parametrize(("extra", "message"), [
    ("lonely_name", r"caption\.txt:6: expected '<name> <tokens\.\.\.>', got 'lonely_name'"),
    ("no_image x + 1", r"caption\.txt:6: no image for 'no_image' \(tried img/no_image\.bmp"),
    ("18_em_0 x", r"caption\.txt:6: '18_em_0' already captioned on line 1"),
    ("18_em_9 \\hat { x } \\mathbb", r"caption\.txt:6: tokens not in the vocabulary: \\hat \\mathbb"),
    ("../etc x", r"caption\.txt:6: image name '\.\./etc' must be a plain file stem"),
])
def test_malformed_captions_name_file_and_line(tmp_path, extra, message):
    root = _write_tree(tmp_path, extra_lines=["", extra])  # blank lines are skipped but counted
    with pytest.raises(CorpusError, match=message) as caught:
        scan_crohme(root)
    assert str(root / "caption.txt") in str(caught.value)


def test_layout_errors(tmp_path):
    with pytest.raises(CorpusError, match="neither a folder nor a zip"):
        scan_crohme(tmp_path / "missing")
    root = _write_tree(tmp_path / "data" / "train")
    with pytest.raises(CorpusError, match=r"no caption\.txt .*splits here: \['train'\]"):
        scan_crohme(tmp_path / "data")
    (root / "img" / "18_em_1.png").write_bytes(b"not an image")
    with pytest.raises(CorpusError, match=r"18_em_1\.png: not a readable image"):
        scan_crohme(root)


def test_filtering_drops_long_captions_large_and_thin_images(caplog):
    def sample(name, tokens=1, width=100, height=100):
        return MathSample(name, ("1",) * tokens, f"img/{name}.bmp", width, height)

    samples = [sample("ok"), sample("long", tokens=201), sample("max_len", tokens=200),
               sample("big", width=1001, height=320), sample("max_area", width=1000, height=320),
               sample("thin", width=1000, height=10)]
    with caplog.at_level(logging.WARNING, logger="data.datasets.crohme"):
        kept = filter_samples(samples)
    assert [s.name for s in kept] == ["ok", "max_len", "max_area"]
    assert "dropped long: 201 tokens > 200" in caplog.text
    assert "dropped big: 1001x320 px > 320000 px" in caplog.text
    assert "dropped thin: aspect ratio" in caplog.text


def test_dataset_applies_the_filter_and_the_limit_range(tmp_path):
    root = _write_tree(tmp_path)
    assert [s.name for s in CrohmeDataset(root, max_tokens=6).samples] == ["18_em_0", "UN19_1041_em_595"]
    with pytest.raises(CorpusError, match="all 4 samples were filtered out"):
        CrohmeDataset(root, max_area=100)
    Image.fromarray(_drawing(0, height=10, width=300)).save(root / "img" / "18_em_0.bmp")
    image, _, _ = CrohmeDataset(root)[0]
    assert image.shape == (1, 16, 480)  # enlarged to h >= 16, aspect ratio kept


def test_bucketing_closes_at_batch_size_or_area_budget():
    assert bucket_by_area([100, 100, 100], batch_size=2) == [[0, 1], [2]]
    assert bucket_by_area([170_000, 1_000, 150_000], batch_size=8) == [[1, 2], [0]]
    assert bucket_by_area([400_000, 5], batch_size=8) == [[1], [0]]  # an oversized one alone


def test_bucketing_covers_every_item_once_within_budget():
    rng = np.random.default_rng(0)
    areas = rng.integers(500, 120_000, size=300).tolist()
    batches = bucket_by_area(areas, batch_size=8, max_area=320_000)
    assert sorted(i for batch in batches for i in batch) == list(range(300))
    for batch in batches:
        assert 1 <= len(batch) <= 8
        assert max(areas[i] for i in batch) * len(batch) <= 320_000
    for batch, following in itertools.pairwise(batches):  # greedy: closed only when needed
        assert len(batch) == 8 or (len(batch) + 1) * areas[following[0]] > 320_000


def test_batch_sampler_shuffles_batches_per_epoch_deterministically():
    areas = list(range(1_000, 161_000, 1_000))
    sampler = AreaBatchSampler(areas, batch_size=4, seed=7)
    first = list(sampler)
    assert list(AreaBatchSampler(areas, batch_size=4, seed=7)) == first
    assert sorted(map(sorted, first)) == sorted(map(sorted, bucket_by_area(areas, 4)))
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert len(sampler) == len(first)
    assert list(AreaBatchSampler(areas, batch_size=4, shuffle=False)) == bucket_by_area(areas, 4)


def test_scale_augmentation_is_deterministic_for_a_seed(tmp_path):
    scales = [augmentation_scale(3, epoch, index) for epoch in range(3) for index in range(20)]
    assert all(0.7 <= k <= 1.4 for k in scales)
    assert len(set(scales)) == 60
    assert augmentation_scale(3, 1, 5) == augmentation_scale(3, 1, 5) != augmentation_scale(4, 1, 5)
    root = _write_tree(tmp_path)
    one, two = CrohmeDataset(root, scale_aug=True, seed=3), CrohmeDataset(root, scale_aug=True, seed=3)
    shapes = []
    for epoch in range(3):
        one.set_epoch(epoch)
        two.set_epoch(epoch)
        for index in range(len(one)):
            image = one[index][0]
            assert torch.equal(image, two[index][0])
            shapes.append(tuple(image.shape))
            k = augmentation_scale(3, epoch, index)
            assert image.shape == (1, round(40 * k), round(90 * k))
    assert len(set(shapes)) > 3
    assert CrohmeDataset(root, scale_aug=False)[0][0].shape == (1, 40, 90)


def test_collate_pads_with_zeros_and_masks_exactly_the_padding():
    items = [(torch.rand(1, 20, 30) + 0.1, torch.tensor([3, 4]), "a"), (torch.rand(1, 25, 10) + 0.1,
                                                                        torch.tensor([5]), "b")]
    batch = collate_math(items)
    assert batch.images.shape == (2, 1, 25, 30)
    assert batch.mask.shape == (2, 25, 30)
    assert torch.equal(batch.mask, batch.images[:, 0] == 0)  # content is > 0, padding exactly 0
    assert torch.equal(batch.images[1, :, :25, :10], items[1][0])
    assert batch.names == ["a", "b"]
    assert [t.tolist() for t in batch.token_ids] == [[3, 4], [5]]
