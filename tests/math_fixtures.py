"""Builders for the math recognizer tests: a tiny seeded PosFormer and formula-like images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from data.vocab import crohme_vocab
from recognizers.posformer import PosFormer, preset, resolve_ids


def tiny_posformer(*, seed: int = 0, dtype: torch.dtype = torch.float32, position: bool = False,
                   stop_bias: float = 3.0, token_bias: dict[str, float] | None = None) -> PosFormer:
    """The "tiny" preset on the CROHME vocabulary, seeded and in eval mode.

    ``stop_bias`` is added to the output bias of ``<eos>`` and ``<sos>`` (the two directions' stop tokens),
    so that an untrained model ends its hypotheses after a few tokens instead of running to the cap;
    ``token_bias`` adds to the bias of the named tokens (so that the best hypothesis is not empty).
    """
    vocab = crohme_vocab()
    cfg = preset("tiny", iac_ids=resolve_ids(vocab.token_to_id), vocab_size=len(vocab))
    cfg = replace(cfg, position=replace(cfg.position, enabled=position))
    torch.manual_seed(seed)
    model = PosFormer(cfg).to(dtype).eval()
    with torch.no_grad():
        model.decoder.proj.bias[[vocab.eos_id, vocab.sos_id]] += stop_bias
        for token, bias in (token_bias or {}).items():
            model.decoder.proj.bias[vocab.token_to_id(token)] += bias
    return model


def formula_image(text: str, size: tuple[int, int] = (160, 48), ink: int = 0,
                  paper: int = 255) -> Image.Image:
    """``text`` drawn with PIL's default font on a plain background, as a phone photo would show it."""
    image = Image.new("L", size, paper)
    draw = ImageDraw.Draw(image)
    draw.text((8, size[1] // 4), text, fill=ink)
    draw.line((8, size[1] - 8, size[0] - 8, size[1] - 10), fill=ink, width=2)
    return image


def write_formulas(folder: Path, texts: dict[str, str]) -> dict[str, Path]:
    """One PNG per ``name -> text`` under ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, (name, text) in enumerate(texts.items()):
        paths[name] = folder / f"{name}.png"
        formula_image(text, (120 + 30 * k, 40 + 6 * k)).save(paths[name])
    return paths
