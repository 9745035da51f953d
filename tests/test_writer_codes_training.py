"""Writer-code data and training on the tiny synthetic IAM corpus (writer-htr.md §8, §9.1, §17 tests 18-19):
Hinge vectors of evaluation splits read only support images, the training writers' normalised table,
and an in-process ``recognizers fit`` of ``WriterCodeModule`` that leaves the base bit-identical."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import training.writer_codes_data as wcd
from data.handwriting import CharVocabulary, HandwritingConfig, normalize_image
from data.hinge import HingeConfig, writer_hinge
from recognizers.checkpoint import read_bundle, save_bundle
from recognizers.handwriting.recognizer import HandwritingRecognizer
from tests.handwriting_fixtures import tiny_model

TINY_YAML = "training/configs/writer_codes_tiny.yaml"


@pytest.fixture(scope="module")
def corpus(tiny_text_corpus) -> Path:
    """The tiny synthetic IAM-layout corpus of the session (tests/conftest.py)."""
    return tiny_text_corpus


@pytest.fixture(scope="module")
def datamodule(corpus) -> wcd.WriterCodeDataModule:
    dm = wcd.WriterCodeDataModule(str(corpus), num_permutations=2)
    dm.setup("fit")
    return dm


def test_evaluation_splits_follow_the_protocol(datamodule):
    splits = datamodule.eval_splits("val")
    val = datamodule.dataset("val")
    assert splits
    for split in splits:
        assert len(split.support) == 16
        assert set(split.support).isdisjoint(split.query)
        words = [i for i, writer in enumerate(val.writers) if writer == split.writer]
        assert sorted(split.support + split.query) == words
    assert len(datamodule.train_writers) >= 8


def test_split_hinge_is_computed_from_support_images_only(datamodule, monkeypatch):
    seen: list[int] = []
    original = wcd.support_hinge

    def spy(load, indices, config, cache=None):
        def guarded(index: int) -> np.ndarray:
            seen.append(index)
            return load(index)
        return original(guarded, indices, config, cache)

    monkeypatch.setattr(wcd, "support_hinge", spy)
    split = datamodule.eval_splits("val")[0]
    items = wcd.EvalSplitDataset(datamodule.dataset("val"), [split], HingeConfig())
    item = items[0]
    assert sorted(seen) == sorted(split.support)  # the query images never reach the Hinge function
    support = [datamodule.dataset("val")[i][0].numpy() for i in split.support]
    assert np.allclose(item["hinge"].numpy(), writer_hinge(support))
    assert item["hinge"].shape == (465,)
    assert len(item["query_images"]) == len(item["query_texts"]) == len(split.query)


def test_training_writers_hinge_table_is_z_scored(datamodule):
    table, normalizer = datamodule.use_hinge(HingeConfig(bins=12))
    assert table.shape == (len(datamodule.train_writers), 78)
    assert np.allclose(table.mean(axis=0), 0, atol=1e-9)
    assert normalizer.size == 78
    datamodule.hinge_config = None  # leave the shared data module as the other tests expect


def _base_bundle(datamodule, path: Path) -> Path:
    """A tiny random base model saved as a handwriting bundle over the corpus's training characters."""
    vocab = CharVocabulary.from_texts(datamodule.train_texts)
    model = tiny_model("fphtr", "resnet18", max_seq_len=20, vocab=vocab)
    return save_bundle(path, HandwritingRecognizer(model, vocab).to_bundle())


def test_writer_codes_use_and_save_the_base_models_image_pipeline(corpus, tmp_path):
    """A base trained at another image scale: the writer-code data are resized like its training images
    and the writer-code checkpoint carries that pipeline to export and inference."""
    from training.writer_codes_module import WriterCodeModule

    dm = wcd.WriterCodeDataModule(str(corpus), num_permutations=1)
    dm.setup("fit")
    vocab = CharVocabulary.from_texts(dm.train_texts)
    base = HandwritingRecognizer(tiny_model("fphtr", "resnet18", max_seq_len=20, vocab=vocab), vocab,
                                 preprocess=HandwritingConfig(scale=1.0))
    bundle = save_bundle(tmp_path / "base.safetensors", base.to_bundle())
    module = WriterCodeModule(base_checkpoint=str(bundle))
    module.trainer = SimpleNamespace(datamodule=dm)
    module.setup("fit")
    assert dm.preprocess.scale == 1.0
    words = dm.train_dataloader().dataset
    pixels = words.dataset[0][0]
    assert words[0][0].shape[-2:] == normalize_image(pixels, HandwritingConfig(scale=1.0)).shape[-2:]
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert json.loads(checkpoint["recognizers"]["preprocess"])["scale"] == 1.0
    fresh = WriterCodeModule()
    fresh.on_load_checkpoint(checkpoint)
    assert fresh.preprocess == base.preprocess


@pytest.mark.slow
@pytest.mark.parametrize("codes", [
    {"source": "learned", "injection": "cond_bn", "code_size": 8, "bn_hidden": 16},
    {"source": "hinge", "injection": "feature_mlp", "hinge_bins": 6, "mlp_hidden": 24},
])
def test_tiny_fit_trains_the_adapter_and_leaves_the_base_bit_identical(corpus, datamodule, tmp_path, codes):
    from training.cli import main
    from training.writer_codes_module import WriterCodeModule

    bundle = _base_bundle(datamodule, tmp_path / "base.safetensors")
    main(["fit", "--config", TINY_YAML, "--data.init_args.root", str(corpus),
          "--trainer.default_root_dir", str(tmp_path / "run"),
          "--model.init_args.base_checkpoint", str(bundle), "--model.init_args.codes", json.dumps(codes)])
    ckpt_path = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    base = read_bundle(bundle).state_dict
    trained = {k.removeprefix("model.base."): v for k, v in ckpt["state_dict"].items()
               if k.startswith("model.base.")}
    assert trained.keys() == base.keys()
    assert all(torch.equal(trained[k], base[k]) for k in base), "the frozen base changed"
    last_layers = (".out.weight", "feature_mlp.layers.2.weight")  # hook B, hook A
    last = [v for k, v in ckpt["state_dict"].items() if k.endswith(last_layers)]
    assert last
    assert all(v.abs().sum() > 0 for v in last)  # the zero-initialised last layers were trained
    score = next(v["best_model_score"] for k, v in ckpt["callbacks"].items() if "val_wer" in k)
    assert 0 <= float(score) < float("inf")
    module = WriterCodeModule.load_from_checkpoint(ckpt_path)  # rebuilt without the data module
    assert module.writer_ids == datamodule.train_writers
    assert module.code_config.source == codes["source"]
