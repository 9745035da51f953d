"""Images for the math recognizer: loading, polarity, the size limits of training, user-image cleanup.

The model's convention (posformer.md §2.1, §2.4) is a single-channel float tensor `(1, H, W)` in
[0, 1] (``ToTensor`` of an 8-bit ``L`` image, no mean/std normalisation) with **white strokes on a
black background**, and a size inside the range every split is resized into (``ScaleToLimitRange``):
H in [16, 256], W in [16, 1024], aspect ratio H/W in [16/1024, 256/16]. Training batches also keep
``max area in batch x batch size`` within 320,000 px (§2.4), so a single image is never larger than
that; 256 x 1024 = 262,144 already is.

Polarity is detected per image, never assumed: the Otsu threshold splits the pixels into two
classes and the larger class is the background (strokes cover a few percent of a formula image;
CoMER's ``UN19_1041_em_595.bmp`` has about 6.5 % bright pixels). An image whose strokes cover more
than half of it is therefore read with the wrong polarity; pass ``polarity`` explicitly for such data.

:func:`preprocess_image` turns user images (phone photos, scans, dark-mode screenshots) into that
tensor: EXIF rotation, grayscale (transparency composited onto the colour that contrasts with the
strokes), auto-invert, a contrast stretch that maps the paper to 0 and the median stroke to 1, a crop
to the strokes plus a small margin, and a resize into the limits above (pillow, platform.md §11).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "MAX_AREA",
    "MAX_HEIGHT",
    "MAX_INPUT_PIXELS",
    "MAX_WIDTH",
    "MIN_HEIGHT",
    "MIN_WIDTH",
    "ImageError",
    "ImageSource",
    "Polarity",
    "PreprocessConfig",
    "describe_source",
    "detect_polarity",
    "image_to_tensor",
    "load_image",
    "otsu_threshold",
    "preprocess_image",
    "resize_image",
    "scale_to_limit_range",
    "to_white_on_black",
]

MIN_HEIGHT, MAX_HEIGHT = 16, 256  # px: ScaleToLimitRange's height range (posformer.md §2.4)
MIN_WIDTH, MAX_WIDTH = 16, 1024  # px: its width range
MAX_AREA = 320_000  # px: area budget of a training batch (max area x count), hence of one image
MAX_INPUT_PIXELS = 64_000_000  # px: larger user inputs are refused before decoding (8000 x 8000)
MIN_CONTRAST = 32  # gray levels (of 255) between strokes and paper below which an image is blank

Polarity = Literal["auto", "white_on_black", "black_on_white"]
ImageSource = str | Path | bytes | Image.Image | np.ndarray | torch.Tensor


class ImageError(ValueError):
    """An input that cannot be used as a formula image; the message names the input and the problem."""


def describe_source(source: ImageSource) -> str:
    """How messages name an input: its path, else its kind and size."""
    if isinstance(source, str | Path):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<image {source.width}x{source.height} {source.mode}>"
    return f"<array of shape {tuple(source.shape)}>"


def _array_to_image(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C), the torch layout
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or array.size == 0:
        raise ImageError(f"{name}: expected (H, W), (H, W, 3|4) or (3|4, H, W) pixels")
    if array.dtype != np.uint8:
        values = np.nan_to_num(array.astype(np.float64))
        # floats are taken as [0, 1] (ToTensor's range), other integer types as [0, 255]
        scale = 255.0 if np.issubdtype(array.dtype, np.floating) and values.max() <= 1.0 else 1.0
        array = np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _open(source: ImageSource, name: str, max_pixels: int) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, torch.Tensor | np.ndarray):
        array = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else source
        return _array_to_image(array, name)
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
    except FileNotFoundError as exc:
        raise ImageError(f"{name}: no such file") from exc
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: not a readable image ({exc})") from exc
    except OSError as exc:
        raise ImageError(f"{name}: cannot read ({exc})") from exc
    if image.width * image.height > max_pixels:  # checked on the header, before decoding
        raise ImageError(f"{name}: {image.width}x{image.height} px is more than the {max_pixels:,} px limit")
    try:
        image.load()
    except (OSError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: cannot decode ({exc})") from exc
    return image


def _to_gray(image: Image.Image) -> Image.Image:
    """8-bit grayscale; transparent areas become the colour that contrasts with the opaque strokes."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max()
        values = values * (255.0 / 65535.0 if top > 255 else 255.0 if 0 < top <= 1 else 1.0)
        return Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA", "PA"):
        return image.convert("L")
    gray_alpha = np.asarray(image.convert("LA"), dtype=np.float64)
    gray, alpha = gray_alpha[..., 0], gray_alpha[..., 1] / 255.0
    opaque = alpha > 0.5
    # dark strokes on a transparent canvas (a sketch pad) go onto white, light ones onto black
    background = 255.0 if not opaque.any() or gray[opaque].mean() < 128 else 0.0
    return Image.fromarray((gray * alpha + background * (1 - alpha) + 0.5).astype(np.uint8))


def load_image(source: ImageSource, *, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """Read an image as 8-bit grayscale, upright per its EXIF orientation.

    Args:
        source: a file path, encoded bytes, a PIL image, or pixels as an array/tensor `(H, W)`,
            `(H, W, C)` or `(C, H, W)` (uint8 in [0, 255], floats in [0, 1]).
        max_pixels: the largest accepted ``width x height``, checked before decoding.

    Returns:
        A mode ``L`` image, polarity unchanged.

    Raises:
        ImageError: missing, unreadable or undecodable input, or more pixels than ``max_pixels``;
            the message names the file.
    """
    name = describe_source(source)
    image = _open(source, name, max_pixels)
    if image.width * image.height > max_pixels:
        raise ImageError(f"{name}: {image.width}x{image.height} px is more than the {max_pixels:,} px limit")
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{name}: empty image ({image.width}x{image.height})")
    return _to_gray(ImageOps.exif_transpose(image))


def otsu_threshold(pixels: np.ndarray) -> int:
    """Otsu's threshold of 8-bit pixels: the level that best separates two classes (``<= t`` vs ``> t``).

    Args:
        pixels: uint8 pixels of any shape.

    Returns:
        The threshold in [0, 254]; a single-valued image gives that value (or 254 for white).
    """
    hist = np.bincount(pixels.ravel(), minlength=256).astype(np.float64)
    weight0 = np.cumsum(hist)  # pixels <= t
    total = weight0[-1]
    sum0 = np.cumsum(hist * np.arange(256))
    weight1 = total - weight0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (sum0[-1] * weight0 - total * sum0) ** 2 / (weight0 * weight1)
    between = np.nan_to_num(between[:255], nan=-1.0, posinf=-1.0)
    if between.max() <= 0:  # one gray level only
        return min(int(pixels.ravel()[0]), 254)
    return int(np.argmax(between))


def detect_polarity(image: Image.Image | np.ndarray) -> Literal["white_on_black", "black_on_white"]:
    """Which way round strokes and background are: the larger Otsu class is the background.

    Args:
        image: an ``L`` image or uint8 pixels `(H, W)`.

    Returns:
        ``"white_on_black"`` (the model's convention) or ``"black_on_white"`` (paper).
    """
    pixels = np.asarray(image, dtype=np.uint8)
    bright = float((pixels > otsu_threshold(pixels)).mean())
    if pixels.min() == pixels.max():  # no strokes: a light image is paper
        bright = 1.0 if int(pixels.min()) >= 128 else 0.0
    return "black_on_white" if bright > 0.5 else "white_on_black"


def to_white_on_black(image: Image.Image, polarity: Polarity = "auto") -> Image.Image:
    """Return ``image`` with white strokes on black, inverting it if needed.

    Args:
        image: an ``L`` image.
        polarity: ``"auto"`` detects it per image (:func:`detect_polarity`); otherwise the known one.
    """
    if polarity not in ("auto", "white_on_black", "black_on_white"):
        raise ValueError(f"polarity must be auto, white_on_black or black_on_white, got {polarity!r}")
    found = detect_polarity(image) if polarity == "auto" else polarity
    return ImageOps.invert(image) if found == "black_on_white" else image


def resize_image(image: Image.Image, scale: float) -> Image.Image:
    """Isotropic bilinear resize by ``scale`` (each side at least 1 px)."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)


def scale_to_limit_range(image: Image.Image, *, min_height: int = MIN_HEIGHT, max_height: int = MAX_HEIGHT,
                         min_width: int = MIN_WIDTH, max_width: int = MAX_WIDTH) -> Image.Image:
    """``ScaleToLimitRange`` (posformer.md §2.4): shrink into the maxima, else enlarge to the minima.

    The aspect ratio is kept (up to rounding), so H/W must lie in
    ``[min_height / max_width, max_height / min_width]``.

    Args:
        image: any image `H x W`.

    Returns:
        The image, resized (bilinear) only when a side is out of range.

    Raises:
        ImageError: an aspect ratio outside the range above.
    """
    height, width = image.height, image.width
    ratio = height / width
    if not min_height / max_width <= ratio <= max_height / min_width:
        raise ImageError(f"a {width}x{height} image has aspect ratio H/W = {ratio:.4g}, outside "
                         f"[{min_height}/{max_width}, {max_height}/{min_width}]")
    if height > max_height or width > max_width:
        scale = min(max_height / height, max_width / width)
    elif height < min_height or width < min_width:
        scale = max(min_height / height, min_width / width)
    else:
        return image
    new_height = min(max(round(height * scale), min_height), max_height)
    new_width = min(max(round(width * scale), min_width), max_width)
    return image.resize((new_width, new_height), Image.Resampling.BILINEAR)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An ``L`` image `H x W` -> float32 tensor `(1, H, W)` in [0, 1] (``ToTensor``; no normalisation)."""
    pixels = np.array(image.convert("L"), dtype=np.float32)  # (H, W), a writable copy
    return torch.from_numpy(pixels / 255.0).unsqueeze(0)  # (1, H, W)


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of :func:`preprocess_image`."""

    margin: int = 2  # px of background around the strokes in the output (CROHME images are tight crops)
    min_contrast: int = MIN_CONTRAST  # gray levels between strokes and paper; less is a blank image
    max_pixels: int = MAX_INPUT_PIXELS  # largest accepted input, checked before decoding
    polarity: Polarity = "auto"


def _stretch(pixels: np.ndarray, name: str, min_contrast: int) -> np.ndarray:
    """White-on-black pixels -> paper at 0 and the median stroke at 255; blank images are refused."""
    threshold = otsu_threshold(pixels)
    ink = pixels > threshold
    if not ink.any() or ink.all():
        raise ImageError(f"{name}: blank image (a single gray level, no strokes)")
    paper, stroke = float(np.median(pixels[~ink])), float(np.median(pixels[ink]))
    if stroke - paper < min_contrast:
        raise ImageError(f"{name}: blank image (strokes differ from the background by "
                         f"{stroke - paper:.0f} < {min_contrast} gray levels)")
    return np.clip((pixels - paper) / (stroke - paper) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _pad_to_aspect(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    """Pad with background (centred) so that H/W lies in [low, high]: a long thin crop stays legal."""
    height, width = pixels.shape
    new_height = max(height, int(np.ceil(width * low)))
    new_width = max(width, int(np.ceil(height / high)))
    top, left = (new_height - height) // 2, (new_width - width) // 2
    out = np.zeros((new_height, new_width), dtype=pixels.dtype)
    out[top:top + height, left:left + width] = pixels
    return out


def preprocess_image(source: ImageSource, config: PreprocessConfig | None = None) -> torch.Tensor:
    """Turn a user image (photo, scan, screenshot, drawing) into the tensor the model expects.

    Steps: EXIF transpose and grayscale (:func:`load_image`), auto-invert to white on black, contrast
    stretch, crop to the strokes, pad to a legal aspect ratio, :func:`scale_to_limit_range` (limits
    reduced by the margin), then the margin of background on every side.

    Args:
        source: a path, encoded bytes, a PIL image, or pixels (see :func:`load_image`).
        config: margin, blank threshold, pixel limit, polarity; default :class:`PreprocessConfig`.

    Returns:
        `(1, H, W)` float32 in [0, 1], white strokes on black, H in [16, 256], W in [16, 1024].

    Raises:
        ImageError: unreadable input, too many pixels, or a blank image; the message names the input.
    """
    config = config or PreprocessConfig()
    name = describe_source(source)
    image = to_white_on_black(load_image(source, max_pixels=config.max_pixels), config.polarity)
    pixels = _stretch(np.asarray(image, dtype=np.uint8), name, config.min_contrast)
    rows, cols = np.nonzero(pixels > 127)
    if rows.size == 0:
        raise ImageError(f"{name}: blank image (no stroke pixel survives the contrast stretch)")
    crop = pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]  # (h, w), tight on the strokes
    margin = config.margin
    limits = {"min_height": MIN_HEIGHT - 2 * margin, "max_height": MAX_HEIGHT - 2 * margin,
              "min_width": MIN_WIDTH - 2 * margin, "max_width": MAX_WIDTH - 2 * margin}
    if min(limits.values()) < 1:
        raise ValueError(f"margin {margin} leaves no room inside {MIN_HEIGHT}x{MIN_WIDTH}")
    crop = _pad_to_aspect(crop, limits["min_height"] / limits["max_width"],
                          limits["max_height"] / limits["min_width"])
    scaled = scale_to_limit_range(Image.fromarray(crop), **limits)
    return image_to_tensor(ImageOps.expand(scaled, border=margin, fill=0))
