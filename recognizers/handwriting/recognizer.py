"""The handwriting recognizer bundle: word/line image → pre-processing → FPHTR or SAR → search → text.

Pipeline (torchaudio ``RNNTBundle`` pattern, architecture.md rule 1): ``data.handwriting.load_handwriting``
turns a user image (path, PIL image, array or tensor) into the model's input (grey, dark ink on light
paper, auto-inverted if needed, scaled ×0.5, normalised with the IAM mean and std, writer-htr.md §4.1);
:func:`.search.encode_images` encodes a batch without pixel padding, so results do not depend on the
batch; :func:`.search.decode` runs greedy search (the default, as in the thesis) or beam search, and
the characters are joined into the text.

Model files (``recognizers.checkpoint.Bundle``): metadata ``recognizers.config`` is ``HTRConfig.to_dict()``,
``recognizers.vocab`` the character vocabulary (``CharVocabulary.to_json``: a JSON list of every token
in id order, specials first) and ``recognizers.preprocess`` the image settings (JSON of
``HandwritingConfig``; optional, the thesis values by default); the weights are the whole
``HTRModel.state_dict()``.

Registry name "handwriting" (interfaces.md fixes it; task "text"; weights file ``handwriting.safetensors``).
Training: ``training/htr_module.py`` (``recognizers fit --config training/configs/htr_*.yaml``), then
``recognizers export CKPT --out handwriting.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from data.handwriting import CharVocabulary, HandwritingConfig, load_handwriting
from data.images import ImageError

from ..base import InputError, Recognizer, Result
from ..checkpoint import Bundle, CheckpointError
from ..decoding import Hypothesis
from .config import HTRConfig
from .model import HTRModel
from .search import decode, encode_images, search_options

__all__ = ["HandwritingImage", "HandwritingRecognizer"]


@dataclass(frozen=True)
class HandwritingImage:
    """An image already in the model's convention (what :meth:`HandwritingRecognizer.load_input` returns;
    ``recognize`` uses it as is).

    Attributes:
        pixels: `(1, H, W)` float32, normalised (``data.handwriting.normalize_image``).
    """

    pixels: Tensor


def _config(data: dict[str, Any]) -> HTRConfig:
    try:
        return HTRConfig.from_dict(data)
    except (TypeError, KeyError, ValueError) as exc:  # unknown or missing keys, bad values
        raise CheckpointError(f"handwriting config unusable: {exc!r}") from exc


def _vocab(raw: str | None) -> CharVocabulary:
    if raw is None:
        raise CheckpointError("handwriting model file without its vocabulary (metadata 'recognizers.vocab')")
    try:
        return CharVocabulary.from_json(raw)
    except ValueError as exc:
        raise CheckpointError(f"handwriting vocabulary unusable: {exc}") from exc


def _preprocess(raw: str | None) -> HandwritingConfig:
    if raw is None:
        return HandwritingConfig()
    try:
        return HandwritingConfig(**json.loads(raw))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"handwriting preprocessing metadata unusable: {exc!r}") from exc


class HandwritingRecognizer(Recognizer):
    """Handwritten words or lines to text with FPHTR or SAR (writer-htr.md §4).

    Args:
        model: the network.
        vocab: its character vocabulary (``len(vocab) == model.cfg.vocab_size``, special ids 0, 1, 2).
        device: where to run.
        max_batch: most images per search batch (``recognize`` splits larger inputs, sorted by area).
        preprocess: image settings of ``data.handwriting`` (default: the thesis's).
    """

    name = "handwriting"
    task = "text"

    def __init__(self, model: HTRModel, vocab: CharVocabulary, device: torch.device | str = "cpu",
                 max_batch: int = 32, preprocess: HandwritingConfig | None = None) -> None:
        cfg = model.cfg
        if len(vocab) != cfg.vocab_size or (cfg.pad_id, cfg.sos_id, cfg.eos_id) != (
                vocab.pad_id, vocab.sos_id, vocab.eos_id):
            raise ValueError(f"vocabulary ({len(vocab)} classes) and model config (vocab_size "
                             f"{cfg.vocab_size}, special ids {cfg.pad_id, cfg.sos_id, cfg.eos_id}) disagree")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.vocab, self.max_batch = vocab, max_batch
        self.preprocess = preprocess or HandwritingConfig()

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device | str = "cpu") -> HandwritingRecognizer:
        """Build from ``recognizers.checkpoint.read_bundle`` output; every weight must match exactly.

        Raises:
            CheckpointError: missing or unusable vocabulary, config or preprocessing, or weights that do
                not match.
        """
        cfg = _config(bundle.config)
        vocab = _vocab(bundle.extras.get("vocab"))
        if len(vocab) != cfg.vocab_size:
            raise CheckpointError(f"handwriting vocabulary has {len(vocab)} classes, the config "
                                  f"{cfg.vocab_size}")
        model = HTRModel(cfg)
        try:
            missing, unexpected = model.load_state_dict(bundle.state_dict, strict=False)
        except RuntimeError as exc:  # shape mismatches raise even with strict=False
            raise CheckpointError(f"handwriting weights do not match the config: {exc}") from exc
        if missing or unexpected:
            raise CheckpointError(f"handwriting weights do not match the config: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        return cls(model, vocab, device, preprocess=_preprocess(bundle.extras.get("preprocess")))

    def to_bundle(self) -> Bundle:
        """The bundle of this recognizer (``save_bundle`` writes it)."""
        extras = {"vocab": self.vocab.to_json(), "preprocess": json.dumps(asdict(self.preprocess))}
        return Bundle(self.name, self.model.cfg.to_dict(), extras, self.model.state_dict())

    def load_input(self, source: Any) -> HandwritingImage:
        """A path, encoded bytes, PIL image, array or tensor of a grey or colour image →
        :class:`HandwritingImage`. A ``HandwritingImage`` passes through.

        Raises:
            InputError: missing, unreadable, empty or blank image; the message names the input.
        """
        if isinstance(source, HandwritingImage):
            if source.pixels.dim() != 3 or source.pixels.shape[0] != 1:
                raise InputError("HandwritingImage: expected (1, H, W) pixels, got "
                                 f"{tuple(source.pixels.shape)}")
            return source
        try:
            return HandwritingImage(load_handwriting(source, self.preprocess))
        except ImageError as exc:  # its message starts with the input's name
            raise InputError(str(exc)) from exc

    @torch.no_grad()
    def recognize(self, inputs: Sequence[Any], *, beam_size: int = 1, nbest: int = 1, num_groups: int = 1,
                  diversity_penalty: float = 0.0, length_penalty: float = 0.0,
                  max_length: int | None = None) -> list[Result]:
        """Recognise a batch of word or line images.

        Args:
            inputs: paths, PIL images, arrays or tensors of user images, or :class:`HandwritingImage`.
            beam_size: K (1: greedy decoding, the thesis's protocol).
            nbest: hypotheses per input in ``Result.nbest``; the beam widens to at least ``nbest``.
            num_groups, diversity_penalty: diverse beam search, for a more varied n-best list.
            length_penalty: α of the beam ranking score Σ log p / length^α.
            max_length: most characters (None and larger values: the model's ``max_seq_len``).

        Returns:
            One ``Result`` per input, in order: ``text`` the characters, ``score`` the search score
            (summed log-probability, ``<eos>`` included, divided by length^α).

        Raises:
            InputError: an input cannot be used; the message names it.
        """
        images = [self.load_input(x).pixels for x in inputs]
        options = search_options(max(beam_size, nbest), max(1, nbest), max_length=max_length,
                                 length_penalty=length_penalty, num_groups=num_groups,
                                 diversity_penalty=diversity_penalty)
        order = sorted(range(len(images)), key=lambda i: images[i].shape[1] * images[i].shape[2])
        results: list[Result | None] = [None] * len(images)
        for first in range(0, len(order), self.max_batch):
            chunk = order[first:first + self.max_batch]
            memory = encode_images(self.model, [images[i].to(self.device) for i in chunk])
            for i, hyps in zip(chunk, decode(self.model, memory, options), strict=True):
                results[i] = self._result(hyps)
        return results  # type: ignore[return-value]  (every slot is filled)

    def _result(self, hyps: Sequence[Hypothesis]) -> Result:
        if not hyps:
            return Result("", float("-inf"))
        nbest = tuple((self.vocab.decode(h.tokens), h.score) for h in hyps)
        return Result(nbest[0][0], nbest[0][1], nbest)
