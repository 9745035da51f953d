"""Writer adaptation end to end (issue #5): writer profiles, ``HandwritingRecognizer.adapt`` and
``recognize(writer_profile=...)`` for plain fine-tuning, MetaHTR and writer codes, model files that keep
their adaptation state, and the ``adapt`` / ``--writer-profile`` / ``--adaptation-protocol`` commands on
the tiny synthetic corpus (writer-htr.md §7–§9)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import recognizers
from recognizers.checkpoint import export_checkpoint, read_bundle, save_bundle
from recognizers.cli import main
from recognizers.handwriting.adaptation import (
    FinetuneAdapter,
    FinetuneConfig,
    MetaHTRAdapter,
    WriterCodeAdapter,
)
from recognizers.handwriting.metahtr import WordBatch, decode_with, forward_with, query_loss
from recognizers.handwriting.profile import ProfileError, WriterProfile, vocab_digest
from recognizers.handwriting.recognizer import HandwritingRecognizer
from recognizers.samples import SamplesError, pair_uploads, read_samples
from tests.handwriting_fixtures import tiny_model, tiny_vocab, word_pixels, write_words

pytestmark = pytest.mark.usefixtures("single_thread")

SUPPORT = ("the", "quick", "fox", "lazy")
QUERY = ("dogs.", "over", "brown", "13")


def _samples(texts=SUPPORT, seed=0) -> list[tuple[np.ndarray, str]]:
    return [(word_pixels(t, height=40 + 4 * k, seed=seed + k), t) for k, t in enumerate(texts)]


def _queries() -> list[np.ndarray]:
    return [word_pixels(t, seed=50 + k) for k, t in enumerate(QUERY)]


def _recognizer(lr: float = 0.5, steps: int = 5, seed: int = 0) -> HandwritingRecognizer:
    """A tiny untrained model with a rate large enough for its outputs to move."""
    return HandwritingRecognizer(tiny_model(seed=seed), tiny_vocab(),
                                 adapter=FinetuneAdapter(FinetuneConfig(lr=lr, steps=steps)))


def _support_loss(rec: HandwritingRecognizer, params: dict) -> float:
    batch = WordBatch.from_words([rec.load_input(x).pixels for x, _ in _samples()], list(SUPPORT), rec.vocab)
    with torch.no_grad():
        logits, _ = forward_with(rec.model, params, batch)
        return float(query_loss(logits, batch.targets, rec.vocab.pad_id))


# ---- profiles ---------------------------------------------------------------------------------------


def test_profile_round_trips_through_its_file(tmp_path):
    rec = _recognizer()
    profile = rec.adapt(_samples())
    assert (profile.method, profile.num_support, profile.model) == ("finetune", 4, "FPHTR-18")
    assert set(profile.deltas) == {"decoder.classifier.weight", "decoder.classifier.bias"}  # small by default
    saved = profile.save(tmp_path / "me.safetensors")
    loaded = WriterProfile.load(saved.path)
    assert loaded.path == tmp_path / "me.safetensors"
    for field in ("method", "model", "base_digest", "vocab_digest", "num_support"):
        assert getattr(loaded, field) == getattr(profile, field)
    assert loaded.info == {"steps": 5, "lr": 0.5, "adapt": ["decoder.classifier."]}
    for name, delta in profile.deltas.items():
        assert torch.equal(loaded.deltas[name], delta)
    assert saved.path.stat().st_size < 8_000
    assert [r.text for r in rec.recognize(_queries(), writer_profile=saved.path)] == \
        [r.text for r in rec.recognize(_queries(), writer_profile=profile)]


def test_bad_profile_files_are_refused_naming_the_file(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00not safetensors at all")
    with pytest.raises(ProfileError, match=r"junk\.safetensors: not a readable writer profile"):
        WriterProfile.load(junk)
    with pytest.raises(ProfileError, match=r"absent\.safetensors: no such writer-profile file"):
        WriterProfile.load(tmp_path / "absent.safetensors")
    model_file = save_bundle(tmp_path / "model.safetensors", _recognizer().to_bundle())
    with pytest.raises(ProfileError, match=r"model\.safetensors: not a writer profile \(a model file\)"):
        WriterProfile.load(model_file)
    with pytest.raises(ProfileError, match="unknown writer-profile method"):
        WriterProfile("magic", {"x": torch.ones(1)}, "FPHTR-18", "0" * 64, "0" * 64, 1)
    with pytest.raises(ProfileError, match="exactly one"):
        WriterProfile("writer-code", {"code": torch.ones(2, 2)}, "FPHTR-18", "0" * 64, "0" * 64, 1)


def test_profile_for_other_weights_or_characters_is_refused(tmp_path):
    profile = _recognizer().adapt(_samples()).save(tmp_path / "writer.safetensors")
    other = _recognizer(seed=1)
    with pytest.raises(ProfileError, match=r"writer\.safetensors: .*other base weights"):
        other.recognize(_queries(), writer_profile=profile.path)
    chars = tiny_vocab().chars
    vocab = type(tiny_vocab())([*chars[:-1], "@"])  # same size and weights, another character
    renamed = HandwritingRecognizer(tiny_model(), vocab)
    with pytest.raises(ProfileError, match="another character set"):
        renamed.check_profile(profile.path)
    code = WriterProfile("writer-code", {"code": torch.zeros(4)}, "FPHTR-18", other.weights_digest,
                         vocab_digest(other.vocab), 1)
    with pytest.raises(ProfileError, match="writer-code adapter"):
        other.check_profile(code)


# ---- adaptation -------------------------------------------------------------------------------------


def test_finetuning_lowers_the_support_loss_and_is_deterministic():
    rec = _recognizer()
    base = {k: p.detach() for k, p in rec.model.named_parameters()}
    profile = rec.adapt(_samples())
    adapted = {k: base[k] + d for k, d in profile.deltas.items()}
    assert _support_loss(rec, adapted) < _support_loss(rec, {}) - 0.1
    again = rec.adapt(_samples())
    assert all(torch.equal(again.deltas[k], d) for k, d in profile.deltas.items())
    plain = [r.text for r in rec.recognize(_queries())]
    assert [r.text for r in rec.recognize(_queries(), writer_profile=profile)] != plain
    assert [r.text for r in rec.recognize(_queries())] == plain  # the shared weights never change
    assert rec.adapt(_samples(), steps=1).info["steps"] == 1


def test_recognize_with_a_profile_is_decoding_with_the_adapted_parameters():
    rec = _recognizer()
    profile = rec.adapt(_samples())
    params = {k: p + profile.deltas[k] for k, p in rec.model.named_parameters() if k in profile.deltas}
    images = [rec.load_input(x).pixels for x in _queries()]
    expected = [rec.vocab.decode(t) for t in decode_with(rec.model, params, images)]
    assert [r.text for r in rec.recognize(_queries(), writer_profile=profile)] == expected


def test_adaptation_takes_gradients_under_no_grad_and_inference_mode():
    rec = _recognizer()
    reference = rec.adapt(_samples())
    with torch.no_grad():
        quiet = rec.adapt(_samples())
    with torch.inference_mode():
        inferred = rec.adapt(_samples())
    for profile in (quiet, inferred):
        assert all(torch.equal(profile.deltas[k], d) for k, d in reference.deltas.items())


def test_adapt_refuses_bad_samples_naming_them(tmp_path):
    rec = _recognizer()
    with pytest.raises(ValueError, match="at least one labelled sample"):
        rec.adapt([])
    with pytest.raises(ValueError, match=r"sample 2: characters not in the model's vocabulary: '@' '%'"):
        rec.adapt([_samples()[0], (word_pixels("a@b"), "a@b%")])
    with pytest.raises(ValueError, match="sample 1: empty transcription"):
        rec.adapt([(word_pixels("x"), "  ")])
    with pytest.raises(ValueError, match=r"sample 1: expected an \(image, text\) pair"):
        rec.adapt([word_pixels("x")])
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("L", (40, 20), 255).save(blank)
    with pytest.raises(recognizers.InputError, match=r"sample 2 \(blank\.png\): .*blank\.png"):
        rec.adapt([_samples()[0], (blank, "the")])


# ---- model files with adaptation state --------------------------------------------------------------


def test_plain_model_file_keeps_its_finetuning_settings(tmp_path):
    rec = _recognizer(lr=0.25, steps=3)
    loaded = recognizers.load(save_bundle(tmp_path / "m.safetensors", rec.to_bundle()), device="cpu")
    assert isinstance(loaded.adapter, FinetuneAdapter)
    assert loaded.adapter.cfg == FinetuneConfig(lr=0.25, steps=3)
    assert loaded.weights_digest == rec.weights_digest
    profile = rec.adapt(_samples())
    assert [r.text for r in loaded.recognize(_queries(), writer_profile=profile)] == \
        [r.text for r in rec.recognize(_queries(), writer_profile=profile)]


def _save_checkpoint(module, path: Path) -> None:
    """What Lightning writes for ``module``: its state dict and its ``on_save_checkpoint`` metadata."""
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)


def _metahtr_checkpoint(path: Path):
    from training.metahtr_module import MetaHTRModule

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "MetaHTR from a randomly initialised model"
        module = MetaHTRModule(init={"size": "tiny", "chars": "".join(tiny_vocab().chars)},
                               metahtr={"initial_inner_lr": 0.05, "adapt": ["decoder"]})
    with torch.no_grad():  # meta-trained rates differ per tensor
        for k, log_lr in enumerate(module.meta.inner_lr.log_lr.values()):
            log_lr.add_(0.1 * k)
    _save_checkpoint(module, path)
    return module


def test_metahtr_export_keeps_alpha_and_g(tmp_path):
    module = _metahtr_checkpoint(tmp_path / "meta.ckpt")
    out = export_checkpoint(tmp_path / "meta.ckpt", tmp_path / "meta.safetensors")
    bundle = read_bundle(out)
    assert json.loads(bundle.extras["metahtr"])["adapt"] == ["decoder"]
    for name, value in module.meta.state_dict().items():  # α (log rates) and g_γ, exactly
        assert torch.equal(bundle.state_dict[f"meta.{name}"], value)
    rec = recognizers.load(out, device="cpu")
    assert isinstance(rec.adapter, MetaHTRAdapter)
    profile = rec.adapt(_samples())
    assert profile.method == "metahtr"
    assert set(profile.deltas) <= set(module.meta.adapted)
    images = [rec.load_input(x).pixels for x, _ in _samples()]
    support = WordBatch.from_words(images, list(SUPPORT), rec.vocab)
    fast = module.meta.adapt(module.model.eval(), support, create_graph=False)
    for name, delta in profile.deltas.items():
        torch.testing.assert_close(delta, (fast[name] - module.model.get_parameter(name)).detach())
    images = [rec.load_input(x).pixels for x in _queries()]
    expected = [rec.vocab.decode(t) for t in decode_with(rec.model, fast, images)]
    assert [r.text for r in rec.recognize(_queries(), writer_profile=profile)] == expected
    from_ckpt = recognizers.load(tmp_path / "meta.ckpt", device="cpu")  # the checkpoint itself loads too
    assert from_ckpt.weights_digest == rec.weights_digest


@pytest.mark.parametrize("codes", [
    {"source": "learned", "injection": "cond_bn", "code_size": 8, "bn_hidden": 8},
    {"source": "learned", "injection": "feature_mlp", "code_size": 8, "mlp_hidden": 8},
    {"source": "hinge", "injection": "cond_bn", "hinge_bins": 4, "bn_hidden": 8},  # 10 dimensions
])
def test_writer_code_export_keeps_the_adapter(tmp_path, codes):
    from training.writer_codes_module import WriterCodeModule

    module = WriterCodeModule(codes=codes, adaptation={"steps": 2, "lr": 0.1})
    module._build(tiny_model(), tiny_vocab(), ["000", "001"])
    with torch.no_grad():  # a trained adapter (the zero-initialised one reproduces the base exactly)
        for p in module.model.trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    _save_checkpoint(module, tmp_path / "codes.ckpt")
    bundle = read_bundle(export_checkpoint(tmp_path / "codes.ckpt", tmp_path / "codes.safetensors"))
    assert bundle.model == "handwriting"
    assert "codes.codes.weight" not in bundle.state_dict  # the training writers' codes are dropped
    rec = recognizers.load(tmp_path / "codes.safetensors", device="cpu")
    assert isinstance(rec.adapter, WriterCodeAdapter)
    assert (rec.adapter.adaptation.steps, rec.adapter.adaptation.lr) == (2, 0.1)  # the module's settings
    profile = rec.adapt(_samples(), steps=3)
    assert (profile.method, profile.code.numel()) == ("writer-code", rec.adapter.codes.code_size)
    assert (profile.info["adapter"]["injection"], profile.info["code_method"]) == (codes["injection"],
                                                                                   codes["source"])
    assert profile.info.get("steps", 3) == 3  # learned codes: the steps asked for; Hinge codes take none
    assert torch.equal(rec.adapt(_samples(), steps=3).code, profile.code)  # seeded start
    images = [rec.load_input(x).pixels for x in _queries()]
    expected = [rec.vocab.decode(h[0].tokens) for h in module.model.decode(images, profile.code)]
    assert [r.text for r in rec.recognize(_queries(), writer_profile=profile)] == expected
    plain = tiny_model().eval()
    assert [r.text for r in rec.recognize(_queries())] == \
        [r.text for r in HandwritingRecognizer(plain, tiny_vocab()).recognize(_queries())]


# ---- samples folders and uploads -------------------------------------------------------------------


def test_samples_from_a_labels_file_and_uploads(tmp_path):
    paths = write_words(tmp_path, {"a": "the", "b": "fox"})
    (tmp_path / "labels.tsv").write_text("b.png\tfox\n\na.png\t the \n", encoding="utf-8")
    assert read_samples(tmp_path) == [(paths["b"], "fox"), (paths["a"], "the")]
    (tmp_path / "labels.tsv").write_text("b.png fox\n", encoding="utf-8")
    with pytest.raises(SamplesError, match=r"labels\.tsv, line 1: expected 'file<TAB>text'"):
        read_samples(tmp_path)
    files = [(str(paths["a"]), "a.png"), (str(paths["b"]), "b.png")]
    assert pair_uploads(files, "the\nfox\n") == [(str(paths["a"]), "the"), (str(paths["b"]), "fox")]
    with pytest.raises(SamplesError, match="2 images but 1 transcription lines"):
        pair_uploads(files, "the")
    with pytest.raises(SamplesError, match=r"line 1 \(for a\.png\) is empty"):
        pair_uploads(files, " \nfox")
    table = tmp_path / "labels.tsv"
    table.write_text("a.png\tthe\nc.png\tdog\n", encoding="utf-8")
    with pytest.raises(SamplesError, match=r"not uploaded: c\.png; uploaded but not listed: b\.png"):
        pair_uploads([*files, (str(table), "labels.tsv")], "")


# ---- command line -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tiny_text_corpus) -> Path:
    """The tiny synthetic IAM-layout corpus of the session (tests/conftest.py)."""
    return tiny_text_corpus


@pytest.fixture(scope="module")
def bundle(corpus, tmp_path_factory) -> Path:
    """A tiny untrained model over the corpus's characters (plain base: it adapts by fine-tuning)."""
    from data.datasets.iam import read_iam
    from data.handwriting import CharVocabulary

    vocab = CharVocabulary.from_texts(w.text for w in read_iam(corpus).words.values())
    rec = HandwritingRecognizer(tiny_model(vocab=vocab), vocab)
    return save_bundle(tmp_path_factory.mktemp("adapt-model") / "handwriting.safetensors", rec.to_bundle())


def _writer_words(corpus: Path, writer: str, count: int) -> list[Path]:
    from data.datasets.iam import read_iam, select_samples

    samples = select_samples(read_iam(corpus), "words", min_words=0)
    return [s.image for s in samples if s.writer == writer][:count]


def test_cli_adapt_then_transcribe_and_evaluate_with_the_profile(corpus, bundle, tmp_path, capsys):
    profile = tmp_path / "p000.safetensors"
    common = ["--model", str(bundle), "--device", "cpu"]
    assert main(["adapt", "--samples", str(corpus), "--writer", "000", "--limit", "8", "--out", str(profile),
                 *common]) == 0
    assert "(finetune, 8 samples" in capsys.readouterr().err
    assert WriterProfile.load(profile).num_support == 8
    words = _writer_words(corpus, "001", 3)
    assert main(["transcribe", *map(str, words), "--task", "text", "--writer-profile", str(profile), "-q",
                 *common]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = recognizers.load(bundle, device="cpu").recognize(words, writer_profile=profile)
    assert [r["text"] for r in records] == [r.text for r in expected]
    assert main(["evaluate", "--task", "text", "--data", str(corpus), "--writer-profile", str(profile),
                 "--limit", "6", *common]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["n"], report["writer_profile"]["method"]) == (6, "finetune")

    other = save_bundle(tmp_path / "other.safetensors", HandwritingRecognizer(
        tiny_model(seed=1, vocab=recognizers.load(bundle).vocab), recognizers.load(bundle).vocab).to_bundle())
    assert main(["transcribe", str(words[0]), "--task", "text", "--model", str(other), "--writer-profile",
                 str(profile), "-q"]) == 2
    assert "other base weights" in capsys.readouterr().err
    assert main(["transcribe", str(words[0]), "--task", "math", "--writer-profile", str(profile)]) == 2
    assert "--writer-profile is for handwriting" in capsys.readouterr().err
    assert main(["adapt", "--samples", str(corpus), "--out", str(tmp_path / "x.safetensors"), *common]) == 2
    assert "--writer ID" in capsys.readouterr().err
    assert main(["evaluate", "--task", "speech", "--data", str(corpus), "--adaptation-protocol"]) == 2


def test_cli_adapt_reads_a_labels_file(bundle, tmp_path, capsys):
    vocab = recognizers.load(bundle).vocab
    texts = [t for t in ("the", "fox", "over", "lazy") if not vocab.unknown(t)][:3]
    write_words(tmp_path / "mine", {f"w{k}": t for k, t in enumerate(texts)})
    (tmp_path / "mine" / "labels.tsv").write_text("".join(f"w{k}.png\t{t}\n" for k, t in enumerate(texts)))
    out = tmp_path / "mine.safetensors"
    assert main(["adapt", "--samples", str(tmp_path / "mine"), "--out", str(out), "--steps", "2",
                 "--model", str(bundle), "--device", "cpu"]) == 0
    profile = WriterProfile.load(out)
    assert (profile.num_support, profile.info["steps"]) == (len(texts), 2)
    (tmp_path / "mine" / "labels.tsv").write_text("w0.png\tthe\nmissing.png\tfox\n")
    assert main(["adapt", "--samples", str(tmp_path / "mine"), "--out", str(out), "--model",
                 str(bundle)]) == 2
    assert "missing.png" in capsys.readouterr().err


def _scores(rows: list[dict]) -> list[dict]:
    """A protocol table without its timings and memory (which vary run to run) and model paths."""
    return [{k: v for k, v in row.items() if not k.startswith("adapt_") and k != "model"} for row in rows]


def test_adaptation_protocol_reports_both_rows_and_the_split_digest(corpus, bundle, capsys):
    from data.datasets.iam import IAMDataset
    from data.episodes import evaluation_splits, split_digest

    args = ["evaluate", "--task", "text", "--data", str(corpus), "--model", str(bundle), "--device", "cpu",
            "--adaptation-protocol", "--writers", "1", "--permutations", "2", "--limit", "6"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert [row["row"] for row in report["rows"]] == ["base model, no adaptation",
                                                      "base model, classifier fine-tuned"]
    assert all(0 <= row["wer"] <= 1 and row["cer"] >= 0 for row in report["rows"])
    assert (report["writers"], report["splits"], report["shots"], report["n"]) == (1, 2, 16, 12)
    assert report["split_digest"] in err
    test = IAMDataset(corpus, split="test", split_files={"test": corpus / "splits/aachen/test.uttlist"},
                      min_words=32)
    splits = evaluation_splits(test.ids, test.writers, num_permutations=2)
    first = [s for s in splits if s.writer == min(s.writer for s in splits)]
    assert report["split_digest"] == split_digest(first, test.ids)
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["split_digest"] == report["split_digest"]
    assert _scores(again["rows"]) == _scores(report["rows"])


def _protocol_models(vocab, folder: Path) -> list[Path]:
    """A MetaHTR and a writer-code model file over ``vocab`` (untrained: the protocol's plumbing only)."""
    from training.metahtr_module import MetaHTRModule
    from training.writer_codes_module import WriterCodeModule

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "MetaHTR from a randomly initialised model"
        meta = MetaHTRModule(init={"size": "tiny", "chars": "".join(vocab.chars)},
                             metahtr={"initial_inner_lr": 0.05, "adapt": ["decoder"]})
    codes = WriterCodeModule(codes={"source": "learned", "injection": "cond_bn", "code_size": 8,
                                    "bn_hidden": 8}, adaptation={"steps": 1, "lr": 0.1})
    codes._build(tiny_model(vocab=vocab), vocab, ["000", "001"])
    files = []
    for name, module in (("meta", meta), ("codes", codes)):
        _save_checkpoint(module, folder / f"{name}.ckpt")
        files.append(export_checkpoint(folder / f"{name}.ckpt", folder / f"{name}.safetensors"))
    return files


def test_adaptation_protocol_compares_model_files_on_the_same_words(corpus, bundle, tmp_path, capsys):
    meta, codes = _protocol_models(recognizers.load(bundle).vocab, tmp_path)
    common = ["evaluate", "--task", "text", "--data", str(corpus), "--device", "cpu", "--adaptation-protocol",
              "--writers", "1", "--permutations", "2", "--limit", "4", "--steps", "1"]
    assert main([*common, "--model", str(bundle), "--compare", str(meta), str(codes)]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert [row["row"] for row in report["rows"]] == [
        "base model, no adaptation", "base model, classifier fine-tuned", "meta-trained, not adapted",
        "MetaHTR adapted", "writer-code model, no code", "writer codes adapted"]
    assert [row["method"] for row in report["rows"][1::2]] == ["finetune", "metahtr", "writer-code"]
    assert report["models"] == [str(bundle), str(meta), str(codes)]
    assert report["n"] == 8
    for row in report["rows"][1::2]:
        assert 0 < row["adapt_seconds_mean"] <= row["adapt_seconds_max"]
        assert row["adapt_peak_mib"] is None or row["adapt_peak_mib"] >= 0
    assert all("adapt_seconds_mean" not in row for row in report["rows"][::2])
    table = [line for line in err.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 6
    assert "| MetaHTR adapted | meta.safetensors |" in table[5]
    assert main([*common, "--model", str(meta)]) == 0  # a model's rows do not depend on the others
    assert _scores(json.loads(capsys.readouterr().out)["rows"]) == _scores(report["rows"][2:4])
    assert main([*common[:7], "--model", str(bundle), "--compare", str(meta)]) == 2
    assert "--compare is for --adaptation-protocol" in capsys.readouterr().err


def test_adapt_help_does_not_import_torch_or_lightning():
    code = ("import sys\nfrom recognizers.cli import main\n"
            "try:\n    main(['adapt', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "labels.tsv" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"
