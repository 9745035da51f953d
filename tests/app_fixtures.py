"""Tiny models, inputs and a launched server for the web-app tests (test_app*.py).

The models are untrained: the PosFormer gets output biases so that it answers a short, non-empty
formula ("1 1 1" or so) in well under a second, and the tiny Samba-ASR answers input-dependent gibberish.
Tests compare the app's answers with the recognizer's own answers for the same input, never with a
fixed text.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# Before gradio (or gradio_client) is imported anywhere: no analytics, no Hub lookups (platform.md §8).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Short, non-empty best hypotheses from the untrained PosFormer (the "+" token makes them run to the cap).
MATH_BIAS: dict[str, Any] = {"stop_bias": 3.0, "token_bias": dict.fromkeys(("x", "1", "y"), 3.0)}
FORMULAS = {"a": "x+1", "b": "y=2", "c": "a^2+b"}
# The UI's default options (app.py sliders), for computing what the browser should show.
MATH_UI_OPTIONS = {"beam_size": 10, "nbest": 5}
SPEECH_UI_OPTIONS = {"beam_size": 4, "nbest": 3}


def build_app_models(folder: Path) -> dict[str, str]:
    """A tiny bundle per task under ``folder``: ``{"math": path, "text": path, "speech": path}`` (what
    ``app.build_demo(models)`` takes)."""
    from recognizers.checkpoint import save_bundle
    from recognizers.handwriting.recognizer import HandwritingRecognizer
    from recognizers.posformer.recognizer import PosFormerRecognizer
    from tests.handwriting_fixtures import tiny_model, tiny_vocab
    from tests.math_fixtures import tiny_posformer
    from tests.speech_fixtures import build_tiny_asr

    folder.mkdir(parents=True, exist_ok=True)
    speech = build_tiny_asr(folder).path
    math = save_bundle(folder / "posformer.safetensors",
                       PosFormerRecognizer(tiny_posformer(**MATH_BIAS)).to_bundle())
    text = save_bundle(folder / "handwriting.safetensors",
                       HandwritingRecognizer(tiny_model(), tiny_vocab()).to_bundle())
    return {"math": str(math), "text": str(text), "speech": str(speech)}


def write_app_inputs(folder: Path) -> dict[str, Path]:
    """Inputs for the app: formula images ``a``, ``b``, ``c`` (``FORMULAS``); a word image ``word``; the
    audio of ``tests.speech_fixtures.write_audio_tree`` (``top``, ``ax``, ``bx``, ``by``, ``corrupt``,
    ``empty``, ``silent``); ``bad_png`` (random bytes named ``.png``)."""
    from tests.handwriting_fixtures import write_words
    from tests.math_fixtures import write_formulas
    from tests.speech_fixtures import write_audio_tree

    files = dict(write_formulas(folder / "formulas", FORMULAS))
    files.update(write_words(folder / "words", {"word": "quick"}))
    files.update(write_audio_tree(folder / "audio"))
    files.pop("image")  # the audio tree's fake PNG: bad_png is the one for the math tab
    files["bad_png"] = folder / "random-bytes.png"
    files["bad_png"].write_bytes(np.random.default_rng(7).integers(0, 256, 600, dtype=np.uint8).tobytes())
    return files


@contextlib.contextmanager
def serving(models: dict[str, str], limits: Any = None) -> Iterator[tuple[Any, str]]:
    """``app.build_demo(models, limits)`` launched on 127.0.0.1 (first free port) in this process;
    yields ``(demo, url)`` and closes the server afterwards."""
    import app

    demo = app.build_demo(models, limits)
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, ssr_mode=False,
                            max_file_size=(limits or app.Limits()).max_file_size)
    try:
        yield demo, url
    finally:
        demo.close()


def direct_result(model: str, path: Path, *, beam_size: int, nbest: int):
    """What the app's shared recognizer answers for ``path`` when called directly (``Result``)."""
    import app

    return app.get_recognizer(model).recognize([str(path)], beam_size=beam_size, nbest=nbest)[0]
