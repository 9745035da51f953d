"""Shared test setup: markers, the Triton interpreter on CPU-only machines, CI strictness."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

# The Triton interpreter must be switched on before triton is first imported (Triton issue #4317).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(tool: str, package: str) -> None:
    """Skip when a system tool is missing; under CI=true fail instead (interfaces.md, Setup)."""
    if shutil.which(tool) is None:
        message = f"{tool} not found: install the Debian package {package} (make system-deps)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (benchmarks/ is not a package), registered in sys.modules
    (a dataclass needs its module there) under its own name."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def require_module(name: str):
    """importorskip, except that under CI=true a missing module fails the test run."""
    try:
        return __import__(name)
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"{name} is not importable ({exc}); it is part of the dev install", pytrace=False)
        pytest.skip(f"{name} is not importable: {exc}", allow_module_level=True)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def speech_corpus(tmp_path_factory):
    """A small synthetic LibriSpeech-layout corpus (``recognizers synth speech``), shared by the
    training and end-to-end tests: 30 utterances, 20 train / 6 dev / 4 test."""
    for tool, package in (("espeak-ng", "espeak-ng"), ("flite", "flite"), ("text2wave", "festival")):
        require_tool(tool, package)
    from data.synth.speech import CorpusConfig, synthesize_corpus

    out = tmp_path_factory.mktemp("speech") / "corpus"
    config = CorpusConfig(num=30, seed=11, dev_fraction=0.2, test_fraction=0.12)
    summary = synthesize_corpus(out, config, jobs=1)
    assert not summary.failed
    return out


@pytest.fixture(scope="session")
def tiny_asr(tmp_path_factory):
    """A tiny untrained Samba-ASR bundle (tests/speech_fixtures.py): ``.path``, ``.model``, ``.tokenizer``."""
    from tests.speech_fixtures import build_tiny_asr

    return build_tiny_asr(tmp_path_factory.mktemp("tiny_asr"))


@pytest.fixture(scope="session")
def audio_tree(tmp_path_factory):
    """Good and bad audio inputs in nested folders (tests/speech_fixtures.py, ``write_audio_tree``)."""
    from tests.speech_fixtures import write_audio_tree

    return write_audio_tree(tmp_path_factory.mktemp("audio"))


@pytest.fixture
def single_thread():
    """One intra-op thread for the duration of a test: the tiny models' ops are too small to gain from
    threads, and on a busy machine thread contention makes them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_bundled_weights(monkeypatch, tmp_path):
    """Registered models find their weights in an empty folder (returned) only, not among the package's
    bundled files, so that a test sees what a checkout without a bundled model does."""
    import recognizers.registry

    monkeypatch.setenv("RECOGNIZERS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(recognizers.registry, "weights_path", lambda spec: tmp_path / spec.weights)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_text_corpus(tmp_path_factory):
    """The tiny synthetic IAM-layout corpus (``recognizers synth text --preset tiny --seed 3
    --corpus-version 3``: 13 font writers, 8 usable for training, 2 each for validation and test), made
    once per test session; tests only read it. Skips (fails under CI=true) when the fonts or text sources
    are missing."""
    from data.synth.hands import accepted_faces
    from data.synth.math import MissingFontError, RendererError
    from data.synth.sentences import SourceError, corpus_sentences
    from data.synth.text import TextConfig, synthesize_text

    try:
        corpus_sentences()
        if not all(accepted_faces().values()):
            raise MissingFontError("a split has no usable handwriting font")
    except (SourceError, MissingFontError, RendererError) as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("tiny-text") / "iam"
    # version 3: the Debian hands only, so the many tests built on it need no fetched fonts
    summary = synthesize_text(out, TextConfig(13, 3, "tiny", version=3), jobs=1, progress=False)
    assert not summary.failed
    return out
