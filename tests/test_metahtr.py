"""MetaHTR (issue #5): inner step, closed-form gradients, second order, adaptation, Lightning evaluation
and the control row (writer-htr.md §17 tests 10-15), writer profiles, and a tiny meta-training run.

Gradients are compared in float64 on tiny models. ``tests/test_handwriting_model.py`` already checks the
closed-form classifier gradient inside full FPHTR and SAR without label smoothing and ``functional_call``
fidelity (tests 11 and 14, first halves); this module adds random heads, label smoothing, the features'
gradient and everything MetaHTR-specific.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.datasets.iam import IAMDataset
from data.handwriting import CharVocabulary, normalize_image
from recognizers.handwriting import HTRModel
from recognizers.handwriting.metahtr import (
    InstanceWeightNet,
    MetaHTR,
    MetaHTRConfig,
    WordBatch,
    classifier_gradients,
    decode_with,
    forward_with,
    inner_adapt,
    query_loss,
    support_loss,
)
from recognizers.handwriting.metahtr_profile import MetaHTRProfile
from recognizers.handwriting.search import decode, encode_images
from tests.handwriting_fixtures import TEXTS, tiny_model, tiny_vocab, word_pixels
from tests.iam_fixtures import write_iam_tree
from training.metahtr_data import EpisodeDataModule, WriterSplits
from training.metahtr_module import MetaHTRModule

pytestmark = pytest.mark.usefixtures("single_thread")


def _words(texts, dtype=torch.float64, offset=0):
    """Normalised word images of different sizes, as a WordBatch of the tiny vocabulary."""
    images = [normalize_image(word_pixels(t, height=48 + 4 * i, seed=offset + i)).to(dtype)
              for i, t in enumerate(texts)]
    return WordBatch.from_words(images, texts, tiny_vocab())


def _task():
    return _words(TEXTS[:4]), _words(TEXTS[4:], offset=10)


def _model(decoder="fphtr", **overrides):
    model = tiny_model(decoder).double()
    return model, MetaHTR(model, MetaHTRConfig(**overrides)).double()


def _lrs(names, seed=0, scale=1e-2):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.tensor(scale * (1 + torch.rand((), generator=gen).item()), dtype=torch.float64)
            for n in names}


# ---- test 10: the inner step is manual SGD ---------------------------------------------------------


class _WithUnused(HTRModel):
    """A model with one parameter the loss never touches (its gradient is None)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.unused = nn.Parameter(torch.ones(3))


@pytest.mark.parametrize("weighted", [False, True])
def test_inner_step_is_manual_sgd_with_a_rate_per_tensor(weighted):
    base = tiny_model()
    model = _WithUnused(base.cfg).double().eval()
    model.load_state_dict(base.double().state_dict(), strict=False)
    net = InstanceWeightNet(model.cfg.vocab_size, model.cfg.feature_dim).double() if weighted else None
    support = _words(TEXTS[:4])
    params = dict(model.named_parameters())
    lrs = _lrs(params)
    logits, h = forward_with(model, params, support)
    loss = support_loss(logits, h, support.targets, 0, net)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    grads = dict(zip(params, grads, strict=True))
    fast = inner_adapt(model, params, support, lrs, weight_net=net, create_graph=False)
    assert grads["unused"] is None
    assert fast["unused"] is params["unused"]
    for name, p in params.items():
        if name != "unused":
            torch.testing.assert_close(fast[name], p - lrs[name] * grads[name], atol=1e-12, rtol=1e-10)


def test_weighted_inner_loss_is_divided_by_words_not_characters():
    model, meta = _model()
    net = meta.weight_net
    with torch.no_grad():  # w = sigmoid(2) for every character
        net.rest[-2].weight.zero_()
        net.rest[-2].bias.fill_(2.0)
    support = _words(TEXTS[:4])
    logits, h = forward_with(model, dict(model.named_parameters()), support)
    expected = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64)) * F.cross_entropy(
        logits.transpose(1, 2), support.targets, ignore_index=0, reduction="sum") / len(support)
    torch.testing.assert_close(support_loss(logits, h, support.targets, 0, net), expected)
    plain = F.cross_entropy(logits.transpose(1, 2), support.targets, ignore_index=0)  # mean over characters
    torch.testing.assert_close(support_loss(logits, h, support.targets, 0, None), plain)


def test_weight_net_is_the_thesis_mlp_on_the_gradient_and_its_mean():
    torch.manual_seed(0)
    net = InstanceWeightNet(5, 3).double()
    grads = torch.randn(6, 5, 3, dtype=torch.float64)
    flat = grads.flatten(1)
    full = torch.cat([flat, flat.mean(0, keepdim=True).expand_as(flat)], dim=1)  # (N, 2·V·D)
    torch.testing.assert_close(net(grads), net.rest(net.first(full)).squeeze(1))
    assert net.first.in_features == 2 * 5 * 3
    assert [m.out_features for m in net.rest if isinstance(m, nn.Linear)] == [8, 1]
    assert isinstance(net.rest[-1], nn.Sigmoid)


# ---- test 11: closed form = autograd ---------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_closed_form_gradient_on_random_heads(smoothing):
    gen = torch.Generator().manual_seed(3)
    n, vocab, dim = 7, 5, 4
    weight = torch.randn(vocab, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(vocab, generator=gen, dtype=torch.float64)
    h = torch.randn(n, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, vocab, (n,), generator=gen)
    logits = h @ weight.T + bias
    ce = F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)
    auto = torch.stack([torch.autograd.grad(ce[i], weight, create_graph=True)[0] for i in range(n)])
    closed = classifier_gradients(logits, h, y, smoothing)
    torch.testing.assert_close(closed, auto, atol=1e-12, rtol=1e-10)
    probe = torch.randn(n, vocab, dim, generator=gen, dtype=torch.float64)  # a scalar function of G
    via_closed = torch.autograd.grad((closed * probe).sum(), (h, weight), retain_graph=True)
    via_auto = torch.autograd.grad((auto * probe).sum(), (h, weight))
    for a, b in zip(via_closed, via_auto, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("decoder", ["fphtr", "sar"])
def test_closed_form_gradient_inside_the_models_with_label_smoothing(decoder):
    model = tiny_model(decoder).double()
    batch = _words(("fox", "Jumps", "13"))
    logits, h = forward_with(model, dict(model.named_parameters()), batch)
    real = batch.targets != 0
    ce = F.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none", label_smoothing=0.1)
    weight = model.classifier.weight
    auto = torch.stack([torch.autograd.grad(ce[b, t], weight, retain_graph=True)[0]
                        for b, t in real.nonzero().tolist()])  # (N, V, D)
    closed = classifier_gradients(logits[real], h[real], batch.targets[real], 0.1)
    torch.testing.assert_close(closed, auto, atol=1e-12, rtol=1e-10)


# ---- test 12: second order --------------------------------------------------------------------------


# biases that a softmax over keys / feature cells ignores: their gradients are 0 in theory (1e-40 in practice)
_SHIFT_INVARIANT = ("k_proj.bias", "decoder.score.bias")


@pytest.mark.parametrize("decoder", ["fphtr", "sar"])
def test_second_order_gradients_reach_alpha_g_and_theta(decoder):
    model, meta = _model(decoder)
    support, query = _task()
    meta.outer_loss(model, support, query).backward()
    alphas = {name: meta.inner_lr.log_lr[name.replace(".", "__")] for name in meta.adapted}
    for name, p in [*alphas.items(), *model.named_parameters()]:
        if not name.endswith(_SHIFT_INVARIANT):
            assert p.grad is not None, name
            assert p.grad.abs().sum() > 0, name
    for name, p in meta.weight_net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("weighted", [False, True])
def test_one_step_alpha_gradient_is_minus_the_inner_product_of_the_gradients(weighted):
    model, meta = _model(instance_weights=weighted)
    support, query = _task()
    params = meta.base_params(model)
    lrs = {k: v.detach().requires_grad_() for k, v in _lrs(params).items()}
    fast = inner_adapt(model, params, support, lrs, weight_net=meta.weight_net)
    outer = query_loss(forward_with(model, fast, query)[0], query.targets, 0)
    d_alpha = torch.autograd.grad(outer, list(lrs.values()), retain_graph=True)
    d_fast = torch.autograd.grad(outer, list(fast.values()))
    logits, h = forward_with(model, params, support)
    inner_loss = support_loss(logits, h, support.targets, 0, meta.weight_net)
    inner = torch.autograd.grad(inner_loss, list(params.values()))
    for name, da, df, gi in zip(params, d_alpha, d_fast, inner, strict=True):
        torch.testing.assert_close(da, -(df * gi).sum(), atol=1e-12, rtol=1e-8, msg=name)


def _outer(model, meta, params, lrs, support, query, *, steps=1, create_graph=True):
    fast = inner_adapt(model, params, support, lrs, weight_net=meta.weight_net, num_steps=steps,
                       create_graph=create_graph)
    return query_loss(forward_with(model, fast, query)[0], query.targets, 0)


def test_two_steps_gradcheck_in_alpha_and_first_order_differs():
    model, meta = _model(adapt=("decoder.classifier", "decoder.layers.1.linear2"))
    support, query = _task()
    params = meta.base_params(model)
    names = list(params)
    alphas = tuple(v.detach().requires_grad_() for v in _lrs(names, scale=0.5).values())

    def outer(*a, create_graph=True):
        return _outer(model, meta, params, dict(zip(names, a, strict=True)), support, query, steps=2,
                      create_graph=create_graph)

    assert torch.autograd.gradcheck(outer, alphas, eps=1e-6, atol=1e-6)
    second = torch.autograd.grad(outer(*alphas), alphas)
    first = torch.autograd.grad(outer(*alphas, create_graph=False), alphas)
    assert any(not torch.allclose(s, f, rtol=1e-3) for s, f in zip(second, first, strict=True))


def test_theta_gradient_matches_finite_differences_hessian_included():
    model, meta = _model(adapt=("decoder.classifier", "decoder.layers.1"))
    support, query = _task()
    params = meta.base_params(model)
    lrs = _lrs(params, scale=0.5)
    gen = torch.Generator().manual_seed(5)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}

    def along(eps):
        moved = {k: (v.detach() + eps * direction[k]).requires_grad_() for k, v in params.items()}
        return float(_outer(model, meta, moved, lrs, support, query).detach())

    numeric = (along(1e-5) - along(-1e-5)) / 2e-5
    grads = {}
    for create_graph in (True, False):
        g = torch.autograd.grad(_outer(model, meta, params, lrs, support, query, create_graph=create_graph),
                                list(params.values()))
        grads[create_graph] = sum(float((gk * direction[k]).sum()) for k, gk in zip(params, g, strict=True))
    assert grads[True] == pytest.approx(numeric, rel=1e-5)
    assert abs(grads[False] - numeric) > 1e3 * abs(grads[True] - numeric)  # the Hessian term matters


def test_first_order_gives_g_no_gradient_and_refuses_instance_weights():
    with pytest.raises(ValueError, match="second order"):
        MetaHTRConfig(first_order=True, instance_weights=True)
    model, meta = _model()
    support, query = _task()
    fast = meta.adapt(model, support, create_graph=False)
    query_loss(forward_with(model, fast, query)[0], query.targets, 0).backward()
    assert all(p.grad is None for p in meta.weight_net.parameters())
    assert all(p.grad is not None for p in meta.inner_lr.parameters())  # α still learns (MAMLmSGD)


def test_inner_loop_refuses_disabled_gradients():
    model, meta = _model()
    support, _ = _task()
    with torch.no_grad(), pytest.raises(RuntimeError, match="inference_mode"):
        meta.adapt(model, support)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        meta.adapt(model, support)


# ---- test 13: adaptation helps, on the tiny synthetic preset ----------------------------------------


@pytest.fixture(scope="module")
def synth_corpus(tiny_text_corpus) -> Path:
    """The tiny synthetic IAM-layout corpus of the session (tests/conftest.py)."""
    return tiny_text_corpus


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["fphtr", "sar"])
def test_one_small_step_lowers_the_support_loss_of_every_writer(synth_corpus, decoder):
    dataset = IAMDataset(synth_corpus)  # every split: train, val and test writers
    vocab = CharVocabulary.from_texts(s.text for s in dataset.samples)
    torch.manual_seed(0)
    model = tiny_model(decoder, vocab=vocab, max_seq_len=40).double()
    meta = MetaHTR(model, MetaHTRConfig(initial_inner_lr=1e-3)).double()
    by_writer: dict[str, list[int]] = {}
    for i, writer in enumerate(dataset.writers):
        by_writer.setdefault(writer, []).append(i)
    assert len(by_writer) >= 12
    for writer, indices in by_writer.items():
        items = [dataset[i] for i in indices[:16]]
        support = WordBatch.from_words([normalize_image(p).double() for p, _, _ in items],
                                       [t for _, t, _ in items], vocab)

        losses = []
        for params in (meta.base_params(model), meta.adapt(model, support, create_graph=False)):
            logits, h = forward_with(model, params, support)
            losses.append(float(support_loss(logits, h, support.targets, 0, meta.weight_net).detach()))
        before, after = losses
        assert after < before, writer


# ---- test 14 (second half) and 15: Lightning evaluation and the control row -------------------------


@pytest.fixture(scope="module")
def fake_iam(tmp_path_factory):
    return write_iam_tree(tmp_path_factory.mktemp("fake-iam") / "iam")


def _datamodule(fake):
    return EpisodeDataModule(str(fake.root), split_files={k: str(v) for k, v in fake.split_files.items()},
                             ways=2, shots=4, num_permutations=2)


def _module(**kwargs):
    with pytest.warns(UserWarning, match="randomly initialised"):
        module = MetaHTRModule(init={"size": "tiny"}, **kwargs)
    return module


def test_meta_batches_split_into_writer_tasks_support_even_query_odd(fake_iam):
    data = _datamodule(fake_iam)
    batch = next(iter(data.train_dataloader()))
    assert len(batch["images"]) == 2 * 2 * 4  # ways × 2K
    module = _module()
    tasks = module._tasks(batch)
    assert len(tasks) == 2
    for t, (support, query) in enumerate(tasks):
        words = batch["texts"][8 * t:8 * (t + 1)]
        assert len(set(batch["writers"][8 * t:8 * (t + 1)])) == 1
        assert [module.vocab.decode(y) for y in support.targets] == words[0::2]
        assert [module.vocab.decode(y) for y in query.targets] == words[1::2]


def test_validation_adapts_under_inference_mode_false(fake_iam):
    module = _module(metahtr={"initial_inner_lr": 1e-2})
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = L.Trainer(accelerator="cpu", inference_mode=False, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    metrics = trainer.validate(module, datamodule=_datamodule(fake_iam))[0]
    assert metrics["val_delta_norm"] > 0  # θ' ≠ θ in every split
    assert {"val_wer", "val_cer", "val_wer_unadapted", "val_cer_unadapted"} <= set(metrics)
    after = module.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base weights never change
    with pytest.raises(RuntimeError, match="inference_mode=False"):
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                  enable_model_summary=False).validate(module, datamodule=_datamodule(fake_iam))


def test_module_starts_from_a_base_bundle(tmp_path):
    from recognizers.checkpoint import CheckpointError, save_bundle
    from recognizers.handwriting.recognizer import HandwritingRecognizer

    model, vocab = tiny_model("sar"), tiny_vocab()
    path = save_bundle(tmp_path / "base.safetensors", HandwritingRecognizer(model, vocab).to_bundle())
    module = MetaHTRModule(base=str(path), metahtr={"instance_weights": False})
    assert module.vocab == vocab
    assert module.meta.weight_net is None
    assert module.meta.adapted == tuple(n for n, _ in model.named_parameters())  # every tensor adapts
    own = module.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match="no such model file"):
        MetaHTRModule(base=str(tmp_path / "missing.ckpt"))


def test_inner_rates_stay_positive_under_any_outer_step():
    _, meta = _model()
    optimizer = torch.optim.SGD(meta.inner_lr.parameters(), lr=20.0)
    for p in meta.inner_lr.parameters():
        p.grad = torch.ones_like(p)  # a huge push towards α < 0
    optimizer.step()
    with torch.no_grad():
        rates = meta.inner_lr()
    assert all(0 < a < 1e-4 for a in rates.values())
    assert all(math.isfinite(float(a)) for a in rates.values())


def test_control_row_is_plain_decoding_and_adapted_row_uses_the_adapted_weights(fake_iam):
    module = _module(metahtr={"initial_inner_lr": 1e-2}).eval()
    data = _datamodule(fake_iam)
    writers = WriterSplits(data._dataset("val"), shots=4, num_permutations=2)
    batch = writers[0]
    with torch.no_grad():
        out = module.evaluate_writer(batch)
    model, images = module.model, batch["images"]
    for split, (support_pos, query_pos) in enumerate(batch["splits"]):
        queries = [images[i] for i in query_pos]
        plain = [module.vocab.decode(h[0].tokens) for h in decode(model, encode_images(model, queries))]
        assert out["control"][split] == plain
        support = WordBatch.from_words([images[i] for i in support_pos],
                                       [batch["texts"][i] for i in support_pos], module.vocab)
        fast = module.meta.adapt(model, support, create_graph=False)
        assert out["adapted"][split] == [module.vocab.decode(t) for t in decode_with(model, fast, queries)]
    assert len(out["control"]) == 2


# ---- writer profiles ------------------------------------------------------------------------------


def test_writer_profile_round_trips_and_reproduces_the_adapted_weights(tmp_path):
    model, meta = _model(adapt=("decoder",))
    support, _ = _task()
    profile = meta.writer_profile(model, support)
    assert set(profile.deltas) <= set(meta.adapted)
    assert not any(k.startswith("backbone") for k in profile.deltas)  # only adapted tensors are stored
    loaded = MetaHTRProfile.load(profile.save(tmp_path / "writer.safetensors"))
    assert (loaded.model, loaded.num_support) == ("FPHTR-18", 4)
    fast = meta.adapt(model, support, create_graph=False)
    for name, value in loaded.parameters_for(model).items():
        torch.testing.assert_close(value, fast[name].detach(), atol=1e-6, rtol=1e-6)  # float32 deltas
    other = tiny_model(seed=1).double()
    with pytest.raises(ValueError, match="other base"):
        loaded.parameters_for(other)


# ---- recipes and a tiny meta-training run ----------------------------------------------------------

CONFIGS = Path(__file__).parents[1] / "training" / "configs"


@pytest.mark.parametrize("name", ["metahtr_iam.yaml", "metahtr_synth.yaml", "metahtr_tiny.yaml"])
def test_recipes_parse(name, capsys):
    """The recipes name only valid arguments (printing the config instantiates nothing)."""
    from training.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "MetaHTRModule" in out
    assert "inference_mode: false" in out


@pytest.mark.slow
def test_tiny_metahtr_fit_runs_and_exports(synth_corpus, tmp_path):
    from recognizers.checkpoint import export_checkpoint, read_bundle
    from recognizers.cli import main
    from recognizers.handwriting.recognizer import HandwritingRecognizer

    root = tmp_path / "run"
    config = CONFIGS / "metahtr_tiny.yaml"
    args = ["fit", "--config", str(config), "--data.init_args.root", str(synth_corpus),
            "--trainer.default_root_dir", str(root)]
    with pytest.warns(UserWarning, match="randomly initialised"):
        assert main(args) == 0
    ckpt = root / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert all(torch.exp(v) > 0 for k, v in state["state_dict"].items() if k.startswith("meta.inner_lr"))
    bundle = read_bundle(export_checkpoint(ckpt, tmp_path / "meta.safetensors"))
    recognizer = HandwritingRecognizer.from_bundle(bundle)
    assert recognizer.model.cfg.name == "FPHTR-18"
