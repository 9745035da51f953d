"""Training augmentation of handwriting images, on 8-bit grey pixels (writer-htr.md §15).

Two recipes, both albumentations 2.0.8 pipelines (pinned: the last MIT release, platform.md §11):

* ``"thesis"`` (§15.1, the FPHTR/SAR base training): ``RandomScale(±10 %)``, ``SafeRotate(±10°)``,
  ``RandomBrightnessContrast(0.2, 0.2)``, ``GaussNoise``, each with p = 0.5.
* ``"full"`` (the default): the thesis recipe plus what Schomaker (§15.3) and Retsinas et al. (§15.2) add
  for realistic handwriting variation: random **slant** (``Affine`` shear, x ±30°, y ±5°), an elastic
  "rubber-sheet" warp (``OneOf[GridDistortion(±0.1), ElasticTransform(alpha 60, sigma 20)]``), **ink
  thickness** (``OneOf[erosion, dilation]``, kernel 2–3 px) and ``RandomGamma(80–120)``, each with
  p = 0.5.

Conventions that differ from the references, deliberately:

* Every geometric transform fills uncovered pixels with the image's own **paper** grey (the median of
  the light Otsu class), not with 0: the thesis's ``SafeRotate(border 0)`` paints black wedges, which
  is ink, not paper (the same pitfall as §16.2's padding).
* The slant uses ``fit_output=True``, so a sheared word is never cut off at the image border (Retsinas
  et al. crop to a fixed canvas instead). ``RandomScale`` and the shear change the image size; every
  other transform keeps it.
* Randomness comes only from the ``seed`` of each call (usually ``(seed, epoch, index)``): every
  transform gets its own stream spawned from it, so a sample's augmentation is reproducible in any
  DataLoader worker or DDP rank, and independent transforms do not draw identical numbers.

The images are augmented before the model's ×0.5 scaling (``data.handwriting.normalize_image``), so
kernel sizes and distortions are in scan pixels (IAM: 300 dpi).

albumentations queries PyPI for updates at import unless ``NO_ALBUMENTATIONS_UPDATE`` is set: it is set
here before the import (the project runs offline).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .images import otsu_threshold

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # after the environment variable above
import cv2  # albumentations brings opencv-python-headless

__all__ = ["RECIPES", "HandwritingAugment", "paper_level"]

Recipe = Literal["thesis", "full"]
RECIPES: tuple[str, ...] = ("thesis", "full")
# px; smaller images (a lone dot, a comma) are returned as they are: geometry on them is noise, and
# GridDistortion divides each side into 5 cells, so a side must stay >= 5 px after RandomScale's 0.9
# (albumentations 2.0.8 divides by zero below that)
_MIN_SIDE = 8


def paper_level(pixels: np.ndarray) -> int:
    """The grey of the paper: the median of the lighter Otsu class (dark ink on light paper).

    Args:
        pixels: `(H, W)` uint8.

    Returns:
        A grey level in [0, 255]; the image's maximum when it has a single level.
    """
    threshold = otsu_threshold(pixels)
    light = pixels[pixels > threshold]
    return int(np.median(light)) if light.size else int(pixels.max())


def _thesis_geometry() -> list[A.BasicTransform]:
    return [A.RandomScale(scale_limit=0.1, p=0.5),
            A.SafeRotate(limit=10, border_mode=cv2.BORDER_CONSTANT, fill=255, p=0.5)]


def _thesis_photometry() -> list[A.BasicTransform]:
    # GaussNoise: std as a fraction of 255; 0.01–0.03 is about the 1.x default var_limit (10, 50)
    return [A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.GaussNoise(std_range=(0.01, 0.03), p=0.5)]


def _extra_geometry() -> list[A.BasicTransform]:
    border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 255}
    return [
        A.Affine(shear={"x": (-30, 30), "y": (-5, 5)}, fit_output=True, **border, p=0.5),  # slant
        A.OneOf([A.GridDistortion(distort_limit=0.1, **border),
                 A.ElasticTransform(alpha=60, sigma=20, **border)], p=0.5),
        A.OneOf([A.Morphological(scale=(2, 3), operation="erosion"),  # thicker dark ink
                 A.Morphological(scale=(2, 3), operation="dilation")], p=0.5),  # thinner ink
    ]


def _build(recipe: Recipe) -> A.Compose:
    if recipe == "thesis":
        transforms = _thesis_geometry() + _thesis_photometry()
    elif recipe == "full":
        transforms = (_thesis_geometry() + _extra_geometry() + _thesis_photometry()
                      + [A.RandomGamma(gamma_limit=(80, 120), p=0.5)])
    else:
        raise ValueError(f"augmentation recipe must be one of {RECIPES}, got {recipe!r}")
    return A.Compose(transforms)


def _leaves(transform: A.BasicTransform | A.BaseCompose) -> list:
    children = getattr(transform, "transforms", None)
    return [transform] if children is None else [x for c in children for x in _leaves(c)]


def _seed_tree(transform: A.BasicTransform | A.BaseCompose, seq: np.random.SeedSequence) -> None:
    """Give ``transform`` and each of its children a stream of its own, spawned from ``seq``
    (``Compose.set_random_seed`` would hand every child the same seed, so that their draws coincide)."""
    transform.set_random_seed(int(seq.generate_state(1)[0]))
    children = getattr(transform, "transforms", None)
    if children:
        for child, sub in zip(children, seq.spawn(len(children)), strict=True):
            _seed_tree(child, sub)


class HandwritingAugment:
    """Seeded augmentation of grey handwriting images (module docstring).

    Args:
        recipe: ``"thesis"`` or ``"full"``.

    Examples:
        >>> augment = HandwritingAugment("full")
        >>> out = augment(pixels, seed=(0, epoch, index))  # (H', W') uint8, same every time
    """

    def __init__(self, recipe: Recipe = "full") -> None:
        self.recipe = recipe
        self.pipeline = _build(recipe)
        self._filled = [t for t in _leaves(self.pipeline) if hasattr(t, "fill")]

    def __repr__(self) -> str:
        return f"HandwritingAugment({self.recipe!r})"

    def __call__(self, pixels: np.ndarray, seed: int | Sequence[int]) -> np.ndarray:
        """Augment one image.

        Args:
            pixels: `(H, W)` uint8 grey, dark ink on light paper.
            seed: an int or a sequence of ints (e.g. ``(seed, epoch, index)``); equal seeds give equal
                outputs.

        Returns:
            `(H', W')` uint8; the size changes only through the scale and slant transforms.
        """
        pixels = np.ascontiguousarray(pixels)
        if pixels.ndim != 2 or pixels.dtype != np.uint8:
            raise ValueError(f"expected (H, W) uint8 pixels, got {pixels.shape} {pixels.dtype}")
        if min(pixels.shape) < _MIN_SIDE:
            return pixels.copy()
        paper = paper_level(pixels)
        for transform in self._filled:  # set per image: the border must look like this page's paper
            transform.fill = paper
        _seed_tree(self.pipeline, np.random.SeedSequence(seed))
        out = self.pipeline(image=pixels)["image"]
        if out.ndim == 3:  # cv2 may hand a single channel back as (H, W, 1)
            out = out[..., 0]
        return np.ascontiguousarray(out, dtype=np.uint8)
