"""What every recognizer shares: the frozen result types and the ``Recognizer`` interface.

A recognizer is a bundle (torchaudio's ``RNNTBundle`` pattern): preprocessing from ``data/``, a model,
the search of ``recognizers.decoding`` and postprocessing, behind one batched ``recognize``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["InputError", "Recognizer", "Result", "Word", "check_vocab_fits"]


class InputError(ValueError):
    """One input cannot be recognised (unreadable, empty, too long...); the message names it."""


@dataclass(frozen=True)
class Word:
    """A recognised word with its time span in the audio (speech only)."""

    text: str
    start: float  # seconds from the start of the input
    end: float  # seconds


@dataclass(frozen=True)
class Result:
    """The recognition of one input."""

    text: str  # best hypothesis (LaTeX for math, plain text otherwise)
    score: float  # its search score: log-probability, length-normalised as the decoder ranks
    nbest: tuple[tuple[str, float], ...] = ()  # (text, score) of the top hypotheses, best first
    words: tuple[Word, ...] = ()  # speech: word timings from CTC forced alignment

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form used by the command line and the app."""
        out: dict[str, Any] = {"text": self.text, "score": self.score,
                               "nbest": [{"text": t, "score": s} for t, s in self.nbest]}
        if self.words:
            out["words"] = [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)}
                            for w in self.words]
        return out


class Recognizer(ABC):
    """Batched recognition: ``recognize(inputs)`` returns one ``Result`` per input, in order."""

    name: ClassVar[str]  # registry name, e.g. "samba-asr"
    task: ClassVar[str]  # "math", "text" or "speech"

    @abstractmethod
    def load_input(self, source: Any) -> Any:
        """Read and validate one input (a path, array or tensor) into what ``recognize`` batches.

        Raises:
            InputError: naming the input and the problem.
        """

    @abstractmethod
    def recognize(self, inputs: Sequence[Any], **options: Any) -> list[Result]:
        """Recognise a batch. Inputs are paths, arrays or tensors (or ``load_input`` results).

        Raises:
            InputError: an input cannot be used (the batch runner then isolates it).
        """


def check_vocab_fits(vocab: Any, cfg: Any) -> None:
    """Refuse a vocabulary whose size or special ids (pad, sos, eos) differ from a model config's.

    Raises:
        ValueError: naming both sides.
    """
    if len(vocab) != cfg.vocab_size or (cfg.pad_id, cfg.sos_id, cfg.eos_id) != (
            vocab.pad_id, vocab.sos_id, vocab.eos_id):
        raise ValueError(f"vocabulary ({len(vocab)} classes) and model config (vocab_size "
                         f"{cfg.vocab_size}, special ids {cfg.pad_id, cfg.sos_id, cfg.eos_id}) disagree")
