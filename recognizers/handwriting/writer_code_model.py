"""A frozen base HTR model with a writer-code adapter and its code source (writer-htr.md §8, §11).

:class:`WriterCodeModel` wraps an :class:`~.model.HTRModel`:

* the base is frozen — ``requires_grad`` off, kept in eval mode by :meth:`WriterCodeModel.train`, so
  dropout is off and BatchNorm uses and keeps its running statistics;
* hook A (``injection="feature_mlp"``) passes a :class:`~.writer_codes.FeatureMLP` to the base as its
  ``feature_hook``; hook B (``"cond_bn"``) swaps every backbone ``BatchNorm2d`` for a
  :class:`~.writer_codes.ConditionalBatchNorm2d` (same parameter tensors and ``state_dict`` keys) and
  sets their (Δγ, Δβ) for the duration of each forward pass (:meth:`WriterCodeModel.conditioned`);
* training writers' codes are an ``nn.Embedding`` (learned, N(0, 1) init) or a fixed table of
  normalised Hinge vectors (a buffer), looked up by writer index;
* a new writer gets :meth:`WriterCodeModel.adapt`: a fresh N(0, 1) code, optimised for
  ``CodeAdaptation.steps`` steps (SGD, lr 1e-4, one step by default; Adam as an option) on the
  teacher-forced cross-entropy of the support set, with everything else frozen — gradients are taken
  with respect to the code alone, so no other tensor even gets a ``.grad``. With a Hinge source,
  :meth:`WriterCodeModel.hinge_code` normalises the support set's Hinge PDF instead.

Decoding a writer's words uses the base's own search with the code fixed (:meth:`encode_images`,
:meth:`decode`), so the decoder never branches on adaptation.

Legend: B images, c code size, N training writers, D Hinge dimensions (= c for Hinge codes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import decoding
from .model import FeatureHook, HTRModel, Memory
from .search import decode, encode_images
from .writer_codes import (
    BNModulator,
    CodeAdaptation,
    ConditionalBatchNorm2d,
    FeatureMLP,
    WriterCode,
    WriterCodeConfig,
    condition_batchnorms,
)

__all__ = ["WriterCodeModel"]

_ADAPTATION = CodeAdaptation()  # the §11 default: SGD, lr 1e-4, one step


class WriterCodeModel(nn.Module):
    """Base model + writer-code adapter + code source.

    Args:
        base: the pretrained model; frozen here, and with hook B its backbone BatchNorms are replaced
            in place (same tensors, same ``state_dict`` keys).
        cfg: source, injection and sizes.
        num_writers: N, training writers (rows of the code table).

    Raises:
        ValueError: ``train_projection`` without hook A on FPHTR, or ``num_writers < 1``.
    """

    def __init__(self, base: HTRModel, cfg: WriterCodeConfig, num_writers: int) -> None:
        super().__init__()
        if num_writers < 1:
            raise ValueError(f"num_writers must be >= 1, got {num_writers}")
        self.cfg = cfg
        self.base = base.requires_grad_(False).eval()
        self.feature_mlp: FeatureMLP | None = None
        self.modulators: nn.ModuleList | None = None
        self._conditioned: list[ConditionalBatchNorm2d] = []  # a plain list: they live under base
        if cfg.injection == "feature_mlp":
            self.feature_mlp = FeatureMLP(base.cfg.backbone.out_channels, cfg.code_size, cfg.mlp_hidden)
            if cfg.train_projection:
                if base.cfg.decoder != "fphtr":
                    raise ValueError("train_projection needs the FPHTR decoder (its 1×1 projection)")
                base.decoder.proj.requires_grad_(True)
        else:
            if cfg.train_projection:
                raise ValueError("train_projection goes with hook A (injection='feature_mlp')")
            self._conditioned = [layer for _, layer in condition_batchnorms(base.backbone)]
            self.modulators = nn.ModuleList(BNModulator(cfg.code_size, layer.num_features, cfg.bn_hidden)
                                            for layer in self._conditioned)
        if cfg.source == "learned":
            self.codes = nn.Embedding(num_writers, cfg.code_size)
            nn.init.normal_(self.codes.weight)  # N(0, 1), as new writers' codes start
        else:
            self.register_buffer("hinge_table", torch.zeros(num_writers, cfg.code_size))  # (N, D) z-scores
            self.register_buffer("hinge_mean", torch.zeros(cfg.code_size))  # (D,) of the normaliser
            self.register_buffer("hinge_std", torch.ones(cfg.code_size))  # (D,)

    # ----- structure ---------------------------------------------------------------------------
    @property
    def code_size(self) -> int:
        return self.cfg.code_size

    @property
    def num_writers(self) -> int:
        table = self.codes.weight if self.cfg.source == "learned" else self.hinge_table
        return int(table.shape[0])

    def train(self, mode: bool = True) -> WriterCodeModel:
        """Set the adapter's mode; the base always stays in eval mode (frozen, BN statistics too)."""
        super().train(mode)
        self.base.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapter, the learned code table and (if configured) FPHTR's projection."""
        return [p for p in self.parameters() if p.requires_grad]

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """Every tensor that is not the base's, plus the projection when it is trained."""
        trained_base = ("base.decoder.proj.",) if self.cfg.train_projection else ()
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith("base.") or k.startswith(trained_base)}

    def set_hinge(self, table: np.ndarray | Tensor, mean: np.ndarray | Tensor,
                  std: np.ndarray | Tensor) -> None:
        """Install the training writers' normalised Hinge codes `(N, D)` and the normaliser's mean and
        std `(D,)` (``data.hinge.HingeNormalizer``)."""
        if self.cfg.source != "hinge":
            raise ValueError("set_hinge needs source='hinge'")
        for name, value in (("hinge_table", table), ("hinge_mean", mean), ("hinge_std", std)):
            buffer = getattr(self, name)
            value = (value if isinstance(value, Tensor) else torch.from_numpy(np.asarray(value))).to(buffer)
            if value.shape != buffer.shape:
                raise ValueError(f"{name}: expected shape {tuple(buffer.shape)}, got {tuple(value.shape)}")
            buffer.copy_(value)

    # ----- codes -------------------------------------------------------------------------------
    def writer_codes(self, writers: Tensor) -> Tensor:
        """Codes of training writers: indices `(B,)` → `(B, c)`."""
        if self.cfg.source == "learned":
            return self.codes(writers)
        return self.hinge_table[writers]

    def new_code(self, generator: torch.Generator | None = None) -> Tensor:
        """A fresh N(0, 1) code `(c,)` (CPU draw, so a seeded generator gives the same code anywhere)."""
        code = torch.randn(self.code_size, generator=generator)
        return code.to(self._device)

    def hinge_code(self, pdf: np.ndarray | Tensor, **metadata: object) -> WriterCode:
        """A new writer's Hinge code: its support set's PDF `(D,)` normalised with the training z-scores."""
        if self.cfg.source != "hinge":
            raise ValueError("hinge_code needs source='hinge'")
        pdf = pdf if isinstance(pdf, Tensor) else torch.from_numpy(np.asarray(pdf))
        pdf = pdf.to(self.hinge_mean)
        if pdf.shape != self.hinge_mean.shape:
            raise ValueError(f"expected a ({self.code_size},) Hinge PDF, got {tuple(pdf.shape)}")
        code = (pdf - self.hinge_mean) / self.hinge_std  # (D,)
        return WriterCode.from_tensor(code, "hinge", **self._facts(), **metadata)

    @property
    def _device(self) -> torch.device:
        return next(self.base.parameters()).device

    def _facts(self) -> dict[str, object]:
        return {"injection": self.cfg.injection, "source": self.cfg.source, "code_size": self.code_size}

    # ----- conditioning ------------------------------------------------------------------------
    def modulations(self, codes: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Hook B: (Δγ, Δβ), each `(B, C_l)`, for every conditioned BatchNorm l; codes `(B, c)`."""
        if self.modulators is None:
            raise ValueError("modulations exist with hook B (injection='cond_bn') only")
        return [modulator(codes) for modulator in self.modulators]

    @contextmanager
    def conditioned(self, codes: Tensor) -> Iterator[None]:
        """Within the block, the backbone runs with these codes `(B, c)` (or `(1, c)` for one writer)."""
        if codes.dim() != 2 or codes.shape[1] != self.code_size:
            raise ValueError(f"expected (B, {self.code_size}) codes, got {tuple(codes.shape)}")
        if self.modulators is None:
            yield
            return
        try:
            for layer, shift in zip(self._conditioned, self.modulations(codes), strict=True):
                layer.modulation = shift
            yield
        finally:
            for layer in self._conditioned:
                layer.modulation = None

    def feature_hook(self, codes: Tensor) -> FeatureHook | None:
        """Hook A bound to these codes `(B, c)`; None with hook B."""
        return None if self.feature_mlp is None else partial(self.feature_mlp, code=codes)

    # ----- forward and decoding ----------------------------------------------------------------
    def encode(self, images: Tensor, mask: Tensor, codes: Tensor) -> Memory:
        """``HTRModel.encode`` with the writers' codes. Args: images `(B, 1, H, W)`, mask `(B, H, W)`,
        codes `(B, c)` or `(1, c)`."""
        with self.conditioned(codes):
            return self.base.encode(images, mask, self.feature_hook(codes))

    def forward(self, images: Tensor, mask: Tensor, tgt: Tensor, codes: Tensor,
                return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Teacher forcing with writer codes.

        Args:
            images: `(B, 1, H, W)`; mask `(B, H, W)` True on padding.
            tgt: `(B, T)` decoder inputs.
            codes: `(B, c)`, or `(1, c)` for one writer's batch.
            return_features: also return the classifier input h `(B, T, F)`.

        Returns:
            logits `(B, T, V)` (and h).
        """
        return self.base.score(self.encode(images, mask, codes), tgt, return_features)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Tensor], code: Tensor) -> Memory:
        """``search.encode_images`` (no pixel padding) for one writer's images `(1, H_b, W_b)`; code
        `(c,)` or `(1, c)`."""
        code = code.reshape(1, -1)
        with self.conditioned(code):
            return encode_images(self.base, images, self.feature_hook(code))

    @torch.no_grad()
    def decode(self, images: Sequence[Tensor], code: Tensor,
               options: decoding.DecodingOptions | None = None) -> list[list[decoding.Hypothesis]]:
        """Greedy (default) or beam search over one writer's images with its code `(c,)`."""
        return decode(self.base, self.encode_images(images, code), options)

    # ----- new-writer adaptation ---------------------------------------------------------------
    def support_loss(self, code: Tensor, images: Tensor, mask: Tensor, inputs: Tensor,
                     targets: Tensor) -> Tensor:
        """Mean teacher-forced cross-entropy over the support set's non-pad targets (§4) for one code
        `(c,)`. Args: images `(K, 1, H, W)`, mask `(K, H, W)`, inputs and targets `(K, T)`."""
        logits = self(images, mask, inputs, code.reshape(1, -1))  # (K, T, V)
        return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=self.base.cfg.pad_id)

    def fit_code(self, code: Tensor, images: Tensor, mask: Tensor, inputs: Tensor, targets: Tensor,
                 adaptation: CodeAdaptation = _ADAPTATION) -> Tensor:
        """Optimise one code `(c,)` on a support set (arguments of :meth:`support_loss`); nothing else
        changes or receives a gradient. Returns the new code `(c,)` (detached); the input is untouched.

        Raises:
            RuntimeError: called under ``torch.inference_mode`` (Lightning validation needs
                ``Trainer(inference_mode=False)``, §7.3).
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError("writer-code adaptation needs gradients: run it outside torch.inference_mode "
                               "(Lightning: Trainer(inference_mode=False))")
        code = code.detach().clone().to(self._device).requires_grad_(True)
        if adaptation.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD([code], lr=adaptation.lr)
        else:
            optimizer = torch.optim.Adam([code], lr=adaptation.lr)
        with torch.enable_grad():
            for _ in range(adaptation.steps):
                loss = self.support_loss(code, images, mask, inputs, targets)
                (code.grad,) = torch.autograd.grad(loss, [code])  # w.r.t. the code only
                optimizer.step()
        return code.detach()

    def adapt(self, images: Tensor, mask: Tensor, inputs: Tensor, targets: Tensor,
              adaptation: CodeAdaptation = _ADAPTATION, generator: torch.Generator | None = None,
              **metadata: object) -> WriterCode:
        """A new writer's learned code: N(0, 1), then :meth:`fit_code` on its support set.

        Args:
            images: `(K, 1, H, W)` support images (``data.handwriting.collate_images``); mask `(K, H, W)`.
            inputs: `(K, T)` teacher-forcing inputs; targets `(K, T)` (``CharVocabulary.targets``).
            adaptation: steps, lr, optimiser; ``steps=0`` gives the random-code control.
            generator: seeds the N(0, 1) draw.
            metadata: extra facts stored in the result (writer id, seed ...).

        Returns:
            The code, method "learned" (or "random" with 0 steps).
        """
        code = self.fit_code(self.new_code(generator), images, mask, inputs, targets, adaptation)
        method = "learned" if adaptation.steps > 0 else "random"
        return WriterCode.from_tensor(code, method, **self._facts(), steps=adaptation.steps, lr=adaptation.lr,
                                      optimizer=adaptation.optimizer, support=int(images.shape[0]),
                                      **metadata)
