"""LightningModule for MetaHTR meta-training and the writer-adaptation protocol (writer-htr.md §7, §9.1, §11).

Meta-training starts from a trained base model (MetaHTR from scratch "does not work very well", §7.1):
``base`` is a handwriting ``.safetensors`` bundle or a Lightning ``.ckpt`` of this project
(``recognizers.checkpoint.read_bundle``). ``init`` builds a randomly initialised model instead, for smoke
tests only.

* **training_step** (manual optimisation, ``automatic_optimization = False``): for each writer task of
  the meta-batch, adapt on the support set (second order by default), take the query loss under θ' and
  ``manual_backward(L_q / ways)`` at once, so each task's graph is freed before the next (§7.2); then
  optional clipping (``grad_clip``: with manual optimisation the Trainer's ``gradient_clip_val`` is not
  available) and one outer AdamW step over θ, α and γ (lr 8e-6, weight decay 0 by default, §11), with an
  optional cosine schedule down to ``cosine_min_lr``. ``meta_lr`` gives log α its own rate: α is
  stored as log α (§7.2), so at the thesis's shared 8e-6 an Adam step moves α by a factor of at most
  e^8e-6 and α would stay where it started over any run this machine can afford; the thesis's raw α
  moved by up to 8e-6 per step, 8 % of its 1e-4 start. γ keeps the shared rate: g_γ's first layer has
  2·V·D inputs per hidden unit, and at 5e-3 it fitted the 11 writers of the CPU recipe within 80
  meta-steps (adaptation then raised the validation WER of new writers; with γ reset it lowered it).
* **validation_step / test_step**: one writer per batch; for each of its fixed splits, adapt on the
  first K words (first order, nothing kept) and decode the query words greedily with θ' in chunks of at
  most ``val_chunk``; the "meta-trained, no adaptation" control decodes the same query words with θ.
  CER and WER are micro-averaged over every query word of every split and writer: ``val_cer``,
  ``val_wer`` (adapted), ``val_cer_unadapted``, ``val_wer_unadapted`` (control), and
  ``val_delta_norm`` (mean ‖θ' − θ‖, a check that adaptation happened).

**The Trainer must be built with** ``inference_mode=False``: Lightning evaluates under
``torch.inference_mode`` by default, where no gradient can be taken even inside ``torch.enable_grad()``
(pitfall §16.6). Evaluation then raises a clear error rather than silently not adapting.

Checkpoints carry ``checkpoint["recognizers"]`` (model "handwriting", its config, vocabulary and the
MetaHTR config), so ``recognizers export`` turns one into a handwriting model file of the meta-trained θ
that keeps α and γ (the ``meta.*`` weights and the ``recognizers.metahtr`` metadata): its
``HandwritingRecognizer.adapt`` then runs this inner loop (``recognizers.handwriting.adaptation``).
"""

from __future__ import annotations

import json
import string
import warnings
from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable

from data.handwriting import CharVocabulary, HandwritingConfig
from recognizers.checkpoint import CheckpointError, read_bundle
from recognizers.handwriting import HTRModel, preset
from recognizers.handwriting.metahtr import MetaHTR, MetaHTRConfig, WordBatch, decode_with
from recognizers.handwriting.recognizer import HandwritingRecognizer

from .metrics import error_counts

__all__ = ["MetaHTRModule", "load_base"]

OUTER_LR = 8e-6  # the paper runs' outer learning rate (writer-htr.md §7.1, §11)
_INIT = {"size": "tiny", "decoder": "fphtr", "arch": "resnet18",
         "chars": " " + string.ascii_letters + string.digits + string.punctuation}


def load_base(base: str | None, init: dict | None = None
              ) -> tuple[HTRModel, CharVocabulary, HandwritingConfig]:
    """The base model, its vocabulary and image settings: from a bundle/checkpoint file, else random.

    Args:
        base: a handwriting ``.safetensors`` bundle or ``.ckpt``.
        init: without ``base``: ``size`` (a preset), ``decoder``, ``arch`` and ``chars`` (the characters);
            the defaults are a tiny FPHTR-18 over the printable ASCII characters.

    Raises:
        CheckpointError: unreadable file, or not a handwriting model.
    """
    if base is not None:
        bundle = read_bundle(base)
        if bundle.model != "handwriting":
            raise CheckpointError(f"{base}: a {bundle.model!r} model, not a handwriting base model")
        recognizer = HandwritingRecognizer.from_bundle(bundle)
        return recognizer.model.train(), recognizer.vocab, recognizer.preprocess
    warnings.warn("MetaHTR from a randomly initialised model: for smoke tests only (writer-htr.md §7.1: "
                  "start from a trained base model)", stacklevel=2)
    spec = {**_INIT, **(init or {})}
    vocab = CharVocabulary(dict.fromkeys(spec["chars"]))
    cfg = preset(spec["size"], decoder=spec["decoder"], arch=spec["arch"], vocab_size=len(vocab))
    return HTRModel(cfg), vocab, HandwritingConfig()


class MetaHTRModule(L.LightningModule):
    """MetaHTR (or MAML / MAMLmSGD, by ``metahtr``) on a handwriting base model.

    Args:
        base: path of the trained base model (bundle or checkpoint).
        init: random initialisation when ``base`` is None (see :func:`load_base`).
        metahtr: fields of :class:`~recognizers.handwriting.metahtr.MetaHTRConfig`.
        optimizer: the outer optimiser over θ, α and γ; None: AdamW(lr 8e-6, weight decay 0).
        meta_lr: outer learning rate of log α (None: the optimiser's own, as for θ and γ).
        grad_clip: clip the outer gradient to this norm (None: no clipping).
        cosine_min_lr: cosine schedule of the outer lr down to this value over the run (None: constant).
        outer_dropout: dropout in the query pass (BatchNorm stays on running statistics).
        val_chunk: most query images decoded at once.
        val_control: also decode with θ (the "meta-trained, no adaptation" row).
    """

    def __init__(self, base: str | None = None, init: dict | None = None, metahtr: dict | None = None,
                 optimizer: OptimizerCallable | None = None, meta_lr: float | None = None,
                 grad_clip: float | None = None,
                 cosine_min_lr: float | None = None, outer_dropout: bool = False, val_chunk: int = 128,
                 val_control: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.automatic_optimization = False
        self.model, self.vocab, self.preprocess = load_base(base, init)
        self.meta = MetaHTR(self.model, MetaHTRConfig.from_dict(metahtr))
        self.optimizer_factory = optimizer
        # rows (adapted, control) × (word errors, words, char errors, chars), summed over query words
        self._counts = torch.zeros(2, 4, dtype=torch.float64)
        self._deltas: list[float] = []

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "preprocess"):
            datamodule.preprocess = self.preprocess  # the images as the base model was trained on them

    # ----- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["recognizers"] = {"model": "handwriting", "config": self.model.cfg.to_dict(),
                                     "vocab": self.vocab.to_json(),
                                     "preprocess": json.dumps(asdict(self.preprocess)),
                                     "metahtr": json.dumps(self.meta.cfg.to_dict())}

    # ----- training ----------------------------------------------------------------------------------
    def _words(self, images: list, texts: list[str], positions) -> WordBatch:
        return WordBatch.from_words([images[i] for i in positions], [texts[i] for i in positions], self.vocab)

    def _tasks(self, batch: dict) -> list[tuple[WordBatch, WordBatch]]:
        """Split a meta-batch at writer changes; support = even positions, query = odd (§5)."""
        images, texts, writers = batch["images"], batch["texts"], batch["writers"]
        starts = [i for i in range(len(writers)) if i == 0 or writers[i] != writers[i - 1]]
        tasks = []
        for start, end in zip(starts, [*starts[1:], len(writers)], strict=True):
            task = range(start, end)
            support, query = task[0::2], task[1::2]
            tasks.append((self._words(images, texts, support), self._words(images, texts, query)))
        return tasks

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        tasks = self._tasks(batch)
        total = 0.0
        for support, query in tasks:
            loss = self.meta.outer_loss(self.model, support, query, dropout=self.hparams.outer_dropout)
            self.manual_backward(loss / len(tasks))  # frees this task's graph
            total += float(loss.detach())
        if self.hparams.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip,
                                gradient_clip_algorithm="norm")
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        loss = torch.tensor(total / len(tasks))
        self.log("train_loss", loss, prog_bar=True, batch_size=len(tasks))
        return loss

    # ----- evaluation --------------------------------------------------------------------------------
    def _texts(self, tokens: list[tuple[int, ...]]) -> list[str]:
        return [self.vocab.decode(t) for t in tokens]

    def _count(self, row: int, refs: list[str], hyps: list[str]) -> None:
        for ref, hyp in zip(refs, hyps, strict=True):
            words, chars = error_counts(ref, hyp, "word"), error_counts(ref, hyp, "char")
            add = torch.zeros_like(self._counts)
            add[row] = torch.tensor([words.errors, words.ref_units, chars.errors, chars.ref_units])
            self._counts = self._counts + add  # not in place: never touch a tensor made in inference mode

    def evaluate_writer(self, batch: dict) -> dict[str, list[list[str]]]:
        """Adapt and decode every split of one writer; returns the predictions per split (adapted, control).

        Raises:
            RuntimeError: gradients are unavailable (the Trainer was built with ``inference_mode=True``).
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError("MetaHTR evaluation adapts with gradients, which torch.inference_mode "
                               "forbids: build the Trainer with inference_mode=False (writer-htr.md §7.3, "
                               "§16.6)")
        images, texts, chunk = batch["images"], batch["texts"], self.hparams.val_chunk
        control = None
        if self.hparams.val_control:  # θ's predictions are per image: decode the writer's words once
            control = self._texts(decode_with(self.model, None, images, chunk))
        out: dict[str, list[list[str]]] = {"adapted": [], "control": []}
        for support_pos, query_pos in batch["splits"]:
            support = self._words(images, texts, support_pos)
            with torch.enable_grad():
                fast = self.meta.adapt(self.model, support, create_graph=False)
            fast = {k: v.detach() for k, v in fast.items()}
            base = self.meta.base_params(self.model)
            delta = sum((fast[k] - p.detach()).square().sum() for k, p in base.items())
            self._deltas.append(float(delta) ** 0.5)  # ‖θ' − θ‖ over the adapted tensors
            refs = [texts[i] for i in query_pos]
            queries = [images[i] for i in query_pos]
            out["adapted"].append(self._texts(decode_with(self.model, fast, queries, chunk)))
            self._count(0, refs, out["adapted"][-1])
            if control is not None:
                out["control"].append([control[i] for i in query_pos])
                self._count(1, refs, out["control"][-1])
        return out

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate_writer(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate_writer(batch)

    def _log_rates(self, prefix: str) -> None:
        counts = self.trainer.strategy.reduce(self._counts.clone().to(self.device), reduce_op="sum").cpu()
        deltas, self._deltas = self._deltas, []
        self._counts = torch.zeros_like(self._counts)
        for row, suffix in ((0, ""), (1, "_unadapted")):
            if row == 1 and not self.hparams.val_control:
                continue
            wer = float(counts[row, 0] / counts[row, 1].clamp(min=1))
            self.log(f"{prefix}_wer{suffix}", wer, prog_bar=row == 0)
            self.log(f"{prefix}_cer{suffix}", float(counts[row, 2] / counts[row, 3].clamp(min=1)))
        self.log(f"{prefix}_delta_norm", sum(deltas) / max(len(deltas), 1))

    def on_validation_epoch_end(self) -> None:
        self._log_rates("val")

    def on_test_epoch_end(self) -> None:
        self._log_rates("test")

    # ----- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self):
        params: list = [p for p in self.parameters() if p.requires_grad]
        if self.hparams.meta_lr is not None:
            meta = {id(p) for p in self.meta.inner_lr.parameters()}
            groups = [{"params": [p for p in params if id(p) not in meta]},
                      {"params": [p for p in params if id(p) in meta], "lr": self.hparams.meta_lr}]
            params = [g for g in groups if g["params"]]
        if self.optimizer_factory is None:
            optimizer = torch.optim.AdamW(params, lr=OUTER_LR, weight_decay=0.0)
        else:
            optimizer = self.optimizer_factory(params)
        if self.hparams.cosine_min_lr is None:
            return optimizer
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps,
                                                               eta_min=self.hparams.cosine_min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
