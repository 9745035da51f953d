"""The speech tokenizer: a sentencepiece model trained in memory and stored inside the model file.

samba-asr.md §8.4: sentencepiece (unigram or BPE) on the training transcripts; small vocabularies
(256–500) suit tiny models and CTC, about 5000 suits attention decoders. The serialized model proto
travels in the safetensors metadata as base64 (metadata values must be strings), so a bundled model
needs no separate tokenizer file.

Special ids are fixed, so the CTC head and the attention decoder agree on them:

====  ===========  ===============================================
id    piece        use
====  ===========  ===============================================
0     ``<blank>``  CTC blank; also the padding id of token batches
1     ``<sos>``    start of sequence (decoder input only)
2     ``<eos>``    end of sequence
3     ``<unk>``    a character the model never saw (decodes to ⁇)
====  ===========  ===============================================
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Iterable, Sequence
from typing import Literal

import sentencepiece as spm

__all__ = ["LIBRISPEECH_CHARS", "SentencePieceTokenizer"]

LIBRISPEECH_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ'"  # every symbol of LibriSpeech transcripts besides space
_SPECIALS = ("<blank>", "<sos>", "<eos>", "<unk>")  # pieces of ids 0, 1, 2, 3


class SentencePieceTokenizer:
    """Text <-> token ids with a sentencepiece model whose special ids are 0-3 (module docstring).

    Build one with :meth:`train` or load one with :meth:`from_bytes` / :meth:`from_base64`.

    Args:
        model_proto: a serialized sentencepiece model with the project's special ids.

    Raises:
        ValueError: unreadable bytes, or a model with other special ids.
    """

    blank_id = 0
    sos_id = 1
    eos_id = 2
    unk_id = 3

    def __init__(self, model_proto: bytes) -> None:
        try:
            processor = spm.SentencePieceProcessor(model_proto=bytes(model_proto))
        except RuntimeError as exc:
            raise ValueError(f"not a sentencepiece model ({len(model_proto)} bytes): {exc}") from exc
        pieces = tuple(processor.id_to_piece(i) for i in range(min(4, processor.get_piece_size())))
        if pieces != _SPECIALS or not processor.is_unknown(self.unk_id):
            raise ValueError(f"the sentencepiece model's ids 0-3 are {pieces}, expected {_SPECIALS}")
        self._proto = bytes(model_proto)
        self._processor = processor

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, model_type: Literal["unigram", "bpe"] = "unigram",
              *, seed: int = 0, required_chars: str = LIBRISPEECH_CHARS) -> SentencePieceTokenizer:
        """Train in memory, deterministically (one thread, fixed seed, every sentence used).

        A ``vocab_size`` the corpus cannot fill is an error, not silently reduced: the size fixes the
        model's output layer, so it must be what the config says.

        Args:
            texts: training transcripts, already normalised (e.g. upper-case LibriSpeech text).
            vocab_size: pieces including the 4 special ones.
            model_type: ``"unigram"`` or ``"bpe"``.
            seed: seed of sentencepiece's random generator (process-wide; set before training).
            required_chars: characters that get a piece even if absent from ``texts``; every other
                character of ``texts`` is covered too (``character_coverage=1.0``).

        Returns:
            The trained tokenizer, with exactly ``vocab_size`` pieces.

        Raises:
            ValueError: no texts, a bad model type, or a vocabulary size outside what the corpus allows
                (the message gives the bound).
        """
        texts = [text for text in texts if text.strip()]
        if not texts:
            raise ValueError("cannot train a tokenizer on no text")
        if model_type not in ("unigram", "bpe"):
            raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
        spm.set_random_generator_seed(seed)
        buffer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts), model_writer=buffer, vocab_size=vocab_size,
                model_type=model_type, character_coverage=1.0, required_chars=required_chars,
                pad_id=0, pad_piece=_SPECIALS[0], bos_id=1, bos_piece=_SPECIALS[1],
                eos_id=2, eos_piece=_SPECIALS[2], unk_id=3, unk_piece=_SPECIALS[3],
                normalization_rule_name="identity",  # text is normalised upstream; keep it byte-exact
                num_threads=1, input_sentence_size=0, max_sentence_length=1 << 16, minloglevel=2,
            )
        except RuntimeError as exc:
            raise ValueError(_training_error(str(exc), vocab_size, model_type, len(texts))) from exc
        return cls(buffer.getvalue())

    @property
    def vocab_size(self) -> int:
        """Number of pieces, special ones included: the size of the model's output layer."""
        return self._processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without <sos>/<eos>; unseen characters map to <unk> (3)."""
        return self._processor.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids; <blank>, <sos> and <eos> are skipped, <unk> becomes ⁇.

        Args:
            ids: token ids (a list, or a 1-D tensor).
        """
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad} are outside the vocabulary [0, {self.vocab_size})")
        return self._processor.decode([i for i in ids if i > self.eos_id])

    def id_to_piece(self, token_id: int) -> str:
        """The piece of one id (word-initial pieces start with ▁)."""
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
        return self._processor.id_to_piece(token_id)

    def to_bytes(self) -> bytes:
        """The serialized sentencepiece model proto."""
        return self._proto

    @classmethod
    def from_bytes(cls, model_proto: bytes) -> SentencePieceTokenizer:
        """Load from :meth:`to_bytes` output."""
        return cls(model_proto)

    def to_base64(self) -> str:
        """The model as an ASCII string, for safetensors metadata."""
        return base64.b64encode(self._proto).decode("ascii")

    @classmethod
    def from_base64(cls, text: str) -> SentencePieceTokenizer:
        """Load from :meth:`to_base64` output."""
        try:
            return cls(base64.b64decode(text, validate=True))
        except binascii.Error as exc:
            raise ValueError(f"tokenizer metadata is not valid base64: {exc}") from exc


def _training_error(message: str, vocab_size: int, model_type: str, num_texts: int) -> str:
    """Turn a sentencepiece trainer failure into a message that names the bound."""
    too_high = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message)
    if too_high:
        return (f"vocab_size={vocab_size} is too large for these {num_texts} texts: a {model_type} model can "
                f"have at most {too_high.group(1)} pieces; use more text or a smaller vocab_size")
    too_low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_low:
        return (f"vocab_size={vocab_size} is too small: the special pieces and required characters alone "
                f"need {too_low.group(2)}")
    return f"sentencepiece training failed: {message}"
