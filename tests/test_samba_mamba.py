"""The Mamba mixers of Samba-ASR (samba-asr.md §13.5: M1, M2, M6; §13.2: P4, P6 at block level)."""

from __future__ import annotations

import math

import pytest
import torch

from recognizers.samba_asr.config import MambaConfig
from recognizers.samba_asr.mamba import BiMamba, Mamba, MambaState, rescale_out_proj_
from tests.scan_utils import rel_err


def _lengths_mask(lengths: list[int]) -> torch.Tensor:
    return torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]


def test_mamba_shape_and_parameter_count():
    """M1: (B, L, d) out; 1,694,720 parameters for d = 512, N = 16, expand 2, R = 32 (§3.1)."""
    block = Mamba(MambaConfig(d_model=512))
    assert block.cfg.rank == 32
    assert sum(p.numel() for p in block.parameters()) == 1_694_720
    small = Mamba(MambaConfig(d_model=16))
    assert small(torch.randn(2, 7, 16)).shape == (2, 7, 16)


def test_mamba_initialisation():
    """M1: S4D-real A, D = 1, Δ in [dt_min, dt_max] after softplus, dt weight bound, no-decay flags."""
    cfg = MambaConfig(d_model=64, dt_min=1e-3, dt_max=0.1)
    block = Mamba(cfg)
    ssm = block.ssm
    torch.testing.assert_close(ssm.A_log, torch.log(torch.arange(1.0, 17.0)).repeat(128, 1))
    assert torch.all(ssm.D == 1)
    dt = torch.nn.functional.softplus(ssm.dt_proj.bias)
    assert dt.min() >= max(cfg.dt_min, cfg.dt_init_floor) * (1 - 1e-5)
    assert dt.max() <= cfg.dt_max * (1 + 1e-5)
    assert ssm.dt_proj.weight.abs().max() <= cfg.rank**-0.5 * cfg.dt_scale
    flagged = {id(p) for p in block.parameters() if getattr(p, "_no_weight_decay", False)}
    assert flagged == {id(ssm.A_log), id(ssm.D), id(ssm.dt_proj.bias)}


def test_out_proj_rescale_leaves_dt_bias_alone():
    block = Mamba(MambaConfig(d_model=64))
    bias = block.ssm.dt_proj.bias.clone()
    torch.manual_seed(0)
    rescale_out_proj_(block, num_layers=12, residuals_per_layer=2)
    bound = 1 / math.sqrt(block.cfg.d_inner)  # Kaiming-uniform(a=√5) bound: 1/√fan_in
    assert block.out_proj.weight.abs().max() <= bound / math.sqrt(24) + 1e-7
    assert block.out_proj.weight.abs().max() > 0.5 * bound / math.sqrt(24)
    torch.testing.assert_close(block.ssm.dt_proj.bias, bias)


def test_bimamba_adds_exactly_one_ssm_branch():
    """M2: the inner variant adds conv1d, x_proj, dt_proj, A_log and D once more (about +7 %)."""
    cfg = MambaConfig(d_model=512)
    uni, bi = Mamba(cfg), BiMamba(cfg)
    extra = sum(p.numel() for p in bi.parameters()) - sum(p.numel() for p in uni.parameters())
    assert extra == sum(p.numel() for p in bi.bwd.parameters())
    assert 0.06 < extra / 1_694_720 < 0.08


def test_bimamba_flip_equivariance():
    """P6: BiMamba(flip(x)) equals flip(BiMamba'(x)) where BiMamba' swaps the two branches."""
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=16)
    block = BiMamba(cfg).double()
    swapped = BiMamba(cfg).double()
    swapped.load_state_dict(block.state_dict())
    swapped.fwd.load_state_dict(block.bwd.state_dict())
    swapped.bwd.load_state_dict(block.fwd.state_dict())
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    torch.testing.assert_close(block(x.flip(1)), swapped(x).flip(1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padding_invariance(cls, dtype):
    """M3-style: each sequence of a padded batch equals the sequence run alone (both directions)."""
    torch.manual_seed(1)
    block = cls(MambaConfig(d_model=16)).to(dtype)
    lengths = [13, 5, 9]
    x = torch.randn(3, 13, 16, dtype=dtype)
    batched = block(x, _lengths_mask(lengths))
    for i, n in enumerate(lengths):
        alone = block(x[i : i + 1, :n])
        err = rel_err(batched[i : i + 1, :n], alone)
        assert err <= (1e-10 if dtype == torch.float64 else 1e-5), (i, err)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_step_loop_equals_forward(dtype):
    """P4: L calls of step() reproduce forward() at every position; prefill(x[:k]) + steps too."""
    torch.manual_seed(2)
    block = Mamba(MambaConfig(d_model=16)).to(dtype)
    x = torch.randn(2, 12, 16, dtype=dtype)
    full = block(x)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    state = block.init_state(2)
    steps = []
    for t in range(12):
        y, state = block.step(x[:, t], state)
        steps.append(y)
    assert rel_err(torch.stack(steps, 1), full) <= tol
    for k in (1, 3, 4, 7):
        y, state = block.prefill(x[:, :k])
        outs = [y]
        for t in range(k, 12):
            y_t, state = block.step(x[:, t], state)
            outs.append(y_t[:, None])
        assert rel_err(torch.cat(outs, 1), full) <= tol, k


def test_prefill_with_padding_continues_each_sequence():
    """Prefill of a padded batch leaves each sequence's state at its own last valid step."""
    torch.manual_seed(3)
    block = Mamba(MambaConfig(d_model=16)).double()
    lengths = [6, 2, 4]
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    nxt = torch.randn(3, 16, dtype=torch.float64)
    _, state = block.prefill(x, _lengths_mask(lengths))
    y, _ = block.step(nxt, state)
    for i, n in enumerate(lengths):
        _, alone = block.prefill(x[i : i + 1, :n])
        y_alone, _ = block.step(nxt[i : i + 1], alone)
        torch.testing.assert_close(y[i : i + 1], y_alone, rtol=1e-10, atol=1e-10)


def test_state_reorder_and_constant_size():
    """M6: index_select on the states equals running the selected sequences from scratch, and the
    state does not grow with the number of decoded steps."""
    torch.manual_seed(4)
    block = Mamba(MambaConfig(d_model=16)).double()
    x = torch.randn(3, 8, 16, dtype=torch.float64)
    _, state = block.prefill(x[:, :5])
    sizes = {(state.conv.shape, state.ssm.shape)}
    order = torch.tensor([2, 0, 0])
    y, reordered = block.step(x[order, 5], state.index_select(order))
    _, fresh = block.prefill(x[order, :5])
    y_fresh, fresh = block.step(x[order, 5], fresh)
    torch.testing.assert_close(y, y_fresh, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(reordered.ssm, fresh.ssm, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(reordered.conv, fresh.conv, rtol=1e-10, atol=1e-10)
    for t in range(5, 8):
        _, state = block.step(x[:, t], state)
        sizes.add((state.conv.shape, state.ssm.shape))
    assert len(sizes) == 1
    assert isinstance(state, MambaState)


def test_step_does_not_modify_the_callers_state():
    block = Mamba(MambaConfig(d_model=16))
    state = block.init_state(2)
    before = state.ssm.clone()
    block.step(torch.randn(2, 16), state)
    torch.testing.assert_close(state.ssm, before)


def test_training_step_under_bf16_autocast_keeps_finite_gradients():
    """M7 (block level): bf16 autocast, a few optimiser steps, finite loss and gradients."""
    torch.manual_seed(5)
    block = BiMamba(MambaConfig(d_model=32))
    opt = torch.optim.AdamW(block.parameters(), lr=1e-3)
    x, target = torch.randn(2, 40, 32), torch.randn(2, 40, 32)
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (block(x, _lengths_mask([40, 25])) - target).float().square().mean()
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in block.parameters())
        opt.step()
