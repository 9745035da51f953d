"""The handwriting base models, FPHTR and SAR over a ResNet (writer-htr.md §4), as one ``nn.Module``.

:class:`HTRModel` builds the backbone and the decoder that ``HTRConfig.decoder`` names; both decoders
share one interface (``encode``, ``features``, ``logits``, ``init_state``, ``step``), so training,
decoding and writer adaptation never branch on the model kind.

Data flow (B images, T steps, C backbone channels, h×w feature cells, F classifier inputs, V classes)::

    images (B, 1, H, W), mask (B, H, W)
      backbone                        -> feat (B, C, h, w)
      [hook A: feature_hook(feat)     -> (B, C, h, w)]      writer codes adapt the feature map here (§8.3)
      padded cells set to 0, feature mask (B, h, w)
      decoder.encode                  -> memory (FPHTRMemory | SARMemory)
      decoder.features(memory, tgt)   -> h (B, T, F)        the classifier's input h_n (MetaHTR, §7.3)
      decoder.logits(h)               -> logits (B, T, V)   ``classifier`` (SAR: then dropout on logits)

Uses:

* training: ``forward(images, mask, tgt)`` → logits; ``return_features=True`` adds h, so the closed-form
  per-character gradient of the classifier, (softmax(z_n) − onehot(y_n)) h_nᵀ, needs no extra pass;
* MetaHTR: everything is plain ``forward``, so ``torch.func.functional_call(model, (params, buffers),
  (images, mask, tgt), {"return_features": True})`` runs it with adapted parameters (torch ≥ 2.0: the
  LSTM reads its weights from the parameters passed in);
* decoding: ``encode`` once, ``init_state(memory)``, then ``step(tokens, state)`` per token with
  ``state.index_select`` as the reorder of ``recognizers.decoding``. In eval mode the steps reproduce the
  teacher-forced logits; in training mode dropout makes them differ, as in any cached decoder.

Padded feature cells are zeroed before the decoder and masked inside it, so the decoder's output for an
image does not depend on the padding around its feature map. The backbone does see the padded pixels
(normalised background) near an image's bottom/right edge; ``search.encode_images`` avoids even that
by running the backbone on unpadded images.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .backbone import build_backbone, feature_mask
from .config import HTRConfig
from .fphtr import FPHTRDecoder, FPHTRMemory, FPHTRState
from .sar import SARDecoder, SARMemory, SARState

__all__ = ["FeatureHook", "HTRModel", "Memory", "State"]

Memory = FPHTRMemory | SARMemory
State = FPHTRState | SARState
FeatureHook = Callable[[Tensor], Tensor]  # hook A: (B, C, h, w) -> (B, C, h, w)


class HTRModel(nn.Module):
    """FPHTR or SAR on a ResNet18/34/31 backbone.

    Args:
        cfg: the configuration (``config.preset("paper", decoder=..., arch=..., vocab_size=...)``).
    """

    def __init__(self, cfg: HTRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone)
        channels = cfg.backbone.out_channels
        if cfg.decoder == "fphtr":
            self.decoder: FPHTRDecoder | SARDecoder = FPHTRDecoder(cfg.fphtr, channels, cfg.vocab_size,
                                                                   cfg.max_seq_len, cfg.pad_id)
        else:
            self.decoder = SARDecoder(cfg.sar, channels, cfg.vocab_size)

    @property
    def classifier(self) -> nn.Linear:
        """The final Linear(F, V) (MetaHTR's φ; its weight is ``decoder.classifier.weight``)."""
        return self.decoder.classifier

    def feature_map(self, images: Tensor, feature_hook: FeatureHook | None = None) -> Tensor:
        """Backbone, then hook A. Args: images `(B, 1, H, W)` normalised. Returns `(B, C, h, w)`."""
        feat = self.backbone(images)
        return feat if feature_hook is None else feature_hook(feat)

    def feature_mask(self, mask: Tensor) -> Tensor:
        """`(B, H, W)` pixel padding mask → `(B, h, w)` feature padding mask (True on padding)."""
        return feature_mask(mask, self.cfg.backbone.stride)

    def encode_features(self, feat: Tensor, feat_mask: Tensor) -> Memory:
        """Decoder memory from a feature map.

        Args:
            feat: `(B, C, h, w)` (after hook A); padded cells are zeroed here.
            feat_mask: `(B, h, w)` True on padded cells.
        """
        if feat.shape[2:] != feat_mask.shape[1:]:
            raise ValueError(f"feature map {tuple(feat.shape)} and mask {tuple(feat_mask.shape)} disagree")
        feat = feat.masked_fill(feat_mask[:, None], 0.0)  # (B, C, h, w)
        return self.decoder.encode(feat, feat_mask)

    def encode(self, images: Tensor, mask: Tensor, feature_hook: FeatureHook | None = None) -> Memory:
        """Encode a padded batch.

        Args:
            images: `(B, 1, H, W)` normalised, padded with the normalised background
                (``data.handwriting.collate_images``).
            mask: `(B, H, W)` bool, True on padding (bottom/right).
            feature_hook: hook A, applied to the `(B, C, h, w)` feature map; None for none.
        """
        return self.encode_features(self.feature_map(images, feature_hook), self.feature_mask(mask))

    def score(self, memory: Memory, tgt: Tensor, return_features: bool = False
               ) -> Tensor | tuple[Tensor, Tensor]:
        """Teacher-forced logits `(B, T, V)` from an encoded batch (and h `(B, T, F)` if asked)."""
        h = self.decoder.features(memory, tgt)  # type: ignore[arg-type]  (memory matches the decoder)
        logits = self.decoder.logits(h)
        return (logits, h) if return_features else logits

    def forward(self, images: Tensor, mask: Tensor, tgt: Tensor, return_features: bool = False,
                feature_hook: FeatureHook | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Teacher forcing.

        Args:
            images: `(B, 1, H, W)`; mask `(B, H, W)` True on padding.
            tgt: `(B, T)` decoder inputs ``[<sos>] + targets[:-1]`` (``CharVocabulary.targets``).
            return_features: also return h, the classifier's input.
            feature_hook: hook A (see :meth:`encode`).

        Returns:
            logits `(B, T, V)`, or ``(logits, h)`` with h `(B, T, F)` and, in eval mode (or without
            dropout), ``logits == h @ classifier.weight.T + classifier.bias``.
        """
        return self.score(self.encode(images, mask, feature_hook), tgt, return_features)

    def init_state(self, memory: Memory) -> State:
        """Decoding state before the first step, whose input is ``sos_id`` (one row per memory row)."""
        return self.decoder.init_state(memory)  # type: ignore[arg-type]

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """One decoding step. Args: tokens `(N,)` last tokens. Returns logits `(N, V)` and the new state."""
        h, state = self.decoder.step(tokens, state)  # type: ignore[arg-type]
        return self.decoder.logits(h), state

    def step_features(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """As :meth:`step`, but returns the classifier input h `(N, F)` instead of the logits."""
        return self.decoder.step(tokens, state)  # type: ignore[arg-type]
