"""Tiny handwriting models and word images for the handwriting tests (writer-htr.md §17)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from data.handwriting import CharVocabulary
from recognizers.handwriting import HTRModel, preset

TEXTS = ("the", "quick", "brown", "fox", "Jumps", "over", "13", "lazy", "dogs.")


def tiny_vocab() -> CharVocabulary:
    return CharVocabulary.from_texts(TEXTS)


def tiny_model(decoder: str = "fphtr", arch: str = "resnet18", *, seed: int = 0, max_seq_len: int = 12,
               vocab: CharVocabulary | None = None) -> HTRModel:
    """An untrained tiny model in eval mode (dropout and BatchNorm deterministic)."""
    torch.manual_seed(seed)
    cfg = preset("tiny", decoder=decoder, arch=arch, vocab_size=len(vocab or tiny_vocab()),
                 max_seq_len=max_seq_len)
    model = HTRModel(cfg).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is not the identity
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    return model


def word_pixels(text: str, *, height: int = 48, seed: int = 0) -> np.ndarray:
    """A synthetic word image: `(H, W)` uint8, dark ink (about 30) on light paper (about 235)."""
    rng = np.random.default_rng(seed)
    width = 16 + 14 * len(text)
    image = Image.new("L", (width, height), 235)
    ImageDraw.Draw(image).text((8, height // 4), text, fill=30)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, size=(height, width))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def line_pixels(*texts: str, gap: int = 60) -> np.ndarray:
    """A line of :func:`word_pixels` words (48 px high) with ``gap`` px of paper between them."""
    images = [word_pixels(t, height=48, seed=i) for i, t in enumerate(texts)]
    paper = np.full((48, gap), 235, dtype=np.uint8)
    return np.concatenate([p for image in images for p in (image, paper)][:-1], axis=1)


def write_words(folder: Path, texts: dict[str, str]) -> dict[str, Path]:
    """PNG files ``<key>.png`` of :func:`word_pixels` (heights vary, so sizes differ)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, (key, text) in enumerate(texts.items()):
        paths[key] = folder / f"{key}.png"
        Image.fromarray(word_pixels(text, height=40 + 8 * i, seed=i)).save(paths[key])
    return paths
