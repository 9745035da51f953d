"""Model files (interfaces.md, Checkpoints; platform.md §7): safetensors bundles, Lightning checkpoints read
with weights_only, ``recognizers export`` and ``recognizers.load``."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import recognizers
from data.tokenizer import SentencePieceTokenizer
from recognizers.checkpoint import Bundle, CheckpointError, read_bundle, save_bundle
from recognizers.cli import main
from recognizers.registry import REGISTRY
from recognizers.samba_asr.recognizer import SambaASRRecognizer
from tests.speech_fixtures import noise, sentences

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def waves():
    """Two waveforms of different lengths, `(T,)` float32 at 16 kHz."""
    return [torch.from_numpy(noise(0.6, 21)[:, 0]), torch.from_numpy(noise(0.9, 22)[:, 0])]


@pytest.fixture(scope="module")
def expected(tiny_asr, waves):
    """What the in-memory model gives (beam 2, two hypotheses)."""
    return SambaASRRecognizer(tiny_asr.model, tiny_asr.tokenizer).recognize(waves, beam_size=2, nbest=2)


def _lightning_ckpt(tiny_asr, path):
    """A checkpoint shaped like the ones training writes: LightningModule state with the network under
    ``model.``, other module state and optimizer state beside it, and the ``recognizers`` entry."""
    state = {f"model.{k}": v for k, v in tiny_asr.model.state_dict().items()}
    state["criterion.weight"] = torch.ones(3)  # not part of the network: export drops it
    torch.save({"epoch": 3, "global_step": 120, "state_dict": state,
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3}]}],
                "recognizers": {"model": "samba-asr", "config": tiny_asr.config.to_dict(),
                                "tokenizer": tiny_asr.tokenizer.to_base64()}}, path)
    return path


def test_bundle_round_trip(tiny_asr):
    bundle = read_bundle(tiny_asr.path)
    assert bundle.model == "samba-asr"
    assert bundle.config == tiny_asr.config.to_dict()
    assert bundle.extras == {"tokenizer": tiny_asr.tokenizer.to_base64()}
    state = tiny_asr.model.state_dict()
    assert set(bundle.state_dict) == set(state)
    for name, tensor in state.items():
        assert bundle.state_dict[name].dtype == tensor.dtype, name
        assert torch.equal(bundle.state_dict[name], tensor), name


def test_load_gives_the_outputs_of_the_in_memory_model(tiny_asr, waves, expected):
    rec = recognizers.load(tiny_asr.path, device="cpu")
    assert isinstance(rec, SambaASRRecognizer)
    assert rec.recognize(waves, beam_size=2, nbest=2) == expected
    assert all(len(r.nbest) == 2 for r in expected)


def _truncated(tiny_asr, path):
    data = tiny_asr.path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random_bytes(tiny_asr, path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def _no_metadata(tiny_asr, path):
    save_file(tiny_asr.model.state_dict(), str(path))


def _foreign_ckpt(tiny_asr, path):
    torch.save({"state_dict": {f"model.{k}": v for k, v in tiny_asr.model.state_dict().items()}}, path)


class _Payload:
    """Unpickling this would create a file: weights_only loading must refuse it."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _unsafe_ckpt(tiny_asr, path):
    torch.save({"state_dict": {}, "recognizers": _Payload(path.with_name("pwned"))}, path)


def _incomplete_ckpt(tiny_asr, path):
    torch.save({"recognizers": {"model": "samba-asr"}}, path)


BAD_FILES = {
    "truncated.safetensors": _truncated,
    "random.safetensors": _random_bytes,
    "plain.safetensors": _no_metadata,
    "missing.safetensors": lambda tiny_asr, path: None,
    "foreign.ckpt": _foreign_ckpt,
    "random.ckpt": _random_bytes,
    "unsafe.ckpt": _unsafe_ckpt,
    "incomplete.ckpt": _incomplete_ckpt,
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_model_files_raise_checkpoint_error_naming_the_file(tiny_asr, audio_tree, tmp_path, capsys, name):
    path = tmp_path / name
    BAD_FILES[name](tiny_asr, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        read_bundle(path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        recognizers.load(path, device="cpu")
    code = main(["transcribe", str(audio_tree["top"]), "--model", str(path), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert str(path) in err
    assert "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


def _drop_one_weight(config, extras, state):
    state.pop(sorted(state)[0])


def _reshape_one_weight(config, extras, state):
    name = next(k for k, v in sorted(state.items()) if v.dim() == 2)
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])


def _unknown_config_key(config, extras, state):
    config["attention_heads"] = 4


def _missing_config_key(config, extras, state):
    del config["mixer"]


def _other_tokenizer(config, extras, state):
    extras["tokenizer"] = SentencePieceTokenizer.train(sentences(), 36).to_base64()


def _no_tokenizer(config, extras, state):
    del extras["tokenizer"]


def _garbled_tokenizer(config, extras, state):
    extras["tokenizer"] = "bm90IGEgbW9kZWw="  # base64 of b"not a model"


@pytest.mark.parametrize("damage", [_drop_one_weight, _reshape_one_weight, _unknown_config_key,
                                    _missing_config_key, _other_tokenizer, _no_tokenizer, _garbled_tokenizer])
def test_bundles_whose_parts_do_not_fit(tiny_asr, audio_tree, tmp_path, capsys, damage):
    """Readable files whose config, tokenizer and weights disagree: CheckpointError naming the file, and
    exit 2 (not a traceback) from the command line."""
    config, state = tiny_asr.config.to_dict(), dict(tiny_asr.model.state_dict())
    extras = {"tokenizer": tiny_asr.tokenizer.to_base64()}
    damage(config, extras, state)
    path = save_bundle(tmp_path / "damaged.safetensors", Bundle("samba-asr", config, extras, state))
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        recognizers.load(path, device="cpu")
    code = main(["transcribe", str(audio_tree["top"]), "--model", str(path), "--device", "cpu"])
    assert code == 2
    assert str(path) in capsys.readouterr().err


def test_bundle_of_an_unknown_model_type(tiny_asr, tmp_path):
    path = save_bundle(tmp_path / "other.safetensors", Bundle("no-such-type", {}, {}, {"w": torch.ones(2)}))
    with pytest.raises(ValueError, match="no-such-type"):
        recognizers.load(path)


def test_load_unknown_name_lists_the_registry():
    with pytest.raises(ValueError, match="no-such-model") as info:
        recognizers.load("no-such-model")
    assert all(name in str(info.value) for name in REGISTRY)


def _safetensors_layout(path) -> tuple[dict, int]:
    """Parse the safetensors container by hand: 8-byte little-endian header size, a JSON header, then the
    raw tensor bytes and nothing else. Returns (header, size of the data section)."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    return header, len(data) - 8 - size


def test_export_lightning_checkpoint(tiny_asr, tmp_path, capsys, waves, expected):
    ckpt = _lightning_ckpt(tiny_asr, tmp_path / "last.ckpt")
    out = tmp_path / "models" / "exported.safetensors"
    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.part"))

    header, data_bytes = _safetensors_layout(out)  # pure safetensors: no pickle anywhere
    meta = header.pop("__metadata__")
    assert meta["recognizers.model"] == "samba-asr"
    assert json.loads(meta["recognizers.config"]) == tiny_asr.config.to_dict()
    assert meta["recognizers.tokenizer"] == tiny_asr.tokenizer.to_base64()
    assert set(header) == set(tiny_asr.model.state_dict())  # criterion.* and optimizer state dropped
    assert max(t["data_offsets"][1] for t in header.values()) == data_bytes

    assert recognizers.load(out, device="cpu").recognize(waves, beam_size=2, nbest=2) == expected
    assert recognizers.load(ckpt, device="cpu").recognize(waves, beam_size=2, nbest=2) == expected


def test_export_of_a_bad_checkpoint_fails_cleanly(tiny_asr, tmp_path, capsys):
    ckpt = tmp_path / "foreign.ckpt"
    _foreign_ckpt(tiny_asr, ckpt)
    out = tmp_path / "out.safetensors"
    assert main(["export", str(ckpt), "--out", str(out)]) == 2
    assert str(ckpt) in capsys.readouterr().err
    assert not out.exists()
