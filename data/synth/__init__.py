"""Synthetic corpora in the layouts of the real ones (architecture.md rule 8).

``sentences`` holds the text sources shared by every generator and ``runner`` the resumable worker
pool with its journal; ``speech`` writes a multi-speaker LibriSpeech-layout corpus with the Debian TTS
engines (``recognizers synth speech``); ``expressions``, ``math`` and ``math_corpus`` write a
CROHME-layout formula corpus with handwriting fonts (``recognizers synth math``); ``hands``,
``handwriting``, ``iam_layout``, ``text_forms`` and ``text`` write an IAM-layout corpus of synthetic
writers (``recognizers synth text``). Submodules are imported on use, so importing this package stays
cheap.
"""

__all__: list[str] = []
