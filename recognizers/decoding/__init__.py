"""Model-agnostic decoding shared by the recognizers: greedy and beam search over a step function, CTC.

``options`` holds the frozen settings and results, ``search`` greedy and (diverse, CTC-joint) beam search
with the step/reorder contract, ``ctc`` best-path CTC, the incremental CTC prefix scorer and forced
alignment. None of them imports model code.
"""

from .ctc import AlignedToken, CTCPrefixScorer, CTCState, ctc_align, ctc_greedy
from .options import DecodingOptions, Hypothesis, LogitFilter, SuppressTokens
from .search import ReorderFn, StepFn, beam_search, greedy_search, search

__all__ = [
    "AlignedToken",
    "CTCPrefixScorer",
    "CTCState",
    "DecodingOptions",
    "Hypothesis",
    "LogitFilter",
    "ReorderFn",
    "StepFn",
    "SuppressTokens",
    "beam_search",
    "ctc_align",
    "ctc_greedy",
    "greedy_search",
    "search",
]
