"""The Samba-ASR network (samba-asr.md §13.5: M3 encoder padding, M4 step vs forward, M5 memory
padding, M6 caches, M7 mixed precision) and its config."""

from __future__ import annotations

import math

import pytest
import torch

from recognizers.samba_asr.config import MambaConfig, SambaASRConfig, preset
from recognizers.samba_asr.model import DecoderState, SambaASR, left_align, subsampled_lengths
from tests.scan_utils import rel_err

V = 23


def _model(dtype=torch.float32, seed=0, **overrides) -> SambaASR:
    torch.manual_seed(seed)
    return SambaASR(preset("tiny", V, **overrides)).to(dtype).eval()


def _feats(lengths, dtype=torch.float32, n_mels=80):
    torch.manual_seed(1)
    return torch.randn(len(lengths), n_mels, max(lengths), dtype=dtype), torch.tensor(lengths)


def _tokens(lengths, seed=2):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, V, (len(lengths), max(lengths)), generator=g)
    tokens[:, 0] = 1  # <sos>
    for i, n in enumerate(lengths):
        tokens[i, n:] = 0
    return tokens, torch.tensor(lengths)


def test_config_round_trip_and_validation():
    cfg = preset("cpu", 256)
    assert SambaASRConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.d_model == 144
    assert cfg.mixer == MambaConfig(d_model=144)
    with pytest.raises(ValueError, match="special ids"):
        SambaASRConfig(vocab_size=2)
    with pytest.raises(ValueError, match="preset"):
        preset("huge", 10)
    with pytest.raises(TypeError):
        SambaASRConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_subsampled_lengths_match_outputs():
    """M3: T' = ⌈⌈T/2⌉/2⌉, and the encoder returns exactly that many frames."""
    model = _model()
    for t in (1, 2, 3, 4, 5, 9, 16, 17):
        out, lens = model.encode(*_feats([t]))
        expected = math.ceil(math.ceil(t / 2) / 2)
        assert out.shape[1] == lens.item() == subsampled_lengths(torch.tensor(t)).item() == expected


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_encoder_padding_invariance(dtype, tol):
    """M3: an utterance encoded alone equals its valid slice when batched with longer ones."""
    model = _model(dtype)
    feats, lens = _feats([37, 20, 9], dtype)
    batched, out_lens = model.encode(feats, lens)
    for i, n in enumerate(lens.tolist()):
        alone, alone_len = model.encode(feats[i : i + 1, :, :n], lens[i : i + 1])
        assert alone_len.item() == out_lens[i].item()
        assert rel_err(batched[i, : out_lens[i]], alone[0]) <= tol


def test_left_align():
    x = torch.arange(1.0, 7.0).reshape(1, 6, 1).repeat(2, 1, 1)
    out, mask = left_align(x, torch.tensor([6, 4]))
    assert out[:, :, 0].tolist() == [[1, 2, 3, 4, 5, 6], [0, 0, 1, 2, 3, 4]]
    assert mask.tolist() == [[True] * 6, [False, False, True, True, True, True]]


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_step_loop_equals_teacher_forced_forward(dtype, tol):
    """M4: prefill(memory) + one step per token gives the teacher-forced logits at every position."""
    model = _model(dtype)
    feats, lens = _feats([30, 17], dtype)
    tokens, tok_lens = _tokens([6, 4])
    with torch.no_grad():
        encoded, enc_lens = model.encode(feats, lens)
        logits = model.decode(tokens, tok_lens, encoded, enc_lens)
        state = model.init_state(encoded, enc_lens)
        for u in range(tokens.shape[1]):
            step_logits, state = model.step(tokens[:, u], state)
            for b in range(2):
                if u < tok_lens[b]:
                    assert rel_err(step_logits[b], logits[b, u]) <= tol


def test_memory_padding_does_not_change_decoder_outputs():
    """M5: a sample's decoder logits are the same alone and with its memory padded in a batch."""
    model = _model(torch.float64)
    feats, lens = _feats([41, 13], torch.float64)
    tokens, tok_lens = _tokens([5, 5])
    with torch.no_grad():
        enc, enc_lens = model.encode(feats, lens)
        batched = model.decode(tokens, tok_lens, enc, enc_lens)
        enc1, enc1_lens = model.encode(feats[1:, :, :13], lens[1:])
        alone = model.decode(tokens[1:], tok_lens[1:], enc1, enc1_lens)
    assert rel_err(batched[1], alone[0]) <= 1e-10


def test_state_reorder_equals_running_selected_hypotheses_and_size_is_constant():
    """M6: index_select on the decoder state equals decoding the selected rows from scratch."""
    model = _model()
    feats, lens = _feats([25, 18, 30])
    tokens, _ = _tokens([5, 5, 5])
    with torch.no_grad():
        enc, enc_lens = model.encode(feats, lens)
        state = model.init_state(enc, enc_lens)
        sizes = []
        for u in range(3):
            _, state = model.step(tokens[:, u], state)
            sizes.append(sum(t.numel() for layer in state.layers for s in (layer.self_mix, layer.cross_mix)
                             for t in (s.conv, s.ssm)))
        index = torch.tensor([2, 0, 2])
        picked = state.index_select(index)
        assert isinstance(picked, DecoderState)
        logits, _ = model.step(tokens[index, 3], picked)
        fresh = model.init_state(enc[index], enc_lens[index])
        for u in range(4):
            ref, fresh = model.step(tokens[index, u], fresh)
        torch.testing.assert_close(logits, ref)
    assert len(set(sizes)) == 1


def test_forward_shapes_and_backward():
    model = _model().train()
    feats, lens = _feats([33, 21])
    tokens, tok_lens = _tokens([7, 3])
    ctc, enc_lens, logits = model(feats, lens, tokens, tok_lens)
    assert ctc.shape == (2, 9, V)
    assert enc_lens.tolist() == [9, 6]
    assert logits.shape == (2, 7, V)
    (ctc.sum() + logits.sum()).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_bf16_autocast_training_steps_stay_finite():
    """M7: a few optimiser steps under bf16 autocast give finite losses and gradients."""
    model = _model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    feats, lens = _feats([24, 16])
    tokens, tok_lens = _tokens([5, 4])
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ctc, _, logits = model(feats, lens, tokens, tok_lens)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens[:, 1:])
            loss = loss + ctc.float().logsumexp(-1).mean()
        assert loss.isfinite()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)
        opt.step()


def test_cpu_preset_size():
    """The bundled size stays well under the 40 MB budget (float32)."""
    model = SambaASR(preset("cpu", 256))
    n = sum(p.numel() for p in model.parameters())
    assert 3e6 < n < 10e6, n
