"""Search settings, results and logit filters (frozen values shared by every search function)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

__all__ = ["DecodingOptions", "Hypothesis", "LogitFilter", "SuppressTokens"]


@dataclass(frozen=True)
class DecodingOptions:
    """Search settings; change one with ``dataclasses.replace``.

    Scores: a hypothesis's joint score is (1 - ctc_weight)·Σ log p_att + ctc_weight·log p_ctc, where
    log p_ctc is the CTC prefix log-probability (the full-sequence one once <eos> is chosen). The beam is
    pruned on joint scores; length normalisation (joint / length**length_penalty, length = tokens plus
    <eos> when finished) only ranks the finished hypotheses and the returned n-best list.

    CTC cost: every step scores C tokens of each of the N running hypotheses over T frames, O(T·N·C) time
    and O(N·C) memory; with ``ctc_candidates=None`` C is the whole vocabulary, fine up to a few thousand
    tokens. Set ``ctc_candidates`` (ESPnet uses about 1.5·beam) to cut it; below 2·beam it also narrows
    what the search can keep.

    Stopping: an input is done when its pool of finished hypotheses is full and no running one can beat
    the worst. With ``stop_bound="cap"`` that test is exact: a running score is bounded at the length
    cap, so with ``length_penalty > 0`` the search usually runs to the cap. ``"current"`` bounds it at
    its current length instead (HF ``early_stopping=False``, PosFormer's reference): faster, but a
    longer hypothesis could still have won. With ``length_penalty == 0`` both are exact and equal.
    """

    beam_size: int = 1  # hypotheses kept per input, split evenly over the groups
    nbest: int = 1  # hypotheses returned per input, best first; at most beam_size
    max_length: int | None = 200  # cap on output tokens (<sos>/<eos> not counted); None: ratio only
    max_length_ratio: float | None = None  # per-input cap ceil(ratio · encoder length); min with max_length
    length_penalty: float = 0.0  # alpha: ranking score = joint log-prob / length**alpha (eos counts)
    stop_bound: Literal["cap", "current"] = "cap"  # length bounding a running hypothesis's final score
    ctc_weight: float = 0.0  # lambda in (1 - lambda)·log p_att + lambda·log p_ctc; needs a CTCPrefixScorer
    ctc_candidates: int | None = None  # CTC scores only each hypothesis's top-k attention tokens; None: all
    num_groups: int = 1  # diverse beam search groups; 1 is plain beam search
    diversity_penalty: float = 0.0  # subtracted per earlier group that chose the same token at this step
    temperature: float = 1.0  # attention scores are divided by it before log_softmax
    suppress_tokens: tuple[int, ...] = ()  # ids never emitted (e.g. <blank> and <sos>)

    def __post_init__(self) -> None:
        object.__setattr__(self, "suppress_tokens", tuple(int(t) for t in self.suppress_tokens))
        problems = [
            (self.beam_size < 1, f"beam_size must be >= 1, got {self.beam_size}"),
            (not 1 <= self.nbest <= self.beam_size, f"nbest must lie in [1, beam_size], got {self.nbest}"),
            (self.max_length is None and self.max_length_ratio is None,
             "set max_length, max_length_ratio or both"),
            (self.max_length is not None and self.max_length < 1,
             f"max_length must be >= 1, got {self.max_length}"),
            (self.max_length_ratio is not None and not self.max_length_ratio > 0,
             f"max_length_ratio must be > 0, got {self.max_length_ratio}"),
            (not self.length_penalty >= 0, f"length_penalty must be >= 0, got {self.length_penalty}"),
            (self.stop_bound not in ("cap", "current"),
             f"stop_bound must be 'cap' or 'current', got {self.stop_bound!r}"),
            (not 0 <= self.ctc_weight < 1, f"ctc_weight must lie in [0, 1), got {self.ctc_weight}"),
            (self.ctc_candidates is not None and self.ctc_candidates < 2,
             f"ctc_candidates must be >= 2 or None, got {self.ctc_candidates}"),
            (self.num_groups < 1 or self.beam_size % self.num_groups,
             f"num_groups ({self.num_groups}) must divide beam_size ({self.beam_size})"),
            (not self.diversity_penalty >= 0, f"diversity_penalty must be >= 0: {self.diversity_penalty}"),
            (not self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (any(t < 0 for t in self.suppress_tokens), f"bad suppress_tokens {self.suppress_tokens}"),
        ]
        errors = [message for failed, message in problems if failed]
        if errors:
            raise ValueError("invalid DecodingOptions: " + "; ".join(errors))


@dataclass(frozen=True)
class Hypothesis:
    """One decoded sequence. Results are lists of these per input, sorted by ``score``, best first."""

    tokens: tuple[int, ...]  # output tokens, without <sos> and <eos>
    score: float  # ranking score: joint log-prob / length**length_penalty (length = tokens + 1 if finished)
    log_prob_att: float  # summed attention log-probs as searched (after temperature), <eos> included
    log_prob_ctc: float | None  # CTC log-prob: full sequence if finished, else prefix; None without CTC
    finished: bool  # True: ended with <eos>; False: stopped at the length cap


class LogitFilter(Protocol):
    """Adjusts next-token log-probabilities before search picks from them (whisper's LogitFilter)."""

    def apply(self, log_probs: Tensor, tokens: Tensor) -> Tensor:
        """Args: log_probs `(N, V)`; tokens `(N, t)` emitted so far. Returns: `(N, V)`."""
        ...


@dataclass(frozen=True)
class SuppressTokens:
    """Sets the log-probability of the given ids to -inf (others are left as they are, not renormalised)."""

    token_ids: tuple[int, ...]

    def apply(self, log_probs: Tensor, tokens: Tensor) -> Tensor:
        index = torch.tensor(self.token_ids, dtype=torch.long, device=log_probs.device)
        return log_probs.index_fill(1, index, -math.inf)
