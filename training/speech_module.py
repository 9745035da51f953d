"""LightningModule for Samba-ASR: joint CTC/attention training with label smoothing, AdamW with
warm-up, corpus-level WER/CER in validation (samba-asr.md §8.5, §9, §13.5 M8).

Loss (ESPnet convention, both terms summed per utterance and averaged over the batch):
L = λ·CTC + (1 − λ)·CE_ls, λ = ``ctc_weight`` (0.3 by default; pure CE when the model has no CTC head).
A_log, D, the Δ bias, norms, biases and embeddings get no weight decay (samba-asr.md §9).
The tokenizer comes from the DataModule and is stored in every checkpoint (base64 of the sentencepiece
model), next to the model config, so ``recognizers export`` needs nothing else.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable

from data.audio import SpecAugment
from data.tokenizer import SentencePieceTokenizer
from recognizers.samba_asr.config import SambaASRConfig, preset
from recognizers.samba_asr.model import SambaASR

from .metrics import error_counts, normalize_transcript
from .schedules import lr_factor

__all__ = ["SambaASRModule"]


class SambaASRModule(L.LightningModule):
    """Samba-ASR training.

    Args:
        vocab_size: linked from the DataModule's tokenizer by ``training.cli``.
        size: preset of ``recognizers.samba_asr.config.PRESETS`` (tiny, cpu, large).
        model_overrides: fields of ``SambaASRConfig`` that replace the preset's (d_model, layers...).
        ctc_weight: λ of the joint loss.
        label_smoothing: of the attention cross-entropy.
        spec_augment: keyword arguments of ``data.audio.SpecAugment``; None = its defaults, {} too.
        optimizer: e.g. AdamW; the module builds the weight-decay parameter groups.
        warmup_steps: linear warm-up of the learning rate.
        schedule: ``noam`` or ``cosine`` after the warm-up.
        val_max_tokens: cap of greedy decoding in validation.
        init_from: start from a trained Samba-ASR (``.safetensors`` bundle or project ``.ckpt``): its
            weights, feature normalisation and tokenizer (give the DataModule the same file as
            ``tokenizer_from``); its config must be this run's. Unlike ``--ckpt_path`` it starts a new
            run: fresh optimiser, schedule and step count (fine-tuning, or continuing from a bundle).
    """

    def __init__(self, vocab_size: int = 256, size: str = "cpu", model_overrides: dict | None = None,
                 ctc_weight: float = 0.3, label_smoothing: float = 0.1, spec_augment: dict | None = None,
                 optimizer: OptimizerCallable = torch.optim.AdamW, warmup_steps: int = 1000,
                 schedule: str = "noam", val_max_tokens: int = 200, init_from: str | None = None) -> None:
        super().__init__()
        if schedule not in ("noam", "cosine"):
            raise ValueError(f"schedule must be 'noam' or 'cosine', got {schedule!r}")
        if not 0 <= ctc_weight <= 1:
            raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
        self.save_hyperparameters()
        cfg = preset(size, vocab_size, **(model_overrides or {}))
        if ctc_weight == 0 and cfg.ctc:
            cfg = SambaASRConfig.from_dict({**cfg.to_dict(), "ctc": False})
        self.model = SambaASR(cfg)
        self.spec_augment = SpecAugment(**(spec_augment or {}))
        self.optimizer_factory = optimizer
        self.tokenizer: SentencePieceTokenizer | None = None
        if init_from:
            self._init_from(init_from)
        # word errors, words, char errors, chars: of greedy attention decoding, then of greedy CTC
        self._counts = torch.zeros(8, dtype=torch.float64)

    # ----- data-derived state ------------------------------------------------------------------
    def _init_from(self, path: str) -> None:
        from recognizers.checkpoint import read_bundle
        from recognizers.samba_asr.recognizer import SambaASRRecognizer

        start = SambaASRRecognizer.from_bundle(read_bundle(path))
        if start.model.cfg != self.model.cfg:
            raise ValueError(f"{path}: its model config differs from this run's (size, layers, vocab_size "
                             f"{start.model.cfg.vocab_size} vs {self.model.cfg.vocab_size}; pass the same "
                             f"file as the DataModule's tokenizer_from): {start.model.cfg} vs "
                             f"{self.model.cfg}")
        self.model.load_state_dict(start.model.state_dict())  # CMVN statistics included
        self.tokenizer = start.tokenizer

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        tokenizer = getattr(dm, "tokenizer", None)
        if self.hparams.get("init_from"):
            # the model keeps the features and pieces it was trained with
            if tokenizer is not None and tokenizer.to_bytes() != self.tokenizer.to_bytes():
                raise ValueError(f"the DataModule's tokenizer is not the one of {self.hparams.init_from}: "
                                 f"give the DataModule tokenizer_from={self.hparams.init_from}")
            return
        if tokenizer is not None and self.tokenizer is None:
            self.tokenizer = tokenizer
        if stage == "fit" and getattr(dm, "cmvn", None) is not None:
            self.model.cmvn.load_state_dict(dm.cmvn.state_dict())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["recognizers"] = {"model": "samba-asr", "config": self.model.cfg.to_dict(),
                                     "tokenizer": self.tokenizer.to_base64() if self.tokenizer else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("recognizers", {}).get("tokenizer")
        if saved:
            self.tokenizer = SentencePieceTokenizer.from_base64(saved)

    # ----- steps -------------------------------------------------------------------------------
    def _losses(self, batch: dict, augment: bool,
                encoding: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(total, attention CE, CTC or None), each summed per utterance and averaged over the batch.

        ``encoding``: the batch's ``(encoded (B, T', d), enc_lengths (B,))`` if already computed."""
        model, bsz = self.model, batch["feats"].shape[0]
        encoded, enc_lengths = encoding or model.encode(batch["feats"], batch["lengths"],
                                                        self.spec_augment if augment else None)
        logits = model.decode(batch["tokens_in"], batch["token_lengths"], encoded, enc_lengths)
        ce = F.cross_entropy(logits.float().transpose(1, 2), batch["tokens_out"], ignore_index=0,
                             label_smoothing=self.hparams.label_smoothing, reduction="sum") / bsz
        if model.ctc_head is None:
            return ce, ce, None
        ctc = F.ctc_loss(model.ctc_log_probs(encoded).transpose(0, 1), batch["tokens_out"],
                         enc_lengths, batch["token_lengths"] - 1, blank=model.cfg.blank_id, reduction="sum",
                         zero_infinity=True) / bsz
        lam = self.hparams.ctc_weight
        return lam * ctc + (1 - lam) * ce, ce, ctc

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, ce, ctc = self._losses(batch, augment=True)
        bsz = batch["feats"].shape[0]
        self.log_dict({"train_loss": loss, "train_ce": ce, **({"train_ctc": ctc} if ctc is not None else {})},
                      prog_bar=True, batch_size=bsz)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # one encoder pass serves the loss, greedy attention decoding and greedy CTC decoding
        encoding = self.model.encode(batch["feats"], batch["lengths"])
        loss, _, _ = self._losses(batch, augment=False, encoding=encoding)
        self.log("val_loss", loss, batch_size=batch["feats"].shape[0], sync_dist=True)
        self._count_errors(batch["texts"], self.greedy_texts(*encoding))
        if self.model.ctc_head is not None:
            self._count_errors(batch["texts"], self.ctc_texts(*encoding), branch=1)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def _count_errors(self, refs: list[str], hyps: list[str], branch: int = 0) -> None:
        """Add word and character errors of ``hyps`` to the counts of ``branch`` (0 attention, 1 CTC)."""
        for ref, hyp in zip(refs, hyps, strict=True):
            r, h = normalize_transcript(ref), normalize_transcript(hyp)
            words, chars = error_counts(r, h, "word"), error_counts(r, h, "char")
            row = torch.tensor([words.errors, words.ref_units, chars.errors, chars.ref_units],
                               dtype=torch.float64)
            # not in place: the counts may be an inference-mode tensor
            self._counts = self._counts + F.pad(row, (4 * branch, 4 - 4 * branch))

    def _log_error_rates(self, prefix: str) -> None:
        # a copy: on one device reduce() hands back the very tensor, which is reset below
        counts = self.trainer.strategy.reduce(self._counts.clone().to(self.device), reduce_op="sum").cpu()
        self._counts = torch.zeros_like(self._counts)
        # every rank holds the same reduced counts and logs them, so callbacks that monitor val_wer
        # (checkpointing) find it on every rank under DDP
        self.log(f"{prefix}_wer", float(counts[0] / counts[1].clamp(min=1)), prog_bar=True)
        self.log(f"{prefix}_cer", float(counts[2] / counts[3].clamp(min=1)))
        if counts[5] > 0:  # greedy CTC, the encoder's own reading (a model with a CTC head)
            self.log(f"{prefix}_ctc_wer", float(counts[4] / counts[5]))
            self.log(f"{prefix}_ctc_cer", float(counts[6] / counts[7].clamp(min=1)))

    def on_validation_epoch_end(self) -> None:
        self._log_error_rates("val")

    def on_test_epoch_end(self) -> None:
        self._log_error_rates("test")

    @torch.no_grad()
    def greedy_texts(self, encoded: torch.Tensor, enc_lengths: torch.Tensor) -> list[str]:
        """Greedy attention decoding of an encoded batch (validation only; users get beam search).

        Args: ``encoded`` (B, T', d) and ``enc_lengths`` (B,) from ``model.encode``."""
        from recognizers.decoding import DecodingOptions, greedy_search

        model = self.model
        options = DecodingOptions(max_length=self.hparams.val_max_tokens,
                                  suppress_tokens=(model.cfg.blank_id, model.cfg.sos_id))
        hyps = greedy_search(model.step, model.init_state(encoded, enc_lengths),
                             lambda state, index: state.index_select(index), batch_size=encoded.shape[0],
                             sos_id=model.cfg.sos_id, eos_id=model.cfg.eos_id, options=options,
                             lengths=enc_lengths, device=encoded.device)
        return self._texts([list(h[0].tokens) for h in hyps])

    @torch.no_grad()
    def ctc_texts(self, encoded: torch.Tensor, enc_lengths: torch.Tensor) -> list[str]:
        """Best-path CTC decoding of an encoded batch ((B, T', d), (B,)): what the encoder alone reads."""
        from recognizers.decoding.ctc import ctc_greedy

        log_probs = self.model.ctc_log_probs(encoded)  # (B, T', V)
        return self._texts(ctc_greedy(log_probs, enc_lengths, blank=self.model.cfg.blank_id))

    def _texts(self, token_lists: list[list[int]]) -> list[str]:
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer: train through the SpeechDataModule or load a checkpoint")
        return [self.tokenizer.decode(tokens) for tokens in token_lists]

    # ----- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            skip = getattr(p, "_no_weight_decay", False) or p.ndim < 2 or name.startswith("embed")
            (no_decay if skip else decay).append(p)
        optimizer = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        hp = self.hparams
        total = int(self.trainer.estimated_stepping_batches) if hp.schedule == "cosine" else 0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, hp.warmup_steps, total, hp.schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
