"""The math recognizer bundle: formula image → preprocessing → PosFormer → bidirectional search → LaTeX.

Pipeline (torchaudio ``RNNTBundle`` pattern, architecture.md rule 1): ``data.images.preprocess_image``
turns a user image (path, PIL image, array or tensor) into the model's convention (white strokes on
black, `(1, H, W)` in [0, 1], H in [16, 256], W in [16, 1024]); :mod:`.search` encodes the batch and
runs the bidirectional beam search with reverse rescoring (posformer.md §6); the best token sequence
becomes LaTeX with ``data.latex.detokenize`` (space-separated tokens, the CROHME caption form, which is
valid LaTeX and what ExpRate compares).

Model files (``recognizers.checkpoint.Bundle``): metadata ``recognizers.config`` is
``PosFormerConfig.to_dict()``, ``recognizers.vocab`` is the JSON list of the vocabulary's tokens in id
order (``vocab_metadata``: specials included; the 110 regular tokens alone are accepted too) and must
be the CROHME vocabulary; the weights are ``PosFormer.inference_state_dict()``. Training checkpoints
also hold the position branch: :meth:`PosFormerRecognizer.inference_bundle` drops it (``recognizers
export`` calls it, and so does loading), so exported files carry inference weights only (§12 item 5).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from data.images import ImageError, PreprocessConfig, preprocess_image
from data.latex import detokenize
from data.vocab import SPECIAL_TOKENS, Vocabulary, crohme_vocab

from ..base import InputError, Recognizer, Result, check_vocab_fits
from ..checkpoint import Bundle, CheckpointError, load_weights
from .config import PosFormerConfig
from .model import PosFormer
from .search import RescoredHypothesis, bidirectional_search, encode_images, search_options

__all__ = ["AttentionView", "MathImage", "PosFormerRecognizer", "vocab_metadata"]

_POSITION_PREFIX = "position_decoder."  # the training-only position branch's weights (§3.4)


def vocab_metadata(vocab: Vocabulary) -> str:
    """The ``recognizers.vocab`` metadata of a model file: JSON list of every token in id order."""
    return json.dumps(list(vocab.tokens), ensure_ascii=False)


@dataclass(frozen=True)
class MathImage:
    """A formula image already in the model's convention (what :meth:`PosFormerRecognizer.load_input`
    returns; ``recognize`` uses it as is).

    Attributes:
        pixels: `(1, H, W)` float in [0, 1], white strokes on black, within the size limits.
    """

    pixels: Tensor


@dataclass(frozen=True)
class AttentionView:
    """Which part of the image each output symbol looked at (:meth:`PosFormerRecognizer.attention_view`).

    Attributes:
        latex: the LaTeX the maps explain (space-separated tokens).
        tokens: its tokens, in order.
        image: `(H, W)` uint8, the preprocessed image the model saw, as dark ink on white.
        maps: `(len(tokens), H, W)` float32 in [0, 1]: token k's attention (last decoder layer, mean over
            heads), upsampled to the image and scaled so its peak is 1.
    """

    latex: str
    tokens: tuple[str, ...]
    image: np.ndarray
    maps: np.ndarray


def _check_vocab(raw: str | None) -> Vocabulary:
    """The CROHME vocabulary, if the model file's token list is that vocabulary."""
    if raw is None:
        raise CheckpointError("PosFormer model file without its vocabulary (metadata 'recognizers.vocab')")
    try:
        tokens = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(f"PosFormer vocabulary metadata is not JSON: {exc}") from exc
    vocab = crohme_vocab()
    if not isinstance(tokens, list):
        raise CheckpointError("PosFormer vocabulary metadata is not a JSON list of tokens")
    expected = list(vocab.tokens) if tokens[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS) else \
        list(vocab.tokens[len(SPECIAL_TOKENS):])
    if tokens != expected:
        where = next((i for i, (a, b) in enumerate(zip(tokens, expected, strict=False)) if a != b),
                     min(len(tokens), len(expected)))
        raise CheckpointError(f"PosFormer vocabulary differs from the CROHME vocabulary ({len(tokens)} "
                              f"tokens vs {len(expected)}; first difference at position {where})")
    return vocab


def _config(data: dict[str, Any]) -> PosFormerConfig:
    try:
        return PosFormerConfig.from_dict(data)
    except (TypeError, KeyError, ValueError) as exc:  # unknown or missing keys, bad values
        raise CheckpointError(f"PosFormer config unusable: {exc!r}") from exc


class PosFormerRecognizer(Recognizer):
    """Handwritten mathematical expressions to LaTeX with PosFormer.

    Args:
        model: the network; the inference model (``position.enabled=False``) is enough.
        vocab: the vocabulary it was trained with (default: the CROHME vocabulary).
        device: where to run.
        max_batch: most images per search batch (``recognize`` splits larger inputs, sorted by area).
        preprocess: settings of ``data.images.preprocess_image`` for user images.
    """

    name = "posformer"
    task = "math"

    def __init__(self, model: PosFormer, vocab: Vocabulary | None = None, device: torch.device | str = "cpu",
                 max_batch: int = 16, preprocess: PreprocessConfig | None = None) -> None:
        vocab = vocab or crohme_vocab()
        check_vocab_fits(vocab, model.cfg)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.vocab, self.max_batch = vocab, max_batch
        self.preprocess = preprocess or PreprocessConfig()

    @staticmethod
    def inference_bundle(bundle: Bundle) -> Bundle:
        """The bundle with the training-only position branch removed: its weights dropped and
        ``position.enabled`` set to False in the config (used by ``recognizers export`` and loading).

        Raises:
            CheckpointError: the config is unusable.
        """
        cfg = _config(bundle.config)
        cfg = replace(cfg, position=replace(cfg.position, enabled=False))
        state = {k: v for k, v in bundle.state_dict.items() if not k.startswith(_POSITION_PREFIX)}
        return replace(bundle, config=cfg.to_dict(), state_dict=state)

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device | str = "cpu") -> PosFormerRecognizer:
        """Build from ``recognizers.checkpoint.read_bundle`` output (a ``.safetensors`` bundle or a training
        ``.ckpt``); position-branch weights are ignored, every other weight must match exactly.

        Raises:
            CheckpointError: missing or foreign vocabulary, unusable config, or weights that do not match.
        """
        bundle = cls.inference_bundle(bundle)
        vocab = _check_vocab(bundle.extras.get("vocab"))
        cfg = _config(bundle.config)
        if cfg.vocab_size != len(vocab) or (cfg.pad_id, cfg.sos_id, cfg.eos_id) != (0, 1, 2):
            raise CheckpointError(f"PosFormer config (vocab_size {cfg.vocab_size}, special ids "
                                  f"{cfg.pad_id, cfg.sos_id, cfg.eos_id}) does not fit the CROHME vocabulary")
        model = PosFormer(cfg)
        load_weights(model, bundle.state_dict, "PosFormer")
        return cls(model, vocab, device)

    def to_bundle(self) -> Bundle:
        """The inference bundle of this recognizer (``save_bundle`` writes it)."""
        cfg = self.model.cfg
        cfg = replace(cfg, position=replace(cfg.position, enabled=False))
        return Bundle(self.name, cfg.to_dict(), {"vocab": vocab_metadata(self.vocab)},
                      self.model.inference_state_dict())

    def load_input(self, source: Any) -> MathImage:
        """A path, encoded bytes, PIL image, array or tensor → :class:`MathImage` (``preprocess_image``:
        auto-invert, contrast stretch, crop, resize into the limits). A ``MathImage`` passes through.

        Raises:
            InputError: unreadable, blank or too large; the message names the input.
        """
        if isinstance(source, MathImage):
            if source.pixels.dim() != 3 or source.pixels.shape[0] != 1:
                raise InputError(f"MathImage: expected (1, H, W) pixels, got {tuple(source.pixels.shape)}")
            return source
        try:
            return MathImage(preprocess_image(source, self.preprocess))
        except ImageError as exc:  # its message starts with the input's name
            raise InputError(str(exc)) from exc

    @torch.inference_mode()
    def recognize(self, inputs: Sequence[Any], *, beam_size: int = 10, nbest: int = 1, num_groups: int = 1,
                  diversity_penalty: float = 0.0, max_length: int = 200) -> list[Result]:
        """Recognise a batch of formula images.

        Args:
            inputs: paths, PIL images, arrays or tensors of user images, or :class:`MathImage`.
            beam_size: K in each direction (1 = greedy in each direction, then the same rescoring).
            nbest: hypotheses per input in ``Result.nbest``; the beam widens to at least ``nbest``.
            num_groups, diversity_penalty: diverse beam search, for a more varied n-best list.
            max_length: most LaTeX tokens (capped by the model's positional table).

        Returns:
            One ``Result`` per input, in order: ``text`` the LaTeX, ``score`` the l2r + r2l score.
        """
        images = [self.load_input(x).pixels for x in inputs]
        options = search_options(max(beam_size, nbest), max(1, nbest), num_groups=num_groups,
                                 diversity_penalty=diversity_penalty, max_length=max_length)
        order = sorted(range(len(images)), key=lambda i: images[i].shape[1] * images[i].shape[2])
        results: list[Result | None] = [None] * len(images)
        for first in range(0, len(order), self.max_batch):
            chunk = order[first:first + self.max_batch]
            memory, mask = encode_images(self.model, [images[i].to(self.device) for i in chunk])
            for i, hyps in zip(chunk, bidirectional_search(self.model, memory, mask, options), strict=True):
                results[i] = self._result(hyps)
        return results  # type: ignore[return-value]  (every slot is filled)

    @torch.no_grad()
    def attention_view(self, source: Any, latex: str | None = None, *, beam_size: int = 10) -> AttentionView:
        """The attention view of one image: teacher-forces ``latex`` (default: the recognised LaTeX) through
        the left-to-right decoder and returns each token's cross-attention map.

        Args:
            source: what :meth:`load_input` accepts.
            latex: space-separated CROHME tokens (``Result.text``); None recognises the image first.
            beam_size: the search's beam when ``latex`` is None.

        Raises:
            InputError: unusable image, or ``latex`` with tokens outside the vocabulary or too long.
        """
        image = self.load_input(source).pixels
        if latex is None:
            latex = self.recognize([MathImage(image)], beam_size=beam_size)[0].text
        tokens = tuple(latex.split())
        unknown = self.vocab.unknown(tokens)
        if unknown:
            raise InputError(f"LaTeX tokens outside the vocabulary: {' '.join(unknown)}")
        if len(tokens) + 1 > self.model.cfg.decoder.max_len:
            raise InputError(f"LaTeX of {len(tokens)} tokens is longer than the model's positions")
        memory, mask = encode_images(self.model, [image.to(self.device)])
        tgt = torch.tensor([[self.model.cfg.sos_id, *self.vocab.encode(tokens)]], device=self.device)
        weights, _ = self.model.attention(memory, mask, tgt)  # (1, L+1, h, w); row k predicts token k
        maps = weights[0, : len(tokens)]
        maps = F.interpolate(maps[:, None], size=tuple(image.shape[1:]), mode="bilinear", align_corners=False)
        maps = maps[:, 0] / maps.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
        picture = ((1.0 - image[0].clamp(0, 1)) * 255).round().to(torch.uint8)
        return AttentionView(latex, tokens, picture.cpu().numpy(), maps.clamp(0, 1).float().cpu().numpy())

    def _latex(self, tokens: Sequence[int]) -> str:
        return detokenize(self.vocab.decode(tokens))

    def _result(self, hyps: list[RescoredHypothesis]) -> Result:
        if not hyps:
            return Result("", float("-inf"))
        nbest = tuple((self._latex(h.tokens), h.score) for h in hyps)
        return Result(nbest[0][0], nbest[0][1], nbest)
