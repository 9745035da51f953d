"""The PosFormer network, its config and loss (posformer.md §3, §5, §6; acceptance tests E1–E2, D1–D8, C1,
L1–L2, V2, B5): shapes, parameter counts, ARM + IAC, causality, padding, cached decoding, reordering, and
the step/reorder contract of recognizers.decoding."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recognizers.decoding import DecodingOptions, beam_search
from recognizers.layers import MultiHeadAttention, PositionalEncoding1d, sinusoidal_encoding_2d
from recognizers.posformer import (
    IAC_SYMBOLS,
    IAC_SYMBOLS_OUTPUT_ALIGNED,
    LossWeights,
    PosFormer,
    PosFormerConfig,
    PosFormerOutput,
    bidirectional_targets,
    label_positions,
    posformer_loss,
    preset,
    resolve_ids,
)
from recognizers.posformer.arm import AttentionRefinement, CoverageState, exclusive_cumsum
from recognizers.posformer.config import ArmConfig, DecoderConfig
from recognizers.posformer.tree import IGNORE_INDEX
from tests.scan_utils import rel_err

# A small local vocabulary (the real one is data/vocab.py): specials 0..2, then tokens from 3.
TOKENS = ["x", "y", "2", "a", "+", "^", "_", "{", "}", r"\frac", r"\sqrt", "[", "]", "n"]
TOK = {t: i + 3 for i, t in enumerate(TOKENS)}
V = len(TOKENS) + 3
PAD, SOS, EOS = 0, 1, 2
OMEGA = resolve_ids(TOK, IAC_SYMBOLS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny shapes: extra intra-op threads only add synchronisation, which stalls when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(alignment: str = "input", arm: bool = True, iac_ids=OMEGA, position: bool = True, **decoder):
    base = preset("tiny", vocab_size=V, iac_ids=iac_ids)
    arm_cfg = replace(base.decoder.arm, enabled=arm, iac_alignment=alignment)
    return replace(base, decoder=replace(base.decoder, arm=arm_cfg, **decoder),
                   position=replace(base.position, enabled=position))


def _model(dtype=torch.float64, seed=0, **kwargs) -> PosFormer:
    torch.manual_seed(seed)
    return PosFormer(_cfg(**kwargs)).to(dtype).eval()


def _images(sizes, dtype=torch.float64, seed=1):
    """Zero-padded random images `(B, 1, H, W)` and masks `(B, H, W)`."""
    g = torch.Generator().manual_seed(seed)
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    images = torch.zeros(len(sizes), 1, h, w, dtype=dtype)
    masks = torch.ones(len(sizes), h, w, dtype=torch.bool)
    for i, (hi, wi) in enumerate(sizes):
        images[i, 0, :hi, :wi] = torch.rand(hi, wi, generator=g, dtype=dtype)
        masks[i, :hi, :wi] = False
    return images, masks


def _tgt(rows: int, length: int, start: int = SOS, seed: int = 2) -> torch.Tensor:
    """Random decoder inputs with plenty of Ω tokens."""
    g = torch.Generator().manual_seed(seed)
    tgt = torch.randint(3, V, (rows, length), generator=g)
    tgt[:, 2:4] = torch.tensor([TOK["^"], TOK["{"]])[: max(length - 2, 0)]
    tgt[:, 0] = start
    return tgt


def _memory(model, sizes=((40, 70), (24, 40))):
    images, masks = _images(sizes, next(model.parameters()).dtype)
    return model.encode(images, masks)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_config_round_trip_and_validation():
    cfg = preset("paper", iac_ids=OMEGA)
    assert PosFormerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.encoder.block_channels == ((48, 432), (216, 600), (300, 684))
    assert cfg.decoder.coverage_inputs == 16
    assert resolve_ids(TOK.__getitem__, IAC_SYMBOLS_OUTPUT_ALIGNED) == (8, 9, 10, 11)
    with pytest.raises(KeyError):
        resolve_ids({"^": 3}, IAC_SYMBOLS)
    with pytest.raises(ValueError, match="special"):
        PosFormerConfig(iac_ids=(), vocab_size=2)
    with pytest.raises(ValueError, match="iac_ids"):
        PosFormerConfig(iac_ids=(113,))
    with pytest.raises(TypeError):
        PosFormerConfig()  # Ω is vocabulary-dependent, so it has no default
    with pytest.raises(ValueError, match="iac_alignment"):
        ArmConfig(iac_alignment="middle")
    with pytest.raises(ValueError, match="multiple"):
        DecoderConfig(d_model=250)
    with pytest.raises(ValueError, match="preset"):
        preset("huge", iac_ids=())
    with pytest.raises(TypeError):
        PosFormerConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_parameter_counts_match_the_reference():
    """E2, D7, D8 (§3.5): every count of the reference configuration."""
    model = PosFormer(preset("paper", iac_ids=OMEGA))
    assert _count(model.encoder.densenet) == 2_980_752
    assert _count(model.encoder) == 3_156_624
    assert _count(model.decoder.stack.layers[0]) == 1_053_440
    assert _count(model.decoder.stack.arm) == 13_104
    assert _count(model.decoder) == 3_232_417
    assert _count(model.position_decoder) == 3_243_195
    assert _count(model) - _count(model.position_decoder) == 6_389_041
    inference_only = preset("paper", iac_ids=OMEGA, position=replace(model.cfg.position, enabled=False))
    assert _count(PosFormer(inference_only)) == 6_389_041


@pytest.mark.parametrize(("h", "w"), [(16, 16), (17, 33), (31, 129), (45, 70)])
def test_encoder_shapes(h, w):
    """E1: 1×1×H×W → 1×⌈H/16⌉×⌈W/16⌉×d, odd sizes included; the mask has the same spatial shape."""
    model = _model(torch.float32)
    memory, mask = model.encode(*_images([(h, w)], torch.float32))
    assert memory.shape == (1, math.ceil(h / 16), math.ceil(w / 16), model.cfg.d_model)
    assert mask.shape == memory.shape[:3]
    assert not mask.any()


def test_encoder_mask_of_a_padded_batch():
    """E1: in a padded batch each image's valid cells are the top-left ⌈H/16⌉×⌈W/16⌉ block."""
    sizes = [(45, 70), (17, 33), (31, 20)]
    memory, mask = _model(torch.float32).encode(*_images(sizes, torch.float32))
    assert mask.shape == memory.shape[:3] == (3, 3, 5)
    for i, (h, w) in enumerate(sizes):
        expected = torch.ones(3, 5, dtype=torch.bool)
        expected[: math.ceil(h / 16), : math.ceil(w / 16)] = False
        assert torch.equal(mask[i], expected)
    assert torch.isfinite(memory).all()


def test_positional_encodings():
    """§3.1/§3.2: DETR-normalised 2-D encoding (padding-invariant) and the 1-D sin/cos table."""
    alone = sinusoidal_encoding_2d(torch.zeros(1, 3, 5, dtype=torch.bool), 16)
    padded_mask = torch.ones(1, 6, 9, dtype=torch.bool)
    padded_mask[:, :3, :5] = False
    padded = sinusoidal_encoding_2d(padded_mask, 16)
    torch.testing.assert_close(padded[:, :3, :5], alone)
    x, y = 2 / 5 * 2 * math.pi, 3 / 3 * 2 * math.pi  # cell (row 2, column 1): x = 2/5, y = 3/3 of 2π
    assert alone[0, 2, 1, :2].tolist() == pytest.approx([math.sin(x), math.cos(x)], abs=1e-5)
    assert alone[0, 2, 1, 8:10].tolist() == pytest.approx([math.sin(y), math.cos(y)], abs=1e-5)
    f1 = 10000 ** (-2 / 8)  # second frequency of each half (d/2 = 8)
    assert alone[0, 2, 1, 2:4].tolist() == pytest.approx([math.sin(x * f1), math.cos(x * f1)], abs=1e-5)
    pe = PositionalEncoding1d(8, 10)(torch.zeros(1, 10, 8))
    assert pe[0, 7, 2].item() == pytest.approx(math.sin(7 * 10000 ** (-2 / 8)), abs=1e-6)
    assert pe[0, 7, 3].item() == pytest.approx(math.cos(7 * 10000 ** (-2 / 8)), abs=1e-6)


def test_attention_bias_and_cache():
    """layers.py: softmax(QKᵀ/√d_h + bias)V, and a cache built in pieces equals the whole."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2).double()
    q, kv_in = torch.randn(3, 4, 8, dtype=torch.float64), torch.randn(3, 5, 8, dtype=torch.float64)
    bias = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    kv = attn.project_kv(kv_in[:, :2]).append(attn.project_kv(kv_in[:, 2:]))
    out, probs = attn(q, kv, bias=bias)
    qh = attn.q_proj(q).view(3, 4, 2, 4).transpose(1, 2)
    kh = attn.k_proj(kv_in).view(3, 5, 2, 4).transpose(1, 2)
    vh = attn.v_proj(kv_in).view(3, 5, 2, 4).transpose(1, 2)
    ref_probs = (qh @ kh.transpose(-1, -2) / 2 + bias).softmax(-1)
    torch.testing.assert_close(probs, ref_probs)
    torch.testing.assert_close(out, attn.out_proj((ref_probs @ vh).transpose(1, 2).reshape(3, 4, 8)))
    assert kv.index_select(torch.tensor([2, 2])).length == 5


def test_arm_off_is_a_plain_post_norm_decoder():
    """D2: with the ARM off the stack equals torch's post-norm TransformerDecoder with the same weights."""
    model = _model(arm=False)
    stack, cfg = model.decoder.stack, model.cfg.decoder
    layer = nn.TransformerDecoderLayer(cfg.d_model, cfg.num_heads, cfg.dim_feedforward, 0.0, batch_first=True)
    ref = nn.TransformerDecoder(layer, cfg.num_layers).double().eval()
    for mine, theirs in zip(stack.layers, ref.layers, strict=True):
        for name, attn in (("self_attn", mine.self_attn), ("multihead_attn", mine.cross_attn)):
            target = getattr(theirs, name)
            projections = (attn.q_proj, attn.k_proj, attn.v_proj)
            target.in_proj_weight.data = torch.cat([p.weight for p in projections])
            target.in_proj_bias.data = torch.cat([p.bias for p in projections])
            target.out_proj.load_state_dict(attn.out_proj.state_dict())
        for name in ("linear1", "linear2", "norm1", "norm2", "norm3"):
            getattr(theirs, name).load_state_dict(getattr(mine, name).state_dict())
    memory, mask = _memory(model)
    tgt = _tgt(2, 7)
    tgt[1, 5:] = PAD
    x = torch.randn(2, 7, cfg.d_model, dtype=torch.float64)
    causal = torch.ones(7, 7, dtype=torch.bool).triu(1)
    expected = ref(x, memory.flatten(1, 2), tgt_mask=causal, tgt_key_padding_mask=tgt == PAD,
                   memory_key_padding_mask=mask.flatten(1))
    assert rel_err(stack(x, tgt, memory, mask), expected) <= 1e-12


def test_empty_omega_is_comer():
    """D1: Ω = ∅ equals the same weights whenever no Ω token occurs; Ω tokens are what IAC changes."""
    comer, posformer = _model(iac_ids=()), _model()
    memory, mask = _memory(comer)
    plain = _tgt(2, 8)
    plain[:, 1:][torch.isin(plain[:, 1:], torch.tensor(OMEGA))] = TOK["x"]
    torch.testing.assert_close(comer.score(memory, mask, plain), posformer.score(memory, mask, plain))
    with_omega = _tgt(2, 8)
    a, b = comer.score(memory, mask, with_omega), posformer.score(memory, mask, with_omega)
    torch.testing.assert_close(a[:, :3], b[:, :3])  # the first Ω input is at t = 2; coverage starts after it
    assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-6


def test_masked_rows_never_reach_the_coverage():
    """D3: exclusive coverage is zero at t = 0, excludes step t, and ignores the attention of masked steps."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 4, 6, 5, generator=g, dtype=torch.float64)  # (N, C, L, S)
    keep = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1]], dtype=torch.float64)[:, None, :, None]
    cov = exclusive_cumsum(a * keep)
    assert cov[:, :, 0].abs().max() == 0
    torch.testing.assert_close(cov[:, :, 3], (a * keep)[:, :, :3].sum(2))
    perturbed = a + (1 - keep) * 100.0  # change only the masked steps
    torch.testing.assert_close(exclusive_cumsum(perturbed * keep), cov)
    running = CoverageState(torch.zeros(2, 4, 5, dtype=torch.float64))
    for t in range(6):  # the step-by-step state sums the same rows in the same order
        torch.testing.assert_close(running.total, cov[:, :, t], rtol=0, atol=1e-15)
        running = running.push(a[:, :, t], keep[:, 0, t, 0])


def test_iac_alignment_and_vocabulary_order():
    """D4 (masked steps of x ^ { 2 } per alignment) and V2 (ids looked up by string)."""
    tokens = ["x", "^", "{", "2", "}"]
    for table in (TOK, {t: 3 + i for i, t in enumerate(reversed(TOKENS))}):
        ids = [table[t] for t in tokens]
        l2r = torch.tensor([[SOS, *ids]])
        r2l = torch.tensor([[EOS, *ids[::-1]]])
        model = PosFormer(preset("tiny", vocab_size=V, iac_ids=resolve_ids(table)))
        keep = model.decoder.stack.coverage_keep
        assert keep(l2r).tolist() == [[1, 1, 0, 0, 1, 1]]  # inputs ^ and {
        assert keep(r2l).tolist() == [[1, 1, 1, 0, 0, 1]]  # inputs { and ^
        out_cfg = _cfg("output", iac_ids=resolve_ids(table, IAC_SYMBOLS_OUTPUT_ALIGNED))
        keep = PosFormer(out_cfg).decoder.stack.coverage_keep
        assert keep(l2r).tolist() == [[1, 0, 0, 1, 0, 1]]  # outputs ^, {, }
        assert keep(r2l).tolist() == [[0, 1, 0, 0, 1, 1]]  # outputs }, {, ^


def test_layer_one_unrefined_and_one_shared_arm():
    """D5: one ARM per stack, called for layers 2.. only."""
    model = _model()
    for stack in (model.decoder.stack, model.position_decoder.stack):
        assert sum(isinstance(m, AttentionRefinement) for m in stack.modules()) == 1
    calls = []
    handle = model.decoder.stack.arm.register_forward_hook(lambda *_: calls.append(1))
    memory, mask = _memory(model)
    model.score(memory, mask, _tgt(2, 5))
    handle.remove()
    assert len(calls) == model.cfg.decoder.num_layers - 1


@pytest.mark.parametrize("alignment", ["input", "output"])
def test_causality(alignment):
    """D6: changing tgt[t+1:] (to Ω tokens too) leaves outputs [:t+1] of both decoders unchanged."""
    model = _model(alignment=alignment, iac_ids=resolve_ids(TOK, IAC_SYMBOLS_OUTPUT_ALIGNED))
    images, masks = _images([(40, 70), (24, 40)])
    tgt = _tgt(4, 9)
    vectors = torch.rand(4, 9, 5, dtype=torch.float64)
    t = 4
    changed, changed_vectors = tgt.clone(), vectors.clone()
    changed[:, t + 1:] = torch.tensor([TOK["^"], TOK["}"], TOK["{"], TOK["_"]])
    changed_vectors[:, t + 1:] = 5.0
    a, b = model(images, masks, tgt, vectors), model(images, masks, changed, changed_vectors)
    for x, y in zip((a.logits, a.level_logits, a.relpos_logits), (b.logits, b.level_logits, b.relpos_logits),
                    strict=True):
        torch.testing.assert_close(x[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-12)
        assert (x[:, t + 1:] - y[:, t + 1:]).abs().max() > 1e-6


def test_position_branch_shapes_weights_and_stripping():
    """D8: outputs [2B, L, 5] / [2B, L, 6]; no shared parameters; unused by step; strippable."""
    model = _model()
    images, masks = _images([(40, 70), (24, 40)])
    out = model(images, masks, _tgt(4, 6), torch.rand(4, 6, 5, dtype=torch.float64))
    assert out.logits.shape == (4, 6, V)
    assert out.level_logits.shape == (4, 6, 5)
    assert out.relpos_logits.shape == (4, 6, 6)
    word = {id(p) for p in model.decoder.parameters()}
    assert not word & {id(p) for p in model.position_decoder.parameters()}
    calls = []
    model.position_decoder.register_forward_hook(lambda *_: calls.append(1))
    memory, mask = model.encode(images, masks)
    state = model.init_state(memory, mask)
    for token in _tgt(2, 4)[0]:
        _, state = model.step(token.repeat(2), state)
    assert not calls
    inference = _model(position=False)
    inference.load_state_dict(model.inference_state_dict(), strict=True)
    assert not any(k.startswith("position_decoder") for k in model.inference_state_dict())
    torch.testing.assert_close(inference(images, masks, _tgt(4, 6)).logits, out.logits)


def _step_logits(model, memory, mask, tgt, direction):
    state = model.init_state(memory, mask, direction)
    logits = []
    for t in range(tgt.shape[1]):
        step_logits, state = model.step(tgt[:, t], state)
        logits.append(step_logits)
    return torch.stack(logits, dim=1), state  # (N, L, V)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-9), (torch.float32, 1e-5)])
@pytest.mark.parametrize("alignment", ["input", "output"])
def test_step_loop_equals_teacher_forced_forward(dtype, tol, alignment):
    """C1 / §6 item 6: KV cache + running masked coverage give the full recomputation's logits at every
    position, both directions, Ω tokens in the prefix, padded memory."""
    model = _model(dtype, alignment=alignment)
    memory, mask = _memory(model)
    for direction in ("l2r", "r2l"):
        tgt = _tgt(2, 10, model.start_token(direction))
        full = model.score(memory, mask, tgt)
        stepped, _ = _step_logits(model, memory, mask, tgt, direction)
        assert rel_err(stepped, full) <= tol


def test_step_work_is_linear():
    """Each step projects one new key/value per layer, the self-attention cache grows by exactly one
    entry, and the memory keys/values and coverage stay the same size."""
    model = _model()
    memory, mask = _memory(model)
    seen = []
    for layer in model.decoder.stack.layers:
        project = layer.self_attn.project_kv
        layer.self_attn.project_kv = lambda x, project=project: seen.append(x.shape[1]) or project(x)
    state = model.init_state(memory, mask)
    s = mask.shape[1] * mask.shape[2]
    for t, token in enumerate(_tgt(2, 6)[0]):
        _, state = model.step(token.repeat(2), state)
        assert [c.self_kv.length for c in state.layers] == [t + 1] * 3
        assert [c.memory_kv.length for c in state.layers] == [s] * 3
        assert [None if c.coverage is None else tuple(c.coverage.total.shape) for c in state.layers] == [
            None, (2, 4, s), (2, 4, s)]
        assert state.length == t + 1
    assert seen == [1] * 18


@pytest.mark.parametrize("alignment", ["input", "output"])
def test_state_reorder_equals_running_selected_rows(alignment):
    """index_select (beam reordering) equals decoding the selected rows from scratch."""
    model = _model(alignment=alignment)
    memory, mask = _memory(model, ((40, 70), (24, 40), (33, 50)))
    tgt = _tgt(3, 4, seed=3)
    _, state = _step_logits(model, memory, mask, tgt, "l2r")
    index = torch.tensor([2, 0, 0, 1])
    state = state.index_select(index)
    more = _tgt(4, 3, seed=4)
    more[:, 0] = TOK["{"]
    logits = []
    for t in range(3):
        step_logits, state = model.step(more[:, t], state)
        logits.append(step_logits)
    scratch, _ = _step_logits(model, memory[index], mask[index], torch.cat([tgt[index], more], 1), "l2r")
    assert rel_err(torch.stack(logits, 1), scratch[:, 4:]) <= 1e-12


def test_decoder_padding_invariance():
    """Masks apply to the memory and to the targets: an image's features alone vs in a padded batch (any
    values in the padding), and a short target alone vs padded among longer ones, give the same outputs."""
    model = _model()
    d = model.cfg.d_model
    g = torch.Generator().manual_seed(5)
    alone = torch.randn(1, 2, 3, d, generator=g, dtype=torch.float64)
    batch = torch.randn(2, 4, 5, d, generator=g, dtype=torch.float64) * 10  # garbage in the padding
    batch[0, :2, :3] = alone[0]
    mask = torch.ones(2, 4, 5, dtype=torch.bool)
    mask[0, :2, :3] = False
    mask[1] = False
    tgt = _tgt(2, 9)
    tgt[0, 6:] = PAD
    vectors = torch.rand(2, 9, 5, dtype=torch.float64)
    one_mask = torch.zeros(1, 2, 3, dtype=torch.bool)
    logits = model.decoder(tgt[:1, :6], alone, one_mask)
    assert rel_err(model.decoder(tgt, batch, mask)[:1, :6], logits) <= 1e-12
    positions = model.position_decoder(vectors[:1, :6], tgt[:1, :6], alone, one_mask)
    for batched, single in zip(model.position_decoder(vectors, tgt, batch, mask), positions, strict=True):
        assert rel_err(batched[:1, :6], single) <= 1e-12


def test_beam_search_scores_equal_teacher_forced_rescoring():
    """The model meets recognizers.decoding's step/reorder contract: under beam search (rows reordered
    and duplicated every step) each hypothesis's searched log-probability equals its teacher-forced one,
    in both directions."""
    model = _model()
    memory, mask = _memory(model)
    options = DecodingOptions(beam_size=3, nbest=3, max_length=5)
    for direction in ("l2r", "r2l"):
        start, stop = model.start_token(direction), model.stop_token(direction)
        results = beam_search(model.step, model.init_state(memory, mask, direction),
                              lambda state, index: state.index_select(index), batch_size=2, sos_id=start,
                              eos_id=stop, options=options)
        for b, hyps in enumerate(results):
            assert len(hyps) == 3
            for hyp in hyps:
                seq = [start, *hyp.tokens, *([stop] if hyp.finished else [])]
                tgt = torch.tensor([seq[:-1]] * 2)  # score() pairs row r with image r mod 2
                log_probs = model.score(memory, mask, tgt)[b].log_softmax(-1)  # (L, V)
                expected = log_probs.gather(1, torch.tensor(seq[1:])[:, None]).sum().item()
                assert hyp.log_prob_att == pytest.approx(expected, abs=1e-5)


def test_loss_terms_by_hand():
    """L1 (total = (L_sym + 0.25 L_lvl + 0.25 L_rel) / 1.5, weights configurable), L2 (pad ignored, stop
    included, "ignore" targets excluded)."""
    g = torch.Generator().manual_seed(6)
    out = torch.tensor([[4, 5, EOS, PAD], [6, SOS, PAD, PAD]])
    level, relpos = torch.tensor([[0, 1, 0, 0], [2, 0, 0, 0]]), torch.tensor([[3, 4, 2, 0], [5, 2, 0, 0]])
    output = PosFormerOutput(torch.randn(2, 4, V, generator=g), torch.randn(2, 4, 5, generator=g),
                             torch.randn(2, 4, 6, generator=g))

    def ce(logits, targets, rows):
        return sum(-F.log_softmax(logits[b, t], -1)[targets[b, t]] for b, t in rows) / len(rows)

    rows = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    sym, lvl, rel = (ce(output.logits, out, rows), ce(output.level_logits, level, rows),
                     ce(output.relpos_logits, relpos, rows))
    loss = posformer_loss(output, out, level, relpos)
    torch.testing.assert_close(loss.total, (sym + 0.25 * lvl + 0.25 * rel) / 1.5)
    torch.testing.assert_close((loss.symbol, loss.level, loss.relpos), (sym, lvl, rel))
    weighted = posformer_loss(output, out, level, relpos, weights=LossWeights(2.0, 1.0, 0.0, 1.0))
    torch.testing.assert_close(weighted.total, 2 * sym + lvl)
    shifted = replace(output, logits=output.logits + (out == PAD)[..., None] * 50.0)  # pad positions only
    torch.testing.assert_close(posformer_loss(shifted, out, level, relpos).total, loss.total)
    ignore = [(0, 0), (0, 1), (1, 0)]  # the stop positions are excluded under the "ignore" policy
    lvl_i = level.masked_fill(torch.isin(out, torch.tensor([EOS, SOS])), IGNORE_INDEX)
    torch.testing.assert_close(posformer_loss(output, out, lvl_i, relpos).level, ce(output.level_logits,
                                                                                    level, ignore))
    assert posformer_loss(PosFormerOutput(output.logits), out).total == loss.symbol


def test_training_step_backward():
    """B5 and §5: a bidirectional batch from real labels trains on CPU: the loss is finite and every
    parameter of the encoder and both decoders gets a finite gradient."""
    model = _model(torch.float32).train()
    captions = [["x", "^", "{", "2", "}", "+", "y"], [r"\frac", "{", "a", "}", "{", "n", "}"]]
    ids = [[TOK[t] for t in c] for c in captions]
    tf = bidirectional_targets(ids, [label_positions(c) for c in captions])
    output = model(*_images([(40, 70), (24, 40)], torch.float32), tf.tgt, tf.pos_vectors)
    loss = posformer_loss(output, tf.out, tf.level, tf.relpos)
    assert torch.isfinite(loss.total)
    loss.total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert model.decoder.stack.arm.conv.weight.grad.abs().sum() > 0
    assert model.position_decoder.stack.arm.conv.weight.grad.abs().sum() > 0


def _gathered_batch_norm(bn: torch.nn.BatchNorm1d, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """The definition: BatchNorm1d over the valid pixels gathered as (P, K) rows, padding 0."""
    rows = x.permute(0, 2, 3, 1)  # (M, h, w, K)
    out = rows.new_zeros(rows.shape)
    out[~pad] = bn(rows[~pad])
    return out.permute(0, 3, 1, 2)


def test_masked_batch_norm_equals_batch_norm_over_the_valid_pixels():
    from recognizers.posformer.arm import MaskedBatchNorm

    torch.manual_seed(0)
    norm = MaskedBatchNorm(4)
    with torch.no_grad():
        norm.bn.weight.uniform_(0.5, 1.5)
        norm.bn.bias.uniform_(-0.5, 0.5)
    reference = copy.deepcopy(norm.bn)
    for step in range(3):  # training: outputs, gradients and running statistics
        x = (torch.randn(5, 4, 3, 7) * 2 + 1).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        pad = torch.rand(5, 3, 7) < 0.3
        pad[step] = True  # one image all padding
        out, expected = norm(x, pad), _gathered_batch_norm(reference, x_ref, pad)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        grad = torch.randn_like(out)
        out.backward(grad)
        expected.backward(grad)
        torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
        for name in ("weight", "bias"):
            torch.testing.assert_close(getattr(norm.bn, name).grad, getattr(reference, name).grad)
        torch.testing.assert_close(norm.bn.running_mean, reference.running_mean)
        torch.testing.assert_close(norm.bn.running_var, reference.running_var)
    assert int(norm.bn.num_batches_tracked) == int(reference.num_batches_tracked) == 3
    norm.eval()
    reference.eval()
    x, pad = torch.randn(2, 4, 3, 7), torch.rand(2, 3, 7) < 0.5
    torch.testing.assert_close(norm(x, pad), _gathered_batch_norm(reference, x, pad))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 input: float32 statistics, bf16 out
        low = norm(x.bfloat16(), pad)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), _gathered_batch_norm(reference, x, pad), atol=0.05, rtol=0.02)


def test_reorder_within_each_image_keeps_the_memory_without_a_copy():
    from recognizers.layers import reindex_sources
    from tests.math_fixtures import tiny_posformer

    model = tiny_posformer().eval()
    memory, mask = model.encode(torch.rand(2, 1, 32, 64), torch.zeros(2, 32, 64, dtype=torch.bool))
    state = model.init_state(memory, mask, "l2r")
    expanded = state.index_select(torch.tensor([0, 0, 0, 1, 1, 1]))  # 1 -> 3 rows per image: gathered
    assert expanded.source.tolist() == [0, 0, 0, 1, 1, 1]
    assert expanded.layers[0].memory_kv is not state.layers[0].memory_kv
    shuffled = expanded.index_select(torch.tensor([2, 0, 0, 5, 3, 4]))  # within each image: kept
    assert shuffled.layers[0].memory_kv is expanded.layers[0].memory_kv
    assert shuffled.memory_mask is expanded.memory_mask
    crossed = expanded.index_select(torch.tensor([3, 0, 0, 5, 3, 4]))  # row 0 now image 1: gathered
    assert crossed.source.tolist() == [1, 0, 0, 1, 1, 1]
    for layer, before in zip(crossed.layers, expanded.layers, strict=True):
        torch.testing.assert_close(layer.memory_kv.key, before.memory_kv.key[[3, 0, 0, 5, 3, 4]])
    sources, same = reindex_sources(torch.tensor([0, 1]), torch.tensor([0, 1, 1]))  # rows added: gathered
    assert (sources.tolist(), same) == ([0, 1, 1], False)
