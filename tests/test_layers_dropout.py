"""``recognizers.layers.Dropout``: nn.Dropout's contract with a cheaper CPU mask (rate rounded to 1/256)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recognizers.layers import Dropout


def test_rate_scale_and_gradient_follow_the_mask():
    torch.manual_seed(0)
    layer = Dropout(0.1).train()
    x = torch.full((64, 250, 64), 2.0, requires_grad=True)
    y = layer(x)
    kept = y != 0
    rate = 26 / 256  # 0.1 rounded to a multiple of 1/256
    assert abs(1 - kept.float().mean().item() - rate) < 0.003
    assert torch.equal(y[kept], torch.full_like(y[kept], 2.0 * 256 / 230))
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() * (256 / 230))
    for dim in range(3):  # bytes of one 64-bit draw land in neighbouring elements: no pattern along any axis
        share = kept.float().mean(dim=[d for d in range(3) if d != dim])
        assert share.min() > 0.85
        assert share.max() < 0.95


def test_seeded_runs_repeat_and_bytes_are_not_reused():
    layer = Dropout(0.5).train()
    torch.manual_seed(3)
    first = layer(torch.ones(1000))
    second = layer(torch.ones(1000))
    torch.manual_seed(3)
    assert torch.equal(layer(torch.ones(1000)), first)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("shape", [(0,), (7,), (3, 5, 1)])
def test_odd_sizes_and_dtypes(shape):
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x = torch.ones(shape, dtype=dtype)
        y = Dropout(0.3).train()(x)
        assert (y.shape, y.dtype) == (x.shape, x.dtype)


def test_eval_mode_and_edge_rates_are_nn_dropout():
    x = torch.randn(4, 9)
    assert torch.equal(Dropout(0.1).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    assert isinstance(Dropout(0.1), nn.Dropout)  # code that switches dropout modes finds it
    assert Dropout(0.1).state_dict() == {}
