"""Samba-ASR: a Mamba encoder and a Mamba decoder with no attention anywhere (samba-asr.md §0–§5).

Shakhadri et al.'s Samba-ASR (arXiv 2501.02832) gives the topology only; the concrete design follows the
spec's recommended reading, which is ConMamba's encoder-decoder (Speech Slytherin, arXiv 2407.09732):

* front end: two Conv2d(3×3, stride 2, padding 1) + ReLU over the log-Mel image, then a Linear to
  d_model, so 4x fewer frames (length rule T' = ⌈⌈T/2⌉/2⌉ = (T + 3) // 4);
* encoder: pre-norm blocks x ← x + BiMamba(LN x); x ← x + FFN(LN x), then LN; a CTC head on top;
* decoder ("Mamba cross-connection" = CrossMamba, §5 option A), per layer:
  y ← y + Mamba_self(LN y); y ← y + Mamba_cross([memory ; LN y])[:, −U:]; y ← y + FFN(LN y),
  then LN and a Linear to the vocabulary. The memory is LN(encoder output), **left-aligned** in the
  batch: padded memory frames come first and are identity steps of the scan (mask: Δ = 0 and zero conv
  input), so the text tokens always follow the last real audio frame directly, as they would without
  padding. (Right padding would put padded frames between the audio and the text, and the mask alone
  would not hide them from the conv window; ConMamba's code ignores the memory mask altogether.)

Recurrent decoding: ``init_state(memory)`` prefills every layer's CrossMamba over the memory once; then
``step(tokens, state)`` costs O(1) per token (the state is O(D·(N + K)) per layer and hypothesis).

Legend: B batch, T feature frames, T' encoder frames, U tokens, d d_model, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from data.audio import GlobalCMVN

from ..layers import Dropout
from .config import SambaASRConfig
from .mamba import BiMamba, Mamba, MambaState, rescale_out_proj_

__all__ = ["DecoderState", "SambaASR", "lengths_to_mask", "subsampled_lengths"]


def lengths_to_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """`(B,)` lengths → `(B, length)` bool mask, True at valid (right-padded) steps."""
    return torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Encoder frames for `lengths` feature frames: ⌈⌈T/2⌉/2⌉ (two stride-2 convs with padding 1)."""
    return (lengths + 3) // 4


class ConvSubsampling(nn.Module):
    """4x time subsampling of log-Mel features. Padded frames are zeroed after each conv, so every
    utterance's output equals its output without batch padding."""

    def __init__(self, n_mels: int, channels: int, d_model: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        freq = (n_mels + 1) // 2
        freq = (freq + 1) // 2
        self.out = nn.Linear(channels * freq, d_model)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: feats `(B, n_mels, T)` zero beyond `lengths` `(B,)`. Returns: `(B, T', d)`, `(B,)`."""
        x = feats.unsqueeze(1)  # (B, 1, F, T)
        for conv in (self.conv1, self.conv2):
            x = F.relu(conv(x))  # (B, C, F/2, T/2)
            lengths = (lengths + 1) // 2
            x = x * lengths_to_mask(lengths, x.shape[-1])[:, None, None, :].to(x.dtype)
        x = x.permute(0, 3, 1, 2).flatten(2)  # (B, T', C·F')
        return self.out(x), lengths


class FeedForward(nn.Module):
    """Linear → SiLU → dropout → Linear (the residual branch's second half)."""

    def __init__(self, d_model: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, mult * d_model)
        self.fc2 = nn.Linear(mult * d_model, d_model)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.silu(self.fc1(x))))


class EncoderBlock(nn.Module):
    """x ← x + BiMamba(LN x); x ← x + FFN(LN x)."""

    def __init__(self, cfg: SambaASRConfig) -> None:
        super().__init__()
        self.norm_mix = nn.LayerNorm(cfg.d_model)
        self.mixer = BiMamba(cfg.mixer)
        self.norm_ffn = nn.LayerNorm(cfg.d_model) if cfg.ffn_mult else None
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_mult, cfg.dropout) if cfg.ffn_mult else None
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: x `(B, T', d)`, mask `(B, T')`. Returns: `(B, T', d)`."""
        x = x + self.drop(self.mixer(self.norm_mix(x), mask))
        if self.ffn is not None:
            x = x + self.drop(self.ffn(self.norm_ffn(x)))
        return x


@dataclass(frozen=True)
class LayerState:
    """Recurrent state of one decoder layer."""

    self_mix: MambaState  # the text-only Mamba
    cross_mix: MambaState  # the CrossMamba, prefilled over the memory


@dataclass(frozen=True)
class DecoderState:
    """Recurrent state of the whole decoder: constant size whatever the decoded length."""

    layers: tuple[LayerState, ...]

    def index_select(self, index: torch.Tensor) -> DecoderState:
        """Select or duplicate hypotheses (beam search). Args: index `(N',)` long."""
        return DecoderState(tuple(LayerState(s.self_mix.index_select(index), s.cross_mix.index_select(index))
                                  for s in self.layers))


class DecoderLayer(nn.Module):
    """y ← y + Mamba(LN y); y ← y + CrossMamba([memory ; LN y])[:, −U:]; y ← y + FFN(LN y)."""

    def __init__(self, cfg: SambaASRConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm_self, self.self_mix = nn.LayerNorm(d), Mamba(cfg.mixer)
        self.norm_cross, self.cross_mix = nn.LayerNorm(d), Mamba(cfg.mixer)
        self.norm_ffn = nn.LayerNorm(d) if cfg.ffn_mult else None
        self.ffn = FeedForward(d, cfg.ffn_mult, cfg.dropout) if cfg.ffn_mult else None
        self.drop = Dropout(cfg.dropout)

    def forward(self, y: torch.Tensor, text_mask: torch.Tensor, memory: torch.Tensor,
                memory_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced layer. Args: y `(B, U, d)`, text_mask `(B, U)`, memory `(B, T', d)`
        left-aligned with memory_mask `(B, T')`. Returns: `(B, U, d)`."""
        y = y + self.drop(self.self_mix(self.norm_self(y), text_mask))
        joint = torch.cat([memory, self.norm_cross(y)], dim=1)  # (B, T' + U, d)
        joint_mask = torch.cat([memory_mask, text_mask], dim=1)
        y = y + self.drop(self.cross_mix(joint, joint_mask)[:, memory.shape[1]:])
        if self.ffn is not None:
            y = y + self.drop(self.ffn(self.norm_ffn(y)))
        return y

    def init_state(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> LayerState:
        """Prefill the CrossMamba over the left-aligned memory `(B, T', d)`; the self-Mamba starts at 0."""
        _, cross = self.cross_mix.prefill(memory, memory_mask)
        return LayerState(self.self_mix.init_state(memory.shape[0], memory.device), cross)

    def step(self, y: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """One token. Args: y `(N, d)`. Returns: `(N, d)` and the new state."""
        out, self_state = self.self_mix.step(self.norm_self(y), state.self_mix)
        y = y + out
        out, cross_state = self.cross_mix.step(self.norm_cross(y), state.cross_mix)
        y = y + out
        if self.ffn is not None:
            y = y + self.ffn(self.norm_ffn(y))
        return y, LayerState(self_state, cross_state)


def left_align(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each right-padded sequence to the end of the time axis.

    Args: x `(B, T, d)`, lengths `(B,)`. Returns: `(B, T, d)` zero at the (now leading) padded
    steps, and its mask `(B, T)`."""
    length = x.shape[1]
    src = torch.arange(length, device=x.device)[None, :] - (length - lengths)[:, None]  # (B, T)
    mask = src >= 0
    gathered = x.gather(1, src.clamp(min=0)[..., None].expand(-1, -1, x.shape[-1]))
    return gathered * mask[..., None].to(x.dtype), mask


class SambaASR(nn.Module):
    """The speech recognizer network: ``encode`` audio features, score with the CTC head and the
    decoder (teacher-forced ``forward``), or decode token by token with ``init_state`` + ``step``.

    Features are raw log-Mel (``data.audio.log_mel``); the global CMVN statistics are buffers of this
    module, so they travel with the weights.
    """

    def __init__(self, cfg: SambaASRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, V = cfg.d_model, cfg.vocab_size
        self.cmvn = GlobalCMVN(cfg.n_mels)
        self.subsample = ConvSubsampling(cfg.n_mels, cfg.subsample_channels, d)
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.encoder_layers))
        self.encoder_norm = nn.LayerNorm(d)
        self.ctc_head = nn.Linear(d, V) if cfg.ctc else None
        self.memory_norm = nn.LayerNorm(d)
        self.embed = nn.Embedding(V, d)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, V)
        self.drop = Dropout(cfg.dropout)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """samba-asr.md §3.3: Linear biases 0 (the Δ bias excepted), embeddings N(0, 0.02), and the
        prenorm residual rescale of every branch's last projection."""
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.embed.weight, std=0.02)
        ffn = 1 if self.cfg.ffn_mult else 0
        for stack, residuals in ((self.encoder, 1 + ffn), (self.decoder, 2 + ffn)):
            rescale_out_proj_(stack, len(stack), residuals)
            for m in stack.modules():
                if isinstance(m, FeedForward):
                    nn.init.kaiming_uniform_(m.fc2.weight, a=math.sqrt(5))
                    m.fc2.weight /= math.sqrt(residuals * len(stack))

    def encode(self, feats: torch.Tensor, lengths: torch.Tensor,
               augment: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder forward.

        Args:
            feats: `(B, n_mels, T)` raw log-Mel features (any values beyond `lengths`).
            lengths: `(B,)` valid frames.
            augment: optional ``(normalised feats, lengths) -> feats`` (SpecAugment in training).

        Returns:
            `(B, T', d)` encoder output (after its final LayerNorm) and `(B,)` lengths T'.
        """
        x = self.cmvn(feats) * lengths_to_mask(lengths, feats.shape[-1])[:, None, :].to(feats.dtype)
        if augment is not None:
            x = augment(x, lengths)
        x, lengths = self.subsample(x, lengths)  # (B, T', d)
        x = self.drop(x)
        mask = lengths_to_mask(lengths, x.shape[1])
        for block in self.encoder:
            x = block(x, mask)
        return self.encoder_norm(x), lengths

    def ctc_log_probs(self, encoded: torch.Tensor) -> torch.Tensor:
        """`(B, T', d)` → `(B, T', V)` log-probabilities of the CTC head (float32)."""
        if self.ctc_head is None:
            raise RuntimeError("this Samba-ASR model has no CTC head (config.ctc = False)")
        return F.log_softmax(self.ctc_head(encoded).float(), dim=-1)

    def _memory(self, encoded: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return left_align(self.memory_norm(encoded), lengths)

    def decode(self, tokens: torch.Tensor, token_lengths: torch.Tensor, encoded: torch.Tensor,
               lengths: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder.

        Args:
            tokens: `(B, U)` decoder inputs (``<sos>`` then the transcript), right-padded.
            token_lengths: `(B,)` valid inputs.
            encoded, lengths: the output of ``encode``.

        Returns:
            `(B, U, V)` logits for the next token at every position.
        """
        memory, memory_mask = self._memory(encoded, lengths)
        text_mask = lengths_to_mask(token_lengths, tokens.shape[1])
        y = self.drop(self.embed(tokens))  # (B, U, d)
        for layer in self.decoder:
            y = layer(y, text_mask, memory, memory_mask)
        return self.out_proj(self.decoder_norm(y))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor,
                token_lengths: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Teacher forcing for training: returns CTC log-probs `(B, T', V)` (None without a CTC head),
        encoder lengths `(B,)` and decoder logits `(B, U, V)`."""
        encoded, enc_lengths = self.encode(feats, lengths)
        ctc = self.ctc_log_probs(encoded) if self.ctc_head is not None else None
        return ctc, enc_lengths, self.decode(tokens, token_lengths, encoded, enc_lengths)

    def init_state(self, encoded: torch.Tensor, lengths: torch.Tensor) -> DecoderState:
        """Decoder state for `(B, T', d)` encoder outputs: each layer's CrossMamba prefilled once."""
        memory, memory_mask = self._memory(encoded, lengths)
        return DecoderState(tuple(layer.init_state(memory, memory_mask) for layer in self.decoder))

    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """One decoding step. Args: tokens `(N,)` last tokens. Returns: logits `(N, V)`, new state."""
        y = self.embed(tokens)  # (N, d)
        new = []
        for layer, layer_state in zip(self.decoder, state.layers, strict=True):
            y, layer_state = layer.step(y, layer_state)
            new.append(layer_state)
        return self.out_proj(self.decoder_norm(y)), DecoderState(tuple(new))
