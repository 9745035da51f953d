"""Samba-ASR training (samba-asr.md §13.5 M8, M9; §13.7 A5): the LightningModule's loss, the
bucketed DDP batch sampler, `recognizers fit` on the tiny config in-process, resumed from a checkpoint,
under DDP with two CPU processes, and an end-to-end overfit to WER 0."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.schedules import lr_factor
from training.speech_data import BucketBatchSampler, collate_speech
from training.speech_module import SambaASRModule

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "training" / "configs" / "samba_asr_tiny.yaml")


def _fit_args(corpus: Path, root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", TINY, "--data.init_args.train_dir", str(corpus / "train"),
            "--data.init_args.val_dir", str(corpus / "dev"), "--trainer.default_root_dir", str(root), *extra]


def _checkpoint(root: Path) -> Path:
    found = sorted((root / "checkpoints").glob("*.ckpt"))
    assert found, f"no checkpoint under {root}"
    return found[-1]


def test_collate_shifts_tokens_for_teacher_forcing():
    items = [(torch.ones(80, 5), [7, 8, 9], "A B", "1-1-0000"), (torch.ones(80, 3), [5], "C", "1-1-0001")]
    batch = collate_speech(items)
    assert batch["feats"].shape == (2, 80, 5)
    assert batch["lengths"].tolist() == [5, 3]
    assert batch["tokens_in"].tolist() == [[1, 7, 8, 9], [1, 5, 0, 0]]
    assert batch["tokens_out"].tolist() == [[7, 8, 9, 2], [5, 2, 0, 0]]
    assert batch["token_lengths"].tolist() == [4, 2]
    assert float(batch["feats"][1, :, 3:].abs().sum()) == 0.0


def test_bucket_sampler_splits_ranks_evenly_and_covers_every_utterance():
    """A5: under the budget, each utterance once per epoch, equal batch counts per rank."""
    seconds = [1.0 + (i * 7919 % 13) for i in range(101)]
    one = BucketBatchSampler(seconds, 30.0, seed=3)
    batches = list(one)
    assert sorted(i for b in batches for i in b) == list(range(101))
    assert all(len(b) * max(seconds[i] for i in b) <= 30.0 or len(b) == 1 for b in batches)
    ranks = [BucketBatchSampler(seconds, 30.0, seed=3, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(batches) // 2
    seen = [i for s in ranks for b in s for i in b]
    assert len(seen) == len(set(seen))
    first = list(ranks[0])
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != first  # a new batch order every epoch


def test_lr_schedule():
    assert lr_factor(0, 10, 100, "noam") == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, "noam") == pytest.approx(1.0)
    assert lr_factor(39, 10, 100, "noam") == pytest.approx(0.5)
    assert lr_factor(99, 10, 100, "cosine") == pytest.approx(0.05)
    assert lr_factor(54, 10, 100, "cosine") == pytest.approx(0.05 + 0.95 * 0.5, abs=0.02)


def test_joint_loss_is_the_weighted_sum_of_ctc_and_ce():
    """M8: L = λ·CTC + (1 − λ)·CE with label smoothing; pure CE without the CTC head."""
    torch.manual_seed(0)
    items = [(torch.randn(80, 40), [5, 6, 7], "X", "1-1-0"), (torch.randn(80, 31), [8, 9], "Y", "1-1-1")]
    batch = collate_speech(items)
    module = SambaASRModule(vocab_size=20, size="tiny", ctc_weight=0.3)
    total, ce, ctc = module._losses(batch, augment=False)
    assert torch.isclose(total, 0.3 * ctc + 0.7 * ce)
    pure = SambaASRModule(vocab_size=20, size="tiny", ctc_weight=0.0)
    assert pure.model.ctc_head is None
    total, ce, ctc = pure._losses(batch, augment=False)
    assert ctc is None
    assert torch.equal(total, ce)


def test_ctc_texts_collapse_repeats_and_blanks_within_each_length():
    """Greedy CTC of validation: best path per frame, repeats merged, blanks dropped, frames past an
    input's length ignored; the ids go through the tokenizer."""

    class Spelled:
        def decode(self, ids):
            return " ".join(str(i) for i in ids)

    module = SambaASRModule(vocab_size=20, size="tiny")
    module.tokenizer = Spelled()
    blank = module.model.cfg.blank_id
    frames = [[5, 5, blank, 5, 7, 7, 9], [8, blank, blank, 8, 8, 3, 3]]
    scores = torch.nn.functional.one_hot(torch.tensor(frames), 20).float()  # (2, 7, 20)
    module.model.ctc_log_probs = lambda encoded: scores
    texts = module.ctc_texts(torch.zeros(2, 7, 4), torch.tensor([7, 4]))
    assert texts == ["5 5 7 9", "8 8"]


def test_fit_saves_a_checkpoint_that_exports_and_loads(speech_corpus, tmp_path):
    """`recognizers fit` on the tiny config (in-process), then export and recognizers.load."""
    import recognizers
    from recognizers.cli import main

    assert main(_fit_args(speech_corpus, tmp_path / "run")) == 0
    ckpt = torch.load(_checkpoint(tmp_path / "run"), weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["recognizers"]["model"] == "samba-asr"
    assert ckpt["recognizers"]["tokenizer"]
    out = tmp_path / "tiny.safetensors"
    assert main(["export", str(_checkpoint(tmp_path / "run")), "--out", str(out)]) == 0
    rec = recognizers.load(out, device="cpu")
    wave = next(iter(sorted((speech_corpus / "test").rglob("*.flac"))))
    result = rec.recognize([wave], beam_size=2, nbest=2)[0]
    assert len(result.nbest) <= 2
    assert isinstance(result.text, str)


def test_validation_reports_corpus_error_rates(speech_corpus):
    """val_wer/val_cer are the corpus-level rates of greedy attention decoding, val_ctc_wer/val_ctc_cer
    those of greedy CTC: an untrained model scores above 0 on both, and each branch's errors land in
    its own counts (they must survive the cross-process reduction)."""
    import lightning as L

    from training.speech_data import SpeechDataModule

    torch.manual_seed(0)
    dm = SpeechDataModule(str(speech_corpus / "train"), str(speech_corpus / "dev"), vocab_size=40,
                          cmvn_utterances=4)
    module = SambaASRModule(vocab_size=dm.vocab_size, size="tiny", val_max_tokens=8)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert metrics["val_wer"] > 0.5
    assert metrics["val_cer"] > 0.2
    assert metrics["val_ctc_wer"] > 0.5
    assert metrics["val_ctc_cer"] > 0.2
    assert module._counts.tolist() == [0.0] * 8  # reset for the next validation
    module._count_errors(["A B C", "D E"], ["A B X", "D E"])  # one substitution: WER 1/5, CER 1/8
    module._count_errors(["A B C"], ["A"], branch=1)  # two deletions: WER 2/3, CER 4/5
    assert module._counts.tolist() == [1.0, 5.0, 1.0, 8.0, 2.0, 3.0, 4.0, 5.0]


def test_fit_resumes_from_a_checkpoint(speech_corpus, tmp_path):
    from recognizers.cli import main

    root = tmp_path / "run"
    assert main(_fit_args(speech_corpus, root, "--trainer.max_steps", "2")) == 0
    first = _checkpoint(root)
    assert torch.load(first, weights_only=True)["global_step"] == 2
    assert main(_fit_args(speech_corpus, root, "--trainer.max_steps", "4", "--ckpt_path", str(first))) == 0
    ckpts = (root / "checkpoints").glob("*.ckpt")
    steps = {p.name: torch.load(p, weights_only=True)["global_step"] for p in ckpts}
    assert 4 in steps.values(), steps


def test_fit_starts_from_a_trained_model_with_its_tokenizer(speech_corpus, tiny_asr, tmp_path):
    """init_from + tokenizer_from: the run starts from the model file's weights, feature statistics
    and tokenizer (not the ones this corpus would give), and says so when they do not fit together."""
    import lightning as L

    from recognizers.checkpoint import Bundle, CheckpointError, read_bundle, save_bundle
    from recognizers.cli import main
    from training.speech_data import SpeechDataModule, model_tokenizer

    bundle = read_bundle(tiny_asr.path)
    start = dict(bundle.state_dict)
    start["cmvn.mean"] = torch.full_like(start["cmvn.mean"], 0.5)  # statistics no corpus would give
    model_file = save_bundle(tmp_path / "start.safetensors",
                             Bundle(bundle.model, bundle.config, bundle.extras, start))
    dirs = {"train_dir": str(speech_corpus / "train"), "val_dir": str(speech_corpus / "dev"),
            "cmvn_utterances": 4}
    dm = SpeechDataModule(**dirs, tokenizer_from=str(model_file))
    assert dm.tokenizer.to_bytes() == tiny_asr.tokenizer.to_bytes()
    module = SambaASRModule(vocab_size=dm.vocab_size, size="tiny", init_from=str(model_file))
    assert all(torch.equal(module.model.state_dict()[k], v) for k, v in start.items())
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=1, limit_val_batches=1,
                        enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    assert torch.equal(module.model.cmvn.mean, start["cmvn.mean"])  # not the corpus's statistics

    own = SpeechDataModule(**dirs, vocab_size=dm.vocab_size, tokenizer_type="bpe")  # pieces of its own
    with pytest.raises(ValueError, match="tokenizer_from"):
        L.Trainer(accelerator="cpu", logger=False, max_steps=1).fit(
            SambaASRModule(vocab_size=own.vocab_size, size="tiny", init_from=str(model_file)), datamodule=own)
    with pytest.raises(ValueError, match="config differs"):
        SambaASRModule(vocab_size=dm.vocab_size, size="tiny", model_overrides={"d_model": 48},
                       init_from=str(model_file))
    with pytest.raises(CheckpointError, match="no such model file"):
        model_tokenizer(str(tmp_path / "missing.safetensors"))
    other = save_bundle(tmp_path / "other.safetensors",
                        Bundle("handwriting", bundle.config, bundle.extras, start))
    with pytest.raises(CheckpointError, match="not a Samba-ASR one"):
        model_tokenizer(str(other))

    # the same through the command line, as the README gives it
    args = _fit_args(speech_corpus, tmp_path / "run", "--trainer.max_steps", "2",
                     "--model.init_args.init_from", str(model_file),
                     "--data.init_args.tokenizer_from", str(model_file))
    assert main(args) == 0
    saved = torch.load(_checkpoint(tmp_path / "run"), weights_only=True)
    assert saved["global_step"] == 2
    assert torch.equal(saved["state_dict"]["model.cmvn.mean"], start["cmvn.mean"])


@pytest.mark.slow
def test_fit_under_ddp_with_two_cpu_processes(speech_corpus, tmp_path):
    """The recipe's DDP path: `recognizers fit` with 2 CPU processes (gloo) runs and checkpoints."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = _fit_args(speech_corpus, tmp_path / "ddp", "--trainer.devices", "2", "--trainer.strategy", "ddp")
    proc = subprocess.run([sys.executable, "-m", "recognizers", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(_checkpoint(tmp_path / "ddp"), weights_only=True)
    assert ckpt["global_step"] == 4


@pytest.mark.slow
def test_tiny_model_overfits_a_few_utterances_to_zero_wer(speech_corpus):
    """M9: a tiny model learns four generated utterances exactly (greedy decoding, WER 0)."""
    from data.datasets.librispeech import scan_librispeech
    from data.tokenizer import SentencePieceTokenizer
    from training.metrics import normalize_transcript, wer
    from training.speech_data import _FeatureDataset

    utts = scan_librispeech(speech_corpus / "train")[:4]
    texts = [u.transcript for u in scan_librispeech(speech_corpus / "train")]
    tokenizer = SentencePieceTokenizer.train(texts, 40)
    torch.manual_seed(0)
    module = SambaASRModule(vocab_size=tokenizer.vocab_size, size="tiny",
                            model_overrides={"d_model": 64, "encoder_layers": 2, "decoder_layers": 1})
    module.tokenizer = tokenizer
    batch = collate_speech([_FeatureDataset(utts, tokenizer)[i] for i in range(len(utts))])
    from data.audio import GlobalCMVN

    cmvn = GlobalCMVN.fit([batch["feats"][i, :, : batch["lengths"][i]] for i in range(len(utts))])
    module.model.cmvn.load_state_dict(cmvn.state_dict())
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    for step in range(400):
        loss, _, _ = module._losses(batch, augment=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:
            module.eval()
            encoding = module.model.encode(batch["feats"], batch["lengths"])
            hyps = module.greedy_texts(*encoding)
            module.train()
            refs = [normalize_transcript(t) for t in batch["texts"]]
            if wer(refs, [normalize_transcript(h) for h in hyps]).rate == 0:
                break
    assert math.isfinite(loss.item())
    assert hyps == [normalize_transcript(t) for t in batch["texts"]], (hyps, batch["texts"])
