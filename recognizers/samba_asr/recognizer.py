"""The speech recognizer bundle: audio → log-Mel → Samba-ASR → search → text with word times.

Pipeline per batch (torchaudio ``RNNTBundle`` pattern): ``data.audio.load_audio`` (any rate and channel
count to 16 kHz mono), long inputs cut into windows at quiet points, ``log_mel``, the model's encoder,
then greedy decoding (beam 1) or joint CTC/attention beam search (``recognizers.decoding``), and word
timestamps from CTC forced alignment of the chosen hypothesis (40 ms encoder frames).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from data.audio import HOP_LENGTH, MAX_SECONDS, SAMPLE_RATE, AudioError, load_audio, log_mel
from data.tokenizer import SentencePieceTokenizer

from .. import decoding
from ..base import InputError, Recognizer, Result, Word
from ..checkpoint import Bundle, CheckpointError, load_weights
from ..registry import ALIASES
from .config import SambaASRConfig
from .model import SambaASR

__all__ = ["SambaASRRecognizer", "bundle_tokenizer", "split_windows"]

FRAME_SECONDS = 4 * HOP_LENGTH / SAMPLE_RATE  # one encoder frame: 4 feature hops = 40 ms


def split_windows(wave: torch.Tensor, max_seconds: float,
                  search_seconds: float = 5.0) -> list[tuple[int, int]]:
    """Cut a long waveform into windows of at most ``max_seconds``, each ending at the quietest 100 ms
    of its last ``search_seconds`` (so cuts fall between words where possible).

    Args: wave `(T,)` 16 kHz. Returns: (start, end) sample ranges covering the waveform in order.
    """
    limit, search, hop = int(max_seconds * SAMPLE_RATE), int(search_seconds * SAMPLE_RATE), SAMPLE_RATE // 10
    spans, start = [], 0
    while wave.numel() - start > limit:
        lo = start + max(hop, limit - search)
        energy = wave[lo : start + limit].square()
        frames = energy[: energy.numel() // hop * hop].view(-1, hop).mean(1)  # (frames,) 100 ms energies
        cut = lo + int(frames.argmin()) * hop + hop // 2 if frames.numel() else start + limit
        spans.append((start, cut))
        start = cut
    spans.append((start, wave.numel()))
    return spans


def bundle_tokenizer(bundle: Bundle) -> SentencePieceTokenizer:
    """The sentencepiece tokenizer stored in a Samba-ASR bundle.

    Raises:
        CheckpointError: another model's bundle, no tokenizer in it, or an unreadable one.
    """
    if ALIASES.get(bundle.model, bundle.model) != SambaASRRecognizer.name:
        raise CheckpointError(f"a {bundle.model!r} model file, not a Samba-ASR one")
    if "tokenizer" not in bundle.extras:
        raise CheckpointError("Samba-ASR model file without its tokenizer (metadata 'recognizers.tokenizer')")
    try:
        return SentencePieceTokenizer.from_base64(bundle.extras["tokenizer"])
    except ValueError as exc:
        raise CheckpointError(f"Samba-ASR tokenizer unusable: {exc}") from exc


class SambaASRRecognizer(Recognizer):
    """Speech to text with Samba-ASR.

    Args:
        model: the network (eval mode is set here).
        tokenizer: the sentencepiece model it was trained with.
        device: where to run.
        window_seconds: longer inputs are recognised in windows of at most this length.
        batch_seconds: padded seconds of audio per forward pass.
        max_seconds: longest accepted input (``data.audio.MAX_SECONDS``, 30 minutes, by default);
            anything up to it is recognised window by window.
    """

    name = "samba-asr"
    task = "speech"

    def __init__(self, model: SambaASR, tokenizer: SentencePieceTokenizer, device: torch.device | str = "cpu",
                 window_seconds: float = 25.0, batch_seconds: float = 240.0,
                 max_seconds: float = MAX_SECONDS) -> None:
        if tokenizer.vocab_size != model.cfg.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} pieces, the model {model.cfg.vocab_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.window_seconds, self.batch_seconds = window_seconds, batch_seconds
        self.max_seconds = max_seconds

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device | str = "cpu") -> SambaASRRecognizer:
        """Build from ``recognizers.checkpoint.read_bundle`` output (strict weight loading)."""
        tokenizer = bundle_tokenizer(bundle)
        try:
            model = SambaASR(SambaASRConfig.from_dict(bundle.config))
        except (TypeError, KeyError, ValueError) as exc:  # unknown/missing config keys or bad values
            raise CheckpointError(f"Samba-ASR config unusable: {exc!r}") from exc
        if tokenizer.vocab_size != model.cfg.vocab_size:
            raise CheckpointError(f"Samba-ASR model file: its tokenizer has {tokenizer.vocab_size} pieces, "
                                  f"its config vocab_size is {model.cfg.vocab_size}")
        load_weights(model, bundle.state_dict, "Samba-ASR")
        return cls(model, tokenizer, device)

    def load_input(self, source: Any) -> torch.Tensor:
        """Any audio soundfile reads (path), or samples at 16 kHz → `(T,)` float32 16 kHz mono.
        Samples are checked too (empty, silent, NaN), not only files."""
        try:
            return load_audio(source, max_seconds=self.max_seconds)
        except AudioError as exc:
            raise InputError(str(exc)) from exc

    @torch.no_grad()
    def recognize(self, inputs: Sequence[Any], *, beam_size: int = 4, nbest: int = 1, ctc_weight: float = 0.3,
                  length_penalty: float = 0.0, num_groups: int = 1, diversity_penalty: float = 0.0,
                  timestamps: bool = True) -> list[Result]:
        """Recognise a batch of audio inputs.

        Args:
            inputs: paths, or `(T,)` waveforms at 16 kHz (tensors or arrays).
            beam_size: 1 = greedy (one hypothesis, still scored jointly with CTC when ctc_weight > 0);
                more = joint CTC/attention beam search.
            nbest: hypotheses per input in ``Result.nbest``; the beam widens to at least ``nbest``.
            ctc_weight: λ of the joint score (0 = attention only; ignored without a CTC head).
            length_penalty: exponent α of the length normalisation of final scores.
            num_groups, diversity_penalty: diverse beam search for the n-best list.
            timestamps: add word times from CTC forced alignment.

        Returns:
            One ``Result`` per input, in order.
        """
        waves = [self.load_input(x) for x in inputs]
        windows = [(i, a, b) for i, w in enumerate(waves) for a, b in split_windows(w, self.window_seconds)]
        cfg = self.model.cfg
        options = decoding.DecodingOptions(
            beam_size=max(beam_size, nbest), nbest=max(1, nbest), max_length=None, max_length_ratio=1.5,
            ctc_weight=ctc_weight if self.model.ctc_head is not None else 0.0, length_penalty=length_penalty,
            num_groups=num_groups, diversity_penalty=diversity_penalty,
            suppress_tokens=(cfg.blank_id, cfg.sos_id))
        decoded: dict[tuple[int, int], tuple[list, list[Word]]] = {}
        for batch in self._batches(windows):
            clips = [waves[i][a:b] for i, a, b in batch]
            for (i, a, b), hyps, words in zip(batch, *self._decode(clips, options, timestamps), strict=True):
                # the last encoder frame reaches past the clip's end: clamp, so times stay inside the audio
                # and the next window's words never start before this one's end
                offset, length = a / SAMPLE_RATE, (b - a) / SAMPLE_RATE
                decoded[(i, a)] = (hyps, [
                    Word(w.text, offset + min(w.start, length), offset + min(w.end, length)) for w in words])
        return [self._result([decoded[(i, a)] for j, a, _ in windows if j == i]) for i in range(len(waves))]

    def _batches(self, windows: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
        """Windows sorted by length, cut into batches under the padded-seconds budget."""
        order = sorted(windows, key=lambda w: w[2] - w[1])
        batches, current = [], []
        for w in order:
            if current and (len(current) + 1) * (w[2] - w[1]) / SAMPLE_RATE > self.batch_seconds:
                batches.append(current)
                current = []
            current.append(w)
        return [*batches, current] if current else batches

    def _decode(self, clips: list[torch.Tensor], options: decoding.DecodingOptions, timestamps: bool):
        """Search over one batch of clips. Returns per clip: hypotheses (best first) and words."""
        model = self.model
        feats = [log_mel(c.to(self.device)) for c in clips]
        lengths = torch.tensor([f.shape[-1] for f in feats], device=self.device)
        batch = torch.zeros(len(feats), feats[0].shape[0], int(lengths.max()), device=self.device)
        for k, f in enumerate(feats):
            batch[k, :, : f.shape[-1]] = f
        encoded, enc_lengths = model.encode(batch, lengths)
        ctc = model.ctc_log_probs(encoded) if model.ctc_head is not None else None
        scorer = (decoding.CTCPrefixScorer(ctc, enc_lengths, model.cfg.blank_id, model.cfg.eos_id)
                  if ctc is not None and options.ctc_weight > 0 else None)
        hyps = decoding.search(
            model.step, model.init_state(encoded, enc_lengths), lambda s, idx: s.index_select(idx),
            batch_size=len(clips), sos_id=model.cfg.sos_id, eos_id=model.cfg.eos_id, options=options,
            lengths=enc_lengths, ctc=scorer, device=self.device)
        words = [self._words(ctc[k, : enc_lengths[k]], h[0].tokens) if timestamps and ctc is not None and h
                 else [] for k, h in enumerate(hyps)]
        return hyps, words

    def _words(self, log_probs: torch.Tensor, tokens: Sequence[int]) -> list[Word]:
        """Word spans from CTC forced alignment: a piece starting with '▁' begins a new word."""
        if not tokens:
            return []
        try:
            spans = decoding.ctc_align(log_probs.cpu(), list(tokens), blank=self.model.cfg.blank_id)
        except ValueError:  # more tokens than frames allow: no times rather than no text
            return []
        words: list[list] = []
        for token, start, end in spans:
            piece = self.tokenizer.id_to_piece(token)
            if piece.startswith("▁") or not words:
                words.append([piece.lstrip("▁"), start, end])
            else:
                words[-1][0] += piece
                words[-1][2] = end
        return [Word(text, start * FRAME_SECONDS, end * FRAME_SECONDS)  # spans end exclusive
                for text, start, end in words if text]

    def _result(self, parts: list[tuple[list, list[Word]]]) -> Result:
        """Join the windows of one input: texts and scores add up. An input of one window keeps its
        n-best list; a windowed input gets only the joined best hypothesis (combining per-window
        alternatives into whole-input alternatives is not implemented)."""
        texts = [self.tokenizer.decode(list(h[0].tokens)).strip() if h else "" for h, _ in parts]
        score = sum(h[0].score for h, _ in parts if h)
        words = tuple(w for _, ws in parts for w in ws)
        if len(parts) == 1:
            nbest = tuple((self.tokenizer.decode(list(h.tokens)).strip(), h.score) for h in parts[0][0])
        else:
            nbest = ((" ".join(t for t in texts if t), score),)
        return Result(" ".join(t for t in texts if t), score, nbest, words)
