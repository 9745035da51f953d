"""The recognizers web app (Gradio): upload, draw or record, and read the result.

    make app                                 # sets everything up, serves http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 8080 --math-model my.safetensors

UI only (architecture.md rule 7): every tab calls the same batched ``Recognizer.recognize`` as the
command line, through a cache that loads each model once and shares it between requests. Tabs come
from the registry: one per task, with the first registered model of that task whose weights are
present (or the model named on the command line). Requests queue (``--queue-size``) and each model
runs one request at a time, so a burst waits in line instead of thrashing two CPU cores. Bad input
(wrong type, corrupt, empty, too large, too long) gets a message naming the problem and the app
keeps serving. Fully offline: no CDN, analytics or Hub lookups.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

# Before gradio is imported: no analytics, no Hub lookups, no update checks (platform.md §8, §11).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import gradio as gr
import numpy as np
import soundfile as sf
from PIL import Image

import recognizers
from recognizers import InputError
from recognizers.registry import REGISTRY, TASKS, weights_path
from recognizers.samples import pair_uploads

log = logging.getLogger("recognizers.app")

LATEX_DELIMITERS = [{"left": "$$", "right": "$$", "display": True},
                    {"left": "$", "right": "$", "display": False}]
TASK_TITLES = {"math": "Math", "text": "Handwriting", "speech": "Speech"}


@dataclass(frozen=True)
class Limits:
    """What one request may send (the upload size itself is capped by ``launch(max_file_size=...)``)."""

    max_file_size: str = "10mb"  # per upload; larger ones get HTTP 413 before reaching a handler
    max_audio_seconds: float = 300.0  # the app answers interactively; the CLI takes up to 30 minutes
    max_image_pixels: int = 25_000_000  # checked from the header, before decoding
    queue_size: int = 16  # waiting requests; more get "queue full" instead of an unbounded wait
    max_tokens_shown: int = 60  # attention maps drawn per formula
    max_adapt_samples: int = 32  # images per "My handwriting" adaptation (16 are the protocol's K)


def default_models() -> dict[str, str]:
    """Per task, the first registered model whose weights are present (a task without one is absent)."""
    models: dict[str, str] = {}
    for name, spec in REGISTRY.items():
        if spec.task not in models and weights_path(spec).is_file():
            models[spec.task] = name
    return models


_load_lock = threading.Lock()


@functools.cache
def _cached_recognizer(model: str) -> recognizers.Recognizer:
    return recognizers.load(model)


def get_recognizer(model: str) -> recognizers.Recognizer:
    """The shared recognizer of a model name or file, loaded on first use (one load even when
    concurrent first requests arrive)."""
    with _load_lock:
        return _cached_recognizer(model)


def _upload_path(payload: Any) -> str | None:
    """The server-side path of an upload. Events run with ``preprocess=False`` so that a corrupt file
    reaches our checks (and gets our message) instead of failing in Gradio's own decoding."""
    if payload is None or isinstance(payload, str):
        return payload
    if isinstance(payload, dict):
        return payload.get("path")
    return getattr(payload, "path", None)


def _public(message: str) -> str:
    """A message without the server's upload folders: users know their file by its name."""
    cache = os.environ.get("GRADIO_TEMP_DIR") or os.path.join(tempfile.gettempdir(), "gradio")
    return re.sub(re.escape(cache.rstrip("/")) + r"/[^/\s]+/", "", message)


def examples(prefix: str, suffixes: tuple[str, ...]) -> list[str]:
    """The example inputs of one tab shipped with the package (``formula-*``, ``handwriting-*``,
    ``speech-*``; made by this project's synthetic generators: held-out handwriting fonts and TTS voices),
    as absolute paths."""
    folder = resources.files("recognizers") / "examples"
    if not folder.is_dir():
        return []
    return sorted(str(folder / item.name) for item in folder.iterdir()
                  if item.name.startswith(prefix) and item.name.endswith(suffixes))


def _examples(component: gr.components.Component, prefix: str, suffixes: tuple[str, ...]) -> None:
    found = examples(prefix, suffixes)
    if found:
        gr.Examples(found, inputs=component, label="Examples")


def _guarded(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into a message in the UI (``gr.Error``); never let one request crash the app."""

    @functools.wraps(handler)
    def run(*args: Any) -> Any:
        try:
            return handler(*args)
        except gr.Error:
            raise
        except (InputError, ValueError, OSError) as exc:  # bad input or a model file that cannot load
            raise gr.Error(_public(str(exc))) from exc
        except Exception as exc:
            log.exception("request failed in %s", handler.__name__)
            raise gr.Error(f"Internal error ({type(exc).__name__}); the input was not recognised.") from exc

    return run


def _check_image(path: str | None, limits: Limits) -> str:
    """A readable image within the pixel limit, by its header (no decoding of huge files)."""
    if not path:
        raise gr.Error("No image: upload, paste or draw a formula first.")
    name = os.path.basename(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, Image.DecompressionBombError) as exc:
        raise gr.Error(_public(f"{name}: not a readable image ({exc})")) from exc
    if width * height > limits.max_image_pixels:
        raise gr.Error(f"{name}: {width}x{height} pixels is over the limit of {limits.max_image_pixels:,}")
    return path


def _check_audio(path: str | None, limits: Limits) -> str:
    """A decodable audio file no longer than the app's limit (read from the header)."""
    if not path:
        raise gr.Error("No audio: upload a file or record from the microphone first.")
    name = os.path.basename(path)
    if os.path.getsize(path) == 0:
        raise gr.Error(f"{name}: the file is empty")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise gr.Error(_public(f"{name}: not a readable audio file ({exc})")) from exc
    if info.duration > limits.max_audio_seconds:
        raise gr.Error(f"{name}: {info.duration:.0f} s of audio is over the app's limit of "
                       f"{limits.max_audio_seconds:.0f} s (use `recognizers transcribe` for long files)")
    return path


def _model_label(model: str) -> str:
    """A registry name as is, a model file by its name only (server paths stay private)."""
    return os.path.basename(model)


def _nbest_rows(result: recognizers.Result) -> list[list[Any]]:
    return [[k + 1, text, round(score, 4)] for k, (text, score) in enumerate(result.nbest)]


def attention_overlays(view: Any, limit: int) -> list[tuple[Image.Image, str]]:
    """One picture per symbol: the formula in grey with the symbol's attention in red.

    Args:
        view: a ``recognizers.posformer.AttentionView`` (image `(H, W)` uint8, maps `(L, H, W)` in [0, 1]).
        limit: most symbols drawn.
    """
    base = view.image.astype(np.float32)[None] * 0.6 + 100  # (1, H, W): ink stays visible under the heat
    overlays = []
    for token, heat in zip(view.tokens[:limit], view.maps[:limit], strict=False):
        rgb = np.repeat(base, 3, axis=0)  # (3, H, W)
        rgb[0] += heat * 255
        rgb[1] -= heat * 80
        rgb[2] -= heat * 80
        picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8).transpose(1, 2, 0))
        overlays.append((picture, token))
    return overlays


def _sketch_path(sketch: dict | None) -> str | None:
    """The sketchpad's composite (white background, black strokes; platform.md §8) as a file path."""
    if not isinstance(sketch, dict):
        return None
    return _upload_path(sketch.get("composite"))


def _math_handler(model: str, limits: Limits) -> Callable[..., Any]:
    @_guarded
    def recognize_formula(upload: Any, beam_size: float, nbest: float, show_attention: bool):
        path = _check_image(_upload_path(upload), limits)
        recognizer = get_recognizer(model)
        result = recognizer.recognize([path], beam_size=int(beam_size), nbest=int(nbest))[0]
        if not result.text:
            raise gr.Error("No formula found in the image")
        gallery: list = []
        if show_attention and hasattr(recognizer, "attention_view"):
            view = recognizer.attention_view(path, result.text)
            gallery = attention_overlays(view, limits.max_tokens_shown)
        return result.text, f"$${result.text}$$", _nbest_rows(result), gallery

    return recognize_formula


def _math_tab(model: str, limits: Limits) -> None:
    handler = _math_handler(model, limits)
    gr.Markdown(f"Handwritten or printed formula → LaTeX with **{_model_label(model)}**. Upload or paste "
                "a photo, scan or screenshot (dark mode works), or draw with the mouse.")
    with gr.Row():
        with gr.Column():
            with gr.Tab("Upload"):
                image = gr.Image(type="filepath", format="png", sources=["upload", "clipboard"],
                                 label="Formula image", image_mode="L")
                upload_button = gr.Button("Recognize", variant="primary")
                _examples(image, "formula-", (".png",))
            with gr.Tab("Draw"):
                sketch = gr.Sketchpad(type="filepath", format="png", label="Draw a formula",
                                      brush=gr.Brush(default_size=4, colors=["#000000"], color_mode="fixed"),
                                      canvas_size=(800, 300), image_mode="RGB", layers=False)
                sketch_button = gr.Button("Recognize drawing", variant="primary")
            with gr.Accordion("Options", open=False):
                beam = gr.Slider(1, 16, value=10, step=1, label="Beam size (each direction)")
                nbest = gr.Slider(1, 10, value=5, step=1, label="Hypotheses listed")
                attention = gr.Checkbox(value=True, label="Show where each symbol looked (attention)")
        with gr.Column():
            latex = gr.Code(language="latex", label="LaTeX", interactive=False)
            rendered = gr.Markdown(latex_delimiters=LATEX_DELIMITERS, label="Rendered",
                                   elem_id="math-rendered")
            table = gr.Dataframe(headers=["rank", "LaTeX", "score"], label="N-best", interactive=False)
            gallery = gr.Gallery(label="Attention per symbol", columns=4, height="auto", object_fit="contain")
    outputs = [latex, rendered, table, gallery]
    options = [beam, nbest, attention]
    upload_button.click(handler, [image, *options], outputs, api_name="math", concurrency_id=model,
                        preprocess=False)
    sketch_button.click(lambda s, *o: handler(_sketch_path(s), *o), [sketch, *options], outputs,
                        api_name="math_sketch", concurrency_id=model, preprocess=False)


def _speech_handler(model: str, limits: Limits) -> Callable[..., Any]:
    @_guarded
    def transcribe_audio(upload: Any, beam_size: float, nbest: float):
        path = _check_audio(_upload_path(upload), limits)
        result = get_recognizer(model).recognize([path], beam_size=int(beam_size), nbest=int(nbest))[0]
        words = [[w.text, round(w.start, 2), round(w.end, 2)] for w in result.words]
        return result.text, words, _nbest_rows(result)

    return transcribe_audio


def _speech_tab(model: str, limits: Limits) -> None:
    handler = _speech_handler(model, limits)
    gr.Markdown(f"Speech → text with **{_model_label(model)}** (Mamba encoder and decoder). Upload WAV, "
                f"FLAC, OGG or MP3, or record; up to {limits.max_audio_seconds:.0f} s.")
    with gr.Row():
        with gr.Column():
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio")
            button = gr.Button("Transcribe", variant="primary")
            _examples(audio, "speech-", (".flac", ".wav"))
            with gr.Accordion("Options", open=False):
                beam = gr.Slider(1, 8, value=4, step=1, label="Beam size (1 = greedy)")
                nbest = gr.Slider(1, 8, value=3, step=1, label="Hypotheses listed")
        with gr.Column():
            text = gr.Textbox(label="Transcript", lines=3, buttons=["copy"], elem_id="speech-text")
            words = gr.Dataframe(headers=["word", "start (s)", "end (s)"], label="Word timestamps",
                                 interactive=False)
            table = gr.Dataframe(headers=["rank", "text", "score"], label="N-best", interactive=False)
    button.click(handler, [audio, beam, nbest], [text, words, table], api_name="speech", concurrency_id=model,
                 preprocess=False)


def _text_handler(model: str, limits: Limits) -> Callable[..., Any]:
    @_guarded
    def read_handwriting(upload: Any, beam_size: float, nbest: float, use_profile: bool = False,
                         profile: Any = None, line: bool = False):
        path = _check_image(_upload_path(upload), limits)
        options: dict[str, Any] = {"beam_size": int(beam_size), "nbest": int(nbest), "lines": bool(line)}
        if use_profile:
            options["writer_profile"] = _upload_path(profile)
            if not options["writer_profile"]:
                raise gr.Error("No writer profile: adapt to your handwriting in the \"My handwriting\" tab, "
                               "or upload a profile there, first.")
        result = get_recognizer(model).recognize([path], **options)[0]
        return result.text, _nbest_rows(result)

    return read_handwriting


def _upload_files(payload: Any) -> list[tuple[str, str]]:
    """``(server path, original file name)`` of each file of a multiple-file upload, in upload order."""
    files = []
    for item in payload or []:
        path = _upload_path(item)
        if path:
            name = item.get("orig_name") if isinstance(item, dict) else getattr(item, "orig_name", None)
            files.append((path, name or os.path.basename(path)))
    return files


def _adapt_handler(model: str, limits: Limits) -> Callable[..., Any]:
    @_guarded
    def adapt_to_writer(uploads: Any, transcriptions: str | None):
        files = _upload_files(uploads)
        if len(files) > limits.max_adapt_samples + 1:  # + a labels.tsv
            raise gr.Error(f"{len(files)} files is over the limit of {limits.max_adapt_samples} images")
        samples = pair_uploads(files, transcriptions)  # SamplesError (a ValueError) names the problem
        for path, _ in samples:
            _check_image(path, limits)
        out = os.path.join(tempfile.mkdtemp(prefix="recognizers-profile-"), "writer-profile.safetensors")
        profile = get_recognizer(model).adapt(samples).save(out)
        size = os.path.getsize(out) / 1e3
        return out, (f"Adapted with {profile.method} on {profile.num_support} samples: a {size:.1f} kB "
                     "profile. Tick \"Use my handwriting\" to read with it.")

    return adapt_to_writer


def _text_tab(model: str, limits: Limits) -> None:
    handler = _text_handler(model, limits)
    gr.Markdown(f"Handwritten word or line → text with **{_model_label(model)}**. Upload a photo or scan "
                "(dark ink on light paper, or the reverse).")
    with gr.Tab("Read"), gr.Row():
        with gr.Column():
            image = gr.Image(type="filepath", format="png", sources=["upload", "clipboard"],
                             label="Handwriting image", image_mode="L")
            line = gr.Checkbox(value=False, label="A line of several words (read word by word)")
            use_profile = gr.Checkbox(value=False, label="Use my handwriting (the writer profile of the "
                                      "\"My handwriting\" tab)")
            button = gr.Button("Read", variant="primary")
            _examples(image, "handwriting-", (".png",))
            with gr.Accordion("Options", open=False):
                beam = gr.Slider(1, 8, value=1, step=1, label="Beam size (1 = greedy)")
                nbest = gr.Slider(1, 8, value=3, step=1, label="Hypotheses listed")
        with gr.Column():
            text = gr.Textbox(label="Text", lines=2, buttons=["copy"], elem_id="text-result")
            table = gr.Dataframe(headers=["rank", "text", "score"], label="N-best", interactive=False)
    with gr.Tab("My handwriting"):
        gr.Markdown("Adapt the reader to your handwriting: upload a few images of your words or lines (3 to "
                    "16 is typical), type their transcriptions one line per image in upload order (or add "
                    "a `labels.tsv` of `file<TAB>text` lines), and click **Adapt**. Keep the profile file: "
                    "upload it here later to use it again.")
        with gr.Row():
            with gr.Column():
                samples = gr.File(file_count="multiple", file_types=["image", ".tsv"],
                                  label="Sample images (and optionally labels.tsv)")
                lines = gr.Textbox(lines=6, label="Transcriptions, one line per image in upload order")
                adapt_button = gr.Button("Adapt", variant="primary")
            with gr.Column():
                profile = gr.File(label="Writer profile (download it; upload a saved one to use it)",
                                  file_types=[".safetensors"])
                status = gr.Textbox(label="Status", interactive=False, elem_id="adapt-status")
    adapt_button.click(_adapt_handler(model, limits), [samples, lines], [profile, status], api_name="adapt",
                       concurrency_id=model, preprocess=False)
    button.click(handler, [image, beam, nbest, use_profile, profile, line], [text, table], api_name="text",
                 concurrency_id=model, preprocess=False)


TAB_BUILDERS: dict[str, Callable[[str, Limits], None]] = {
    "math": _math_tab, "text": _text_tab, "speech": _speech_tab}


def build_demo(models: dict[str, str] | None = None, limits: Limits | None = None) -> gr.Blocks:
    """The app's Blocks, not launched.

    Args:
        models: task → model name or file; None: :func:`default_models` (bundled weights).
        limits: request limits (defaults: :class:`Limits`).
    """
    models = default_models() if models is None else models
    limits = limits or Limits()
    with gr.Blocks(title="recognizers", analytics_enabled=False) as demo:
        gr.Markdown("# recognizers\nHandwritten math to LaTeX, handwriting to text, speech to text. "
                    "Everything runs on this machine.")
        for task in TASKS:
            with gr.Tab(TASK_TITLES[task], id=task):
                if task in models and task in TAB_BUILDERS:
                    TAB_BUILDERS[task](models[task], limits)
                else:
                    gr.Markdown(f"No {TASK_TITLES[task].lower()} model is installed in this setup "
                                "(see the README).")
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=1)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the recognizers web app.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    for task in TASKS:
        parser.add_argument(f"--{task}-model", metavar="NAME|FILE",
                            help=f"{task} model: registry name or .safetensors/.ckpt file")
    parser.add_argument("--max-file-size", default=Limits.max_file_size, help="upload cap, e.g. 10mb")
    parser.add_argument("--max-audio-seconds", type=float, default=Limits.max_audio_seconds)
    parser.add_argument("--queue-size", type=int, default=Limits.queue_size)
    parser.add_argument("--no-preload", action="store_true", help="load models on the first request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Launch the app (blocks until interrupted)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    models = default_models()
    models.update({t: getattr(args, f"{t}_model") for t in TASKS if getattr(args, f"{t}_model")})
    if not args.no_preload:  # the first user should not wait for model loading
        for task, model in models.items():
            log.info("loading the %s model %s", task, model)
            try:
                get_recognizer(model)
            except (ValueError, OSError) as exc:  # the tab still opens and answers with this message
                log.error("the %s model cannot be loaded: %s", task, exc)
    limits = Limits(max_file_size=args.max_file_size, max_audio_seconds=args.max_audio_seconds,
                    queue_size=args.queue_size)
    demo = build_demo(models, limits)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=limits.max_file_size,
                footer_links=["api"], ssr_mode=False, show_error=True)


if __name__ == "__main__":
    main()
