"""The web app through its API (issue #6): each tab's endpoint answers like the recognizer itself, bad
input gets a message naming the file and the app keeps serving, limits hold, and tabs follow the
registry. A real app is launched on 127.0.0.1 with tiny models (platform.md §9)."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_module

os.environ.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")

require_module("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402

import app  # noqa: E402  (after the environment defaults)
import recognizers  # noqa: E402
from tests.app_fixtures import build_app_models, serving, write_app_inputs  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_app_models(tmp_path_factory.mktemp("app-models"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    files = write_app_inputs(tmp_path_factory.mktemp("app-inputs"))
    files["long"] = files["top"].parent / "long.wav"
    with wave.open(str(files["long"]), "wb") as out:  # 3 s of noise: over a 2 s limit
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((np.random.default_rng(0).normal(0, 3000, 48000)).astype(np.int16).tobytes())
    return files


@pytest.fixture(scope="module")
def client(models):
    limits = app.Limits(max_file_size="1mb", max_audio_seconds=2.0, max_image_pixels=200_000)
    with serving(models, limits) as (_, url):
        yield Client(url, verbose=False)


def test_endpoints_are_the_three_tabs(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert names == {"/math", "/math_sketch", "/text", "/adapt", "/speech"}


def test_math_endpoint_answers_like_the_recognizer(client, models, inputs):
    expected = recognizers.load(models["math"]).recognize([inputs["a"]], beam_size=2, nbest=2)[0]
    latex, rendered, table, gallery = client.predict(handle_file(str(inputs["a"])), 2, 2, True,
                                                     api_name="/math")
    assert latex == expected.text
    assert rendered == f"$${expected.text}$$"
    assert [row[1] for row in table["data"]] == [t for t, _ in expected.nbest]
    assert [row[2] for row in table["data"]] == pytest.approx([s for _, s in expected.nbest], abs=1e-3)
    assert [item["caption"] for item in gallery] == expected.text.split()  # one attention map per symbol


def test_sketch_endpoint_reads_the_composite(client, inputs):
    sketch = {"background": None, "layers": [], "composite": handle_file(str(inputs["a"]))}
    from_sketch = client.predict(sketch, 2, 2, False, api_name="/math_sketch")
    from_upload = client.predict(handle_file(str(inputs["a"])), 2, 2, False, api_name="/math")
    assert from_sketch[0] == from_upload[0]
    assert from_sketch[3] == []
    with pytest.raises(Exception, match="No image"):
        client.predict({"background": None, "layers": [], "composite": None}, 2, 2, False,
                       api_name="/math_sketch")


def test_text_endpoint_answers_like_the_recognizer(client, models, inputs):
    expected = recognizers.load(models["text"]).recognize([inputs["word"]], beam_size=2, nbest=2)[0]
    text, table = client.predict(handle_file(str(inputs["word"])), 2, 2, api_name="/text")
    assert text == expected.text
    assert [row[1] for row in table["data"]] == [t for t, _ in expected.nbest]
    with pytest.raises(Exception, match=r"random-bytes\.png: not a readable image"):
        client.predict(handle_file(str(inputs["bad_png"])), 1, 1, api_name="/text")


def test_text_endpoint_reads_a_line_word_by_word(client, models, tmp_path):
    from PIL import Image

    from tests.handwriting_fixtures import line_pixels

    line = tmp_path / "line.png"
    Image.fromarray(line_pixels("the", "fox", "over")).save(line)
    expected = recognizers.load(models["text"]).recognize([line], lines=True)[0]
    text, table = client.predict(handle_file(str(line)), 1, 1, False, None, True, api_name="/text")
    assert text == expected.text
    assert [row[1] for row in table["data"]] == [expected.text]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Three word images of the tiny handwriting vocabulary, in upload order."""
    from tests.handwriting_fixtures import write_words

    words = write_words(tmp_path_factory.mktemp("my-hand"), {"s1": "the", "s2": "quick", "s3": "fox"})
    return list(words.values())


def test_adapt_endpoint_returns_a_profile_that_reading_uses(client, models, inputs, samples):
    from recognizers.handwriting.profile import WriterProfile

    profile, status = client.predict([handle_file(str(p)) for p in samples], "the\nquick\nfox\n",
                                     api_name="/adapt")
    assert Path(profile).suffix == ".safetensors"
    assert "finetune on 3 samples" in status
    assert "kB" in status
    assert WriterProfile.load(profile).num_support == 3
    rec = recognizers.load(models["text"])
    expected = rec.recognize([inputs["word"]], beam_size=2, nbest=2, writer_profile=profile)[0]
    text, table = client.predict(handle_file(str(inputs["word"])), 2, 2, True, handle_file(profile),
                                 api_name="/text")
    assert text == expected.text
    assert [row[1] for row in table["data"]] == [t for t, _ in expected.nbest]
    unticked = client.predict(handle_file(str(inputs["word"])), 2, 2, False, handle_file(profile),
                              api_name="/text")
    assert unticked[0] == rec.recognize([inputs["word"]], beam_size=2, nbest=2)[0].text
    with pytest.raises(Exception, match="No writer profile"):
        client.predict(handle_file(str(inputs["word"])), 1, 1, True, None, api_name="/text")


@pytest.mark.parametrize(("lines", "message"), [
    ("the\nquick", r"3 images but 2 transcription lines"),
    ("the\n \nfox", r"line 2 \(for s2\.png\) is empty"),
    ("the\nqu@ck\nfox", r"sample 2 \(s2\.png\): characters not in the model's vocabulary: '@'"),
])
def test_adapt_endpoint_names_the_problem(client, samples, inputs, lines, message):
    with pytest.raises(Exception, match=message):
        client.predict([handle_file(str(p)) for p in samples], lines, api_name="/adapt")
    with pytest.raises(Exception, match=r"random-bytes\.png: not a readable image"):
        client.predict([handle_file(str(inputs["bad_png"]))], "the", api_name="/adapt")


def test_adapt_endpoint_reads_a_labels_file(client, samples, tmp_path):
    labels = tmp_path / "labels.tsv"
    labels.write_text("s3.png\tfox\ns1.png\tthe\ns2.png\tquick\n", encoding="utf-8")
    files = [handle_file(str(p)) for p in (*samples, labels)]
    _, status = client.predict(files, "", api_name="/adapt")
    assert "3 samples" in status
    labels.write_text("s3.png\tfox\ns1.png\tthe\n", encoding="utf-8")
    with pytest.raises(Exception, match=r"uploaded but not listed: s2\.png"):
        client.predict([handle_file(str(p)) for p in (*samples, labels)], "", api_name="/adapt")


def test_speech_endpoint_answers_like_the_recognizer(client, models, inputs):
    expected = recognizers.load(models["speech"]).recognize([inputs["top"]], beam_size=2, nbest=2)[0]
    text, words, table = client.predict(handle_file(str(inputs["top"])), 2, 2, api_name="/speech")
    assert text == expected.text
    assert [row[0] for row in words["data"]] == [w.text for w in expected.words]
    assert [row[1] for row in table["data"]] == [t for t, _ in expected.nbest]


@pytest.mark.parametrize(("key", "api", "message"), [
    ("corrupt", "/speech", r"corrupt\.flac: not a readable audio file"),
    ("empty", "/speech", r"empty\.wav: empty audio"),
    ("silent", "/speech", r"silent\.flac: audio is silent"),
    ("long", "/speech", r"long\.wav: 3 s of audio is over the app's limit of 2 s"),
    ("a", "/speech", r"a\.png: not a readable audio file"),
    ("bad_png", "/math", r"random-bytes\.png: not a readable image"),
    ("top", "/math", r"top\.flac: not a readable image"),
])
def test_bad_input_gets_a_message_naming_the_file(client, inputs, key, api, message):
    args = (2, 2, False) if api == "/math" else (2, 2)
    with pytest.raises(Exception, match=message) as caught:
        client.predict(handle_file(str(inputs[key])), *args, api_name=api)
    assert "/tmp/gradio" not in str(caught.value)  # server paths stay private
    text, _, _ = client.predict(handle_file(str(inputs["top"])), 1, 1, api_name="/speech")  # still serving
    assert isinstance(text, str)


def test_image_over_the_pixel_limit_is_refused_from_its_header(client, tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("L", (1000, 400), 255).save(big)  # 400,000 pixels > 200,000
    with pytest.raises(Exception, match=r"big\.png: 1000x400 pixels is over the limit of 200,000"):
        client.predict(handle_file(str(big)), 2, 2, False, api_name="/math")


def test_upload_over_the_size_limit_is_refused(client, tmp_path):
    huge = tmp_path / "huge.wav"
    huge.write_bytes(os.urandom(2 * 1024 * 1024))  # 2 MB > max_file_size 1mb
    with pytest.raises(Exception, match=r"413|too large|exceeds|File size"):
        client.predict(handle_file(str(huge)), 2, 2, api_name="/speech")


def test_tabs_follow_the_registry(models, monkeypatch, tmp_path):
    monkeypatch.setenv("RECOGNIZERS_WEIGHTS_DIR", str(tmp_path))  # nothing there: nothing bundled found
    monkeypatch.setattr(app, "weights_path", lambda spec: tmp_path / spec.weights)
    assert app.default_models() == {}
    (tmp_path / "samba_asr.safetensors").write_bytes(Path(models["speech"]).read_bytes())
    assert app.default_models() == {"speech": "samba-asr"}
    demo = app.build_demo()
    names = {dep.api_name for dep in demo.fns.values() if dep.api_name}
    assert "speech" in names
    assert not names & {"math", "math_sketch"}  # no math model: its tab only says so


def test_a_model_that_cannot_load_is_a_message_not_a_crash(tmp_path, inputs):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    handler = app._speech_handler(str(broken), app.Limits())
    with pytest.raises(app.gr.Error, match=r"broken\.safetensors"):
        handler({"path": str(inputs["top"])}, 1, 1)


def test_command_line_defaults():
    args = app.parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    args = app.parse_args(["--host", "0.0.0.0", "--port", "8080", "--speech-model", "m.safetensors"])
    assert (args.host, args.port, args.speech_model) == ("0.0.0.0", 8080, "m.safetensors")


def test_each_tab_offers_only_its_own_examples():
    formulas = app.examples("formula-", (".png",))
    assert formulas
    assert all(Path(f).name.startswith("formula-") and Path(f).is_file() for f in formulas)
    speech = app.examples("speech-", (".flac", ".wav"))
    assert [Path(f).name for f in speech] == ["speech-quality-rather-than-quantity.flac"]
    words = app.examples("handwriting-", (".png",))
    assert not set(words) & set(formulas)
    assert all(Path(f).name.startswith("handwriting-") for f in words)


def test_attention_overlays_draw_each_symbol():
    from recognizers.posformer.recognizer import AttentionView

    maps = np.zeros((2, 8, 10), dtype=np.float32)
    maps[0, :, :5] = 1.0
    maps[1, :, 5:] = 1.0
    view = AttentionView("x 1", ("x", "1"), np.full((8, 10), 255, np.uint8), maps)
    pictures = app.attention_overlays(view, limit=5)
    assert [caption for _, caption in pictures] == ["x", "1"]
    first = np.asarray(pictures[0][0])
    assert first.shape == (8, 10, 3)
    assert first[0, 0, 0] > first[0, 0, 1]
    assert first[0, 9, 0] == first[0, 9, 1]
    assert len(app.attention_overlays(view, limit=1)) == 1
