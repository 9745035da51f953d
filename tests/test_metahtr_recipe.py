"""Options of MetaHTR's CPU recipe: the outer rate of log α (meta_lr) and tasks from writers the
base model never saw (task_splits)."""

from pathlib import Path

import pytest
import torch
from iam_fixtures import write_iam_tree

from training.metahtr_data import EpisodeDataModule
from training.metahtr_module import OUTER_LR, MetaHTRModule


def _module(**kwargs):
    with pytest.warns(UserWarning, match="randomly initialised"):
        return MetaHTRModule(init={"size": "tiny"}, **kwargs)


def _one_step(module):
    optimizer = module.configure_optimizers()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    return optimizer, {n: float((p.detach() - before[n]).abs().max()) for n, p in module.named_parameters()}


def test_meta_lr_gives_the_inner_rates_their_own_group():
    module = _module(meta_lr=1e-2)
    optimizer, moved = _one_step(module)
    meta = {id(p) for p in module.meta.inner_lr.parameters()}
    lrs = [(g["lr"], {id(p) for p in g["params"]}) for g in optimizer.param_groups]
    assert [lr for lr, _ in lrs] == [OUTER_LR, 1e-2]
    assert lrs[1][1] == meta
    assert not lrs[0][1] & meta
    # Adam's first step moves every parameter by about its group's rate (float32: a few % at 1.0)
    assert all(v == pytest.approx(1e-2, rel=0.01) for n, v in moved.items() if n.startswith("meta.inner_lr."))
    others = [v for n, v in moved.items() if not n.startswith("meta.inner_lr.")]  # θ and γ
    assert any(n.startswith("meta.weight_net.") for n in moved)
    assert all(v == pytest.approx(OUTER_LR, rel=0.05) for v in others)


def test_without_meta_lr_one_group_at_the_thesis_rate():
    optimizer, moved = _one_step(_module())
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["lr"] == OUTER_LR
    assert all(v == pytest.approx(OUTER_LR, rel=0.05) for v in moved.values())


@pytest.fixture(scope="module")
def fake_iam(tmp_path_factory):
    return write_iam_tree(tmp_path_factory.mktemp("fake-iam") / "iam")  # train 000, 001; val 002, 005


def _data(fake, **kwargs):
    return EpisodeDataModule(str(fake.root), split_files={k: str(v) for k, v in fake.split_files.items()},
                             ways=1, shots=4, num_permutations=1, **kwargs)


@pytest.mark.parametrize(("splits", "expected"), [(["train"], {"000", "001"}), (["val"], {"005"}),
                                                  (["train", "val"], {"000", "001", "005"})])
def test_task_splits_draw_tasks_from_their_writers_and_never_from_validation_ones(fake_iam, splits, expected):
    data = _data(fake_iam, val_writers=1, task_splits=splits)
    seen = set()
    for epoch in range(4):
        loader = data.train_dataloader()
        loader.batch_sampler.set_epoch(epoch)
        seen |= {w for batch in loader for w in batch["writers"]}
    assert seen == expected
    assert [item["writer"] for item in data.val_dataloader()] == ["002"]  # the held-out writer


def test_task_splits_with_val_need_the_validation_writers_named():
    with pytest.raises(ValueError, match="val_writers"):
        EpisodeDataModule("unused", task_splits=["val"])
    with pytest.raises(ValueError, match="subset of train, val"):
        EpisodeDataModule("unused", task_splits=["test"])


@pytest.mark.parametrize(("config", "key"), [("metahtr_synth.yaml", "base"),
                                             ("writer_codes_synth.yaml", "base_checkpoint")])
def test_synthetic_recipes_start_from_the_shipped_plain_base(config, key):
    import yaml

    from recognizers.checkpoint import read_bundle

    root = Path(__file__).resolve().parents[1]
    path = yaml.safe_load((root / "training" / "configs" / config).read_text())["model"]["init_args"][key]
    bundle = read_bundle(root / path)  # shipped, so the recipe runs from a fresh clone
    assert bundle.model == "handwriting"
    assert not {"metahtr", "writer_codes"} & set(bundle.extras)  # a base, not an adapted model file
