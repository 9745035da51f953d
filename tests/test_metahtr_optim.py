"""MetaHTR's outer optimiser: θ at the thesis's rate, log α and γ optionally at their own (meta_lr)."""

import pytest
import torch

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


def test_meta_lr_gives_rates_and_weight_net_their_own_group():
    module = _module(meta_lr=1e-2)
    optimizer, moved = _one_step(module)
    meta = {id(p) for p in module.meta.parameters()}
    lrs = [(g["lr"], {id(p) for p in g["params"]}) for g in optimizer.param_groups]
    assert [lr for lr, _ in lrs] == [OUTER_LR, 1e-2]
    assert lrs[1][1] == meta
    assert not lrs[0][1] & meta
    # Adam's first step moves every parameter by about its group's rate (float32: a few % at 1.0)
    assert all(v == pytest.approx(1e-2, rel=0.01) for n, v in moved.items() if n.startswith("meta."))
    assert all(v == pytest.approx(OUTER_LR, rel=0.05) for n, v in moved.items() if n.startswith("model."))


def test_without_meta_lr_one_group_at_the_thesis_rate():
    optimizer, moved = _one_step(_module())
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["lr"] == OUTER_LR
    assert all(v == pytest.approx(OUTER_LR, rel=0.05) for v in moved.values())
