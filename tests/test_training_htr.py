"""Handwriting base-model training (issue #5; writer-htr.md §4, §4.5, §9, §15, §17 tests 20–23): the
augmentation, the IAM DataModule, the LightningModule's loss, metrics and schedules, `recognizers fit`
on the tiny config in-process (checkpoint → export → load, resume), under DDP with two CPU processes,
an overfit to CER 0, and `recognizers evaluate|transcribe --task text`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.augment import RECIPES, HandwritingAugment, paper_level
from data.handwriting import BACKGROUND, CharVocabulary
from tests.handwriting_fixtures import word_pixels
from training.htr_data import HandwritingDataModule, collate_handwriting
from training.htr_module import LEARNING_RATES, HTRModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"
TINY = str(CONFIGS / "htr_tiny.yaml")


@pytest.fixture(scope="module")
def corpus(tiny_text_corpus) -> Path:
    """The tiny synthetic IAM-layout corpus of the session (tests/conftest.py)."""
    return tiny_text_corpus


def _fit_args(corpus: Path, root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", TINY, "--data.init_args.root", str(corpus),
            "--trainer.default_root_dir", str(root), *extra]


def _steps(root: Path) -> dict[str, int]:
    found = sorted((root / "checkpoints").glob("*.ckpt"))
    assert found, f"no checkpoint under {root}"
    return {p.name: torch.load(p, weights_only=True)["global_step"] for p in found}


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> SimpleNamespace:
    """One in-process `recognizers fit` on htr_tiny.yaml, exported with `recognizers export`."""
    from recognizers.cli import main

    root = tmp_path_factory.mktemp("htr-run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_fit_args(corpus, root / "run")) == 0
    finally:
        torch.set_num_threads(threads)
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    bundle = root / "handwriting.safetensors"
    assert main(["export", str(ckpt), "--out", str(bundle)]) == 0
    return SimpleNamespace(root=root / "run", ckpt=ckpt, bundle=bundle)


# ----- augmentation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", RECIPES)
def test_augmentation_is_deterministic_per_seed_and_keeps_grey_uint8(recipe):
    augment = HandwritingAugment(recipe)
    pixels = word_pixels("quick", height=60)
    before = pixels.copy()
    outputs = [augment(pixels, seed=(0, 0, i)) for i in range(12)]
    assert np.array_equal(pixels, before)  # the input is never modified
    for i, out in enumerate(outputs):
        assert out.ndim == 2
        assert out.dtype == np.uint8
        assert 0.5 < out.shape[0] / pixels.shape[0] < 2
        assert 0.5 < out.shape[1] / pixels.shape[1] < 2
        assert np.array_equal(out, augment(pixels, seed=(0, 0, i)))  # same seed, same image
        assert np.array_equal(out, HandwritingAugment(recipe)(pixels, seed=(0, 0, i)))  # any instance
        corners = out[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert corners.min() > 128, corners  # borders are filled with paper, never with black (ink)
    assert len({o.tobytes() for o in outputs}) > 6  # different seeds, different images
    assert augment(np.zeros((2, 3), np.uint8), seed=1).shape == (2, 3)  # too small to warp: unchanged
    with pytest.raises(ValueError, match="uint8"):
        augment(pixels.astype(np.float32), seed=0)
    assert paper_level(pixels) == pytest.approx(235, abs=6)


@pytest.mark.parametrize("recipe", RECIPES)
def test_augmentation_of_tiny_images_never_fails(recipe):
    """Punctuation words can be a few pixels wide; every size must pass through (or be left alone)."""
    augment = HandwritingAugment(recipe)
    rng = np.random.default_rng(0)
    for height in range(1, 15):
        for width in range(1, 15):
            pixels = np.full((height, width), 230, np.uint8)
            pixels[rng.random((height, width)) < 0.3] = 20
            for seed in range(12):
                out = augment(pixels, seed=(seed, height, width))
                assert (out.ndim, out.dtype) == (2, np.uint8)
                assert min(out.shape) >= 1


def test_albumentations_1x_arguments_fail_the_tests():
    """platform.md §11: 2.x ignores renamed arguments with a UserWarning; pyproject makes it an error."""
    import albumentations as A

    with pytest.raises(UserWarning, match="not valid for transform"):
        A.GaussNoise(var_limit=(10, 50))
    with pytest.raises(ValueError, match="recipe"):
        HandwritingAugment("unknown")  # type: ignore[arg-type]


# ----- data ---------------------------------------------------------------------------------------


def test_datamodule_builds_the_vocabulary_and_padded_batches(corpus, single_thread):
    dm = HandwritingDataModule(str(corpus), batch_size=4, eval_batch_size=5)
    train_texts = [s.text for s in dm.datasets["train"].samples]
    assert dm.vocab == CharVocabulary.from_texts(train_texts)
    assert dm.vocab_size == len(dm.vocab.chars) + 3
    dm.setup("fit")
    assert {dm.datasets["train"].corpus.writer_of(i) for i in dm.datasets["train"].ids}.isdisjoint(
        {dm.datasets["val"].corpus.writer_of(i) for i in dm.datasets["val"].ids})
    batch = next(iter(dm.train_dataloader()))
    n = len(batch["texts"])
    assert 1 <= n <= 4
    assert batch["images"].shape[:2] == (n, 1)
    assert batch["mask"].shape == (n, *batch["images"].shape[2:])
    assert torch.all(batch["images"][:, 0][batch["mask"]] == BACKGROUND)  # §16.2: padding is paper
    val = dm.val_dataloader()
    assert sum(len(b["texts"]) for b in val) == len(dm.datasets["val"])
    items = dm.train_dataloader().dataset  # augmentation follows (seed, epoch, index)
    assert all(torch.equal(items[(0, i)][0], items[(0, i)][0]) for i in range(5))
    assert any(items[(0, i)][0].shape != items[(1, i)][0].shape or not torch.equal(items[(0, i)][0],
               items[(1, i)][0]) for i in range(5))
    seen = []
    for rank in range(2):  # under DDP every validation sample is scored exactly once
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        seen += [i for b in HandwritingDataModule.val_dataloader(dm) for i in b["ids"]]
    dm.trainer = None
    assert sorted(seen) == sorted(dm.datasets["val"].ids)


def test_datamodule_scale_resizes_images_and_is_the_models_preprocessing(corpus, single_thread):
    """``scale`` sets HandwritingConfig.scale: validation images (not augmented) come out twice as large at
    1.0 as at the default 0.5, and the module saves the scale with the model for inference."""
    half, full = (HandwritingDataModule(str(corpus), scale=s) for s in (0.5, 1.0))
    assert (half.preprocess.scale, full.preprocess.scale) == (0.5, 1.0)
    for dm in (half, full):
        dm.setup("fit")
    small, large = (dm.val_dataloader().dataset[(0, 0)][0] for dm in (half, full))
    assert abs(large.shape[-2] - 2 * small.shape[-2]) <= 1
    assert abs(large.shape[-1] - 2 * small.shape[-1]) <= 1
    module = HTRModule(size="tiny", vocab_size=full.vocab_size)
    module.trainer = SimpleNamespace(datamodule=full)
    module.setup("fit")
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert json.loads(checkpoint["recognizers"]["preprocess"])["scale"] == 1.0


def test_datamodule_takes_a_models_vocabulary_and_leaves_out_what_it_cannot_spell(trained, corpus, tmp_path,
                                                                                  single_thread):
    """``vocabulary=MODEL``: the model's characters replace the training labels' (so ``init_from`` can go
    on training it on a corpus with characters it lacks); training words it cannot spell are left out,
    validation words are kept (and scored as they are)."""
    from dataclasses import replace

    from data.datasets.iam import CorpusError
    from recognizers.checkpoint import CheckpointError, read_bundle, save_bundle

    own = HandwritingDataModule(str(corpus))
    texts = [s.text for s in own.datasets["train"].samples]
    rare = min(own.vocab.chars, key=lambda c: sum(c in t for t in texts))
    narrow = CharVocabulary([c for c in own.vocab.chars if c != rare])
    bundle = read_bundle(trained.bundle)
    path = save_bundle(tmp_path / "narrow.safetensors",
                       replace(bundle, extras={**bundle.extras, "vocab": narrow.to_json()}))
    dm = HandwritingDataModule(str(corpus), vocabulary=str(path))
    assert dm.vocab == narrow
    assert dm.vocab_size == own.vocab_size - 1
    dm.setup("fit")
    kept = dm.train_dataloader().dataset.indices
    assert 0 < len(kept) < len(texts)
    assert [texts[i] for i in kept] == [t for t in texts if rare not in t]
    assert len(dm.val_dataloader().dataset) == len(own._items("val"))
    with pytest.raises(CheckpointError, match="no such model file"):
        HandwritingDataModule(str(corpus), vocabulary=str(tmp_path / "missing.safetensors"))
    empty = save_bundle(tmp_path / "empty.safetensors",
                        replace(bundle, extras={**bundle.extras, "vocab": CharVocabulary(["~"]).to_json()}))
    with pytest.raises(CorpusError, match="spells none"):
        HandwritingDataModule(str(corpus), vocabulary=str(empty))


def test_datamodule_without_split_lists_names_the_folder(tmp_path):
    from data.datasets.iam import CorpusError

    with pytest.raises(CorpusError, match="split"):
        HandwritingDataModule(str(tmp_path))


# ----- module -------------------------------------------------------------------------------------


def _module(decoder: str = "fphtr", vocab: CharVocabulary | None = None, max_seq_len: int = 12,
            **kwargs) -> HTRModule:
    vocab = vocab or CharVocabulary.from_texts(["abcdefgh", "xyz"])
    torch.manual_seed(0)
    module = HTRModule(vocab_size=len(vocab), size="tiny", decoder=decoder, max_seq_len=max_seq_len, **kwargs)
    module.set_vocabulary(vocab)
    return module


@pytest.mark.parametrize("decoder", ["fphtr", "sar"])
def test_loss_is_cross_entropy_over_non_pad_characters(decoder, single_thread):
    module = _module(decoder, label_smoothing=0.1).eval()
    images = torch.randn(2, 1, 40, 96)
    mask = torch.zeros(2, 40, 96, dtype=torch.bool)
    batch = {"images": images, "mask": mask, "texts": ["abc", "xyzzyab"]}
    tf = module.vocab.targets(batch["texts"])
    logits = module.model(images, mask, tf.inputs)
    expected = F.cross_entropy(logits.transpose(1, 2), tf.targets, ignore_index=0, label_smoothing=0.1)
    assert torch.allclose(module.compute_loss(batch), expected)
    with pytest.raises(KeyError, match="not in the vocabulary"):
        module.compute_loss({**batch, "texts": ["abc", "ABC"]})
    assert torch.isfinite(module.compute_loss({**batch, "texts": ["abc", "ABC"]}, strict=False))
    long = module.targets(["abcdefgh" * 3])  # cut to max_seq_len steps
    assert long.inputs.shape == long.targets.shape == (1, 12)


def test_error_counts_are_corpus_level_on_characters():
    """§17 tests 20–22: decoded characters, empty predictions count, rates pooled over the corpus."""
    module = _module()
    module.count_errors(["hello"], [""])  # an empty prediction: 5 deleted characters, 1 word wrong
    assert module._counts.tolist() == [1.0, 1.0, 5.0, 5.0]
    module._counts.zero_()
    module.count_errors(["ab", "abcdefgh"], ["ax", "abcdefgx"])  # one error each: CER 2/10, not 0.3125
    words, refs, chars, units = module._counts.tolist()
    assert (chars / units, words / refs) == (0.2, 1.0)


def test_validation_reports_cer_and_wer(corpus, single_thread):
    import lightning as L

    dm = HandwritingDataModule(str(corpus), batch_size=8, eval_batch_size=16, max_val_samples=24)
    torch.manual_seed(0)
    module = HTRModule(vocab_size=dm.vocab_size, size="tiny", val_max_length=6)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert metrics["val_wer"] == 1.0  # untrained
    assert metrics["val_cer"] > 0.5
    assert metrics["val_loss"] > 0
    assert module._counts.tolist() == [0.0] * 4  # reset for the next validation


def test_optimiser_defaults_and_schedules():
    for decoder in ("fphtr", "sar"):
        module = _module(decoder)
        optimizer = module.configure_optimizers()
        assert isinstance(optimizer, torch.optim.Adam)
        assert optimizer.param_groups[0]["lr"] == LEARNING_RATES[decoder]
        assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    sar = _module("sar", schedule="step", warmup_steps=10, decay_every=100, decay_factor=0.5, min_lr=2e-4)
    factors = [sar._lr_factor(s, 1e-3, 0) for s in (0, 9, 99, 100, 250, 10_000)]
    assert factors == [0.1, 1.0, 1.0, 0.5, 0.25, 0.2]  # warm-up, then halving down to min_lr
    config = sar.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    with pytest.raises(ValueError, match="schedule"):
        _module(schedule="noam")
    with pytest.raises(ValueError, match="decoder"):
        HTRModule(decoder="ctc")


@pytest.mark.parametrize("name", ["htr_iam.yaml", "htr_synth.yaml", "htr_synth_glyphs.yaml",
                                  "htr_synth_fonts.yaml", "htr_synth_long.yaml", "htr_tiny.yaml"])
def test_recipes_parse(name, capsys):
    """The GPU, CPU and test recipes name only valid arguments (printing instantiates nothing)."""
    from training.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "HTRModule" in out
    assert "HandwritingDataModule" in out


# ----- fit, export, load, evaluate ----------------------------------------------------------------


def test_fit_checkpoint_exports_a_recognizer(trained, corpus, single_thread):
    import recognizers
    from recognizers.checkpoint import read_bundle
    from recognizers.handwriting import HTRConfig

    ckpt = torch.load(trained.ckpt, weights_only=True)
    assert ckpt["global_step"] == 4
    info = ckpt["recognizers"]
    assert info["model"] == "handwriting"
    assert HTRConfig.from_dict(info["config"]).name == "FPHTR-18"
    vocab = CharVocabulary.from_json(info["vocab"])
    assert len(vocab) == info["config"]["vocab_size"]
    assert "optimizer" not in ckpt["hyper_parameters"]
    assert read_bundle(trained.bundle).extras["vocab"] == info["vocab"]
    rec = recognizers.load(trained.bundle, device="cpu")
    assert rec.task == "text"
    word = next(iter(sorted((corpus / "words").rglob("*.png"), key=lambda p: -p.stat().st_size)))
    result = rec.recognize([word], beam_size=2, nbest=2)[0]
    assert isinstance(result.text, str)
    assert 1 <= len(result.nbest) <= 2
    assert set(result.text) <= set(vocab.chars)


def test_fit_resumes_from_a_checkpoint(corpus, tmp_path, single_thread):
    from recognizers.cli import main

    root = tmp_path / "run"
    assert main(_fit_args(corpus, root, "--trainer.max_steps", "2")) == 0
    assert _steps(root)["last.ckpt"] == 2
    resume = ["--trainer.max_steps", "4", "--ckpt_path", str(root / "checkpoints" / "last.ckpt")]
    assert main(_fit_args(corpus, root, *resume)) == 0
    assert _steps(root)["last.ckpt"] == 4


def test_fit_can_start_from_a_trained_model(trained, corpus, tmp_path, single_thread):
    """``init_from`` starts a new run (step 0, fresh optimiser) from a trained model's weights."""
    from recognizers.checkpoint import read_bundle
    from recognizers.cli import main

    start = read_bundle(trained.bundle)
    drift = {}
    for name, extra in (("fresh", ()), ("init", ("--model.init_args.init_from", str(trained.bundle)))):
        root = tmp_path / name
        # another seed than the trained model's, whose own initialisation is that of seed 0
        args = _fit_args(corpus, root, "--trainer.max_steps", "2", "--seed_everything", "1", *extra)
        assert main(args) == 0
        ckpt = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 2
        weights = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
        drift[name] = max((weights[k] - v).abs().max().item() for k, v in start.state_dict.items()
                          if v.is_floating_point() and "running_" not in k)
    assert drift["init"] < 1e-3 < 1e-2 < drift["fresh"]  # two Adam steps at 2e-4 from the trained weights
    cfg = start.config
    with pytest.raises(ValueError, match="config differs"):
        HTRModule(vocab_size=cfg["vocab_size"], size="tiny", decoder="sar", init_from=str(trained.bundle))


def test_a_new_run_overwrites_last_ckpt_instead_of_versioning_it(corpus, tmp_path, single_thread):
    """Lightning names a checkpoint ``last-v1.ckpt`` when ``last.ckpt`` exists from another run; the
    documented resume command reads ``last.ckpt``, so every recipe turns that versioning off."""
    from recognizers.cli import main

    root = tmp_path / "run"
    assert main(_fit_args(corpus, root, "--trainer.max_steps", "2")) == 0
    written = (root / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    assert main(_fit_args(corpus, root, "--trainer.max_steps", "2")) == 0  # a fresh run, same folder
    assert not any(name.startswith("last-v") for name in _steps(root))
    assert (root / "checkpoints" / "last.ckpt").stat().st_mtime_ns > written


def test_every_recipe_keeps_one_last_ckpt():
    import yaml

    for recipe in sorted((ROOT / "training" / "configs").glob("*.yaml")):
        callbacks = (yaml.safe_load(recipe.read_text())["trainer"] or {}).get("callbacks") or []
        for cb in callbacks:
            if cb.get("init_args", {}).get("filename") == "last":
                assert cb["init_args"].get("enable_version_counter") is False, recipe.name


def test_evaluate_text_prints_cer_and_wer(trained, corpus, capsys, single_thread):
    from recognizers.cli import main

    args = ["evaluate", "--task", "text", "--data", str(corpus), "--model", str(trained.bundle),
            "--limit", "6", "--batch-size", "4", "--device", "cpu"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["task"], report["n"], report["level"]) == ("text", 6, "words")
    assert report["split"].endswith("test.uttlist")  # the corpus's Aachen test list by default
    assert set(report["metrics"]) == {"cer", "wer"}
    assert report["metrics"]["cer"] >= 0
    assert 0 <= report["metrics"]["wer"] <= 1
    assert main([*args, "--per-writer"]) == 0
    per_writer = json.loads(capsys.readouterr().out)["per_writer"]
    assert sum(row["n"] for row in per_writer.values()) == 6
    assert len(per_writer) >= 2
    assert list(per_writer) == sorted(per_writer)
    assert all(set(row) == {"n", "cer", "wer"} for row in per_writer.values())
    validation = corpus / "splits" / "aachen" / "validation.uttlist"
    assert main([*args, "--beam-size", "2", "--split", str(validation)]) == 0
    assert json.loads(capsys.readouterr().out)["beam_size"] == 2
    assert main(["evaluate", "--task", "text", "--data", str(corpus / "absent"), "--model",
                 str(trained.bundle)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_per_writer_metrics_pool_each_writers_items():
    from recognizers.text_eval import per_writer_metrics

    rows = per_writer_metrics(["b", "a", "b"], ["ab", "cd ef", "gh"], ["ab", "cd xf", "g"])
    assert list(rows) == ["a", "b"]
    assert rows["a"] == {"n": 1, "cer": 1 / 5, "wer": 1 / 2}
    assert rows["b"] == {"n": 2, "cer": 1 / 4, "wer": 1 / 2}


def test_evaluate_per_writer_is_for_plain_text_evaluation(corpus, capsys):
    from recognizers.cli import main

    assert main(["evaluate", "--task", "speech", "--data", str(corpus), "--per-writer"]) == 2
    assert "--per-writer is for --task text" in capsys.readouterr().err
    assert main(["evaluate", "--task", "text", "--data", str(corpus), "--per-writer",
                 "--adaptation-protocol"]) == 2
    assert "--per-writer" in capsys.readouterr().err


def test_transcribe_text_with_a_model_file(trained, corpus, capsys, single_thread):
    from recognizers.cli import main

    word = sorted((corpus / "words").rglob("*.png"), key=lambda p: -p.stat().st_size)[0]
    assert main(["transcribe", str(word), "--task", "text", "--model", str(trained.bundle), "-q"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["task"], record["error"]) == ("text", None)
    assert isinstance(record["text"], str)
    assert main(["transcribe", str(word), "--task", "math", "--model", str(trained.bundle), "-q"]) == 2
    assert "text model" in capsys.readouterr().err


# ----- slow: DDP and overfitting ------------------------------------------------------------------


@pytest.mark.slow
def test_fit_under_ddp_with_two_cpu_processes(corpus, tmp_path):
    """The recipe's DDP path: `recognizers fit` with 2 CPU processes (gloo) runs and checkpoints."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = _fit_args(corpus, tmp_path / "ddp", "--trainer.devices", "2", "--trainer.strategy", "ddp")
    proc = subprocess.run([sys.executable, "-m", "recognizers", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _steps(tmp_path / "ddp")["last.ckpt"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["fphtr", "sar"])
def test_tiny_model_overfits_a_few_words_to_zero_cer(corpus, decoder, single_thread):
    """Six real corpus words, no augmentation: greedy decoding reaches CER 0 within a few hundred steps."""
    from training.metrics import cer

    dm = HandwritingDataModule(str(corpus), augment=False)
    items = dm._items("train")
    batch = collate_handwriting([items[(0, i)] for i in range(0, 60, 10)])
    vocab = CharVocabulary.from_texts(batch["texts"])
    overrides = {"backbone": {"base_channels": 8},
                 "fphtr": {"d_model": 32, "dim_feedforward": 64, "encoder_dropout": 0.0, "dropout": 0.0},
                 "sar": {"hidden": 32, "d_k": 16, "encoder_dropout": 0.0, "pred_dropout": 0.0}}
    module = _module(decoder, vocab, max_seq_len=32, model_overrides=overrides)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    for step in range(400):
        module.train()
        loss = module.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 24:
            module.eval()
            hyps = module.greedy_texts(batch["images"], batch["mask"])
            if cer(batch["texts"], hyps).rate == 0:
                break
    assert hyps == batch["texts"], (step, loss.item())
