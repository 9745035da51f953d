"""LightningModule for PosFormer: bidirectional teacher forcing with position-forest targets, SGD with a
plateau schedule on the validation ExpRate, corpus-level ExpRate and ≤1/≤2/≤3 in validation
(posformer.md §5, §7, §9, §13 T1).

Loss (§5): ``L = (w_sym·L_sym + w_lvl·L_lvl + w_rel·L_rel) / normaliser`` (defaults 1, 0.25, 0.25, 1.5)
over the l2r and r2l rows of each batch. Logged: ``train_loss`` (the total), ``train_loss_sym``,
``train_loss_layernum`` (level) and ``train_loss_pos`` (relative position), as in the reference.

Validation decodes greedily left to right (cheap; users get the bidirectional beam search of §6), so
``val_exprate`` usually lies below the beam-search ExpRate the paper reports. The counts are summed over
DDP ranks before the rates are logged, on every rank (so that callbacks and the plateau scheduler can
monitor them everywhere).

The vocabulary is the fixed CROHME one (``data.vocab.crohme_vocab``); checkpoints carry it as JSON next to
the model config, under ``checkpoint["recognizers"]``, so ``recognizers export`` needs nothing else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable

from data.vocab import crohme_vocab
from recognizers.posformer.config import PosFormerConfig, preset, resolve_ids
from recognizers.posformer.loss import LossWeights, PosFormerLoss, posformer_loss
from recognizers.posformer.model import PosFormer
from recognizers.posformer.tree import (
    MalformedLatexError,
    PositionLabels,
    bidirectional_targets,
    label_positions,
)

from .metrics import expression_rate
from .schedules import lr_factor

__all__ = ["PosFormerModule", "merge_overrides"]

log = logging.getLogger(__name__)

_CHOICES = {"schedule": ("plateau", "noam", "cosine", "constant"), "on_malformed": ("flat", "raise"),
            "position_stop": ("eos", "ignore")}
_RATES = ("exprate", "le1", "le2", "le3")


def merge_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, nested dicts key by key (``{"decoder": {"d_model": 64}}``)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


class PosFormerModule(L.LightningModule):
    """PosFormer training.

    Args:
        vocab_size: linked from the DataModule by ``training.cli``; must be the CROHME vocabulary's 113.
        size: preset of ``recognizers.posformer.config.PRESETS`` (``paper``, ``tiny``).
        model_overrides: fields of ``PosFormerConfig`` replacing the preset's, nested sub-configs merged
            key by key, e.g. ``{"decoder": {"d_model": 128, "arm": {"coverage_channels": 16}}}``.
        symbol_weight: weight of the symbol cross-entropy.
        level_weight: weight of the nesting-level cross-entropy.
        relpos_weight: weight of the relative-position cross-entropy.
        loss_normalizer: the weighted sum is divided by it.
        position_stop: target policy of the stop position, ``eos`` or ``ignore``
            (``tree.bidirectional_targets``).
        on_malformed: a caption that breaks the braced conventions: ``flat`` (label every token M, with a
            warning) or ``raise``.
        optimizer: e.g. SGD (lr 0.08, momentum 0.9, weight decay 1e-4 in the paper recipe).
        schedule: ``plateau`` (ReduceLROnPlateau on ``val_exprate``, mode max, stepped at each validation
            epoch: needs ``trainer.check_val_every_n_epoch``), ``noam`` or ``cosine`` (after a linear
            warm-up of ``warmup_steps``), or ``constant``.
        plateau_factor: learning-rate factor of a plateau reduction (reference 0.25).
        plateau_patience: epochs without improvement before a reduction (reference 20; divided by the
            validation interval, as the reference does).
        warmup_steps: linear warm-up of ``noam`` and ``cosine``.
        val_max_tokens: cap of greedy decoding in validation (also capped by the decoder's ``max_len``).
        channels_last: keep the DenseNet's weights (hence its activations) in NHWC memory order. On a GPU
            cuDNN's bf16 convolutions run in NHWC, so NCHW tensors are transposed around every conv and
            batch norm; this removes those copies. Numerically the same model; checkpoints and exports
            are unaffected (``recognizers export`` stores contiguous tensors).
        init_from: start from a trained PosFormer (``.safetensors`` bundle or project ``.ckpt``) with the
            same architecture, e.g. to fine-tune the bundled model on CROHME. A bundle has no
            training-only position branch: that branch starts from its fresh initialisation (a ``.ckpt``
            brings it along).
    """

    def __init__(self, vocab_size: int = 113, size: str = "paper", model_overrides: dict | None = None,
                 symbol_weight: float = 1.0, level_weight: float = 0.25, relpos_weight: float = 0.25,
                 loss_normalizer: float = 1.5, position_stop: str = "eos", on_malformed: str = "flat",
                 optimizer: OptimizerCallable = torch.optim.SGD, schedule: str = "plateau",
                 plateau_factor: float = 0.25, plateau_patience: int = 20, warmup_steps: int = 0,
                 val_max_tokens: int = 200, channels_last: bool = False,
                 init_from: str | None = None) -> None:
        super().__init__()
        self.vocab = crohme_vocab()
        if vocab_size != len(self.vocab):
            raise ValueError(f"PosFormer uses the {len(self.vocab)}-class CROHME vocabulary, "
                             f"got vocab_size {vocab_size}")
        for name, value in (("schedule", schedule), ("on_malformed", on_malformed),
                            ("position_stop", position_stop)):
            if value not in _CHOICES[name]:
                raise ValueError(f"{name} must be one of {_CHOICES[name]}, got {value!r}")
        self.save_hyperparameters(ignore=["optimizer"])
        cfg = preset(size, iac_ids=resolve_ids(self.vocab.token_to_id), vocab_size=vocab_size)
        if model_overrides:
            cfg = PosFormerConfig.from_dict(merge_overrides(cfg.to_dict(), model_overrides))
        self.model = PosFormer(cfg)
        if init_from:
            self._init_from(init_from)
        if channels_last:  # convs given an NHWC weight produce NHWC outputs, so the whole DenseNet follows
            self.model.encoder.densenet.to(memory_format=torch.channels_last)
        self.weights = LossWeights(symbol_weight, level_weight, relpos_weight, loss_normalizer)
        self.optimizer_factory = optimizer
        self._counts = torch.zeros(1 + len(_RATES), dtype=torch.float64)  # samples, then hits per rate

    def _init_from(self, path: str) -> None:
        from recognizers.checkpoint import CheckpointError, read_bundle
        from recognizers.posformer.recognizer import PosFormerRecognizer

        bundle = read_bundle(path)
        start = PosFormerRecognizer.from_bundle(bundle)  # checks the vocabulary, config and weights
        ours = self.model.cfg
        if replace(start.model.cfg, position=ours.position) != ours:
            raise CheckpointError(f"{path}: its model config differs from this run's: "
                                  f"{start.model.cfg} vs {ours}")
        state = start.model.state_dict()  # every weight but the position branch
        # a .ckpt also holds the branch (a shape mismatch raises in load_state_dict)
        state.update({k: v for k, v in bundle.state_dict.items() if k.startswith("position_decoder.")})
        missing = self.model.load_state_dict(state, strict=False).missing_keys
        if missing:
            log.warning("%s has no position branch (%d tensors): it starts from its initialisation",
                        path, len(missing))

    # ----- checkpoint ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["recognizers"] = {"model": "posformer", "config": self.model.cfg.to_dict(),
                                     "vocab": json.dumps(list(self.vocab.tokens))}

    # ----- steps ---------------------------------------------------------------------------------
    def _labels(self, tokens: Sequence[str], name: str) -> PositionLabels:
        """Position-forest labels of a caption, per the ``on_malformed`` policy."""
        try:
            return label_positions(tokens)
        except MalformedLatexError as exc:
            if self.hparams.on_malformed == "raise":
                raise MalformedLatexError(f"{name}: {exc}") from exc
            log.warning("%s: %s; position labels fall back to M everywhere", name, exc)
            return label_positions(tokens, on_error="flat")

    def compute_loss(self, batch: dict) -> PosFormerLoss:
        """The §5 loss of a batch over its l2r and r2l teacher-forcing rows (2B rows)."""
        cfg = self.model.cfg
        labels = [self._labels(t, n) for t, n in zip(batch["tokens"], batch["names"], strict=True)]
        tf = bidirectional_targets(batch["ids"], labels, pad_id=cfg.pad_id, sos_id=cfg.sos_id,
                                   eos_id=cfg.eos_id, stop=self.hparams.position_stop)
        tgt, out, vectors, level, relpos = (x.to(self.device) for x in (tf.tgt, tf.out, tf.pos_vectors,
                                                                        tf.level, tf.relpos))
        output = self.model(batch["images"], batch["mask"], tgt, vectors)
        return posformer_loss(output, out, level, relpos, pad_id=cfg.pad_id, weights=self.weights)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        terms = {"train_loss": loss.total, "train_loss_sym": loss.symbol, "train_loss_layernum": loss.level,
                 "train_loss_pos": loss.relpos}
        self.log_dict({k: v for k, v in terms.items() if v is not None}, prog_bar=True,
                      batch_size=len(batch["ids"]))
        return loss.total

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: dict, prefix: str) -> None:
        loss = self.compute_loss(batch)
        self.log(f"{prefix}_loss", loss.total, batch_size=len(batch["ids"]), sync_dist=True)
        self.count_expressions(batch["tokens"], self.greedy_tokens(batch["images"], batch["mask"]))

    # ----- corpus-level ExpRate ------------------------------------------------------------------
    def count_expressions(self, refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]) -> None:
        """Add a batch to this rank's counts: expressions, then exact / ≤1 / ≤2 / ≤3 matches."""
        rates = expression_rate(refs, hyps)
        hits = [round(getattr(rates, name) * rates.count) for name in _RATES]
        self._counts = self._counts + torch.tensor(  # not in place: may be an inference-mode tensor
            [rates.count, *hits], dtype=torch.float64)

    def _log_rates(self, prefix: str) -> None:
        # reduce a copy: on one device reduce() hands back the very tensor, which is replaced below
        counts = self.trainer.strategy.reduce(self._counts.clone().to(self.device), reduce_op="sum").cpu()
        self._counts = torch.zeros_like(self._counts)
        total = float(counts[0].clamp(min=1))
        for name, hits in zip(_RATES, counts[1:].tolist(), strict=True):
            # the same value on every rank: the max "sync" keeps it exact and tells Lightning it is global
            self.log(f"{prefix}_{name}", hits / total, prog_bar=name == "exprate", sync_dist=True,
                     reduce_fx="max")

    def on_validation_epoch_end(self) -> None:
        self._log_rates("val")

    def on_test_epoch_end(self) -> None:
        self._log_rates("test")

    @torch.no_grad()
    def greedy_tokens(self, images: torch.Tensor, mask: torch.Tensor) -> list[list[str]]:
        """Greedy left-to-right decoding of a batch into CROHME tokens (validation only).

        Args:
            images: `(B, 1, H, W)`; mask `(B, H, W)` True on padding.

        Returns:
            B token lists, without specials.
        """
        from recognizers.decoding import DecodingOptions, greedy_search

        model, cfg = self.model, self.model.cfg
        memory, memory_mask = model.encode(images, mask)
        cap = min(self.hparams.val_max_tokens, cfg.decoder.max_len - 1)
        options = DecodingOptions(max_length=cap, suppress_tokens=(cfg.pad_id, cfg.sos_id))
        hyps = greedy_search(model.step, model.init_state(memory, memory_mask, "l2r"),
                             lambda state, index: state.index_select(index), batch_size=images.shape[0],
                             sos_id=cfg.sos_id, eos_id=cfg.eos_id, options=options, device=images.device)
        return [self.vocab.decode(h[0].tokens) for h in hyps]

    # ----- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(self.parameters())
        hp = self.hparams
        if hp.schedule == "plateau":
            every = self.trainer.check_val_every_n_epoch
            if not every:
                raise ValueError("schedule 'plateau' steps at validation epochs: set "
                                 "trainer.check_val_every_n_epoch (not a step-based val_check_interval)")
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=hp.plateau_factor, patience=hp.plateau_patience // every)
            return {"optimizer": optimizer, "lr_scheduler": {
                "scheduler": scheduler, "monitor": "val_exprate", "interval": "epoch", "frequency": every,
                "strict": True}}
        if hp.schedule == "constant":
            return {"optimizer": optimizer}
        total = int(self.trainer.estimated_stepping_batches) if hp.schedule == "cosine" else 0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, hp.warmup_steps, total, hp.schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
