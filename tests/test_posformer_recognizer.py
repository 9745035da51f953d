"""The math recognizer bundle (issue #4): model files and export, input checks, batching, the registry,
and ``recognizers transcribe/evaluate --task math``."""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import recognizers
from data.datasets.crohme import CrohmeDataset
from data.latex import tokenize_latex
from data.vocab import crohme_vocab
from recognizers import InputError, Result
from recognizers.checkpoint import Bundle, CheckpointError, read_bundle, save_bundle
from recognizers.cli import main
from recognizers.posformer.recognizer import MathImage, PosFormerRecognizer, vocab_metadata
from recognizers.registry import REGISTRY
from tests.math_fixtures import formula_image, tiny_posformer, write_formulas

pytestmark = pytest.mark.usefixtures("single_thread")

OPTIONS = {"beam_size": 3, "nbest": 3, "max_length": 12}
BIAS = {"stop_bias": 3.0, "token_bias": dict.fromkeys(("x", "+", "1", "y"), 3.0)}  # short, non-empty outputs


@pytest.fixture(scope="module")
def recognizer():
    return PosFormerRecognizer(tiny_posformer(**BIAS))


@pytest.fixture(scope="module")
def bundle_path(recognizer, tmp_path_factory):
    return save_bundle(tmp_path_factory.mktemp("posformer") / "tiny.safetensors", recognizer.to_bundle())


@pytest.fixture(scope="module")
def formulas(tmp_path_factory):
    return write_formulas(tmp_path_factory.mktemp("formulas"), {"a": "x+1", "b": "y=2x", "c": "a^2"})


@pytest.fixture(scope="module")
def expected(recognizer, formulas):
    return recognizer.recognize(list(formulas.values()), **OPTIONS)


def test_results_are_latex_with_a_sorted_nbest(expected):
    vocab = crohme_vocab()
    for result in expected:
        assert isinstance(result, Result)
        assert result.nbest[0] == (result.text, result.score)
        assert 1 <= len(result.nbest) <= 3
        assert [s for _, s in result.nbest] == sorted((s for _, s in result.nbest), reverse=True)
        assert len({t for t, _ in result.nbest}) == len(result.nbest)
        assert not vocab.unknown(result.text.split())
        assert not {"<pad>", "<sos>", "<eos>"} & set(result.text.split())


def test_bundle_round_trip_gives_identical_results(bundle_path, formulas, expected, recognizer):
    bundle = read_bundle(bundle_path)
    assert bundle.model == "posformer"
    assert json.loads(bundle.extras["vocab"]) == list(crohme_vocab().tokens)
    assert set(bundle.state_dict) == set(recognizer.model.inference_state_dict())
    assert not any(k.startswith("position_decoder.") for k in bundle.state_dict)
    loaded = recognizers.load(bundle_path, device="cpu")
    assert isinstance(loaded, PosFormerRecognizer)
    assert loaded.recognize(list(formulas.values()), **OPTIONS) == expected


def test_default_search_is_beam_ten(recognizer, formulas):
    (result,) = recognizer.recognize([formulas["a"]], nbest=10, max_length=8)
    assert 2 <= len(result.nbest) <= 10  # up to 2·10 candidates were pooled; 10 are kept


def test_batched_equals_per_image(recognizer, formulas, expected):
    """Images of different sizes in one batch, in batches of one, or in another order: same results."""
    paths = list(formulas.values())
    for result, path in zip(expected, paths, strict=True):
        (alone,) = recognizer.recognize([path], **OPTIONS)
        assert alone.text == result.text
        assert [t for t, _ in alone.nbest] == [t for t, _ in result.nbest]
        assert alone.score == pytest.approx(result.score, abs=1e-5)
    small = PosFormerRecognizer(recognizer.model, max_batch=1)
    assert [r.text for r in small.recognize(paths[::-1], **OPTIONS)] == [r.text for r in expected[::-1]]


def test_inputs_of_every_kind(recognizer, formulas, expected):
    """A path, a PIL image, an array, a tensor and a prepared MathImage of the same picture agree."""
    image = Image.open(formulas["b"])
    prepared = recognizer.load_input(formulas["b"])
    assert recognizer.load_input(prepared) is prepared
    array = np.asarray(image)
    for source in (image, array, torch.from_numpy(array.copy()), prepared):
        (result,) = recognizer.recognize([source], **OPTIONS)
        assert result.text == expected[1].text


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    blank = folder / "blank.png"
    Image.new("L", (120, 40), 255).save(blank)
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    huge = folder / "huge.png"
    Image.new("1", (9000, 9000), 1).save(huge)  # 81 M px: refused from the header, before decoding
    return {"blank": blank, "corrupt": corrupt, "huge": huge, "missing": folder / "absent.png"}


@pytest.mark.parametrize("kind", ["blank", "corrupt", "huge", "missing"])
def test_bad_images_raise_input_error_naming_the_input(recognizer, bad_images, kind):
    with pytest.raises(InputError, match=bad_images[kind].name):
        recognizer.recognize([bad_images[kind]])


def test_bad_array_and_prepared_image(recognizer):
    with pytest.raises(InputError, match="blank"):
        recognizer.load_input(torch.zeros(30, 60))
    with pytest.raises(InputError, match="1, H, W"):
        recognizer.load_input(MathImage(torch.zeros(2, 30, 60)))


# ---- model files ----


def _training_state(model):
    """What a training checkpoint holds: the full model with its position branch."""
    full = tiny_posformer(position=True, **BIAS)
    state = full.state_dict()
    state.update(model.state_dict())  # the same inference weights as ``model``
    return full.cfg, state


def test_training_bundle_with_the_position_branch_loads(recognizer, formulas, expected):
    cfg, state = _training_state(recognizer.model)
    assert any(k.startswith("position_decoder.") for k in state)
    bundle = Bundle("posformer", cfg.to_dict(), {"vocab": vocab_metadata(crohme_vocab())}, state)
    loaded = PosFormerRecognizer.from_bundle(bundle)
    assert loaded.model.position_decoder is None
    assert loaded.recognize(list(formulas.values()), **OPTIONS) == expected


def test_export_of_a_training_checkpoint_keeps_inference_weights_only(recognizer, formulas, expected,
                                                                      tmp_path, capsys):
    cfg, state = _training_state(recognizer.model)
    ckpt = tmp_path / "epoch=1.ckpt"
    torch.save({"epoch": 1, "state_dict": {f"model.{k}": v for k, v in state.items()},
                "optimizer_states": [],
                "recognizers": {"model": "posformer", "config": cfg.to_dict(),
                                "vocab": json.dumps(list(crohme_vocab().tokens[3:]))}}, ckpt)
    assert recognizers.load(ckpt, device="cpu").recognize(list(formulas.values()), **OPTIONS) == expected
    out = tmp_path / "posformer.safetensors"
    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    bundle = read_bundle(out)
    assert set(bundle.state_dict) == set(recognizer.model.inference_state_dict())
    assert bundle.config["position"]["enabled"] is False
    assert recognizers.load(out, device="cpu").recognize(list(formulas.values()), **OPTIONS) == expected


def _broken(bundle: Bundle, kind: str) -> Bundle:
    state = dict(bundle.state_dict)
    if kind == "no vocab":
        return replace(bundle, extras={})
    if kind == "foreign vocab":
        tokens = list(crohme_vocab().tokens)
        tokens[10], tokens[11] = tokens[11], tokens[10]
        return replace(bundle, extras={"vocab": json.dumps(tokens)})
    if kind == "vocab not json":
        return replace(bundle, extras={"vocab": "[x"})
    if kind == "bad config":
        return replace(bundle, config={**bundle.config, "no_such_field": 1})
    if kind == "missing weight":
        state.pop(next(iter(state)))
    elif kind == "unexpected weight":
        state["decoder.extra"] = torch.zeros(1)
    elif kind == "wrong shape":
        key = "decoder.proj.bias"
        state[key] = torch.zeros(state[key].shape[0] + 1)
    return replace(bundle, state_dict=state)


@pytest.mark.parametrize("kind", ["no vocab", "foreign vocab", "vocab not json", "bad config",
                                  "missing weight", "unexpected weight", "wrong shape"])
def test_mismatched_model_files_raise_checkpoint_error(bundle_path, tmp_path, kind):
    path = save_bundle(tmp_path / "broken.safetensors", _broken(read_bundle(bundle_path), kind))
    with pytest.raises(CheckpointError, match=r"broken\.safetensors"):
        recognizers.load(path, device="cpu")


def test_registry_lists_posformer_only_when_its_weights_exist(bundle_path, no_bundled_weights):
    spec = REGISTRY["posformer"]
    assert (spec.task, spec.weights) == ("math", "posformer.safetensors")
    assert "posformer" not in recognizers.available()
    with pytest.raises(ValueError, match="weights"):
        recognizers.load("posformer")
    shutil.copy(bundle_path, no_bundled_weights / "posformer.safetensors")
    assert "posformer" in recognizers.available()
    assert isinstance(recognizers.load("posformer", device="cpu"), PosFormerRecognizer)


# ---- command line ----


def test_transcribe_math_to_tex(bundle_path, formulas, bad_images, expected, tmp_path, capsys):
    code = main(["transcribe", str(formulas["a"]), "--task", "math", "--model", str(bundle_path),
                 "--format", "tex", "--beam-size", "3", "-q"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.startswith("$$")
    assert len(out.strip()) > 4  # not an empty formula
    assert out.strip().strip("$") == recognizers.load(bundle_path, device="cpu").recognize(
        [formulas["a"]], beam_size=3)[0].text
    out_dir = tmp_path / "out"
    code = main(["transcribe", str(formulas["b"]), str(bad_images["blank"]), "--task", "math", "--model",
                 str(bundle_path), "--format", "tex", "--output-dir", str(out_dir), "--beam-size", "3"])
    _, err = capsys.readouterr()
    assert code == 1  # the blank image failed, the other was written
    (written,) = out_dir.rglob("*.tex")  # under the inputs' relative folder
    assert written.name == "b.png.tex"
    assert written.read_text().startswith("$$")
    assert "blank.png" in err
    assert "1 ok, 1 failed" in err


@pytest.fixture(scope="module")
def crohme_folder(recognizer, tmp_path_factory):
    """A CROHME-layout folder: black-on-white PNGs (polarity is detected), one caption set to what the
    model predicts for its image and one that it cannot predict."""
    root = tmp_path_factory.mktemp("crohme") / "2014"
    (root / "img").mkdir(parents=True)
    for k, (name, text) in enumerate({"f1": "x+1", "f2": "a^2", "f3": "y"}.items()):
        formula_image(text, (100 + 20 * k, 36)).save(root / "img" / f"{name}.png")
    (root / "caption.txt").write_text("f1 x + 1\nf2 a ^ { 2 }\nf3 y\n")
    dataset = CrohmeDataset(root)
    (predicted,) = recognizer.recognize([MathImage(dataset[0][0])], beam_size=2)
    tokens = predicted.text.split() or ["x"]
    (root / "caption.txt").write_text(f"f1 {' '.join(tokens)}\nf2 \\frac {{ a }} {{ 2 }}\nf3 y\n")
    return root


def test_evaluate_math_prints_a_json_report(bundle_path, crohme_folder, capsys):
    code = main(["evaluate", "--task", "math", "--data", str(crohme_folder), "--model", str(bundle_path),
                 "--beam-size", "2", "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert {"task", "model", "n", "metrics", "seconds", "seconds_per_image"} <= set(report)
    assert report["task"] == "math"
    assert report["n"] == 3
    assert report["model"] == str(bundle_path)
    metrics = report["metrics"]
    assert set(metrics) == {"exprate", "le1", "le2", "le3"}
    assert 0 <= metrics["exprate"] <= metrics["le1"] <= metrics["le2"] <= metrics["le3"] <= 1
    assert report["seconds"] > 0


def test_evaluate_math_scores_exact_matches_and_reads_zips(bundle_path, crohme_folder, tmp_path, capsys):
    """The first caption is exactly the prediction at beam 2: ExpRate counts it (as long as the LaTeX
    normalisation leaves that caption unchanged); a zip of the folder gives the same report."""
    first = (crohme_folder / "caption.txt").read_text().splitlines()[0].split()[1:]
    try:
        normal = list(tokenize_latex(" ".join(first), strict=False).tokens) == first
    except ValueError:
        normal = True  # unparsable captions are compared as written
    archive = tmp_path / "crohme.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in crohme_folder.rglob("*"):
            z.write(path, path.relative_to(crohme_folder.parent))
    reports = []
    for data in (crohme_folder, archive):
        assert main(["evaluate", "--task", "math", "--data", str(data), "--model", str(bundle_path),
                     "--limit", "1", "--beam-size", "2"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0]["n"] == 1
    assert reports[0]["metrics"] == reports[1]["metrics"]
    assert reports[0]["metrics"]["exprate"] == (1.0 if normal else 0.0)


def test_evaluate_math_without_weights_or_corpus_is_a_usage_error(crohme_folder, tmp_path, capsys,
                                                                   no_bundled_weights):
    assert main(["evaluate", "--task", "math", "--data", str(crohme_folder)]) == 2
    assert "posformer.safetensors" in capsys.readouterr().err  # the registry's weights are missing
    assert main(["evaluate", "--task", "math", "--data", str(tmp_path)]) == 2
    assert "caption.txt" in capsys.readouterr().err
    assert main(["evaluate", "--task", "text", "--data", str(tmp_path)]) == 2
    assert "words.txt" in capsys.readouterr().err  # not an IAM-layout folder


def test_attention_view_explains_each_token(recognizer, formulas, expected):
    view = recognizer.attention_view(formulas["a"], beam_size=3)
    image = recognizer.load_input(formulas["a"]).pixels
    assert view.latex == recognizer.recognize([formulas["a"]], beam_size=3)[0].text
    assert view.tokens == tuple(view.latex.split())
    assert view.image.shape == tuple(image.shape[1:])
    assert view.image.dtype == np.uint8
    assert view.maps.shape == (len(view.tokens), *view.image.shape)
    assert view.maps.dtype == np.float32
    assert np.allclose(view.maps.max(axis=(1, 2)), 1.0)
    assert view.maps.min() >= 0.0
    # white strokes on black for the model, dark ink on white for people
    assert np.array_equal(view.image, np.round((1 - image[0].numpy()) * 255).astype(np.uint8))


def test_attention_view_of_given_latex_and_its_errors(recognizer, formulas):
    view = recognizer.attention_view(formulas["b"], "y = 2 x")
    assert view.tokens == ("y", "=", "2", "x")
    assert view.maps.shape[0] == 4
    with pytest.raises(InputError, match="outside the vocabulary: ü"):
        recognizer.attention_view(formulas["b"], "y = ü")
    with pytest.raises(InputError):
        recognizer.attention_view(formulas["b"], " ".join(["x"] * 80))


def test_model_attention_rows_are_distributions_over_valid_cells(recognizer, formulas):
    from recognizers.posformer.search import encode_images

    model = recognizer.model
    images = [recognizer.load_input(p).pixels for p in (formulas["a"], formulas["c"])]
    memory, mask = encode_images(model, images)
    vocab = crohme_vocab()
    tgt = torch.tensor([[vocab.sos_id, *vocab.encode(["x", "+", "1"])]] * 2)
    with torch.no_grad():
        weights, logits = model.attention(memory, mask, tgt)
        assert torch.allclose(logits, model.score(memory, mask, tgt))  # the same pass as scoring
    assert weights.shape == (2, 4, *memory.shape[1:3])
    assert torch.allclose(weights.sum(dim=(2, 3)), torch.ones(2, 4), atol=1e-5)
    assert (weights.masked_select(mask[:, None].expand_as(weights)) == 0).all()  # padding gets nothing
