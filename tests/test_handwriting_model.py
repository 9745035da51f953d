"""Handwriting base models (issue #5): pre-processing and vocabulary, ResNet shapes, cached and incremental
decoding, padding, ``functional_call`` fidelity, the classifier features and their closed-form gradient,
and CER/WER on decoded characters (writer-htr.md §17 tests 11, 14, 16 shapes, 20-23)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from data.handwriting import BACKGROUND, MEAN, STD, CharVocabulary, collate_images, normalize_image
from data.vocab import VocabularyError
from recognizers.handwriting import preset
from recognizers.handwriting.backbone import build_backbone
from recognizers.handwriting.config import BackboneConfig, HTRConfig
from recognizers.handwriting.search import encode_images
from tests.handwriting_fixtures import TEXTS, tiny_model, tiny_vocab, word_pixels
from training.metrics import cer, wer

pytestmark = pytest.mark.usefixtures("single_thread")

KINDS = [("fphtr", "resnet18"), ("fphtr", "resnet31"), ("sar", "resnet18"), ("sar", "resnet31")]
SOME = [("fphtr", "resnet18"), ("sar", "resnet18"), ("sar", "resnet31")]  # the slower checks


def _batch(texts=("fox", "Jumps", "13"), dtype=torch.float32):
    """Normalised word images of different sizes, padded, and teacher-forcing tensors."""
    images = [normalize_image(word_pixels(t, height=56 + 8 * i, seed=i)) for i, t in enumerate(texts)]
    pixels, mask = collate_images(images)
    return pixels.to(dtype), mask, tiny_vocab().targets(texts)


# ---- pre-processing and vocabulary --------------------------------------------------------------------


def test_normalisation_and_padding_use_the_background_value():
    pixels = np.full((20, 30), 255, dtype=np.uint8)
    pixels[5:15, 5:25] = 0
    image = normalize_image(pixels)
    assert image.shape == (1, 10, 15)  # scaled ×0.5
    assert image.max().item() == pytest.approx((1 - MEAN) / STD) == pytest.approx(BACKGROUND)
    assert image.min().item() < 0  # ink stays dark (below the mean)
    batch, mask = collate_images([image, normalize_image(np.full((40, 16), 255, dtype=np.uint8))])
    assert batch.shape == (2, 1, 20, 15)
    assert mask.shape == (2, 20, 15)
    assert mask[0, 10:].all()
    assert not mask[0, :10].any()
    assert mask[1, :, 8:].all()
    assert not mask[1, :, :8].any()
    assert torch.all(batch[:, 0][mask] == BACKGROUND)  # §16.2: not zero, which is the mean grey
    assert torch.equal(batch[0, :, :10], image)


def test_vocabulary_round_trips_and_reports_unknown_characters():
    vocab = CharVocabulary.from_texts(["a b", "cab!"])
    assert vocab.chars == (" ", "!", "a", "b", "c")
    assert len(vocab) == 8
    assert CharVocabulary.from_json(vocab.to_json()) == vocab
    assert vocab.decode(vocab.encode("ab c!")) == "ab c!"
    with pytest.raises(VocabularyError, match=r"'x'.*'y'"):
        vocab.encode("axby")
    assert vocab.unknown("axbyx") == ["x", "y"]
    batch = vocab.targets(["ab", "c"])
    eos, pad, sos = vocab.eos_id, vocab.pad_id, vocab.sos_id
    assert batch.targets.tolist() == [[*vocab.encode("ab"), eos], [*vocab.encode("c"), eos, pad]]
    assert batch.inputs.tolist() == [[sos, *vocab.encode("ab")], [sos, *vocab.encode("c"), eos]]
    assert batch.lengths.tolist() == [3, 2]
    with pytest.raises(ValueError, match="starting with"):
        CharVocabulary.from_json('["a", "b"]')  # no specials


# ---- backbone and shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "stride"), [("resnet18", (32, 32)), ("resnet31", (8, 4))])
@pytest.mark.parametrize("size", [(32, 64), (61, 133), (7, 9)])
def test_backbone_feature_map_shape(arch, stride, size):
    cfg = BackboneConfig(arch, base_channels=4)
    assert cfg.stride == stride
    assert BackboneConfig(arch).out_channels == 512
    net = build_backbone(cfg).eval()
    with torch.no_grad():
        feat = net(torch.randn(2, 1, *size))
    assert feat.shape == (2, cfg.out_channels, -(-size[0] // stride[0]), -(-size[1] // stride[1]))


@pytest.mark.parametrize(("decoder", "arch"), KINDS)
def test_forward_shapes_and_hook_a(decoder, arch):
    model = tiny_model(decoder, arch)
    pixels, mask, batch = _batch()
    seen = []

    def hook(feat):  # hook A: (B, C, h, w) -> (B, C, h, w)
        seen.append(feat.shape)
        return feat * 2.0

    with torch.no_grad():
        logits, h = model(pixels, mask, batch.inputs, return_features=True, feature_hook=hook)
        plain = model(pixels, mask, batch.inputs)
    stride = model.cfg.backbone.stride
    assert seen == [(3, model.cfg.backbone.out_channels, -(-pixels.shape[2] // stride[0]),
                     -(-pixels.shape[3] // stride[1]))]
    assert logits.shape == (3, batch.inputs.shape[1], model.cfg.vocab_size)
    assert h.shape == (3, batch.inputs.shape[1], model.cfg.feature_dim)
    assert not torch.allclose(logits, plain)  # the hook's output is what the decoder reads


# ---- incremental decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(("decoder", "arch"), KINDS)
def test_cached_steps_equal_teacher_forcing(decoder, arch):
    model = tiny_model(decoder, arch)
    pixels, mask, batch = _batch()
    with torch.no_grad():
        memory = model.encode(pixels, mask)
        forced = model.score(memory, batch.inputs)  # (B, T, V)
        state, steps = model.init_state(memory), []
        for t in range(batch.inputs.shape[1]):
            logits, state = model.step(batch.inputs[:, t], state)
            steps.append(logits)
    real = batch.inputs != model.cfg.pad_id  # padded inputs are masked only in teacher forcing
    torch.testing.assert_close(torch.stack(steps, dim=1)[real], forced[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("decoder", "arch"), SOME)
def test_incremental_greedy_equals_full_prefix_recomputation(decoder, arch):
    """Test 23: SAR's O(T) incremental greedy decoding = the reference's O(T²) re-run over the prefix."""
    model = tiny_model(decoder, arch).double()
    pixels, mask, _ = _batch(dtype=torch.float64)
    sos = model.cfg.sos_id
    with torch.no_grad():
        memory = model.encode(pixels, mask)
        state, last = model.init_state(memory), torch.full((3,), sos)
        prefix = last[:, None]
        for _ in range(8):
            logits, state = model.step(last, state)
            recomputed = model.score(memory, prefix)[:, -1]  # whole prefix again, last step's logits
            torch.testing.assert_close(logits, recomputed, atol=1e-10, rtol=1e-10)
            last = logits.argmax(-1)
            prefix = torch.cat([prefix, last[:, None]], dim=1)


@pytest.mark.parametrize(("decoder", "arch"), KINDS)
def test_decoder_output_does_not_depend_on_batch_padding(decoder, arch):
    model = tiny_model(decoder, arch)
    images = [normalize_image(word_pixels(t, height=48 + 16 * i, seed=i)) for i, t in enumerate(TEXTS[:3])]
    tgt = tiny_vocab().targets(["fox"]).inputs
    with torch.no_grad():
        together = model.score(encode_images(model, images), tgt.expand(3, -1))
        for b, image in enumerate(images):
            alone = model.score(encode_images(model, [image]), tgt)
            torch.testing.assert_close(together[b:b + 1], alone, atol=1e-5, rtol=1e-5)
        same_size = [images[0], images[0].flip(-1)]  # no padding: both encoders must agree exactly
        pixels, mask = collate_images(same_size)
        torch.testing.assert_close(model.score(model.encode(pixels, mask), tgt.expand(2, -1)),
                                   model.score(encode_images(model, same_size), tgt.expand(2, -1)))


# ---- functional_call (test 14) and classifier features (test 11) ------------------------------------


@pytest.mark.parametrize(("decoder", "arch"), SOME)
def test_functional_call_reproduces_forward(decoder, arch):
    model = tiny_model(decoder, arch)
    pixels, mask, batch = _batch()
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    args, kwargs = (pixels, mask, batch.inputs), {"return_features": True}
    expected = model(*args, **kwargs)
    own = functional_call(model, (params, buffers), args, kwargs)
    torch.testing.assert_close(own, expected, atol=0, rtol=0)
    torch.manual_seed(1)
    moved = {k: v.detach() + 0.05 * torch.randn_like(v) for k, v in params.items()}
    moved = {k: v.requires_grad_() for k, v in moved.items()}
    logits, _ = functional_call(model, (moved, buffers), args, kwargs)
    reference = copy.deepcopy(model)
    reference.load_state_dict(moved, strict=False)
    torch.testing.assert_close(logits, reference(*args), atol=1e-5, rtol=1e-5)  # no stale (LSTM) weights
    torch.testing.assert_close(model(*args, **kwargs), expected, atol=0, rtol=0)  # the module is untouched
    grads = torch.autograd.grad(logits.square().mean(), list(moved.values()), allow_unused=True)
    assert [k for k, g in zip(moved, grads, strict=True) if g is None] == []  # every tensor is adaptable


@pytest.mark.parametrize("decoder", ["fphtr", "sar"])
def test_features_are_the_classifier_input(decoder):
    model = tiny_model(decoder)
    pixels, mask, batch = _batch()
    with torch.no_grad():
        logits, h = model(pixels, mask, batch.inputs, return_features=True)
    assert model.classifier is model.get_submodule("decoder.classifier")
    torch.testing.assert_close(logits, h @ model.classifier.weight.T + model.classifier.bias)


@pytest.mark.parametrize(("decoder", "arch"), SOME)
def test_closed_form_classifier_gradient_equals_autograd(decoder, arch):
    """Test 11: G[n] = (softmax(z_n) − onehot(y_n)) h_nᵀ = ∂ℓ_n/∂W for every non-pad character, and a
    scalar function of G has the same parameter gradient both ways (second order)."""
    model = tiny_model(decoder, arch).double()
    pixels, mask, batch = _batch(dtype=torch.float64)
    logits, h = model(pixels, mask, batch.inputs, return_features=True)
    ce = F.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none")  # (B, T)
    real = batch.targets != model.cfg.pad_id
    probs, onehot = logits.softmax(-1)[real], F.one_hot(batch.targets[real], model.cfg.vocab_size)
    closed = (probs - onehot)[:, :, None] * h[real][:, None, :]  # (N, V, F)
    weight = model.classifier.weight
    auto = torch.stack([torch.autograd.grad(ce[b, t], weight, create_graph=True)[0]
                        for b, t in real.nonzero().tolist()])  # (N, V, F)
    assert closed.shape[0] == int(batch.lengths.sum())
    torch.testing.assert_close(closed, auto, atol=1e-12, rtol=1e-10)
    probe = torch.randn_like(closed)
    params = [p for name, p in model.named_parameters() if not name.startswith("backbone.layer")]
    via_closed = torch.autograd.grad((closed * probe).sum(), params, retain_graph=True, allow_unused=True)
    via_auto = torch.autograd.grad((auto * probe).sum(), params, allow_unused=True)
    for a, b in zip(via_closed, via_auto, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


# ---- configuration -----------------------------------------------------------------------------------


def test_config_round_trip_and_presets():
    for decoder in ("fphtr", "sar"):
        for arch in ("resnet18", "resnet34", "resnet31"):
            cfg = preset("cpu", decoder=decoder, arch=arch, vocab_size=40)
            assert HTRConfig.from_dict(cfg.to_dict()) == cfg
    assert preset("paper", decoder="sar", arch="resnet31").name == "SAR-31"
    assert preset("paper").feature_dim == 260
    assert preset("paper", decoder="sar").feature_dim == 1536
    with pytest.raises(TypeError):
        HTRConfig.from_dict({**preset("tiny").to_dict(), "surprise": 1})
    with pytest.raises(ValueError, match="decoder"):
        preset("tiny", decoder="ctc")


def test_paper_sizes():
    """The thesis backbones: ResNet18 ≈ 11.2 M parameters (conv1 on 1 channel), ResNet31 ≈ 46.0 M."""
    counts = {arch: sum(p.numel() for p in build_backbone(BackboneConfig(arch)).parameters())
              for arch in ("resnet18", "resnet31")}
    assert counts["resnet18"] == 11_170_240
    assert 45.9e6 < counts["resnet31"] < 46.1e6


# ---- metrics on decoded characters (tests 20-22) -----------------------------------------------------


def test_cer_is_computed_on_decoded_characters():
    vocab = CharVocabulary(chr(0x100 + i) for i in range(130))  # ids 3..132
    one, other = vocab.decode([12, 34]), vocab.decode([123, 4])  # digit-joined, both read "1234"
    assert one != other
    assert cer(one, other).rate > 0
    empty = vocab.decode([vocab.eos_id, 12, 13])  # <eos> right after <sos>: an empty prediction
    assert empty == ""
    assert cer("abcde", empty).errors == 5
    assert cer("abcde", empty).rate == 1.0
    assert wer("abcde", empty).rate == 1.0
    assert cer(["ab", "abcdefgh"], ["aX", "abcdefgX"]).rate == pytest.approx(2 / 10)  # pooled, not 0.3125
    assert wer(["fox", "dogs", "over"], ["fox", "dog", "over"]).rate == pytest.approx(1 / 3)
