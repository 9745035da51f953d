"""LightningModule for the handwriting base models FPHTR and SAR (writer-htr.md §4, §4.5, §9, §11).

Loss (§4): cross-entropy over the teacher-forced logits with ``ignore_index=<pad>``, the mean over
non-pad characters (``<eos>`` included), optionally label-smoothed. Targets longer than the model's
``max_seq_len`` (``<eos>`` included) are cut there: the greedy decoder could not produce more anyway.

Optimiser (§4.5): Adam with the thesis's rate per decoder, FPHTR 2e-4 and SAR 1e-3, betas (0.9, 0.999),
unless the recipe names another optimiser. Schedules: ``constant``; ``step`` (SAR's optional ×0.9 every
10 k steps, down to 1e-5); ``cosine`` (to 5 % of the peak); each after an optional linear warm-up.

Validation decodes greedily (the thesis's protocol) from the padded batch and scores the decoded
*characters* (not token ids, pitfall §16.1): ``val_cer`` and ``val_wer`` are corpus-level, Σ edits /
Σ reference units (``training.metrics``), an empty prediction counting every reference character as
deleted (§16.3). Error counts are summed over DDP ranks before the rates are logged, on every rank.
References with characters outside the training vocabulary are scored as they are (those characters
count as errors); only the validation *loss* drops them, as it cannot encode them.

Checkpoints carry what ``recognizers export`` needs under ``checkpoint["recognizers"]``: the registry
name ``handwriting``, ``HTRConfig.to_dict()``, the vocabulary (``CharVocabulary.to_json``) and the image
settings (``HandwritingConfig``), the metadata ``HandwritingRecognizer.from_bundle`` reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable

from data.handwriting import CharVocabulary, HandwritingConfig, TargetBatch
from recognizers.handwriting.config import DECODERS, HTRConfig, preset
from recognizers.handwriting.model import HTRModel
from recognizers.handwriting.search import decode, search_options

from .math_module import merge_overrides
from .metrics import error_counts
from .schedules import lr_factor

__all__ = ["LEARNING_RATES", "HTRModule"]

LEARNING_RATES = {"fphtr": 2e-4, "sar": 1e-3}  # Adam, thesis htr/main.py defaults (§4.5)
_SCHEDULES = ("constant", "step", "cosine")


class HTRModule(L.LightningModule):
    """FPHTR / SAR base training.

    Args:
        vocab_size: linked from the DataModule's vocabulary by ``training.cli``.
        size: preset of ``recognizers.handwriting.config.PRESETS`` (``paper``, ``cpu``, ``tiny``).
        decoder: ``fphtr`` or ``sar``.
        arch: backbone, ``resnet18``, ``resnet34`` or ``resnet31`` ("FPHTR-18" = fphtr + resnet18).
        max_seq_len: most decoder steps, ``<eos>`` included: 55 for words, 90 for lines (§4).
        model_overrides: fields of ``HTRConfig`` replacing the preset's, nested configs merged key by key,
            e.g. ``{"backbone": {"base_channels": 8}, "fphtr": {"d_model": 64}}``.
        label_smoothing: of the cross-entropy (0: the thesis).
        optimizer: e.g. ``torch.optim.AdamW``; None: Adam at :data:`LEARNING_RATES` of the decoder.
        schedule: ``constant``, ``step`` or ``cosine`` (module docstring).
        warmup_steps: linear warm-up of the learning rate (0: none).
        decay_every: ``step`` schedule: optimiser steps between decays.
        decay_factor: ``step`` schedule: factor of each decay.
        min_lr: ``step`` schedule: the rate never decays below it.
        val_max_length: cap of greedy decoding in validation (None: the model's ``max_seq_len``).
        init_from: a trained handwriting model (``.safetensors`` bundle or project ``.ckpt``) whose
            weights, vocabulary and image settings start this run, e.g. to go on training on another
            corpus; its model config must be this run's. Unlike ``--ckpt_path`` nothing else is
            restored: the optimiser, schedule and step count start afresh.
    """

    def __init__(self, vocab_size: int = 81, size: str = "paper", decoder: str = "fphtr",
                 arch: str = "resnet18", max_seq_len: int = 55, model_overrides: dict | None = None,
                 label_smoothing: float = 0.0, optimizer: OptimizerCallable | None = None,
                 schedule: str = "constant", warmup_steps: int = 0, decay_every: int = 10_000,
                 decay_factor: float = 0.9, min_lr: float = 1e-5, val_max_length: int | None = None,
                 init_from: str | None = None) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters(ignore=["optimizer"])
        cfg = preset(size, decoder=decoder, arch=arch, vocab_size=vocab_size, max_seq_len=max_seq_len)
        if model_overrides:
            cfg = HTRConfig.from_dict(merge_overrides(cfg.to_dict(), model_overrides))
        self.model = HTRModel(cfg)
        self.optimizer_factory = optimizer
        self.vocab: CharVocabulary | None = None
        self.preprocess = HandwritingConfig()
        if init_from:
            self._init_from(init_from)
        self._counts = torch.zeros(4, dtype=torch.float64)  # word errors, words, char errors, chars

    # ----- data-derived state ------------------------------------------------------------------
    def set_vocabulary(self, vocab: CharVocabulary) -> None:
        """Use ``vocab`` to encode targets and decode predictions; it must match the classifier."""
        if len(vocab) != self.model.cfg.vocab_size:
            raise ValueError(f"vocabulary of {len(vocab)} classes for a model of vocab_size "
                             f"{self.model.cfg.vocab_size}")
        self.vocab = vocab

    def _init_from(self, path: str) -> None:
        from recognizers.checkpoint import read_bundle
        from recognizers.handwriting.recognizer import HandwritingRecognizer

        start = HandwritingRecognizer.from_bundle(read_bundle(path))
        if start.model.cfg != self.model.cfg:
            raise ValueError(f"{path}: its model config differs from this run's (size, arch, decoder, "
                             f"max_seq_len, vocab_size {start.model.cfg.vocab_size} vs "
                             f"{self.model.cfg.vocab_size}): {start.model.cfg} vs {self.model.cfg}")
        self.model.load_state_dict(start.model.state_dict())
        self.set_vocabulary(start.vocab)
        self.preprocess = start.preprocess

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or getattr(dm, "vocab", None) is None:
            return
        if self.vocab is None:
            self.set_vocabulary(dm.vocab)
            self.preprocess = getattr(dm, "preprocess", self.preprocess)
        elif self.hparams.get("init_from") and getattr(dm, "preprocess", self.preprocess) != self.preprocess:
            # the images must reach the model as they did when it was trained
            raise ValueError(f"{self.hparams.init_from} was trained on images prepared as "
                             f"{self.preprocess}; the data module prepares {dm.preprocess}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        info = {"model": "handwriting", "config": self.model.cfg.to_dict(),
                "preprocess": json.dumps(asdict(self.preprocess))}
        if self.vocab is not None:
            info["vocab"] = self.vocab.to_json()
        checkpoint["recognizers"] = info

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # the checkpoint's vocabulary is the one its weights were trained with: it wins over the data's
        info = checkpoint.get("recognizers", {})
        if info.get("vocab"):
            self.set_vocabulary(CharVocabulary.from_json(info["vocab"]))
        if info.get("preprocess"):
            self.preprocess = HandwritingConfig(**json.loads(info["preprocess"]))

    # ----- steps -------------------------------------------------------------------------------
    def _vocab(self) -> CharVocabulary:
        if self.vocab is None:
            raise RuntimeError("no vocabulary: train through HandwritingDataModule, load a checkpoint, or "
                               "call set_vocabulary")
        return self.vocab

    def targets(self, texts: list[str], strict: bool = True) -> TargetBatch:
        """Teacher-forcing tensors, cut to ``max_seq_len`` steps; ``strict=False`` drops characters
        outside the vocabulary instead of raising ``VocabularyError``."""
        vocab = self._vocab()
        if not strict:
            texts = ["".join(c for c in t if not vocab.unknown(c)) for t in texts]
        batch = vocab.targets(texts)
        steps = self.model.cfg.max_seq_len
        return TargetBatch(batch.inputs[:, :steps].to(self.device), batch.targets[:, :steps].to(self.device),
                           batch.lengths.clamp(max=steps).to(self.device))

    def compute_loss(self, batch: dict, strict: bool = True) -> torch.Tensor:
        """Mean cross-entropy over the non-pad target characters of a batch."""
        tf = self.targets(batch["texts"], strict)
        logits = self.model(batch["images"], batch["mask"], tf.inputs)  # (B, T, V)
        return F.cross_entropy(logits.float().transpose(1, 2), tf.targets, ignore_index=self.model.cfg.pad_id,
                               label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["texts"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: dict, prefix: str) -> None:
        loss = self.compute_loss(batch, strict=False)
        self.log(f"{prefix}_loss", loss, batch_size=len(batch["texts"]), sync_dist=True)
        self.count_errors(batch["texts"], self.greedy_texts(batch["images"], batch["mask"]))

    @torch.no_grad()
    def greedy_texts(self, images: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """Greedy decoding of a padded batch into text (an ``<eos>`` first gives ``""``)."""
        options = search_options(max_length=self.hparams.val_max_length)
        hyps = decode(self.model, self.model.encode(images, mask), options)
        vocab = self._vocab()
        return [vocab.decode(h[0].tokens) if h else "" for h in hyps]

    # ----- corpus-level CER / WER --------------------------------------------------------------
    def count_errors(self, refs: list[str], hyps: list[str]) -> None:
        """Add a batch to this rank's counts: word errors, reference words, char errors, characters."""
        for ref, hyp in zip(refs, hyps, strict=True):
            words, chars = error_counts(ref, hyp, "word"), error_counts(ref, hyp, "char")
            self._counts = self._counts + torch.tensor(  # not in place: may be an inference-mode tensor
                [words.errors, words.ref_units, chars.errors, chars.ref_units], dtype=torch.float64)

    def _log_error_rates(self, prefix: str) -> None:
        # a copy: on one device reduce() hands back the very tensor, which is reset below
        counts = self.trainer.strategy.reduce(self._counts.clone().to(self.device), reduce_op="sum").cpu()
        self._counts = torch.zeros_like(self._counts)
        # every rank logs the same reduced values, so callbacks monitoring them work on every rank
        self.log(f"{prefix}_cer", float(counts[2] / counts[3].clamp(min=1)), prog_bar=True)
        self.log(f"{prefix}_wer", float(counts[0] / counts[1].clamp(min=1)), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_error_rates("val")

    def on_test_epoch_end(self) -> None:
        self._log_error_rates("test")

    # ----- optimisation ------------------------------------------------------------------------
    def _lr_factor(self, step: int, base_lr: float, total: int) -> float:
        hp = self.hparams
        if hp.schedule == "cosine":
            return lr_factor(step, hp.warmup_steps, total, "cosine")
        warm = min(1.0, (step + 1) / hp.warmup_steps) if hp.warmup_steps else 1.0
        if hp.schedule == "constant":
            return warm
        floor = min(1.0, hp.min_lr / base_lr)
        return warm * max(floor, hp.decay_factor ** (step // hp.decay_every))

    def configure_optimizers(self):
        hp = self.hparams
        factory = self.optimizer_factory or partial(torch.optim.Adam, lr=LEARNING_RATES[hp.decoder],
                                                    betas=(0.9, 0.999))
        optimizer = factory(self.parameters())
        if hp.schedule == "constant" and not hp.warmup_steps:
            return optimizer
        base_lr = optimizer.param_groups[0]["lr"]
        total = self.trainer.estimated_stepping_batches if hp.schedule == "cosine" else 0
        if not math.isfinite(total):
            raise ValueError("schedule 'cosine' needs a finite number of steps (max_steps or max_epochs)")
        total = int(total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                      lambda step: self._lr_factor(step, base_lr, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
