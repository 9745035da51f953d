"""LightningDataModule for Samba-ASR on LibriSpeech-layout corpora, real or synthetic (samba-asr.md §8).

The DataModule owns everything derived from the training transcripts and audio: the sentencepiece
tokenizer (trained at construction, so LightningCLI can link ``vocab_size`` into the model) and the
global CMVN statistics (estimated in ``setup`` from a fixed sample of training utterances). Both are
deterministic, so every DDP process derives the same ones. Batches are bucketed by duration under a
budget of padded seconds, and split between DDP ranks by the batch sampler itself (set the trainer's
``use_distributed_sampler: false``).
"""

from __future__ import annotations

import logging
import random

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.audio import GlobalCMVN, load_audio, log_mel
from data.datasets.librispeech import CorpusError, Utterance, bucket_batches, scan_librispeech
from data.tokenizer import SentencePieceTokenizer

__all__ = ["BucketBatchSampler", "SpeechBatch", "SpeechDataModule", "collate_speech", "model_tokenizer"]

log = logging.getLogger(__name__)

SpeechBatch = dict  # feats (B, 80, T), lengths (B,), tokens_in (B, U), tokens_out (B, U), token_lengths,
# texts (list[str]), ids (list[str])


class _FeatureDataset(Dataset):
    """Utterances as (log-Mel `(80, F)`, token ids, transcript, id)."""

    def __init__(self, utterances: list[Utterance], tokenizer: SentencePieceTokenizer) -> None:
        self.utterances = utterances
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[int], str, str]:
        utt = self.utterances[index]
        try:
            wave = load_audio(utt.path)
        except ValueError as exc:
            raise CorpusError(f"{utt.path}: {exc}") from exc
        return log_mel(wave), self.tokenizer.encode(utt.transcript), utt.transcript, utt.id


def collate_speech(items: list[tuple[torch.Tensor, list[int], str, str]], sos: int = 1, eos: int = 2,
                   pad: int = 0) -> SpeechBatch:
    """Pad features with zeros and tokens with ``pad``; decoder inputs ``<sos> y``, targets ``y <eos>``."""
    feats = [f for f, _, _, _ in items]
    lengths = torch.tensor([f.shape[-1] for f in feats])
    batch_feats = torch.zeros(len(items), feats[0].shape[0], int(lengths.max()))  # (B, 80, T)
    for i, f in enumerate(feats):
        batch_feats[i, :, : f.shape[-1]] = f
    token_lengths = torch.tensor([len(t) + 1 for _, t, _, _ in items])
    tokens_in = torch.full((len(items), int(token_lengths.max())), pad, dtype=torch.long)  # (B, U)
    tokens_out = tokens_in.clone()
    for i, (_, ids, _, _) in enumerate(items):
        tokens_in[i, : len(ids) + 1] = torch.tensor([sos, *ids])
        tokens_out[i, : len(ids) + 1] = torch.tensor([*ids, eos])
    return dict(feats=batch_feats, lengths=lengths, tokens_in=tokens_in, tokens_out=tokens_out,
                token_lengths=token_lengths, texts=[t for _, _, t, _ in items],
                ids=[u for _, _, _, u in items])


class BucketBatchSampler(Sampler[list[int]]):
    """Duration-bucketed batches (``bucket_batches``), reshuffled every epoch and split across DDP ranks.

    Every rank gets the same number of batches (the last few batches are dropped when the count does
    not divide), so collective operations never wait on a rank that has run out.
    """

    def __init__(self, seconds: list[float], max_seconds: float, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.seconds, self.max_seconds, self.shuffle, self.seed = seconds, max_seconds, shuffle, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        batches = bucket_batches(self.seconds, self.max_seconds, shuffle=self.shuffle,
                                 seed=self.seed + self.epoch)
        usable = len(batches) - len(batches) % self.world_size if self.world_size > 1 else len(batches)
        return batches[self.rank : usable : self.world_size]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class SpeechDataModule(L.LightningDataModule):
    """LibriSpeech-layout train/validation/test folders → bucketed batches of features and tokens.

    Args:
        train_dir: training split root (e.g. ``LibriSpeech/train-clean-100`` or a synthetic ``train``);
            several roots may be joined with ``:``.
        val_dir: validation split root.
        test_dir: test split root (``recognizers test``); defaults to ``val_dir``.
        vocab_size: sentencepiece vocabulary size, special ids included.
        tokenizer_type: ``unigram`` or ``bpe``.
        max_batch_seconds: padded seconds of audio per training batch.
        val_batch_seconds: the same for validation and test.
        max_val_utterances: validate on this many utterances (a fixed, seeded sample); 0 = all.
        cmvn_utterances: training utterances sampled for the CMVN statistics.
        num_workers: DataLoader worker processes.
        seed: seed of the batch order and of every sample.
        tokenizer_from: a trained Samba-ASR model (``.safetensors`` bundle or project ``.ckpt``) whose
            tokenizer encodes the transcripts instead of one trained here: to go on training it (the
            module's ``init_from``) or fine-tune it on other speech. ``vocab_size`` and
            ``tokenizer_type`` are then ignored (the model's tokenizer fixes both).
    """

    def __init__(self, train_dir: str, val_dir: str, test_dir: str | None = None, vocab_size: int = 256,
                 tokenizer_type: str = "unigram", max_batch_seconds: float = 200.0,
                 val_batch_seconds: float = 200.0, max_val_utterances: int = 0, cmvn_utterances: int = 500,
                 num_workers: int = 0, seed: int = 0, tokenizer_from: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_utts = [u for root in train_dir.split(":") for u in scan_librispeech(root)]
        if tokenizer_from:
            self.tokenizer = model_tokenizer(tokenizer_from)
        else:
            self.tokenizer = SentencePieceTokenizer.train([u.transcript for u in self.train_utts],
                                                          vocab_size, model_type=tokenizer_type)
        self.cmvn: GlobalCMVN | None = None

    @property
    def vocab_size(self) -> int:
        """Linked into the model's ``vocab_size`` by ``training.cli``."""
        return self.tokenizer.vocab_size

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if self.cmvn is None:
            count = min(hp.cmvn_utterances, len(self.train_utts))
            sample = random.Random(hp.seed).sample(self.train_utts, count)
            self.cmvn = GlobalCMVN.fit([log_mel(load_audio(u.path)) for u in sample])
        self.val_utts = self._subset(scan_librispeech(hp.val_dir))
        self.test_utts = scan_librispeech(hp.test_dir or hp.val_dir)
        log.info("speech data: %d train, %d validation utterances, vocabulary %d", len(self.train_utts),
                 len(self.val_utts), self.vocab_size)

    def _subset(self, utts: list[Utterance]) -> list[Utterance]:
        limit = self.hparams.max_val_utterances
        if not limit or limit >= len(utts):
            return utts
        return sorted(random.Random(self.hparams.seed).sample(utts, limit), key=lambda u: u.id)

    def _loader(self, utts: list[Utterance], max_seconds: float, shuffle: bool) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = BucketBatchSampler([u.seconds for u in utts], max_seconds, shuffle=shuffle,
                                     seed=self.hparams.seed, rank=rank, world_size=world)
        return DataLoader(_FeatureDataset(utts, self.tokenizer), batch_sampler=sampler,
                          collate_fn=collate_speech, num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_utts, self.hparams.max_batch_seconds, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_utts, self.hparams.val_batch_seconds, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_utts, self.hparams.val_batch_seconds, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


def model_tokenizer(path: str) -> SentencePieceTokenizer:
    """The tokenizer stored in a Samba-ASR model file (``.safetensors`` bundle or project ``.ckpt``).

    Raises:
        recognizers.checkpoint.CheckpointError: unreadable, not a Samba-ASR model, or no tokenizer in it.
    """
    from recognizers.checkpoint import CheckpointError, read_bundle
    from recognizers.samba_asr.recognizer import bundle_tokenizer

    try:
        return bundle_tokenizer(read_bundle(path))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
