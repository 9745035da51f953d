"""CTC decoding pieces: greedy collapse, incremental prefix scoring for joint search, forced alignment.

The prefix scorer implements the CTC prefix probability recursion (Graves et al., ICML 2006, prefix
search decoding) in the form used for joint decoding by Watanabe et al., "Hybrid CTC/Attention
Architecture for End-to-End Speech Recognition" (IEEE JSTSP 2017), vectorised over hypotheses and
candidates, in log space. Notation:

* ``h`` a prefix (label sequence without blanks), ``c`` a candidate label, ``y_t^k`` the CTC
  log-probability of class ``k`` at frame ``t``;
* ``r^n_t(h)`` / ``r^b_t(h)``: log-probability that frames ``0..t`` collapse to exactly ``h`` with the
  last frame a non-blank / a blank;
* ``psi(h + c)`` = log P(the collapsed output starts with ``h + c``) = logsumexp over ``t`` of
  ``phi_{t-1}(h, c) + y_t^c``, where ``phi`` = ``r^b + r^n`` (in probability) of ``h``, or ``r^b`` alone
  when ``c`` repeats the last label of ``h`` (a repeat needs a blank in between).

Frames past an input's length are padded as "certain blank" (log-prob 0 for blank, -inf otherwise): paths
then only add blanks there, so prefix and full-sequence probabilities equal those over the true length.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["AlignedToken", "CTCPrefixScorer", "CTCState", "ctc_align", "ctc_greedy"]

_CHUNK = 1 << 22  # elements of one (frames, hypotheses, candidates) block in CTCPrefixScorer.score
_LOG_FLOOR = -1e4  # log-probabilities below this count as this in CTCPrefixScorer.extend


def ctc_greedy(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path CTC decoding: frame-wise argmax, then merge repeats and drop blanks.

    Args:
        log_probs: `(B, T, V)` CTC scores (log-probabilities or logits: only the argmax matters).
        lengths: `(B,)` valid frames per input; later frames are ignored.
        blank: the blank class id.

    Returns:
        One token-id list per input.
    """
    if log_probs.dim() != 3 or lengths.shape != log_probs.shape[:1]:
        raise ValueError(f"expected log_probs (B, T, V) and lengths (B,), got {tuple(log_probs.shape)} "
                         f"and {tuple(lengths.shape)}")
    best = log_probs.argmax(dim=-1)  # (B, T)
    previous = torch.cat([torch.full_like(best[:, :1], -1), best[:, :-1]], dim=1)  # (B, T)
    frames = torch.arange(best.shape[1], device=best.device)
    keep = (best != blank) & (best != previous) & (frames < lengths.to(best.device)[:, None])  # (B, T)
    return [row[mask].tolist() for row, mask in zip(best, keep, strict=True)]


@dataclass(frozen=True)
class CTCState:
    """CTC prefix-scoring state of N hypotheses that share one prefix length (opaque to callers)."""

    r_nonblank: Tensor  # (N, T) log r^n_t(h): frames 0..t give h, last frame non-blank
    r_blank: Tensor  # (N, T) log r^b_t(h): frames 0..t give h, last frame blank
    last: Tensor  # (N,) last label of h, -1 for the empty prefix
    inputs: Tensor  # (N,) the input (row of the CTC log-probs) each hypothesis belongs to
    length: int  # number of labels in h, the same for every row


class CTCPrefixScorer:
    """Batched incremental CTC prefix scores for joint CTC/attention beam search.

    ``score`` rates every candidate token of every hypothesis (the whole vocabulary, or the subset the
    caller passes); it costs O(T·N·C) time per step in a few large tensor operations, with blocks of at
    most ``_CHUNK`` elements. ``extend`` then appends the chosen token of each hypothesis: O(T·N), the
    time recursion solved with cumulative sums (:func:`_accumulate`) rather than a loop over frames.
    The ``<eos>`` candidate gets the full-sequence probability of the prefix, ``<blank>`` gets -inf.
    State rows follow ``reorder`` exactly like the model's state does in beam search.

    Args:
        log_probs: `(B, T, V)` CTC log-probabilities (renormalised with log_softmax here).
        lengths: `(B,)` valid frames per input, 1 ≤ length ≤ T.
        blank: the blank class id.
        eos: the end-of-sequence id of the attention decoder's vocabulary (same ids as the CTC head).
    """

    def __init__(self, log_probs: Tensor, lengths: Tensor, blank: int, eos: int) -> None:
        if log_probs.dim() != 3 or lengths.shape != log_probs.shape[:1]:
            raise ValueError(f"expected log_probs (B, T, V) and lengths (B,), got {tuple(log_probs.shape)} "
                             f"and {tuple(lengths.shape)}")
        batch, frames, vocab = log_probs.shape
        lengths = lengths.to(log_probs.device)
        if bool((lengths < 1).any()) or bool((lengths > frames).any()):
            raise ValueError(f"lengths must lie in [1, {frames}], got {lengths.tolist()}")
        if not (0 <= blank < vocab and 0 <= eos < vocab) or blank == eos:
            raise ValueError(f"blank={blank} and eos={eos} must be distinct ids below V={vocab}")
        padded = torch.arange(frames, device=log_probs.device) >= lengths[:, None]  # (B, T)
        lp = log_probs.detach().float().log_softmax(dim=-1).masked_fill(padded[..., None], -math.inf)
        lp[..., blank] = lp[..., blank].masked_fill(padded, 0.0)  # "certain blank" padding
        self._lp = lp.transpose(1, 2).reshape(batch * vocab, frames)  # (B·V, T): row input·V + k, time last
        self.blank, self.eos, self.vocab_size, self.batch_size = blank, eos, vocab, batch

    def initial_state(self) -> CTCState:
        """The empty prefix for each of the B inputs: `N = B` rows, row i scoring input i."""
        inputs = torch.arange(self.batch_size, device=self._lp.device)
        r_blank = self._lp[inputs * self.vocab_size + self.blank].cumsum(dim=1)  # (B, T)
        r_nonblank = torch.full_like(r_blank, -math.inf)
        return CTCState(r_nonblank, r_blank, torch.full_like(inputs, -1), inputs, 0)

    @staticmethod
    def reorder(state: CTCState, index: Tensor) -> CTCState:
        """Select or duplicate hypotheses. Args: index `(N',)` long rows of ``state``."""
        return CTCState(state.r_nonblank.index_select(0, index), state.r_blank.index_select(0, index),
                        state.last.index_select(0, index), state.inputs.index_select(0, index), state.length)

    def score(self, state: CTCState, candidates: Tensor) -> Tensor:
        """Prefix log-probabilities of every hypothesis extended by each candidate.

        psi(h + c) only needs h's forward variables, so it is one log-sum-exp over frames, vectorised
        over hypotheses and candidates (frames go in chunks of at most ``_CHUNK`` elements).

        Args:
            state: N hypotheses.
            candidates: `(N, C)` token ids.

        Returns:
            `(N, C)` float32: log psi(h + c); for ``c == eos`` the full-sequence log-probability of h;
            -inf for ``c == blank``.
        """
        frames, start = self._lp.shape[1], state.length  # h + c cannot be complete before frame `length`
        psi = torch.full(candidates.shape, -math.inf, device=candidates.device)  # (N, C)
        if start < frames:
            phi_new, phi_repeat = self._phi(state)  # (N, T') each
            columns = state.inputs[:, None] * self.vocab_size + candidates  # (N, C)
            step = max(1, _CHUNK // max(1, candidates.numel()))
            for t in range(start, frames, step):
                y = self._lp[columns, t:t + step]  # (N, C, L)
                chunk = (phi_new[:, None, t - start:t - start + step] + y).logsumexp(dim=-1)  # (N, C)
                psi = torch.logaddexp(psi, chunk)
            last = state.inputs * self.vocab_size + state.last.clamp(min=0)  # (N,); unused when empty
            repeat = (phi_repeat + self._lp[last, start:]).logsumexp(dim=-1)  # (N,) c repeats h's last label
            psi = torch.where(candidates == state.last[:, None], repeat[:, None], psi)
        full = torch.logaddexp(state.r_nonblank[:, -1], state.r_blank[:, -1])  # (N,) padding keeps the total
        psi = torch.where(candidates == self.eos, full[:, None], psi)
        return psi.masked_fill(candidates == self.blank, -math.inf)

    def extend(self, state: CTCState, tokens: Tensor) -> CTCState:
        """Append one token to each hypothesis: the forward variables of h + c over all frames.

        Args:
            state: N hypotheses.
            tokens: `(N,)` the token each one appends.

        Returns:
            The state of the N extended hypotheses.
        """
        frames, start = self._lp.shape[1], state.length
        r_nonblank = torch.full_like(state.r_nonblank, -math.inf)  # (N, T); -inf before frame `start`
        r_blank = r_nonblank.clone()
        if start < frames:
            phi_new, phi_repeat = self._phi(state)
            phi = torch.where((tokens == state.last)[:, None], phi_repeat, phi_new)  # (N, T')
            y = self._lp[state.inputs * self.vocab_size + tokens, start:]  # (N, T')
            y_blank = self._lp[state.inputs * self.vocab_size + self.blank, start:]  # (N, T')
            r_n = _accumulate(phi, y)  # r^n_t = logaddexp(r^n_{t-1}, phi_{t-1}) + y_t^c
            r_n_before = torch.cat([torch.full_like(r_n[:, :1], -math.inf), r_n[:, :-1]], dim=1)
            r_b = _accumulate(r_n_before, y_blank)  # r^b_t = logaddexp(r^b_{t-1}, r^n_{t-1}) + y_t^blank
            r_nonblank[:, start:], r_blank[:, start:] = r_n, r_b
        return CTCState(r_nonblank, r_blank, tokens, state.inputs, state.length + 1)

    @staticmethod
    def _phi(state: CTCState) -> tuple[Tensor, Tensor]:
        """phi_{t-1}(h, c) for frames t = length .. T-1, `(N, T')`: for a new label, and for a repeat of
        h's last label (which needs a blank in between). Before frame 0 the empty prefix has probability 1.
        """
        first = torch.full_like(state.r_blank[:, :1], 0.0 if state.length == 0 else -math.inf)  # (N, 1)
        total = torch.logaddexp(state.r_nonblank, state.r_blank)  # (N, T)
        phi_new = torch.cat([first, total[:, :-1]], dim=1)[:, state.length:]
        phi_repeat = torch.cat([first, state.r_blank[:, :-1]], dim=1)[:, state.length:]
        return phi_new, phi_repeat


def _accumulate(inflow: Tensor, log_gain: Tensor) -> Tensor:
    """Solve x_t = logaddexp(x_{t-1}, inflow_t) + log_gain_t (x before the first frame: -inf) at once.

    In probabilities x_t = G_t · Σ_{s ≤ t} inflow_s / G_{s-1} with G_t = Π_{u ≤ t} gain_u, so one cumulative
    sum and one ``logcumsumexp`` replace a loop over frames. It runs in float64 because log G_t can reach
    -1e4 · T while x_t stays moderate; gains are floored at ``_LOG_FLOOR`` so that G never becomes -inf
    (then -inf - -inf would give NaN), which leaves any probability above e^-10000 exact.

    Args:
        inflow: `(N, L)` log inflow per frame; log_gain: `(N, L)` log factor per frame.

    Returns:
        `(N, L)` float32 x_t.
    """
    gain = log_gain.double().clamp(min=_LOG_FLOOR).cumsum(dim=1)  # (N, L) log G_t
    gain_before = torch.cat([torch.zeros_like(gain[:, :1]), gain[:, :-1]], dim=1)  # log G_{t-1}, G_{-1} = 1
    return (gain + torch.logcumsumexp(inflow.double() - gain_before, dim=1)).float()


class AlignedToken(NamedTuple):
    """One token of a CTC forced alignment: frames ``start`` (inclusive) to ``end`` (exclusive)."""

    token: int
    start: int
    end: int


def ctc_align(log_probs: Tensor, tokens: list[int], blank: int = 0) -> list[AlignedToken]:
    """Frame spans of a known transcript, by CTC forced alignment (Viterbi over the CTC topology).

    Uses ``torchaudio.functional.forced_align`` and ``merge_tokens``; torchaudio is imported here only,
    so the rest of ``recognizers`` does not need it (architecture.md, rule 11).

    Args:
        log_probs: `(T, V)` CTC log-probabilities of one input (valid frames only).
        tokens: the transcript's token ids, without blanks.
        blank: the blank class id.

    Returns:
        One span per token, in order; multiply frames by the encoder's frame duration for seconds.

    Raises:
        ValueError: bad shapes, a blank in ``tokens``, or a transcript that needs more frames than there
            are (each token takes a frame, and equal neighbours need a blank frame between them).
    """
    if log_probs.dim() != 2:
        raise ValueError(f"expected log_probs (T, V), got {tuple(log_probs.shape)}")
    if not tokens:
        return []
    frames, vocab = log_probs.shape
    if blank in tokens or not all(0 <= t < vocab for t in tokens):
        raise ValueError(f"tokens must be non-blank ids below V={vocab}, got {tokens}")
    repeats = sum(a == b for a, b in itertools.pairwise(tokens))
    if len(tokens) + repeats > frames:
        raise ValueError(f"cannot align {len(tokens)} tokens ({repeats} repeated neighbours) to {frames} "
                         f"frames: CTC needs at least {len(tokens) + repeats}")
    import torchaudio.functional as audio_functional  # lazy: only alignment needs torchaudio

    targets = torch.tensor([tokens], dtype=torch.int32)
    labels, scores = audio_functional.forced_align(log_probs.detach().float().cpu()[None], targets,
                                                   blank=blank)  # (1, T) each
    spans = audio_functional.merge_tokens(labels[0], scores[0].exp(), blank=blank)
    return [AlignedToken(span.token, span.start, span.end) for span in spans]
