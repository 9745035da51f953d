"""PosFormer training (posformer.md §5, §7, §9; §13 T1, M3): the DDP-aware area batch sampler, the
DataModule over folders and zips, the LightningModule's loss and corpus-level ExpRate, the plateau
schedule, `recognizers fit` on the tiny config in-process (checkpoint, resume) and under DDP with two
CPU processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageDraw

from training.math_data import MathBatchSampler, MathDataModule, collate_math_batch
from training.math_module import PosFormerModule, merge_overrides

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "training" / "configs" / "posformer_tiny.yaml")
CONFIGS = ROOT / "training" / "configs"

# Valid CROHME captions (braced scripts, §2.3); drawn as plain text, which is enough for shape tests.
CAPTIONS = [
    "x ^ { 2 }", "a + b", "\\frac { 1 } { 2 }", "\\sqrt { x }", "y _ { 1 }", "2 x + 1 = 0",
    "\\alpha - \\beta",
    "e ^ { x + 1 }", "\\sum \\limits _ { i = 1 } ^ { n } i", "( a + b ) ^ { 2 }", "\\sin x", "z", "3 < 4",
    "\\sqrt [ 3 ] { 8 }", "f ( x ) = x", "\\frac { a } { b } + c", "1 0 0", "\\pi r ^ { 2 }", "n !", "x y",
]


def _draw(text: str, index: int) -> Image.Image:
    """White text on black, two heights so that area bucketing has something to sort."""
    height = 28 if index % 2 else 40
    image = Image.new("L", (max(48, 9 * len(text) + 16), height), 0)
    ImageDraw.Draw(image).text((6, height // 2 - 6), text, fill=255)
    return image


def _write_split(folder: Path, captions: list[str], prefix: str) -> None:
    (folder / "img").mkdir(parents=True)
    lines = []
    for i, caption in enumerate(captions):
        name = f"{prefix}_{i:03d}"
        _draw(caption.replace(" ", "").replace("\\", ""), i).save(folder / "img" / f"{name}.bmp")
        lines.append(f"{name}\t{caption}")
    (folder / "caption.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def math_corpus(tmp_path_factory) -> Path:
    """16 training and 6 test formula images in the CROHME layout (``train/``, ``test/``)."""
    root = tmp_path_factory.mktemp("math") / "corpus"
    _write_split(root / "train", CAPTIONS[:16], "train")
    _write_split(root / "test", CAPTIONS[14:], "test")
    return root


def _fit_args(corpus: Path, root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", TINY, "--data.init_args.train_dir", str(corpus / "train"),
            "--data.init_args.val_dir", str(corpus / "test"), "--trainer.default_root_dir", str(root), *extra]


def _steps(root: Path) -> dict[str, int]:
    found = sorted((root / "checkpoints").glob("*.ckpt"))
    assert found, f"no checkpoint under {root}"
    return {p.name: torch.load(p, weights_only=True)["global_step"] for p in found}


def _module(**kwargs) -> PosFormerModule:
    torch.manual_seed(0)
    return PosFormerModule(size="tiny", val_max_tokens=6, **kwargs)


def _trainer():
    import lightning as L

    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


def test_batch_sampler_splits_training_evenly_and_keeps_every_evaluation_batch():
    areas = [1000 + (i * 7919 % 13) * 100 for i in range(45)]
    one = MathBatchSampler(areas, 4, seed=3)
    batches = list(one)
    assert len(batches) == 12
    assert sorted(i for b in batches for _, i in b) == list(range(45))
    assert {e for b in batches for e, _ in b} == {0}
    train = [MathBatchSampler(areas, 4, seed=3, rank=r, world_size=5) for r in range(5)]
    assert [len(s) for s in train] == [2] * 5  # 12 batches: 10 used, the same count on every rank
    seen = [i for s in train for b in s for _, i in b]
    assert len(seen) == len(set(seen))
    evaluation = [MathBatchSampler(areas, 4, shuffle=False, rank=r, world_size=5, even=False)
                  for r in range(5)]
    assert [len(s) for s in evaluation] == [3, 3, 2, 2, 2]
    assert sorted(i for s in evaluation for b in s for _, i in b) == list(range(45))
    first = list(train[0])
    train[0].set_epoch(1)
    second = list(train[0])
    assert second != first
    assert {e for b in second for e, _ in b} == {1}


def test_datamodule_reads_folders_and_zip_splits(math_corpus, tmp_path, single_thread):
    dm = MathDataModule(str(math_corpus / "train"), str(math_corpus / "test"), batch_size=4,
                        eval_batch_size=2)
    assert dm.vocab_size == 113
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    n = len(batch["ids"])
    assert 1 <= n <= 4
    assert batch["images"].shape[:2] == (n, 1)
    assert batch["mask"].shape[0] == n
    assert batch["mask"].shape[1:] == batch["images"].shape[2:]
    assert all(dm.vocab.encode(t) == i for t, i in zip(batch["tokens"], batch["ids"], strict=True))
    assert sum(len(b["ids"]) for b in dm.val_dataloader()) == 6
    keyed = dm.train_dataloader().dataset  # augmentation scales follow the epoch carried by the key
    assert len({keyed[(epoch, 3)][0].shape for epoch in range(3)}) > 1
    split = []
    for rank in range(2):  # under DDP (3 batches of 2 on 2 ranks) every validation sample is seen once
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        split.append([n for b in MathDataModule.val_dataloader(dm) for n in b["names"]])
    dm.trainer = None
    assert sorted(len(names) for names in split) == [2, 4]
    assert len(set(split[0] + split[1])) == 6
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in math_corpus.rglob("*"):
            if path.is_file():
                zf.write(path, f"data/{path.relative_to(math_corpus).as_posix().replace('test/', '2014/')}")
    dz = MathDataModule(str(archive), str(archive), train_split="train", val_split="2014", scale_aug=False)
    dz.setup("fit")
    assert len(dz.datasets["train"]) == 16
    assert len(dz.datasets["val"]) == 6
    assert len(collate_math_batch([dz.datasets["val"][0]])["tokens"][0]) > 0


def test_training_and_validation_steps_on_cpu(math_corpus, single_thread):
    """B5: the bidirectional loss is finite and trains; validation reports loss and rates in [0, 1]."""
    dm = MathDataModule(str(math_corpus / "train"), str(math_corpus / "test"), batch_size=4,
                        eval_batch_size=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    module = _module()
    loss = module.compute_loss(batch)
    assert all(math.isfinite(x.item()) for x in (loss.total, loss.symbol, loss.level, loss.relpos))
    expected = (loss.symbol + 0.25 * loss.level + 0.25 * loss.relpos) / 1.5
    assert torch.isclose(loss.total, expected)
    loss.total.backward()
    assert module.model.position_decoder is not None
    assert all(p.grad is not None for p in module.model.decoder.parameters() if p.requires_grad)
    trainer = _trainer()
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert metrics["val_loss"] > 0
    assert all(0.0 <= metrics[f"val_{k}"] <= 1.0 for k in ("exprate", "le1", "le2", "le3"))
    assert metrics["val_exprate"] <= metrics["val_le1"] <= metrics["val_le2"] <= metrics["val_le3"]


def test_channels_last_is_the_same_model_in_another_memory_order(math_corpus, single_thread, tmp_path):
    """``channels_last`` changes the DenseNet's memory order only: same loss and gradients, and a
    checkpoint that loads into an NCHW module."""
    dm = MathDataModule(str(math_corpus / "train"), str(math_corpus / "test"), batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    plain, nhwc = _module().eval(), _module(channels_last=True).eval()  # eval: dropout off
    conv = nhwc.model.encoder.densenet.stages[0].grow[0].weight  # 3x3 over 48 channels
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()
    losses = [m.compute_loss(batch).total for m in (plain, nhwc)]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for loss in losses:
        loss.backward()
    grads = [m.model.encoder.densenet.stages[0].grow[0].weight.grad for m in (plain, nhwc)]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    reloaded = _module()
    reloaded.load_state_dict(nhwc.state_dict())
    torch.testing.assert_close(reloaded.eval().compute_loss(batch).total, losses[0], rtol=1e-5, atol=1e-5)


def test_init_from_a_bundle_or_checkpoint_starts_from_its_weights(tmp_path):
    """``init_from``: a bundle gives every weight but the training-only position branch; a checkpoint
    gives that too; another architecture is refused, naming the file."""
    from recognizers.checkpoint import CheckpointError, save_bundle
    from recognizers.posformer.recognizer import PosFormerRecognizer

    trained = _module()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)  # unlike any fresh initialisation
    bundle = save_bundle(tmp_path / "m.safetensors",
                         PosFormerRecognizer(trained.model, trained.vocab).to_bundle())
    started = _module(init_from=str(bundle))
    before = trained.model.state_dict()
    for key, value in started.model.named_parameters():  # parameters: buffers start alike anyway
        same = torch.equal(value, before[key])
        assert same != key.startswith("position_decoder."), key
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in before.items()},
                "recognizers": {"model": "posformer", "config": trained.model.cfg.to_dict(),
                                "vocab": json.dumps(list(trained.vocab.tokens))}}, ckpt)
    resumed = _module(init_from=str(ckpt)).model.state_dict()
    assert all(torch.equal(v, before[k]) for k, v in resumed.items())
    with pytest.raises(CheckpointError, match=r"m\.safetensors: its model config differs"):
        _module(init_from=str(bundle), model_overrides={"decoder": {"dim_feedforward": 64}})


def test_validation_reports_corpus_expression_rates(math_corpus, single_thread):
    """M2/M3: counts accumulate per batch and survive the reduction: an untrained model scores ExpRate 0,
    perfect hypotheses score 1 on every rate."""
    module = _module()
    module.count_expressions([["x"], ["a", "b"]], [["x"], ["a", "c"]])
    module.count_expressions([["1", "2", "3"], list("abcd"), list("abcde")],
                             [["1"], [], list("ab")])  # distances 2, 4, 3
    assert module._counts.tolist() == [5.0, 1.0, 2.0, 3.0, 4.0]
    module._counts.zero_()
    dm = MathDataModule(str(math_corpus / "train"), str(math_corpus / "test"), eval_batch_size=4)
    trainer = _trainer()
    untrained = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert untrained["val_exprate"] == 0.0
    module.validation_step = lambda batch, *_: module.count_expressions(batch["tokens"], batch["tokens"])
    perfect = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert [perfect[f"val_{k}"] for k in ("exprate", "le1", "le2", "le3")] == [1.0] * 4
    assert module._counts.tolist() == [0.0] * 5  # reset for the next validation


def test_plateau_schedule_monitors_val_exprate_at_validation_epochs():
    """T1: SGD + ReduceLROnPlateau(mode max, factor 0.25) on val_exprate, stepped every validation epoch."""
    module = _module(plateau_patience=20)
    module._trainer = SimpleNamespace(check_val_every_n_epoch=2)
    config = module.configure_optimizers()
    scheduler = config["lr_scheduler"]
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert scheduler["monitor"] == "val_exprate"
    assert (scheduler["interval"], scheduler["frequency"]) == ("epoch", 2)
    plateau = scheduler["scheduler"]
    assert (plateau.mode, plateau.factor, plateau.patience) == ("max", 0.25, 10)
    module._trainer = SimpleNamespace(check_val_every_n_epoch=None)
    with pytest.raises(ValueError, match="check_val_every_n_epoch"):
        module.configure_optimizers()


def test_model_overrides_merge_nested_configs():
    assert merge_overrides({"a": 1, "d": {"x": 1, "y": {"z": 2}}}, {"d": {"y": {"z": 3}}}) == {
        "a": 1, "d": {"x": 1, "y": {"z": 3}}}
    overrides = {"decoder": {"d_model": 24, "arm": {"kernel_size": 3}}}
    module = PosFormerModule(size="tiny", model_overrides=overrides)
    cfg = module.model.cfg
    assert (cfg.decoder.d_model, cfg.decoder.num_heads, cfg.decoder.arm.kernel_size) == (24, 2, 3)
    with pytest.raises(ValueError, match="113"):
        PosFormerModule(vocab_size=100, size="tiny")


@pytest.mark.parametrize("name", ["posformer_crohme.yaml", "posformer_synth.yaml",
                                  "posformer_synth_finetune.yaml"])
def test_recipes_parse(name, capsys):
    """The GPU and CPU recipes name only valid arguments (printing the config instantiates nothing)."""
    from training.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "PosFormerModule" in capsys.readouterr().out


def test_fit_writes_a_checkpoint_with_config_and_vocabulary(math_corpus, tmp_path, single_thread):
    """`recognizers fit` on the tiny config (in-process): the checkpoint rebuilds the model by itself."""
    from recognizers.checkpoint import read_bundle
    from recognizers.cli import main
    from recognizers.posformer import PosFormer, PosFormerConfig

    assert main(_fit_args(math_corpus, tmp_path / "run")) == 0
    assert 4 in _steps(tmp_path / "run").values()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    plateau = ckpt["lr_schedulers"][0]
    assert (plateau["mode"], plateau["factor"]) == ("max", 0.25)
    assert plateau["last_epoch"] == 1  # stepped after epoch 0; the checkpoint precedes the epoch-1 step
    assert "optimizer" not in ckpt["hyper_parameters"]  # primitive hyper-parameters only
    info = ckpt["recognizers"]
    assert info["model"] == "posformer"
    tokens = json.loads(info["vocab"])
    assert len(tokens) == 113
    assert tokens[:3] == ["<pad>", "<sos>", "<eos>"]
    bundle = read_bundle(last)
    assert bundle.extras["vocab"] == info["vocab"]
    PosFormer(PosFormerConfig.from_dict(bundle.config)).load_state_dict(bundle.state_dict, strict=True)


def test_fit_resumes_from_a_checkpoint(math_corpus, tmp_path, single_thread):
    from recognizers.cli import main

    root = tmp_path / "run"
    assert main(_fit_args(math_corpus, root, "--trainer.max_steps", "2")) == 0
    assert _steps(root)["last.ckpt"] == 2
    resume = ["--trainer.max_steps", "4", "--ckpt_path", str(root / "checkpoints" / "last.ckpt")]
    assert main(_fit_args(math_corpus, root, *resume)) == 0
    assert _steps(root)["last.ckpt"] == 4


@pytest.mark.slow
def test_fit_under_ddp_with_two_cpu_processes(math_corpus, tmp_path):
    """The recipe's DDP path: `recognizers fit` with 2 CPU processes (gloo); the validation batches are
    split unevenly (3 batches on 2 ranks) and the reduced metrics still reach every rank."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = _fit_args(math_corpus, tmp_path / "ddp", "--trainer.devices", "2", "--trainer.strategy", "ddp")
    proc = subprocess.run([sys.executable, "-m", "recognizers", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = _steps(tmp_path / "ddp")
    assert steps["last.ckpt"] == 4
    assert torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)["recognizers"]
