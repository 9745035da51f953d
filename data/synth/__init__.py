"""Synthetic corpora in the layouts of the real ones (architecture.md rule 8).

``sentences`` holds the text sources shared by every generator; ``speech`` writes a multi-speaker
LibriSpeech-layout corpus with the Debian TTS engines (``recognizers synth speech``); ``expressions``,
``math`` and ``math_corpus`` write a CROHME-layout formula corpus with handwriting fonts
(``recognizers synth math``). Submodules are
imported on use, so importing this package stays cheap.
"""

__all__: list[str] = []
