"""A MetaHTR writer profile: one writer's adaptation θ' − θ, small and safetensors-ready (writer-htr.md §7).

The profile keeps only the tensors the inner loop moved (by default every base parameter, so a profile
of FPHTR-18 is as large as its weights; adapting a subset, ``MetaHTRConfig.adapt``, shrinks it), as
float32 deltas Δ_k = θ'_k − θ_k on the CPU. Deltas rather than θ' keep the base weights unchanged and
let a profile be checked against the base it was made from: ``base_digest`` is a SHA-256 over the
names, shapes and float32 bytes of the adapted base tensors (:func:`weights_digest`).

File form: a ``.safetensors`` file whose tensors are the deltas under their parameter names and whose
metadata holds ``recognizers.profile`` = "metahtr", ``recognizers.model`` (e.g. "FPHTR-18"),
``recognizers.base_digest`` and ``recognizers.num_support``. A generic ``WriterProfile`` of the
handwriting recognizer can carry it as is (:meth:`MetaHTRProfile.to_safetensors`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

__all__ = ["PROFILE_KIND", "MetaHTRProfile", "weights_digest"]

PROFILE_KIND = "metahtr"
_PREFIX = "recognizers."


def weights_digest(params: Mapping[str, Tensor]) -> str:
    """SHA-256 over the sorted names, shapes and float32 bytes of ``params`` (64 hex digits)."""
    digest = hashlib.sha256()
    for name in sorted(params):
        value = params[name].detach().float().cpu().contiguous()
        digest.update(f"{name}\t{tuple(value.shape)}\n".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class MetaHTRProfile:
    """One writer's adaptation of one base model.

    Attributes:
        deltas: parameter name → Δ (float32, CPU), the tensors that moved.
        model: the base model's name (``HTRConfig.name``, e.g. "FPHTR-18").
        base_digest: :func:`weights_digest` of the adapted base tensors.
        num_support: words the profile was adapted on.
    """

    deltas: dict[str, Tensor]
    model: str
    base_digest: str
    num_support: int

    def parameters_for(self, model: nn.Module, check: bool = True) -> dict[str, Tensor]:
        """θ' = θ + Δ (detached, in the model's dtype and device) for ``torch.func.functional_call``.

        Args:
            model: the base network (an ``HTRModel``).
            check: compare the base weights with ``base_digest`` (a profile of another base is refused).

        Raises:
            ValueError: a delta names no parameter, a shape differs, or (``check``) another base.
        """
        own = dict(model.named_parameters())
        bad = [k for k, d in self.deltas.items() if k not in own or own[k].shape != d.shape]
        if bad:
            raise ValueError(f"writer profile does not fit this model ({self.model}): {bad[:5]}")
        base = {k: own[k] for k in self.deltas}
        if check and weights_digest(base) != self.base_digest:
            raise ValueError(f"writer profile was adapted from other base weights than these ({self.model})")
        return {k: (p + self.deltas[k].to(p)).detach() for k, p in base.items()}

    def to_safetensors(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """The tensors and string metadata of the file form (module docstring)."""
        meta = {f"{_PREFIX}profile": PROFILE_KIND, f"{_PREFIX}model": self.model,
                f"{_PREFIX}base_digest": self.base_digest, f"{_PREFIX}num_support": str(self.num_support)}
        return {k: v.detach().float().cpu().contiguous() for k, v in self.deltas.items()}, meta

    @classmethod
    def from_safetensors(cls, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> MetaHTRProfile:
        """Inverse of :meth:`to_safetensors`.

        Raises:
            ValueError: the metadata is not a MetaHTR profile's.
        """
        if metadata.get(f"{_PREFIX}profile") != PROFILE_KIND:
            kind = metadata.get(f"{_PREFIX}profile")
            raise ValueError(f"not a MetaHTR writer profile (profile kind {kind!r})")
        try:
            return cls(dict(tensors), metadata[f"{_PREFIX}model"], metadata[f"{_PREFIX}base_digest"],
                       int(metadata[f"{_PREFIX}num_support"]))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"MetaHTR writer profile metadata unusable: {exc!r}") from exc

    def save(self, path: str | Path) -> Path:
        """Write the ``.safetensors`` file (through a temporary name)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors, meta = self.to_safetensors()
        tmp = path.with_name(path.name + ".part")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> MetaHTRProfile:
        """Read a file written by :meth:`save`.

        Raises:
            ValueError: unreadable, or not a MetaHTR profile.
        """
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
        return cls.from_safetensors(tensors, meta)

