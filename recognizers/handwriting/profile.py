"""Writer profiles: one writer's adaptation of one handwriting model, small and safe to share
(writer-htr.md §6–§9; interfaces.md ``adapt`` and ``--writer-profile``).

A profile is what :meth:`~.recognizer.HandwritingRecognizer.adapt` returns and what ``recognize``,
``recognizers transcribe/evaluate --writer-profile`` and the app's "My handwriting" tab accept. Its
payload depends on the method:

* ``"metahtr"``: MetaHTR's inner loop with the model file's learned per-tensor rates α and instance
  weights g_γ (§7); ``"finetune"``: the MAML-style baseline — a few plain SGD steps with one fixed rate on
  a configurable subset of the tensors (§7.1 ``finetune``, §9.1 row 3), for model files without MetaHTR
  state. Both store Δ_k = θ'_k − θ_k (float32) of the tensors that moved, under their parameter names;
* ``"writer-code"``: the writer's code vector (tensor ``code``, `(c,)`) for the model file's writer-code
  adapter (§8); ``info["adapter"]`` names the adapter (source, injection, code size).

Size: deltas of the adapted tensors only. The default fine-tuning subset is the final classifier, V·D + V
floats: for the ``cpu`` preset (FPHTR-18, D = 128) and an IAM-sized vocabulary (V = 82) that is
10,578 floats, a 43 kB file (measured); a 64-dimensional writer code is under 2 kB. A MetaHTR profile
covers the tensors the model was meta-trained to adapt (``MetaHTRConfig.adapt``; all of them by
default, then it is as large as the weights).

File form: a ``.safetensors`` file (no pickle) whose tensors are the payload and whose metadata holds
``recognizers.writer_profile`` (format "1"), ``recognizers.method``, ``recognizers.model`` (e.g.
"FPHTR-18"), ``recognizers.base_digest`` (SHA-256 of the model file's tensors, see
:func:`~.metahtr_profile.weights_digest`), ``recognizers.vocab_digest`` (SHA-256 of the character list),
``recognizers.num_support`` and ``recognizers.info`` (JSON: steps, rate, adapter ...). A profile made
for other weights or another character set is refused with a message naming the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from data.handwriting import CharVocabulary

__all__ = ["FORMAT", "PROFILE_METHODS", "ProfileError", "WriterProfile", "vocab_digest"]

FORMAT = "1"
PROFILE_METHODS = ("metahtr", "finetune", "writer-code")
_PREFIX = "recognizers."
_REQUIRED = ("method", "model", "base_digest", "vocab_digest", "num_support")


class ProfileError(ValueError):
    """A writer profile that cannot be used (bad file, other base weights, wrong method); the message
    names the file when there is one."""


def vocab_digest(vocab: CharVocabulary) -> str:
    """SHA-256 of the vocabulary's token list (64 hex digits)."""
    return hashlib.sha256(vocab.to_json().encode("utf-8")).hexdigest()


@dataclass(frozen=True, eq=False)  # tensors have no truth value: profiles compare by identity
class WriterProfile:
    """One writer's adaptation of one model file.

    Attributes:
        method: "metahtr", "finetune" or "writer-code".
        tensors: the payload: parameter name → Δ (float32, CPU), or ``{"code": (c,)}``.
        model: the base model's name (``HTRConfig.name``).
        base_digest: SHA-256 of the model file's tensors it was adapted from.
        vocab_digest: :func:`vocab_digest` of the model's characters.
        num_support: labelled samples it was adapted on.
        info: JSON-able facts (steps, learning rate, adapter config ...).
        path: the file it was read from or written to (for messages; not part of the profile).
    """

    method: str
    tensors: dict[str, Tensor]
    model: str
    base_digest: str
    vocab_digest: str
    num_support: int
    info: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = f"{self.path}: " if self.path else ""
        if self.method not in PROFILE_METHODS:
            raise ProfileError(f"{where}unknown writer-profile method {self.method!r} "
                               f"(one of {PROFILE_METHODS})")
        if self.num_support < 1:
            raise ProfileError(f"{where}a writer profile needs at least one support sample")
        if self.method == "writer-code":
            code = self.tensors.get("code")
            if set(self.tensors) != {"code"} or code is None or code.dim() != 1 or code.numel() == 0:
                raise ProfileError(f"{where}a writer-code profile holds exactly one (c,) tensor 'code'")
        elif not self.tensors:
            raise ProfileError(f"{where}a {self.method} profile without parameter deltas")

    @property
    def name(self) -> str:
        """How messages name the profile: its file, else its method."""
        return str(self.path) if self.path else f"the {self.method} writer profile"

    @property
    def deltas(self) -> dict[str, Tensor]:
        """Δ_k by parameter name (``metahtr`` and ``finetune`` profiles)."""
        if self.method == "writer-code":
            raise ProfileError(f"{self.name}: a writer-code profile holds a code, not parameter deltas")
        return self.tensors

    @property
    def code(self) -> Tensor:
        """The writer code `(c,)` (``writer-code`` profiles)."""
        if self.method != "writer-code":
            raise ProfileError(f"{self.name}: a {self.method} profile holds parameter deltas, not a code")
        return self.tensors["code"]

    @property
    def num_values(self) -> int:
        """Floats in the payload."""
        return sum(t.numel() for t in self.tensors.values())

    def check(self, base_digest: str, vocab: str, model: str) -> WriterProfile:
        """Refuse a profile of other weights or another character set (the message names the file).

        Args:
            base_digest, vocab: the digests of the model about to use it; model: its name.

        Raises:
            ProfileError: a digest differs.
        """
        if vocab != self.vocab_digest:
            raise ProfileError(f"{self.name}: this writer profile was made for a model with another "
                               f"character set; adapt again with this model ({model})")
        if base_digest != self.base_digest:
            raise ProfileError(f"{self.name}: this writer profile was made for other base weights "
                               f"({self.model}, digest {self.base_digest[:12]}) than this model's "
                               f"({model}, digest {base_digest[:12]}); adapt again with this model")
        return self

    # ----- file form ---------------------------------------------------------------------------
    def to_safetensors(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """The tensors and string metadata of the file form (module docstring)."""
        meta = {"writer_profile": FORMAT, "method": self.method, "model": self.model,
                "base_digest": self.base_digest, "vocab_digest": self.vocab_digest,
                "num_support": str(self.num_support), "info": json.dumps(dict(self.info))}
        tensors = {k: v.detach().to(torch.float32, copy=False).cpu().contiguous()
                   for k, v in self.tensors.items()}
        return tensors, {_PREFIX + k: v for k, v in meta.items()}

    @classmethod
    def from_safetensors(cls, tensors: Mapping[str, Tensor], metadata: Mapping[str, str],
                         path: Path | None = None) -> WriterProfile:
        """Inverse of :meth:`to_safetensors`.

        Raises:
            ProfileError: not a writer profile, or incomplete or unusable metadata.
        """
        where = f"{path}: " if path else ""
        meta = {k[len(_PREFIX):]: v for k, v in metadata.items() if k.startswith(_PREFIX)}
        if "writer_profile" not in meta:
            kind = "a model file" if "config" in meta else "no writer-profile metadata"
            raise ProfileError(f"{where}not a writer profile ({kind}); make one with `recognizers adapt`")
        if meta["writer_profile"] != FORMAT:
            raise ProfileError(f"{where}writer-profile format {meta['writer_profile']!r} is not supported "
                               f"(this version reads {FORMAT!r})")
        missing = [k for k in _REQUIRED if k not in meta]
        if missing:
            raise ProfileError(f"{where}writer-profile metadata incomplete: missing {missing}")
        try:
            num_support = int(meta["num_support"])
            info = json.loads(meta.get("info", "{}"))
        except ValueError as exc:
            raise ProfileError(f"{where}writer-profile metadata unusable: {exc}") from exc
        return cls(meta["method"], dict(tensors), meta["model"], meta["base_digest"], meta["vocab_digest"],
                   num_support, info, path)

    def save(self, path: str | Path) -> WriterProfile:
        """Write the ``.safetensors`` file (through a temporary name); returns the profile with ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors, meta = self.to_safetensors()
        tmp = path.with_name(path.name + ".part")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return WriterProfile(self.method, self.tensors, self.model, self.base_digest, self.vocab_digest,
                             self.num_support, self.info, path)

    @classmethod
    def load(cls, path: str | Path) -> WriterProfile:
        """Read a file written by :meth:`save`.

        Raises:
            ProfileError: missing, unreadable, or not a writer profile; the message names the file.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise ProfileError(f"{path}: no such writer-profile file")
        try:
            with safe_open(str(path), "pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ProfileError(f"{path}: not a readable writer profile (safetensors: {exc})") from exc
        return cls.from_safetensors(tensors, meta, path)

    @classmethod
    def coerce(cls, profile: WriterProfile | str | Path) -> WriterProfile:
        """A profile as is, or read from a file path."""
        return profile if isinstance(profile, WriterProfile) else cls.load(profile)
