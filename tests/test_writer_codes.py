"""Writer codes (writer-htr.md §8, §17 tests 16-19): hook A, conditional BatchNorm, the frozen base,
new-writer adaptation, the Hinge feature, and a tiny in-process fit of the writer-code module."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from data.handwriting import collate_images, normalize_image
from data.hinge import (
    HingeConfig,
    HingeNormalizer,
    hinge_counts,
    hinge_pdf,
    support_hinge,
    trace_contours,
    writer_hinge,
)
from recognizers.handwriting.writer_code_model import WriterCodeModel
from recognizers.handwriting.writer_codes import (
    CodeAdaptation,
    ConditionalBatchNorm2d,
    FeatureMLP,
    WriterCode,
    WriterCodeConfig,
)
from tests.handwriting_fixtures import TEXTS, tiny_model, tiny_vocab, word_pixels

ARCHS = ("resnet18", "resnet31")


def _batch(texts=TEXTS[:4], dtype=torch.float32):
    """A padded batch of synthetic words: images (B, 1, H, W), mask (B, H, W), inputs and targets (B, T)."""
    images, mask = collate_images([normalize_image(word_pixels(t, height=40 + 6 * i, seed=i))
                                   for i, t in enumerate(texts)])
    targets = tiny_vocab().targets(list(texts))
    return images.to(dtype), mask, targets.inputs, targets.targets


def _randomise_last_layers(model: WriterCodeModel, seed: int = 0) -> None:
    """A "trained" adapter: the zero-initialised last layers get random weights (else the code has no
    gradient)."""
    gen = torch.Generator().manual_seed(seed)
    layers = ([model.feature_mlp.layers[-1]] if model.feature_mlp is not None
              else [m.out for m in model.modulators])
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.05)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.05)


def _randomise_last_layers_of(mlp: FeatureMLP) -> None:
    with torch.no_grad():
        mlp.layers[-1].weight.normal_(0, 0.05)
        mlp.layers[-1].bias.normal_(0, 0.05)


# ----- test 16: hook A ----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_feature_mlp_maps_feature_map_shapes_with_the_code_at_every_layer(arch):
    base = tiny_model("fphtr", arch)
    images = torch.randn(2, 1, 64, 96)
    feat = base.feature_map(images)
    stride = (32, 32) if arch == "resnet18" else (8, 4)
    assert feat.shape == (2, base.cfg.backbone.out_channels, 64 // stride[0], 96 // stride[1])
    # at paper width on the same grid: (B, 512, h, w) -> (B, 512, h, w)
    mlp, code = FeatureMLP(512, 8, 1000), torch.randn(2, 8)
    assert [layer.in_features for layer in mlp.layers] == [512 + 8, 1000 + 8, 1000 + 8]
    assert [layer.out_features for layer in mlp.layers] == [1000, 1000, 512]
    seen = []
    hooks = [layer.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
             for layer in mlp.layers]
    wide = torch.randn(2, 512, *feat.shape[2:])
    out = mlp(wide, code)
    for hook in hooks:
        hook.remove()
    assert out.shape == wide.shape
    for inputs, _ in seen:  # the code is the last c inputs of every layer, at every cell
        assert torch.equal(inputs[..., -8:], code[:, None, None, :].expand(*inputs.shape[:3], 8))
    assert torch.equal(out, wide)  # zero-initialised last layer: residual identity
    _randomise_last_layers_of(mlp)
    seen.clear()
    mlp.layers[-1].register_forward_hook(lambda m, args, out: seen.append(out))
    out = mlp(wide, code)
    assert torch.allclose(out - wide, seen[0].permute(0, 3, 1, 2), atol=1e-6)  # residual: F + MLP(...)
    assert not torch.allclose(out, wide)


@pytest.mark.parametrize("arch", ARCHS)
def test_hook_a_runs_inside_the_tiny_model(arch):
    model = WriterCodeModel(tiny_model("sar", arch), WriterCodeConfig(injection="feature_mlp", code_size=8,
                                                                      mlp_hidden=24), num_writers=3)
    images, mask, inputs, _ = _batch()
    codes = model.writer_codes(torch.tensor([0, 1, 2, 0]))
    assert codes.shape == (4, 8)
    seen = []
    model.feature_mlp.register_forward_hook(lambda m, args, out: seen.append((args[0].shape, out.shape)))
    logits = model(images, mask, inputs, codes)
    assert logits.shape == (*inputs.shape, model.base.cfg.vocab_size)
    assert seen[0][0] == seen[0][1]
    assert seen[0][0][1] == model.base.cfg.backbone.out_channels


# ----- test 17: conditional BatchNorm ---------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_conditional_batchnorm_shapes_and_frozen_pretrained_affine(arch):
    base = tiny_model("fphtr", arch)
    pretrained = {n: (m.weight, m.weight.detach().clone(), m.bias.detach().clone())
                  for n, m in base.backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    keys = list(base.state_dict())
    model = WriterCodeModel(base, WriterCodeConfig(code_size=8, bn_hidden=16), num_writers=2)
    layers = {n: m for n, m in base.backbone.named_modules() if isinstance(m, ConditionalBatchNorm2d)}
    assert set(layers) == set(pretrained)
    assert len(layers) > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in base.modules())
    assert list(base.state_dict()) == keys  # same tensors under the same names
    shifts = model.modulations(torch.randn(3, 8))
    assert len(shifts) == len(layers)
    for (name, layer), (d_gamma, d_beta) in zip(layers.items(), shifts, strict=True):
        assert d_gamma.shape == d_beta.shape == (3, layer.num_features)
        weight, gamma0, beta0 = pretrained[name]
        assert layer.weight is weight
        assert torch.equal(layer.weight, gamma0)
        assert torch.equal(layer.bias, beta0)
        assert not layer.weight.requires_grad
        assert not layer.bias.requires_grad
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not any(id(p) in trainable for p in base.parameters())


def test_conditional_batchnorm_broadcasts_the_shift_over_height_and_width():
    bn = torch.nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 4, 5)
    reference = bn(x)
    layer = ConditionalBatchNorm2d(bn)
    assert torch.allclose(layer(x), reference, atol=1e-6)
    d_gamma, d_beta = torch.randn(2, 3), torch.randn(2, 3)
    layer.modulation = (d_gamma, d_beta)
    x_hat = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    expected = x_hat * (bn.weight + d_gamma)[:, :, None, None] + (bn.bias + d_beta)[:, :, None, None]
    assert torch.allclose(layer(x), expected, atol=1e-5)


@pytest.mark.parametrize("injection", ["cond_bn", "feature_mlp"])
@pytest.mark.parametrize(("decoder", "arch"),
                         [("fphtr", "resnet18"), ("sar", "resnet31"), ("sar", "resnet18")])
def test_zero_initialised_adapters_reproduce_the_base_logits(injection, decoder, arch):
    base = tiny_model(decoder, arch).double()
    images, mask, inputs, _ = _batch(dtype=torch.float64)
    with torch.no_grad():
        expected = copy.deepcopy(base)(images, mask, inputs)
    model = WriterCodeModel(base, WriterCodeConfig(injection=injection, code_size=8, mlp_hidden=24,
                                                   bn_hidden=16), num_writers=4).double()
    with torch.no_grad():
        logits = model(images, mask, inputs, model.writer_codes(torch.tensor([3, 2, 1, 0])))
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)


# ----- test 18: frozen base, new-writer adaptation ---------------------------------------------------
@pytest.mark.parametrize("injection", ["cond_bn", "feature_mlp"])
def test_a_training_step_leaves_base_parameters_and_buffers_bit_identical(injection):
    cfg = WriterCodeConfig(injection=injection, code_size=8, mlp_hidden=24, bn_hidden=16)
    model = WriterCodeModel(tiny_model("fphtr", "resnet31"), cfg, 4)
    before = {k: v.clone() for k, v in model.base.state_dict().items()}
    adapter = {k: v.clone() for k, v in model.adapter_state_dict().items()}
    model.train()
    assert not model.base.training
    assert not any(m.training for m in model.base.modules())
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=1e-4)
    images, mask, inputs, targets = _batch()
    logits = model(images, mask, inputs, model.writer_codes(torch.tensor([0, 1, 2, 3])))
    torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=0).backward()
    optimizer.step()
    after = model.base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a base tensor changed"
    assert any(k.endswith("running_mean") for k in before)
    changed = [k for k, v in model.adapter_state_dict().items() if not torch.equal(adapter[k], v)]
    assert changed
    assert any(k.startswith("codes") for k in changed)


def test_new_writer_adaptation_starts_from_normal_and_changes_only_the_code():
    model = WriterCodeModel(tiny_model("fphtr", "resnet18"), WriterCodeConfig(code_size=8, bn_hidden=16), 4)
    _randomise_last_layers(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images, mask, inputs, targets = _batch()
    start = torch.randn(8, generator=torch.Generator().manual_seed(5))
    control = model.adapt(images, mask, inputs, targets, CodeAdaptation(steps=0),
                          torch.Generator().manual_seed(5))
    assert control.method == "random"
    assert torch.equal(control.tensor(), start)  # the N(0, 1) draw as is
    code = start.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.support_loss(code, images, mask, inputs, targets), [code])
    adapted = model.adapt(images, mask, inputs, targets, CodeAdaptation(steps=1, lr=0.5),
                          torch.Generator().manual_seed(5), writer="w1")
    assert adapted.method == "learned"
    assert adapted.metadata["writer"] == "w1"
    assert torch.allclose(adapted.tensor(), start - 0.5 * grad, atol=1e-6)  # one SGD step from the draw
    assert not torch.equal(adapted.tensor(), start)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), "more than the code changed"
    assert all(p.grad is None for p in model.parameters())
    adam = model.fit_code(start, images, mask, inputs, targets,
                          CodeAdaptation(steps=2, lr=0.1, optimizer="adam"))
    assert not torch.equal(adam, start)


def test_adaptation_refuses_inference_mode():
    model = WriterCodeModel(tiny_model(), WriterCodeConfig(code_size=8, bn_hidden=16), 2)
    images, mask, inputs, targets = _batch()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        model.adapt(images, mask, inputs, targets)


def test_writer_code_profile_round_trip_and_config_checks():
    code = WriterCode.from_tensor(torch.arange(4.0), "learned", steps=1, lr=1e-4, writer="000")
    again = WriterCode.from_json(code.to_json())
    assert again == code
    assert torch.equal(again.tensor(), torch.arange(4.0))
    assert WriterCodeConfig.for_source("hinge").code_size == 465
    assert WriterCodeConfig.for_source("learned").code_size == 64
    with pytest.raises(ValueError, match="465"):
        WriterCodeConfig(source="hinge", code_size=64)
    with pytest.raises(ValueError, match="method"):
        WriterCode((1.0,), "magic")
    with pytest.raises(ValueError, match="hook A"):
        WriterCodeModel(tiny_model(), WriterCodeConfig(train_projection=True), 2)


def test_hook_a_can_unfreeze_the_fphtr_projection_as_the_thesis_did():
    cfg = WriterCodeConfig(injection="feature_mlp", code_size=8, mlp_hidden=24, train_projection=True)
    model = WriterCodeModel(tiny_model("fphtr"), cfg, 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"base.decoder.proj.weight", "base.decoder.proj.bias"} <= trainable
    assert not [n for n in trainable if n.startswith("base.") and ".proj." not in n]
    assert "base.decoder.proj.weight" in model.adapter_state_dict()
    with pytest.raises(ValueError, match="FPHTR"):
        WriterCodeModel(tiny_model("sar"), cfg, 2)


def test_hinge_source_model_uses_the_table_and_the_training_normaliser():
    cfg = WriterCodeConfig.for_source("hinge", hinge_bins=6, bn_hidden=16)
    model = WriterCodeModel(tiny_model(), cfg, num_writers=3)
    table, mean, std = torch.randn(3, 21), torch.rand(21), torch.rand(21) + 0.5
    model.set_hinge(table, mean, std)
    assert torch.equal(model.writer_codes(torch.tensor([2, 0])), table[[2, 0]])
    assert model.trainable_parameters()
    assert not [n for n, _ in model.named_parameters() if n.startswith("codes")]
    pdf = np.full(21, 1 / 21)
    code = model.hinge_code(pdf, writer="new")
    assert code.method == "hinge"
    assert torch.allclose(code.tensor(), ((torch.tensor(pdf) - mean) / std).float())


# ----- test 19: the Hinge feature --------------------------------------------------------------------
def _bar(angle_degrees: float, size: int = 120) -> np.ndarray:
    """A thick straight stroke through the centre at the given angle (y up), dark on light."""
    image = Image.new("L", (size, size), 240)
    dx, dy = 50 * math.cos(math.radians(angle_degrees)), -50 * math.sin(math.radians(angle_degrees))
    centre = size / 2
    ImageDraw.Draw(image).line([(centre - dx, centre - dy), (centre + dx, centre + dy)], fill=20, width=5)
    return np.asarray(image)


def _cell(lo: int, hi: int, bins: int = 30) -> int:
    return lo * bins - lo * (lo - 1) // 2 + (hi - lo)


def test_hinge_pdf_is_a_normalised_distribution_of_the_configured_size():
    assert HingeConfig().size == 465
    assert HingeConfig(bins=12).size == 78
    pdf = writer_hinge([word_pixels(t, seed=i) for i, t in enumerate(TEXTS)])
    assert pdf.shape == (465,)
    assert pdf.dtype == np.float64
    assert (pdf >= 0).all()
    assert math.isclose(pdf.sum(), 1.0, rel_tol=1e-12)
    assert (pdf > 0).sum() > 10
    small = writer_hinge([word_pixels("fox")], HingeConfig(bins=12, leg_length=5))
    assert small.shape == (78,)
    assert math.isclose(small.sum(), 1.0, rel_tol=1e-12)
    blank = hinge_pdf(hinge_counts(np.full((20, 30), 240, np.uint8)))
    assert np.allclose(blank, 1 / 465)  # no contour at all: uniform, still a PDF


def test_hinge_measures_stroke_direction():
    horizontal = hinge_counts(_bar(0))
    vertical = hinge_counts(_bar(90))
    assert horizontal.argmax() == _cell(0, 15)  # legs pointing east (0°) and west (180°)
    assert vertical.argmax() == _cell(7, 22)  # north (90°, sector 7) and south (270°, sector 22)


def test_contours_are_closed_crack_loops():
    dot = np.zeros((5, 5), bool)
    dot[2, 2] = True
    assert [c.tolist() for c in trace_contours(dot)] == [[[2, 2], [2, 3], [3, 3], [3, 2]]]
    ring = np.zeros((6, 6), bool)
    ring[1:5, 1:5] = True
    ring[2:4, 2:4] = False
    assert sorted(len(c) for c in trace_contours(ring)) == [8, 16]  # outer boundary and the hole
    diagonal = np.zeros((4, 4), bool)
    diagonal[1, 1] = diagonal[2, 2] = True
    assert [len(c) for c in trace_contours(diagonal)] == [8]  # 8-connected ink: one contour
    for contour in trace_contours(ring):
        steps = np.abs(np.diff(np.vstack([contour, contour[:1]]), axis=0)).sum(axis=1)
        assert (steps == 1).all()


def test_support_hinge_never_reads_query_images():
    images = {i: word_pixels(TEXTS[i % len(TEXTS)], seed=i) for i in range(32)}
    support, query = list(range(0, 32, 2)), set(range(1, 32, 2))
    read = []

    def load(index: int) -> np.ndarray:
        if index in query:
            raise AssertionError(f"query image {index} was read")
        read.append(index)
        return images[index]

    cache: dict[int, np.ndarray] = {}
    pdf = support_hinge(load, support, cache=cache)
    assert sorted(read) == support
    assert set(cache) == set(support)
    assert np.allclose(pdf, writer_hinge(images[i] for i in support))
    read.clear()
    assert np.array_equal(support_hinge(load, support, cache=cache), pdf)
    assert read == []  # from the cache


def test_hinge_normalizer_per_dimension_z_scores_round_trip():
    rng = np.random.default_rng(0)
    pdfs = rng.dirichlet(np.ones(21), size=50)
    normalizer = HingeNormalizer.fit(pdfs)
    z = normalizer(pdfs)
    assert np.allclose(z.mean(axis=0), 0, atol=1e-9)
    assert np.allclose(z.std(axis=0), 1, atol=1e-9)
    again = HingeNormalizer.from_json(normalizer.to_json())
    assert np.array_equal(again.mean, normalizer.mean)
    assert np.array_equal(again.std, normalizer.std)
    constant = HingeNormalizer.fit(np.zeros((3, 4)))
    assert np.all(np.isfinite(constant(np.ones(4))))  # std floor: unseen dimensions do not blow up
