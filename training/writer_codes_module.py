"""LightningModule for writer codes: adapter + code training on a frozen base, and the §9 evaluation
(writer-htr.md §8, §9.1, §11).

Training (non-episodic, §8.1): teacher-forced cross-entropy of mini-batches whose words carry their
writer's code (a learned embedding row, or the writer's fixed normalised Hinge vector); only the
adapter, the learned code table and, with hook A's ``train_projection``, FPHTR's 1×1 projection
receive gradients (AdamW, lr 1e-4, weight decay 1e-4 in the YAMLs). The base stays in eval mode, so
its BatchNorm buffers never change.

Validation / test: every fixed evaluation split (``WriterCodeDataModule``) is one batch. The split's
writer is new, so its code is made from the support set alone — a fresh N(0, 1) code optimised for
``adaptation.steps`` steps (learned codes), or the normalised Hinge vector of the support images — and
the query words are decoded greedily in chunks of ``eval_chunk``. ``eval_code`` gives the control rows:
``random`` (the N(0, 1) draw, not optimised) and ``zero``. CER and WER pool every query word of every
split and writer (micro-average, §9.1), on decoded strings. The N(0, 1) draw of a split is seeded by
``(eval_seed, writer, permutation)``, so reruns and methods see the same codes.

Adaptation needs gradients inside validation, so the trainer must run with ``inference_mode: false``
(§7.3); the YAMLs set it.

Checkpoints carry ``recognizers``: the base config and vocabulary, the writer-code config and the
training writer ids, so :meth:`WriterCodeModule.load_from_checkpoint` rebuilds the model without data.
``recognizers export`` turns one into a handwriting model file that keeps the adapter (``codes.*``, the
``recognizers.writer_codes`` metadata; the registry aliases this checkpoint's model name to
"handwriting") and drops the training writers' codes; its ``HandwritingRecognizer.adapt`` then fits a new
writer's code.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable

from data.handwriting import CharVocabulary, HandwritingConfig, collate_images
from data.hinge import HingeConfig
from recognizers.checkpoint import read_bundle
from recognizers.handwriting.config import HTRConfig, preset
from recognizers.handwriting.model import HTRModel
from recognizers.handwriting.recognizer import HandwritingRecognizer
from recognizers.handwriting.writer_code_model import WriterCodeModel
from recognizers.handwriting.writer_codes import CodeAdaptation, WriterCode, WriterCodeConfig

from .metrics import error_counts

__all__ = ["EVAL_CODES", "WriterCodeModule"]

EVAL_CODES = ("adapt", "random", "zero")  # adapt: learned → N(0,1) + steps, hinge → support Hinge
CHECKPOINT_MODEL = "handwriting-writer-codes"

log = logging.getLogger(__name__)


def _split_seed(seed: int, writer: str, permutation: int) -> int:
    """A 63-bit seed of one evaluation split, the same in every process."""
    digest = hashlib.sha256(f"{seed}:{writer}:{permutation}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class WriterCodeModule(L.LightningModule):
    """Writer-code training and evaluation.

    Args:
        base_checkpoint: the trained base model, a ``.safetensors`` bundle or a project ``.ckpt`` of the
            handwriting model (config and vocabulary inside). None builds a *random* base from
            ``base`` with the training texts' vocabulary: for smoke tests only.
        base: without a checkpoint, ``preset`` (tiny, cpu, paper), ``decoder``, ``arch`` and other
            ``HTRConfig`` fields.
        codes: ``WriterCodeConfig`` fields (``source``, ``injection``, ``code_size`` ...); the code size
            defaults to 64 for learned and 465 for Hinge codes.
        adaptation: ``CodeAdaptation`` fields for new writers (``steps`` 1, ``lr`` 1e-4, ``optimizer`` sgd).
        optimizer: for the adapter and codes (AdamW, lr 1e-4, weight decay 1e-4 in the YAMLs).
        eval_code: ``adapt`` (the method), ``random`` or ``zero`` (control rows).
        eval_chunk: most query images decoded at once (§5: 128).
        eval_seed: seeds the new writers' N(0, 1) codes.
    """

    def __init__(self, base_checkpoint: str | None = None, base: dict | None = None,
                 codes: dict | None = None, adaptation: dict | None = None,
                 optimizer: OptimizerCallable = torch.optim.AdamW, eval_code: str = "adapt",
                 eval_chunk: int = 128, eval_seed: int = 0) -> None:
        super().__init__()
        if eval_code not in EVAL_CODES:
            raise ValueError(f"eval_code must be one of {EVAL_CODES}, got {eval_code!r}")
        if eval_chunk < 1:
            raise ValueError(f"eval_chunk must be >= 1, got {eval_chunk}")
        self.save_hyperparameters(ignore=["optimizer"])
        codes = dict(codes or {})
        self.code_config = WriterCodeConfig.for_source(codes.pop("source", "learned"), **codes)
        self.adaptation = CodeAdaptation(**(adaptation or {}))
        self.optimizer_factory = optimizer
        self.model: WriterCodeModel | None = None
        self.vocab: CharVocabulary | None = None
        self.writer_ids: list[str] = []
        self.preprocess = HandwritingConfig()  # the base model's image pipeline (set by setup)
        self._counts = torch.zeros(4, dtype=torch.float64)  # word errors, words, char errors, chars

    # ----- building ----------------------------------------------------------------------------
    def _base(self, datamodule: Any) -> tuple[HTRModel, CharVocabulary]:
        hp = self.hparams
        if hp.base_checkpoint:
            recognizer = HandwritingRecognizer.from_bundle(read_bundle(hp.base_checkpoint))
            self.preprocess = recognizer.preprocess  # the images as the base model was trained on them
            return recognizer.model, recognizer.vocab
        log.warning("writer codes on a randomly initialised base model (no base_checkpoint): "
                    "smoke tests only")
        options = dict(hp.base or {})
        vocab = CharVocabulary.from_texts(datamodule.train_texts)
        return HTRModel(preset(options.pop("preset", "tiny"), vocab_size=len(vocab), **options)), vocab

    def _build(self, base: HTRModel, vocab: CharVocabulary, writers: list[str]) -> None:
        self.vocab, self.writer_ids = vocab, list(writers)
        self.model = WriterCodeModel(base, self.code_config, len(writers))

    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        datamodule = self.trainer.datamodule
        self._build(*self._base(datamodule), datamodule.train_writers)
        datamodule.preprocess = self.preprocess  # read when the data loaders are built, after setup
        if self.code_config.source == "hinge":
            cfg = self.code_config
            table, normalizer = datamodule.use_hinge(HingeConfig(cfg.hinge_bins, cfg.hinge_leg_length))
            self.model.set_hinge(table, normalizer.mean, normalizer.std)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["recognizers"] = {
            "model": CHECKPOINT_MODEL, "config": self.model.base.cfg.to_dict(), "vocab": self.vocab.to_json(),
            "writer_codes": json.dumps(self.code_config.to_dict()), "writers": json.dumps(self.writer_ids),
            "code_adaptation": json.dumps(asdict(self.adaptation)),  # new writers' code fitting, for export
            "preprocess": json.dumps(asdict(self.preprocess))}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Rebuild the model from the checkpoint's own metadata unless the one built by :meth:`setup`
        already matches it (Lightning restores before configuring optimizers, so a rebuild is safe)."""
        info = checkpoint["recognizers"]
        saved = WriterCodeConfig.from_dict(json.loads(info["writer_codes"]))
        if saved != self.code_config:
            raise ValueError(f"checkpoint writer-code config {saved} differs from this module's "
                             f"{self.code_config}")
        cfg, vocab = HTRConfig.from_dict(info["config"]), CharVocabulary.from_json(info["vocab"])
        writers = json.loads(info["writers"])
        if info.get("preprocess"):
            self.preprocess = HandwritingConfig(**json.loads(info["preprocess"]))
        if self.model is None or (self.model.base.cfg, self.vocab, self.writer_ids) != (cfg, vocab, writers):
            self._build(HTRModel(cfg), vocab, writers)

    # ----- training ----------------------------------------------------------------------------
    def _targets(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.vocab.targets(texts)
        return batch.inputs.to(self.device), batch.targets.to(self.device)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        inputs, targets = self._targets(batch["texts"])
        logits = self.model(batch["images"], batch["mask"], inputs, self.model.writer_codes(batch["writers"]))
        loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=self.vocab.pad_id)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["texts"]))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.model.trainable_parameters())

    # ----- evaluation --------------------------------------------------------------------------
    def writer_code(self, split: dict) -> WriterCode:
        """The code of an evaluation split's (new) writer, from its support set only."""
        model, facts = self.model, {"writer": split["writer"], "permutation": int(split["permutation"])}
        if self.hparams.eval_code == "zero":
            return WriterCode.from_tensor(torch.zeros(model.code_size), "zero", **facts)
        if self.hparams.eval_code == "adapt" and self.code_config.source == "hinge":
            return model.hinge_code(split["hinge"], support=len(split["support_images"]), **facts)
        seed = _split_seed(self.hparams.eval_seed, facts["writer"], facts["permutation"])
        generator = torch.Generator().manual_seed(seed)
        steps = self.adaptation.steps if self.hparams.eval_code == "adapt" else 0
        # characters the base cannot write are left out of the support targets (logged, never silent)
        texts = [self._known(text) for text in split["support_texts"]]
        images, mask = collate_images(split["support_images"])
        inputs, targets = self._targets(texts)
        adaptation = CodeAdaptation(steps, self.adaptation.lr, self.adaptation.optimizer)
        return model.adapt(images, mask, inputs, targets, adaptation, generator, **facts)

    def _known(self, text: str) -> str:
        unknown = self.vocab.unknown(text)
        if unknown:
            log.warning("support word %r: characters %s are not in the base vocabulary", text, unknown)
            return "".join(c for c in text if c not in unknown)
        return text

    def _evaluate(self, split: dict) -> None:
        code = self.writer_code(split).tensor(self.device)
        images, chunk = split["query_images"], self.hparams.eval_chunk
        hyps = []
        for first in range(0, len(images), chunk):
            hyps += [self.vocab.decode(h[0].tokens) if h else ""
                     for h in self.model.decode(images[first:first + chunk], code)]
        for ref, hyp in zip(split["query_texts"], hyps, strict=True):
            words, chars = error_counts(ref, hyp, "word"), error_counts(ref, hyp, "char")
            self._counts = self._counts + torch.tensor(  # not in place: may be an inference-mode tensor
                [words.errors, words.ref_units, chars.errors, chars.ref_units], dtype=torch.float64)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch)

    def _log_error_rates(self, prefix: str) -> None:
        counts, self._counts = self._counts, torch.zeros_like(self._counts)
        self.log(f"{prefix}_wer", float(counts[0] / counts[1].clamp(min=1)), prog_bar=True)
        self.log(f"{prefix}_cer", float(counts[2] / counts[3].clamp(min=1)))
        self.log(f"{prefix}_words", float(counts[1]))

    def on_validation_epoch_end(self) -> None:
        self._log_error_rates("val")

    def on_test_epoch_end(self) -> None:
        self._log_error_rates("test")
