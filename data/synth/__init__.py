"""Synthetic corpora in the layouts of the real ones (architecture.md rule 8).

``sentences`` holds the text sources shared by every generator; ``speech`` writes a multi-speaker
LibriSpeech-layout corpus with the Debian TTS engines (``recognizers synth speech``). Submodules are
imported on use, so importing this package stays cheap.
"""

__all__: list[str] = []
