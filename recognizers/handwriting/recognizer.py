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

Adaptation state (:mod:`.adaptation`): a MetaHTR model file adds ``recognizers.metahtr`` and the
``meta.*`` tensors (α, g_γ), a writer-code model file ``recognizers.writer_codes`` and the ``codes.*``
adapter; a plain base model adapts by plain fine-tuning (``recognizers.adaptation``, optional).
:meth:`HandwritingRecognizer.adapt` turns a writer's labelled samples into a
:class:`~.profile.WriterProfile`, and ``recognize(..., writer_profile=...)`` decodes with it.

Registry name "handwriting" (interfaces.md fixes it; task "text"; weights file ``handwriting.safetensors``).
Training: ``training/htr_module.py`` (``recognizers fit --config training/configs/htr_*.yaml``), then
``recognizers export CKPT --out handwriting.safetensors``; MetaHTR and writer-code checkpoints export the
same way and keep their adaptation state.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from data.handwriting import CharVocabulary, HandwritingConfig, load_handwriting_grey, normalize_image
from data.images import ImageError

from ..base import InputError, Recognizer, Result, check_vocab_fits
from ..checkpoint import Bundle, CheckpointError, load_weights
from ..decoding import Hypothesis
from .adaptation import (
    CODES,
    META,
    Adapter,
    FinetuneAdapter,
    Support,
    WriterCodeAdapter,
    adapter_from_bundle,
    decode_adapted,
    inference_bundle,
)
from .config import HTRConfig
from .metahtr import WordBatch
from .metahtr_profile import weights_digest
from .model import FeatureHook, HTRModel
from .profile import WriterProfile, vocab_digest
from .search import decode, encode_images, search_options

__all__ = ["HandwritingImage", "HandwritingRecognizer"]


@dataclass(frozen=True)
class HandwritingImage:
    """An image already in the model's convention (what :meth:`HandwritingRecognizer.load_input` returns;
    ``recognize`` uses it as is).

    Attributes:
        pixels: `(1, H, W)` float32, normalised (``data.handwriting.normalize_image``).
        grey: optionally the `(H0, W0)` uint8 image it came from, dark ink on light paper (what Hinge
            writer codes are computed on).
    """

    pixels: Tensor
    grey: np.ndarray | None = field(default=None, compare=False, repr=False)


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
    """Handwritten words or lines to text with FPHTR or SAR (writer-htr.md §4), adaptable to a writer.

    Args:
        model: the network.
        vocab: its character vocabulary (``len(vocab) == model.cfg.vocab_size``, special ids 0, 1, 2).
        device: where to run.
        max_batch: most images per search batch (``recognize`` splits larger inputs, sorted by area).
        preprocess: image settings of ``data.handwriting`` (default: the thesis's).
        adapter: how the model adapts to a writer (default: plain fine-tuning of the classifier,
            :class:`~.adaptation.FinetuneAdapter`).
    """

    name = "handwriting"
    task = "text"

    def __init__(self, model: HTRModel, vocab: CharVocabulary, device: torch.device | str = "cpu",
                 max_batch: int = 32, preprocess: HandwritingConfig | None = None,
                 adapter: Adapter | None = None) -> None:
        check_vocab_fits(vocab, model.cfg)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.vocab, self.max_batch = vocab, max_batch
        self.preprocess = preprocess or HandwritingConfig()
        self.adapter = (adapter or FinetuneAdapter()).to(self.device)

    # ----- model files -------------------------------------------------------------------------
    @staticmethod
    def inference_bundle(bundle: Bundle) -> Bundle:
        """A training checkpoint's bundle as a handwriting model file: MetaHTR's α and g_γ (``meta.*``)
        and a writer-code adapter (``codes.*``) are kept (:func:`.adaptation.inference_bundle`)."""
        return inference_bundle(bundle)

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device | str = "cpu") -> HandwritingRecognizer:
        """Build from ``recognizers.checkpoint.read_bundle`` output (a model file or a training checkpoint);
        every weight must match exactly.

        Raises:
            CheckpointError: missing or unusable vocabulary, config, preprocessing or adaptation state,
                or weights that do not match.
        """
        bundle = inference_bundle(bundle)
        cfg = _config(bundle.config)
        vocab = _vocab(bundle.extras.get("vocab"))
        if len(vocab) != cfg.vocab_size:
            raise CheckpointError(f"handwriting vocabulary has {len(vocab)} classes, the config "
                                  f"{cfg.vocab_size}")
        model = HTRModel(cfg)
        base = {k: v for k, v in bundle.state_dict.items() if not k.startswith((META, CODES))}
        load_weights(model, base, "handwriting")
        adapter = adapter_from_bundle(model, bundle.extras, bundle.state_dict)
        return cls(model, vocab, device, preprocess=_preprocess(bundle.extras.get("preprocess")),
                   adapter=adapter)

    def to_bundle(self) -> Bundle:
        """The bundle of this recognizer (``save_bundle`` writes it), adaptation state included."""
        extras = {"vocab": self.vocab.to_json(), "preprocess": json.dumps(asdict(self.preprocess)),
                  **self.adapter.extras()}
        return Bundle(self.name, self.model.cfg.to_dict(), extras, self._state())

    def _state(self) -> dict[str, Tensor]:
        return {**self.model.state_dict(), **self.adapter.state_dict()}

    @functools.cached_property
    def weights_digest(self) -> str:
        """SHA-256 of the model file's tensors (base and adaptation state); profiles are checked against it.
        Computed once: the recognizer's weights never change."""
        return weights_digest(self._state())

    # ----- inputs ------------------------------------------------------------------------------
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
        grey = self._input_grey(source)
        return HandwritingImage(normalize_image(grey, self.preprocess), grey)

    def _input_grey(self, source: Any) -> np.ndarray:
        """A user image as `(H, W)` uint8, dark ink on light paper, before scaling; InputError if unusable."""
        try:
            return load_handwriting_grey(source, self.preprocess)
        except ImageError as exc:  # its message starts with the input's name
            raise InputError(str(exc)) from exc

    # ----- writer adaptation -------------------------------------------------------------------
    def adapt(self, samples: Sequence[tuple[Any, str]], *, steps: int | None = None) -> WriterProfile:
        """Adapt to one writer from a few labelled samples (writer-htr.md §7, §8).

        The method is the model file's (MetaHTR, writer codes, else plain fine-tuning, :mod:`.adaptation`);
        it runs with gradients even when the caller is in ``torch.no_grad`` or ``torch.inference_mode``.

        Args:
            samples: ``(image, text)`` pairs; images as ``recognize`` takes them (paths, arrays ...).
            steps: gradient steps (None: the model file's default).

        Returns:
            The profile (not saved: :meth:`WriterProfile.save`).

        Raises:
            ValueError: no sample, a sample that is not an (image, text) pair, an empty text, characters
                outside the vocabulary (named), or a text too long for the model; InputError: an
                unusable image. Messages name the sample.
        """
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        with torch.inference_mode(False), torch.enable_grad():
            support = self._support(samples)
            tensors, info = self.adapter.adapt(self.model, support, steps)
        return WriterProfile(self.adapter.method, tensors, self.model.cfg.name, self.weights_digest,
                             vocab_digest(self.vocab), len(support.batch), info)

    def _support(self, samples: Sequence[tuple[Any, str]]) -> Support:
        if isinstance(samples, str | bytes) or not isinstance(samples, Sequence) or not samples:
            raise ValueError("adapt needs at least one labelled sample: a list of (image, text) pairs")
        images, texts, grey = [], [], []
        hinge = isinstance(self.adapter, WriterCodeAdapter) and self.adapter.codes.cfg.source == "hinge"
        for k, sample in enumerate(samples, 1):
            if not isinstance(sample, tuple | list) or len(sample) != 2:
                raise ValueError(f"sample {k}: expected an (image, text) pair, got {type(sample).__name__}")
            image, text = sample
            label = f"sample {k}" + (f" ({Path(image).name})" if isinstance(image, str | Path) else "")
            texts.append(self._support_text(label, text))
            try:
                loaded = self.load_input(image)
            except InputError as exc:
                raise InputError(f"{label}: {exc}") from exc
            images.append(loaded.pixels.to(self.device))
            grey.append(loaded.grey if hinge else None)  # Hinge codes are computed on the uint8 ink
        return Support(WordBatch.from_words(images, texts, self.vocab), grey)

    def _support_text(self, label: str, text: Any) -> str:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{label}: empty transcription (every sample needs its text)")
        text = text.strip()
        unknown = self.vocab.unknown(text)
        if unknown:
            raise ValueError(f"{label}: characters not in the model's vocabulary: "
                             f"{' '.join(map(repr, unknown))} (in {text!r})")
        if len(text) + 1 > self.model.cfg.max_seq_len:
            raise ValueError(f"{label}: {len(text)} characters, more than the model's "
                             f"{self.model.cfg.max_seq_len - 1}")
        return text

    def check_profile(self, profile: WriterProfile | str | Path) -> WriterProfile:
        """Read (if a path) and check a writer profile against this model.

        Raises:
            ProfileError: unreadable, made for other weights or another character set, or a method this
                model file cannot decode with; the message names the file.
        """
        profile = WriterProfile.coerce(profile)
        profile.check(self.weights_digest, vocab_digest(self.vocab), self.model.cfg.name)
        self.adapter.check(profile)
        return profile

    # ----- recognition -------------------------------------------------------------------------
    @torch.no_grad()
    def recognize(self, inputs: Sequence[Any], *, beam_size: int = 1, nbest: int = 1, num_groups: int = 1,
                  diversity_penalty: float = 0.0, length_penalty: float = 0.0, max_length: int | None = None,
                  writer_profile: WriterProfile | str | Path | None = None,
                  lines: bool = False) -> list[Result]:
        """Recognise a batch of word images, or of text lines with ``lines=True``.

        Args:
            inputs: paths, PIL images, arrays or tensors of user images, or :class:`HandwritingImage`.
            beam_size: K (1: greedy decoding, the thesis's protocol).
            nbest: hypotheses per input in ``Result.nbest``; the beam widens to at least ``nbest``.
            num_groups, diversity_penalty: diverse beam search, for a more varied n-best list.
            length_penalty: α of the beam ranking score Σ log p / length^α.
            max_length: most characters (None and larger values: the model's ``max_seq_len``).
            writer_profile: decode with a writer's adaptation (:meth:`adapt`), or its file.
            lines: each input is a line of words: it is split at the word gaps
                (``data.segment.split_words``), the words are read as word images, and the text joins
                them with spaces (``score``: the sum of the words' scores; ``nbest``: that one text).

        Returns:
            One ``Result`` per input, in order: ``text`` the characters, ``score`` the search score
            (summed log-probability, ``<eos>`` included, divided by length^α).

        Raises:
            InputError: an input cannot be used; the message names it.
            ProfileError: the profile cannot be used with this model (:meth:`check_profile`).
        """
        if lines:
            return self._recognize_lines(inputs, beam_size=beam_size, max_length=max_length,
                                         length_penalty=length_penalty, writer_profile=writer_profile)
        profile = None if writer_profile is None else self.check_profile(writer_profile)
        images = [self.load_input(x).pixels for x in inputs]
        options = search_options(max(beam_size, nbest), max(1, nbest), max_length=max_length,
                                 length_penalty=length_penalty, num_groups=num_groups,
                                 diversity_penalty=diversity_penalty)

        def search(feature_hook: FeatureHook | None) -> list[Result]:
            order = sorted(range(len(images)), key=lambda i: images[i].shape[1] * images[i].shape[2])
            results: list[Result | None] = [None] * len(images)
            for first in range(0, len(order), self.max_batch):
                chunk = order[first:first + self.max_batch]
                memory = encode_images(self.model, [images[i].to(self.device) for i in chunk], feature_hook)
                for i, hyps in zip(chunk, decode(self.model, memory, options), strict=True):
                    results[i] = self._result(hyps)
            return results  # type: ignore[return-value]  (every slot is filled)

        if profile is None or not images:
            return search(None)
        return decode_adapted(self.model, self.adapter, profile, search)

    def _recognize_lines(self, inputs: Sequence[Any], **options: Any) -> list[Result]:
        """:meth:`recognize` with ``lines=True``: every line's words in one batch, then joined."""
        from data.segment import split_words

        words: list[HandwritingImage] = []
        counts = []
        for source in inputs:
            # a blank or unreadable line is refused here, named; no need to scale the whole line
            grey = source.grey if isinstance(source, HandwritingImage) else self._input_grey(source)
            if grey is None:
                raise InputError("HandwritingImage without its grey image: a line is split on the uint8 "
                                 "image (pass the file, an array or a HandwritingImage with grey)")
            crops = split_words(grey)
            words += [HandwritingImage(normalize_image(c, self.preprocess), c) for c in crops]
            counts.append(len(crops))
        results = self.recognize(words, **options)
        out, start = [], 0
        for n in counts:
            part = results[start:start + n]
            start += n
            text = " ".join(r.text for r in part if r.text)
            score = float(sum(r.score for r in part))
            out.append(Result(text, score, ((text, score),)))
        return out

    def _result(self, hyps: Sequence[Hypothesis]) -> Result:
        if not hyps:
            return Result("", float("-inf"))
        nbest = tuple((self.vocab.decode(h.tokens), h.score) for h in hyps)
        return Result(nbest[0][0], nbest[0][1], nbest)
